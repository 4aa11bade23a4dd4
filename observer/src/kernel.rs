//! The kernel side as the daemon sees it: loads the programs, attaches them to FFmpeg files,
//! and reads the maps. The only module that talks to aya.

mod facts;
mod pin;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    path::Path,
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, FExit, KProbe, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
pub use facts::{DropPath, Facts, SocketPath};
use observer_common::{
    event::{EventKind, ProcessEvent},
    io::{CcKey, FdEntry, FdKind, Io, IoEvent, IoKey, PacketKey, SockEntry},
    kernel::{FileKey, Held, KernelInfo, ProbeKey},
    layout::{LibLayout, MAX_LIBS, cookie},
    log::{LogEntry, LogEvent, LogKey},
    stream::{Direction, EndedKey, Stream, StreamKey, counter},
};

use crate::{btf::KernelBtf, elf::FfmpegFile, ffmpeg::Hook, procfs::FileId};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the kernel programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("kernel program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("kernel map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("the kernel's BTF (/sys/kernel/btf/vmlinux) is unreadable: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("all {MAX_LIBS} library slots are in use")]
    NoSlot,
    #[error("the kernel programs' object: {0}")]
    Object(String),
}

/// The compiled kernel programs, built by build.rs.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// Entry and return program names for each kind of hook.
fn programs_for(hook: Hook) -> (&'static str, Option<&'static str>) {
    match hook {
        Hook::Data(_) => ("call_enter", Some("call_return")),
        Hook::Open => ("open_enter", Some("open_return")),
        Hook::FindStreamInfo => ("find_stream_info_enter", Some("find_stream_info_return")),
        Hook::End(_) => ("stream_end", None),
        Hook::Log => ("log_message", None),
        Hook::IoOpen(_) => ("io_open_enter", Some("io_open_return")),
        Hook::IoCall(_) => ("io_call_enter", Some("io_call_return")),
        Hook::IoClose(_) => ("io_close", None),
    }
}

fn cookie_kind(hook: Hook) -> u32 {
    use observer_common::stream::hook::*;
    match hook {
        Hook::Data(call) => call as u32,
        Hook::Open => OPEN,
        Hook::FindStreamInfo => FIND_STREAM_INFO,
        Hook::End(kind) => kind,
        Hook::Log => LOG,
        Hook::IoOpen(k) | Hook::IoCall(k) | Hook::IoClose(k) => k,
    }
}

const UPROBE_PROGRAMS: [&str; 15] = [
    "io_open_enter",
    "io_open_return",
    "io_call_enter",
    "io_call_return",
    "io_close",
    "call_enter",
    "call_return",
    "open_enter",
    "open_return",
    "find_stream_info_enter",
    "find_stream_info_return",
    "stream_end",
    "log_message",
    "noop_enter",
    "noop_return",
];

/// Probes attached to one file.
pub struct Attachment {
    pub slot: Option<u32>,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Its probe points as filed in `PROBE_COOKIES` (kernels without attach cookies).
    points: Vec<ProbeKey>,
}

/// Every kernel-dependent job the daemon does, by the name `observer_feature_available`
/// gives it, and why it does not run here (None: it runs). Jobs turned off by a flag are
/// left out.
pub type Features = BTreeMap<&'static str, Option<String>>;

/// Which process-life probes are active (for `/readyz` details and the log).
#[derive(Clone, Copy, Debug, Default)]
pub struct LifeProbes {
    pub exec: bool,
    pub exit: bool,
    pub mmap: bool,
}

pub struct Kernel {
    ebpf: Ebpf,
    streams: HashMap<MapData, StreamKey, Stream>,
    ended: HashMap<MapData, EndedKey, Stream>,
    logs: HashMap<MapData, LogKey, LogEntry>,
    libs: Array<MapData, LibLayout>,
    lib_failures: Array<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    free_slots: Vec<u32>,
    pub life: LifeProbes,
    pub io: IoProbes,
    ios: HashMap<MapData, IoKey, Io>,
    context_io: HashMap<MapData, PacketKey, IoKey>,
    /// The per-process io maps the kernel cannot clean when a process dies without closing
    /// (LRU maps would age the entries out; the daemon removes them at once).
    fds: HashMap<MapData, u64, FdEntry>,
    sockets: HashMap<MapData, u64, SockEntry>,
    continuity: HashMap<MapData, CcKey, u32>,
    demuxed: HashMap<MapData, PacketKey, u64>,
    encoded: HashMap<MapData, PacketKey, u64>,
    /// Attach do-nothing programs instead of the real ones (the benchmarks' floor).
    empty_probes: bool,
    /// Probe `av_vlog`.
    ffmpeg_logs: bool,
    /// Probe libavformat's input/output calls.
    io_stats: bool,
    /// The codec calls probed ([`LoadOptions::directions`]).
    directions: u32,
    /// What this kernel offers, and which jobs run.
    pub info: KernelInfo,
    pub features: Features,
    /// Probe points by file and offset, where uprobes have no attach cookies.
    probe_cookies: Option<HashMap<MapData, ProbeKey, u64>>,
    /// Holding processes that map files not judged yet (`probes::process`).
    judged: HashMap<MapData, FileKey, u32>,
    held: HashMap<MapData, u32, Held>,
    /// Where `held` is pinned, and the watchdog that resumes what the daemon does not
    /// answer for (see `pin`).
    rescue: Option<(std::path::PathBuf, std::process::Child)>,
    alive: Array<MapData, u64>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.release_all();
        if let Some((pin, mut watchdog)) = self.rescue.take() {
            // Without its pin the watchdog exits on its own; it is told to at once.
            let _ = std::fs::remove_file(pin);
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(watchdog.id() as i32, libc::SIGTERM) };
            let _ = watchdog.wait();
        }
    }
}

