//! The daemon at scale (`cargo xtask bench --only scale|reaction|churn`): its own cost as
//! streams grow, how fast it sees new pipelines, and whether it returns to where it started
//! after thousands of short ones. Ground truth is what the pipelines themselves count.

use std::{
    collections::HashSet,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{Daemon, ffmpeg, median, process_cpu},
    step,
};

/// Builds `tests/c/streams.c`: one process decoding N small streams, paced like live video.
fn streams_program(root: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join("streams");
    let status = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(root.join("tests/c/streams.c"))
        .args(["-lavformat", "-lavcodec", "-lavutil"])
        .status()
        .context("building tests/c/streams.c (gcc, libavcodec-dev, libavformat-dev)")?;
    if !status.success() {
        bail!("building tests/c/streams.c failed");
    }
    Ok(out)
}

/// A one-second loop of 16x16 H.264 (one macroblock a frame, no B-frames): a stream costs
/// the machine almost nothing per frame, so many fit on two cores and what grows is the
/// daemon's per-stream work.
fn small_input(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join("h264-16x16-30.mp4");
    if !out.exists() {
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=16x16:rate=30",
            "-frames:v",
            "30",
            "-c:v",
            "libx264",
            "-bf",
            "0",
            "-g",
            "30",
            out.to_str().unwrap_or_default(),
        ])?;
    }
    Ok(out)
}

/// Frames the pipelines printed ("frames F packets P").
fn truth(children: Vec<Child>) -> anyhow::Result<(u64, Vec<u32>)> {
    let mut frames = 0;
    let mut pids = Vec::new();
    for c in children {
        pids.push(c.id());
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "a pipeline failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        frames += text
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .context("a pipeline printed no frame count")?;
    }
    Ok((frames, pids))
}

