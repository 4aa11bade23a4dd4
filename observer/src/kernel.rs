//! The kernel side as the daemon sees it: loads the programs, attaches them to FFmpeg files,
//! and reads the maps. The only module that talks to aya.

use std::{collections::HashMap as StdHashMap, path::Path};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, FExit, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use observer_common::{
    event::{EventKind, ProcessEvent},
    io::{CcKey, FdEntry, FdKind, Io, IoEvent, IoKey, PacketKey, SockEntry},
    layout::{LibLayout, MAX_LIBS, cookie},
    log::{LogEntry, LogEvent, LogKey},
    stream::{Direction, EndedKey, Stream, StreamKey, counter},
};

use crate::{elf::FfmpegFile, ffmpeg::Hook};

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
}

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
}

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
    /// Bytes, datagrams and payload headers on sockets (sock_recv_length/sock_send_length,
    /// Linux 6.5 on, and bpf_task_pt_regs).
    pub sockets: bool,
    /// Drops with their reason at the receiving socket (kfree_skb with rx_sk, Linux 6.12 on).
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
    /// Loads every program. Process-life probes that this kernel lacks are reported in
    /// [`Kernel::life`] and the daemon falls back to periodic /proc scans for them.
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
        } = opts;
        raise_memlock_limit();
        let btf = Btf::from_sys_fs().ok();
        let fork_child_pid_at = fork_child_pid_offset();
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .override_global("LOG_EVENT_LEVEL", &log_event_level, true)
            .override_global("FORK_CHILD_PID_AT", &fork_child_pid_at, true)
            .override_global("FRAME_SAMPLE", &frame_sample, true)
            .override_global("SLOW_FRAME_NS", &slow_frame_ns, true)
            .map_max_entries("STREAMS", max_streams)
            .map_max_entries("ENDED_STREAMS", max_streams)
            .load(PROGRAMS)?;
        for name in UPROBE_PROGRAMS {
            let p: &mut UProbe = program(&mut ebpf, name)?;
            p.load()
                .map_err(|source| KernelError::Program { name, source })?;
        }
        let mut life = LifeProbes::default();
        if let Some(btf) = btf.as_ref() {
            for (name, tp, flag) in [
                ("sched_process_exec", "sched_process_exec", &mut life.exec),
                ("sched_process_exit", "sched_process_exit", &mut life.exit),
            ] {
                let p: &mut BtfTracePoint = program(&mut ebpf, name)?;
                match p.load(tp, btf).and_then(|()| p.attach().map(drop)) {
                    Ok(()) => *flag = true,
                    Err(e) => {
                        tracing::warn!(program = name, error = %e, "process probe unavailable; falling back to /proc scans")
                    }
                }
            }
            let p: &mut FExit = program(&mut ebpf, "mmap_exec")?;
            match p.load("do_mmap", btf).and_then(|()| p.attach().map(drop)) {
                Ok(()) => life.mmap = true,
                Err(e) => {
                    tracing::debug!(error = %e, "fexit unavailable; using the mmap syscall tracepoints")
                }
            }
        } else {
            tracing::warn!(
                "no kernel BTF: process exec/exit events unavailable, falling back to /proc scans"
            );
        }
        if !life.mmap {
            life.mmap = attach_mmap_tracepoints(&mut ebpf);
        }
        if ffmpeg_logs && !empty_probes {
            attach_codec_threads(&mut ebpf, fork_child_pid_at);
        }
        let io = if io_stats && !empty_probes {
            attach_io_tracepoints(&mut ebpf, btf.as_ref())
        } else {
            IoProbes::default()
        };
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
            ebpf,
            life,
            io,
            empty_probes,
            ffmpeg_logs,
            io_stats,
            directions,
        };
        Ok((kernel, rings))
    }

    /// Attaches every probe point of `file` (reachable at `path`) for all processes.
    pub fn attach(&mut self, path: &Path, file: &FfmpegFile) -> Result<Attachment, KernelError> {
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
            for name in [Some(enter), ret].into_iter().flatten() {
                let p: &mut UProbe = program(&mut self.ebpf, name)?;
                let at = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(point.offset),
                    cookie: Some(c),
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
fn attach_codec_threads(ebpf: &mut Ebpf, child_pid_at: u32) {
    let name = "codec_thread";
    let attached = program::<TracePoint>(ebpf, name).and_then(|p| {
        p.load()
            .and_then(|()| p.attach("sched", "sched_process_fork").map(drop))
            .map_err(|source| KernelError::Program { name, source })
    });
    match attached {
        Ok(()) if child_pid_at != 0 => {}
        Ok(()) => tracing::warn!(
            "sched_process_fork has no child_pid field here: messages of frame-threaded decoders' worker threads stay off their streams"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "thread-creation probe unavailable: messages of frame-threaded decoders' worker threads stay off their streams"
        ),
    }
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

/// The syscall and socket tracepoints behind per-io bytes, drops and retransmissions.
fn attach_io_tracepoints(ebpf: &mut Ebpf, btf: Option<&Btf>) -> IoProbes {
    ensure_tracefs();
    // Files only: socket bytes are counted by the socket tracepoints, whatever the syscall.
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
    let mut probes = IoProbes {
        syscalls: true,
        ..IoProbes::default()
    };
    for (name, points) in SYSCALLS {
        let result = program::<TracePoint>(ebpf, name).and_then(|p| {
            p.load()
                .map_err(|source| KernelError::Program { name, source })?;
            for point in *points {
                p.attach("syscalls", point)
                    .map_err(|source| KernelError::Program { name, source })?;
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "syscall tracepoints unavailable: no descriptors or file bytes per input/output");
            probes.syscalls = false;
        }
    }
    let Some(btf) = btf else {
        tracing::warn!("no kernel BTF: no drops or retransmissions per input/output");
        return probes;
    };
    let mut btf_program = |name: &'static str, tp: &str| {
        let p: &mut BtfTracePoint = program(ebpf, name).ok()?;
        match p.load(tp, btf).and_then(|()| p.attach().map(drop)) {
            Ok(()) => Some(()),
            Err(e) => {
                tracing::warn!(program = name, tracepoint = tp, error = %e, "socket tracepoint unavailable");
                None
            }
        }
    };
    probes.sockets = btf_program("sock_recv", "sock_recv_length").is_some()
        & btf_program("sock_send", "sock_send_length").is_some();
    // Without these, a SYN retransmission is missed and a destroyed socket's entry ages out
    // of its LRU map instead of leaving at once.
    let _ = btf_program("sock_state", "inet_sock_set_state");
    let _ = btf_program("tcp_destroy", "tcp_destroy_sock");
    probes.drops = probes.sockets && btf_program("skb_drop", "kfree_skb").is_some();
    probes.retransmits =
        probes.sockets && btf_program("tcp_retransmit", "tcp_retransmit_skb").is_some();
    probes
}

/// The names of the running kernel's drop reasons (`enum skb_drop_reason`), read from the
/// `skb:kfree_skb` tracepoint's own format: the numbers change between kernel versions.
pub fn drop_reason_names() -> StdHashMap<u32, String> {
    tracepoint_format("skb", "kfree_skb")
        .map(|f| parse_symbolic(&f, "REC->reason"))
        .unwrap_or_default()
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
    use super::field_offset;

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