/// `observer hold-watchdog PIN DAEMON_PID` (started by the daemon, see `pin`).
pub fn hold_watchdog(pin: &Path, daemon: u32) -> ! {
    pin::watchdog(pin, daemon)
}

/// What to load.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Attach do-nothing programs (the benchmarks' floor).
    pub empty_probes: bool,
    /// Probe `av_vlog`.
    pub ffmpeg_logs: bool,
    /// Follow inputs and outputs.
    pub io_stats: bool,
    /// Messages at this `AV_LOG_*` level or more severe are sent as events; -1 for none.
    pub log_event_level: i32,
    /// Frame spans: the kernel's sampling threshold (`frame::sample_threshold`) and the
    /// slow-frame threshold in ns (`frame::SLOW_FRAME_NEVER` for none).
    pub frame_sample: u64,
    pub slow_frame_ns: u64,
    /// Entries of `STREAMS` and `ENDED_STREAMS`.
    pub max_streams: u32,
    /// The codec calls probed: a bit per `Direction` value.
    pub directions: u32,
    /// Hold a process that maps an executable file not judged yet until its probes are in.
    pub hold_new_files: bool,
}

/// Maps whose entries are allocated as they are inserted (`BPF_F_NO_PREALLOC`): preallocated
/// on kernels whose verifier refuses run-time allocation in tracing programs.
const RUNTIME_ALLOCATED_MAPS: [&str; 4] = ["STREAMS", "ENDED_STREAMS", "IOS", "LOGS"];

/// The `LoadOptions::directions` bit of a direction.
pub const fn direction_bit(d: Direction) -> u32 {
    1 << d as u32
}

/// Every direction probed.
pub const ALL_DIRECTIONS: u32 = direction_bit(Direction::Decode)
    | direction_bit(Direction::Encode)
    | direction_bit(Direction::Filter);

/// The ring buffers the daemon reads: process, io and log events; frame spans.
pub struct Rings {
    pub events: RingBuf<MapData>,
    pub frames: RingBuf<MapData>,
}

/// Which input/output probes are active: each missing one costs some metrics, never the
/// daemon.
#[derive(Clone, Copy, Debug, Default)]
pub struct IoProbes {
    /// Descriptors tied to ios, and bytes on files (syscall tracepoints).
    pub syscalls: bool,
    /// Bytes, datagrams and payload headers on sockets ([`SocketPath`]).
    pub sockets: bool,
    /// Drops with their reason at the receiving socket ([`DropPath`]).
    pub drops: bool,
    pub retransmits: bool,
}

