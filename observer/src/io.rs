//! The daemon's view of every input and output: the kernel's counts per io, the URL (always
//! redacted) from its open event, and the files it wrote (HLS/DASH segments and playlists)
//! from close events. Kept like streams: an ended io stays for the grace period.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use observer_common::io::{FdKind, Io, IoDirection, IoEvent, IoKey};
use observer_common::{event::EventKind, stream::Histogram};

use crate::{kernel::Kernel, redact, streams, tracker::Tracker};

/// Segments and playlists an output wrote, from the close of each of its files.
#[derive(Clone, Debug)]
pub struct Files {
    pub segments: u64,
    /// Segment sizes in log2 buckets of bytes (the kernel's histogram layout, so the same
    /// exposition code serves).
    pub segment_bytes: Histogram,
    /// Open to close of each segment file: the time to write (or upload) it.
    pub segment_write: Histogram,
    pub playlist_writes: u64,
}

impl Default for Files {
    fn default() -> Self {
        let zero = Histogram {
            buckets: [0; observer_common::stream::HIST_BUCKETS],
            sum_ns: 0,
        };
        Files {
            segments: 0,
            segment_bytes: zero,
            segment_write: zero,
            playlist_writes: 0,
        }
    }
}

fn observe(h: &mut Histogram, v: u64) {
    h.buckets[Histogram::bucket(v)] += 1;
    h.sum_ns += v;
}

#[derive(Clone, Debug)]
pub struct IoRecord {
    /// The `io` label: `PID-GENERATION`, like a stream's.
    pub label: String,
    pub key: IoKey,
    pub process: String,
    /// Redacted.
    pub url: String,
    pub protocol: String,
    pub io: Io,
    pub ended: Option<Instant>,
    pub last_activity: f64,
    pub files: Files,
    /// RFC 3550 cumulative loss, held monotonic: a packet counted lost that arrives late later
    /// is counted reordered, not un-lost, so the series stays a counter.
    pub rtp_lost: u64,
    /// Wall-clock time of the open, seconds since the epoch.
    pub opened_wall: f64,
}

impl IoRecord {
    pub fn direction(&self) -> &'static str {
        if self.io.direction == IoDirection::Output as u32 {
            "output"
        } else {
            "input"
        }
    }

    /// Packets the kernel dropped at the io's sockets, every reason together.
    pub fn kernel_drops(&self) -> u64 {
        self.io.drops.iter().map(|d| d.count).sum()
    }

    /// Whether the io is open and has moved nothing for `after`.
    pub fn stalled(&self, now_wall: f64, after: Duration) -> bool {
        if self.ended.is_some() || self.io.opened == 0 {
            return false;
        }
        let since = if self.last_activity > 0.0 {
            self.last_activity
        } else {
            self.opened_wall
        };
        now_wall - since > after.as_secs_f64()
    }
}

/// How long an ended io's kernel entry keeps counting at least, and at most while a TCP
/// socket of it lives on (see `IoRegistry::collect`).
const KERNEL_LINGER: Duration = Duration::from_secs(5);
const KERNEL_LINGER_MAX: Duration = Duration::from_secs(120);

pub struct IoRegistry {
    records: BTreeMap<IoKey, IoRecord>,
    /// Paths of files open for ios, by (pid, fd).
    open_files: HashMap<(u32, i32), String>,
    grace: Duration,
    max: usize,
    clock_offset_ns: i128,
    /// Failed opens, by (process, direction, protocol, error).
    pub open_failures: BTreeMap<(String, &'static str, String, String), u64>,
}

impl IoRegistry {
    /// Inputs and outputs held (open, and ended within the grace period).
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    pub fn new(grace: Duration, max: usize) -> Self {
        IoRegistry {
            records: BTreeMap::new(),
            open_files: HashMap::new(),
            grace,
            max,
            clock_offset_ns: streams::clock_offset_ns(),
            open_failures: BTreeMap::new(),
        }
    }

