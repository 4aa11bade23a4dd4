//! `cargo xtask bench`: the slowdown real pipelines see, side by side in one run:
//! no probes / empty probes at the same points (the floor) / the observer daemon.
//! Modes are interleaved run by run, so drift on a noisy machine hits all of them alike.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::step;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// No daemon: the pipeline alone.
    Alone,
    /// The daemon with `--empty-probes`: uprobes that do nothing, at the same points as the
    /// default daemon.
    Floor,
    /// The daemon as users run it.
    Observer,
    /// The daemon without FFmpeg log capture (`--ffmpeg-logs false`).
    ObserverNoLogs,
    /// Empty probes on the decode calls only: the floor of the next mode.
    FloorDecoders,
    /// The daemon probing decoders only, without log capture and inputs/outputs: the least a
    /// node can ask for (`DECODERS_ONLY`).
    ObserverDecoders,
    /// No daemon; bpftrace running `xtask/bench/codec-peer.bt`, the same counting written
    /// by hand: the peer users would otherwise reach for.
    Bpftrace,
}

const MODES: [Mode; 7] = [
    Mode::Alone,
    Mode::Floor,
    Mode::Observer,
    Mode::ObserverNoLogs,
    Mode::FloorDecoders,
    Mode::ObserverDecoders,
    Mode::Bpftrace,
];

/// The daemon's flags for watching decoders and nothing else.
const DECODERS_ONLY: [&str; 6] = [
    "--directions",
    "decode",
    "--ffmpeg-logs",
    "false",
    "--io-stats",
    "false",
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Alone => "no probes",
            Mode::Floor => "empty probes (floor)",
            Mode::Observer => "observer",
            Mode::ObserverNoLogs => "observer, --ffmpeg-logs false",
            Mode::FloorDecoders => "empty probes, decoders only (floor)",
            Mode::ObserverDecoders => {
                "observer, decoders only (--directions decode --ffmpeg-logs false --io-stats false)"
            }
            Mode::Bpftrace => "bpftrace peer script",
        }
    }
}

struct Workload {
    name: &'static str,
    /// The slowdown the issue allows, where it sets one.
    target: Option<f64>,
    input: PathBuf,
    args: Vec<String>,
}

#[derive(Clone, Copy)]
pub(crate) struct Sample {
    wall: f64,
    cpu: f64,
}

pub(crate) struct Daemon(pub(crate) Child);

impl Daemon {
    pub(crate) fn start(bin: &Path, port: u16, extra: &[&str]) -> anyhow::Result<Daemon> {
        let d = Daemon::spawn(bin, port, extra)?;
        let agent = ureq::Agent::new_with_defaults();
        let t0 = Instant::now();
        while agent
            .get(&format!("http://127.0.0.1:{port}/readyz"))
            .call()
            .is_err()
        {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("daemon not ready after 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    /// Starts the daemon without waiting for it (`start` waits on a plain-HTTP /readyz).
    fn spawn(bin: &Path, port: u16, extra: &[&str]) -> anyhow::Result<Daemon> {
        let child = Command::new(bin)
            .args(extra)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--log-level")
            .arg("warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting the daemon")?;
        Ok(Daemon(child))
    }
}

/// bpftrace running the peer script, attached to the FFmpeg libraries the `ffmpeg` CLI
/// links; its output (the maps, printed at exit) goes to a file in the bench directory.
struct Peer(Child);

impl Peer {
    /// `xtask/bench/codec-peer.bt`, on the libraries the `ffmpeg` CLI links.
    fn codec(root: &Path, dir: &Path) -> anyhow::Result<Peer> {
        let script = std::fs::read_to_string(root.join("xtask/bench/codec-peer.bt"))?
            .replace("LIBAVCODEC", &ffmpeg_library("libavcodec")?)
            .replace("LIBAVFILTER", &ffmpeg_library("libavfilter")?);
        Peer::start(&script, dir)
    }

    /// `xtask/bench/ingest-peer.bt`.
    fn ingest(root: &Path, dir: &Path) -> anyhow::Result<Peer> {
        Peer::start(
            &std::fs::read_to_string(root.join("xtask/bench/ingest-peer.bt"))?,
            dir,
        )
    }

    fn start(script: &str, dir: &Path) -> anyhow::Result<Peer> {
        let out = dir.join("bpftrace-peer.txt");
        let err = dir.join("bpftrace-peer.err");
        let child = Command::new("bpftrace")
            .arg("-e")
            .arg(script)
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .context("starting bpftrace (apt-get install bpftrace)")?;
        let mut peer = Peer(child);
        // bpftrace prints "Attaching N probes..." as it starts attaching, then nothing until
        // it exits; a dozen probes attach well within the second after it.
        let t0 = Instant::now();
        while !std::fs::read_to_string(&out)?.contains("Attaching") {
            if let Some(status) = peer.0.try_wait()? {
                bail!(
                    "bpftrace exited ({status}): {}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("bpftrace did not start attaching within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(1));
        Ok(peer)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGINT makes bpftrace print its maps and exit.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// The path of one of the FFmpeg libraries the `ffmpeg` CLI loads, from `ldd`.
fn ffmpeg_library(name: &str) -> anyhow::Result<String> {
    let ffmpeg = which("ffmpeg")?;
    let out = Command::new("ldd")
        .arg(&ffmpeg)
        .output()
        .context("running ldd")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .and_then(|l| {
            l.split("=>")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(String::from)
        })
        .with_context(|| format!("{} does not link {name}", ffmpeg.display()))
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not on PATH"))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Runs one pipeline and returns its wall time and CPU time (user + system).
fn measure(args: &[String]) -> anyhow::Result<Sample> {
    measure_on(None, args)
}

/// `measure`, the pipeline pinned to one CPU (`taskset` execs ffmpeg: the same process).
fn measure_on(cpu: Option<usize>, args: &[String]) -> anyhow::Result<Sample> {
    let t0 = Instant::now();
    let mut cmd = match cpu {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", &c.to_string(), "ffmpeg"]);
            t
        }
        None => Command::new("ffmpeg"),
    };
    let child = cmd
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ffmpeg")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = t0.elapsed().as_secs_f64();
    if rc < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("ffmpeg {} failed", args.join(" "));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Sample {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
    })
}

pub(crate) fn ffmpeg(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()?;
    if !status.success() {
        bail!("ffmpeg {} failed", args.join(" "));
    }
    Ok(())
}

fn inputs(dir: &Path) -> anyhow::Result<Vec<Workload>> {
    std::fs::create_dir_all(dir)?;
    let small = dir.join("h264-64x64-20000.mp4");
    if !small.exists() {
        step("making the worst-case input: 20,000 frames of 64x64 H.264");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x64:rate=25",
            "-frames:v",
            "20000",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            small.to_str().unwrap(),
        ])?;
    }
    let hd = dir.join("h264-1280x720-300.mp4");
    if !hd.exists() {
        step("making the 720p input: 300 frames of 1280x720 H.264");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
            "-frames:v",
            "300",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            hd.to_str().unwrap(),
        ])?;
    }
    let aac = dir.join("aac-48k-stereo-600s.m4a");
    if !aac.exists() {
        step("making the audio input: 10 minutes of 48 kHz stereo AAC");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=600",
            "-ac",
            "2",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            aac.to_str().unwrap(),
        ])?;
    }
    let common = |input: &Path, extra: &[&str], before: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["-nostdin", "-hide_banner", "-loglevel", "error"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(before.iter().map(|s| s.to_string()));
        v.push("-i".into());
        v.push(input.display().to_string());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    Ok(vec![
        Workload {
            name: "worst-case decode: 64x64 H.264, 20,000 frames, one thread",
            target: Some(1.30),
            args: common(&small, &["-f", "null", "-"], &["-threads", "1"]),
            input: small.clone(),
        },
        Workload {
            name: "720p x264 transcode (300 frames, veryfast)",
            target: Some(1.01),
            args: common(
                &hd,
                &["-c:v", "libx264", "-preset", "veryfast", "-f", "null", "-"],
                &[],
            ),
            input: hd.clone(),
        },
        Workload {
            name: "AAC audio decode (10 min of 48 kHz stereo, 28,125 frames)",
            target: None,
            args: common(&aac, &["-f", "null", "-"], &[]),
            input: aac.clone(),
        },
    ])
}

/// Probe hits and time inside our programs during one run of `args`, from the kernel's own
/// BPF statistics (`kernel.bpf_stats_enabled`), read with bpftool.
fn account(bin: &Path, port: u16, args: &[String]) -> anyhow::Result<(u64, u64)> {
    let _daemon = Daemon::start(bin, port, &[])?;
    let stats = |on: &str| std::fs::write("/proc/sys/kernel/bpf_stats_enabled", on);
    stats("1").context("enabling kernel.bpf_stats_enabled")?;
    let ran = measure(args);
    let shown = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output();
    stats("0")?;
    ran?;
    let shown = shown.context("running bpftool (apt-get install bpftool)")?;
    let progs: Vec<serde_json::Value> =
        serde_json::from_slice(&shown.stdout).context("bpftool's JSON")?;
    // observer's uprobe programs, as observer/src/kernel.rs names them. xtask cannot depend on
    // the daemon (it must build before the BPF toolchain it installs), and this bpftool does
    // not report which process owns a program.
    let ours = [
        "call_enter",
        "call_return",
        "open_enter",
        "open_return",
        "find_stream_info_enter",
        "find_stream_info_return",
        "stream_end",
        "log_message",
        "io_open_enter",
        "io_open_return",
        "io_call_enter",
        "io_call_return",
        "io_close",
    ];
    let (mut hits, mut ns) = (0, 0);
    for p in progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| ours.contains(&n)))
    {
        hits += p["run_cnt"].as_u64().unwrap_or(0);
        ns += p["run_time_ns"].as_u64().unwrap_or(0);
    }
    Ok((hits, ns))
}

