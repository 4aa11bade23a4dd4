//! Probes on libavcodec, libavformat and libavfilter.
//!
//! Every data call (`avcodec_send_packet`, `avcodec_receive_frame[_flags]`,
//! `avcodec_send_frame`, `avcodec_receive_packet`, the subtitle calls, the libavcodec 58
//! legacy encode calls, `av_buffersrc_add_frame_flags`, `av_buffersink_get_frame_flags`) is
//! served by the same pair of programs, [`call_enter`] and [`call_return`]; the cookie says
//! which call and which library layout. The entry keeps the arguments and the time; the return
//! counts, times and pairs, all into the stream's map entry.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user_str_bytes},
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use observer_common::{
    event::EventKind,
    frame::{FRAME_KEY, FRAME_SAMPLED, FRAME_SLOW, FrameSpan},
    layout::{LibLayout, cookie_call, cookie_slot},
    stream::{
        AVERROR_EAGAIN, AVERROR_EOF, Call, Direction, ERROR_OTHER, ERROR_SLOTS, EndedKey,
        FLAG_INSANE, FLAG_PROBE_DECODER, FLAG_SEEN_OPEN, Histogram, INFLIGHT_SLOTS, Inflight,
        NOPTS, Stream, StreamKey, counter,
        hook::{CLOSE, FIND_STREAM_INFO, OPEN},
    },
};

use crate::{
    cookie,
    maps::{
        BPF_NOEXIST, CALLS, CODEC_THREADS, CallKey, CallState, CodecThread, ENDED_STREAMS, FRAMES,
        LIB_READ_FAILURES, LIBS, STREAMS, ZERO_STREAM, bump,
    },
    read::{Window, field},
};

const AV_PKT_FLAG_KEY: i32 = 1;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// A quarter of the frame ring: past it, each new span wakes the daemon.
const FRAMES_WAKE_BYTES: u64 = 256 * 1024;

/// Frame spans: a frame is sampled when a 32-bit random number is below this
/// (`frame::FRAME_SAMPLE_ALL`: every frame; 0: none). Set by the loader.
#[unsafe(no_mangle)]
static FRAME_SAMPLE: u64 = 0;
/// Frame spans: a frame that took at least this many ns is always sent
/// (`frame::SLOW_FRAME_NEVER`: none). Set by the loader.
#[unsafe(no_mangle)]
static SLOW_FRAME_NS: u64 = u64::MAX;
const AV_FRAME_FLAG_KEY: i32 = 1 << 1;

/// The clock of every timestamp here: since boot, suspend included, as /proc's process
/// start times are, so the daemon can tell a stream from an older process with a reused pid.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper has no arguments and no side effects.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() }
}

#[inline(always)]
pub fn layout(slot: u32) -> Option<&'static LibLayout> {
    let l = LIBS.get(slot)?;
    if l.valid == 0 { None } else { Some(l) }
}

#[inline(always)]
fn add(counter: &mut u64, v: u64) {
    // Plain adds, not atomics: FFmpeg requires callers to serialize the calls on one codec
    // context (and on one filter graph), and a stream's probes run inside those calls, so
    // two writers never meet on one stream. The daemon's reads of aligned u64s are whole.
    *counter += v;
}

/// An atomic add, for counters that several threads can reach at once (an io's descriptors
/// are read by FFmpeg's I/O threads while its demuxer runs elsewhere).
#[inline(always)]
pub fn add_shared(counter: &mut u64, v: u64) {
    // SAFETY: a map value field, valid for this program run.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, v,
        )
    };
}

#[inline(always)]
fn observe(h: &mut Histogram, ns: u64) {
    let b = Histogram::bucket(ns);
    if let Some(slot) = h.buckets.get_mut(b) {
        add(slot, 1);
    }
    add(&mut h.sum_ns, ns);
}

// --- avformat_find_stream_info: the scope of probe decoders -------------------------------

/// `int avformat_find_stream_info(AVFormatContext *ic, AVDictionary **options)`: decoders
/// opened on this thread until it returns are throwaway probes, not the pipeline's streams.
#[uprobe]
pub fn find_stream_info_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let owns_io = ctx
        .arg::<u64>(0)
        .is_some_and(|ic| super::io::working_on(pid_tgid, ic));
    let key = CallKey::new(pid_tgid, FIND_STREAM_INFO);
    let state = CallState {
        start_ns: now_ns(),
        args: [0; 4],
        // Whether this call marked the thread's current io (see `probes::io`).
        pts: owns_io as i64,
        slot: 0,
        _pad: 0,
    };
    begin(&key, &state);
    0
}