    fn wall_secs(&self, ktime_ns: u64) -> f64 {
        if ktime_ns == 0 {
            return 0.0;
        }
        (ktime_ns as i128 - self.clock_offset_ns) as f64 / 1e9
    }

    /// An io event from the kernel's ring buffer.
    pub fn event(&mut self, ev: &IoEvent, tracker: &Tracker) {
        let key = IoKey {
            tgid: ev.tgid,
            _pad: 0,
            id: ev.io,
        };
        match ev.kind {
            k if k == EventKind::IoOpen as u32 => {
                // Redacted before anything else sees it; the raw text is dropped here.
                let raw = streams::cstr(&ev.text);
                let url = redact::redact(&raw);
                let protocol = redact::protocol(&raw);
                match self.records.get_mut(&key) {
                    Some(r) => {
                        r.url = url;
                        r.protocol = protocol;
                    }
                    None => {
                        // The record exists from the open on, so the files an output writes
                        // before the next collection land on it.
                        // SAFETY: Io is plain integers; all-zero is a valid value.
                        let mut io: Io = unsafe { std::mem::zeroed() };
                        io.tgid = key.tgid;
                        io.opened_ns = key.id;
                        io.direction = ev.direction;
                        let process = tracker.process_name(key.tgid).unwrap_or_default();
                        let record = self.new_record(key, io, url, protocol, process);
                        self.records.insert(key, record);
                    }
                }
            }
            k if k == EventKind::FileOpen as u32 => {
                if self.open_files.len() >= 65536 {
                    self.open_files.clear();
                }
                self.open_files
                    .insert((ev.tgid, ev.fd), streams::cstr(&ev.text));
            }
            k if k == EventKind::FileClose as u32 => {
                let path = self.open_files.remove(&(ev.tgid, ev.fd));
                if ev.direction != FdKind::File as u32 {
                    return;
                }
                let Some(r) = self.records.get_mut(&key) else {
                    return;
                };
                let written = ev.bytes[observer_common::io::OP_WRITE];
                if r.io.direction != IoDirection::Output as u32 || written == 0 {
                    return;
                }
                let path = path.unwrap_or_default();
                let main_file = r.url == path || r.url.strip_prefix("file:") == Some(&path);
                if path.contains(".m3u8") || path.contains(".mpd") {
                    r.files.playlist_writes += 1;
                } else if !main_file {
                    r.files.segments += 1;
                    observe(&mut r.files.segment_bytes, written);
                    observe(&mut r.files.segment_write, ev.duration_ns);
                }
            }
            _ => {}
        }
    }

    /// Reads the kernel's ios; closed ones and those of processes that are gone are taken
    /// out of the kernel map after this last read.
    /// Takes `ios`, the kernel's io map as read just before ([`Kernel::ios`]).
    pub fn collect(
        &mut self,
        ios: Vec<(IoKey, Io)>,
        processes: &mut streams::Liveness,
        kernel: &mut Kernel,
        tracker: &Tracker,
    ) {
        let now = Instant::now();
        let mut seen = HashSet::new();
        // An ended io stays in the kernel map a little longer, and for as long as one of its
        // TCP sockets lives on (up to a cap): they still send and retransmit the last data
        // and the FIN after the close or the process's exit, slowly when the receiver is.
        let ended_for = |records: &BTreeMap<IoKey, IoRecord>, key: &IoKey| {
            records
                .get(key)
                .and_then(|r| r.ended)
                .map(|t| now.duration_since(t))
        };
        let lingering = ios
            .iter()
            .any(|(k, _)| ended_for(&self.records, k).is_some_and(|d| d >= KERNEL_LINGER));
        let sockets = if lingering {
            kernel.ios_with_sockets()
        } else {
            HashSet::new()
        };
        for (key, io) in ios {
            let ended = io.closed_ns != 0 || !processes.alive(key.tgid, io.opened_ns);
            let lingered = ended_for(&self.records, &key).is_some_and(|d| {
                d >= KERNEL_LINGER_MAX || (d >= KERNEL_LINGER && !sockets.contains(&key))
            });
            let io = if lingered {
                kernel.remove_io(&key).unwrap_or(io)
            } else {
                seen.insert(key);
                io
            };
            self.upsert(key, io, ended.then_some(now), tracker);
        }
        streams::expire(
            &mut self.records,
            |k| seen.contains(k),
            |r| &mut r.ended,
            now,
            self.grace,
            self.max,
        );
        let live: HashSet<u32> = self.records.keys().map(|k| k.tgid).collect();
        self.open_files.retain(|(tgid, _), _| live.contains(tgid));
    }