/// Ratios of `samples` to `base` run by run (the modes ran back to back, so slow drift on a
/// noisy machine cancels): median and interquartile range over the rounds.
fn paired(samples: &[Sample], base: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
    let mut r: Vec<f64> = samples.iter().zip(base).map(|(m, a)| f(m) / f(a)).collect();
    r.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| r[((r.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.25), q(0.75))
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(
    root: &Path,
    bin: &Path,
    assets: &Path,
    runs: usize,
    only: Option<&str>,
    soak_minutes: u64,
) -> anyhow::Result<()> {
    let dir = root.join("target").join("bench");
    let workloads: Vec<Workload> = inputs(&dir)?
        .into_iter()
        .filter(|w| only.is_none_or(|o| o.split(',').any(|part| w.name.contains(part))))
        .collect();
    let port = 19464;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        uname()
    );
    let _ = writeln!(
        report,
        "ffmpeg: {}",
        first_line(Command::new("ffmpeg").arg("-version"))
    );
    let _ = writeln!(report, "runs per mode: {runs} (interleaved), medians\n");
    let mut missed = Vec::new();
    // Cost of one probe hit to the mechanism alone (trap, uretprobe trampoline), measured on
    // the first workload: what the empty probes cost, divided by the hits.
    let mut per_hit_ns: Option<f64> = None;
    for w in &workloads {
        step(&format!("{} ({} runs per mode)", w.name, runs));
        // One unmeasured run warms the page cache.
        measure(&w.args)?;
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); MODES.len()];
        for r in 0..runs {
            for (i, mode) in MODES.iter().enumerate() {
                let _peer = match mode {
                    Mode::Bpftrace => Some(Peer::codec(root, &dir)?),
                    _ => None,
                };
                let _daemon = match mode {
                    Mode::Alone | Mode::Bpftrace => None,
                    Mode::Floor => Some(Daemon::start(bin, port, &["--empty-probes"])?),
                    Mode::Observer => Some(Daemon::start(bin, port, &[])?),
                    Mode::ObserverNoLogs => {
                        Some(Daemon::start(bin, port, &["--ffmpeg-logs", "false"])?)
                    }
                    Mode::FloorDecoders => Some(Daemon::start(
                        bin,
                        port,
                        &[&["--empty-probes"][..], &DECODERS_ONLY].concat(),
                    )?),
                    Mode::ObserverDecoders => Some(Daemon::start(bin, port, &DECODERS_ONLY)?),
                };
                let s = measure(&w.args)?;
                eprintln!(
                    "    run {}/{runs} {:<22} wall {:.3}s cpu {:.3}s",
                    r + 1,
                    mode.name(),
                    s.wall,
                    s.cpu
                );
                samples[i].push(s);
            }
        }
        let wall: Vec<f64> = samples
            .iter()
            .map(|s| median(&mut s.iter().map(|x| x.wall).collect::<Vec<_>>()))
            .collect();
        let cpu: Vec<f64> = samples
            .iter()
            .map(|s| median(&mut s.iter().map(|x| x.cpu).collect::<Vec<_>>()))
            .collect();
        // Ratios within each round (the modes ran back to back), so slow drift on a noisy
        // machine cancels; median and interquartile range over the rounds.
        let paired = |i: usize, f: fn(&Sample) -> f64| paired(&samples[i], &samples[0], f);
        let _ = writeln!(
            report,
            "{} [{}]",
            w.name,
            w.input.file_name().unwrap_or_default().to_string_lossy()
        );
        let _ = writeln!(
            report,
            "| mode | wall (s) | slowdown (paired median, IQR) | CPU (s) | CPU ratio (paired median, IQR) |"
        );
        let _ = writeln!(report, "|---|---|---|---|---|");
        let mut slowdowns = Vec::new();
        for (i, mode) in MODES.iter().enumerate() {
            let (w50, w25, w75) = paired(i, |x| x.wall);
            let (c50, c25, c75) = paired(i, |x| x.cpu);
            slowdowns.push(w50);
            let _ = writeln!(
                report,
                "| {} | {:.3} | {:.3}x ({:.3}-{:.3}) | {:.3} | {:.3}x ({:.3}-{:.3}) |",
                mode.name(),
                wall[i],
                w50,
                w25,
                w75,
                cpu[i],
                c50,
                c25,
                c75
            );
        }
        let slowdown = slowdowns[2];
        if let Some(target) = w.target {
            let _ = writeln!(
                report,
                "target: observer at most {target:.2}x -> {}\n",
                if slowdown <= target { "met" } else { "MISSED" }
            );
            if slowdown > target {
                missed.push(w.name);
            }
        }
        // Timing alone cannot resolve 1% on a noisy machine: count what the probes cost.
        let (hits, prog_ns) = account(bin, port, &w.args)?;
        let floor_ns = per_hit_ns.get_or_insert(((cpu[1] - cpu[0]) * 1e9 / hits as f64).max(0.0));
        let overhead = (hits as f64 * *floor_ns + prog_ns as f64) / (cpu[0] * 1e9);
        let _ = writeln!(
            report,
            "accounting: {hits} probe hits, {:.0} ns each in the probe mechanism, {:.0} ns each in \
             observer's programs ({:.3} s in all): {:.2}% of the pipeline's CPU time\n",
            *floor_ns,
            prog_ns as f64 / hits.max(1) as f64,
            prog_ns as f64 / 1e9,
            overhead * 100.0
        );
    }
    if only.is_none_or(|o| o.contains("gpu")) {
        gpu_sampling(bin, port, runs, &Nvml::stand_in(root, &dir)?, &mut report)?;
    }
    if only.is_none_or(|o| o.contains("spans")) {
        frame_spans(bin, &dir, port, runs, &mut report)?;
    }
    if only.is_none_or(|o| o.contains("scrapers")) {
        scrapers(bin, &dir, port, runs, &mut report)?;
    }
    if only.is_none_or(|o| o.contains("web")) {
        web(root, bin, &dir, port, runs, &mut report)?;
    }
    if only.is_none_or(|o| o.contains("ingest")) {
        for (decode, name) in [
            (false, "50 Mbit/s ingest, recorded"),
            (true, "50 Mbit/s ingest, decoded"),
        ] {
            if !ingest(root, bin, &dir, port, runs, decode, &mut report)? {
                missed.push(name);
            }
        }
    }
    if only.is_none_or(|o| o.contains("scale")) {
        let points = crate::scale::scale(root, bin, &dir, port, &mut report)?;
        crate::scale::plots(&dir, &points)?;
    }
    if only.is_none_or(|o| o.contains("reaction")) {
        crate::scale::reaction(root, bin, &dir, port, &mut report)?;
    }
    if only.is_none_or(|o| o.contains("hold")) {
        hold(bin, assets, &dir, port, runs, &mut report)?;
    }
    if only.is_none_or(|o| o.contains("arm64")) {
        arm64(root, bin, assets, &mut report)?;
    }
    if only.is_none_or(|o| o.contains("churn")) {
        crate::scale::churn(bin, &dir, port, 2000, &mut report)?;
    }
    if only.is_none_or(|o| o.contains("soak"))
        && !crate::scale::soak(root, bin, &dir, port, soak_minutes, &mut report)?
    {
        missed.push("soak: flat memory, files, threads and map entries, every scrape answered");
    }
    println!("\n{report}");
    std::fs::write(dir.join("results.md"), &report)?;
    eprintln!("results written to {}", dir.join("results.md").display());
    if !missed.is_empty() {
        eprintln!("targets missed: {}", missed.join("; "));
    }
    Ok(())
}

