//! The daemon as operators meet it: flags, environment and config file, endpoints, the grace
//! period for ended streams, the aggregation mode, the stream cap, JSON logs, its kernel
//! state returning to where it started when pipelines exit, and nothing of it left in the
//! kernel after SIGTERM.

use std::{
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use observer_tests::{ContainerCgroup, Daemon, Scrape, ffmpeg, media, run};

/// Tests here that run pipelines take turns: every daemon's probes see every test's
/// pipelines, and these compare totals and baselines.
static QUIET: Mutex<()> = Mutex::new(());

fn daemon_cmd() -> Command {
    let bin = std::env::var_os("OBSERVER_BIN").expect("run through `cargo xtask test`");
    Command::new(bin)
}

#[test]
fn bad_flags_and_config_exit_2_with_a_message() {
    let out = daemon_cmd().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));

    let out = daemon_cmd()
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));

    let out = daemon_cmd()
        .args(["--ended-stream-grace", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let cfg = std::env::temp_dir().join(format!("observer-bad-{}.toml", std::process::id()));
    std::fs::write(&cfg, "listen = \"127.0.0.1:1\"\nmax_stream = 3\n").unwrap();
    let out = daemon_cmd().arg("--config").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(cfg.to_str().unwrap()) && err.contains("max_stream"),
        "names the file and the key: {err}"
    );

    let out = daemon_cmd()
        .arg("--config")
        .arg("/nonexistent/observer.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn endpoints_and_self_metrics() {
    let d = Daemon::start(&[]);
    assert_eq!(d.get("/healthz").map(|x| x.0), Some(200));
    assert_eq!(d.get("/readyz").map(|x| x.0), Some(200));
    assert_eq!(d.get("/nope").map(|x| x.0), Some(404));
    let s = d.scrape();
    assert_eq!(s.value("observer_ready", &[]), Some(1.0));
    assert!(
        s.one("observer_build_info", &[])
            .is_some_and(|x| x.label("version").is_some())
    );
    // The system libavcodec, libavformat and libavfilter are attached at start.
    assert!(
        s.value("observer_attached_files", &[]).unwrap() >= 3.0,
        "{}",
        s.text
    );
    assert!(s.all("observer_attached_file_info").any(|x| {
        x.label("path")
            .is_some_and(|p| p.contains("libavcodec.so.59"))
    }));
    assert_eq!(s.value("observer_events_lost_total", &[]), Some(0.0));
    // Every reason a dashboard may select is there from the start.
    for reason in ["process_exited", "unreadable"] {
        assert!(
            s.value("observer_inspections_skipped_total", &[("reason", reason)])
                .is_some(),
            "{reason}"
        );
    }
    // Gzip when asked, as Prometheus does: the same families in fewer bytes (BENCHMARKS.md has
    // the ratio at scale).
    let mut r = ureq::get(&format!("http://127.0.0.1:{}/metrics", d.port))
        .header("Accept-Encoding", "gzip")
        .call()
        .unwrap();
    assert_eq!(
        r.headers().get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let packed = r.body_mut().read_to_vec().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&packed[..]), &mut text)
        .unwrap();
    let families = |s: &Scrape| {
        s.text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let unpacked = Scrape::parse(&text);
    assert_eq!(families(&unpacked), families(&s));
    assert_eq!(unpacked.value("observer_ready", &[]), Some(1.0));
    assert!(
        packed.len() < text.len(),
        "{} of {}",
        packed.len(),
        text.len()
    );
    let (code, body) = d.get("/streams").unwrap();
    assert_eq!(code, 200);
    assert!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .is_array()
    );
}

/// The kernel-dependent jobs, as `observer_feature_available` names them.
const FEATURES: [&str; 10] = [
    "codec_probes",
    "codec_threads",
    "hold_new_files",
    "io_drops",
    "io_files",
    "io_retransmits",
    "io_sockets",
    "library_loads",
    "process_exec",
    "process_exit",
];