fn map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, KernelError> {
    let m = ebpf.take_map(name).ok_or(KernelError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    T::try_from(m).map_err(|source| KernelError::Map { name, source })
}

impl Kernel {
    /// Loads every program this kernel can run: where a helper, a tracepoint or one of its
    /// arguments is missing, the programs' fallback for it; what no way serves is reported in
    /// [`Kernel::features`] and costs those metrics, never the daemon.
    pub fn load(opts: LoadOptions) -> Result<(Self, Rings), KernelError> {
        let LoadOptions {
            empty_probes,
            ffmpeg_logs,
            io_stats,
            log_event_level,
            frame_sample,
            slow_frame_ns,
            max_streams,
            directions,
            hold_new_files,
        } = opts;
        raise_memlock_limit();
        ensure_tracefs();
        let btf = Btf::from_sys_fs().ok();
        let attach_cookie = aya::features().bpf_cookie();
        let facts = match KernelBtf::load() {
            Ok(kbtf) => {
                let f = Facts::read(&kbtf, attach_cookie, hold_new_files, std::process::id());
                drop(kbtf);
                // The parsed BTF is tens of megabytes, gone now: give it back.
                crate::server::release_free_memory();
                Some(f)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the kernel's BTF is unreadable: only what needs none runs");
                None
            }
        };
        let info = facts.as_ref().map(|f| f.info).unwrap_or(KernelInfo {
            attach_cookie: attach_cookie as u32,
            page_shift: 12,
            ..KernelInfo::default()
        });
        tracing::debug!(?facts, "what the kernel offers");
        let fork_child_pid_at = fork_child_pid_offset();
        // Without BTF nothing says run-time allocation is safe: preallocate.
        let object = if facts.as_ref().is_some_and(|f| f.runtime_alloc) {
            Object::from(PROGRAMS)
        } else {
            tracing::info!(
                maps = ?RUNTIME_ALLOCATED_MAPS,
                "this kernel refuses maps allocated at run time in tracing programs: preallocating them"
            );
            Object::preallocated(PROGRAMS, &RUNTIME_ALLOCATED_MAPS)?
        };
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .override_global("KERNEL", &info, true)
            .override_global("LOG_EVENT_LEVEL", &log_event_level, true)
            .override_global("FORK_CHILD_PID_AT", &fork_child_pid_at, true)
            .override_global("FRAME_SAMPLE", &frame_sample, true)
            .override_global("SLOW_FRAME_NS", &slow_frame_ns, true)
            .map_max_entries("STREAMS", max_streams)
            .map_max_entries("ENDED_STREAMS", max_streams)
            .load(object.bytes())?;
        for name in UPROBE_PROGRAMS {
            let p: &mut UProbe = program(&mut ebpf, name)?;
            p.load()
                .map_err(|source| KernelError::Program { name, source })?;
        }
        // What a daemon killed while processes waited for it left stopped runs on now.
        let orphans = pin::resume_orphans();
        if orphans > 0 {
            tracing::warn!(
                processes = orphans,
                "resumed processes held by a daemon that is gone"
            );
        }
        // Holding needs its rescue: the pinned map and the watchdog that resumes what the
        // daemon does not answer for.
        let mut rescue = None;
        let mut why_no_hold = None;
        if info.hold != 0 {
            let started = ebpf
                .map("HELD")
                .ok_or_else(|| "no HELD map".to_string())
                .and_then(pin::pin_held)
                .and_then(|pin| match pin::start_watchdog(&pin) {
                    Ok(child) => Ok((pin, child)),
                    Err(e) => {
                        let _ = std::fs::remove_file(&pin);
                        Err(format!("starting the hold watchdog: {e}"))
                    }
                });
            match started {
                Ok(r) => rescue = Some(r),
                Err(e) => why_no_hold = Some(e),
            }
        }
        let mut features = Features::new();
        features.insert(
            "codec_probes",
            facts
                .as_ref()
                .map_or(Some("no kernel BTF".into()), |f| {
                    f.cookies_unavailable.map(str::to_string)
                })
                .filter(|_| !attach_cookie),
        );
        let mut life = LifeProbes::default();
        if let Some(btf) = btf.as_ref() {
            for (name, tp, flag, feature) in [
                (
                    "sched_process_exec",
                    "sched_process_exec",
                    &mut life.exec,
                    "process_exec",
                ),
                (
                    "sched_process_exit",
                    "sched_process_exit",
                    &mut life.exit,
                    "process_exit",
                ),
            ] {
                let p: &mut BtfTracePoint = program(&mut ebpf, name)?;
                let attached = p.load(tp, btf).and_then(|()| p.attach().map(drop));
                *flag = attached.is_ok();
                features.insert(feature, attached.err().map(|e| error_text(&e)));
            }
            let p: &mut FExit = program(&mut ebpf, "mmap_exec")?;
            match p.load("do_mmap", btf).and_then(|()| p.attach().map(drop)) {
                Ok(()) => life.mmap = true,
                Err(e) => {
                    tracing::debug!(error = %e, "fexit unavailable; using the mmap syscall tracepoints")
                }
            }
        } else {
            for feature in ["process_exec", "process_exit"] {
                features.insert(feature, Some("no kernel BTF".into()));
            }
        }
        if !life.mmap {
            life.mmap = attach_mmap_tracepoints(&mut ebpf);
        }
        features.insert(
            "library_loads",
            (!life.mmap).then(|| "neither fexit on do_mmap nor the mmap tracepoints".into()),
        );
        if hold_new_files && !empty_probes {
            let why = facts
                .as_ref()
                .map_or(Some("no kernel BTF"), |f| f.hold_unavailable)
                .or((!life.exec).then_some("no exec events"))
                .or((!life.mmap).then_some("no library-load events"))
                .map(str::to_string)
                .or(why_no_hold);
            features.insert("hold_new_files", why);
        }
        if ffmpeg_logs && !empty_probes {
            features.insert(
                "codec_threads",
                attach_codec_threads(&mut ebpf, fork_child_pid_at).err(),
            );
        }
        let io = if io_stats && !empty_probes {
            attach_io_tracepoints(&mut ebpf, btf.as_ref(), facts.as_ref(), &mut features)
        } else {
            IoProbes::default()
        };
        for (feature, why) in &features {
            if let Some(why) = why {
                tracing::warn!(feature, reason = %why, "unavailable on this kernel");
            }
        }
        let rings = Rings {
            events: map(&mut ebpf, "EVENTS")?,
            frames: map(&mut ebpf, "FRAMES")?,
        };
        let kernel = Kernel {
            streams: map(&mut ebpf, "STREAMS")?,
            ended: map(&mut ebpf, "ENDED_STREAMS")?,
            logs: map(&mut ebpf, "LOGS")?,
            libs: map(&mut ebpf, "LIBS")?,
            lib_failures: map(&mut ebpf, "LIB_READ_FAILURES")?,
            counters: map(&mut ebpf, "COUNTERS")?,
            free_slots: (0..MAX_LIBS).rev().collect(),
            ios: map(&mut ebpf, "IOS")?,
            context_io: map(&mut ebpf, "CONTEXT_IO")?,
            fds: map(&mut ebpf, "FDS")?,
            sockets: map(&mut ebpf, "SOCKETS")?,
            continuity: map(&mut ebpf, "CONTINUITY")?,
            demuxed: map(&mut ebpf, "DEMUXED")?,
            encoded: map(&mut ebpf, "ENCODED")?,
            probe_cookies: if attach_cookie {
                None
            } else {
                Some(map(&mut ebpf, "PROBE_COOKIES")?)
            },
            judged: map(&mut ebpf, "JUDGED")?,
            held: map(&mut ebpf, "HELD")?,
            rescue,
            alive: map(&mut ebpf, "ALIVE")?,
            ebpf,
            life,
            io,
            empty_probes,
            ffmpeg_logs,
            io_stats,
            directions,
            info,
            features,
        };
        Ok((kernel, rings))
    }

    /// Attaches every probe point of `file` (reachable at `path`, known to processes' maps as
    /// `id`) for all processes.
    pub fn attach(
        &mut self,
        path: &Path,
        id: FileId,
        file: &FfmpegFile,
    ) -> Result<Attachment, KernelError> {
        let slot = match file.release.and_then(crate::ffmpeg::layout_for) {
            Some(row) => {
                let slot = self.free_slots.pop().ok_or(KernelError::NoSlot)?;
                let zero = 0u64;
                let set = self
                    .libs
                    .set(slot, row.layout, 0)
                    .and_then(|()| self.lib_failures.set(slot, zero, 0));
                if let Err(source) = set {
                    self.free_slots.push(slot);
                    return Err(KernelError::Map {
                        name: "LIBS",
                        source,
                    });
                }
                Some(slot)
            }
            None => None,
        };
        let mut attachment = Attachment {
            slot,
            links: Vec::new(),
            points: Vec::new(),
        };
        for point in &file.points {
            if point.probe.needs_layout && slot.is_none() {
                continue;
            }
            if point.probe.hook == Hook::Log && !self.ffmpeg_logs {
                continue;
            }
            if point.probe.hook.is_io() && !self.io_stats {
                continue;
            }
            if let Hook::Data(call) = point.probe.hook
                && self.directions & direction_bit(call.direction()) == 0
            {
                continue;
            }
            let (enter, ret) = if self.empty_probes {
                let (_, ret) = programs_for(point.probe.hook);
                ("noop_enter", ret.map(|_| "noop_return"))
            } else {
                programs_for(point.probe.hook)
            };
            let c = cookie(
                slot.unwrap_or(u16::MAX as u32),
                cookie_kind(point.probe.hook),
            );
            if let Some(cookies) = self.probe_cookies.as_mut() {
                let key = ProbeKey {
                    dev: kernel_dev(id.dev),
                    _pad: 0,
                    ino: id.inode,
                    offset: point.offset,
                };
                if let Err(source) = cookies.insert(key, c, 0) {
                    self.detach(attachment);
                    return Err(KernelError::Map {
                        name: "PROBE_COOKIES",
                        source,
                    });
                }
                attachment.points.push(key);
            }
            for name in [Some(enter), ret].into_iter().flatten() {
                let p: &mut UProbe = program(&mut self.ebpf, name)?;
                let at = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(point.offset),
                    // Without attach cookies the programs find theirs in PROBE_COOKIES.
                    cookie: self.probe_cookies.is_none().then_some(c),
                };
                match p.attach(at, path, UProbeScope::AllProcesses) {
                    Ok(id) => attachment.links.push((name, id)),
                    Err(source) => {
                        self.detach(attachment);
                        return Err(KernelError::Program { name, source });
                    }
                }
            }
        }
        Ok(attachment)
    }

    pub fn detach(&mut self, attachment: Attachment) {
        if let Some(cookies) = self.probe_cookies.as_mut() {
            for key in &attachment.points {
                let _ = cookies.remove(key);
            }
        }
        for (name, id) in attachment.links {
            if let Ok(p) = program::<UProbe>(&mut self.ebpf, name)
                && let Err(e) = p.detach(id)
            {
                tracing::warn!(program = name, error = %e, "detach failed");
            }
        }
        if let Some(slot) = attachment.slot {
            let _ = self.libs.set(slot, LibLayout::default(), 0);
            self.free_slots.push(slot);
        }
    }

    /// Failed sanity checks of reads through this slot since it was filled.
    pub fn read_failures(&self, slot: u32) -> u64 {
        self.lib_failures.get(&slot, 0).unwrap_or(0)
    }

    /// The `stream` label of a live stream the registry may not have collected yet.
    /// The generation of the stream of `tgid` on context `ctx`: live, or ended and not yet
    /// collected (a short pipeline can free its codec before the daemon reads its messages).
    pub fn stream_opened(&self, tgid: u32, ctx: u64) -> Option<u64> {
        // Messages logged with no context (most of the ffmpeg CLI's own) are no stream's: no
        // map lookups for them.
        if ctx == 0 {
            return None;
        }
        // Probe decoders and misread contexts are kept in the maps but are no stream.
        if let Ok(s) = self.streams.get(&StreamKey { tgid, _pad: 0, ctx }, 0) {
            return crate::streams::is_stream(&s).then_some(s.opened_ns);
        }
        self.ended
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == tgid && k.ctx == ctx)
            .filter(|k| {
                self.ended
                    .get(k, 0)
                    .is_ok_and(|s| crate::streams::is_stream(&s))
            })
            .map(|k| k.opened_ns)
            .max()
    }

    /// The `io` label of the io whose format context is `ctx`, from the kernel's own map.
    pub fn io_label(&self, tgid: u32, ctx: u64) -> Option<String> {
        let key = PacketKey {
            tgid,
            _pad: 0,
            data: ctx,
        };
        let io = self.context_io.get(&key, 0).ok()?;
        Some(format!("{tgid}-{:x}", io.id))
    }

    pub fn live_streams(&self) -> Vec<(StreamKey, Stream)> {
        self.streams.iter().filter_map(Result::ok).collect()
    }

    /// Takes the streams that ended in the kernel out of its map.
    pub fn take_ended(&mut self) -> Vec<(EndedKey, Stream)> {
        let keys: Vec<EndedKey> = self.ended.keys().filter_map(Result::ok).collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Ok(s) = self.ended.get(&k, 0) {
                out.push((k, s));
            }
            let _ = self.ended.remove(&k);
        }
        out
    }

    /// Removes a live stream (its process is gone); returns its last state.
    pub fn remove_stream(&mut self, key: &StreamKey) -> Option<Stream> {
        let s = self.streams.get(key, 0).ok();
        let _ = self.streams.remove(key);
        s
    }

    /// Log message counts, per process, context, level and template.
    pub fn log_entries(&self) -> Vec<(LogKey, LogEntry)> {
        self.logs.iter().filter_map(Result::ok).collect()
    }

    /// Forgets the counts of a process that is gone (after they were read).
    pub fn remove_log(&mut self, key: &LogKey) {
        let _ = self.logs.remove(key);
    }

    /// Every io the kernel holds.
    pub fn ios(&self) -> Vec<(IoKey, Io)> {
        self.ios.iter().filter_map(Result::ok).collect()
    }

    /// The ios that kernel sockets still belong to: a TCP socket outlives its descriptor and
    /// its process, sending (and retransmitting) the last data and the FIN, until the kernel
    /// destroys it.
    pub fn ios_with_sockets(&self) -> std::collections::HashSet<IoKey> {
        self.sockets
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v.io)
            .collect()
    }

    /// Forgets an io (closed, or its process gone) after its last read.
    pub fn remove_io(&mut self, key: &IoKey) -> Option<Io> {
        let io = self.ios.get(key, 0).ok();
        let _ = self.ios.remove(key);
        io
    }

    /// Removes what the io maps still hold for a process that is gone: descriptors, sockets,
    /// continuity state, packet links and format contexts of a process killed before it
    /// closed them. Returns how many entries went.
    pub fn forget_process(&mut self, tgid: u32) -> usize {
        fn purge<K: aya::Pod, V: aya::Pod>(
            map: &mut HashMap<MapData, K, V>,
            mine: impl Fn(&K, &V) -> bool,
        ) -> usize {
            let gone: Vec<K> = map
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, v)| mine(k, v))
                .map(|(k, _)| k)
                .collect();
            gone.iter().filter(|k| map.remove(k).is_ok()).count()
        }
        purge(&mut self.fds, |k, _| (k >> 32) as u32 == tgid)
            // A TCP socket outlives its process (FIN, last retransmissions) and leaves at its
            // destruction.
            + purge(&mut self.sockets, |_, v| {
                v.io.tgid == tgid && v.kind == FdKind::Datagram as u32
            })
            + purge(&mut self.continuity, |k, _| k.io.tgid == tgid)
            + purge(&mut self.demuxed, |k, _| k.tgid == tgid)
            + purge(&mut self.encoded, |k, _| k.tgid == tgid)
            + purge(&mut self.context_io, |k, _| k.tgid == tgid)
    }

    /// Entries in the io maps: (ios, descriptors, sockets).
    pub fn io_map_entries(&self) -> (usize, usize, usize) {
        (
            self.ios.keys().count(),
            self.fds.keys().count(),
            self.sockets.keys().count(),
        )
    }

    /// The kernel side's own health counters, summed over CPUs.
    pub fn counters(&self) -> StdHashMap<u32, u64> {
        (0..counter::COUNT)
            .filter_map(|i| Some((i, self.counters.get(&i, 0).ok()?.iter().sum())))
            .collect()
    }
}