/// The 50 Mbit/s ingest: a constant-rate MPEG-TS (`-muxrate`) sent over loopback UDP at
/// its real rate by one ffmpeg, recorded to a file by another. The receiver is the pipeline
/// measured: it makes one recv per datagram, and every datagram passes observer's syscall
/// programs and is parsed for MPEG-TS continuity.
fn ingest(
    root: &Path,
    bin: &Path,
    dir: &Path,
    port: u16,
    runs: usize,
    decode: bool,
    report: &mut String,
) -> anyhow::Result<bool> {
    let input = dir.join("ingest-50mbit.ts");
    if !input.exists() {
        step("making the ingest input: 10 s of 720p H.264 in a 50 Mbit/s constant-rate MPEG-TS");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "40M",
            "-maxrate",
            "40M",
            "-bufsize",
            "10M",
            "-f",
            "mpegts",
            "-muxrate",
            "50M",
            input.to_str().unwrap(),
        ])?;
    }
    enum Run {
        Alone,
        Daemon(&'static [&'static str]),
        Peer,
    }
    const MODES: [(&str, Run); 5] = [
        ("no daemon", Run::Alone),
        // --empty-probes attaches no socket programs: the floor of the codec probes only.
        (
            "empty codec probes (floor)",
            Run::Daemon(&["--empty-probes"]),
        ),
        (
            "observer, --io-stats false",
            Run::Daemon(&["--io-stats", "false"]),
        ),
        ("observer", Run::Daemon(&[])),
        ("bpftrace peer script", Run::Peer),
    ];
    const OBSERVER: usize = 3;
    let udp_port = 15000;
    let recording = dir.join("ingest-recording.ts");
    let one = |mode: &Run| -> anyhow::Result<Sample> {
        let _daemon = match mode {
            Run::Daemon(args) => Some(Daemon::start(bin, port, args)?),
            _ => None,
        };
        let _peer = match mode {
            Run::Peer => Some(Peer::ingest(root, dir)?),
            _ => None,
        };
        let t0 = Instant::now();
        let mut rx = Command::new("ffmpeg");
        rx.args([
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-timeout",
            "1000000",
            "-i",
        ])
        .arg(format!(
            "udp://127.0.0.1:{udp_port}?fifo_size=1000000&overrun_nonfatal=1&buffer_size=8388608"
        ));
        if decode {
            rx.args(["-f", "null", "-"]);
        } else {
            rx.args(["-c", "copy", "-f", "mpegts"]).arg(&recording);
        }
        let rx = rx
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the receiver")?;
        std::thread::sleep(Duration::from_millis(500));
        // -muxrate again: a stream copy drops the input's padding, and the receiver must see
        // the full 50 Mbit/s.
        ffmpeg(&[
            "-re",
            "-i",
            input.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "mpegts",
            "-muxrate",
            "50M",
            &format!("udp://127.0.0.1:{udp_port}?pkt_size=1316"),
        ])?;
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::wait4(rx.id() as i32, &mut status, 0, &mut usage) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(Sample {
            wall: t0.elapsed().as_secs_f64(),
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        })
    };
    let what = if decode {
        "decoded (-f null)"
    } else {
        "recorded with -c copy"
    };
    step(&format!(
        "50 Mbit/s MPEG-TS UDP ingest, {what} ({runs} runs per mode)"
    ));
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); MODES.len()];
    for r in 0..runs {
        for (i, (name, mode)) in MODES.iter().enumerate() {
            let s = one(mode)?;
            eprintln!(
                "    run {}/{runs} {name:<28} receiver cpu {:.3}s",
                r + 1,
                s.cpu
            );
            samples[i].push(s);
        }
    }
    let _ = writeln!(
        report,
        "50 Mbit/s MPEG-TS over UDP ingest, {what} [{}]",
        input.file_name().unwrap_or_default().to_string_lossy()
    );
    let _ = writeln!(
        report,
        "| mode | receiver CPU (s) | CPU ratio (paired median, IQR) |"
    );
    let _ = writeln!(report, "|---|---|---|");
    let mut ratio = 0.0;
    for (i, (name, _)) in MODES.iter().enumerate() {
        let cpu = median(&mut samples[i].iter().map(|x| x.cpu).collect::<Vec<_>>());
        let (q50, q25, q75) = paired(&samples[i], &samples[0], |x| x.cpu);
        if i == OBSERVER {
            ratio = q50;
        }
        let _ = writeln!(
            report,
            "| {name} | {cpu:.3} | {q50:.3}x ({q25:.3}-{q75:.3}) |"
        );
    }
    // The per-datagram program's exact cost, from the kernel's BPF statistics: time inside
    // the socket receive program over one run, against the receiver's CPU alone.
    let alone = median(&mut samples[0].iter().map(|x| x.cpu).collect::<Vec<_>>());
    let stats = |on: &str| std::fs::write("/proc/sys/kernel/bpf_stats_enabled", on);
    // The daemon outlives the run, so its programs are still loaded when bpftool reads them.
    let daemon = Daemon::start(bin, port, &[])?;
    stats("1").context("enabling kernel.bpf_stats_enabled")?;
    let ran = one(&Run::Alone);
    let shown = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output();
    stats("0")?;
    drop(daemon);
    ran?;
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&shown?.stdout)?;
    let (mut hits, mut ns) = (0u64, 0u64);
    for p in progs
        .iter()
        .filter(|p| p["name"].as_str() == Some("sock_recv"))
    {
        hits += p["run_cnt"].as_u64().unwrap_or(0);
        ns += p["run_time_ns"].as_u64().unwrap_or(0);
    }
    let _ = writeln!(
        report,
        "accounting: {hits} received messages, {:.0} ns each in observer's receive program: \
         {:.2}% of the receiver's CPU",
        ns as f64 / hits.max(1) as f64,
        ns as f64 / 1e9 / alone * 100.0
    );
    let met = ratio <= 1.02;
    let _ = writeln!(
        report,
        "target: observer at most 1.02x the receiver's CPU -> {}\n",
        if met { "met" } else { "MISSED" }
    );
    Ok(met)
}