/// Every job runs on this kernel, whichever way it offers (the suite runs this on this
/// machine's kernel and inside each kernel of the matrix), and the daemon says which kernel
/// it is; a job turned off by a flag is left out rather than reported missing.
#[test]
fn every_kernel_dependent_feature_runs_on_this_kernel() {
    let d = Daemon::start(&[]);
    let s = d.scrape();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(
        s.value("observer_kernel_info", &[("release", release.trim())]),
        Some(1.0),
        "{}",
        s.text
    );
    let features: Vec<(String, f64)> = s
        .all("observer_feature_available")
        .map(|x| (x.label("feature").cloned().unwrap_or_default(), x.value))
        .collect();
    let names: Vec<&str> = features.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, FEATURES, "{}", d.log_text());
    let off: Vec<&(String, f64)> = features.iter().filter(|(_, v)| *v != 1.0).collect();
    assert!(off.is_empty(), "unavailable: {off:?}\n{}", d.log_text());
    // The kernel memory its maps take here (preallocated on kernels that refuse run-time
    // allocation), for the README's kernel table: printed, the kernel matrix keeps the log.
    let memlock: u64 = std::fs::read_dir(format!("/proc/{}/fdinfo", d.pid()))
        .unwrap()
        .flatten()
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum();
    eprintln!(
        "kernel {}: the daemon's maps take {:.1} MiB",
        release.trim(),
        memlock as f64 / (1 << 20) as f64
    );
    drop(d);

    let d = Daemon::start(&["--io-stats", "false", "--hold-new-files", "false"]);
    let s = d.scrape();
    let names: Vec<String> = s
        .all("observer_feature_available")
        .filter_map(|x| x.label("feature").cloned())
        .collect();
    assert_eq!(
        names,
        [
            "codec_probes",
            "codec_threads",
            "library_loads",
            "process_exec",
            "process_exit"
        ]
    );
}

#[test]
fn ended_streams_stay_for_the_grace_period_then_go() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let input = media::h264_aac_mp4();
    let d = Daemon::start(&["--ended-stream-grace", "3s"]);
    let (pid, _) = run(ffmpeg().arg("-i").arg(&input).args(["-f", "null", "-"]));
    let ended_at = Instant::now();
    d.wait_ended(pid);
    let p = pid.to_string();
    let gone = d.wait_for(
        "the ended streams to expire",
        Duration::from_secs(15),
        |s| {
            s.all("media_frames_total")
                .all(|x| x.label("pid") != Some(&p))
                .then(Instant::now)
        },
    );
    let kept = gone.duration_since(ended_at);
    assert!(kept >= Duration::from_secs(3), "kept only {kept:?}");
    assert!(kept < Duration::from_secs(10), "kept {kept:?}");
}

