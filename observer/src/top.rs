//! `observer top`: a live view of a running daemon's streams in the terminal, like `htop`.
//!
//! It reads the daemon's `/streams` and `/ios` (JSON) every interval and works out rates from
//! the difference between two reads. Plain text and ANSI clearing only, so it reads well over
//! SSH and in any terminal; keys pick the sort column. `--once` prints one table (after two
//! reads, for the rates) and exits, for scripts.

use std::{
    collections::HashMap,
    io::Write as _,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};

use crate::server::{IoView, StreamView};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    Fps,
    Bitrate,
    Latency,
    Errors,
    Loss,
    Pid,
}

impl SortBy {
    fn key(self) -> char {
        match self {
            SortBy::Fps => 'f',
            SortBy::Bitrate => 'b',
            SortBy::Latency => 'l',
            SortBy::Errors => 'e',
            SortBy::Loss => 'o',
            SortBy::Pid => 'p',
        }
    }

    const ALL: [SortBy; 6] = [
        SortBy::Fps,
        SortBy::Bitrate,
        SortBy::Latency,
        SortBy::Errors,
        SortBy::Loss,
        SortBy::Pid,
    ];
}

/// `observer top`
#[derive(Debug, Parser)]
#[command(
    name = "observer top",
    about = "A live view of a running observer's streams (keys: f fps, b bitrate, l latency, e errors, o loss, p pid, q quit)"
)]
pub struct TopArgs {
    /// The daemon to read (its --listen address).
    #[arg(long, env = "OBSERVER_URL", default_value = "http://127.0.0.1:9464")]
    pub url: String,
    /// How often to refresh.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// The column to sort by, largest first (pid: smallest first).
    #[arg(long, value_enum, default_value = "fps")]
    pub sort: SortBy,
    /// Print one table and exit (no terminal control).
    #[arg(long)]
    pub once: bool,
    /// Show ended streams too (they stay for the daemon's grace period).
    #[arg(long)]
    pub all: bool,
    /// How to reach a daemon whose endpoints a web configuration secures.
    #[command(flatten)]
    pub client: crate::client::ClientArgs,
}

/// One stream's row, with its rates over the last interval.
#[derive(Clone, Debug)]
pub struct Row {
    pub view: StreamView,
    pub fps: f64,
    pub bits_per_second: f64,
}

/// Rates from two reads of the same streams `dt` apart.
pub fn rows(
    now: &[StreamView],
    before: &HashMap<String, (u64, u64)>,
    dt: Duration,
    all: bool,
) -> Vec<Row> {
    let dt = dt.as_secs_f64().max(1e-3);
    now.iter()
        .filter(|v| all || v.up)
        .map(|v| {
            let (fps, bps) = match before.get(&v.stream) {
                Some((frames, bytes)) => (
                    v.frames.saturating_sub(*frames) as f64 / dt,
                    v.packet_bytes.saturating_sub(*bytes) as f64 * 8.0 / dt,
                ),
                None => (0.0, 0.0),
            };
            Row {
                view: v.clone(),
                fps,
                bits_per_second: bps,
            }
        })
        .collect()
}

pub fn sort(rows: &mut [Row], by: SortBy) {
    let desc = |a: f64, b: f64| b.total_cmp(&a);
    rows.sort_by(|a, b| match by {
        SortBy::Fps => desc(a.fps, b.fps),
        SortBy::Bitrate => desc(a.bits_per_second, b.bits_per_second),
        SortBy::Latency => desc(
            a.view.latency_p99_seconds.unwrap_or(0.0),
            b.view.latency_p99_seconds.unwrap_or(0.0),
        ),
        SortBy::Errors => b.view.errors.cmp(&a.view.errors),
        SortBy::Loss => b.view.lost.cmp(&a.view.lost),
        SortBy::Pid => a.view.pid.cmp(&b.view.pid),
    });
}