#[uretprobe]
pub fn find_stream_info_return(_ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if finish(&CallKey::new(pid_tgid, FIND_STREAM_INFO)).is_some_and(|s| s.pts != 0) {
        super::io::clear_current(pid_tgid);
    }
    0
}

#[inline(always)]
fn in_probe_scope(pid_tgid: u64) -> bool {
    let key = CallKey::new(pid_tgid, FIND_STREAM_INFO);
    in_progress(&key)
}

// --- calls in progress -------------------------------------------------------------------

/// Keeps a call's state from its entry to its return. A (thread, call) entry is created once
/// and reused: `start_ns == 0` marks it consumed. The hot path so costs one hash lookup at
/// entry and one at return, and no insert or delete; the exit tracepoint removes the entries
/// of threads that end.
#[inline(always)]
pub fn begin(key: &CallKey, state: &CallState) {
    match CALLS.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this program run.
        Some(p) => unsafe { *p = *state },
        None => {
            if CALLS.insert(key, state, 0).is_err() {
                bump(counter::CALLS_FULL);
            }
        }
    }
}

/// Takes the state `begin` left, if the call is in progress.
#[inline(always)]
pub fn finish(key: &CallKey) -> Option<CallState> {
    let p = CALLS.get_ptr_mut(key)?;
    // SAFETY: map value pointer, valid for this program run.
    let state = unsafe { *p };
    if state.start_ns == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*p).start_ns = 0 };
    Some(state)
}

#[inline(always)]
fn in_progress(key: &CallKey) -> bool {
    // SAFETY: map value pointer, valid for this program run.
    CALLS
        .get_ptr(key)
        .is_some_and(|p| unsafe { (*p).start_ns } != 0)
}

// --- stream life -----------------------------------------------------------------------

/// Moves a live stream to `ENDED_STREAMS` so the daemon can read its final counts.
#[inline(always)]
fn end_stream(tgid: u32, ctx: u64) {
    let key = StreamKey { tgid, _pad: 0, ctx };
    let Some(s) = STREAMS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let s = unsafe { &mut *s };
    if s.flags & (FLAG_PROBE_DECODER | FLAG_INSANE) == 0 && s.direction != 0 {
        s.closed_ns = now_ns();
        let ended = EndedKey {
            tgid,
            _pad: 0,
            ctx,
            opened_ns: s.opened_ns,
        };
        if ENDED_STREAMS.insert(&ended, s, 0).is_err() {
            bump(counter::ENDED_FULL);
        }
    }
    let _ = STREAMS.remove(&key);
}

/// Reads what the context says about the stream into a fresh entry. Returns false (and
/// counts a failure against the library) if the context does not look like one.
#[inline(always)]
fn describe_codec(s: &mut Stream, l: &LibLayout, ctx: u64) -> bool {
    let Some(media) = field::<i32>(ctx, l.ctx_codec_type) else {
        return false;
    };
    if !(-1..=4).contains(&media) {
        return false;
    }
    s.media = media;
    let Some(codec) = field::<u64>(ctx, l.ctx_codec) else {
        return false;
    };
    if codec != 0 {
        // A pointer we cannot read through is no proof of garbage: the page may just not be
        // resident yet (BPF cannot fault it in). Only impossible values mark the stream; the
        // daemon reads a name the kernel could not.
        if let Some(name) = field::<u64>(codec, l.codec_name) {
            s.codec_name_ptr = name;
            // SAFETY: reads at most the buffer's length through the fault-tolerant path.
            let read =
                unsafe { bpf_probe_read_user_str_bytes(name as *const u8, &mut s.codec_name) };
            match read {
                Ok(&[c, ..]) => {
                    if !(c.is_ascii_alphanumeric() || c == b'_') {
                        return false;
                    }
                }
                _ => super::process::send_addr(EventKind::CodecName, s.tgid, name),
            }
        }
    }
    s.codec_id = field::<u32>(ctx, l.ctx_codec_id).unwrap_or(0);
    // hw_device_ctx -> AVBufferRef.data (offset 8 in every release) -> AVHWDeviceContext.type
    if let Some(dev) = field::<u64>(ctx, l.ctx_hw_device_ctx).filter(|p| *p != 0)
        && let Some(data) = field::<u64>(dev, 8)
        && let Some(t) = field::<u32>(data, l.hwdev_type)
        && t < 64
    {
        s.hw_device_type = t;
    }
    s.bit_rate = field::<i64>(ctx, l.ctx_bit_rate).unwrap_or(0);
    if let Some(fr) = field::<[i32; 2]>(ctx, l.ctx_framerate) {
        s.frame_rate = fr;
    }
    let w = field::<i32>(ctx, l.ctx_width).unwrap_or(0);
    let h = field::<i32>(ctx, l.ctx_height).unwrap_or(0);
    if !(0..=65536).contains(&w) || !(0..=65536).contains(&h) {
        return false;
    }
    s.width = w as u32;
    s.height = h as u32;
    if media == 1 {
        s.format = field::<i32>(ctx, l.ctx_sample_fmt).unwrap_or(-1);
        s.sample_rate = field::<i32>(ctx, l.ctx_sample_rate).unwrap_or(0) as u32;
        s.channels = field::<i32>(ctx, l.ctx_channels).unwrap_or(0) as u32;
    } else {
        s.format = field::<i32>(ctx, l.ctx_pix_fmt).unwrap_or(-1);
    }
    true
}

