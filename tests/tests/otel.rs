//! OpenTelemetry: spans and logs arrive at a real OTLP receiver (gRPC and HTTP/protobuf, on
//! OpenTelemetry's own protocol definitions) from real ffmpeg pipelines, with the structure,
//! attributes and totals the Prometheus side shows for the same streams.

use std::time::Duration;

use observer_tests::{
    Daemon, Scrape, ffmpeg,
    media::{self, fixture},
    otlp::{Receiver, attr_bool, attr_int, attr_str},
    run, tempdir,
    tls::Pki,
};
use opentelemetry_proto::tonic::trace::v1::Span;

const SECS: Duration = Duration::from_secs(30);

/// One test at a time: a daemon's probes see every pipeline on the node, so a test sampling
/// every frame would also queue (and drop) the frames of another test's pipelines.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn otlp_env<'a>(url: &'a str, protocol: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_SERVICE_NAME", "observer-under-test"),
    ]
}

/// The root span of a process's trace.
fn root(spans: &[Span], pid: u32) -> Option<&Span> {
    spans.iter().find(|s| {
        s.parent_span_id.is_empty() && attr_int(&s.attributes, "process.pid") == Some(pid as i64)
    })
}

fn children<'a>(spans: &'a [Span], parent: &'a Span) -> impl Iterator<Item = &'a Span> + 'a {
    spans
        .iter()
        .filter(move |s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
}

/// A stream's Prometheus value by its `stream` label.
fn prom(s: &Scrape, name: &str, stream: &str) -> i64 {
    s.value(name, &[("stream", stream)])
        .unwrap_or_else(|| panic!("{name} of {stream}")) as i64
}

