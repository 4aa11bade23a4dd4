//! Probes on libavformat: the inputs and outputs of a pipeline.
//!
//! `avformat_open_input`, `avformat_alloc_output_context2` and `avio_open2` create an io and
//! send its URL once. While an io is being opened, read (`av_read_frame`) or written
//! (`avformat_write_header`, `av_(interleaved_)write_frame`, `av_write_trailer`), the thread
//! carries it in `CURRENT_IO`, so the file descriptors created meanwhile (the input's socket,
//! an HLS output's next segment file) are tied to it by the syscall tracepoints in
//! `probes::net`. Packets link ios to codec streams by their data pointers: a demuxed
//! packet's data is what the decoder is sent, an encoded packet's data is what the muxer
//! writes.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user_str_bytes},
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use observer_common::{
    event::EventKind,
    io::{Io, MAX_FDS},
    io::{IoDirection, IoEvent, IoKey, MAX_IOS, PacketKey, TEXT_LEN},
    layout::{cookie_call, cookie_slot},
    stream::{
        StreamKey, counter,
        hook::{ALLOC_OUTPUT, AVIO_OPEN, CLOSE_INPUT, OPEN_INPUT, READ_FRAME},
    },
};

use super::codec::{add_shared, begin, finish, layout, now_ns};
use crate::{
    cookie,
    maps::{BPF_F_NO_PREALLOC, BPF_NOEXIST, CallKey, CallState, EVENTS, STREAMS, bump, copied},
    read::{Window, field},
};

const AV_PKT_FLAG_CORRUPT: i32 = 2;
const AVIO_FLAG_WRITE: u64 = 2;

#[map]
pub static IOS: HashMap<IoKey, Io> = HashMap::with_max_entries(MAX_IOS, BPF_F_NO_PREALLOC);

/// One all-zero `Io` to insert from (it does not fit on the BPF stack).
#[map]
static ZERO_IO: Array<Io> = Array::with_max_entries(1, 0);

/// Format contexts of live ios: `(tgid, AVFormatContext *)` -> io. LRU, so the contexts of
/// processes killed before they closed them age out.
#[map]
pub static CONTEXT_IO: LruHashMap<PacketKey, IoKey> = LruHashMap::with_max_entries(MAX_IOS, 0);

/// Processes that have ios (value unused): the socket programs, which run for every socket
/// message on the node, look no further for any other process. Removed at exit.
#[map]
pub static IO_PROCESSES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IOS, 0);

/// The io a thread is opening, reading or writing right now, by `pid_tgid`.
#[map]
pub static CURRENT_IO: HashMap<u64, IoKey> = HashMap::with_max_entries(MAX_FDS, 0);

/// Data pointers of packets an input returned, for the decoder they are sent to.
#[map]
static DEMUXED: LruHashMap<PacketKey, u64> = LruHashMap::with_max_entries(8192, 0);

/// Data pointers of packets an encoder returned (-> the encoder's context), for the output
/// they are written to.
#[map]
pub static ENCODED: LruHashMap<PacketKey, u64> = LruHashMap::with_max_entries(8192, 0);

/// Packets of an input whose data pointers are remembered for linking decoders: enough for
/// every stream of an input to have sent its first packets.
const LINK_PACKETS: u64 = 512;

/// Packet fields: pts (8) to flags (40 + 4) in every major.
type PacketWindow = Window<40>;

#[inline(always)]
fn context_key(tgid: u32, ctx: u64) -> PacketKey {
    PacketKey {
        tgid,
        _pad: 0,
        data: ctx,
    }
}