/// Inserts a new stream for `(tgid, ctx)` and returns it.
#[inline(always)]
fn new_stream(
    tgid: u32,
    ctx: u64,
    slot: u32,
    l: &LibLayout,
    codec: bool,
    probe: bool,
) -> Option<&'static mut Stream> {
    let key = StreamKey { tgid, _pad: 0, ctx };
    let zero = ZERO_STREAM.get(0)?;
    if STREAMS.insert(&key, zero, BPF_NOEXIST).is_err() {
        // Either full, or another thread inserted it first: use theirs if so.
        let s = STREAMS.get_ptr_mut(&key);
        if s.is_none() {
            bump(counter::STREAMS_FULL);
        }
        // SAFETY: map value pointer.
        return s.map(|p| unsafe { &mut *p });
    }
    // SAFETY: map value pointer.
    let s = unsafe { &mut *STREAMS.get_ptr_mut(&key)? };
    s.opened_ns = now_ns();
    s.tgid = tgid;
    s.ctx = ctx;
    s.slot = slot;
    if let Ok(comm) = bpf_get_current_comm() {
        s.comm = comm;
    }
    if probe {
        s.flags |= FLAG_PROBE_DECODER;
    }
    if codec && !describe_codec(s, l, ctx) {
        s.flags |= FLAG_INSANE;
        if let Some(f) = LIB_READ_FAILURES.get_ptr_mut(slot) {
            // SAFETY: map value pointer.
            add(unsafe { &mut *f }, 1);
        }
        bump(counter::READ_FAILED);
    }
    Some(s)
}

/// `int avcodec_open2(AVCodecContext *avctx, const AVCodec *codec, AVDictionary **options)`
#[uprobe]
pub fn open_enter(ctx: ProbeContext) -> u32 {
    let Some(avctx) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let key = CallKey::new(bpf_get_current_pid_tgid(), OPEN);
    let state = CallState {
        start_ns: now_ns(),
        // args[1]: where avcodec_open2 runs in this process, so the daemon can find the
        // library's load address (and read a codec name from the file, see Stream::open_ip).
        // SAFETY: ctx.regs points at the probed thread's saved registers.
        args: [avctx, unsafe { crate::arch::ip(ctx.regs) }, 0, 0],
        pts: 0,
        slot: cookie_slot(cookie::entry(&ctx, false)),
        _pad: 0,
    };
    begin(&key, &state);
    0
}

#[uretprobe]
pub fn open_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = CallKey::new(pid_tgid, OPEN);
    let Some(state) = finish(&key) else {
        return 0;
    };
    let ret: i32 = ctx.ret();
    if ret < 0 {
        return 0;
    }
    let Some(l) = layout(state.slot) else {
        return 0;
    };
    let tgid = (pid_tgid >> 32) as u32;
    let avctx = state.args[0];
    // Reopening a context (allowed after avcodec_close up to libavcodec 61) starts a new
    // stream; so does a context address reused after a free we did not see.
    end_stream(tgid, avctx);
    if let Some(s) = new_stream(tgid, avctx, state.slot, l, true, in_probe_scope(pid_tgid)) {
        s.flags |= FLAG_SEEN_OPEN;
        s.open_ip = state.args[1];
    }
    0
}