fn spawn_streams(
    program: &Path,
    input: &Path,
    n: usize,
    fps: u32,
    secs: u32,
) -> anyhow::Result<Child> {
    Command::new(program)
        .arg(input)
        .args([n.to_string(), fps.to_string(), secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a pipeline")
}

struct Scrape {
    body: String,
    took: Duration,
}

fn scrape(port: u16) -> anyhow::Result<Scrape> {
    let t0 = Instant::now();
    let mut r = ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call()?;
    let body = r.body_mut().with_config().limit(1 << 30).read_to_string()?;
    Ok(Scrape {
        body,
        took: t0.elapsed(),
    })
}

/// A scrape as Prometheus asks for it (gzip): the time to the last compressed byte, and how
/// many there were.
fn scrape_gzip(port: u16) -> anyhow::Result<(Duration, usize)> {
    let t0 = Instant::now();
    let mut r = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .header("Accept-Encoding", "gzip")
        .call()?;
    anyhow::ensure!(
        r.headers().get("content-encoding").map(|v| v.as_bytes()) == Some(b"gzip"),
        "/metrics did not answer gzip"
    );
    let body = r.body_mut().with_config().limit(1 << 30).read_to_vec()?;
    Ok((t0.elapsed(), body.len()))
}

/// A label's value in one exposition line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Decoded frames observer counted for these processes.
fn counted_frames(body: &str, pids: &HashSet<u32>) -> u64 {
    body.lines()
        .filter(|l| l.starts_with("media_frames_total{"))
        .filter(|l| label(l, "direction") == Some("decode"))
        .filter(|l| {
            label(l, "pid")
                .and_then(|p| p.parse().ok())
                .is_some_and(|p| pids.contains(&p))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One value of a line in `/proc/PID/status` (`VmRSS`, `VmHWM` in kB, `Threads`).
fn status_value(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The ids of the BPF maps process `pid` holds (its descriptors' `map_id`).
fn maps_of(pid: u32) -> std::collections::HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// Entries in every hash map of the kernel programs of the daemon `pid`, counted by bpftool
/// (not by the daemon's own gauge): the kernel state a run leaves behind. Only that daemon's
/// maps: another daemon on the machine (a test run beside the bench) has maps of the same
/// names.
fn kernel_map_entries(pid: u32) -> anyhow::Result<u64> {
    let shown = Command::new("bpftool")
        .args(["map", "show", "--json"])
        .output()
        .context("running bpftool")?;
    let maps: Vec<serde_json::Value> = serde_json::from_slice(&shown.stdout)?;
    let own = maps_of(pid);
    // The hash maps among observer-ebpf's #[map] statics, by the names the kernel keeps.
    const OURS: [&str; 16] = [
        "CALLS",
        "CODEC_THREADS",
        "CONTEXT_IO",
        "CONTINUITY",
        "CURRENT_IO",
        "DEMUXED",
        "ENCODED",
        "ENDED_STREAMS",
        "FDS",
        "IOS",
        "IO_PROCESSES",
        "LOGS",
        "MMAP_EXEC",
        "SOCKETS",
        "STREAMS",
        "SYSCALLS",
    ];
    let mut total = 0;
    for m in &maps {
        let (Some(name), Some(id), Some(kind)) =
            (m["name"].as_str(), m["id"].as_u64(), m["type"].as_str())
        else {
            continue;
        };
        if !OURS.contains(&name) || !kind.contains("hash") || !own.contains(&id) {
            continue;
        }
        let dump = Command::new("bpftool")
            .args(["map", "dump", "id", &id.to_string(), "--json"])
            .output()?;
        let entries: Vec<serde_json::Value> =
            serde_json::from_slice(&dump.stdout).unwrap_or_default();
        total += entries.len() as u64;
    }
    Ok(total)
}

pub(crate) struct Point {
    pub streams: usize,
    pub fps: u32,
    pub cpu_percent: f64,
    pub rss_mib: f64,
    pub hwm_mib: f64,
    pub metrics_ms: f64,
    pub metrics_max_ms: f64,
    pub metrics_kib: f64,
    pub gzip_ms: f64,
    pub gzip_kib: f64,
    pub truth: u64,
    pub counted: u64,
}

/// 1 to 1,000 concurrent streams, ten a process (one process below ten): the daemon's CPU
/// over a quiet 20 s window, its memory, `/metrics` time and size, and frames it missed.
pub(crate) fn scale(
    root: &Path,
    bin: &Path,
    dir: &Path,
    port: u16,
    report: &mut String,
) -> anyhow::Result<Vec<Point>> {
    let program = streams_program(root, dir)?;
    let input = small_input(dir)?;
    let mut points = Vec::new();
    // 1,000 streams at 30 fps would need more than this machine's two cores for the
    // pipelines alone; that point runs at 10 fps and is there for memory and /metrics.
    for (streams, fps) in [(1, 30), (10, 30), (100, 30), (500, 30), (1000, 10)] {
        step(&format!("scale: {streams} streams at {fps} fps"));
        let daemon = Daemon::start(bin, port, &[])?;
        let pid = daemon.0.id();
        let per = streams.min(10);
        let (warm, window, scrapes) = (5, 20, 10);
        let secs = warm + window + 10;
        let children = (0..streams / per)
            .map(|_| spawn_streams(&program, &input, per, fps, secs))
            .collect::<anyhow::Result<Vec<_>>>()?;
        std::thread::sleep(Duration::from_secs(warm as u64));
        let cpu0 = process_cpu(pid)?;
        std::thread::sleep(Duration::from_secs(window as u64));
        let cpu = (process_cpu(pid)? - cpu0) / window as f64;
        let rss = status_value(pid, "VmRSS") as f64 / 1024.0;
        let mut took = Vec::new();
        let mut size = 0;
        for _ in 0..scrapes {
            let s = scrape(port)?;
            took.push(s.took.as_secs_f64() * 1000.0);
            size = s.body.len();
            std::thread::sleep(Duration::from_millis(200));
        }
        let max_ms = took.iter().copied().fold(0.0, f64::max);
        let mut took_gzip = Vec::new();
        let mut gzip_size = 0;
        for _ in 0..scrapes {
            let (t, n) = scrape_gzip(port)?;
            took_gzip.push(t.as_secs_f64() * 1000.0);
            gzip_size = n;
            std::thread::sleep(Duration::from_millis(200));
        }
        let (truth, pids) = truth(children)?;
        // The final counts arrive with the next collection after the processes exit.
        std::thread::sleep(Duration::from_secs(3));
        let pids: HashSet<u32> = pids.into_iter().collect();
        let counted = counted_frames(&scrape(port)?.body, &pids);
        let hwm = status_value(pid, "VmHWM") as f64 / 1024.0;
        drop(daemon);
        eprintln!(
            "    cpu {:.2}% of a core, rss {rss:.1} MiB (peak {hwm:.1}), /metrics {:.1} ms \
             (max {max_ms:.1}) {} KiB, gzip {:.1} ms {} KiB, frames {truth} counted {counted}",
            cpu * 100.0,
            median(&mut took.clone()),
            size / 1024,
            median(&mut took_gzip.clone()),
            gzip_size / 1024
        );
        points.push(Point {
            streams,
            fps,
            cpu_percent: cpu * 100.0,
            rss_mib: rss,
            hwm_mib: hwm,
            metrics_ms: median(&mut took),
            metrics_max_ms: max_ms,
            metrics_kib: size as f64 / 1024.0,
            gzip_ms: median(&mut took_gzip),
            gzip_kib: gzip_size as f64 / 1024.0,
            truth,
            counted,
        });
    }
    let _ = writeln!(
        report,
        "Scale: N concurrent 16x16 H.264 decode streams (ten a process, libavcodec linked by a C \
         program), the daemon's CPU over 20 s, memory, /metrics (median of 10 scrapes), frames \
         the pipelines decoded against frames observer counted; /metrics with gzip (as Prometheus \
         asks for it, median of 10 more scrapes)"
    );
    let _ = writeln!(
        report,
        "| streams | fps | daemon CPU (% of one core) | per 100 streams | RSS (MiB) | peak RSS (MiB) | /metrics (ms, median / max) | /metrics size (KiB) | gzip (ms) | gzip size (KiB) | frames decoded | frames counted | lost |"
    );
    let _ = writeln!(
        report,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &points {
        let _ = writeln!(
            report,
            "| {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} / {:.1} | {:.0} | {:.1} | {:.0} | {} | {} | {} |",
            p.streams,
            p.fps,
            p.cpu_percent,
            p.cpu_percent * 100.0 / p.streams as f64,
            p.rss_mib,
            p.hwm_mib,
            p.metrics_ms,
            p.metrics_max_ms,
            p.metrics_kib,
            p.gzip_ms,
            p.gzip_kib,
            p.truth,
            p.counted,
            p.truth as i64 - p.counted as i64
        );
    }
    let at = |n: usize| points.iter().find(|p| p.streams == n);
    if let (Some(p100), Some(p1000)) = (at(100), at(1000)) {
        let _ = writeln!(
            report,
            "targets: CPU at most 1% of a core per 100 streams at 30 fps -> {:.2}% ({}); RSS at \
             most 64 MiB at 1,000 streams -> {:.1} MiB ({}); /metrics under 50 ms at 1,000 \
             streams -> {:.1} ms ({}); no frame lost -> {}\n",
            p100.cpu_percent,
            met(p100.cpu_percent <= 1.0),
            p1000.hwm_mib,
            met(p1000.hwm_mib <= 64.0),
            p1000.metrics_ms,
            met(p1000.metrics_ms < 50.0),
            met(points.iter().all(|p| p.truth == p.counted))
        );
    }
    Ok(points)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// How soon the daemon sees pipelines: (1) started with 100 pipelines already running, the
/// time to ready and to every one of them on /metrics; (2) running, the time from a new
/// process's start to its first frame on /metrics, and whether every frame was counted.
pub(crate) fn reaction(
    root: &Path,
    bin: &Path,
    dir: &Path,
    port: u16,
    report: &mut String,
) -> anyhow::Result<()> {
    let program = streams_program(root, dir)?;
    let input = small_input(dir)?;
    step("reaction: daemon start with 100 pipelines running");
    let children = (0..100)
        .map(|_| spawn_streams(&program, &input, 1, 30, 20))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pids: HashSet<u32> = children.iter().map(Child::id).collect();
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let daemon = Daemon::start(bin, port, &[])?;
    let ready = t0.elapsed();
    let all_seen = loop {
        let s = scrape(port)?;
        let seen: HashSet<u32> = s
            .body
            .lines()
            .filter(|l| l.starts_with("media_frames_total{"))
            .filter_map(|l| label(l, "pid")?.parse().ok())
            .filter(|p| pids.contains(p))
            .collect();
        if seen.len() == pids.len() {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(15) {
            bail!(
                "only {} of 100 running pipelines on /metrics after 15 s",
                seen.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    truth(children)?;
    step("reaction: new processes, start to first frame on /metrics");
    let mut first = Vec::new();
    let (mut decoded, mut counted) = (0, 0);
    for _ in 0..20 {
        let child = spawn_streams(&program, &input, 1, 30, 2)?;
        let t0 = Instant::now();
        let pid: HashSet<u32> = [child.id()].into();
        loop {
            if counted_frames(&scrape(port)?.body, &pid) > 0 {
                first.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("a new pipeline's frames never reached /metrics");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (n, _) = truth(vec![child])?;
        std::thread::sleep(Duration::from_millis(1500));
        decoded += n;
        counted += counted_frames(&scrape(port)?.body, &pid);
    }
    drop(daemon);
    let max = first.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        report,
        "Reaction: daemon started beside 100 running pipelines: ready after {:.0} ms, all 100 on \
         /metrics after {:.0} ms. New pipelines (20, one after another): start to first frame \
         on /metrics median {:.0} ms, max {max:.0} ms (collection every 1 s); frames decoded \
         {decoded}, counted {counted}\n",
        ready.as_secs_f64() * 1000.0,
        all_seen.as_secs_f64() * 1000.0,
        median(&mut first)
    );
    Ok(())
}

/// 2,000 short ffmpeg runs, two at a time (as fast as this machine starts them): every
/// frame counted, and the daemon's memory, open files, threads and the kernel maps back
/// where they started once the ended streams' grace period has passed.
pub(crate) fn churn(
    bin: &Path,
    dir: &Path,
    port: u16,
    runs: usize,
    report: &mut String,
) -> anyhow::Result<()> {
    let input = short_input(dir)?;
    step(&format!("churn: {runs} short ffmpeg runs, two at a time"));
    // Longer than a batch takes, so a batch's streams are all still on /metrics when it is
    // checked.
    let grace = 30;
    let daemon = Daemon::start(bin, port, &["--ended-stream-grace", &format!("{grace}s")])?;
    let pid = daemon.0.id();
    std::thread::sleep(Duration::from_secs(3));
    let measure = || -> anyhow::Result<[f64; 4]> {
        Ok([
            status_value(pid, "VmRSS") as f64 / 1024.0,
            open_files(pid) as f64,
            status_value(pid, "Threads") as f64,
            kernel_map_entries(pid)? as f64,
        ])
    };
    let before = measure()?;
    let t0 = Instant::now();
    let (mut decoded, mut counted, mut busy) = (0u64, 0u64, [0f64; 4]);
    let batch = 100;
    let mut done = 0;
    while done < runs {
        let mut pids = HashSet::new();
        let mut running: Vec<Child> = Vec::new();
        for _ in 0..batch.min(runs - done) {
            if running.len() == 2 {
                let mut c = running.remove(0);
                if !c.wait()?.success() {
                    bail!("an ffmpeg run failed");
                }
            }
            let c = Command::new("ffmpeg")
                .args(["-nostdin", "-loglevel", "error", "-i"])
                .arg(&input)
                .args(["-f", "null", "-"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            pids.insert(c.id());
            running.push(c);
            done += 1;
            if done == runs / 2 {
                // Halfway, with pipelines running: shows what the counts above count.
                busy = measure()?;
            }
        }
        for mut c in running {
            if !c.wait()?.success() {
                bail!("an ffmpeg run failed");
            }
        }
        std::thread::sleep(Duration::from_millis(1500));
        decoded += 5 * pids.len() as u64;
        counted += counted_frames(&scrape(port)?.body, &pids);
    }
    let rate = runs as f64 / t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(grace + 10));
    let after = measure()?;
    drop(daemon);
    let _ = writeln!(
        report,
        "Churn: {runs} ffmpeg runs of 5 frames, two at a time ({rate:.1} starts a second); frames \
         decoded {decoded}, counted {counted}; ended-stream grace {grace} s"
    );
    let _ = writeln!(
        report,
        "| | before | halfway, pipelines running | after ({} s idle) |",
        grace + 10
    );
    let _ = writeln!(report, "|---|---|---|---|");
    for (i, name) in [
        (0, "daemon RSS (MiB)"),
        (1, "open files"),
        (2, "threads"),
        (3, "kernel map entries (bpftool)"),
    ] {
        let _ = writeln!(
            report,
            "| {name} | {:.1} | {:.1} | {:.1} |",
            before[i], busy[i], after[i]
        );
    }
    let _ = writeln!(report);
    Ok(())
}

/// The 5-frame decode the churn and soak runs start over and over.
fn short_input(dir: &Path) -> anyhow::Result<PathBuf> {
    let input = dir.join("h264-64x64-5.mp4");
    if !input.exists() {
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x64:rate=30",
            "-frames:v",
            "5",
            "-c:v",
            "libx264",
            input.to_str().unwrap_or_default(),
        ])?;
    }
    Ok(input)
}

/// `minutes` of pipelines starting and stopping without pause (two short ffmpeg runs at a
/// time, beside one paced 30 fps stream that runs throughout) with `/metrics` scraped every
/// second: the daemon's memory, open files, threads and kernel map entries, sampled each
/// minute, must stay flat.
pub(crate) fn soak(
    root: &Path,
    bin: &Path,
    dir: &Path,
    port: u16,
    minutes: u64,
    report: &mut String,
) -> anyhow::Result<bool> {
    let input = short_input(dir)?;
    let program = streams_program(root, dir)?;
    let paced = small_input(dir)?;
    step(&format!(
        "soak: {minutes} min of pipelines starting and stopping, scraped every second"
    ));
    let grace = 30;
    let daemon = Daemon::start(bin, port, &["--ended-stream-grace", &format!("{grace}s")])?;
    let pid = daemon.0.id();
    let steady = spawn_streams(&program, &paced, 1, 30, (minutes * 60 + 30) as u32)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match scrape(port) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (ok, failed)
        })
    };
    let sample = || -> anyhow::Result<[f64; 4]> {
        Ok([
            status_value(pid, "VmRSS") as f64 / 1024.0,
            open_files(pid) as f64,
            status_value(pid, "Threads") as f64,
            kernel_map_entries(pid)? as f64,
        ])
    };
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(minutes * 60);
    let mut samples: Vec<(u64, [f64; 4])> = Vec::new();
    let mut next_sample = t0;
    let mut running: Vec<Child> = Vec::new();
    let mut started = 0u64;
    while Instant::now() < end {
        if running.len() == 2 {
            let mut c = running.remove(0);
            if !c.wait()?.success() {
                bail!("an ffmpeg run failed");
            }
        }
        running.push(
            Command::new("ffmpeg")
                .args(["-nostdin", "-loglevel", "error", "-i"])
                .arg(&input)
                .args(["-f", "null", "-"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        started += 1;
        if Instant::now() >= next_sample {
            samples.push((t0.elapsed().as_secs() / 60, sample()?));
            next_sample += Duration::from_secs(60);
        }
    }
    for mut c in running {
        c.wait()?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (scrapes, failed) = scraper
        .join()
        .map_err(|_| anyhow::anyhow!("scraper panicked"))?;
    let last = sample()?;
    let (steady_truth, _) = truth(vec![steady])?;
    drop(daemon);
    // Flat: the last quarter's mean within 10% (or 2 units) of the mean of the samples
    // between warm-up and it. These are instantaneous counts that swing with how many runs
    // are in flight (a first version compared maxima and called a swing growth); a leak is a
    // trend, which moves the mean.
    let warm: Vec<&[f64; 4]> = samples
        .iter()
        .filter(|(m, _)| *m >= 2)
        .map(|(_, v)| v)
        .chain(std::iter::once(&last))
        .collect();
    if warm.len() < 2 {
        bail!("a soak needs at least 4 minutes: 2 of warm-up and 2 to compare");
    }
    let quarter = (warm.len() / 4).max(1);
    let mean = |vs: &[&[f64; 4]], i: usize| vs.iter().map(|v| v[i]).sum::<f64>() / vs.len() as f64;
    let (early, late) = warm.split_at(warm.len() - quarter);
    let mut flat = true;
    let mut verdicts = Vec::new();
    for (i, name) in ["RSS (MiB)", "open files", "threads", "kernel map entries"]
        .iter()
        .enumerate()
    {
        let (e, l) = (mean(early, i), mean(late, i));
        let ok = l <= (e * 1.1).max(e + 2.0);
        flat &= ok;
        verdicts.push(format!(
            "{name}: mean {e:.1} before the last quarter, {l:.1} in it ({})",
            if ok { "flat" } else { "GROWING" }
        ));
    }
    let _ = writeln!(
        report,
        "Soak: {minutes} min, {started} ffmpeg runs started (two at a time) beside one paced \
         stream ({steady_truth} frames); /metrics scraped every second: {scrapes} answered, \
         {failed} failed; ended-stream grace {grace} s"
    );
    let _ = writeln!(
        report,
        "| minute | RSS (MiB) | open files | threads | kernel map entries |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|");
    let rows = samples
        .iter()
        .map(|(m, v)| (m.to_string(), v))
        .chain(std::iter::once(("end".to_string(), &last)));
    for (m, v) in rows {
        let _ = writeln!(
            report,
            "| {m} | {:.1} | {:.0} | {:.0} | {:.0} |",
            v[0], v[1], v[2], v[3]
        );
    }
    let _ = writeln!(
        report,
        "{}
",
        verdicts.join("; ")
    );
    Ok(flat && failed == 0)
}

/// The scale points as PNG plots next to the report.
pub(crate) fn plots(dir: &Path, points: &[Point]) -> anyhow::Result<()> {
    let line = |f: &dyn Fn(&Point) -> f64| -> Vec<(f64, f64)> {
        points.iter().map(|p| (p.streams as f64, f(p))).collect()
    };
    crate::plot::log_x(
        &dir.join("scale-cpu.png"),
        "observer's CPU as streams grow",
        "concurrent streams (30 fps; 1,000 at 10 fps)",
        "% of one core",
        &[
            ("daemon CPU", line(&|p| p.cpu_percent)),
            (
                "target: 1% per 100 streams",
                line(&|p| p.streams as f64 / 100.0),
            ),
        ],
        None,
    )?;
    crate::plot::log_x(
        &dir.join("scale-memory.png"),
        "observer's resident memory as streams grow",
        "concurrent streams",
        "MiB",
        &[
            ("RSS at the end of the window", line(&|p| p.rss_mib)),
            ("peak RSS", line(&|p| p.hwm_mib)),
        ],
        Some(("target at 1,000 streams: 64 MiB", 64.0)),
    )?;
    crate::plot::log_x(
        &dir.join("scale-metrics.png"),
        "/metrics response time as streams grow",
        "concurrent streams",
        "ms",
        &[
            ("median of 10 scrapes", line(&|p| p.metrics_ms)),
            ("slowest of 10 scrapes", line(&|p| p.metrics_max_ms)),
            ("gzip, median of 10 scrapes", line(&|p| p.gzip_ms)),
        ],
        Some(("target at 1,000 streams: 50 ms", 50.0)),
    )?;
    Ok(())
}
