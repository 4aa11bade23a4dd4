//! Exact per-stream counts from real ffmpeg processes, against ffprobe's packet and frame
//! lists. Every pipeline here starts after the daemon, so these also show a new process is
//! counted from its first frame.

use observer_tests::{
    Daemon, Scrape, ffmpeg,
    media::{self, StreamTruth, fixture, truth},
    patience, run, tempdir,
};

fn labels<'a>(pid: &'a str, direction: &'a str, t: &'a StreamTruth) -> [(&'a str, &'a str); 4] {
    [
        ("pid", pid),
        ("direction", direction),
        ("media", &t.media),
        ("codec", &t.codec),
    ]
}

/// Frames, packets, bytes and key frames of a decoder against the file's truth.
fn assert_decoded(s: &Scrape, pid: u32, t: &StreamTruth) {
    let pid = pid.to_string();
    let l = labels(&pid, "decode", t);
    s.assert_values(
        &l,
        &[
            ("media_packets_total", t.packets),
            ("media_packet_bytes_total", t.bytes),
            ("media_frames_total", t.frames),
            ("media_keyframes_total", t.key_frames),
        ],
    );
    assert_latency_plausible(s, &l, t.frames);
    for call in ["avcodec_send_packet", "avcodec_receive_frame"] {
        let mut lc = l.to_vec();
        lc.push(("call", call));
        let n = s
            .value("media_codec_call_duration_seconds", &lc)
            .unwrap_or(0.0);
        assert!(
            n >= t.packets.min(t.frames) as f64,
            "{call} timed {n} times for {l:?}"
        );
    }
}

/// The labels of the encoder the transcodes here use for `t`'s media (libx264, aac).
fn encoder_labels<'a>(pid: &'a str, t: &'a StreamTruth) -> [(&'a str, &'a str); 4] {
    let codec = if t.media == "video" { "libx264" } else { "aac" };
    [
        ("pid", pid),
        ("direction", "encode"),
        ("media", &t.media),
        ("codec", codec),
    ]
}

/// Packets, bytes and key packets of an encoder against its output file's truth.
fn assert_encoded(s: &Scrape, l: &[(&str, &str)], t: &StreamTruth) {
    s.assert_values(
        l,
        &[
            ("media_packets_total", t.packets),
            ("media_packet_bytes_total", t.bytes),
            ("media_keyframes_total", t.key_packets),
        ],
    );
}

/// Every output paired with its input: the histogram counts each frame once, and its values
/// are durations a decode of this size can take (above a microsecond, under 4 s; on an
/// emulated CPU shared by several guests, under 4 s stretched by the tests' patience).
fn assert_latency_plausible(s: &Scrape, l: &[(&str, &str)], frames: u64) {
    let h = s
        .one("media_frame_latency_seconds", l)
        .unwrap_or_else(|| panic!("no latency for {l:?}"));
    assert_eq!(h.value, frames as f64, "latency samples of {l:?}");
    assert_eq!(
        s.value("media_frame_latency_unmatched_total", l),
        Some(0.0),
        "unpaired outputs of {l:?}"
    );
    let below = |le: f64| {
        h.buckets
            .iter()
            .filter(|(b, _)| *b <= le)
            .map(|(_, c)| *c)
            .fold(0.0, f64::max)
    };
    // The log2 bucket a bound falls in reaches 7% above it (4 s: 4.29).
    let bound = patience(std::time::Duration::from_secs(4)).as_secs_f64() * 1.08;
    assert_eq!(
        below(bound),
        frames as f64,
        "latencies over {bound:.1} s for {l:?}: {:?}",
        h.buckets
    );
    assert!(
        below(1.1e-6) < frames as f64 / 2.0,
        "most latencies under a microsecond for {l:?}: {:?}",
        h.buckets
    );
    let sum = s
        .value("media_frame_latency_seconds_sum", l)
        .expect("latency sum");
    assert!(
        sum > 0.0 && sum < frames as f64 * 4.3,
        "latency sum {sum} for {l:?}"
    );
}