/// Offset of `child_pid` in the `sched:sched_process_fork` record, set by the loader from the
/// tracepoint's format: the record changed over kernel releases (its comm arrays became
/// dynamic strings in 6.x). 0: unknown, nothing recorded.
#[unsafe(no_mangle)]
static FORK_CHILD_PID_AT: u32 = 0;

/// `sched:sched_process_fork`, in the parent thread: a thread started while that thread is
/// inside `avcodec_open2` belongs to the codec being opened (frame-threaded decoders start
/// their workers there, each decoding on a copy of the context).
#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn codec_thread(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(p) = CALLS.get_ptr(&CallKey::new(pid_tgid, OPEN)) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this program run.
    let state = unsafe { *p };
    // SAFETY: a constant the loader may have set; volatile so it is not folded at build time.
    let at = unsafe { core::ptr::read_volatile(&FORK_CHILD_PID_AT) };
    if state.start_ns == 0 || at == 0 {
        return 0;
    }
    // SAFETY: a bounded read inside the tracepoint record, at the offset its format gives.
    let Ok(child) = (unsafe { ctx.read_at::<u32>(at as usize) }) else {
        return 0;
    };
    let owner = CodecThread {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ctx: state.args[0],
    };
    let _ = CODEC_THREADS.insert(&child, &owner, 0);
    0
}

/// The codec context the current thread works for, if `avcodec_open2` started it (0 if not):
/// messages a frame-threaded decoder's worker logs on its copy of the context are its
/// decoder's.
#[inline(always)]
pub fn thread_codec(pid_tgid: u64) -> u64 {
    let tid = pid_tgid as u32;
    match CODEC_THREADS.get_ptr(&tid) {
        // SAFETY: map value pointer, valid for this program run.
        Some(o) if unsafe { (*o).tgid } == (pid_tgid >> 32) as u32 => unsafe { (*o).ctx },
        _ => 0,
    }
}

/// `void avcodec_free_context(AVCodecContext **avctx)`, `int avcodec_close(AVCodecContext*)`,
/// `void avfilter_graph_free(AVFilterGraph **graph)`: the stream ends.
#[uprobe]
pub fn stream_end(ctx: ProbeContext) -> u32 {
    let Some(arg) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let target = match cookie_call(cookie::entry(&ctx, false)) {
        CLOSE => arg,
        _ => match field::<u64>(arg, 0) {
            Some(p) => p,
            None => return 0,
        },
    };
    if target != 0 {
        end_stream((bpf_get_current_pid_tgid() >> 32) as u32, target);
    }
    0
}

// --- data calls ------------------------------------------------------------------------

#[uprobe]
pub fn call_enter(ctx: ProbeContext) -> u32 {
    let c = cookie::entry(&ctx, true);
    let call = cookie_call(c);
    let slot = cookie_slot(c);
    let pid_tgid = bpf_get_current_pid_tgid();
    if call == Call::EncodeLegacy as u32 {
        // libavcodec 58 emulates the send/receive API over the old one: avcodec_send_frame
        // encodes through avcodec_encode_video2/audio2, and avcodec_receive_packet does too
        // while draining the encoder. Count the outer call only.
        let send = CallKey::new(pid_tgid, Call::SendFrame as u32);
        let receive = CallKey::new(pid_tgid, Call::ReceivePacket as u32);
        if in_progress(&send) || in_progress(&receive) {
            return 0;
        }
    }
    let mut state = CallState {
        start_ns: now_ns(),
        args: [
            ctx.arg::<u64>(0).unwrap_or(0),
            ctx.arg::<u64>(1).unwrap_or(0),
            ctx.arg::<u64>(2).unwrap_or(0),
            ctx.arg::<u64>(3).unwrap_or(0),
        ],
        pts: NOPTS,
        slot,
        _pad: 0,
    };
    if call == Call::BuffersrcAddFrame as u32
        && let Some(l) = layout(slot)
    {
        state.pts = field::<i64>(state.args[1], l.frame_pts).unwrap_or(NOPTS);
    }
    let key = CallKey::new(pid_tgid, call);
    begin(&key, &state);
    0
}