/// CPU seconds a process's threads have run, from each thread's schedstat (nanoseconds; the
/// tick-based times in /proc/PID/stat are too coarse for an idle daemon).
pub(crate) fn process_cpu(pid: u32) -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns as f64 / 1e9)
}

/// Where "GPU sampling on" gets its NVML.
pub(crate) enum Nvml {
    /// The tests' stand-in library (`tests/c/nvml_standin.c`) and its script: one GPU, a
    /// process, an encoder session. Observer's side of the cost only.
    StandIn { lib: PathBuf, script: PathBuf },
    /// The driver's `libnvidia-ml.so.1`, on a machine with a GPU (`cargo xtask gpu-kit`).
    Driver,
}

impl Nvml {
    /// Builds the stand-in library into `dir` and scripts it.
    fn stand_in(root: &Path, dir: &Path) -> anyhow::Result<Nvml> {
        let lib = dir.join("libnvml-standin.so");
        let status = Command::new("gcc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&lib)
            .arg(root.join("tests/c/nvml_standin.c"))
            .status()
            .context("building the stand-in NVML library (gcc)")?;
        if !status.success() {
            bail!("building the stand-in NVML library failed");
        }
        let script = dir.join("nvml-standin.txt");
        std::fs::write(
            &script,
            "devices 1\ndriver 0.0\ndev 0 name stand-in\ndev 0 uuid GPU-0\ndev 0 util_gpu 10\n\
             dev 0 util_mem 5\ndev 0 enc 1\ndev 0 dec 2\ndev 0 mem_total 1000\ndev 0 mem_used 10\n\
             dev 0 temp 50\ndev 0 power_mw 1000\ndev 0 clock_sm 1000\ndev 0 clock_video 900\n\
             dev 0 throttle 0\nproc 0 1 1 1 1 1 1\nsession 0 1 1 0 320 240 30 1000\n",
        )?;
        Ok(Nvml::StandIn { lib, script })
    }
}

/// The daemon's own CPU with GPU sampling off and on, idle otherwise, 20 s each mode per run.
/// With the stand-in NVML this is observer's side of the cost; with the driver's (on a GPU
/// machine) it includes the driver's own time per NVML call.
pub(crate) fn gpu_sampling(
    bin: &Path,
    port: u16,
    runs: usize,
    nvml: &Nvml,
    report: &mut String,
) -> anyhow::Result<()> {
    step(&format!("GPU sampling cost ({runs} runs, 20 s a mode)"));
    let window = Duration::from_secs(20);
    let mut cpu = [Vec::new(), Vec::new()];
    for r in 0..runs {
        for (i, on) in [false, true].into_iter().enumerate() {
            let args: Vec<&str> = match (on, nvml) {
                (false, _) => vec!["--gpu", "false"],
                (true, Nvml::StandIn { lib, script }) => {
                    // SAFETY: setting a variable the daemon we start reads; nothing else runs.
                    unsafe { std::env::set_var("OBSERVER_NVML_STANDIN", script) };
                    vec!["--nvml-library", lib.to_str().unwrap_or_default()]
                }
                (true, Nvml::Driver) => vec!["--gpu", "true"],
            };
            let d = Daemon::start(bin, port, &args)?;
            let pid = d.0.id();
            let before = process_cpu(pid)?;
            std::thread::sleep(window);
            let used = process_cpu(pid)? - before;
            eprintln!(
                "    run {}/{runs} gpu sampling {:<3} daemon cpu {used:.3}s",
                r + 1,
                if on { "on" } else { "off" }
            );
            cpu[i].push(used);
        }
    }
    let off = median(&mut cpu[0]);
    let on = median(&mut cpu[1]);
    let _ = writeln!(
        report,
        "GPU sampling, 1 s interval, {}: daemon CPU over 20 s idle, median of {runs}: off \
         {off:.3} s, on {on:.3} s: {:.2} ms of CPU a sample, {:.3}% of one core\n",
        match nvml {
            Nvml::StandIn { .. } => "stand-in NVML (one GPU)",
            Nvml::Driver => "the driver's NVML",
        },
        (on - off) * 1000.0 / window.as_secs_f64(),
        (on - off) / window.as_secs_f64() * 100.0
    );
    Ok(())
}

/// An OTLP/HTTP sink on loopback that accepts every request with an empty success answer, so
/// the daemon exports for real. Returns its URL and a count of bytes received.
fn otlp_sink() -> anyhow::Result<(String, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    use std::sync::{Arc, atomic::AtomicU64, atomic::Ordering};
    let server =
        tiny_http::Server::http("127.0.0.1:0").map_err(|e| anyhow::anyhow!("OTLP sink: {e}"))?;
    let url = format!("http://{}", server.server_addr());
    let bytes = Arc::new(AtomicU64::new(0));
    let seen = bytes.clone();
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = Vec::new();
            let _ = std::io::Read::read_to_end(req.as_reader(), &mut body);
            seen.fetch_add(body.len() as u64, Ordering::Relaxed);
            let header = tiny_http::Header::from_bytes("Content-Type", "application/x-protobuf")
                .expect("static header");
            let _ = req.respond(tiny_http::Response::from_data(Vec::new()).with_header(header));
        }
    });
    Ok((url, bytes))
}