#[test]
fn decode_counts_equal_ffprobe() {
    let input = media::h264_aac_mp4();
    let truth = truth(&input, true);
    let d = Daemon::start(&[]);
    let (pid, _) = run(ffmpeg().arg("-i").arg(&input).args(["-f", "null", "-"]));
    let s = d.wait_ended(pid);
    for t in truth.values() {
        assert_decoded(&s, pid, t);
    }
    // Nothing but the pipeline's own decoders: the ones avformat_find_stream_info opens to
    // probe the input are not streams.
    let decoders = s
        .all("media_frames_total")
        .filter(|x| x.has(&[("pid", &pid.to_string()), ("direction", "decode")]))
        .count();
    assert_eq!(decoders, truth.len());
    let info = s
        .one(
            "media_stream_info",
            &[
                ("pid", &pid.to_string()),
                ("direction", "decode"),
                ("media", "video"),
            ],
        )
        .expect("video stream info");
    assert_eq!(
        (
            info.label("width").unwrap().as_str(),
            info.label("height").unwrap().as_str()
        ),
        ("320", "240")
    );
    assert_eq!(
        info.label("pixel_format").map(String::as_str),
        Some("yuv420p")
    );
    assert_eq!(info.label("process").map(String::as_str), Some("ffmpeg"));
    let audio = s
        .one(
            "media_stream_info",
            &[
                ("pid", &pid.to_string()),
                ("direction", "decode"),
                ("media", "audio"),
            ],
        )
        .unwrap();
    assert_eq!(
        audio.label("sample_rate").map(String::as_str),
        Some("48000")
    );
    assert_eq!(audio.label("channels").map(String::as_str), Some("1"));
}

#[test]
fn transcode_counts_equal_ffprobe() {
    let input = media::h264_aac_mp4();
    let truth_in = truth(&input, true);
    let dir = tempdir("transcode");
    // NUT stores packets exactly as the encoders return them, so its packet list is the
    // encoders' output.
    let out = dir.join("out.nut");
    let d = Daemon::start(&[]);
    let (pid, _) = run(ffmpeg()
        .arg("-i")
        .arg(&input)
        .args([
            "-vf",
            "scale=160:120",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-bf",
            "2",
            "-b:v",
            "300k",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "nut",
        ])
        .arg(&out));
    let s = d.wait_ended(pid);
    for t in truth_in.values() {
        assert_decoded(&s, pid, t);
    }
    let truth_out = truth(&out, false);
    let p = pid.to_string();
    for t in truth_out.values() {
        let l = encoder_labels(&p, t);
        assert_encoded(&s, &l, t);
        // The encoders' nominal frame rate, as the frame-rate alert compares output against
        // (the ffmpeg CLI sets the output rate on the encoder before opening it).
        if t.media == "video" {
            assert_eq!(
                s.value("media_stream_nominal_frame_rate", &l),
                Some(25.0),
                "nominal frame rate of {l:?}"
            );
        }
        // The configured targets, as the bit-rate alert compares output against.
        let target = if t.media == "video" {
            300_000.0
        } else {
            64_000.0
        };
        assert_eq!(
            s.value("media_stream_bitrate_target_bits_per_second", &l),
            Some(target)
        );
        let input = truth_in.values().find(|x| x.media == t.media).unwrap();
        if t.media == "video" {
            // One frame in per decoded frame (the scale filter keeps the frame rate) and one
            // latency sample per frame: x264 keeps each frame's pts on its packet.
            assert_eq!(
                s.expect("media_frames_total", &l),
                input.frames as f64,
                "frames into {l:?}"
            );
            assert_latency_plausible(&s, &l, input.frames);
        } else {
            // The AAC encoder takes 1024-sample frames: the filter graph reframes the decoded
            // samples to that size.
            assert_eq!(
                s.expect("media_frames_total", &l),
                input.samples.div_ceil(1024) as f64,
                "frames into {l:?}"
            );
            let h = s.one("media_frame_latency_seconds", &l).unwrap();
            assert_eq!(
                h.value + s.expect("media_frame_latency_unmatched_total", &l),
                t.packets as f64
            );
        }
    }
    // The filter graph between them: every video frame in and out, each paired.
    let v = [("pid", p.as_str()), ("media", "video")];
    let video_frames = truth_in
        .values()
        .find(|x| x.media == "video")
        .unwrap()
        .frames as f64;
    assert_eq!(s.sum("media_filter_frames_in_total", &v), video_frames);
    assert_eq!(s.sum("media_filter_frames_out_total", &v), video_frames);
    assert_eq!(
        s.sum("media_filter_frame_latency_seconds", &v),
        video_frames
    );
    let info = s
        .one(
            "media_stream_info",
            &[("pid", &p), ("direction", "encode"), ("media", "video")],
        )
        .unwrap();
    assert_eq!(info.label("width").map(String::as_str), Some("160"));
}

