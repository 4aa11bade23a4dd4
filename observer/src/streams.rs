//! The daemon's view of every stream: refreshed from the kernel maps on each collection
//! tick, kept for a grace period after it ends, capped in number.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use observer_common::stream::{Direction, FLAG_INSANE, FLAG_PROBE_DECODER, Stream, StreamKey};

use crate::{kernel::Kernel, procfs, tracker::Tracker};

/// A stream's identity on the node: process, context address, generation.
pub type StreamId = (u32, u64, u64);

#[derive(Clone, Debug)]
pub struct Record {
    /// The `stream` label: `PID-GENERATION`, unique on the node for the daemon's life and
    /// across its restarts (the generation is the kernel's boot-time clock at open).
    pub label: String,
    pub process: String,
    pub stream: Stream,
    /// When the daemon saw it end; `None` while live.
    pub ended: Option<Instant>,
    /// Wall-clock time of the stream's last data call, seconds since the epoch.
    pub last_activity: f64,
    pub lavc_major: u32,
    /// The id of the container the process runs in; None on the host.
    pub container_id: Option<String>,
}

impl Record {
    pub fn pid(&self) -> u32 {
        self.stream.tgid
    }
    pub fn direction(&self) -> Direction {
        Direction::from_u32(self.stream.direction)
    }
    pub fn codec(&self) -> String {
        cstr(&self.stream.codec_name)
    }
    /// (frames, packets, packet bytes): a decoder takes packets and gives frames, an encoder
    /// the reverse.
    pub fn totals(&self) -> (u64, u64, u64) {
        let s = &self.stream;
        match self.direction() {
            Direction::Decode => (s.out_count, s.in_count, s.in_bytes),
            _ => (s.in_count, s.out_count, s.out_bytes),
        }
    }
    /// Failed calls, all kinds together.
    pub fn errors(&self) -> u64 {
        self.stream.errors.iter().map(|e| e.count).sum()
    }
}

/// The `stream` label of the stream a process opened at `opened_ns` (the kernel's clock).
pub fn label(tgid: u32, opened_ns: u64) -> String {
    format!("{tgid}-{opened_ns:x}")
}

pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// What the last collection saw, for the daemon's own metrics.
#[derive(Clone, Debug, Default)]
pub struct CollectStats {
    pub live: usize,
    pub ended: usize,
    pub over_limit: usize,
    pub duration: Duration,
    /// Entries in the kernel's live-stream map after the collection (probe decoders and
    /// streams of running processes).
    pub kernel_streams: usize,
}

/// How long a stream must have made no call before map pressure may evict it: a live decoder
/// between two frames is never taken, a context a program leaked or parked is.
pub const EVICT_IDLE: Duration = Duration::from_secs(10);

/// Under pressure, which of the kernel's live streams (`(key, last call or open, in kernel
/// ns)`) leave its map. Above the high-water mark (1/16 of the map, at least one entry, short
/// of full) the ones idle longest, at least [`EVICT_IDLE`], go until the low-water mark (1/8
/// short of full): a new stream then finds room at once, where a full map would refuse it.
/// Below the high-water mark, the common case, it costs a comparison and allocates nothing.
pub fn pressure_victims(
    live: impl ExactSizeIterator<Item = (StreamKey, u64)>,
    capacity: usize,
    now_ns: u64,
) -> Vec<StreamKey> {
    let high = capacity.saturating_sub((capacity / 16).max(1));
    if live.len() <= high {
        return Vec::new();
    }
    let over = live.len() - capacity.saturating_sub((capacity / 8).max(2));
    let idle = EVICT_IDLE.as_nanos() as u64;
    let mut idle: Vec<(StreamKey, u64)> = live
        .filter(|(_, last)| now_ns.saturating_sub(*last) >= idle)
        .collect();
    idle.sort_by_key(|&(key, last)| (last, key.tgid, key.ctx));
    idle.into_iter().take(over).map(|(k, _)| k).collect()
}

pub struct Registry {
    records: BTreeMap<StreamId, Record>,
    grace: Duration,
    max: usize,
    /// Kernel (boot-time) ns minus wall-clock ns: turns kernel timestamps into wall time.
    clock_offset_ns: i128,
    pub stats: CollectStats,
    /// Ended streams pushed out by the cap before their grace period ran out.
    pub evicted_total: u64,
    /// Entries the kernel's stream maps hold (`--kernel-max-streams`).
    pub kernel_capacity: usize,
    /// Idle live streams taken out of the kernel's full map ([`pressure_victims`]).
    pub kernel_evicted_total: u64,
    /// Codec names the daemon read from processes, by (pid, address of the name).
    names: HashMap<(u32, u64), [u8; observer_common::stream::CODEC_NAME_LEN]>,
}