/// Frame spans on the worst-case decode: the pipeline's time and the daemon's CPU with spans
/// off (no OTLP endpoint), at the production ratio (1%) and at 100%, exported to a local sink.
fn frame_spans(
    bin: &Path,
    dir: &Path,
    port: u16,
    runs: usize,
    report: &mut String,
) -> anyhow::Result<()> {
    let args = worst_case_args(dir);
    let (url, received) = otlp_sink()?;
    let modes: [(&str, Option<Vec<&str>>); 4] = [
        ("no daemon", None),
        ("observer, no OTLP (spans off)", Some(vec![])),
        (
            "observer, frame spans 1%",
            Some(vec![
                "--otlp-endpoint",
                &url,
                "--frame-sample-ratio",
                "0.01",
            ]),
        ),
        (
            "observer, frame spans 100%",
            Some(vec!["--otlp-endpoint", &url, "--frame-sample-ratio", "1"]),
        ),
    ];
    step(&format!(
        "frame spans on the worst-case decode ({runs} runs per mode)"
    ));
    measure(&args)?;
    let mut pipeline: Vec<Vec<Sample>> = vec![Vec::new(); modes.len()];
    let mut daemon_cpu: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut exported = vec![0.0; modes.len()];
    for r in 0..runs {
        for (i, (name, extra)) in modes.iter().enumerate() {
            let daemon = match extra {
                Some(a) => Some(Daemon::start(bin, port, a)?),
                None => None,
            };
            let before = daemon.as_ref().map_or(Ok(0.0), |d| process_cpu(d.0.id()))?;
            let s = measure(&args)?;
            let mut used = 0.0;
            if let Some(d) = &daemon {
                // Let the last spans be exported before the daemon's CPU is read.
                std::thread::sleep(Duration::from_secs(3));
                used = process_cpu(d.0.id())? - before;
                exported[i] = scrape_value(port, "observer_otlp_exported_total{signal=\"traces\"}")
                    .unwrap_or(0.0);
            }
            drop(daemon);
            eprintln!(
                "    run {}/{runs} {name:<32} wall {:.3}s cpu {:.3}s daemon cpu {used:.3}s",
                r + 1,
                s.wall,
                s.cpu
            );
            pipeline[i].push(s);
            daemon_cpu[i].push(used);
        }
    }
    let _ = writeln!(
        report,
        "Frame spans, worst-case decode (64x64 H.264, 20,000 frames, one thread), OTLP/HTTP to a \
         loopback sink ({} MB received in all)",
        received.load(std::sync::atomic::Ordering::Relaxed) / 1_000_000
    );
    let _ = writeln!(
        report,
        "| mode | pipeline wall (s) | slowdown (paired median, IQR) | daemon CPU (s) | spans exported (last run) |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|");
    for (i, (name, _)) in modes.iter().enumerate() {
        let wall = median(&mut pipeline[i].iter().map(|x| x.wall).collect::<Vec<_>>());
        let (q50, q25, q75) = paired(&pipeline[i], &pipeline[0], |x| x.wall);
        let _ = writeln!(
            report,
            "| {name} | {wall:.3} | {q50:.3}x ({q25:.3}-{q75:.3}) | {:.3} | {:.0} |",
            median(&mut daemon_cpu[i]),
            exported[i]
        );
    }
    let _ = writeln!(report);
    Ok(())
}