/// FFmpeg 4.3 (libavcodec 58, Debian bullseye's) run for real: its libraries are the ones on
/// no linker path here, found when the process maps them, and read with libavcodec 58's
/// layout (and its legacy encode calls counted once, inside `avcodec_send_frame`).
#[test]
fn ffmpeg_4_decode_and_encode_counts_equal_ffprobe() {
    let input = media::h264_aac_mp4();
    let truth_in = truth(&input, true);
    let dir = tempdir("ffmpeg4");
    let out = dir.join("out.nut");
    let d = Daemon::start(&[]);
    let (pid, _) = run(observer_tests::ffmpeg4()
        .arg("-i")
        .arg(&input)
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-c:a", "aac", "-f", "nut",
        ])
        .arg(&out));
    let s = d.wait_ended(pid);
    for t in truth_in.values() {
        assert_decoded(&s, pid, t);
    }
    let p = pid.to_string();
    for t in truth(&out, false).values() {
        let l = encoder_labels(&p, t);
        assert_encoded(&s, &l, t);
        let info = s.one("media_stream_info", &l).expect("stream info");
        assert_eq!(info.label("libavcodec").map(String::as_str), Some("58"));
    }
}

#[test]
fn corrupt_input_counts_codec_errors_by_name() {
    let dir = tempdir("corrupt");
    let (bad, damaged) = media::damaged_png_nut(&dir, |n| n % 3 == 1);
    let d = Daemon::start(&[]);
    // One decoder thread so each failure surfaces from the call that met it.
    let (pid, stderr) = run(ffmpeg()
        .args(["-loglevel", "repeat+error", "-threads", "1", "-i"])
        .arg(&bad)
        .args(["-f", "null", "-"]));
    let reported = stderr.matches("Error while decoding stream").count();
    assert_eq!(reported, damaged, "ffmpeg's own error count: {stderr}");
    let s = d.wait_ended(pid);
    let p = pid.to_string();
    let l = [
        ("pid", p.as_str()),
        ("direction", "decode"),
        ("codec", "png"),
        ("error", "INVALIDDATA"),
    ];
    assert_eq!(
        s.sum("media_codec_errors_total", &l),
        damaged as f64,
        "{}",
        s.text
    );
    let other: f64 = s
        .all("media_codec_errors_total")
        .filter(|x| {
            x.has(&[("pid", &p)]) && x.label("error").map(String::as_str) != Some("INVALIDDATA")
        })
        .map(|x| x.value)
        .sum();
    assert_eq!(other, 0.0);
    assert_eq!(
        s.value(
            "media_frames_total",
            &[("pid", &p), ("direction", "decode")]
        ),
        Some((10 - damaged) as f64)
    );
}

#[test]
fn concurrent_processes_are_told_apart() {
    let inputs: Vec<_> = [25u32, 50, 75]
        .iter()
        .map(|n| {
            fixture(
                &format!("h264-{n}.mp4"),
                &[
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=160x120:rate=25",
                    "-frames:v",
                    &n.to_string(),
                    "-c:v",
                    "libx264",
                    "-f",
                    "mp4",
                    "{out}",
                ],
            )
        })
        .collect();
    let d = Daemon::start(&[]);
    let children: Vec<_> = inputs
        .iter()
        .map(|i| {
            ffmpeg()
                .args(["-re", "-i"])
                .arg(i)
                .args(["-f", "null", "-"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("ffmpeg")
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    for (pid, input) in pids.iter().zip(&inputs) {
        let s = d.wait_ended(*pid);
        let t = truth(input, true);
        assert_decoded(&s, *pid, &t[&0]);
    }
    let s = d.scrape();
    let streams: std::collections::BTreeSet<String> = s
        .all("media_frames_total")
        .filter(|x| pids.iter().any(|p| x.has(&[("pid", &p.to_string())])))
        .map(|x| x.label("stream").unwrap().clone())
        .collect();
    assert_eq!(
        streams.len(),
        pids.len() * 2,
        "a decoder and an encoder per process, each its own stream"
    );
}

#[test]
fn subtitles_are_streams_too() {
    let dir = tempdir("subs");
    let srt = dir.join("subs.srt");
    let cues: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "{}\n00:00:0{i},100 --> 00:00:0{i},900\ncue number {i}\n",
                i + 1
            )
        })
        .collect();
    std::fs::write(&srt, cues.join("\n")).unwrap();
    let input = dir.join("in.mkv");
    run(ffmpeg()
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48:rate=5:duration=6",
            "-i",
        ])
        .arg(&srt)
        .args(["-c:v", "mpeg4", "-c:s", "srt"])
        .arg(&input));
    let out = dir.join("out.mkv");
    let d = Daemon::start(&[]);
    let (pid, _) = run(ffmpeg()
        .arg("-i")
        .arg(&input)
        .args(["-map", "0:s", "-c:s", "ass"])
        .arg(&out));
    let s = d.wait_ended(pid);
    let p = pid.to_string();
    let tin = truth(&input, false);
    let subs_in = tin.values().find(|t| t.media == "subtitle").unwrap();
    let dec = [
        ("pid", p.as_str()),
        ("direction", "decode"),
        ("media", "subtitle"),
        ("codec", "srt"),
    ];
    assert_eq!(
        s.value("media_packets_total", &dec),
        Some(subs_in.packets as f64)
    );
    assert_eq!(
        s.value("media_packet_bytes_total", &dec),
        Some(subs_in.bytes as f64)
    );
    assert_eq!(s.value("media_frames_total", &dec), Some(5.0));
    let tout = truth(&out, false);
    let subs_out = tout.values().find(|t| t.media == "subtitle").unwrap();
    let enc = [
        ("pid", p.as_str()),
        ("direction", "encode"),
        ("media", "subtitle"),
        ("codec", "ass"),
    ];
    assert_eq!(
        s.value("media_packets_total", &enc),
        Some(subs_out.packets as f64)
    );
    assert_eq!(
        s.value("media_packet_bytes_total", &enc),
        Some(subs_out.bytes as f64),
        "{}",
        s.text
    );
}