#[test]
fn grpc_spans_have_the_pipelines_structure_attributes_and_prometheus_totals() {
    let _serial = serial();
    let rx = Receiver::start();
    let url = rx.grpc_url();
    let d = Daemon::start_env(
        &["--frame-sample-ratio", "1", "--slow-frame", "off"],
        &otlp_env(&url, "grpc"),
    );
    let input = media::h264_aac_mp4();
    let (pid, _) = run(ffmpeg().args(["-threads", "1", "-i"]).arg(&input).args([
        "-c:v",
        "mpeg4",
        "-c:a",
        "pcm_s16le",
        "-f",
        "null",
        "-",
    ]));
    let s = d.wait_ended(pid);

    // Every frame out of a codec stream is a span (ratio 1), child of the stream's span: a
    // frame paired with its input, so outputs less the unpaired ones. Frame spans may come
    // in export batches after the stream's and the pipeline's own.
    let frame_spans = |st: &Span| {
        let label = attr_str(&st.attributes, "media.stream").expect("media.stream");
        let unmatched = prom(&s, "media_frame_latency_unmatched_total", &label);
        let outputs = if st.name.starts_with("decode") {
            prom(&s, "media_frames_total", &label)
        } else {
            prom(&s, "media_packets_total", &label)
        };
        outputs - unmatched
    };
    let got = rx.wait_for("the pipeline's spans and every frame span", SECS, |r| {
        let root = root(&r.spans, pid)?;
        children(&r.spans, root)
            .filter(|st| st.name != "filter graph")
            .all(|st| children(&r.spans, st).count() as i64 == frame_spans(st))
            .then(|| r.clone())
    });
    let root = root(&got.spans, pid).unwrap();
    assert_eq!(root.name, "pipeline ffmpeg");
    assert!(
        attr_str(&root.attributes, "process.command_line").is_some_and(|c| c.contains("mpeg4")),
        "{root:?}"
    );
    let streams: Vec<&Span> = children(&got.spans, root).collect();
    let mut names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "decode aac",
            "decode h264",
            "encode mpeg4",
            "encode pcm_s16le",
            "filter graph",
            "filter graph"
        ],
        "one child span per codec stream and filter graph"
    );
    for st in &streams {
        let a = &st.attributes;
        let label = attr_str(a, "media.stream").expect("media.stream");
        if st.name == "filter graph" {
            for (attr, metric) in [
                ("media.frames_in", "media_filter_frames_in_total"),
                ("media.frames_out", "media_filter_frames_out_total"),
            ] {
                assert_eq!(attr_int(a, attr), Some(prom(&s, metric, &label)));
            }
            continue;
        }
        // Totals equal what Prometheus shows for the same stream.
        for (attr, metric) in [
            ("media.frames", "media_frames_total"),
            ("media.packets", "media_packets_total"),
            ("media.packet_bytes", "media_packet_bytes_total"),
            ("media.keyframes", "media_keyframes_total"),
        ] {
            assert_eq!(
                attr_int(a, attr),
                Some(prom(&s, metric, &label)),
                "{attr} of {}",
                st.name
            );
        }
        assert_eq!(attr_int(a, "process.pid"), Some(pid as i64));
        assert!(st.start_time_unix_nano >= root.start_time_unix_nano);
        assert!(st.end_time_unix_nano <= root.end_time_unix_nano);
        assert!(st.start_time_unix_nano < st.end_time_unix_nano);
        let frames = children(&got.spans, st).count() as i64;
        assert_eq!(frames, frame_spans(st), "frame spans of {}", st.name);
        assert!(frames > 0, "{} made no frame", st.name);
    }
    let video = streams.iter().find(|s| s.name == "decode h264").unwrap();
    assert_eq!(attr_int(&video.attributes, "media.width"), Some(320));
    assert_eq!(
        attr_str(&video.attributes, "media.url.full").or(attr_str(&video.attributes, "url.full")),
        Some(input.display().to_string())
    );
    let frame = children(&got.spans, video).next().unwrap();
    assert_eq!(frame.name, "decode frame");
    assert_eq!(
        attr_bool(&frame.attributes, "media.frame.sampled"),
        Some(true)
    );
    assert!(attr_int(&frame.attributes, "media.packet.size").is_some_and(|n| n > 0));
    let keys = children(&got.spans, video)
        .filter(|f| attr_bool(&f.attributes, "media.frame.key") == Some(true))
        .count() as i64;
    assert_eq!(
        keys,
        prom(
            &s,
            "media_keyframes_total",
            &attr_str(&video.attributes, "media.stream").unwrap()
        )
    );
    assert_eq!(
        attr_str(&got.resource, "service.name").as_deref(),
        Some("observer-under-test")
    );
    assert!(attr_str(&got.resource, "host.name").is_some());
    // Nothing was lost on the way, and the daemon says so.
    let s = d.scrape();
    assert_eq!(
        s.value("observer_otlp_dropped_total", &[("signal", "traces")]),
        Some(0.0)
    );
    assert_eq!(s.value("observer_frame_spans_lost_total", &[]), Some(0.0));
}