#[uretprobe]
pub fn call_return(ctx: RetProbeContext) -> u32 {
    let now = now_ns();
    let c = cookie::of_return(&ctx);
    let call_id = cookie_call(c);
    let Some(call) = Call::from_u32(call_id) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = CallKey::new(pid_tgid, call_id);
    let Some(state) = finish(&key) else {
        return 0;
    };
    let Some(l) = layout(state.slot) else {
        return 0;
    };
    let ret: i64 = ctx.ret();
    let ret = ret as i32;
    let tgid = (pid_tgid >> 32) as u32;

    let filter = call.direction() as u32 == Direction::Filter as u32;
    let stream_ctx = if filter {
        match field::<u64>(state.args[0], l.filter_graph) {
            Some(g) if g != 0 => g,
            _ => return 0,
        }
    } else {
        state.args[0]
    };
    if stream_ctx == 0 {
        return 0;
    }
    let skey = StreamKey {
        tgid,
        _pad: 0,
        ctx: stream_ctx,
    };
    let s = match STREAMS.get_ptr_mut(&skey) {
        // SAFETY: map value pointer.
        Some(p) => unsafe { &mut *p },
        None => {
            // A context opened before we attached, or a filter graph's first frame.
            match new_stream(
                tgid,
                stream_ctx,
                state.slot,
                l,
                !filter,
                in_probe_scope(pid_tgid),
            ) {
                Some(s) => s,
                None => return 0,
            }
        }
    };
    if s.flags & (FLAG_PROBE_DECODER | FLAG_INSANE) != 0 {
        return 0;
    }
    if s.direction == 0 {
        s.direction = call.direction() as u32;
    }
    let side = call.side();
    if let Some(h) = s.calls.get_mut(side) {
        observe(h, now.saturating_sub(state.start_ns));
    }
    if let Some(sc) = s.side_call.get_mut(side) {
        *sc = call_id;
    }

    if ret < 0 {
        if ret != AVERROR_EAGAIN && ret != AVERROR_EOF {
            count_error(s, call_id, ret);
        }
        return 0;
    }

    match call {
        Call::SendPacket => {
            if ret == 0 {
                submitted_packet(s, l, state.args[1], state.start_ns);
            }
        }
        Call::ReceiveFrame => {
            if ret == 0 {
                received_frame(s, l, state.args[1], now);
            }
        }
        Call::SendFrame => {
            let frame = state.args[1];
            if ret == 0 && frame != 0 {
                submitted_frame(s, l, frame, state.start_ns, None);
            }
        }
        Call::ReceivePacket => {
            if ret == 0 {
                received_packet(s, l, state.args[1], now);
            }
        }
        Call::DecodeSubtitle => {
            // (ctx, AVSubtitle *sub, int *got_sub_ptr, const AVPacket *avpkt)
            let pkt = state.args[3];
            let size = field::<i32>(pkt, l.pkt_size).unwrap_or(0);
            if size > 0 {
                add(&mut s.in_count, 1);
                add(&mut s.in_bytes, size as u64);
                s.last_ns = now;
            }
            if field::<i32>(state.args[2], 0).unwrap_or(0) != 0 {
                add(&mut s.out_count, 1);
                s.last_ns = now;
            }
        }
        Call::EncodeSubtitle => {
            // (ctx, uint8_t *buf, int buf_size, const AVSubtitle *sub) -> bytes written
            add(&mut s.in_count, 1);
            if ret > 0 {
                add(&mut s.out_count, 1);
                add(&mut s.out_bytes, ret as u64);
            }
            s.last_ns = now;
        }
        Call::EncodeLegacy => {
            // (ctx, AVPacket *avpkt, const AVFrame *frame, int *got_packet_ptr)
            let frame = state.args[2];
            if frame != 0 {
                submitted_frame(s, l, frame, state.start_ns, None);
            }
            if field::<i32>(state.args[3], 0).unwrap_or(0) != 0 {
                received_packet(s, l, state.args[1], now);
            }
        }
        Call::BuffersrcAddFrame => {
            if state.args[1] != 0 {
                // The source took the frame's contents: use the pts read at entry.
                submitted_frame(s, l, 0, state.start_ns, Some(state.pts));
            }
        }
        Call::BuffersinkGetFrame => {
            received_frame(s, l, state.args[1], now);
        }
    }
    0
}