/// The kernel programs' clock (`bpf_ktime_get_boot_ns`).
fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Kernel (boot-time) ns minus wall-clock ns: turns the kernel's timestamps into wall time.
pub fn clock_offset_ns() -> i128 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    boottime_ns() as i128 - wall as i128
}

impl Registry {
    /// Streams held (live, and ended within the grace period).
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    pub fn new(grace: Duration, max: usize, kernel_capacity: usize) -> Self {
        Registry {
            records: BTreeMap::new(),
            grace,
            max,
            clock_offset_ns: clock_offset_ns(),
            stats: CollectStats::default(),
            evicted_total: 0,
            kernel_capacity,
            kernel_evicted_total: 0,
            names: HashMap::new(),
        }
    }

    /// Reads a codec name the kernel could not, while its process surely runs (it has just
    /// opened the codec).
    pub fn resolve_name(&mut self, tgid: u32, addr: u64) {
        if self.names.len() >= 65536 {
            self.names.clear();
        }
        if let Some(name) = procfs::read_c_string(tgid, addr) {
            self.names.insert((tgid, addr), name);
        }
    }

    /// A name for a stream whose name the kernel could not read: read by the daemon when the
    /// kernel asked, or now from the process, or else from the library file.
    fn name_of(
        &self,
        s: &Stream,
        tracker: &Tracker,
    ) -> Option<[u8; observer_common::stream::CODEC_NAME_LEN]> {
        if s.codec_name[0] != 0 || s.codec_name_ptr == 0 {
            return None;
        }
        self.names
            .get(&(s.tgid, s.codec_name_ptr))
            .copied()
            .or_else(|| procfs::read_c_string(s.tgid, s.codec_name_ptr))
            .or_else(|| tracker.codec_name_from_file(s.slot, s.open_ip, s.codec_name_ptr))
    }

    fn wall_secs(&self, ktime_ns: u64) -> f64 {
        if ktime_ns == 0 {
            return 0.0;
        }
        (ktime_ns as i128 - self.clock_offset_ns) as f64 / 1e9
    }

    fn upsert(&mut self, s: Stream, ended: Option<Instant>, tracker: &Tracker, kernel: &Kernel) {
        let id = (s.tgid, s.ctx, s.opened_ns);
        let last_activity = self.wall_secs(s.last_ns);
        let name = self.name_of(&s, tracker);
        if let Some(r) = self.records.get_mut(&id) {
            // Keep a name the daemon read itself (the kernel's copy stays empty).
            let known = r.stream.codec_name;
            r.stream = s;
            if r.stream.codec_name[0] == 0 {
                r.stream.codec_name = name.unwrap_or(known);
            }
            r.last_activity = last_activity;
            if r.ended.is_none() {
                r.ended = ended;
            }
            return;
        }
        // The kernel's is the name of the thread that first used the codec.
        let process = tracker
            .process_name(s.tgid)
            .unwrap_or_else(|| cstr(&s.comm));
        let container_id = tracker.container_id(s.tgid);
        let lavc_major = kernel.lavc_major(s.slot);
        let mut s = s;
        if let Some(name) = name {
            s.codec_name = name;
        }
        self.records.insert(
            id,
            Record {
                label: label(s.tgid, s.opened_ns),
                process,
                stream: s,
                ended,
                last_activity,
                lavc_major,
                container_id,
            },
        );
    }

