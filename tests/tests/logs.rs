//! FFmpeg's own log messages, captured at `av_vlog` whatever the pipeline's log level.

use std::path::PathBuf;

use observer_tests::{
    Daemon, decode_piped_nut, ffmpeg, media::fixture, run, static_ffmpeg, tempdir,
};

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
    let scratch = tempdir("continuity");
    let input = observer_tests::media::damaged_ts(&ts, &scratch);

    let d = Daemon::start(&[]);
    // FFmpeg's own count: the message is debug level, so only a debug run prints it
    // ("repeat": equal lines in a row are not folded).
    let (loud, stderr) = run(ffmpeg()
        .args(["-loglevel", "repeat+debug", "-i"])
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

/// A frame-threaded decoder (H.264 with 4 threads) decodes on a copy of its context in each
/// worker thread, and its errors are logged on those copies: they land on the decoder's
/// stream all the same, with the system's ffmpeg 5.1 and the static 9 build (whose CLI
/// decodes on a thread of its own). FFmpeg's own log says which were the decoder's: those
/// after the input is described; the ones before come from `avformat_find_stream_info`'s
/// probe decoder, which is no stream. Counted, and as structured events.
#[test]
fn messages_of_a_frame_threaded_decoders_workers_land_on_its_stream() {
    const MB: &str = "error while decoding MB %d %d";
    let damaged = std::fs::read(fixture(
        "h264-noise.nut",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x480:rate=30",
            "-frames:v",
            "120",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-bsf:v",
            "noise=amount=2000",
            "-f",
            "nut",
            "{out}",
        ],
    ))
    .unwrap();
    let d = Daemon::start(&["--log-format", "json"]);
    for bin in [PathBuf::from("ffmpeg"), static_ffmpeg()] {
        let (pid, out) = decode_piped_nut(
            &d,
            &bin,
            &["-loglevel", "repeat+info", "-threads", "4"],
            &damaged,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", bin.display());
        let described = stderr.find("Input #0").expect("ffmpeg describes its input");
        let (probing, decoding) = stderr.split_at(described);
        let count = |text: &str| text.matches("error while decoding MB").count() as f64;
        assert!(count(decoding) > 10.0, "the noise should break macroblocks");
        let s = d.wait_ended(pid);
        let p = pid.to_string();
        let decoder = s
            .one(
                "media_frames_total",
                &[("pid", &p), ("direction", "decode"), ("codec", "h264")],
            )
            .and_then(|x| x.label("stream").cloned())
            .expect("the h264 decoder's stream");
        let on = |stream: &str| {
            s.value(
                "media_log_messages_total",
                &[("pid", &p), ("stream", stream), ("template", MB)],
            )
            .unwrap_or(0.0)
        };
        let what = bin.display();
        assert_eq!(
            on(&decoder),
            count(decoding),
            "{what}: the decoder's, from its workers"
        );
        assert_eq!(on(""), count(probing), "{what}: the probe decoder's");
        let events = events_of(&d, pid);
        let events_on = |stream: &str| {
            events
                .iter()
                .filter(|e| e["template"] == MB && e["stream"] == stream)
                .count() as f64
        };
        assert_eq!(events_on(&decoder), count(decoding), "{what}");
        assert_eq!(events_on(""), count(probing), "{what}");
    }
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

/// The daemon's JSON log lines from target `ffmpeg` for `pid`.
fn events_of(d: &Daemon, pid: u32) -> Vec<serde_json::Value> {
    d.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "ffmpeg" && v["pid"] == pid)
        .collect()
}

#[test]
fn warnings_and_errors_become_structured_events_formatted_like_ffmpegs_own() {
    let dir = tempdir("log-events");
    let (bad, corrupted) = observer_tests::media::damaged_png_nut(&dir, |n| n % 3 == 1);
    let d = Daemon::start(&["--log-format", "json"]);
    // FFmpeg's own rendering of the same messages ("repeat": no folding of equal lines).
    let (pid, stderr) = run(ffmpeg()
        .args(["-loglevel", "repeat+error", "-threads", "1", "-i"])
        .arg(&bad)
        .args(["-f", "null", "-"]));
    let truth: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once("] ").map(|(_, m)| m))
        .filter(|m| m.starts_with("Invalid PNG signature"))
        .collect();
    assert_eq!(truth.len(), corrupted, "{stderr}");
    d.wait_ended(pid);
    let events = events_of(&d, pid);
    let ours: Vec<&str> = events
        .iter()
        .filter(|e| {
            e["template"]
                .as_str()
                .is_some_and(|t| t.starts_with("Invalid PNG signature"))
        })
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(ours, truth, "{events:#?}");
    let e = events
        .iter()
        .find(|e| {
            e["template"]
                .as_str()
                .is_some_and(|t| t.starts_with("Invalid PNG"))
        })
        .unwrap();
    assert_eq!(e["ffmpeg_level"], "error");
    assert_eq!(e["process"], "ffmpeg");
    assert!(
        e["stream"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{pid}-")))
    );

    // A failed open names its URL: the event carries it redacted, never the secret.
    let url = "http://viewer:PLANTEDPASSWORD@127.0.0.1:9/live.m3u8?token=PLANTEDTOKEN";
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i", url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Connection refused"), "{said}");
    // The failed open is counted, by protocol and AVERROR, with no URL on it.
    d.wait_for("the failed open", std::time::Duration::from_secs(20), |s| {
        let v = s.value(
            "media_io_open_failures_total",
            &[
                ("process", "ffmpeg"),
                ("direction", "input"),
                ("protocol", "http"),
                ("error", "ECONNREFUSED"),
            ],
        )?;
        (v >= 1.0).then_some(())
    });
    let want = "http://REDACTED@127.0.0.1:9/live.m3u8?token=REDACTED: Connection refused";
    let t0 = std::time::Instant::now();
    loop {
        let log = d.log_text();
        if log.contains(want) {
            for secret in ["PLANTEDPASSWORD", "PLANTEDTOKEN"] {
                assert!(!log.contains(secret), "{secret} leaked:\n{log}");
            }
            break;
        }
        assert!(t0.elapsed().as_secs() < 20, "no redacted event in:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn log_events_can_be_turned_off() {
    let dir = tempdir("log-events-off");
    let (bad, _) = observer_tests::media::damaged_png_nut(&dir, |n| n == 2);
    let d = Daemon::start(&["--log-format", "json", "--ffmpeg-log-events", "none"]);
    let (pid, _) = run(ffmpeg()
        .args(["-loglevel", "quiet", "-i"])
        .arg(&bad)
        .args(["-f", "null", "-"]));
    let s = d.wait_ended(pid);
    // Still counted, not sent.
    assert!(
        s.sum(
            "media_log_messages_total",
            &[("pid", &pid.to_string()), ("level", "error")]
        ) >= 1.0
    );
    assert!(events_of(&d, pid).is_empty());
}