impl Kernel {
    /// Tells the programs the daemon runs: a process that maps an unjudged file is held only
    /// while this is recent (`probes::process::ALIVE_WITHIN_NS`).
    pub fn beat(&mut self) {
        // Without its rescue (or where a kernel lacks what it needs) nothing is held: the
        // programs see no beat.
        if self.features.get("hold_new_files") == Some(&None) {
            let _ = self.alive.set(0, boot_ns(), 0);
        }
    }

    /// The processes held now.
    pub fn held(&self) -> Vec<(u32, Held)> {
        self.held.iter().filter_map(Result::ok).collect()
    }

    /// Resumes a held process (SIGCONT), first filing the file it was held for as judged
    /// when the daemon knows what it is (`judged`).
    pub fn release(&mut self, tgid: u32, judged: Option<FileKey>) {
        if let Some(key) = judged {
            let _ = self.judged.insert(key, 1, 0);
        }
        let _ = self.held.remove(&tgid);
        // SAFETY: kill(2) on a process the kernel stopped for us.
        unsafe { libc::kill(tgid as i32, libc::SIGCONT) };
    }

    /// Forgets a judged file: the next process that maps it is held again (an FFmpeg file
    /// detached, whose probes must be in again before a process runs it).
    pub fn unjudge(&mut self, key: &FileKey) {
        let _ = self.judged.remove(key);
    }