    /// One collection: reads the kernel's live and ended streams, ends the streams of
    /// processes that are gone, expires ended streams past the grace period.
    /// Takes `live`, the kernel's stream map as read just before ([`Kernel::live_streams`]).
    pub fn collect(
        &mut self,
        live: Vec<(StreamKey, Stream)>,
        processes: &mut Liveness,
        kernel: &mut Kernel,
        tracker: &Tracker,
    ) {
        let now = Instant::now();
        let mut seen_live = std::collections::HashSet::new();
        let mut running_tgids = std::collections::HashSet::new();
        let mut kernel_streams = live.len();
        let mut running = Vec::with_capacity(live.len());
        for (key, s) in live {
            if processes.alive(key.tgid, s.opened_ns) {
                running_tgids.insert(key.tgid);
                running.push((key, s));
                continue;
            }
            kernel_streams -= 1;
            self.take_from_kernel(&key, now, tracker, kernel);
        }
        let victims: std::collections::HashSet<(u32, u64)> = pressure_victims(
            running
                .iter()
                .map(|(k, s)| (*k, s.last_ns.max(s.opened_ns))),
            self.kernel_capacity,
            boottime_ns(),
        )
        .into_iter()
        .map(|k| (k.tgid, k.ctx))
        .collect();
        if !victims.is_empty() {
            tracing::warn!(
                evicted = victims.len(),
                entries = kernel_streams,
                capacity = self.kernel_capacity,
                "kernel stream map nearly full: idle streams evicted (raise --kernel-max-streams)"
            );
        }
        for (key, s) in running {
            if victims.contains(&(key.tgid, key.ctx)) {
                // Evicted: its stream ends with its counts as read now; if the context is
                // used again the kernel starts a new stream for it (a new `stream` label).
                kernel_streams -= 1;
                self.kernel_evicted_total += 1;
                tracing::debug!(
                    pid = key.tgid,
                    stream = %label(s.tgid, s.opened_ns),
                    "stream evicted from the kernel map"
                );
                self.take_from_kernel(&key, now, tracker, kernel);
                continue;
            }
            if exported(&s) {
                seen_live.insert((s.tgid, s.ctx, s.opened_ns));
                self.upsert(s, None, tracker, kernel);
            }
        }
        for (_, s) in kernel.take_ended() {
            self.upsert(s, Some(now), tracker, kernel);
        }
        // Names read for processes that no longer hold a stream in the kernel are done with
        // (every stream of theirs has its name by now). Keyed on the processes seen dead with
        // streams in the map, as it was, the cache kept the names of every process that freed
        // its contexts before exiting (most do), up to its 65,536-entry clear.
        let cached = self.names.len();
        self.names
            .retain(|(tgid, _), _| running_tgids.contains(tgid));
        if self.names.len() < cached {
            tracing::trace!(
                forgotten = cached - self.names.len(),
                "codec names of finished processes forgotten"
            );
        }
        if self.names.len() < self.names.capacity() / 4 {
            self.names.shrink_to_fit();
        }
        // Live streams the kernel no longer holds and did not hand over as ended (its ended
        // map was full): end them with their last known counts.
        self.evicted_total += expire(
            &mut self.records,
            |id| seen_live.contains(id),
            |r| &mut r.ended,
            now,
            self.grace,
            self.max,
        );
        let live = self.records.values().filter(|r| r.ended.is_none()).count();
        self.stats = CollectStats {
            live,
            ended: self.records.len() - live,
            over_limit: self.records.len().saturating_sub(self.max),
            duration: now.elapsed(),
            kernel_streams,
        };
    }

    /// Removes a live stream from the kernel's map and ends it with its last counts.
    fn take_from_kernel(
        &mut self,
        key: &StreamKey,
        now: Instant,
        tracker: &Tracker,
        kernel: &mut Kernel,
    ) {
        if let Some(last) = kernel.remove_stream(key)
            && exported(&last)
        {
            self.upsert(last, Some(now), tracker, kernel);
        }
    }

    /// The newest stream of `tgid` on context `ctx`, if any.
    pub fn newest(&self, tgid: u32, ctx: u64) -> Option<&Record> {
        self.records
            .range((tgid, ctx, 0)..=(tgid, ctx, u64::MAX))
            .next_back()
            .map(|(_, r)| r)
    }

    /// The stream an FFmpeg message is on: the one of the context that logged it, else the
    /// one of the codec whose worker thread logged it (`thread_codec`, 0 if none).
    pub fn of_message(&self, tgid: u32, avcl: u64, thread_codec: u64) -> Option<&Record> {
        self.newest(tgid, avcl)
            .or_else(|| (thread_codec != 0).then(|| self.newest(tgid, thread_codec))?)
    }

    pub fn get(&self, id: &StreamId) -> Option<&Record> {
        self.records.get(id)
    }

    /// Every record, live and ended, by stream id.
    pub fn all(&self) -> impl Iterator<Item = (&StreamId, &Record)> {
        self.records.iter()
    }

    /// The records to export: at most `max`, live ones first.
    pub fn exported_records(&self) -> impl Iterator<Item = &Record> {
        let live = self.records.values().filter(|r| r.ended.is_none());
        let ended = self.records.values().filter(|r| r.ended.is_some());
        live.chain(ended).take(self.max)
    }
}