#[test]
fn aggregate_mode_folds_streams_and_drops_per_stream_labels() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let input = media::h264_aac_mp4();
    let t = media::truth(&input, true);
    // From the environment and a config file, to cover both equivalents of the flags.
    let cfg = std::env::temp_dir().join(format!("observer-agg-{}.toml", std::process::id()));
    std::fs::write(&cfg, "ended_stream_grace = \"1m\"\n").unwrap();
    let d = Daemon::start_env(
        &["--config", cfg.to_str().unwrap()],
        &[("OBSERVER_AGGREGATE", "true")],
    );
    let before = d.scrape().sum(
        "media_frames_total",
        &[
            ("process", "ffmpeg"),
            ("direction", "decode"),
            ("media", "video"),
        ],
    );
    let children: Vec<_> = (0..2)
        .map(|_| {
            ffmpeg()
                .arg("-i")
                .arg(&input)
                .args(["-f", "null", "-"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let want = before + 2.0 * t[&0].frames as f64;
    let s = d.wait_for(
        "both runs folded into one series",
        Duration::from_secs(20),
        |s| {
            let v = s.value(
                "media_frames_total",
                &[
                    ("process", "ffmpeg"),
                    ("direction", "decode"),
                    ("media", "video"),
                    ("codec", "h264"),
                ],
            )?;
            (v == want).then(|| s.clone())
        },
    );
    for x in s.samples.iter().filter(|x| x.name.starts_with("media_")) {
        assert!(
            x.label("stream").is_none() && x.label("pid").is_none(),
            "per-stream label on {x:?}"
        );
    }
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn stream_cap_limits_the_export() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let input = media::h264_aac_mp4();
    let d = Daemon::start(&["--max-streams", "2"]);
    let (pid, _) = run(ffmpeg().arg("-i").arg(&input).args(["-f", "null", "-"]));
    let p = pid.to_string();
    // Decoders and encoders for video and audio plus a filter graph each: six streams. Once
    // they end, the four oldest ended ones are evicted to stay under the cap.
    let s = d.wait_for("the cap to apply", Duration::from_secs(20), |s| {
        (s.value("observer_streams_evicted_total", &[])? >= 4.0).then(|| s.clone())
    });
    let exported = ["media_frames_total", "media_filter_frames_in_total"]
        .iter()
        .map(|name| s.all(name).filter(|x| x.label("pid") == Some(&p)).count())
        .sum::<usize>();
    assert_eq!(exported, 2, "with --max-streams 2\n{}", s.text);
    assert_eq!(s.value("observer_streams_evicted_total", &[]), Some(4.0));
    assert_eq!(
        s.value("observer_streams", &[("state", "ended")]),
        Some(2.0)
    );
}

#[test]
fn json_logs() {
    let d = Daemon::start(&["--log-format", "json"]);
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{l}"
        );
    }
}

#[test]
fn kernel_state_returns_to_baseline_when_pipelines_exit() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let input = media::h264_aac_mp4();
    let d = Daemon::start(&[]);
    let maps = ["streams", "ios", "fds", "sockets"];
    let first = d.scrape();
    let baseline: Vec<f64> = maps
        .iter()
        .map(|m| {
            first
                .value("observer_kernel_map_entries", &[("map", m)])
                .unwrap()
        })
        .collect();
    // One pipeline killed mid-stream, which frees nothing itself.
    let mut child = ffmpeg()
        .args(["-re", "-i"])
        .arg(&input)
        .args(["-f", "null", "-"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let p = pid.to_string();
    d.wait_for(
        "frames from the running pipeline",
        Duration::from_secs(20),
        |s| {
            (s.value(
                "media_frames_total",
                &[("pid", &p), ("direction", "decode"), ("media", "video")],
            )? > 10.0)
                .then_some(())
        },
    );
    // The running pipeline holds an io and its input file's descriptor in the kernel.
    d.wait_for("the pipeline's io state", Duration::from_secs(10), |s| {
        let v = |m| s.value("observer_kernel_map_entries", &[("map", m)]);
        (v("ios")? > baseline[1] && v("fds")? > baseline[2]).then_some(())
    });
    // Stopped first, so the count at the kill is known exactly: once two collections agree,
    // the daemon has everything the process decoded.
    let video = [
        ("pid", p.as_str()),
        ("direction", "decode"),
        ("media", "video"),
    ];
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let last = std::cell::Cell::new(-1.0);
    let at_kill = d.wait_for(
        "the stopped pipeline's count to settle",
        Duration::from_secs(10),
        |s| {
            let v = s.value("media_frames_total", &video)?;
            let settled = v == last.replace(v);
            std::thread::sleep(Duration::from_millis(1200));
            settled.then_some(v)
        },
    );
    // SAFETY: killing our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = child.wait();
    let s = d.wait_ended(pid);
    assert_eq!(
        s.value("media_frames_total", &video),
        Some(at_kill),
        "final counts kept exactly after SIGKILL"
    );
    // Ios linger five seconds in the kernel after they end (their TCP sockets may still
    // retransmit), then go with everything else the process left.
    d.wait_for(
        "the kernel's stream and io maps back to their baseline",
        Duration::from_secs(15),
        |s| {
            maps.iter()
                .zip(&baseline)
                .all(|(m, b)| {
                    s.value("observer_kernel_map_entries", &[("map", m)])
                        .is_some_and(|v| v <= *b)
                })
                .then_some(())
        },
    );
}

#[test]
fn concurrent_scrapers_are_all_answered_while_a_pipeline_is_counted_exactly() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    let mut child = ffmpeg()
        .args(["-re", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25"])
        .args(["-frames:v", "100", "-c:v", "mpeg4", "-f", "null", "-"])
        .spawn()
        .unwrap();
    let pid = child.id();
    // ApacheBench on loopback: 16 scrapers at once, 800 requests, while the pipeline runs
    // (-l: the page's length changes from one scrape to the next).
    let out = Command::new("ab")
        .args(["-l", "-n", "800", "-c", "16", "-s", "30"])
        .arg(format!("http://127.0.0.1:{}/metrics", d.port))
        .output()
        .expect("ab (apache2-utils)");
    let report = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<u64> {
        report
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(field("Complete requests:"), Some(800), "{report}");
    assert_eq!(field("Failed requests:"), Some(0), "{report}");
    assert!(!report.contains("Non-2xx responses"), "{report}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the scrapes overlapped the pipeline"
    );
    assert!(child.wait().unwrap().success());
    let s = d.wait_ended(pid);
    // lavfi's source is not a decoder: the encoder's 100 frames are the pipeline's.
    let frames = s.value(
        "media_frames_total",
        &[("pid", &pid.to_string()), ("direction", "encode")],
    );
    assert_eq!(
        frames,
        Some(100.0),
        "every frame counted under the scrapers"
    );
}

#[test]
fn a_restarted_daemon_finds_running_pipelines_again() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let input = media::h264_aac_mp4();
    let mut child = ffmpeg()
        .args(["-re", "-stream_loop", "-1", "-i"])
        .arg(&input)
        // Stopped by the test; the bound only keeps a failed run from leaving it behind.
        .args(["-t", "60", "-f", "null", "-"])
        .spawn()
        .unwrap();
    let p = child.id().to_string();
    let decoded = |s: &observer_tests::Scrape| {
        s.value(
            "media_frames_total",
            &[("pid", &p), ("direction", "decode"), ("media", "video")],
        )
    };
    let first = Daemon::start(&[]);
    let before = first.wait_for(
        "frames under the first daemon",
        Duration::from_secs(20),
        |s| decoded(s).filter(|f| *f > 20.0),
    );
    let stream = |s: &observer_tests::Scrape| {
        s.one(
            "media_frames_total",
            &[("pid", &p), ("direction", "decode"), ("media", "video")],
        )
        .and_then(|x| x.label("stream").cloned())
    };
    let stream_before = stream(&first.scrape());
    assert!(stream_before.is_some());
    let (status, _) = first.stop();
    assert!(status.success());
    // A new daemon attaches to the libraries the running process already maps and counts
    // the stream from its first call after that: as a new stream (its `stream` label is
    // the pid and the time the daemon first saw it), so no series jumps backwards.
    let second = Daemon::start(&[]);
    let after = second.wait_for(
        "frames under the second daemon",
        Duration::from_secs(20),
        |s| decoded(s).filter(|f| *f > 20.0),
    );
    let s = second.scrape();
    let stream_after = stream(&s);
    assert!(
        stream_after.is_some() && stream_after != stream_before,
        "a new stream identity after the restart: {stream_before:?} then {stream_after:?}"
    );
    assert!(
        s.value(
            "media_stream_up",
            &[("pid", &p), ("direction", "decode"), ("media", "video")]
        ) == Some(1.0),
        "the running stream is live again"
    );
    // It runs until stopped: a daemon's stop waits for the kernel to remove each uprobe
    // (about 6 s for an ffmpeg's libraries on 6.18), which a fixed-length pipeline could
    // outlast.
    assert!(
        child.try_wait().unwrap().is_none(),
        "the pipeline ran throughout"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("frames seen by the first daemon {before}, by the second {after}");
}

/// The BPF objects a process holds (`prog_id`, `map_id`, `link_id` in its descriptors'
/// fdinfo), and how many perf events (uprobes and tracepoints attached the perf way).
fn bpf_objects(pid: u32) -> (Vec<(String, u64)>, usize) {
    let (mut ids, mut perf) = (Vec::new(), 0);
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if std::fs::read_link(fd.path())
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:[perf_event]")
        {
            perf += 1;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        for line in info.lines() {
            for kind in ["prog_id", "map_id", "link_id"] {
                if let Some(id) = line
                    .strip_prefix(kind)
                    .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
                {
                    ids.push((kind.to_string(), id));
                }
            }
        }
    }
    (ids, perf)
}

/// Ids of every BPF object of one kind in the kernel, from bpftool.
fn kernel_ids(kind: &str) -> Vec<u64> {
    let what = match kind {
        "prog_id" => "prog",
        "map_id" => "map",
        _ => "link",
    };
    let out = Command::new("bpftool")
        .args([what, "show", "--json"])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["id"].as_u64())
        .collect()
}

#[test]
fn sigterm_detaches_every_probe_and_leaves_nothing_in_the_kernel() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    let pid = d.pid();
    // A pipeline, so the codec probes have fired.
    run(ffmpeg()
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48:rate=25",
            "-frames:v",
            "10",
        ])
        .args(["-f", "null", "-"]));
    let (held, perf) = bpf_objects(pid);
    let count = |k: &str| held.iter().filter(|(kind, _)| kind == k).count();
    assert!(
        count("prog_id") >= 10 && count("map_id") >= 10 && count("link_id") + perf >= 10,
        "the daemon holds its programs, maps and attachments: {held:?}, {perf} perf events"
    );
    let (status, log) = d.stop();
    assert!(
        status.success(),
        "SIGTERM is a clean stop ({status}):\n{log}"
    );
    assert!(log.contains("detaching every probe"), "{log}");
    // The kernel frees a closed program or map shortly after its last reference goes.
    let t0 = Instant::now();
    loop {
        let live: Vec<(&str, Vec<u64>)> = ["prog_id", "map_id", "link_id"]
            .into_iter()
            .map(|k| (k, kernel_ids(k)))
            .collect();
        let left: Vec<&(String, u64)> = held
            .iter()
            .filter(|(kind, id)| live.iter().any(|(k, ids)| k == kind && ids.contains(id)))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still in the kernel: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Probes attached through tracefs (kernels without the perf uprobe type) are named
    // aya_<pid>_...: none may outlive the daemon.
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        for file in ["uprobe_events", "kprobe_events"] {
            let events = std::fs::read_to_string(format!("{dir}/{file}")).unwrap_or_default();
            assert!(
                !events.contains(&format!("aya_{pid}_")),
                "{dir}/{file}: {events}"
            );
        }
    }
}

