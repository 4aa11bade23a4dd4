//! Finding FFmpeg where it hides: a renamed copy inside another mount namespace, copies
//! bundled in Python wheels (FFmpeg 6.1 and 8.0 under hashed names), a static ffmpeg 9 build,
//! and libraries that only look like FFmpeg.
//!
//! The tests here run at once, each with a daemon, and every daemon holds a process that maps
//! a new FFmpeg file for itself only: another test's daemon may resume it before this test's
//! has attached. These pipelines therefore wait on their standard input until the daemon
//! reports the file attached, then get their input. (The hold itself is tested alone, in
//! `hold.rs`; files on the linker path are attached at start, which the codec tests cover.)

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use observer_tests::{
    Daemon, assets, decode_piped_nut,
    media::{self, assert_video_decode, fixture, truth},
    run, static_ffmpeg, tempdir,
};

/// The H.264 + AAC fixture remuxed to NUT, which a pipeline can read from a pipe.
fn streamable_input() -> PathBuf {
    let mp4 = media::h264_aac_mp4();
    fixture(
        "h264-aac.nut",
        &[
            "-i",
            mp4.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "nut",
            "{out}",
        ],
    )
}

/// Feeds `input` to a child waiting on its stdin, then waits for it.
fn feed_and_wait(mut child: Child, input: &[u8]) {
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).expect("write input");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pipeline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn renamed_copy_in_another_mount_namespace() {
    // Debian's multiarch directory of this machine (arm64 guests of the kernel matrix run
    // this test too).
    const MULTIARCH: &str = if cfg!(target_arch = "aarch64") {
        "/usr/lib/aarch64-linux-gnu"
    } else {
        "/usr/lib/x86_64-linux-gnu"
    };
    let input = streamable_input();
    let t = truth(&input, true);
    // A private copy of ffmpeg whose libavcodec carries a wheel-style hashed name. Every
    // library that links libavcodec is copied and relinked to the renamed file, so the
    // process maps no other libavcodec.
    let dir = tempdir("mntns");
    let lib = Path::new(MULTIARCH);
    let renamed = "libavcodec-0badc0de.so.59.37.100";
    std::fs::copy(lib.join("libavcodec.so.59"), dir.join(renamed)).unwrap();
    let dependents = [
        "libavformat.so.59",
        "libavfilter.so.8",
        "libavdevice.so.59",
        "libchromaprint.so.1",
    ];
    for f in dependents {
        std::fs::copy(lib.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy("/usr/bin/ffmpeg", dir.join("ffmpeg")).unwrap();
    for f in std::iter::once("ffmpeg").chain(dependents) {
        run(Command::new("patchelf")
            .args(["--replace-needed", "libavcodec.so.59", renamed])
            .arg(dir.join(f)));
    }
    run(Command::new("patchelf")
        .args(["--set-soname", renamed])
        .arg(dir.join(renamed)));

    let d = Daemon::start(&[]);
    // The copy lives on a tmpfs mounted only inside the pipeline's own mount namespace: the
    // daemon can reach it only through /proc/PID/root.
    let script = format!(
        "mount -t tmpfs observer-test /mnt && cp {dir}/* /mnt/ && \
         LD_LIBRARY_PATH=/mnt exec /mnt/ffmpeg -nostdin -hide_banner -loglevel error -f nut -i pipe:0 -f null -",
        dir = dir.display()
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let shell_pid = child.id();
    d.wait_attached(&["/mnt/libavcodec-0badc0de", "/mnt/libavformat"]);
    let maps = std::fs::read_to_string(format!("/proc/{shell_pid}/maps")).unwrap();
    assert!(
        !maps.contains(&format!("{MULTIARCH}/libavcodec")),
        "the system libavcodec is mapped too:\n{maps}"
    );
    assert!(
        !Path::new("/mnt/ffmpeg").exists(),
        "the copy must not be visible outside the namespace"
    );
    feed_and_wait(child, &std::fs::read(&input).unwrap());
    // `exec` kept the shell's pid.
    let s = d.wait_ended(shell_pid);
    assert_video_decode(&s, shell_pid, &t[&0], "h264");
    let _ = std::fs::remove_dir_all(&dir);
}

/// PyAV bundles its own FFmpeg under hashed names (`av.libs/libavcodec-49be5967.so.62...`).
fn pyav_decode(version: &str, lavc: &str) {
    let site = assets().join("pyav").join(version);
    assert!(
        site.join("av").exists(),
        "PyAV {version} missing from {}: run `cargo xtask test`",
        site.display()
    );
    let input = media::h264_aac_mp4();
    let t = truth(&input, true);
    let d = Daemon::start(&[]);
    let script = "import sys, av\nsys.stdin.readline()\nn = 0\nwith av.open(sys.argv[1]) as c:\n    for f in c.decode(video=0):\n        n += 1\nprint(n)\n";
    let child = Command::new("python3")
        .args(["-c", script])
        .arg(&input)
        .env("PYTHONPATH", &site)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    // Both PyAV tests may run at once, and every daemon sees every process: wait for this
    // version's own copies.
    let codec = format!("pyav/{version}/av.libs/libavcodec-");
    let format = format!("pyav/{version}/av.libs/libavformat-");
    d.wait_attached(&[&codec, &format]);
    let s = d.scrape();
    let versions: Vec<&String> = s
        .all("observer_attached_file_info")
        .filter(|x| x.label("path").is_some_and(|p| p.contains(&codec)))
        .filter_map(|x| x.label("versions"))
        .collect();
    assert!(
        versions
            .iter()
            .all(|v| v.contains(&format!("Avcodec:{lavc}.")))
            && !versions.is_empty(),
        "{versions:?}"
    );
    feed_and_wait(child, b"go\n");
    let s = d.wait_ended(pid);
    assert_video_decode(&s, pid, &t[&0], "h264");
    assert_eq!(
        s.one(
            "media_stream_info",
            &[("pid", &pid.to_string()), ("media", "video")]
        )
        .and_then(|x| x.label("libavcodec").cloned())
        .as_deref(),
        Some(lavc)
    );
}

#[test]
fn bundled_ffmpeg_6_in_a_python_wheel() {
    pyav_decode("12.3.0", "60");
}

#[test]
fn bundled_ffmpeg_8_in_a_python_wheel() {
    pyav_decode("16.0.1", "62");
}

#[test]
fn static_ffmpeg_9_build() {
    let bin = static_ffmpeg();
    let input = streamable_input();
    let t = truth(&input, true);
    let d = Daemon::start(&[]);
    let (pid, out) = decode_piped_nut(
        &d,
        &bin,
        &["-loglevel", "error"],
        &std::fs::read(&input).unwrap(),
    );
    assert!(
        out.status.success(),
        "pipeline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = d.wait_ended(pid);
    assert_video_decode(&s, pid, &t[&0], "h264");
    // The audio decoder too, and the encoders the null output uses.
    let p = pid.to_string();
    let audio = [
        ("pid", p.as_str()),
        ("direction", "decode"),
        ("media", "audio"),
        ("codec", "aac"),
    ];
    assert_eq!(
        s.value("media_frames_total", &audio),
        Some(t[&1].frames as f64)
    );
    assert_eq!(
        s.value("media_packets_total", &audio),
        Some(t[&1].packets as f64)
    );
}

/// A shared library that exports FFmpeg's names, built from C here.
fn fake_library(dir: &Path, name: &str, ident: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(
        &src,
        format!(
            "const char ident[] = \"{ident}\";\n\
             int avcodec_open2(void *c, const void *k, void *o) {{ return 0; }}\n\
             int avcodec_send_packet(void *c, const void *p) {{ return 0; }}\n\
             int avcodec_receive_frame(void *c, void *f) {{ return -11; }}\n\
             const char *version_ident(void) {{ return ident; }}\n"
        ),
    )
    .unwrap();
    let lib = dir.join(format!("{name}.so"));
    run(Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src));
    lib
}

/// A python process that loads `lib` and calls `avcodec_send_packet` on `calls` contexts
/// made of garbage bytes, after a line on stdin.
fn load_and_call(lib: &Path, calls: usize) -> Child {
    let script = format!(
        "import ctypes, sys\nl = ctypes.CDLL(sys.argv[1])\nsys.stdin.readline()\n\
         bufs = [ctypes.create_string_buffer(b'\\x41' * 4096) for _ in range({calls})]\n\
         for b in bufs:\n    l.avcodec_send_packet(b, None)\nsys.stdin.readline()\n"
    );
    Command::new("python3")
        .args(["-c", &script])
        .arg(lib)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("python3")
}

#[test]
fn unknown_major_is_reported_not_read() {
    let dir = tempdir("fake-major");
    let lib = fake_library(&dir, "libavcodec-fake", "Lavc99.1.100");
    let d = Daemon::start(&[]);
    let mut child = load_and_call(&lib, 0);
    let s = d.wait_for(
        "the unknown major to be reported",
        Duration::from_secs(20),
        |s| {
            (s.value(
                "observer_unsupported_files",
                &[("reason", "unknown_version")],
            )
            .unwrap_or(0.0)
                >= 1.0)
                .then(|| s.clone())
        },
    );
    assert!(!s.attached("libavcodec-fake"));
    assert!(
        d.log_text().contains("libavcodec-fake.so") && d.log_text().contains("99.1.100"),
        "one log line names the file and version"
    );
    let _ = child.kill();
    let _ = child.wait();
    // The daemon keeps serving.
    assert_eq!(d.get("/healthz").map(|x| x.0), Some(200));
}

/// A truncated library (a copy cut off mid-write, a damaged download) mapped executable by two
/// processes: skipped with the reason `malformed_elf` in the metric, one log line for the
/// file however many map it, nothing attached, and the daemon keeps serving.
#[test]
fn a_truncated_library_is_reported_malformed_once_and_skipped() {
    let dir = tempdir("truncated");
    let system = std::fs::read("/usr/lib/x86_64-linux-gnu/libavcodec.so.59").unwrap();
    let lib = dir.join("libavcodec-cut.so.59");
    std::fs::write(&lib, &system[..system.len() * 6 / 10]).unwrap();
    let d = Daemon::start(&[]);
    let map_exec = || {
        Command::new("python3")
            .args([
                "-c",
                "import mmap, os, sys\n\
                 fd = os.open(sys.argv[1], os.O_RDONLY)\n\
                 m = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC)\n\
                 sys.stdin.readline()\n",
            ])
            .arg(&lib)
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3")
    };
    let (mut a, mut b) = (map_exec(), map_exec());
    let s = d.wait_for(
        "the truncated library reported malformed",
        Duration::from_secs(20),
        |s| {
            (s.value("observer_unsupported_files", &[("reason", "malformed_elf")])? >= 1.0)
                .then(|| s.clone())
        },
    );
    assert!(!s.attached("libavcodec-cut"));
    // Both processes are seen by the periodic rescan too; still one line for the file.
    std::thread::sleep(Duration::from_secs(3));
    let log = d.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("libavcodec-cut.so.59") && l.contains("malformed_elf"))
        .count();
    assert_eq!(lines, 1, "{log}");
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(d.get("/healthz").map(|x| x.0), Some(200));
}

#[test]
fn garbage_behind_ffmpeg_names_is_distrusted() {
    let dir = tempdir("fake-garbage");
    // Claims a known release, but its "contexts" are garbage: reads fail their sanity checks.
    let lib = fake_library(&dir, "libavcodec-garbage", "Lavc59.37.100");
    let d = Daemon::start(&[]);
    let mut child = load_and_call(&lib, 5);
    let pid = child.id();
    d.wait_attached(&["libavcodec-garbage"]);
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let s = d.wait_for("the library to be reported", Duration::from_secs(20), |s| {
        (s.value(
            "observer_unsupported_files",
            &[("reason", "sanity_check_failed")],
        )
        .unwrap_or(0.0)
            >= 1.0)
            .then(|| s.clone())
    });
    assert!(
        !s.attached("libavcodec-garbage"),
        "detached once distrusted"
    );
    assert!(
        s.all("media_frames_total")
            .all(|x| x.label("pid") != Some(&pid.to_string())),
        "no stream from garbage"
    );
    assert!(s.value("observer_read_failures_total", &[]).unwrap() >= 3.0);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(d.get("/healthz").map(|x| x.0), Some(200));
}

#[test]
fn files_are_detached_when_no_process_maps_them() {
    let dir = tempdir("detach");
    let lib = fake_library(&dir, "libavcodec-detach", "Lavc59.37.100");
    // The tests' daemons linger 2 s before detaching.
    let d = Daemon::start(&[]);
    let mut first = load_and_call(&lib, 0);
    let mut second = load_and_call(&lib, 0);
    d.wait_attached(&["libavcodec-detach"]);
    let _ = first.kill();
    let _ = first.wait();
    // Still mapped by the second process: stays attached past the linger.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        d.scrape().attached("libavcodec-detach"),
        "detached while a process still maps it"
    );
    let _ = second.kill();
    let _ = second.wait();
    d.wait_for("the file to be detached", Duration::from_secs(20), |s| {
        (!s.attached("libavcodec-detach")).then_some(())
    });
}

/// A process that exits while the daemon inspects the files it maps: each file is skipped
/// with the reason `process_exited`, none is judged (no verdict, nothing marked unsupported),
/// and the next process mapping the same never-seen FFmpeg copy gets it attached. Driven
/// through the daemon's own tracker and kernel programs in this test process, the process
/// killed between the reading of its mappings and the opening of its files: the window a
/// running daemon hits by chance. A process that exits while its files are attached keeps
/// the name read before (the suite's short reuse program lost it to an empty one).
#[test]
fn a_process_exiting_mid_inspection_is_skipped_with_a_reason_and_its_file_attached_later() {
    use observer::{
        kernel::{Kernel, LoadOptions},
        procfs,
        tracker::{ProcessFacts, Tracker},
    };
    use std::io::BufRead as _;
    observer_tests::require_root();
    let dir = tempdir("exit-mid-inspection");
    // A copy: a file (inode) the tracker has never seen.
    let lib = dir.join("libavutil.so.57");
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libavutil.so.57", &lib).unwrap();
    let (mut kernel, _rings) = Kernel::load(LoadOptions {
        empty_probes: false,
        ffmpeg_logs: true,
        io_stats: true,
        log_event_level: -1,
        frame_sample: 0,
        slow_frame_ns: u64::MAX,
        max_streams: observer_common::stream::MAX_STREAMS,
        directions: observer::kernel::ALL_DIRECTIONS,
        // This test answers for the daemon itself: nothing may wait for an answer.
        hold_new_files: false,
    })
    .expect("the kernel programs load");
    let mut tracker = Tracker::new(Duration::from_secs(10));
    let mapper = || {
        let mut c = Command::new("python3")
            .args([
                "-c",
                "import ctypes, sys\nctypes.CDLL(sys.argv[1])\nprint('mapped', flush=True)\nsys.stdin.read()",
            ])
            .arg(&lib)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "mapped");
        c
    };
    let ours = |t: &Tracker| {
        t.attached()
            .iter()
            .any(|a| a.path.starts_with(dir.to_str().unwrap()))
    };

    let mut p = mapper();
    let pid = p.id();
    let maps = procfs::exec_mappings(pid).unwrap();
    assert!(maps.iter().any(|m| m.path == lib.to_str().unwrap()));
    p.kill().unwrap();
    p.wait().unwrap();
    tracker.scan_mappings(&mut kernel, pid, &maps, None);
    // Every file it mapped (python, libc, the copy and its dependencies) was cut short.
    assert_eq!(
        tracker.skipped().get("process_exited").copied(),
        Some(maps.len() as u64)
    );
    assert!(!ours(&tracker));
    assert!(tracker.unsupported().is_empty());

    let mut q = mapper();
    tracker.scan(&mut kernel, q.id());
    assert!(ours(&tracker), "the copy is attached for the next process");
    assert_eq!(
        tracker.skipped().get("process_exited").copied(),
        Some(maps.len() as u64)
    );
    q.kill().unwrap();
    q.wait().unwrap();

    // Two more that exit between the reading of their mappings and the attach (the copy is
    // attached now, so both are kept as FFmpeg processes): one read before, one not.
    for read_first in [true, false] {
        let mut r = mapper();
        let pid = r.id();
        let maps = procfs::exec_mappings(pid).unwrap();
        let facts = read_first.then(|| ProcessFacts::read(pid));
        r.kill().unwrap();
        r.wait().unwrap();
        tracker.scan_mappings(&mut kernel, pid, &maps, facts);
        assert!(tracker.process(pid).is_some(), "kept as an FFmpeg process");
        assert_eq!(
            tracker.process_name(pid).as_deref(),
            read_first.then_some("python3"),
            "a name read before the exit is kept; none is made up (never \"\")"
        );
    }
}