#[test]
fn http_a_zero_slow_threshold_keeps_every_frame_and_logs_join_their_stream() {
    let _serial = serial();
    let rx = Receiver::start();
    let url = rx.http_url();
    let d = Daemon::start_env(
        &["--frame-sample-ratio", "0", "--slow-frame", "0s"],
        &otlp_env(&url, "http/protobuf"),
    );
    let dir = tempdir("otel-logs");
    let (bad, damaged) = media::damaged_png_nut(&dir, |n| n % 3 == 1);
    let (pid, _) = run(ffmpeg()
        .args(["-threads", "1", "-i"])
        .arg(&bad)
        .args(["-f", "null", "-"]));
    let s = d.wait_ended(pid);
    let got = rx.wait_for("the pipeline's root span", SECS, |r| {
        root(&r.spans, pid).map(|_| r.clone())
    });
    let root = root(&got.spans, pid).unwrap();
    let decoder = children(&got.spans, root)
        .find(|s| s.name == "decode png")
        .expect("the decoder's span");
    let label = attr_str(&decoder.attributes, "media.stream").unwrap();
    // Not sampled, all slow: every decoded frame is a span.
    let frames: Vec<&Span> = children(&got.spans, decoder).collect();
    assert_eq!(
        frames.len() as i64,
        prom(&s, "media_frames_total", &label)
            - prom(&s, "media_frame_latency_unmatched_total", &label)
    );
    assert_eq!(frames.len(), 10 - damaged);
    for f in &frames {
        assert_eq!(attr_bool(&f.attributes, "media.frame.slow"), Some(true));
        assert_eq!(attr_bool(&f.attributes, "media.frame.sampled"), Some(false));
    }
    // The failed calls: the span's status, its error total and an event per kind.
    assert_eq!(
        attr_int(&decoder.attributes, "media.errors"),
        Some(damaged as i64)
    );
    assert_eq!(
        decoder.status.as_ref().map(|s| s.code),
        Some(2),
        "status error"
    );
    let errors: i64 = decoder
        .events
        .iter()
        .filter(|e| e.name == "codec error")
        .map(|e| attr_int(&e.attributes, "media.errors").unwrap_or(0))
        .sum();
    assert_eq!(errors, damaged as i64);
    // The decoder's complaints are log records in the decoder's span.
    let got = rx.wait_for("the decoder's log records", SECS, |r| {
        let n = r
            .logs
            .iter()
            .filter(|l| l.trace_id == root.trace_id && l.span_id == decoder.span_id)
            .count();
        (n > 0).then(|| r.clone())
    });
    let log = got
        .logs
        .iter()
        .find(|l| l.span_id == decoder.span_id)
        .unwrap();
    assert!(log.severity_number >= 17, "error severity: {log:?}");
    assert_eq!(attr_int(&log.attributes, "process.pid"), Some(pid as i64));
    assert_eq!(
        attr_str(&log.attributes, "media.stream").as_deref(),
        Some(label.as_str())
    );
    // The daemon's own events are logs too.
    assert!(
        got.logs
            .iter()
            .any(|l| l.trace_id.is_empty() && format!("{:?}", l.body).contains("OTLP")),
        "the daemon's own start-up line"
    );
}

#[test]
fn a_collector_that_goes_away_costs_bounded_memory_and_counted_drops() {
    let _serial = serial();
    let mut rx = Receiver::start();
    let url = rx.grpc_url();
    let d = Daemon::start_env(
        &[
            "--frame-sample-ratio",
            "1",
            "--otlp-queue-size",
            "2000",
            "--otlp-timeout",
            "2s",
        ],
        &otlp_env(&url, "grpc"),
    );
    let input = fixture(
        "h264-64x64.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x64:rate=25",
            "-t",
            "200",
            "-c:v",
            "libx264",
            "-g",
            "50",
            "-f",
            "mp4",
            "{out}",
        ],
    );
    let decode = || {
        run(ffmpeg()
            .args(["-threads", "1", "-i"])
            .arg(&input)
            .args(["-f", "null", "-"]))
        .0
    };
    let first = decode();
    rx.wait_for("spans of a run with the collector up", SECS, |r| {
        root(&r.spans, first).map(|_| ())
    });
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    let before = rss();

    rx.pause();
    let t0 = std::time::Instant::now();
    let mut frames = 0.0;
    while t0.elapsed() < Duration::from_secs(60) {
        let pid = decode();
        frames += d
            .wait_ended(pid)
            .value(
                "media_frames_total",
                &[("pid", &pid.to_string()), ("direction", "decode")],
            )
            .unwrap();
    }
    let s = d.scrape();
    let dropped = s.expect("observer_otlp_dropped_total", &[("signal", "traces")]);
    let queued = s.expect("observer_otlp_queue_length", &[("signal", "traces")]);
    let after = rss();
    assert!(
        dropped > frames / 2.0,
        "most of {frames} frame spans dropped and counted: {dropped}"
    );
    // Two queues (spans of processes and streams; frame spans) and the batch being sent.
    assert!(
        queued <= 2.0 * 2000.0 + 512.0,
        "the queues are bounded: {queued}"
    );
    // Unbounded, a minute of frame spans would be hundreds of megabytes.
    assert!(
        after < before + 32 * 1024,
        "resident memory grew from {before} kB to {after} kB"
    );

    rx.resume();
    let last = decode();
    if rx
        .try_wait_for(SECS, |r| root(&r.spans, last).map(|_| ()))
        .is_none()
    {
        panic!(
            "no spans of a run after the collector came back\n{}\n{}",
            d.scrape().text,
            d.log_text()
        );
    }
    let exported = d
        .scrape()
        .expect("observer_otlp_exported_total", &[("signal", "traces")]);
    assert!(exported > 0.0);
}