#[test]
fn a_pipeline_in_a_container_carries_its_container_id() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let id = "5d41402abc4b2a76b9719d911017c592ae2b4c4e6f7d8e9fa0b1c2d3e4f50617";
    let cgroup = ContainerCgroup::new(id, "0b2f6a1e-9c4d-4e7a-8f3b-2c1d0e9f8a7b");
    let d = Daemon::start(&[]);
    let input = media::h264_aac_mp4();
    let (pid, _) = run(&mut cgroup.ffmpeg(&[
        "-threads",
        "1",
        "-i",
        input.to_str().unwrap(),
        "-f",
        "null",
        "-",
    ]));
    let s = d.wait_ended(pid);
    let p = pid.to_string();
    let streams: Vec<_> = s
        .all("media_frames_total")
        .filter(|x| x.label("pid") == Some(&p))
        .collect();
    assert!(!streams.is_empty());
    for x in streams {
        assert_eq!(
            x.label("container_id").map(String::as_str),
            Some(id),
            "{x:?}"
        );
    }
    // A pipeline on the host has none.
    let (host, _) = run(ffmpeg().args(["-i"]).arg(&input).args(["-f", "null", "-"]));
    let s = d.wait_ended(host);
    let h = host.to_string();
    assert!(
        s.all("media_frames_total")
            .filter(|x| x.label("pid") == Some(&h))
            .all(|x| x.label("container_id").is_none())
    );
    let (_, json) = d.get("/streams").unwrap();
    assert!(json.contains(id), "/streams names the container: {json}");
}

