//! Holding a process that maps an FFmpeg copy the daemon has never seen (a new static build, a
//! fresh wheel) until its probes are in, so it is counted from its first frame, on every
//! kernel of the matrix; and resuming what a daemon that stopped answering, or was killed,
//! held.
//!
//! One test at a time: every daemon's kernel programs hold new processes for that daemon
//! alone, and another test's daemon would resume them before this test's has attached.

use std::{
    process::Command,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use observer_tests::{
    Daemon, Scrape, TempDir, assets,
    media::{self, assert_video_decode, truth},
    run, static_ffmpeg, tempdir,
};

/// The PyAV release that bundles FFmpeg 6.1 (libavcodec 60).
const PYAV_6: &str = "12.3.0";

fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `cmd` without a controlling terminal (in a session of its own): a process with one is
/// never held (its shell would take a stop for the user's Ctrl-Z), and a test run from a
/// terminal must not depend on that.
fn no_terminal(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    }
}

fn processes_held(s: &Scrape) -> f64 {
    s.value("observer_processes_held_total", &[]).unwrap_or(0.0)
}

/// A static build copied where the daemon has never looked (a new file), started at once on
/// a file: the kernel holds its process at exec until the copy is inspected and attached, so
/// it is counted from its first frame. Without the hold the process runs while the daemon
/// inspects its 172 MB, and its first frames go uncounted (checked by hand: 95 of 100).
#[test]
fn a_static_build_never_seen_before_is_counted_from_its_first_frame() {
    let _alone = alone();
    let input = media::h264_aac_mp4();
    let t = truth(&input, true);
    // The file stays attached between the two runs however slow the CPU: a file detached
    // after its last process is new again, and its next process rightly held.
    let d = Daemon::start(&["--detach-linger", "10m"]);
    let dir = tempdir("new-static");
    let bin = dir.join("ffmpeg");
    std::fs::copy(static_ffmpeg(), &bin).unwrap();
    let before = processes_held(&d.scrape());
    let decode = || {
        run(no_terminal(
            Command::new(&bin)
                .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"])
                .arg(&input)
                .args(["-f", "null", "-"]),
        ))
        .0
    };
    let pid = decode();
    let s = d.wait_ended(pid);
    assert_video_decode(&s, pid, &t[&0], "h264");
    let audio = [
        ("pid", pid.to_string()),
        ("direction", "decode".into()),
        ("media", "audio".into()),
    ];
    let audio: Vec<(&str, &str)> = audio.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.assert_values(
        &audio,
        &[
            ("media_packets_total", t[&1].packets),
            ("media_frames_total", t[&1].frames),
        ],
    );
    let held = processes_held(&s);
    assert!(held > before, "the process was held");
    // The file is judged now: the next process that runs it is not held, and counted all the
    // same.
    let pid = decode();
    let s = d.wait_ended(pid);
    assert_video_decode(&s, pid, &t[&0], "h264");
    assert_eq!(processes_held(&s), held, "a judged file holds no process");
}

/// A wheel installed where the daemon has never looked (new files, FFmpeg 6.1 under hashed
/// names), whose libraries Python loads with `dlopen` and decodes with at once: the process is
/// held at each new library's mapping until it is attached, and counted from its first frame.
#[test]
fn a_wheel_never_seen_before_is_counted_from_its_first_frame() {
    let _alone = alone();
    let site = assets().join("pyav").join(PYAV_6);
    assert!(
        site.join("av").exists(),
        "PyAV {PYAV_6} missing: run `cargo xtask test`"
    );
    let input = media::h264_aac_mp4();
    let t = truth(&input, true);
    let d = Daemon::start(&[]);
    let dir = tempdir("new-wheel");
    let fresh = dir.join("site");
    run(Command::new("cp").arg("-a").arg(&site).arg(&fresh));
    let before = processes_held(&d.scrape());
    let script = "import sys, av\nwith av.open(sys.argv[1]) as c:\n    for f in c.decode(video=0):\n        pass\n";
    let (pid, _) = run(no_terminal(
        Command::new("python3")
            .args(["-c", script])
            .arg(&input)
            .env("PYTHONPATH", &fresh),
    ));
    let s = d.wait_ended(pid);
    assert_video_decode(&s, pid, &t[&0], "h264");
    assert!(
        s.all("observer_attached_file_info")
            .any(|x| x.label("path").is_some_and(|p| p.contains("new-wheel"))),
        "the fresh copy is what was attached"
    );
    assert!(processes_held(&s) > before, "the process was held");
}

/// The state letter of a process (`R`, `S`, `T` for stopped, ...), from /proc/PID/stat.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The daemon's watchdog (`observer hold-watchdog`), a child of the daemon.
fn watchdog_of(daemon: u32) -> u32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(daemon) && String::from_utf8_lossy(&cmdline).contains("hold-watchdog")
        })
        .expect("the daemon runs its hold watchdog")
}

/// Starts a copy of the static build never seen before while the daemon does not answer (it
/// is stopped), and waits until the kernel holds it. The directory holds the copy.
fn held_new_build(d: &Daemon, name: &str) -> (std::process::Child, TempDir) {
    let dir = tempdir(name);
    let bin = dir.join("ffmpeg");
    std::fs::copy(static_ffmpeg(), &bin).unwrap();
    // The daemon stops answering; its programs still hold for the two seconds its last beat
    // is good for.
    // SAFETY: signals to the test's own daemon.
    unsafe { libc::kill(d.pid() as i32, libc::SIGSTOP) };
    let child = no_terminal(Command::new(&bin).args(["-hide_banner", "-version"]))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = Instant::now();
    while state(pid) != Some('T') {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the new build was not held ({:?})",
            state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, dir)
}

/// Waits up to `within` for `child` to exit successfully.
fn exits_within(child: &mut std::process::Child, within: Duration, what: &str) {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < within, "{what} ({:?})", state(child.id()));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.wait().unwrap().success());
}

/// A daemon that stops answering (stopped by a debugger or a freezer, starved) while a process
/// waits for it: its watchdog resumes the process once it has been held for the limit (3 s),
/// the daemon still stopped.
#[test]
fn a_process_held_by_a_daemon_that_stopped_answering_is_resumed_by_its_watchdog() {
    let _alone = alone();
    let d = Daemon::start(&[]);
    let (mut child, _dir) = held_new_build(&d, "unanswered");
    exits_within(
        &mut child,
        Duration::from_secs(15),
        "the watchdog did not resume it",
    );
    assert_eq!(
        state(d.pid()),
        Some('T'),
        "the daemon was stopped throughout"
    );
    // SAFETY: as above.
    unsafe { libc::kill(d.pid() as i32, libc::SIGCONT) };
    let (status, _) = d.stop();
    assert!(status.success());
}

/// A daemon killed with its watchdog while a process waits for it (a container killed, the
/// OOM killer) leaves that process stopped with nothing left to resume it; the next daemon
/// resumes it as it starts, from the map the dead one pinned.
#[test]
fn a_process_held_by_a_daemon_that_was_killed_is_resumed_by_the_next() {
    let _alone = alone();
    let d = Daemon::start(&[]);
    let watchdog = watchdog_of(d.pid());
    // SAFETY: signals to the test's own daemon and its child.
    unsafe { libc::kill(watchdog as i32, libc::SIGKILL) };
    let (mut child, _dir) = held_new_build(&d, "orphan");
    // SAFETY: as above.
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
    drop(d);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(child.id()), Some('T'), "nothing else resumes it");
    let _next = Daemon::start(&[]);
    exits_within(
        &mut child,
        Duration::from_secs(30),
        "the next daemon did not resume it",
    );
}