#[test]
fn otlp_metrics_carry_what_prometheus_shows() {
    let _serial = serial();
    let rx = Receiver::start();
    let url = rx.http_url();
    let d = Daemon::start_env(
        &["--otlp-metrics", "true", "--otlp-metrics-interval", "1s"],
        &otlp_env(&url, "http/protobuf"),
    );
    let input = media::h264_aac_mp4();
    let (pid, _) = run(ffmpeg()
        .args(["-threads", "1", "-i"])
        .arg(&input)
        .args(["-f", "null", "-"]));
    let s = d.wait_ended(pid);
    let p = pid.to_string();
    let labels = [
        ("pid", p.as_str()),
        ("direction", "decode"),
        ("codec", "h264"),
    ];
    let frames = s.expect("media_frames_total", &labels);
    let latency = s
        .one("media_frame_latency_seconds", &labels)
        .unwrap()
        .clone();
    let has = |attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
        labels
            .iter()
            .all(|(k, v)| attr_str(attrs, k).as_deref() == Some(*v))
    };
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, metric::Data, number_data_point::Value,
    };
    rx.wait_for("the decoder's OTLP metrics", SECS, |r| {
        let sum = r.metrics.iter().find(|m| m.name == "media_frames_total")?;
        let Some(Data::Sum(sum)) = &sum.data else {
            panic!("a counter is a sum: {sum:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let point = sum.data_points.iter().find(|p| has(&p.attributes))?;
        assert_eq!(point.value, Some(Value::AsDouble(frames)));
        let hist = r
            .metrics
            .iter()
            .find(|m| m.name == "media_frame_latency_seconds")?;
        let Some(Data::Histogram(h)) = &hist.data else {
            panic!("a histogram: {hist:?}")
        };
        let point = h.data_points.iter().find(|p| has(&p.attributes))?;
        assert_eq!(point.count as f64, latency.value);
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
        assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
        // The same bounds, and the same count at or below each.
        let mut below = 0;
        for ((bound, n), (le, cum)) in point
            .explicit_bounds
            .iter()
            .zip(&point.bucket_counts)
            .zip(&latency.buckets)
        {
            below += n;
            assert!((bound - le).abs() <= le * 1e-9, "{bound} against {le}");
            assert_eq!(below as f64, *cum);
        }
        Some(())
    });
    let s = d.scrape();
    assert!(s.expect("observer_otlp_exported_total", &[("signal", "metrics")]) > 0.0);
}

#[test]
fn a_resolution_change_is_an_event_on_the_decoders_span() {
    let _serial = serial();
    let rx = Receiver::start();
    let url = rx.http_url();
    let d = Daemon::start_env(&[], &otlp_env(&url, "http/protobuf"));
    let clip = |name: &str, size: &str| {
        fixture(
            name,
            &[
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size={size}:rate=25:duration=2"),
                "-c:v",
                "libx264",
                "-f",
                "mpegts",
                "{out}",
            ],
        )
    };
    let (big, small) = (clip("res-320.ts", "320x240"), clip("res-160.ts", "160x120"));
    // Real time, so the daemon's collections see both sizes.
    let (pid, _) = run(ffmpeg()
        .args(["-re", "-threads", "1", "-i"])
        .arg(format!("concat:{}|{}", big.display(), small.display()))
        .args(["-f", "null", "-"]));
    d.wait_ended(pid);
    let span = rx.wait_for("the decoder's span", SECS, |r| {
        r.spans
            .iter()
            .find(|s| {
                s.name == "decode h264"
                    && attr_int(&s.attributes, "process.pid") == Some(pid as i64)
            })
            .cloned()
    });
    let change = span
        .events
        .iter()
        .find(|e| e.name == "parameters changed")
        .unwrap_or_else(|| panic!("no parameters-changed event: {span:?}"));
    let a = &change.attributes;
    assert_eq!(attr_int(a, "media.previous.width"), Some(320));
    assert_eq!(attr_int(a, "media.previous.height"), Some(240));
    assert_eq!(attr_int(a, "media.width"), Some(160));
    assert_eq!(attr_int(a, "media.height"), Some(120));
    assert_eq!(attr_int(&span.attributes, "media.width"), Some(160));
}

/// A secret in URLs (credentials, a token) and in the media itself (H.264 SEI user data, the
/// container's service name and title) never leaves the node: not on `/metrics`, `/streams`,
/// `/ios`, in the daemon's own log at debug level, nor in any span, log record or metric sent
/// over OTLP, with every frame a span and FFmpeg's messages at every level sent as events.
/// The payload passes through everything observer reads: the decoder's calls, the muxer's
/// packets and the UDP datagrams whose MPEG-TS headers the kernel parses.
#[test]
fn a_planted_secret_in_urls_and_payload_never_leaves_the_node() {
    const PAYLOAD: &str = "PLANTEDPAYLOAD";
    const SECRETS: [&str; 3] = [PAYLOAD, "PLANTEDPASSWORD", "PLANTEDTOKEN"];
    let _serial = serial();
    let dir = tempdir("planted");
    let input = dir.join("secret.ts");
    run(ffmpeg()
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x64:rate=25",
            "-frames:v",
            "50",
        ])
        .args(["-c:v", "libx264", "-bsf:v"])
        .arg(format!(
            "h264_metadata=sei_user_data=086f3693-b7b3-4f2c-9653-21492feee5b8+{PAYLOAD}"
        ))
        .args(["-metadata", &format!("service_name={PAYLOAD}")])
        .args(["-metadata", &format!("title={PAYLOAD}"), "-f", "mpegts"])
        .arg(&input));
    let bytes = std::fs::read(&input).unwrap();
    let planted = bytes
        .windows(PAYLOAD.len())
        .filter(|w| *w == PAYLOAD.as_bytes())
        .count();
    // In the SEI of the first access unit and in each service description table.
    assert!(planted >= 3, "the secret is in the payload {planted} times");

    let rx = Receiver::start();
    let url = rx.http_url();
    let d = Daemon::start_env(
        &[
            "--frame-sample-ratio",
            "1",
            "--slow-frame",
            "0s",
            "--ffmpeg-log-events",
            "debug",
            "--otlp-logs",
            "true",
            "--otlp-metrics",
            "true",
            "--otlp-metrics-interval",
            "1s",
        ],
        &otlp_env(&url, "http/protobuf"),
    );
    // Decoded (every frame a span), and sent as MPEG-TS over UDP to a URL with credentials.
    let out = "udp://viewer:PLANTEDPASSWORD@127.0.0.1:5998?token=PLANTEDTOKEN&pkt_size=1316";
    let (pid, _) = run(ffmpeg()
        .args(["-loglevel", "debug", "-threads", "1", "-i"])
        .arg(&input)
        .args([
            "-map", "0:v", "-f", "null", "-", "-map", "0:v", "-c", "copy", "-f", "mpegts", out,
        ]));
    d.wait_ended(pid);
    let got = rx.wait_for("the pipeline's root span", SECS, |r| {
        root(&r.spans, pid).map(|_| r.clone())
    });
    // What was sent is there (so the search below searched something), redacted.
    let ios = d.get("/ios").unwrap().1;
    assert!(
        ios.contains("udp://REDACTED@127.0.0.1:5998?token=REDACTED&pkt_size=1316"),
        "{ios}"
    );
    assert!(got.spans.len() > 50, "{} spans", got.spans.len());
    assert!(!got.logs.is_empty(), "no log records");
    let outputs = [
        ("/metrics", d.get("/metrics").unwrap().1),
        ("/streams", d.get("/streams").unwrap().1),
        ("/ios", ios),
        ("the daemon's log", d.log_text()),
        ("OTLP spans", format!("{:?}", got.spans)),
        ("OTLP logs", format!("{:?}", got.logs)),
        ("OTLP metrics", format!("{:?}", got.metrics)),
    ];
    for (what, text) in outputs {
        for secret in SECRETS {
            if let Some(at) = text.find(secret) {
                panic!(
                    "{secret} leaked in {what}: ...{}...",
                    &text[at.saturating_sub(300)..(at + 100).min(text.len())]
                );
            }
        }
    }
}