#[test]
fn observer_top_shows_live_streams_with_their_rates_sorted() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    // Two live encoders at known frame rates (-re: real time).
    let live = |rate| live_encoder(rate, 8);
    let mut fast = live(25);
    let mut slow = live(10);
    std::thread::sleep(Duration::from_secs(3));
    let top = |sort: &str| {
        let out = daemon_cmd()
            .args(["top", "--once", "--interval", "2s", "--sort", sort, "--url"])
            .arg(format!("http://127.0.0.1:{}", d.port))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // (pid, fps) of each live encoder row, in the order shown.
    let encoders = |text: &str| -> Vec<(u32, f64)> {
        text.lines()
            .filter(|l| l.contains(" encode ") && l.contains("mpeg4"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].parse().unwrap(), f[6].parse().unwrap())
            })
            .collect()
    };
    let by_fps = top("fps");
    let rows = encoders(&by_fps);
    let (f, s) = (fast.id(), slow.id());
    let fps_of = |pid| rows.iter().find(|(p, _)| *p == pid).map(|(_, v)| *v);
    let (ff, sf) = (fps_of(f).expect(&by_fps), fps_of(s).expect(&by_fps));
    assert!(
        (ff - 25.0).abs() <= 3.0,
        "{ff} fps for the 25 fps encoder\n{by_fps}"
    );
    assert!(
        (sf - 10.0).abs() <= 2.0,
        "{sf} fps for the 10 fps encoder\n{by_fps}"
    );
    let pos = |pid| rows.iter().position(|(p, _)| *p == pid).unwrap();
    assert!(pos(f) < pos(s), "sorted by fps, largest first\n{by_fps}");
    let by_pid = encoders(&top("pid"));
    let pids: Vec<u32> = by_pid.iter().map(|(p, _)| *p).collect();
    let mut sorted = pids.clone();
    sorted.sort();
    assert_eq!(pids, sorted, "sorted by pid");
    let _ = fast.wait();
    let _ = slow.wait();
    // A daemon that is not there: a message that says where it looked, and status 1.
    let out = daemon_cmd()
        .args(["top", "--once", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read http://127.0.0.1:1"));
}

/// A tmux session that runs one command in a terminal of a known size.
struct Tmux(String);

impl Tmux {
    fn start(cmd: &[&str]) -> Tmux {
        let name = format!("observer-test-{}", std::process::id());
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "160", "-y", "40"])
            .args(cmd)
            .status()
            .expect("tmux (cargo xtask test installs it)")
            .success();
        assert!(ok, "tmux new-session");
        Tmux(name)
    }

    fn keys(&self, keys: &str) {
        Command::new("tmux")
            .args(["send-keys", "-t", &self.0, keys])
            .status()
            .unwrap();
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "waiting for {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn observer_top_in_a_terminal_sorts_on_keys_and_quits_on_q() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    let live = |rate| live_encoder(rate, 12);
    let mut fast = live(25);
    let mut slow = live(5);
    let bin = std::env::var("OBSERVER_BIN").unwrap();
    let url = format!("http://127.0.0.1:{}", d.port);
    let t = Tmux::start(&[&bin, "top", "--url", &url, "--interval", "1s"]);
    let (f, s) = (fast.id().to_string(), slow.id().to_string());
    // The first encoder row of the screen.
    let first = |screen: &str| -> Option<String> {
        screen
            .lines()
            .find(|l| l.contains(" encode ") && l.contains("mpeg4"))
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
    };
    let screen = t.wait_for("both encoders at their rates", |sc| {
        sc.contains("[f]FPS")
            && sc.contains(&f)
            && sc.contains(&s)
            && first(sc).as_deref() == Some(f.as_str())
    });
    assert!(screen.contains("observer top"), "{screen}");
    // p: sorted by pid, smallest first.
    t.keys("p");
    let want = fast.id().min(slow.id()).to_string();
    t.wait_for("the pid sort", |sc| {
        sc.contains("[p]PID") && first(sc).as_deref() == Some(want.as_str())
    });
    // f again: the 25 fps encoder on top.
    t.keys("f");
    t.wait_for("the fps sort", |sc| {
        sc.contains("[f]FPS") && first(sc).as_deref() == Some(f.as_str())
    });
    t.keys("q");
    let t0 = Instant::now();
    while t.alive() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "q did not quit:\n{}",
            t.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = fast.kill();
    let _ = slow.kill();
    let _ = fast.wait();
    let _ = slow.wait();
}