#[inline(always)]
fn count_error(s: &mut Stream, call: u32, code: i32) {
    let mut i = 0;
    while i < ERROR_SLOTS {
        let last = i == ERROR_SLOTS - 1;
        if let Some(e) = s.errors.get_mut(i) {
            if e.code == 0 {
                e.call = call;
                e.code = if last { ERROR_OTHER } else { code };
            }
            if (e.call == call && e.code == code) || last {
                add(&mut e.count, 1);
                return;
            }
        }
        i += 1;
    }
}

/// Frame fields: width (104) to pts (136 + 8) in every major.
type FrameWindow = Window<48>;
/// Packet fields: pts (8) to flags (40 + 4) in every major.
type PacketWindow = Window<40>;

#[inline(always)]
fn inflight(s: &mut Stream, pts: i64, at: u64, size: u32) {
    if pts == NOPTS {
        return;
    }
    let i = (s.inflight_next as usize) & (INFLIGHT_SLOTS - 1);
    if let Some(slot) = s.inflight.get_mut(i) {
        *slot = Inflight { pts, at_ns: at };
    }
    if let Some(slot) = s.inflight_size.get_mut(i) {
        *slot = size;
    }
    s.inflight_next = s.inflight_next.wrapping_add(1);
}

/// An input paired with its output: when it was submitted and its packet's size.
struct Paired {
    at: u64,
    size: u32,
}

/// Pairs an output with the newest input of the same pts still in flight.
#[inline(always)]
fn pair(s: &mut Stream, pts: Option<i64>, now: u64) -> Option<Paired> {
    if let Some(pts) = pts.filter(|p| *p != NOPTS) {
        let newest = s.inflight_next.wrapping_sub(1) as usize;
        let mut k = 0;
        while k < INFLIGHT_SLOTS {
            let i = newest.wrapping_sub(k) & (INFLIGHT_SLOTS - 1);
            if let Some(slot) = s.inflight.get_mut(i)
                && slot.at_ns != 0
                && slot.pts == pts
            {
                let at = slot.at_ns;
                slot.at_ns = 0;
                observe(&mut s.latency, now.saturating_sub(at));
                let size = s.inflight_size.get(i).copied().unwrap_or(0);
                return Some(Paired { at, size });
            }
            k += 1;
        }
    }
    add(&mut s.latency_unmatched, 1);
    None
}

/// Sends a paired frame as a span if it is sampled or slow. Costs two global reads when
/// frame spans are off.
#[inline(always)]
fn frame_span(s: &Stream, p: Paired, now: u64, pts: i64, size: u32, key: bool) {
    // SAFETY: constants the loader may have set; volatile so they are not folded at build.
    let (sample, slow) = unsafe {
        (
            core::ptr::read_volatile(&FRAME_SAMPLE),
            core::ptr::read_volatile(&SLOW_FRAME_NS),
        )
    };
    let mut flags = if key { FRAME_KEY } else { 0 };
    if now.saturating_sub(p.at) >= slow {
        flags |= FRAME_SLOW;
    }
    // SAFETY: the helper has no arguments.
    if sample != 0 && (unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() } as u64) < sample {
        flags |= FRAME_SAMPLED;
    }
    if flags & (FRAME_SLOW | FRAME_SAMPLED) == 0 {
        return;
    }
    let span = FrameSpan {
        tgid: s.tgid,
        direction: s.direction,
        ctx: s.ctx,
        opened_ns: s.opened_ns,
        start_ns: p.at,
        end_ns: now,
        pts,
        size,
        flags,
    };
    // No wakeup per span: waking the daemon costs the pipeline's thread an interrupt and the
    // daemon a context switch, per frame. The daemon drains the ring every 100 ms; only a ring
    // filling up wakes it early.
    let wake = if FRAMES.query(BPF_RB_AVAIL_DATA) >= FRAMES_WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if FRAMES.output::<FrameSpan>(&span, wake).is_err() {
        bump(counter::FRAMES_LOST);
    }
}