/// A daemon that falls behind (stopped with SIGSTOP while a pipeline runs flat out with every
/// frame a span, and a process maps executable pages 20,000 times): the kernel's ring buffers
/// fill and every span and event they refuse is counted. Spans that arrive plus spans lost are
/// exactly the frames Prometheus counted; the events lost are at least those that cannot
/// have fit (20,000 minus the ring's 8,192 records). The daemon then carries on.
#[test]
fn a_daemon_that_falls_behind_counts_every_span_and_event_its_rings_refused() {
    let _serial = serial();
    let rx = Receiver::start();
    let url = rx.http_url();
    let d = Daemon::start_env(
        &[
            "--frame-sample-ratio",
            "0",
            "--slow-frame",
            "0s",
            "--otlp-queue-size",
            "200000",
        ],
        &otlp_env(&url, "http/protobuf"),
    );
    let signal = |sig| {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(d.pid() as i32, sig) }, 0);
    };
    signal(libc::SIGSTOP);
    let (pid, _) = run(ffmpeg().args([
        "-threads",
        "1",
        "-f",
        "lavfi",
        "-i",
        "color=size=16x16:rate=1000",
        "-frames:v",
        "30000",
        "-f",
        "null",
        "-",
    ]));
    run(std::process::Command::new("python3").args([
        "-c",
        "import mmap\n\
         f = open('/bin/true', 'rb')\n\
         for _ in range(20000):\n\
         \x20   mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC).close()",
    ]));
    signal(libc::SIGCONT);
    let s = d.wait_ended(pid);
    let p = pid.to_string();
    // A frame span is a frame paired with its input: decoders' and encoders' frames, and
    // the frames out of filter graphs, less the unpaired ones.
    let frames: f64 = [
        ("media_frames_total", 1.0),
        ("media_frame_latency_unmatched_total", -1.0),
        ("media_filter_frames_out_total", 1.0),
        ("media_filter_frame_latency_unmatched_total", -1.0),
    ]
    .iter()
    .map(|(name, sign)| sign * s.sum(name, &[("pid", p.as_str())]))
    .sum();
    let lost = s.expect("observer_frame_spans_lost_total", &[]);
    assert!(lost > 0.0, "the frame ring never filled: {}", s.text);
    let spans = |r: &observer_tests::otlp::Received| {
        r.spans
            .iter()
            .filter(|x| attr_bool(&x.attributes, "media.frame.slow").is_some())
            .count() as f64
    };
    rx.wait_for(
        &format!("spans + {lost} lost = {frames} frames"),
        SECS,
        |r| (spans(r) + lost == frames).then_some(()),
    );
    let s = d.scrape();
    assert_eq!(s.sum("observer_otlp_dropped_total", &[]), 0.0);
    let events_lost = s.expect("observer_events_lost_total", &[]);
    assert!(events_lost >= (20_000 - 8_192) as f64, "{events_lost}");
    // And carries on: the next pipeline is counted to its frame.
    let (pid, _) = run(ffmpeg().args([
        "-f",
        "lavfi",
        "-i",
        "color=size=16x16:rate=25",
        "-frames:v",
        "100",
        "-f",
        "null",
        "-",
    ]));
    let p = pid.to_string();
    let s = d.wait_ended(pid);
    assert_eq!(
        s.sum(
            "media_frames_total",
            &[("pid", p.as_str()), ("direction", "decode")]
        ),
        100.0
    );
}