/// An encoder running in real time (-re) at `rate` frames a second for `secs` seconds.
fn live_encoder(rate: u32, secs: u32) -> std::process::Child {
    ffmpeg()
        .args(["-re", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=64x48:rate={rate}"))
        .arg("-t")
        .arg(secs.to_string())
        .args(["-c:v", "mpeg4", "-f", "null", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The kernel's own run statistics of the daemon's programs (`/proc/PID/fdinfo` of its
/// program descriptors, filled while `kernel.bpf_stats_enabled` is 1): by program type, the
/// runs and the nanoseconds spent in them.
fn program_stats(pid: u32) -> std::collections::BTreeMap<u32, (u64, u64)> {
    let mut by_type = std::collections::BTreeMap::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(t), Some(runs), Some(ns)) = (
            field("prog_type:"),
            field("run_cnt:"),
            field("run_time_ns:"),
        ) {
            let e: &mut (u64, u64) = by_type.entry(t as u32).or_default();
            e.0 += runs;
            e.1 += ns;
        }
    }
    by_type
}

/// Not a check but a measurement, which `cargo xtask bench --only arm64` runs in an amd64 and
/// an arm64 guest: how many times the daemon's uprobe programs run for one single-threaded
/// decode of a known file, and how long they take, from the kernel's own statistics. The
/// hits are the architecture-free part (the same FFmpeg makes the same calls); the time is
/// an emulated CPU's.
#[test]
#[ignore = "a measurement for `cargo xtask bench --only arm64`, not a check"]
fn probe_hits_of_a_decode() {
    let _quiet = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    std::fs::write(STATS, "1").unwrap();
    let input = media::h264_aac_mp4();
    let frames = media::truth(&input, true)[&0].frames;
    let d = Daemon::start(&[]);
    // -nostats: ffmpeg's progress line is logged every half second, a count that depends
    // on the clock; nothing else here does.
    let decode = || {
        run(Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-hide_banner",
                "-nostats",
                "-threads",
                "1",
                "-i",
            ])
            .arg(&input)
            .args(["-map", "0:v", "-f", "null", "-"]))
    };
    // The first run maps the libraries (held once, page cache): not measured.
    decode();
    let before = program_stats(d.pid());
    decode();
    let after = program_stats(d.pid());
    std::fs::write(STATS, "0").unwrap();
    // BPF_PROG_TYPE_KPROBE: uprobes are of that type (kprobes too, where the daemon uses
    // them: none fire for a decode to a null output).
    let (runs, ns) = (after[&2].0 - before[&2].0, after[&2].1 - before[&2].1);
    assert!(runs > frames, "{runs} runs for {frames} frames");
    println!(
        "probe hits: {runs} over {frames} frames ({:.2} a frame), {ns} ns in the programs ({:.0} ns a hit)",
        runs as f64 / frames as f64,
        ns as f64 / runs as f64
    );
}