/// The end of a collection, for any registry of things that end (streams, ios): records
/// not `seen` in the kernel any more are ended now, ended ones past the grace period go, and
/// beyond `max` the oldest ended ones go first (live ones never, they are only left out of
/// the export). Returns how many were pushed out early by the cap.
pub fn expire<K: Ord + Copy, R>(
    records: &mut BTreeMap<K, R>,
    seen: impl Fn(&K) -> bool,
    ended: impl Fn(&mut R) -> &mut Option<Instant>,
    now: Instant,
    grace: Duration,
    max: usize,
) -> u64 {
    for (k, r) in records.iter_mut() {
        let e = ended(r);
        if e.is_none() && !seen(k) {
            *e = Some(now);
        }
    }
    records.retain(|_, r| ended(r).is_none_or(|t| now.duration_since(t) < grace));
    let over = records.len().saturating_sub(max);
    if over == 0 {
        return 0;
    }
    let mut old: Vec<(Instant, K)> = records
        .iter_mut()
        .filter_map(|(k, r)| Some(((*ended(r))?, *k)))
        .collect();
    old.sort_by_key(|(t, _)| *t);
    let mut evicted = 0;
    for (_, k) in old.into_iter().take(over) {
        records.remove(&k);
        evicted += 1;
    }
    evicted
}

/// Streams that carry a pipeline's work: not probe decoders, not misread, and used.
fn exported(s: &Stream) -> bool {
    is_stream(s) && s.direction != Direction::Unknown as u32
}

/// A context that is a stream, used yet or not: not a probe decoder, not misread.
pub fn is_stream(s: &Stream) -> bool {
    s.flags & (FLAG_PROBE_DECODER | FLAG_INSANE) == 0
}

/// Which processes run, for one collection: /proc/PID/stat is read once per process, however
/// many streams or log keys it has.
#[derive(Default)]
pub struct Liveness(HashMap<u32, Option<procfs::ProcStat>>);

impl Liveness {
    /// Reads these processes' state now: the collector does it before taking the lock a
    /// scrape waits on (at 1,000 streams, /proc reads were most of the time it held it).
    pub fn read(tgids: impl IntoIterator<Item = u32>) -> Self {
        let mut l = Self::default();
        for tgid in tgids {
            l.0.entry(tgid).or_insert_with(|| procfs::stat(tgid));
        }
        l
    }

    /// Whether the process that began something at `since_ns` (a stream's open, a log key's
    /// first message) still runs: a pid reused by a newer process does not keep it alive.
    pub fn alive(&mut self, tgid: u32, since_ns: u64) -> bool {
        match *self.0.entry(tgid).or_insert_with(|| procfs::stat(tgid)) {
            None => false,
            Some(st) if st.zombie => false,
            // /proc's start time has clock-tick resolution; allow one tick and then some.
            Some(st) => st.start_ns <= since_ns.saturating_add(50_000_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ctx: u64) -> StreamKey {
        StreamKey {
            tgid: 1,
            _pad: 0,
            ctx,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn pressure_takes_the_longest_idle_streams_down_to_the_low_water_mark() {
        let now = 1000 * S;
        // 16 entries: high water 15, low water 14. Idle for 0..16 seconds, ctx = idle seconds.
        let live: Vec<_> = (0..16).map(|i| (key(i), now - i * S)).collect();
        let ctx: Vec<u64> = pressure_victims(live.clone().into_iter(), 16, now)
            .iter()
            .map(|k| k.ctx)
            .collect();
        assert_eq!(ctx, [15, 14]);
        // At the high-water mark nothing goes.
        assert!(pressure_victims(live[..15].iter().copied(), 16, now).is_empty());
        // Busy streams are never taken, even when that leaves the map full.
        let busy: Vec<_> = (0..16).map(|i| (key(i), now - i * S / 10)).collect();
        assert!(pressure_victims(busy.into_iter(), 16, now).is_empty());
    }

    #[test]
    fn a_large_map_keeps_an_eighth_free() {
        let now = 100_000 * S;
        let live: Vec<_> = (0..8192).map(|i| (key(i), now - 60 * S - i)).collect();
        let v = pressure_victims(live.into_iter(), 8192, now);
        assert_eq!(v.len(), 8192 - 7168);
        // The oldest activity first: ctx 8191 is the longest idle.
        assert_eq!(v[0].ctx, 8191);
        // Small maps keep room for at least two.
        let live: Vec<_> = (0..8).map(|i| (key(i), now - 60 * S)).collect();
        assert_eq!(pressure_victims(live.into_iter(), 8, now).len(), 2);
    }
}
