//! FFmpeg's log messages as the kernel counted them: per process, logging context, level and
//! message template. Kept like streams: final counts of ended processes stay for the grace
//! period.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use observer_common::log::{LogEntry, LogEvent, LogKey, TEMPLATE_LEN};

use crate::{kernel::Kernel, procfs, streams, tracker::Tracker};

#[derive(Clone, Debug)]
pub struct LogRecord {
    pub key: LogKey,
    pub count: u64,
    /// The format string with its trailing newline removed; control characters as spaces.
    pub template: String,
    pub process: String,
    pub ended: Option<Instant>,
}

pub struct LogRegistry {
    records: HashMap<LogKey, LogRecord>,
    /// Templates the daemon read from processes itself, by (pid, address).
    templates: HashMap<(u32, u64), String>,
    /// Logging contexts that are a frame-threaded decoder's copies of its context, by (pid,
    /// copy): the decoder's context. Learnt from any message its worker thread logged on the
    /// copy ([`LogEntry::thread_codec`]), and so known for the copy's other messages too (the
    /// thread feeding the decoder logs some on the copies as well).
    copies: HashMap<(u32, u64), u64>,
    grace: Duration,
}

/// The label form of a template.
fn clean(raw: &str) -> String {
    raw.trim_end_matches(['\n', '\r'])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl LogRegistry {
    pub fn new(grace: Duration) -> Self {
        LogRegistry {
            records: HashMap::new(),
            templates: HashMap::new(),
            copies: HashMap::new(),
            grace,
        }
    }

    /// Reads a template the kernel could not, while its process surely runs (it is logging),
    /// and keeps it for the collection that makes the message's series (the process may be
    /// gone by then).
    pub fn resolve_template(&mut self, tgid: u32, addr: u64) -> Option<&str> {
        if self.templates.len() >= 65536 {
            self.templates.clear();
        }
        let t = match self.templates.entry((tgid, addr)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(procfs::read_template(tgid, addr, TEMPLATE_LEN)?)
            }
        };
        Some(t.as_str())
    }

    fn template(&self, k: &LogKey, e: &LogEntry) -> Option<String> {
        if e.template[0] != 0 {
            return Some(streams::cstr(&e.template));
        }
        self.templates
            .get(&(k.tgid, k.fmt))
            .cloned()
            .or_else(|| procfs::read_template(k.tgid, k.fmt, TEMPLATE_LEN))
    }

    /// Notes that `avcl` is a copy of the context `codec` (a message its worker thread logged
    /// said so; 0: nothing known).
    pub fn note_thread_codec(&mut self, tgid: u32, avcl: u64, codec: u64) {
        if codec != 0 && avcl != 0 {
            self.copies.insert((tgid, avcl), codec);
        }
    }

    /// The codec context `avcl` is a worker's copy of, or 0.
    pub fn thread_codec(&self, tgid: u32, avcl: u64) -> u64 {
        self.copies.get(&(tgid, avcl)).copied().unwrap_or(0)
    }

    /// Takes `entries`, the kernel's log map as read just before ([`Kernel::log_entries`]).
    pub fn collect(
        &mut self,
        entries: Vec<(LogKey, LogEntry)>,
        processes: &mut streams::Liveness,
        kernel: &mut Kernel,
        tracker: &Tracker,
    ) {
        let now = Instant::now();
        for (k, e) in entries {
            let alive = processes.alive(k.tgid, e.first_ns);
            if !alive {
                kernel.remove_log(&k);
            }
            match self.records.get_mut(&k) {
                Some(r) => {
                    r.count = e.count;
                    if !alive {
                        r.ended.get_or_insert(now);
                    }
                }
                None => {
                    self.note_thread_codec(k.tgid, k.avcl, e.thread_codec);
                    // A template that cannot be read at all is not worth a series.
                    let Some(template) = self.template(&k, &e) else {
                        continue;
                    };
                    let process = tracker.process_name(k.tgid).unwrap_or_default();
                    self.records.insert(
                        k,
                        LogRecord {
                            key: k,
                            count: e.count,
                            template: clean(&template),
                            process,
                            ended: (!alive).then_some(now),
                        },
                    );
                }
            }
        }
        let grace = self.grace;
        self.records
            .retain(|_, r| r.ended.is_none_or(|t| now.duration_since(t) < grace));
        let live: std::collections::HashSet<u32> = self
            .records
            .values()
            .filter(|r| r.ended.is_none())
            .map(|r| r.key.tgid)
            .collect();
        self.templates.retain(|(tgid, _), _| live.contains(tgid));
        // Kept while any series of the process is: ended ones are still exported.
        let held: std::collections::HashSet<u32> =
            self.records.values().map(|r| r.key.tgid).collect();
        self.copies.retain(|(tgid, _), _| held.contains(tgid));
        // Hash maps keep their largest size: after a burst of short pipelines (a hundred
        // templates each) that is megabytes held for nothing.
        if self.records.len() < self.records.capacity() / 4 {
            self.records.shrink_to_fit();
        }
        if self.templates.len() < self.templates.capacity() / 4 {
            self.templates.shrink_to_fit();
        }
    }

    /// Series held (live, and ended within the grace period).
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn records(&self) -> impl Iterator<Item = &LogRecord> {
        self.records.values()
    }
}