#[inline(always)]
pub fn io_of(key: &IoKey) -> Option<&'static mut Io> {
    // SAFETY: map value pointer, valid for this program run.
    IOS.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn send_open(key: &IoKey, direction: IoDirection, url: u64) {
    let Some(mut entry) = EVENTS.reserve::<IoEvent>(0) else {
        bump(counter::EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reservation is sized for an IoEvent; every field is written before submit.
    unsafe {
        (*ev).kind = EventKind::IoOpen as u32;
        (*ev).tgid = key.tgid;
        (*ev).ktime_ns = key.id;
        (*ev).io = key.id;
        (*ev).fd = -1;
        (*ev).direction = direction as u32;
        (*ev).bytes = [0; 2];
        (*ev).duration_ns = 0;
        (*ev).text[0] = 0;
        if url != 0 {
            let _ = bpf_probe_read_user_str_bytes(url as *const u8, &mut (*ev).text);
        }
        (*ev).text[TEXT_LEN - 1] = 0;
    }
    entry.submit(0);
}

/// Creates an io for the calling process.
#[inline(always)]
fn new_io(tgid: u32, direction: IoDirection, url: u64, parent: u64) -> Option<IoKey> {
    let key = IoKey {
        tgid,
        _pad: 0,
        id: now_ns(),
    };
    let zero = ZERO_IO.get(0)?;
    if IOS.insert(&key, zero, BPF_NOEXIST).is_err() {
        bump(counter::IOS_FULL);
        return None;
    }
    let _ = IO_PROCESSES.insert(&tgid, &1, 0);
    let io = io_of(&key)?;
    io.opened_ns = key.id;
    io.tgid = tgid;
    io.direction = direction as u32;
    io.parent = parent;
    send_open(&key, direction, url);
    Some(key)
}

/// Marks the thread as working on `io`, unless it already works on one: calls nest (an HLS
/// muxer writes each packet through an inner MPEG-TS muxer; an HLS demuxer opens an inner
/// demuxer per segment) and the outermost io is the one the user asked for. Returns whether
/// this call set it, so only that call clears it.
#[inline(always)]
fn set_current(pid_tgid: u64, io: &IoKey) -> bool {
    // A thread's entry is reused (id 0 marks it idle): an insert and a delete per demuxed
    // packet would cost more than the rest of the probe.
    match CURRENT_IO.get_ptr_mut(&pid_tgid) {
        // SAFETY: map value pointer, valid for this program run.
        Some(p) => unsafe {
            if (*p).id != 0 {
                return false;
            }
            *p = *io;
            true
        },
        None => CURRENT_IO.insert(&pid_tgid, io, BPF_NOEXIST).is_ok(),
    }
}

/// The io the thread works on, if any.
#[inline(always)]
pub fn current_io(pid_tgid: u64) -> Option<IoKey> {
    copied(CURRENT_IO.get_ptr(&pid_tgid)).filter(|io| io.id != 0)
}

/// `CallState::pts` of the calls here: whether the call set `CURRENT_IO`.
const OWNS_CURRENT: i64 = 1;

#[inline(always)]
pub fn clear_current(pid_tgid: u64) {
    if let Some(p) = CURRENT_IO.get_ptr_mut(&pid_tgid) {
        // SAFETY: map value pointer, valid for this program run.
        unsafe { (*p).id = 0 };
    }
}

/// The thread works on format context `fmt` (inside `avformat_find_stream_info`, which reads
/// packets, and HLS segments, without `av_read_frame`).
#[inline(always)]
pub fn working_on(pid_tgid: u64, fmt: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    copied(CONTEXT_IO.get_ptr(&context_key(tgid, fmt))).is_some_and(|io| set_current(pid_tgid, &io))
}

// --- opens -------------------------------------------------------------------------------

/// Entry of `avformat_open_input(ps, url, fmt, options)`,
/// `avformat_alloc_output_context2(ps, oformat, format_name, filename)` and
/// `avio_open2(pb, url, flags, int_cb, options)`.
#[uprobe]
pub fn io_open_enter(ctx: ProbeContext) -> u32 {
    let c = cookie::entry(&ctx, true);
    let kind = cookie_call(c);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(ps) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let parent = current_io(pid_tgid).map_or(0, |p| p.id);
    let io = match kind {
        OPEN_INPUT => new_io(
            tgid,
            IoDirection::Input,
            ctx.arg::<u64>(1).unwrap_or(0),
            parent,
        ),
        ALLOC_OUTPUT => new_io(
            tgid,
            IoDirection::Output,
            ctx.arg::<u64>(3).unwrap_or(0),
            parent,
        ),
        AVIO_OPEN => {
            // `avio_open2(&oc->pb, ...)` opens the AVIO of an output context we know: its
            // bytes are that output's. Anything else is an io of its own.
            let owner = layout(cookie_slot(c))
                .and_then(|l| ps.checked_sub(l.fmt_pb as u64))
                .and_then(|oc| copied(CONTEXT_IO.get_ptr(&context_key(tgid, oc))));
            match owner {
                Some(io) => Some(io),
                None => {
                    let flags = ctx.arg::<u64>(2).unwrap_or(0);
                    let dir = if flags & AVIO_FLAG_WRITE != 0 {
                        IoDirection::Output
                    } else {
                        IoDirection::Input
                    };
                    new_io(tgid, dir, ctx.arg::<u64>(1).unwrap_or(0), parent)
                }
            }
        }
        _ => None,
    };
    let Some(io) = io else { return 0 };
    let owns = set_current(pid_tgid, &io);
    let state = CallState {
        start_ns: now_ns(),
        args: [ps, io.id, 0, 0],
        pts: if owns { OWNS_CURRENT } else { 0 },
        slot: cookie_slot(c),
        _pad: 0,
    };
    begin(&CallKey::new(pid_tgid, kind), &state);
    0
}

/// The common start of the return probes here: the call's state, the io it worked on, the
/// thread's current io given back (if this call set it), and the `int` return value.
#[inline(always)]
fn returned(ctx: &RetProbeContext, kind: u32) -> Option<(CallState, IoKey, &'static mut Io, i32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let state = finish(&CallKey::new(pid_tgid, kind))?;
    if state.pts == OWNS_CURRENT {
        clear_current(pid_tgid);
    }
    let key = IoKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        id: state.args[1],
    };
    // The return register's upper half (rax's, x0's) is not part of an `int` return.
    let ret = ctx.ret::<i64>() as i32;
    Some((state, key, io_of(&key)?, ret))
}

#[uretprobe]
pub fn io_open_return(ctx: RetProbeContext) -> u32 {
    let kind = cookie_call(cookie::of_return(&ctx));
    let Some((state, key, io, ret)) = returned(&ctx, kind) else {
        return 0;
    };
    let tgid = key.tgid;
    if ret < 0 {
        io.open_error = ret;
        io.closed_ns = now_ns();
        return 0;
    }
    io.opened = 1;
    if kind != AVIO_OPEN {
        // *ps is the format context from now on.
        if let Some(fmt) = field::<u64>(state.args[0], 0).filter(|p| *p != 0) {
            io.ctx = fmt;
            let _ = CONTEXT_IO.insert(&context_key(tgid, fmt), &key, 0);
        }
    }
    0
}

/// `avformat_close_input(AVFormatContext **ps)` and `avformat_free_context(AVFormatContext *s)`
/// (entry only): the io is closed; the daemon collects it and removes it from the map.
#[uprobe]
pub fn io_close(ctx: ProbeContext) -> u32 {
    let Some(arg) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let fmt = if cookie_call(cookie::entry(&ctx, false)) == CLOSE_INPUT {
        match field::<u64>(arg, 0) {
            Some(p) => p,
            None => return 0,
        }
    } else {
        arg
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ck = context_key(tgid, fmt);
    let Some(key) = copied(CONTEXT_IO.get_ptr(&ck)) else {
        return 0;
    };
    let _ = CONTEXT_IO.remove(&ck);
    if let Some(io) = io_of(&key)
        && io.closed_ns == 0
    {
        io.closed_ns = now_ns();
    }
    0
}

// --- reads and writes ----------------------------------------------------------------------

/// Entry of `av_read_frame(s, pkt)`, `avformat_write_header(s, ...)`,
/// `av_interleaved_write_frame(s, pkt)`, `av_write_frame(s, pkt)`, `av_write_trailer(s)`.
#[uprobe]
pub fn io_call_enter(ctx: ProbeContext) -> u32 {
    let c = cookie::entry(&ctx, true);
    let kind = cookie_call(c);
    let Some(fmt) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(io) = copied(CONTEXT_IO.get_ptr(&context_key(tgid, fmt))) else {
        return 0;
    };
    let owns = set_current(pid_tgid, &io);
    let pkt = ctx.arg::<u64>(1).unwrap_or(0);
    let mut state = CallState {
        start_ns: now_ns(),
        args: [fmt, io.id, pkt, 0],
        pts: if owns { OWNS_CURRENT } else { 0 },
        slot: cookie_slot(c),
        _pad: 0,
    };
    if kind != READ_FRAME
        && pkt != 0
        && let Some(l) = layout(state.slot)
        && let Some(w) = PacketWindow::read(pkt, l.pkt_pts)
    {
        // The muxer takes the packet's contents: read its size and data now, and tie the
        // encoder that made it to this output.
        let size = w.get::<i32>(l.pkt_size).unwrap_or(0);
        state.args[3] = if size > 0 { size as u64 } else { 0 };
        if let Some(data) = w.get::<u64>(l.pkt_data).filter(|d| *d != 0) {
            link_encoder(tgid, data, io.id);
        }
    }
    begin(&CallKey::new(pid_tgid, kind), &state);
    0
}

#[uretprobe]
pub fn io_call_return(ctx: RetProbeContext) -> u32 {
    let kind = cookie_call(cookie::of_return(&ctx));
    let Some((state, key, io, ret)) = returned(&ctx, kind) else {
        return 0;
    };
    let tgid = key.tgid;
    let pkt = state.args[2];
    if kind == READ_FRAME {
        if ret < 0 {
            return 0;
        }
        let Some(l) = layout(state.slot) else {
            return 0;
        };
        let Some(w) = PacketWindow::read(pkt, l.pkt_pts) else {
            return 0;
        };
        let size = w.get::<i32>(l.pkt_size).unwrap_or(0);
        add_shared(&mut io.demux_packets, 1);
        if size > 0 {
            add_shared(&mut io.demux_bytes, size as u64);
        }
        if w.get::<i32>(l.pkt_flags).unwrap_or(0) & AV_PKT_FLAG_CORRUPT != 0 {
            add_shared(&mut io.corrupt_packets, 1);
        }
        io.last_ns = now_ns();
        // Decoders are linked by their first packets; an LRU insert per packet for the
        // whole run would cost a microsecond a packet.
        if io.demux_packets <= LINK_PACKETS
            && let Some(data) = w.get::<u64>(l.pkt_data).filter(|d| *d != 0)
        {
            let pk = PacketKey {
                tgid,
                _pad: 0,
                data,
            };
            let _ = DEMUXED.insert(&pk, &key.id, 0);
        }
        return 0;
    }
    if pkt == 0 {
        return 0;
    }
    if ret < 0 {
        add_shared(&mut io.mux_errors, 1);
    } else {
        add_shared(&mut io.mux_packets, 1);
        add_shared(&mut io.mux_bytes, state.args[3]);
        io.last_ns = now_ns();
    }
    0
}

/// The input a decoder's packet came from, by its data pointer (see `DEMUXED`).
#[inline(always)]
pub fn demuxed_by(tgid: u32, data: u64) -> Option<u64> {
    let pk = PacketKey {
        tgid,
        _pad: 0,
        data,
    };
    copied(DEMUXED.get_ptr(&pk))
}

/// Remembers an encoder's packet so the output it is written to can claim the encoder.
#[inline(always)]
pub fn encoded(tgid: u32, data: u64, ctx: u64) {
    let pk = PacketKey {
        tgid,
        _pad: 0,
        data,
    };
    let _ = ENCODED.insert(&pk, &ctx, 0);
}

#[inline(always)]
fn link_encoder(tgid: u32, data: u64, io: u64) {
    let pk = PacketKey {
        tgid,
        _pad: 0,
        data,
    };
    let Some(ctx) = copied(ENCODED.get_ptr(&pk)) else {
        return;
    };
    let _ = ENCODED.remove(&pk);
    let sk = StreamKey { tgid, _pad: 0, ctx };
    if let Some(s) = STREAMS.get_ptr_mut(&sk) {
        // SAFETY: map value pointer, valid for this program run.
        unsafe {
            if (*s).io == 0 {
                (*s).io = io;
            }
        }
    }
}
