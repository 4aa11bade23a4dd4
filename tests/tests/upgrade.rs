//! A library upgraded on disk while pipelines map it. Its own test binary: it waits for the
//! daemon's count of attached files to grow, which another test's libraries must not do
//! meanwhile (cargo runs test binaries one after another, the tests inside one at once).

use std::{
    io::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use observer_tests::{Daemon, Scrape, media::tiny_h264, streams_program, tempdir};

/// Starts `streams` on one stream for `secs` seconds with libavcodec from `libdir`; it waits
/// for a line on stdin before opening its decoder.
fn paced_decoder(exe: &Path, input: &Path, libdir: &Path, secs: u32) -> Child {
    Command::new(exe)
        .arg(input)
        .args(["1", "25", &secs.to_string()])
        .env("LD_LIBRARY_PATH", libdir)
        .env("STREAMS_WAIT", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("streams")
}

/// Lets a `paced_decoder` go, waits for it, and returns the frames it decoded.
fn go_and_count(mut child: Child) -> u64 {
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a frame count")
}

/// A library replaced on disk while a process maps it, as a package upgrade replaces it (a
/// new file renamed over the old path): the process still running on the old file is counted
/// to its last frame, and a process started afterwards, which maps the new file at the same
/// path, is attached (a second file) and counted from its first.
#[test]
fn a_library_replaced_on_disk_while_mapped_is_followed_to_the_new_file() {
    let dir = tempdir("replaced");
    let exe = streams_program(&dir);
    let input = tiny_h264();
    let libdir = dir.join("lib");
    std::fs::create_dir_all(&libdir).unwrap();
    let system = std::fs::canonicalize("/usr/lib/x86_64-linux-gnu/libavcodec.so.59").unwrap();
    let lib = libdir.join("libavcodec.so.59");
    std::fs::copy(&system, &lib).unwrap();
    let d = Daemon::start(&[]);
    let old = paced_decoder(&exe, &input, &libdir, 3);
    let old_pid = old.id();
    let part = libdir.to_str().unwrap();
    d.wait_for("the library copy attached", Duration::from_secs(20), |s| {
        s.attached(part).then_some(())
    });
    let files = |s: &Scrape| s.value("observer_attached_files", &[]).unwrap_or(0.0);
    let before = files(&d.scrape());
    let old = std::thread::spawn(move || go_and_count(old));
    std::thread::sleep(Duration::from_secs(1));
    // The upgrade: the new file is written beside the old one and renamed over it.
    use std::os::unix::fs::MetadataExt as _;
    let old_inode = std::fs::metadata(&lib).unwrap().ino();
    let staged = libdir.join(".libavcodec.so.59.dpkg-new");
    std::fs::copy(&system, &staged).unwrap();
    std::fs::rename(&staged, &lib).unwrap();
    assert_ne!(std::fs::metadata(&lib).unwrap().ino(), old_inode);
    let new = paced_decoder(&exe, &input, &libdir, 2);
    let new_pid = new.id();
    d.wait_for(
        "the new file attached beside the old one",
        Duration::from_secs(20),
        |s| (files(s) > before).then_some(()),
    );
    let new_frames = go_and_count(new);
    let old_frames = old.join().unwrap();
    for (pid, frames) in [(old_pid, old_frames), (new_pid, new_frames)] {
        let s = d.wait_ended(pid);
        let p = pid.to_string();
        assert_eq!(
            s.value(
                "media_frames_total",
                &[("pid", p.as_str()), ("direction", "decode")]
            ),
            Some(frames as f64),
            "pid {pid}"
        );
    }
}