/// `AV_LOG_WARNING`: messages at least this severe keep their string arguments.
const AV_LOG_WARNING: i32 = 24;

/// What a withheld string argument reads as.
pub const WITHHELD: &str = "<withheld>";

/// One captured message, formatted and redacted.
#[derive(Clone, Debug)]
pub struct Message {
    pub template: String,
    pub message: String,
    pub args: Vec<String>,
    /// FFmpeg's level name (`error`, `warning`, ...).
    pub level: &'static str,
    /// The `AV_LOG_*` value.
    pub av_level: i32,
    pub pid: u32,
}

impl Message {
    /// Formats the kernel's copy of a message; URLs in it are redacted, and string
    /// arguments of messages below warning severity withheld ([`format_message`]). `read`
    /// is the format string as the daemon read it from the process, for when the kernel
    /// could not (its page was not resident yet: the first time a process logs it).
    pub fn render(ev: &LogEvent, read: Option<&str>) -> Self {
        let mut template = clean(&streams::cstr(&ev.template));
        if template.is_empty() {
            template = read.map(clean).unwrap_or_default();
        }
        let (message, args) = format_message(&template, ev, ev.level <= AV_LOG_WARNING);
        Message {
            message: crate::redact::redact_text(&message),
            args: args.iter().map(|a| crate::redact::redact_text(a)).collect(),
            template,
            level: crate::ffmpeg::log_level_name(ev.level),
            av_level: ev.level,
            pid: ev.tgid,
        }
    }
}

/// Emits one captured message as a structured event of the daemon's own log (JSON with
/// `--log-format json`): target `ffmpeg`, the message formatted with its arguments, its
/// template, level, process, and the stream or io that logged it. URLs in it are redacted.
pub fn emit(m: &Message, process: &str, stream: &str, io: &str) {
    let Message {
        template,
        message,
        args,
        level,
        pid,
        ..
    } = m;
    macro_rules! at {
        ($lvl:expr) => {
            tracing::event!(
                target: "ffmpeg",
                $lvl,
                pid,
                process,
                stream,
                io,
                ffmpeg_level = level,
                template = %template,
                args = ?args,
                "{message}"
            )
        };
    }
    match m.av_level {
        i32::MIN..=23 => at!(tracing::Level::ERROR),
        24..=31 => at!(tracing::Level::WARN),
        32..=39 => at!(tracing::Level::INFO),
        _ => at!(tracing::Level::DEBUG),
    }
}

