//! End to end, as an operator runs it: a real Prometheus scrapes the daemon with the shipped
//! alert rules while a real RTP ingest crosses a real (namespaced) network; loss injected with
//! nftables fires the packet-loss alert, which resolves when the loss stops; every panel of
//! every shipped dashboard has data. GPU series come from the tests' stand-in NVML library,
//! spans go to the tests' OTLP receiver, so no panel is left without a source.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{
    Daemon,
    media::fixture,
    net::Link,
    nvml_standin,
    otlp::{Receiver, attr_int},
    prometheus::Prometheus,
    tempdir,
};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped rules with their windows shortened (minutes to seconds), so a test can see an
/// alert fire and resolve: the expressions are the shipped ones.
fn fast_rules(text: &str) -> String {
    let mut t = text.to_string();
    for (from, to) in [
        ("[30m] offset 2m", "[60s] offset 10s"),
        ("[10m]", "[20s]"),
        ("[5m]", "[10s]"),
        ("[2m]", "[10s]"),
        ("[1m]", "[10s]"),
        ("for: 5m", "for: 3s"),
        ("for: 2m", "for: 3s"),
        ("for: 1m", "for: 3s"),
        ("for: 30s", "for: 3s"),
    ] {
        t = t.replace(from, to);
    }
    assert!(!t.contains("m]"), "a window left in minutes:\n{t}");
    t
}