#[test]
fn a_reused_context_starts_a_new_stream() {
    let dir = tempdir("reuse");
    let exe = dir.join("reuse");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("c/reuse.c");
    run(std::process::Command::new("gcc")
        .args(["-O1", "-I/usr/include/x86_64-linux-gnu", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(["-lavcodec", "-lavutil"]));
    let d = Daemon::start(&[]);
    let out = std::process::Command::new(&exe).output().expect("reuse");
    assert!(out.status.success());
    let pid_rounds: Vec<(String, u64, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(pid_rounds.len(), 5);
    let addresses: std::collections::BTreeSet<&String> = pid_rounds.iter().map(|r| &r.0).collect();
    assert!(
        addresses.len() < pid_rounds.len(),
        "no context address was reused: {pid_rounds:?}"
    );
    // The process has exited; find its streams by the frame counts it printed.
    let s = d.wait_for(
        "five encoder streams from the reuse program",
        std::time::Duration::from_secs(20),
        |s| {
            let ours: Vec<_> = s
                .all("media_frames_total")
                .filter(|x| {
                    x.has(&[
                        ("process", "reuse"),
                        ("direction", "encode"),
                        ("codec", "mpeg4"),
                    ])
                })
                .collect();
            (ours.len() == 5).then(|| s.clone())
        },
    );
    let mut got: Vec<(u64, u64)> = s
        .all("media_frames_total")
        .filter(|x| x.has(&[("process", "reuse"), ("direction", "encode")]))
        .map(|x| {
            let stream = x.label("stream").unwrap();
            let packets = s
                .value("media_packets_total", &[("stream", stream)])
                .unwrap();
            (x.value as u64, packets as u64)
        })
        .collect();
    let mut want: Vec<(u64, u64)> = pid_rounds.iter().map(|r| (r.1, r.2)).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "each round its own stream with its own counts");
}

/// `--directions decode`: a transcode's decoders are counted exactly as with every direction
/// probed, and its encoders and filter graph, not probed, have no series at all (a missing
/// series, never a zero that would read as a stalled encoder).
#[test]
fn only_the_directions_asked_for_are_probed() {
    let input = media::h264_aac_mp4();
    let truth_in = truth(&input, true);
    let d = Daemon::start(&["--directions", "decode"]);
    let (pid, _) = run(ffmpeg().arg("-i").arg(&input).args([
        "-vf",
        "scale=160:120",
        "-c:v",
        "mpeg4",
        "-c:a",
        "aac",
        "-f",
        "null",
        "-",
    ]));
    let s = d.wait_ended(pid);
    for t in truth_in.values() {
        assert_decoded(&s, pid, t);
    }
    let p = pid.to_string();
    let mine = |name: &str| {
        s.all(name)
            .filter(|x| x.label("pid") == Some(&p))
            .map(|x| x.label("direction").cloned().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert!(
        mine("media_frames_total").iter().all(|d| d == "decode"),
        "{}",
        s.text
    );
    assert!(
        mine("media_filter_frames_in_total").is_empty(),
        "{}",
        s.text
    );
}