/// The table, `width` columns wide at most.
pub fn render(rows: &[Row], ios: &[IoView], url: &str, by: SortBy, width: usize) -> String {
    let mut out = String::new();
    let live = rows.iter().filter(|r| r.view.up).count();
    let stalled = ios.iter().filter(|i| i.up && i.stalled).count();
    let keys: Vec<String> = SortBy::ALL
        .iter()
        .map(|s| {
            let name = format!("{s:?}").to_lowercase();
            if *s == by {
                format!("[{}]{}", s.key(), name.to_uppercase())
            } else {
                format!("{}:{name}", s.key())
            }
        })
        .collect();
    out += &format!(
        "observer top  {url}  {live} live streams, {stalled} stalled ios   sort {}  q:quit\n\n",
        keys.join(" ")
    );
    let header = format!(
        "{:>7} {:<13} {:<6} {:<5} {:<12} {:>9} {:>7} {:>10} {:>9} {:>9} {:>6} {:>6} {:<5}",
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
        "LOST",
        "STATE"
    );
    out += &clip(&header, width);
    out.push('\n');
    for r in rows {
        let v = &r.view;
        let format = match v.media.as_str() {
            "video" if v.width > 0 => format!("{}x{}", v.width, v.height),
            "audio" if v.sample_rate > 0 => format!("{}Hz", v.sample_rate),
            _ => String::new(),
        };
        let line = format!(
            "{:>7} {:<13} {:<6} {:<5} {:<12} {:>9} {:>7.1} {:>10} {:>9} {:>9} {:>6} {:>6} {:<5}",
            v.pid,
            clip(&v.process, 13),
            v.direction,
            v.media,
            clip(&v.codec, 12),
            format,
            r.fps,
            human_bits(r.bits_per_second),
            ms(v.latency_p50_seconds),
            ms(v.latency_p99_seconds),
            v.errors,
            v.lost,
            if v.up { "live" } else { "ended" },
        );
        out += &clip(&line, width);
        out.push('\n');
    }
    if !ios.is_empty() {
        out.push('\n');
        let header = format!(
            "{:>7} {:<13} {:<4} {:>10} {:>10} {:>6} {:>6} {:>6} {:>5} {:<7} URL",
            "PID", "PROCESS", "IO", "READ", "WRITTEN", "CC ERR", "LOST", "DROPS", "RETX", "STATE"
        );
        out += &clip(&header, width);
        out.push('\n');
        for io in ios {
            let line = format!(
                "{:>7} {:<13} {:<4} {:>10} {:>10} {:>6} {:>6} {:>6} {:>5} {:<7} {}",
                io.pid,
                clip(&io.process, 13),
                if io.direction == "input" { "in" } else { "out" },
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
                io.url,
            );
            out += &clip(&line, width);
            out.push('\n');
        }
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{:.2}ms", s * 1e3))
}

fn human_bits(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.2}Mb/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.1}kb/s", bps / 1e3)
    } else {
        format!("{bps:.0}b/s")
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1_000_000 => format!("{:.1}kB", b as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}MB", b as f64 / 1e6),
        _ => format!("{:.2}GB", b as f64 / 1e9),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(
        "cannot read {url}: {reason} (is the daemon running, and is --url its --listen address?)"
    )]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Client(String),
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

fn fetch<T: serde::de::DeserializeOwned>(
    client: &crate::client::Client,
    path: &str,
) -> Result<T, TopError> {
    client.json(path).map_err(|reason| TopError::Unreachable {
        url: client.base().to_string(),
        reason,
    })
}

fn snapshot(streams: &[StreamView]) -> HashMap<String, (u64, u64)> {
    streams
        .iter()
        .map(|s| (s.stream.clone(), (s.frames, s.packet_bytes)))
        .collect()
}

/// Runs `observer top`.
pub fn run(args: TopArgs) -> Result<(), TopError> {
    let client = args
        .client
        .client(&args.url)
        .map_err(|e| TopError::Client(e.to_string()))?;
    let mut before = snapshot(&fetch::<Vec<StreamView>>(&client, "/streams")?);
    let mut at = Instant::now();
    if args.once {
        std::thread::sleep(args.interval);
        let streams: Vec<StreamView> = fetch(&client, "/streams")?;
        let ios: Vec<IoView> = fetch(&client, "/ios")?;
        let mut rows = rows(&streams, &before, at.elapsed(), args.all);
        sort(&mut rows, args.sort);
        print!("{}", render(&rows, &ios, &args.url, args.sort, usize::MAX));
        return Ok(());
    }
    use crossterm::{
        cursor, event, execute,
        terminal::{self, ClearType},
    };
    terminal::enable_raw_mode()?;
    let mut stdout = std::io::stdout();
    execute!(stdout, terminal::EnterAlternateScreen, cursor::Hide)?;
    let mut by = args.sort;
    let result = (|| -> Result<(), TopError> {
        loop {
            let deadline = Instant::now() + args.interval;
            // Keys until the next refresh.
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if !event::poll(left)? {
                    break;
                }
                if let event::Event::Key(k) = event::read()? {
                    match k.code {
                        event::KeyCode::Char('q') | event::KeyCode::Esc => return Ok(()),
                        event::KeyCode::Char('c')
                            if k.modifiers.contains(event::KeyModifiers::CONTROL) =>
                        {
                            return Ok(());
                        }
                        event::KeyCode::Char(c) => {
                            if let Some(s) = SortBy::ALL.iter().find(|s| s.key() == c) {
                                by = *s;
                            }
                        }
                        _ => {}
                    }
                }
            }
            let (width, _) = terminal::size().unwrap_or((120, 40));
            let text = match (
                fetch::<Vec<StreamView>>(&client, "/streams"),
                fetch::<Vec<IoView>>(&client, "/ios"),
            ) {
                (Ok(streams), Ok(ios)) => {
                    let mut r = rows(&streams, &before, at.elapsed(), args.all);
                    sort(&mut r, by);
                    before = snapshot(&streams);
                    at = Instant::now();
                    render(&r, &ios, &args.url, by, width as usize)
                }
                (Err(e), _) | (_, Err(e)) => format!("{e}\n"),
            };
            execute!(
                stdout,
                cursor::MoveTo(0, 0),
                terminal::Clear(ClearType::All)
            )?;
            // Raw mode: lines need a carriage return.
            stdout.write_all(text.replace('\n', "\r\n").as_bytes())?;
            stdout.flush()?;
        }
    })();
    let _ = execute!(stdout, cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
    result
}