/// Firing alerts named `name`, as Prometheus reports them.
fn firing(prom: &Prometheus, name: &str) -> Vec<serde_json::Value> {
    prom.api("/api/v1/alerts", &[])["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
        .cloned()
        .collect()
}

fn wait(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn loss_fires_the_alert_and_every_dashboard_panel_has_data() {
    let dir = tempdir("e2e");
    let link = Link::new();
    link.nft_rx(
        "table inet obs {
           counter dropped {}
           chain input {
             type filter hook input priority 0;
           }
         }",
    );
    // A 60 s RTP ingest: sender in one namespace, receiver (decode, re-encode) in the other.
    let input = fixture(
        "e2e-ingest.ts",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=60",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "800k",
            "-g",
            "25",
            "-f",
            "mpegts",
            "{out}",
        ],
    );
    // The stand-in GPU: a throttle reason now; the receiver's process and an encoder session
    // once it runs.
    let lib = nvml_standin(&dir, false);
    let script = dir.join("nvml.txt");
    // The receiver's process and an encoder session go in once it runs (the stand-in
    // re-reads its script on every call).
    let gpu = |procs: &str| {
        std::fs::write(
            &script,
            format!(
                "devices 1\ndriver 570.86.15\ndev 0 name NVIDIA H200 (stand-in)\n\
                 dev 0 uuid GPU-5f1b2c3d-0000-4000-8000-000000000001\n\
                 dev 0 util_gpu 37\ndev 0 util_mem 12\ndev 0 enc 55\ndev 0 dec 81\n\
                 dev 0 jpg 9\ndev 0 ofa 4\ndev 0 mem_total 150754820096\n\
                 dev 0 mem_used 2147483648\ndev 0 temp 64\ndev 0 power_mw 123456\n\
                 dev 0 clock_sm 1980\ndev 0 clock_video 1755\ndev 0 throttle 5\n{procs}"
            ),
        )
        .unwrap()
    };
    gpu("");
    let otlp = Receiver::start();
    let d = Daemon::start_env(
        &["--nvml-library", lib.to_str().unwrap()],
        &[
            ("OBSERVER_NVML_STANDIN", script.to_str().unwrap()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.http_url()),
        ],
    );
    // Prometheus: the daemon every second, the shipped rules with short windows.
    let rules = std::fs::read_to_string(deploy().join("prometheus/rules.yml")).unwrap();
    let prom = Prometheus::start(&dir, d.port, &fast_rules(&rules));
    // The receiver starts after the daemon, as pipelines on a watched node do: its socket is
    // followed from its creation.
    let receiver = Killed(
        Link::exec(&link.rx, "ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "warning"])
            // Errors instead of concealment, so loss shows in the decoder's error counts.
            .args(["-err_detect", "explode"])
            // A small socket buffer, so a pause overflows it (drops at the socket).
            .args(["-i", "rtp://0.0.0.0:5004?buffer_size=32768"])
            .args(["-c:v", "mpeg4", "-b:v", "500k", "-f", "null", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rx_pid = receiver.0.id();
    gpu(&format!(
        "proc 0 {rx_pid} 20 5 33 10 524288000\nsession 0 1 {rx_pid} 0 320 240 25 2500\n"
    ));
    std::thread::sleep(Duration::from_secs(1));
    let _sender = Killed(
        Link::exec(&link.tx, "ffmpeg")
            .args([
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-i",
            ])
            .arg(&input)
            .args(["-c", "copy", "-f", "rtp_mpegts"])
            .arg(format!("rtp://{}:5004", link.rx_addr))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let p = rx_pid.to_string();
    // Clean first: no loss alert.
    let t0 = Instant::now();
    loop {
        let r = prom.api(
            "/api/v1/query",
            &[(
                "query",
                &format!("media_frames_total{{pid=\"{p}\",direction=\"decode\"}}"),
            )],
        );
        if r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let s = d.scrape();
            panic!(
                "the receiver's decoder never reached Prometheus: {r}\ndaemon: {:?}\n{}",
                s.all("media_frames_total").collect::<Vec<_>>(),
                d.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        firing(&prom, "MediaPacketLossHigh").is_empty(),
        "loss alert without loss"
    );

    // 5% loss: the alert fires for the receiver's input.
    link.nft_rx(
        "insert rule inet obs input udp dport 5004 numgen random mod 100 < 5 counter name dropped drop",
    );
    // And the receiver stalls for a moment: its socket overflows (SOCKET_RCVBUFF).
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(rx_pid as i32, libc::SIGSTOP) };
    // 10 s of the stream: more than even the largest socket buffer ffmpeg asks for holds.
    std::thread::sleep(Duration::from_secs(10));
    // SAFETY: as above.
    unsafe { libc::kill(rx_pid as i32, libc::SIGCONT) };
    let t0 = Instant::now();
    while !firing(&prom, "MediaPacketLossHigh")
        .iter()
        .any(|a| a["labels"]["pid"] == p.as_str())
    {
        if t0.elapsed() > Duration::from_secs(40) {
            let q = |q: &str| prom.api("/api/v1/query", &[("query", q)])["data"]["result"].clone();
            panic!(
                "the packet-loss alert did not fire; dropped {:?}\nlost: {}\nreceived: {}\ndrops: {}\nalerts: {}",
                link.counter("dropped"),
                q("media_io_rtp_packets_lost_total"),
                q("media_io_rtp_packets_received_total"),
                q("media_io_kernel_drops_total"),
                prom.api("/api/v1/alerts", &[])
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(link.counter("dropped").0 > 0);

    // Every query of every dashboard, now, has data.
    // The decoder meets the damage (errors, not concealment: -err_detect explode).
    wait("the decoder's errors", Duration::from_secs(40), || {
        let q = format!("media_codec_errors_total{{pid=\"{p}\",direction=\"decode\"}}");
        prom.api("/api/v1/query", &[("query", &q)])["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    std::thread::sleep(Duration::from_secs(3));
    // The stream dashboard for the receiver's decoder and its encoder at once (Grafana's
    // regex for two values): the input's panels have the decoder's data, the target bitrate
    // the encoder's.
    let stream_of = |direction: &str| {
        let q = format!("media_stream_info{{pid=\"{p}\",direction=\"{direction}\"}}");
        prom.api("/api/v1/query", &[("query", &q)])["data"]["result"][0]["metric"]["stream"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let stream = format!("{}|{}", stream_of("decode"), stream_of("encode"));
    let mut empty = Vec::new();
    let mut queries = 0;
    for entry in std::fs::read_dir(deploy().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let board: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in board["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                let q = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$instance", ".*")
                    .replace("$stream", &stream)
                    .replace("$__rate_interval", "15s")
                    .replace("$__range", "5m");
                queries += 1;
                let r = prom.api("/api/v1/query", &[("query", &q)]);
                assert_eq!(r["status"], "success", "{q}: {r}");
                if r["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
                    empty.push(format!(
                        "{} / {}: {q}",
                        path.file_name().unwrap().to_string_lossy(),
                        panel["title"]
                    ));
                }
            }
        }
    }
    assert!(queries > 40);
    assert!(
        empty.is_empty(),
        "panels without data:\n{}\nthe socket's own counts:\n{}\ndaemon: {:?}",
        empty.join("\n"),
        std::fs::read_to_string(format!("/proc/{rx_pid}/net/udp")).unwrap_or_default(),
        d.scrape()
            .all("media_io_kernel_drops_total")
            .collect::<Vec<_>>()
    );

    // Loss stops: the alert resolves.
    link.nft_rx("flush chain inet obs input");
    wait(
        "the packet-loss alert to resolve",
        Duration::from_secs(40),
        || {
            !firing(&prom, "MediaPacketLossHigh")
                .iter()
                .any(|a| a["labels"]["pid"] == p.as_str())
        },
    );

    // The receiver stops: its decoder's span carries the loss bursts as events, adding up to
    // the totals on the span and on /metrics.
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(rx_pid as i32, libc::SIGINT) };
    let s = d.wait_ended(rx_pid);
    let input = s
        .one("media_io_info", &[("pid", &p), ("direction", "input")])
        .and_then(|x| x.label("io").cloned())
        .expect("the receiver's input");
    let metric = |name: &str| s.sum(name, &[("io", &input)]) as i64;
    let span = otlp.wait_for("the decoder's span", Duration::from_secs(30), |r| {
        r.spans
            .iter()
            .find(|x| {
                x.name == "decode h264"
                    && attr_int(&x.attributes, "process.pid") == Some(rx_pid as i64)
            })
            .cloned()
    });
    let bursts: Vec<_> = span
        .events
        .iter()
        .filter(|e| e.name == "packet loss")
        .collect();
    assert!(!bursts.is_empty(), "no packet-loss events: {span:?}");
    for (attr, name) in [
        ("media.io.rtp_lost", "media_io_rtp_packets_lost_total"),
        ("media.io.kernel_drops", "media_io_kernel_drops_total"),
    ] {
        let events: i64 = bursts
            .iter()
            .filter_map(|e| attr_int(&e.attributes, attr))
            .sum();
        assert!(events > 0, "{attr} in no event");
        assert_eq!(
            Some(events),
            attr_int(&span.attributes, attr),
            "{attr}: events and span"
        );
        assert_eq!(events, metric(name), "{attr}: span and {name}");
    }
}