/// Formats a message from its template and the arguments the kernel captured, as FFmpeg's
/// `vsnprintf` would: integer-class arguments from the `va_list`'s register save area and
/// stack part, doubles from its SSE area, strings from the kernel's copies. Returns the
/// message and each argument as text. Arguments the capture did not reach read as `?`.
///
/// Without `strings`, string arguments read as [`WITHHELD`]: below warning severity, FFmpeg
/// prints the media's own text through them (a container's metadata at info level, H.264 SEI
/// user data at debug level), and no payload byte may leave the node.
pub fn format_message(template: &str, ev: &LogEvent, strings: bool) -> (String, Vec<String>) {
    let mut args = Args {
        ev,
        gp: ev.gp_offset as usize,
        fp: ev.fp_offset as usize,
        stack: 0,
        ints: 0,
    };
    let mut out = String::new();
    let mut shown = Vec::new();
    let mut chars = template.chars().peekable();
    /// The widest field or longest precision formatted: FFmpeg's own use a few characters.
    const MAX_FIELD: usize = 64;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = chars.peek().filter(|f| "-+ #0".contains(**f)) {
            flags.push(f);
            chars.next();
        }
        let number = |chars: &mut std::iter::Peekable<std::str::Chars>, args: &mut Args| {
            if chars.peek() == Some(&'*') {
                chars.next();
                return args.int().map(|v| v as i32 as i64 as usize);
            }
            let mut n = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(d);
                chars.next();
            }
            n.parse().ok()
        };
        // Width and precision come from the process's memory (the template, or an argument
        // for `*`): bounded, or `%.99999f` panics in the formatter and `%999999999d`
        // allocates a gigabyte (both found by `cargo xtask fuzz`).
        let width = number(&mut chars, &mut args).map(|w| w.min(MAX_FIELD));
        let precision = if chars.peek() == Some(&'.') {
            chars.next();
            Some(number(&mut chars, &mut args).unwrap_or(0).min(MAX_FIELD))
        } else {
            None
        };
        let mut long = false;
        while let Some(&l) = chars.peek().filter(|l| "hlLqjzt".contains(**l)) {
            long |= l != 'h';
            chars.next();
        }
        let Some(conv) = chars.next() else { break };
        let text = match conv {
            '%' => {
                out.push('%');
                continue;
            }
            'd' | 'i' => args.int().map(|v| {
                let v = if long { v as i64 } else { v as i32 as i64 };
                v.to_string()
            }),
            'u' | 'x' | 'X' | 'o' | 'c' => args.int().map(|v| {
                let v = if long { v } else { v as u32 as u64 };
                match conv {
                    'u' => v.to_string(),
                    'x' => format!("{}{v:x}", if flags.contains('#') { "0x" } else { "" }),
                    'X' => format!("{}{v:X}", if flags.contains('#') { "0X" } else { "" }),
                    'o' => format!("{v:o}"),
                    _ => char::from_u32(v as u32)
                        .map(String::from)
                        .unwrap_or_default(),
                }
            }),
            'p' => args.int().map(|v| format!("{v:#x}")),
            's' if !strings => {
                args.string();
                Some(WITHHELD.to_string())
            }
            's' => args.string().map(|s| match precision {
                Some(p) => s.chars().take(p).collect(),
                None => s,
            }),
            'f' | 'F' | 'e' | 'E' | 'g' | 'G' | 'a' | 'A' => args.double().map(|v| {
                let p = precision.unwrap_or(6);
                match conv {
                    'e' | 'E' => format!("{v:.p$e}"),
                    'g' | 'G' => format!("{v}"),
                    _ => format!("{v:.p$}"),
                }
            }),
            // An unknown conversion: stop here rather than misread every argument after it.
            _ => {
                out.push('%');
                out.push(conv);
                break;
            }
        };
        let mut text = text.unwrap_or_else(|| "?".into());
        if matches!(conv, 'd' | 'i' | 'u' | 'x' | 'X' | 'o')
            && let Some(p) = precision
            && text.len() < p
        {
            text = format!("{}{text}", "0".repeat(p - text.len()));
        }
        if let Some(w) = width
            && text.chars().count() < w
        {
            let pad = w - text.chars().count();
            if flags.contains('-') {
                text.push_str(&" ".repeat(pad));
            } else if flags.contains('0') && conv != 's' {
                text = format!("{}{text}", "0".repeat(pad));
            } else {
                text = format!("{}{text}", " ".repeat(pad));
            }
        }
        out.push_str(&text);
        shown.push(text.trim().to_string());
    }
    (out, shown)
}

/// Walks a captured `va_list` the way `va_arg` does, in the form the kernel programs give
/// every architecture's (`LogEvent::gp_regs`): the integer registers up to `gp_end`, the vector
/// registers, then the stack part for both.
struct Args<'a> {
    ev: &'a LogEvent,
    gp: usize,
    fp: usize,
    stack: usize,
    /// Integer-class arguments taken so far: the kernel read a string at the first few.
    ints: usize,
}