    fn new_record(
        &self,
        key: IoKey,
        io: Io,
        url: String,
        protocol: String,
        process: String,
    ) -> IoRecord {
        IoRecord {
            label: format!("{}-{:x}", key.tgid, key.id),
            key,
            process,
            url,
            protocol,
            io,
            ended: None,
            last_activity: self.wall_secs(io.last_ns),
            files: Files::default(),
            rtp_lost: rtp_lost(&io),
            opened_wall: self.wall_secs(io.opened_ns),
        }
    }

    fn upsert(&mut self, key: IoKey, io: Io, ended: Option<Instant>, tracker: &Tracker) {
        let (last, opened) = (self.wall_secs(io.last_ns), self.wall_secs(io.opened_ns));
        let record = match self.records.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                // Its open event was lost (ring buffer full): no URL.
                let process = tracker.process_name(key.tgid).unwrap_or_default();
                let mut zero = io;
                zero.open_error = 0;
                let r = IoRecord {
                    label: format!("{}-{:x}", key.tgid, key.id),
                    key,
                    process,
                    url: String::new(),
                    protocol: String::new(),
                    io: zero,
                    ended: None,
                    last_activity: 0.0,
                    files: Files::default(),
                    rtp_lost: 0,
                    opened_wall: 0.0,
                };
                e.insert(r)
            }
        };
        if io.open_error != 0 && record.io.open_error == 0 {
            let failure = (
                record.process.clone(),
                if io.direction == IoDirection::Output as u32 {
                    "output"
                } else {
                    "input"
                },
                record.protocol.clone(),
                crate::ffmpeg::error_name(io.open_error),
            );
            *self.open_failures.entry(failure).or_default() += 1;
        }
        record.io = io;
        record.last_activity = last;
        record.opened_wall = opened;
        record.rtp_lost = record.rtp_lost.max(rtp_lost(&io));
        if record.ended.is_none() {
            record.ended = ended;
        }
    }

    /// Ios to export: opened successfully (failed opens are counted, not listed), not inner
    /// ios of another, at most `max`, live ones first.
    pub fn records(&self) -> impl Iterator<Item = &IoRecord> {
        let live = self.records.values().filter(|r| r.ended.is_none());
        let ended = self.records.values().filter(|r| r.ended.is_some());
        live.chain(ended)
            .filter(|r| r.io.opened != 0 && r.io.parent == 0)
            .take(self.max)
    }

    /// An io, by process and id.
    pub fn get(&self, tgid: u32, id: u64) -> Option<&IoRecord> {
        self.records.get(&IoKey { tgid, _pad: 0, id })
    }

    /// The `io` label of an io, by process and id.
    pub fn label_of(&self, tgid: u32, id: u64) -> Option<&str> {
        self.get(tgid, id).map(|r| r.label.as_str())
    }

    /// The `io` label of the io whose format context is `ctx` (for log messages).
    pub fn label_of_context(&self, tgid: u32, ctx: u64) -> Option<&str> {
        if ctx == 0 {
            return None;
        }
        self.records
            .range(
                IoKey {
                    tgid,
                    _pad: 0,
                    id: 0,
                }..=IoKey {
                    tgid,
                    _pad: 0,
                    id: u64::MAX,
                },
            )
            .rev()
            .find(|(_, r)| r.io.ctx == ctx)
            .map(|(_, r)| r.label.as_str())
    }
}

/// RFC 3550 A.3: expected (extended highest minus base, plus one) minus received.
fn rtp_lost(io: &Io) -> u64 {
    io.rtp.expected().saturating_sub(io.rtp.received_total())
}