    /// Stops holding and resumes every held process: at shutdown (also when dropped).
    pub fn release_all(&mut self) {
        let _ = self.alive.set(0, 0, 0);
        for (tgid, _) in self.held() {
            self.release(tgid, None);
        }
    }
}

/// The kernel programs' clock (`bpf_ktime_get_boot_ns`): since boot, suspend included.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's `dev_t` (major << 20 | minor, as `super_block.s_dev` holds it) of a
/// [`FileId`]'s device (major << 32 | minor).
pub fn kernel_dev(dev: u64) -> u32 {
    (((dev >> 32) as u32) << 20) | (dev as u32 & 0xfffff)
}

/// An error and its causes on one line, for a feature's reason.
fn error_text(e: &dyn std::error::Error) -> String {
    crate::tracker::error_chain(e)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The programs' object, 8-byte aligned as the ELF parser wants it; a copy where maps were
/// switched to preallocation.
enum Object {
    Built(&'static [u8]),
    Patched(Vec<u64>, usize),
}

impl Object {
    fn from(bytes: &'static [u8]) -> Object {
        Object::Built(bytes)
    }

    /// A copy of `bytes` in which the maps `names` are preallocated: their definitions (in
    /// the `maps` section, aya-ebpf's `bpf_map_def`: type, key size, value size, max entries,
    /// flags, ...) lose `BPF_F_NO_PREALLOC`.
    fn preallocated(bytes: &[u8], names: &[&str]) -> Result<Object, KernelError> {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        const FLAGS_AT: u64 = 16;
        const BPF_F_NO_PREALLOC: u32 = 1;
        let bad = |why: String| KernelError::Object(why);
        let elf = object::File::parse(bytes).map_err(|e| bad(e.to_string()))?;
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: a u64 buffer viewed as the bytes it holds.
        let copy = unsafe {
            std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8)
        };
        copy[..bytes.len()].copy_from_slice(bytes);
        for name in names {
            let sym = elf
                .symbols()
                .find(|s| s.name() == Ok(name))
                .ok_or_else(|| bad(format!("no map {name}")))?;
            let section = sym
                .section_index()
                .and_then(|i| elf.section_by_index(i).ok())
                .filter(|s| s.name() == Ok("maps"))
                .ok_or_else(|| bad(format!("{name} is not in the maps section")))?;
            let (offset, _) = section
                .file_range()
                .ok_or_else(|| bad("the maps section has no data".into()))?;
            let at = usize::try_from(offset + sym.address() + FLAGS_AT)
                .map_err(|e| bad(e.to_string()))?;
            let field = copy
                .get_mut(at..at + 4)
                .ok_or_else(|| bad(format!("{name}'s definition is past the end")))?;
            let flags = u32::from_ne_bytes(field.try_into().expect("4 bytes"));
            field.copy_from_slice(&(flags & !BPF_F_NO_PREALLOC).to_ne_bytes());
        }
        Ok(Object::Patched(words, bytes.len()))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Object::Built(b) => b,
            // SAFETY: the u64 buffer's bytes, `len` of them initialized from the object.
            Object::Patched(words, len) => unsafe {
                std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), *len)
            },
        }
    }
}

