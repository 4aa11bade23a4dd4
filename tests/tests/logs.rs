//! FFmpeg's own log messages, captured at `av_vlog` whatever the pipeline's log level.

use observer_tests::{Daemon, ffmpeg, media::fixture, run, tempdir};

const CONTINUITY: &str = "Continuity check failed for pid %d expected %d got %d";

#[test]
fn mpegts_continuity_errors_equal_ffmpegs_own_count() {
    let ts = fixture(
        "h264.ts",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=4",
            "-c:v",
            "libx264",
            "-f",
            "mpegts",
            "{out}",
        ],
    );
    // Drop one 188-byte transport packet in 40: the continuity counters of whatever PIDs they
    // carried now skip.
    let data = std::fs::read(&ts).unwrap();
    let bad: Vec<u8> = data
        .chunks(188)
        .enumerate()
        .filter(|(i, _)| i % 40 != 17)
        .flat_map(|(_, p)| p.to_vec())
        .collect();
    let dir = tempdir("continuity");
    let input = dir.join("damaged.ts");
    std::fs::write(&input, bad).unwrap();

    let d = Daemon::start(&[]);
    // FFmpeg's own count: the message is debug level, so only a debug run prints it.
    let (loud, stderr) = run(ffmpeg()
        .args(["-loglevel", "debug", "-i"])
        .arg(&input)
        .args(["-f", "null", "-"]));
    let truth = stderr.matches("Continuity check failed").count();
    assert!(truth > 10, "the damage should break continuity: {truth}");
    // The same input with messages silenced: observer counts them all the same.
    let (quiet, _) = run(ffmpeg()
        .args(["-loglevel", "quiet", "-i"])
        .arg(&input)
        .args(["-f", "null", "-"]));
    for pid in [loud, quiet] {
        let p = pid.to_string();
        let s = d.wait_for(
            "the continuity messages",
            std::time::Duration::from_secs(20),
            |s| {
                let v = s.value(
                    "media_log_messages_total",
                    &[("pid", &p), ("level", "debug"), ("template", CONTINUITY)],
                )?;
                (v == truth as f64).then(|| s.clone())
            },
        );
        // Templates, not messages: one series however many pids and counters were reported.
        let series = s
            .all("media_log_messages_total")
            .filter(|x| x.has(&[("pid", &p), ("template", CONTINUITY)]))
            .count();
        assert_eq!(series, 1);
    }
}

#[test]
fn messages_of_a_codec_land_on_its_stream() {
    let dir = tempdir("png-log");
    let (bad, corrupted) = observer_tests::media::damaged_png_nut(&dir, |n| n % 4 == 2);
    let d = Daemon::start(&[]);
    let (pid, _) = run(ffmpeg()
        .args(["-loglevel", "quiet", "-threads", "1", "-i"])
        .arg(&bad)
        .args(["-f", "null", "-"]));
    let s = d.wait_ended(pid);
    let p = pid.to_string();
    let decoder = s
        .one(
            "media_frames_total",
            &[("pid", &p), ("direction", "decode"), ("codec", "png")],
        )
        .and_then(|x| x.label("stream").cloned())
        .expect("the png decoder's stream");
    let msgs: Vec<_> = s
        .all("media_log_messages_total")
        .filter(|x| {
            x.has(&[("pid", &p), ("level", "error")])
                && x.label("template")
                    .is_some_and(|t| t.starts_with("Invalid PNG signature"))
        })
        .collect();
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert_eq!(msgs[0].value, corrupted as f64);
    assert_eq!(msgs[0].label("stream"), Some(&decoder));
}

#[test]
fn log_capture_can_be_turned_off() {
    let input = observer_tests::media::h264_aac_mp4();
    let d = Daemon::start(&["--ffmpeg-logs", "false"]);
    let (pid, _) = run(ffmpeg().arg("-i").arg(&input).args(["-f", "null", "-"]));
    let s = d.wait_ended(pid);
    let p = pid.to_string();
    assert!(
        s.value(
            "media_frames_total",
            &[("pid", &p), ("direction", "decode"), ("media", "video")]
        )
        .is_some()
    );
    assert_eq!(
        s.all("media_log_messages_total")
            .filter(|x| x.has(&[("pid", &p)]))
            .count(),
        0
    );
}