#[inline(always)]
fn submitted_packet(s: &mut Stream, l: &LibLayout, pkt: u64, at: u64) {
    // A NULL or empty packet is the flush that starts draining, not a packet.
    let Some(w) = PacketWindow::read(pkt, l.pkt_pts) else {
        return;
    };
    let size = w.get::<i32>(l.pkt_size).unwrap_or(0);
    if size <= 0 {
        return;
    }
    add(&mut s.in_count, 1);
    add(&mut s.in_bytes, size as u64);
    s.last_ns = at;
    inflight(s, w.get::<i64>(l.pkt_pts).unwrap_or(NOPTS), at, size as u32);
    if s.io == 0
        && let Some(data) = w.get::<u64>(l.pkt_data)
        && let Some(io) = super::io::demuxed_by(s.tgid, data)
    {
        s.io = io;
    }
}

#[inline(always)]
fn frame_shape(s: &mut Stream, l: &LibLayout, w: &FrameWindow) {
    let width = w.get::<i32>(l.frame_width).unwrap_or(0);
    let height = w.get::<i32>(l.frame_height).unwrap_or(0);
    if width > 0 && width <= 65536 && height > 0 && height <= 65536 {
        s.width = width as u32;
        s.height = height as u32;
        if let Some(f) = w.get::<i32>(l.frame_format) {
            s.format = f;
        }
        if s.direction == Direction::Filter as u32 {
            s.media = 0;
        }
    } else if s.direction == Direction::Filter as u32
        && w.get::<i32>(l.frame_nb_samples).unwrap_or(0) > 0
    {
        s.media = 1;
    }
}

#[inline(always)]
fn submitted_frame(s: &mut Stream, l: &LibLayout, frame: u64, at: u64, pts: Option<i64>) {
    add(&mut s.in_count, 1);
    s.last_ns = at;
    let pts = match pts {
        Some(p) => p,
        None => match FrameWindow::read(frame, l.frame_width) {
            Some(w) => {
                frame_shape(s, l, &w);
                w.get::<i64>(l.frame_pts).unwrap_or(NOPTS)
            }
            None => NOPTS,
        },
    };
    inflight(s, pts, at, 0);
}

#[inline(always)]
fn received_frame(s: &mut Stream, l: &LibLayout, frame: u64, now: u64) {
    add(&mut s.out_count, 1);
    s.last_ns = now;
    let Some(w) = FrameWindow::read(frame, l.frame_width) else {
        pair(s, None, now);
        return;
    };
    frame_shape(s, l, &w);
    let mut key = false;
    if s.direction == Direction::Decode as u32 {
        key = match w.get::<i32>(l.frame_key_frame) {
            Some(k) => k != 0,
            // From libavutil 59 the key flag lives only in AVFrame.flags, outside the window.
            None => field::<i32>(frame, l.frame_flags).unwrap_or(0) & AV_FRAME_FLAG_KEY != 0,
        };
        if key {
            add(&mut s.keyframes, 1);
        }
    }
    let pts = w.get::<i64>(l.frame_pts);
    if let Some(p) = pair(s, pts, now) {
        let size = p.size;
        frame_span(s, p, now, pts.unwrap_or(NOPTS), size, key);
    }
}

#[inline(always)]
fn received_packet(s: &mut Stream, l: &LibLayout, pkt: u64, now: u64) {
    add(&mut s.out_count, 1);
    s.last_ns = now;
    let Some(w) = PacketWindow::read(pkt, l.pkt_pts) else {
        pair(s, None, now);
        return;
    };
    let size = w.get::<i32>(l.pkt_size).unwrap_or(0);
    if size > 0 {
        add(&mut s.out_bytes, size as u64);
    }
    let key = w.get::<i32>(l.pkt_flags).unwrap_or(0) & AV_PKT_FLAG_KEY != 0;
    if key {
        add(&mut s.keyframes, 1);
    }
    if s.io == 0
        && let Some(data) = w.get::<u64>(l.pkt_data).filter(|d| *d != 0)
    {
        super::io::encoded(s.tgid, data, s.ctx);
    }
    let pts = w.get::<i64>(l.pkt_pts);
    if let Some(p) = pair(s, pts, now) {
        frame_span(s, p, now, pts.unwrap_or(NOPTS), size.max(0) as u32, key);
    }
}

// --- the floor -------------------------------------------------------------------------

/// Does nothing: attached instead of the real probes by `observer --empty-probes`, so the
/// benchmarks can measure what the uprobe mechanism itself costs at the same points.
#[uprobe]
pub fn noop_enter(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn noop_return(_ctx: RetProbeContext) -> u32 {
    0
}