/// The mmap syscall tracepoints, the fallback for kernels where fexit cannot load. They need
/// tracefs, which is mounted if it is not.
fn attach_mmap_tracepoints(ebpf: &mut Ebpf) -> bool {
    ensure_tracefs();
    let mut ok = true;
    for name in ["sys_enter_mmap", "sys_exit_mmap"] {
        let attached = program::<TracePoint>(ebpf, name).and_then(|p| {
            p.load()
                .and_then(|()| p.attach("syscalls", name).map(drop))
                .map_err(|source| KernelError::Program { name, source })
        });
        if let Err(e) = attached {
            tracing::warn!(error = %e, "library-load probe unavailable; new library copies are found by periodic /proc scans");
            ok = false;
        }
    }
    ok
}

/// The thread-creation tracepoint that tells which threads a codec started in `avcodec_open2`
/// (`probes::codec::codec_thread`): what a frame-threaded decoder's workers log, on their own
/// copies of its context, is then put on the decoder's stream.
fn attach_codec_threads(ebpf: &mut Ebpf, child_pid_at: u32) -> Result<(), String> {
    let name = "codec_thread";
    program::<TracePoint>(ebpf, name)
        .and_then(|p| {
            p.load()
                .and_then(|()| p.attach("sched", "sched_process_fork").map(drop))
                .map_err(|source| KernelError::Program { name, source })
        })
        .map_err(|e| error_text(&e))?;
    if child_pid_at == 0 {
        return Err("sched_process_fork has no child_pid field".into());
    }
    Ok(())
}

/// Where `child_pid` sits in a `sched:sched_process_fork` record, from the tracepoint's format
/// (0 if it cannot be read).
fn fork_child_pid_offset() -> u32 {
    ensure_tracefs();
    tracepoint_format("sched", "sched_process_fork")
        .and_then(|f| field_offset(&f, "child_pid"))
        .unwrap_or(0)
}

/// The offset of `field` in a tracepoint's format (`field:pid_t child_pid;\toffset:20;...`).
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim().strip_prefix("field:")?;
        let mut parts = line.split(';');
        let declaration = parts.next()?;
        let name = declaration.split_whitespace().last()?;
        // `char parent_comm[16]` names its field with the array's size.
        if name.split('[').next()? != field {
            return None;
        }
        parts
            .find_map(|p| p.trim().strip_prefix("offset:"))?
            .trim()
            .parse()
            .ok()
    })
}

/// The syscall and socket programs behind per-io bytes, drops and retransmissions, each the
/// way this kernel offers it (`facts`); the features they serve are filed in `features`.
fn attach_io_tracepoints(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    facts: Option<&Facts>,
    features: &mut Features,
) -> IoProbes {
    // Files only: socket bytes are counted by the socket programs, whatever the syscall.
    const SYSCALLS: &[(&str, &[&str])] = &[
        (
            "io_enter_file",
            &[
                "sys_enter_read",
                "sys_enter_pread64",
                "sys_enter_readv",
                "sys_enter_write",
                "sys_enter_pwrite64",
                "sys_enter_writev",
            ],
        ),
        (
            "io_exit_read",
            &["sys_exit_read", "sys_exit_pread64", "sys_exit_readv"],
        ),
        (
            "io_exit_write",
            &["sys_exit_write", "sys_exit_pwrite64", "sys_exit_writev"],
        ),
        ("fd_enter_open", &["sys_enter_openat"]),
        ("fd_enter_socket", &["sys_enter_socket"]),
        ("fd_exit_created", &["sys_exit_openat", "sys_exit_socket"]),
        ("fd_exit_accept", &["sys_exit_accept", "sys_exit_accept4"]),
        ("fd_close", &["sys_enter_close"]),
    ];
    // The socket syscalls whose number and descriptor the socket programs need, on kernels
    // that cannot read them from the thread's registers.
    const SOCKET_SYSCALLS: [&str; 9] = [
        "read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg", "connect",
    ];
    let mut probes = IoProbes {
        syscalls: true,
        ..IoProbes::default()
    };
    let mut why_not_files = None;
    for (name, points) in SYSCALLS {
        if let Err(e) = syscall_tracepoints(ebpf, name, points) {
            why_not_files = Some(error_text(&e));
            probes.syscalls = false;
        }
    }
    features.insert("io_files", why_not_files);
    let (Some(btf), Some(facts)) = (btf, facts) else {
        for f in ["io_sockets", "io_drops", "io_retransmits"] {
            features.insert(f, Some("no kernel BTF".into()));
        }
        return probes;
    };
    let mut btf_program = |name: &'static str, tp: &str| btf_tracepoint(ebpf, btf, name, tp);
    let sockets = match facts.sockets {
        SocketPath::Tracepoints => btf_program("sock_recv", "sock_recv_length")
            .and_then(|()| btf_program("sock_send", "sock_send_length")),
        // No BPF trampoline for kernel functions (arm64 before 6.4) shows at the first
        // fexit: then kprobes on the same calls, where the kernel has them. Decided once, so
        // a call is never counted by both.
        SocketPath::InetReturns => match fexit(ebpf, btf, "inet_recv", "inet_recvmsg") {
            Ok(()) => fexit(ebpf, btf, "inet_send", "inet_sendmsg").map(|()| {
                // IPv6 may be a module, or absent: IPv4 sockets are counted without it.
                for (name, function) in [
                    ("inet6_recv", "inet6_recvmsg"),
                    ("inet6_send", "inet6_sendmsg"),
                ] {
                    if let Err(e) = fexit(ebpf, btf, name, function) {
                        tracing::info!(program = name, error = %e, "IPv6 sockets not counted");
                    }
                }
            }),
            Err(fexit_error) => {
                tracing::info!(error = %fexit_error, "fexit unavailable; counting sockets with kprobes");
                inet_kprobes(ebpf).map_err(|e| format!("fexit: {fexit_error}; kprobes: {e}"))
            }
        },
        SocketPath::None(why) => Err(why.to_string()),
    }
    .and_then(|()| {
        if facts.info.task_pt_regs != 0 {
            return Ok(());
        }
        let points = |side: &str| -> Vec<String> {
            SOCKET_SYSCALLS
                .iter()
                .map(|s| format!("sys_{side}_{s}"))
                .collect()
        };
        syscall_tracepoints(ebpf, "syscall_args_enter", &points("enter"))
            .and_then(|()| syscall_tracepoints(ebpf, "syscall_args_exit", &points("exit")))
            .map_err(|e| error_text(&e))
    });
    probes.sockets = sockets.is_ok();
    features.insert("io_sockets", sockets.err());
    // Without these, a SYN retransmission is missed and a destroyed socket's entry ages out
    // of its LRU map instead of leaving at once.
    let mut btf_program = |name: &'static str, tp: &str| btf_tracepoint(ebpf, btf, name, tp);
    for (name, tp) in [
        ("sock_state", "inet_sock_set_state"),
        ("tcp_destroy", "tcp_destroy_sock"),
    ] {
        if let Err(e) = btf_program(name, tp) {
            tracing::warn!(program = name, tracepoint = tp, error = %e, "socket tracepoint unavailable");
        }
    }
    let needs_sockets = |r: Result<(), String>| {
        if probes.sockets {
            r
        } else {
            Err("no socket counts (io_sockets)".into())
        }
    };
    let drops = needs_sockets(match facts.drops {
        DropPath::KfreeSkb => btf_program("skb_drop", "kfree_skb"),
        // `kfree_skb` only lends its reason to the next `udp_drop`, where it has one.
        DropPath::UdpQueue if facts.info.kfree_skb_args >= 3 => {
            btf_program("skb_drop", "kfree_skb")
                .and_then(|()| btf_program("udp_drop", "udp_fail_queue_rcv_skb"))
        }
        DropPath::UdpQueue => btf_program("udp_drop", "udp_fail_queue_rcv_skb"),
        DropPath::None(why) => Err(why.to_string()),
    });
    probes.drops = drops.is_ok();
    features.insert("io_drops", drops.err());
    let retransmits = needs_sockets(btf_program("tcp_retransmit", "tcp_retransmit_skb"));
    probes.retransmits = retransmits.is_ok();
    features.insert("io_retransmits", retransmits.err());
    probes
}