impl Args<'_> {
    fn word(bytes: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    }

    fn int(&mut self) -> Option<u64> {
        self.ints += 1;
        let end = (self.ev.gp_end as usize).min(self.ev.gp_regs.len());
        if self.gp + 8 <= end {
            self.gp += 8;
            return Args::word(&self.ev.gp_regs, self.gp - 8);
        }
        self.stack += 8;
        Args::word(&self.ev.overflow, self.stack - 8)
    }

    fn double(&mut self) -> Option<f64> {
        if self.fp + 16 <= self.ev.vr_regs.len() {
            self.fp += 16;
            return Args::word(&self.ev.vr_regs, self.fp - 16).map(f64::from_bits);
        }
        self.stack += 8;
        Args::word(&self.ev.overflow, self.stack - 8).map(f64::from_bits)
    }

    fn string(&mut self) -> Option<String> {
        let i = self.ints;
        let ptr = self.int()?;
        if ptr == 0 {
            return Some("(null)".into());
        }
        let s = self.ev.strings.get(i)?;
        (s[0] != 0xff).then(|| streams::cstr(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as av_log's caller leaves it on x86-64 (six integer registers): avcl, level,
    /// fmt in the first three.
    fn event(ints: &[u64], doubles: &[f64], strings: &[(usize, &str)]) -> LogEvent {
        event_on(48, ints, doubles, strings)
    }

    /// The same with `gp_end` bytes of integer registers (64: arm64's eight).
    fn event_on(
        gp_end: usize,
        ints: &[u64],
        doubles: &[f64],
        strings: &[(usize, &str)],
    ) -> LogEvent {
        // SAFETY: LogEvent is plain integers; all-zero is a valid value.
        let mut ev: LogEvent = unsafe { std::mem::zeroed() };
        ev.gp_offset = 24;
        ev.fp_offset = 0;
        ev.gp_end = gp_end as u32;
        let mut gp = 24;
        let mut stack = 0;
        for v in ints {
            if gp < gp_end {
                ev.gp_regs[gp..gp + 8].copy_from_slice(&v.to_ne_bytes());
                gp += 8;
            } else {
                ev.overflow[stack..stack + 8].copy_from_slice(&v.to_ne_bytes());
                stack += 8;
            }
        }
        for (i, d) in doubles.iter().enumerate() {
            ev.vr_regs[16 * i..8 + 16 * i].copy_from_slice(&d.to_bits().to_ne_bytes());
        }
        for s in ev.strings.iter_mut() {
            s[0] = 0xff;
        }
        for (i, s) in strings {
            ev.strings[*i][..s.len()].copy_from_slice(s.as_bytes());
            ev.strings[*i][s.len()] = 0;
        }
        ev
    }

    #[test]
    fn messages_format_like_printf() {
        let ev = event(
            &[188, 7, 0x1234, 0x7f00_0000_1000, 5],
            &[2.5],
            &[(3, "h264")],
        );
        let (msg, args) = format_message("pid %d cc %02d flags 0x%08X %s x%d at %.2f%%", &ev, true);
        assert_eq!(msg, "pid 188 cc 07 flags 0x00001234 h264 x5 at 2.50%");
        assert_eq!(args, ["188", "07", "00001234", "h264", "5", "2.50"]);
        // Integer arguments beyond the registers come from the stack part: after three on
        // x86-64, after five on arm64, whose va_list saves eight registers.
        let ev = event(&[1, 2, 3, 4, 5, 6, 7], &[], &[]);
        assert_eq!(
            format_message("%d %d %d %d %d %d %d", &ev, true).0,
            "1 2 3 4 5 6 7"
        );
        let ev = event_on(64, &[1, 2, 3, 4, 5, 6, 7], &[0.5], &[(3, "hevc")]);
        assert_eq!(
            format_message("%d %d %d %s %d %d %d %.1f", &ev, true).0,
            "1 2 3 hevc 5 6 7 0.5"
        );
        // What the capture did not reach reads as "?", never as garbage.
        let ev = event(&[1], &[], &[]);
        assert_eq!(format_message("%s", &ev, true).0, "?");
        assert_eq!(
            format_message("%ld %lld %zu", &event(&[u64::MAX, 3, 4], &[], &[]), true).0,
            "-1 3 4"
        );
    }

    /// Below warnings, string arguments are withheld (the media's own text goes through
    /// them), and the arguments after them still line up.
    #[test]
    fn strings_of_verbose_messages_are_withheld() {
        let ev = event(&[0x7f00_0000_1000, 42], &[], &[(0, "PLANTEDPAYLOAD")]);
        let (msg, args) = format_message("title: %s (%d)", &ev, false);
        assert_eq!(msg, "title: <withheld> (42)");
        assert_eq!(args, [WITHHELD, "42"]);
        assert_eq!(
            format_message("title: %s (%d)", &ev, true).0,
            "title: PLANTEDPAYLOAD (42)"
        );
    }

    /// Templates are the process's memory: absurd widths and precisions are bounded, not
    /// formatted (they panicked, or allocated a gigabyte, before `cargo xtask fuzz` found them).
    #[test]
    fn absurd_widths_and_precisions_are_bounded() {
        let ev = event(&[7, u64::MAX >> 1], &[1.5], &[]);
        for template in ["%.99999f", "%999999999d", "%.70000d", "%*d", "%-99999999s"] {
            let (msg, _) = format_message(template, &ev, true);
            assert!(msg.len() <= 64 + 20, "{template}: {} bytes", msg.len());
        }
    }

    #[test]
    fn templates_become_one_line_labels() {
        assert_eq!(
            clean("Continuity check failed for pid %d expected %d got %d\n"),
            "Continuity check failed for pid %d expected %d got %d"
        );
        assert_eq!(clean("a\tb\r\n"), "a b");
    }
}
