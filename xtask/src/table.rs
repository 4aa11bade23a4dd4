//! `cargo xtask run`: the daemon in the foreground of a terminal, with a table of its streams
//! refreshed every second.

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

#[derive(Deserialize)]
struct IoView {
    pid: u32,
    process: String,
    direction: String,
    url: String,
    bytes_read: u64,
    bytes_written: u64,
    mpegts_continuity_errors: u64,
    rtp_lost: u64,
    kernel_drops: u64,
    tcp_retransmits: u64,
    stalled: bool,
    up: bool,
}

#[derive(Deserialize)]
struct StreamView {
    stream: String,
    pid: u32,
    process: String,
    direction: String,
    media: String,
    codec: String,
    width: u32,
    height: u32,
    sample_rate: u32,
    frames: u64,
    packet_bytes: u64,
    errors: u64,
    latency_p50_seconds: Option<f64>,
    latency_p99_seconds: Option<f64>,
    up: bool,
}

fn listen_addr(args: &[String]) -> String {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--listen" {
            if let Some(v) = it.next() {
                return v.clone();
            }
        } else if let Some(v) = a.strip_prefix("--listen=") {
            return v.to_string();
        }
    }
    std::env::var("OBSERVER_LISTEN").unwrap_or_else(|_| "127.0.0.1:9464".into())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Ctrl-C in the terminal reaches the daemon too (same process group); xtask only notes it,
/// waits for the daemon to detach its probes and exit, and then returns. (A handler, not
/// SIG_IGN: an ignored signal would be inherited by the daemon.)
extern "C" fn on_sigint(_: libc::c_int) {}

pub fn run(bin: &Path, args: &[String]) -> anyhow::Result<()> {
    // SAFETY: installs a handler that does nothing, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let addr = listen_addr(args);
    let base = format!("http://{}", addr.replace("0.0.0.0", "127.0.0.1"));
    crate::step(&format!("starting {} {}", bin.display(), args.join(" ")));
    let mut child = KillOnDrop(
        Command::new(bin)
            .args(args)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let agent = ureq::Agent::new_with_defaults();
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait()? {
            bail!("the daemon exited during start-up ({status}); its log above says why");
        }
        if agent.get(&format!("{base}/readyz")).call().is_ok() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the daemon did not become ready within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("\nobserver is running. Metrics: {base}/metrics   Streams (JSON): {base}/streams");
    eprintln!("Start any ffmpeg (or other libavcodec user) and it shows up below. Ctrl-C stops.\n");
    let mut last: HashMap<String, (Instant, u64, u64)> = HashMap::new();
    loop {
        if let Some(status) = child.0.try_wait()? {
            eprintln!("\nthe daemon exited ({status}); its probes are detached");
            return Ok(());
        }
        let streams: Vec<StreamView> = match agent.get(&format!("{base}/streams")).call() {
            Ok(mut r) => r.body_mut().read_json().unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let now = Instant::now();
        let mut out = String::from("\x1b[H\x1b[J");
        out += &format!("observer  {base}/metrics  {} streams\n\n", streams.len());
        out += &format!(
            "{:>7} {:<15} {:<6} {:<5} {:<14} {:>11} {:>7} {:>10} {:>9} {:>9} {:>6} {:<5}\n",
            "PID",
            "PROCESS",
            "DIR",
            "MEDIA",
            "CODEC",
            "FORMAT",
            "FPS",
            "BITRATE",
            "LAT p50",
            "LAT p99",
            "ERRORS",
            "STATE"
        );
        for s in &streams {
            let (fps, bps) = match last.get(&s.stream) {
                Some((t, frames, bytes)) => {
                    let dt = now.duration_since(*t).as_secs_f64().max(1e-3);
                    (
                        (s.frames.saturating_sub(*frames)) as f64 / dt,
                        (s.packet_bytes.saturating_sub(*bytes)) as f64 * 8.0 / dt,
                    )
                }
                None => (0.0, 0.0),
            };
            let format = match s.media.as_str() {
                "video" => format!("{}x{}", s.width, s.height),
                "audio" if s.sample_rate > 0 => format!("{} Hz", s.sample_rate),
                _ => String::new(),
            };
            out += &format!(
                "{:>7} {:<15} {:<6} {:<5} {:<14} {:>11} {:>7.1} {:>10} {:>9} {:>9} {:>6} {:<5}\n",
                s.pid,
                truncate(&s.process, 15),
                s.direction,
                s.media,
                truncate(&s.codec, 14),
                format,
                fps,
                human_bits(bps),
                ms(s.latency_p50_seconds),
                ms(s.latency_p99_seconds),
                s.errors,
                if s.up { "live" } else { "ended" },
            );
        }
        let ios: Vec<IoView> = match agent.get(&format!("{base}/ios")).call() {
            Ok(mut r) => r.body_mut().read_json().unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        if !ios.is_empty() {
            out += &format!(
                "\n{:>7} {:<15} {:<6} {:<40} {:>10} {:>10} {:>6} {:>6} {:>6} {:>6} {:<7}\n",
                "PID",
                "PROCESS",
                "IO",
                "URL",
                "READ",
                "WRITTEN",
                "CC ERR",
                "LOST",
                "DROPS",
                "RETX",
                "STATE"
            );
            for io in &ios {
                out += &format!(
                    "{:>7} {:<15} {:<6} {:<40} {:>10} {:>10} {:>6} {:>6} {:>6} {:>6} {:<7}\n",
                    io.pid,
                    truncate(&io.process, 15),
                    if io.direction == "input" { "in" } else { "out" },
                    truncate(&io.url, 40),
                    human_bytes(io.bytes_read),
                    human_bytes(io.bytes_written),
                    io.mpegts_continuity_errors,
                    io.rtp_lost,
                    io.kernel_drops,
                    io.tcp_retransmits,
                    match (io.up, io.stalled) {
                        (false, _) => "ended",
                        (true, true) => "STALLED",
                        (true, false) => "live",
                    },
                );
            }
        }
        last = streams
            .iter()
            .map(|s| (s.stream.clone(), (now, s.frames, s.packet_bytes)))
            .collect();
        print!("{out}");
        // Sleeps in small steps so the exit after Ctrl-C shows at once.
        for _ in 0..10 {
            if child.0.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1_000_000 => format!("{:.1} kB", b as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        _ => format!("{:.2} GB", b as f64 / 1e9),
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{:.2}ms", s * 1e3))
}

fn human_bits(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.2} Mb/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.1} kb/s", bps / 1e3)
    } else {
        format!("{bps:.0} b/s")
    }
}