/// Loads tracepoint program `name` and attaches it to each syscall tracepoint of `points`.
fn syscall_tracepoints(
    ebpf: &mut Ebpf,
    name: &'static str,
    points: &[impl AsRef<str>],
) -> Result<(), KernelError> {
    let p = program::<TracePoint>(ebpf, name)?;
    p.load()
        .map_err(|source| KernelError::Program { name, source })?;
    for point in points {
        p.attach("syscalls", point.as_ref())
            .map_err(|source| KernelError::Program { name, source })?;
    }
    Ok(())
}

/// Loads BTF tracepoint program `name` for tracepoint `tp` and attaches it.
fn btf_tracepoint(ebpf: &mut Ebpf, btf: &Btf, name: &'static str, tp: &str) -> Result<(), String> {
    let p: &mut BtfTracePoint = program(ebpf, name).map_err(|e| error_text(&e))?;
    p.load(tp, btf)
        .and_then(|()| p.attach().map(drop))
        .map_err(|e| error_text(&e))
}

/// The kprobe twins of the `inet_*msg` fexit programs: an entry and a return program each,
/// attached to the IPv4 call and, where there is one, the IPv6 call.
fn inet_kprobes(ebpf: &mut Ebpf) -> Result<(), String> {
    for (name, functions) in [
        ("inet_recv_enter", ["inet_recvmsg", "inet6_recvmsg"]),
        ("inet_recv_return", ["inet_recvmsg", "inet6_recvmsg"]),
        ("inet_send_enter", ["inet_sendmsg", "inet6_sendmsg"]),
        ("inet_send_return", ["inet_sendmsg", "inet6_sendmsg"]),
    ] {
        let p: &mut KProbe = program(ebpf, name).map_err(|e| error_text(&e))?;
        p.load().map_err(|e| error_text(&e))?;
        let [v4, v6] = functions;
        p.attach(v4, 0).map_err(|e| error_text(&e))?;
        if let Err(e) = p.attach(v6, 0) {
            tracing::info!(program = name, error = %error_text(&e), "IPv6 sockets not counted");
        }
    }
    Ok(())
}

/// Loads fexit program `name` for kernel function `function` and attaches it.
fn fexit(ebpf: &mut Ebpf, btf: &Btf, name: &'static str, function: &str) -> Result<(), String> {
    let p: &mut FExit = program(ebpf, name).map_err(|e| error_text(&e))?;
    p.load(function, btf)
        .and_then(|()| p.attach().map(drop))
        .map_err(|e| error_text(&e))
}

/// The names of the running kernel's drop reasons (`enum skb_drop_reason`), read from the
/// `skb:kfree_skb` tracepoint's own format: the numbers change between kernel versions.
pub fn drop_reason_names() -> StdHashMap<u32, String> {
    let mut names = tracepoint_format("skb", "kfree_skb")
        .map(|f| parse_symbolic(&f, "REC->reason"))
        .unwrap_or_default();
    // Kernels before 5.17 give no reason: such drops are the kernel's own "not specified".
    names.insert(
        observer_common::kernel::REASON_NOT_GIVEN,
        "NOT_SPECIFIED".into(),
    );
    names
}