/// `/metrics` hammered while a pipeline runs: ApacheBench with 16 concurrent scrapers and no
/// pause between requests, against the daemon as users run it, during the worst-case decode.
/// The pipeline runs pinned to CPU 0 and the daemon and the scrapers to CPU 1: on two cores,
/// sharing one would measure the machine's CPU, not whether scrapes reach the pipeline (its
/// probes never wait for the daemon). Modes interleaved: the daemon idle; the daemon idle with
/// CPU 1 kept busy by something else (`yes | gzip -1`: what sharing the machine costs alone);
/// the daemon hammered.
fn scrapers(
    bin: &Path,
    dir: &Path,
    port: u16,
    runs: usize,
    report: &mut String,
) -> anyhow::Result<()> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        let _ = writeln!(report, "Scrapers: skipped, this machine has one CPU\n");
        return Ok(());
    }
    let args = worst_case_args(dir);
    step(&format!(
        "/metrics hammered during the worst-case decode ({runs} runs per mode)"
    ));
    measure_on(Some(0), &args)?;
    let names = [
        "daemon idle",
        "daemon idle, CPU 1 busy (yes piped to gzip)",
        "daemon hammered by 16 scrapers",
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); names.len()];
    let mut answered = Vec::new();
    let mut failed = 0u64;
    for r in 0..runs {
        for (i, name) in names.iter().enumerate() {
            let daemon = Daemon::start(bin, port, &[])?;
            let pinned = Command::new("taskset")
                .args(["-a", "-p", "-c", "1", &daemon.0.id().to_string()])
                .stdout(Stdio::null())
                .status()?;
            anyhow::ensure!(pinned.success(), "taskset could not pin the daemon");
            let busy = (i == 1)
                .then(|| {
                    use std::os::unix::process::CommandExt as _;
                    Command::new("taskset")
                        .args(["-c", "1", "sh", "-c", "yes | gzip -1 > /dev/null"])
                        .process_group(0)
                        .spawn()
                        .context("a CPU burner")
                })
                .transpose()?;
            let ab = (i == 2)
                .then(|| {
                    Command::new("taskset")
                        .args(["-c", "1", "ab", "-l", "-r", "-c", "16", "-n", "100000000"])
                        .args(["-t", "120", "-s", "30"])
                        .arg(format!("http://127.0.0.1:{port}/metrics"))
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("ab (apache2-utils)")
                })
                .transpose()?;
            if ab.is_some() || busy.is_some() {
                // The load at full speed before the pipeline starts.
                std::thread::sleep(Duration::from_millis(500));
            }
            let s = measure_on(Some(0), &args)?;
            if let Some(mut busy) = busy {
                // SAFETY: the burner's own process group (sh, yes and gzip).
                unsafe { libc::kill(-(busy.id() as i32), libc::SIGKILL) };
                let _ = busy.wait();
            }
            if let Some(ab) = ab {
                // SAFETY: signalling our own child; ab prints its report on SIGINT.
                unsafe { libc::kill(ab.id() as i32, libc::SIGINT) };
                let out = ab.wait_with_output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                let field = |name: &str| -> Option<u64> {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                };
                answered.push(field("Complete requests:").unwrap_or(0) as f64);
                failed += field("Failed requests:").unwrap_or(0);
            }
            drop(daemon);
            eprintln!(
                "    run {}/{runs} {name:<32} wall {:.3}s cpu {:.3}s",
                r + 1,
                s.wall,
                s.cpu
            );
            samples[i].push(s);
        }
    }
    let _ = writeln!(
        report,
        "Scrapers: the worst-case decode (pinned to CPU 0) while ApacheBench runs 16 concurrent \
         scrapers without pause against the daemon (both pinned to CPU 1)"
    );
    let _ = writeln!(
        report,
        "| mode | pipeline wall (s) | slowdown (paired median, IQR) | pipeline CPU (s) | CPU ratio (paired median, IQR) |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|");
    for (i, name) in names.iter().enumerate() {
        let wall = median(&mut samples[i].iter().map(|x| x.wall).collect::<Vec<_>>());
        let cpu = median(&mut samples[i].iter().map(|x| x.cpu).collect::<Vec<_>>());
        let (w50, w25, w75) = paired(&samples[i], &samples[0], |x| x.wall);
        let (c50, c25, c75) = paired(&samples[i], &samples[0], |x| x.cpu);
        let _ = writeln!(
            report,
            "| {name} | {wall:.3} | {w50:.3}x ({w25:.3}-{w75:.3}) | {cpu:.3} | {c50:.3}x ({c25:.3}-{c75:.3}) |"
        );
    }
    let _ = writeln!(
        report,
        "scrapes answered while the pipeline ran (median of the runs): {:.0}, failed: {failed}\n",
        median(&mut answered)
    );
    Ok(())
}