/// The variables that point the exporters at a TLS collector with the tests' CA and client
/// certificate (and a bearer token, which must never reach the daemon's log).
fn mtls_env<'a>(
    url: &'a str,
    protocol: &'a str,
    files: &'a [String; 3],
) -> [(&'a str, &'a str); 6] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &files[0]),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &files[1]),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &files[2]),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20planted-token-5f1b",
        ),
    ]
}

/// A receiver serving TLS only with `name`.crt and `name`.key, requiring a client certificate
/// the tests' CA signed.
fn tls_receiver(pki: &Pki, name: &str) -> Receiver {
    Receiver::start_tls(pki.server_config(
        &format!("{name}.crt"),
        &format!("{name}.key"),
        "ca.crt",
        &[b"h2", b"http/1.1"],
    ))
}

fn pki_files(pki: &Pki) -> [String; 3] {
    ["ca.crt", "client.crt", "client.key"].map(|f| pki.path(f).to_str().unwrap().to_string())
}

/// A collector that takes TLS only and requires a client certificate signed by the tests' CA
/// gets all three signals, each request with the configured header.
fn otlp_over_mtls(protocol: &str) {
    let _serial = serial();
    let dir = tempdir("otlp-mtls");
    let pki = Pki::new(&dir);
    let rx = tls_receiver(&pki, "server");
    let url = rx.url(protocol);
    assert!(url.starts_with("https://"));
    let files = pki_files(&pki);
    let d = Daemon::start_env(
        &[
            "--frame-sample-ratio",
            "1",
            "--otlp-metrics",
            "true",
            "--otlp-metrics-interval",
            "1s",
        ],
        &mtls_env(&url, protocol, &files),
    );
    let input = media::h264_aac_mp4();
    let (pid, _) = run(ffmpeg()
        .args(["-threads", "1", "-i"])
        .arg(&input)
        .args(["-f", "null", "-"]));
    d.wait_ended(pid);
    rx.wait_for("spans of the pipeline, logs and metrics", SECS, |r| {
        (root(&r.spans, pid).is_some()
            && !r.logs.is_empty()
            && r.metrics.iter().any(|m| m.name == "media_frames_total"))
        .then_some(())
    });
    let auth = rx.received().authorization;
    assert!(auth.len() >= 3, "{auth:?}");
    assert!(
        auth.iter().all(|a| a == "Bearer planted-token-5f1b"),
        "{auth:?}"
    );
    let s = d.scrape();
    for signal in ["traces", "logs", "metrics"] {
        assert_eq!(
            s.value("observer_otlp_failed_requests_total", &[("signal", signal)]),
            Some(0.0),
            "{signal}"
        );
    }
    assert!(
        !d.log_text().contains("planted-token"),
        "the token was logged"
    );
}