/// A tracepoint's format file, from tracefs wherever it is mounted.
fn tracepoint_format(category: &str, name: &str) -> Option<String> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|dir| {
            std::fs::read_to_string(format!("{dir}/events/{category}/{name}/format")).ok()
        })
}

/// Parses `__print_symbolic(FIELD, { 2, "NAME" }, ...)` out of a tracepoint format.
pub fn parse_symbolic(format: &str, field: &str) -> StdHashMap<u32, String> {
    let mut out = StdHashMap::new();
    let Some(start) = format.find(&format!("__print_symbolic({field},")) else {
        return out;
    };
    let mut rest = &format[start..];
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find('}') else { break };
        let entry = &rest[..close];
        rest = &rest[close + 1..];
        let Some((num, name)) = entry.split_once(',') else {
            continue;
        };
        if let Ok(n) = num.trim().parse::<u32>() {
            out.insert(n, name.trim().trim_matches('"').to_string());
        }
        if rest.trim_start().starts_with(')') {
            break;
        }
    }
    out
}

/// Mounts tracefs at /sys/kernel/tracing if nothing is there (minimal hosts and containers
/// often lack it); tracepoint programs find their ids in it.
fn ensure_tracefs() {
    let dir = Path::new("/sys/kernel/tracing");
    if dir.join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return;
    }
    let (src, target, fstype) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
    // SAFETY: constant NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot mount tracefs at /sys/kernel/tracing");
    } else {
        tracing::info!("mounted tracefs at /sys/kernel/tracing");
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(KernelError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    p.try_into()
        .map_err(|source| KernelError::Program { name, source })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels from 5.11");
    }
}

/// One ring buffer record.
pub enum Event {
    Process(ProcessEvent),
    Io(Box<IoEvent>),
    Log(Box<LogEvent>),
}

/// Decodes one ring buffer record by its leading kind.
pub fn parse_event(bytes: &[u8]) -> Option<Event> {
    fn read<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
        if bytes.len() < std::mem::size_of::<T>() {
            return None;
        }
        // SAFETY: length checked; T is Pod and read unaligned.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        k if k == EventKind::IoOpen as u32
            || k == EventKind::FileOpen as u32
            || k == EventKind::FileClose as u32 =>
        {
            read::<IoEvent>(bytes).map(|e| Event::Io(Box::new(e)))
        }
        k if k == EventKind::LogMessage as u32 => {
            read::<LogEvent>(bytes).map(|e| Event::Log(Box::new(e)))
        }
        _ => read::<ProcessEvent>(bytes).map(Event::Process),
    }
}

/// One record of the frame spans' ring buffer.
pub fn parse_frame(bytes: &[u8]) -> Option<observer_common::frame::FrameSpan> {
    if bytes.len() < std::mem::size_of::<observer_common::frame::FrameSpan>() {
        return None;
    }
    // SAFETY: length checked; FrameSpan is Pod and read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

impl Kernel {
    /// The libavcodec major of a library slot (0 if the slot is empty).
    pub fn lavc_major(&self, slot: u32) -> u32 {
        self.libs.get(&slot, 0).map_or(0, |l| l.lavc_major)
    }
}

#[cfg(test)]
mod tests {
    use super::{Object, PROGRAMS, RUNTIME_ALLOCATED_MAPS, field_offset, kernel_dev};

    /// The flags of map `name` in the object, read back from its definition.
    fn map_flags(bytes: &[u8], name: &str) -> u32 {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let elf = object::File::parse(bytes).unwrap();
        let sym = elf.symbols().find(|s| s.name() == Ok(name)).unwrap();
        let section = elf.section_by_index(sym.section_index().unwrap()).unwrap();
        let at = (section.file_range().unwrap().0 + sym.address() + 16) as usize;
        u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn preallocating_clears_no_prealloc_on_the_named_maps_only() {
        for name in RUNTIME_ALLOCATED_MAPS {
            assert_eq!(map_flags(PROGRAMS, name) & 1, 1, "{name} as built");
        }
        let patched = Object::preallocated(PROGRAMS, &RUNTIME_ALLOCATED_MAPS).unwrap();
        let bytes = patched.bytes();
        assert_eq!(bytes.len(), PROGRAMS.len());
        assert_eq!(bytes.as_ptr() as usize % 8, 0, "aligned for the ELF parser");
        for name in RUNTIME_ALLOCATED_MAPS {
            assert_eq!(map_flags(bytes, name) & 1, 0, "{name} preallocated");
        }
        // Everything else is untouched.
        let changed = bytes.iter().zip(PROGRAMS).filter(|(a, b)| a != b).count();
        assert_eq!(changed, RUNTIME_ALLOCATED_MAPS.len());
        assert!(Object::preallocated(PROGRAMS, &["NO_SUCH_MAP"]).is_err());
        assert!(Object::preallocated(&PROGRAMS[..64], &["STREAMS"]).is_err());
    }

    #[test]
    fn a_maps_device_becomes_the_kernels_dev_t() {
        // /proc/PID/maps prints 08:02 for sda2; the kernel keeps MKDEV(8, 2).
        assert_eq!(kernel_dev((8 << 32) | 2), (8 << 20) | 2);
        assert_eq!(kernel_dev(0x1f), 0x1f);
    }

    #[test]
    fn fork_records_child_pid_is_found_in_old_and_new_formats() {
        // 6.x: the comm fields became dynamic strings.
        let new = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                   \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
                   \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(new, "child_pid"), Some(20));
        assert_eq!(field_offset(new, "child_comm"), Some(16));
        // Before: fixed arrays.
        let old = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:1;\n\
                   \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
                   \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:1;\n\
                   \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(old, "child_pid"), Some(44));
        assert_eq!(field_offset(old, "child_comm"), Some(28));
        assert_eq!(field_offset(old, "child"), None);
    }
}