/// The worst-case decode's ffmpeg arguments (the input made by `inputs`).
fn worst_case_args(dir: &Path) -> Vec<String> {
    let input = dir.join("h264-64x64-20000.mp4");
    [
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-threads",
        "1",
        "-i",
        input.to_str().unwrap_or_default(),
        "-f",
        "null",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What holding a process that maps a new FFmpeg file costs it, and what not holding loses:
/// a fresh copy of the static ffmpeg 9 build (a new file each run) decodes 100 frames of a
/// small file at once, under the daemon with `--hold-new-files` on and off, interleaved. The
/// held time is the daemon's own account (`observer_process_held_seconds_total`).
fn hold(
    bin: &Path,
    assets: &Path,
    dir: &Path,
    port: u16,
    runs: usize,
    report: &mut String,
) -> anyhow::Result<()> {
    step("hold: a never-seen static build, held and not");
    std::fs::create_dir_all(dir)?;
    let input = dir.join("hold-100.mp4");
    if !input.exists() {
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            input.to_str().context("path")?,
        ])?;
    }
    let statik = assets.join("static-ffmpeg").join("ffmpeg");
    let (mut held_ms, mut wall) = (Vec::new(), [Vec::new(), Vec::new()]);
    let mut counted = [Vec::new(), Vec::new()];
    for run in 0..runs {
        for (i, hold) in [true, false].into_iter().enumerate() {
            let daemon = Daemon::start(bin, port, &["--hold-new-files", &hold.to_string()])?;
            let copy = dir.join(format!("ffmpeg-hold-{run}-{hold}"));
            std::fs::copy(&statik, &copy)?;
            let before = scrape_value(port, "observer_process_held_seconds_total ").unwrap_or(0.0);
            let t0 = Instant::now();
            let child = Command::new(&copy)
                .args(["-nostdin", "-loglevel", "error", "-i"])
                .arg(&input)
                .args(["-f", "null", "-"])
                .spawn()?;
            let pid = child.id();
            let status = child.wait_with_output()?.status;
            wall[i].push(t0.elapsed().as_secs_f64() * 1000.0);
            if !status.success() {
                bail!("the copied ffmpeg failed");
            }
            std::thread::sleep(Duration::from_millis(1500));
            // The frames the decoder (h264) returned, as counted.
            let body = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
                .call()?
                .body_mut()
                .read_to_string()?;
            let decoded: f64 = body
                .lines()
                .filter(|l| l.starts_with("media_frames_total{"))
                .filter(|l| l.contains(&format!("pid=\"{pid}\"")) && l.contains("codec=\"h264\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                // Not `sum`: the sum of no floats is -0, printed "-0".
                .fold(0.0, |a, b| a + b);
            counted[i].push(decoded);
            if hold {
                let after =
                    scrape_value(port, "observer_process_held_seconds_total ").unwrap_or(0.0);
                held_ms.push((after - before) * 1000.0);
            }
            drop(daemon);
            std::fs::remove_file(&copy)?;
        }
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        report,
        "\n### Holding a process until a new FFmpeg file is probed\n\n\
         {runs} runs, each a new copy of the 172 MB static ffmpeg 9 decoding 100 frames (320x240 \
         H.264) at once:\n\n\
         | `--hold-new-files` | process wall time, median (ms) | held, median (ms) | frames \
         counted of 100, fewest |\n|---|---|---|---|\n\
         | true | {:.0} | {:.0} | {:.0} |\n| false | {:.0} | - | {:.0} |",
        median(&mut wall[0]),
        median(&mut held_ms),
        min(&counted[0]),
        median(&mut wall[1]),
        min(&counted[1]),
    );
    Ok(())
}

/// One value from the daemon's /metrics, by its exposition line's name and labels.
fn scrape_value(port: u16, series: &str) -> Option<f64> {
    let mut r = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()?;
    let body = r.body_mut().read_to_string().ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

fn uname() -> String {
    first_line(Command::new("uname").arg("-sr"))
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// arm64, where an emulator's numbers mean something: the same single-threaded decode in an
/// amd64 and an arm64 guest (Debian bookworm's kernel, TCG both), the daemon's uprobe runs
/// counted by the kernel (`probe_hits_of_a_decode`). The hits per frame compare; the
/// nanoseconds are QEMU's emulation of each CPU and are reported only as such.
fn arm64(root: &Path, bin: &Path, assets: &Path, report: &mut String) -> anyhow::Result<()> {
    use crate::vm::{self, Arch};
    step("arm64: probe hits of one decode, in an amd64 and an arm64 guest");
    let (arm_root, arm_assets) = crate::setup::arm64_guest(assets)?;
    let arm_daemon = crate::build_daemon_for(Arch::Arm64, true, false)?;
    let test = |arch, release| -> anyhow::Result<PathBuf> {
        crate::test_binaries(arch, release, false)?
            .into_iter()
            .find(|(name, _)| name == "daemon")
            .map(|(_, path)| path)
            .context("no daemon test binary")
    };
    let guests = [
        (
            Arch::Amd64,
            vm::Root::Host,
            bin.to_path_buf(),
            test(Arch::Amd64, false)?,
            assets.to_path_buf(),
        ),
        (
            Arch::Arm64,
            vm::Root::Foreign(arm_root),
            arm_daemon,
            test(Arch::Arm64, true)?,
            arm_assets,
        ),
    ];
    let lines: Vec<anyhow::Result<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = guests
            .iter()
            .map(|(arch, guest_root, daemon, tests, guest_assets)| {
                scope.spawn(move || -> anyhow::Result<String> {
                    let kernel = vm::kernel(assets, "bookworm", *arch)?;
                    let env = [
                        ("OBSERVER_BIN", daemon.display().to_string()),
                        ("OBSERVER_TEST_ASSETS", guest_assets.display().to_string()),
                        ("OBSERVER_TEST_PATIENCE", "4".to_string()),
                    ];
                    let work = root.join("target/bench/vm").join(arch.name());
                    let outcomes = vm::run_tests(
                        &kernel,
                        guest_root,
                        &[(tests.clone(), "probe_hits_of_a_decode")],
                        &env,
                        root,
                        &work,
                    )?;
                    let o = outcomes.first().context("no outcome")?;
                    let log = std::fs::read_to_string(&o.log).unwrap_or_default();
                    let line = log
                        .lines()
                        .find_map(|l| l.split_once("probe hits: ").map(|(_, r)| r.to_string()))
                        .with_context(|| format!("no measurement in {}", o.log.display()))?;
                    Ok(format!("| {} | {} | {line} |", arch.name(), kernel.release))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a guest's thread"))
            .collect()
    });
    let _ = writeln!(
        report,
        "\n**arm64 (emulated): probe hits of one decode** (`ffmpeg -threads 1` of the 100-frame \
         H.264 fixture to a null output, the second of two runs, Debian bookworm's kernel under \
         QEMU TCG)\n\n| guest | kernel | uprobe runs (kernel's count), time in the programs |\n|---|---|---|"
    );
    for l in lines {
        let _ = writeln!(report, "{}", l?);
    }
    Ok(())
}

/// What securing the endpoints costs a scrape: the same idle daemon plain and behind
/// `make-certs.sh`'s web configuration (TLS 1.3, a verified client certificate, basic auth),
/// scraped by curl, each scrape on a new connection (a full handshake: the worst case) and
/// all on one kept-alive connection (what Prometheus does between its idle timeouts); and
/// the first scrape's bcrypt check against the cached ones that follow.
fn web(
    root: &Path,
    bin: &Path,
    dir: &Path,
    port: u16,
    runs: usize,
    report: &mut String,
) -> anyhow::Result<()> {
    step("/metrics plain and behind TLS, client certificates and basic auth");
    let tls = dir.join("web-tls");
    let _ = std::fs::remove_dir_all(&tls);
    let made = Command::new("sh")
        .arg(root.join("deploy/compose/make-certs.sh"))
        .arg(&tls)
        .stdout(Stdio::null())
        .status()
        .context("deploy/compose/make-certs.sh")?;
    anyhow::ensure!(made.success(), "make-certs.sh failed");
    let password = std::fs::read_to_string(tls.join("password"))?;
    let user = format!("prometheus:{}", password.trim());
    let p = |f: &str| tls.join(f).display().to_string();
    let tls_args = [
        "--cacert".to_string(),
        p("ca.crt"),
        "--cert".to_string(),
        p("client.crt"),
        "--key".to_string(),
        p("client.key"),
    ];
    let auth_args = ["-u".to_string(), user];
    const SCRAPES: usize = 200;
    // (mode, new connections: cpu ms, wall ms; kept alive: cpu ms, wall ms)
    let mut rows: Vec<(&str, Vec<[f64; 4]>)> = vec![
        ("plain HTTP", Vec::new()),
        ("TLS + client certificate + basic auth", Vec::new()),
    ];
    let mut first_vs_cached = Vec::new();
    for _ in 0..runs {
        for (i, (_, samples)) in rows.iter_mut().enumerate() {
            let secured = i == 1;
            let web_config = p("web.yml");
            let mut extra = vec!["--gpu", "false"];
            if secured {
                extra.extend(["--web-config-file", &web_config]);
            }
            let d = Daemon::spawn(bin, port, &extra)?;
            let base = if secured {
                format!("https://localhost:{port}")
            } else {
                format!("http://127.0.0.1:{port}")
            };
            let url = format!("{base}/metrics");
            // n scrapes, each on a new connection or all on one kept alive; curl's -w output.
            let curl = |n: usize, reuse: bool, fmt: &str| -> anyhow::Result<String> {
                // curl pairs each -o with the next URL.
                let one = |urls: usize| {
                    let mut c = Command::new("curl");
                    c.args(["-s", "--max-time", "30", "-w", fmt]);
                    if secured {
                        c.args(&tls_args).args(&auth_args);
                    }
                    for _ in 0..urls {
                        c.args(["-o", "/dev/null", &url]);
                    }
                    c
                };
                let mut out = String::new();
                if reuse {
                    out += &String::from_utf8(one(n).output()?.stdout)?;
                } else {
                    for _ in 0..n {
                        out += &String::from_utf8(one(1).output()?.stdout)?;
                    }
                }
                Ok(out)
            };
            // Ready: 200 plain; 401 secured (answered without credentials, so the first
            // authorized scrape below is the one that pays bcrypt).
            let t0 = Instant::now();
            loop {
                let mut c = Command::new("curl");
                c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
                if secured {
                    c.args(&tls_args);
                }
                let code = c.arg(format!("{base}/readyz")).output()?.stdout;
                if code == if secured { b"401" } else { b"200" } {
                    break;
                }
                anyhow::ensure!(
                    t0.elapsed() < Duration::from_secs(30),
                    "daemon not ready after 30 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            if secured {
                let times = curl(2, true, "%{time_starttransfer} ")?;
                let t: Vec<f64> = times
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                anyhow::ensure!(t.len() == 2, "first and second scrape: {times}");
                first_vs_cached.push((t[0] * 1e3, t[1] * 1e3));
            }
            samples.push(scrape_costs(&d, SCRAPES, &curl)?);
        }
    }
    let _ = writeln!(
        report,
        "Securing the endpoints: an idle daemon's /metrics ({SCRAPES} scrapes by curl per sample, {runs} runs alternating, medians; daemon CPU from its threads' schedstat)\n"
    );
    let _ = writeln!(
        report,
        "| mode | new connection each: daemon CPU ms / scrape | wall ms / scrape | kept alive: daemon CPU ms / scrape | wall ms / scrape |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|");
    for (name, samples) in &mut rows {
        let col = |k: usize| median(&mut samples.iter().map(|s| s[k]).collect::<Vec<_>>());
        let (a, b, c, d) = (col(0), col(1), col(2), col(3));
        let _ = writeln!(report, "| {name} | {a:.2} | {b:.2} | {c:.2} | {d:.2} |");
    }
    let mut first: Vec<f64> = first_vs_cached.iter().map(|x| x.0).collect();
    let mut cached: Vec<f64> = first_vs_cached.iter().map(|x| x.1).collect();
    let _ = writeln!(
        report,
        "\nbasic auth (bcrypt cost 10): first authorized scrape {:.1} ms to its first byte, the next (cached) {:.1} ms\n",
        median(&mut first),
        median(&mut cached)
    );
    Ok(())
}

/// Daemon CPU and wall time per scrape (ms), new connections and then one kept alive.
fn scrape_costs(
    d: &Daemon,
    n: usize,
    curl: &dyn Fn(usize, bool, &str) -> anyhow::Result<String>,
) -> anyhow::Result<[f64; 4]> {
    let pid = d.0.id();
    let one = |reuse: bool| -> anyhow::Result<(f64, f64)> {
        let c0 = process_cpu(pid)?;
        let t0 = Instant::now();
        let codes = curl(n, reuse, "%{http_code} ")?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = process_cpu(pid)? - c0;
        anyhow::ensure!(
            codes.split_whitespace().filter(|c| *c == "200").count() == n,
            "not every scrape answered 200: {codes}"
        );
        Ok((cpu * 1e3 / n as f64, wall * 1e3 / n as f64))
    };
    let (cpu_new, wall_new) = one(false)?;
    let (cpu_kept, wall_kept) = one(true)?;
    Ok([cpu_new, wall_new, cpu_kept, wall_kept])
}
