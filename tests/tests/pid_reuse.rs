//! A pid handed out again. Its own test binary: setting `ns_last_pid` gives the next process
//! on the whole machine that pid, which must not be another test's pipeline (cargo runs test
//! binaries one after another, the tests inside one binary at once).

use observer_tests::{
    Daemon, ffmpeg,
    media::{fixture, truth},
    run,
};

/// Two processes that get the same pid, one after the other (the kernel hands out a pid again
/// after wrapping; here `ns_last_pid` makes it happen at once), are two sets of streams, each
/// with exactly its own counts: the first one's, still exported in its grace period, is not
/// continued by the second.
#[test]
fn a_reused_pid_never_merges_two_processes_streams() {
    let short = fixture(
        "h264-64x64-30.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x64:rate=25",
            "-frames:v",
            "30",
            "-c:v",
            "libx264",
            "{out}",
        ],
    );
    let long = fixture(
        "h264-64x64-45.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x64:rate=25",
            "-frames:v",
            "45",
            "-c:v",
            "libx264",
            "{out}",
        ],
    );
    let (t_short, t_long) = (&truth(&short, true)[&0], &truth(&long, true)[&0]);
    assert_ne!(t_short.frames, t_long.frames);
    let d = Daemon::start(&[]);
    let decode = |input: &std::path::Path| {
        let mut cmd = ffmpeg();
        cmd.args(["-threads", "1", "-i"])
            .arg(input)
            .args(["-f", "null", "-"]);
        cmd
    };
    let (pid, _) = run(&mut decode(&short));
    d.wait_ended(pid);
    // The next process takes the same pid, unless another one on the machine forks first.
    let reused = (0..50).any(|_| {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("writing ns_last_pid (root in the initial pid namespace)");
        run(&mut decode(&long)).0 == pid
    });
    assert!(reused, "pid {pid} was never handed out again");
    let p = pid.to_string();
    // Both processes have exited: wait for the second one's final counts.
    let s = d.wait_for(
        "two ended decoders under one pid",
        std::time::Duration::from_secs(20),
        |s| {
            let up: Vec<_> = s
                .all("media_stream_up")
                .filter(|x| x.has(&[("pid", p.as_str()), ("direction", "decode")]))
                .collect();
            (up.len() == 2 && up.iter().all(|x| x.value == 0.0)).then(|| s.clone())
        },
    );
    let mut frames: Vec<u64> = s
        .all("media_frames_total")
        .filter(|x| x.has(&[("pid", p.as_str()), ("direction", "decode")]))
        .map(|x| x.value as u64)
        .collect();
    frames.sort_unstable();
    assert_eq!(frames, [t_short.frames, t_long.frames]);
}