#[test]
fn grpc_over_mtls_delivers_spans_logs_and_metrics() {
    otlp_over_mtls("grpc");
}

#[test]
fn http_over_mtls_delivers_spans_logs_and_metrics() {
    otlp_over_mtls("http/protobuf");
}

#[test]
fn a_collector_with_an_untrusted_certificate_gets_nothing_and_failures_are_counted() {
    let _serial = serial();
    let dir = tempdir("otlp-untrusted");
    let pki = Pki::new(&dir);
    let files = pki_files(&pki);
    for protocol in ["grpc", "http/protobuf"] {
        // Signed by a CA the daemon was not told to trust.
        let rx = tls_receiver(&pki, "rogue-server");
        let url = rx.url(protocol);
        let d = Daemon::start_env(
            &["--otlp-metrics", "true", "--otlp-metrics-interval", "1s"],
            &mtls_env(&url, protocol, &files),
        );
        // The daemon's own events (logs) and the metrics go out from the start.
        d.wait_for(
            &format!("{protocol}: failed log and metric exports to be counted"),
            SECS,
            |s| {
                let failed = |signal| {
                    s.value("observer_otlp_failed_requests_total", &[("signal", signal)])
                        .unwrap_or(0.0)
                };
                (failed("logs") >= 1.0 && failed("metrics") >= 1.0).then_some(())
            },
        );
        let r = rx.received();
        assert!(
            r.spans.is_empty()
                && r.logs.is_empty()
                && r.metrics.is_empty()
                && r.authorization.is_empty(),
            "{protocol}: an untrusted collector received something"
        );
    }
}
