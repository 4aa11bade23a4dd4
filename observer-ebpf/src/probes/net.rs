//! The file descriptors of ios, seen from the kernel. Syscall tracepoints tie descriptors
//! created while a thread works on an io (`probes::io::CURRENT_IO`) to that io and count the
//! bytes read and written on its files. Sockets are followed by the socket tracepoints
//! `sock_recv_length`/`sock_send_length`, which fire once per message inside whatever
//! syscall moved it: one program a datagram counts its bytes and parses its RTP header and
//! MPEG-TS packet headers (sequence gaps, jitter, continuity errors). Knowing the kernel
//! socket of each io descriptor also charges drops (`skb:kfree_skb`, with the kernel's own
//! reason) and TCP retransmissions, which happen outside the process, to the right io.
//!
//! Every program here runs for every process on the node; each starts with one lookup that
//! fails fast for descriptors, sockets and threads that are not ours.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user_str_bytes, generated},
    macros::{btf_tracepoint, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{
        BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext,
    },
};
use observer_common::{
    event::EventKind,
    io::{
        CC_SLOTS, CcKey, CcSlot, DROP_SLOTS, DropCount, FdEntry, FdKind, Io, IoEvent, IoKey,
        MAX_FDS, OP_READ, OP_WRITE, Rtp, SockEntry, TEXT_LEN, UNCLAIMED_SOCKETS, UnclaimedDrops,
    },
    kernel::REASON_NOT_GIVEN,
    stream::counter,
};

use core::ffi::c_void;

use super::{
    codec::{add_shared, now_ns},
    io::{CURRENT_IO, IO_PROCESSES, current_io, io_of},
};
use crate::{
    kernel::{kernel, read as read_kernel},
    maps::{BPF_NOEXIST, EVENTS, bump, copied},
};

/// Descriptors tied to an io, by `tgid << 32 | fd`. LRU: a process killed without closing
/// them leaves entries that age out.
#[map]
pub static FDS: LruHashMap<u64, FdEntry> = LruHashMap::with_max_entries(MAX_FDS, 0);

/// What a syscall's entry leaves for its exit, by `pid_tgid`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    pub fd_key: u64,
    /// The path (openat).
    pub buf: u64,
    pub io: IoKey,
    /// [`FdKind`]; 0 marks the entry consumed.
    pub kind: u32,
    pub mode: u32,
}

/// A read or write on a file descriptor of an io.
const MODE_IO: u32 = 0;
/// An `openat` on a thread working on an io (`buf` is the path).
const MODE_OPEN: u32 = 1;
/// A `socket` on a thread working on an io.
const MODE_SOCKET: u32 = 2;

#[map]
pub static SYSCALLS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(MAX_FDS, 0);

/// Kernel sockets (`struct sock *`) of io descriptors.
#[map]
static SOCKETS: LruHashMap<u64, SockEntry> = LruHashMap::with_max_entries(MAX_FDS, 0);

/// Drops at sockets not known as an io's, by `struct sock *`. A socket becomes its io's at
/// the first message a syscall moves on it (`socket_entry`), and a UDP input's buffer can
/// overflow before that read (a key frame's burst while the receiver starts): those drops
/// wait here and go to the io when it claims the socket. Every socket on the node that drops
/// lands here, hence LRU; an entry older than the descriptor that claims its address is
/// another socket's and is thrown away.
#[map]
static UNCLAIMED_DROPS: LruHashMap<u64, UnclaimedDrops> =
    LruHashMap::with_max_entries(UNCLAIMED_SOCKETS, 0);

/// Last continuity counter per io and MPEG-TS PID.
#[map]
static CONTINUITY: LruHashMap<CcKey, u32> = LruHashMap::with_max_entries(16384, 0);

/// MPEG-TS packets in one datagram: 7 is what every sender puts in an Ethernet-MTU datagram
/// (1316 bytes), RTP header or not.
const TS_PER_DATAGRAM: u64 = 7;

// Syscall tracepoint records: arguments from offset 16, 8 bytes each; `ret` at 16 on exit.
const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;

#[inline(always)]
fn arg(ctx: &TracePointContext, off: usize) -> u64 {
    // SAFETY: offsets inside the syscall tracepoint record (see ARG0).
    unsafe { ctx.read_at::<u64>(off) }.unwrap_or(u64::MAX)
}

#[inline(always)]
fn fd_key(pid_tgid: u64, fd: u64) -> u64 {
    (pid_tgid & 0xffff_ffff_0000_0000) | (fd & 0xffff_ffff)
}

// --- reads and writes on io descriptors ----------------------------------------------------

#[inline(always)]
fn io_enter(ctx: &TracePointContext, mode: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = fd_key(pid_tgid, arg(ctx, ARG0));
    let Some(fd) = copied(FDS.get_ptr(&key)) else {
        return;
    };
    if fd.kind != FdKind::File as u32 {
        // Sockets are counted by `sock_recv`/`sock_send`, whatever syscall moves their bytes.
        return;
    }
    let args = SyscallArgs {
        fd_key: key,
        buf: arg(ctx, ARG1),
        io: fd.io,
        kind: fd.kind,
        mode,
    };
    let _ = SYSCALLS.insert(&pid_tgid, &args, 0);
}

/// `read`, `pread64`, `readv`, `write`, `pwrite64`, `writev` entries: `(fd, ...)`, for
/// files.
#[tracepoint]
pub fn io_enter_file(ctx: TracePointContext) -> u32 {
    io_enter(&ctx, MODE_IO);
    0
}

/// Takes what the entry of this thread's syscall left, if it was on an io descriptor.
#[inline(always)]
fn take_args(pid_tgid: u64) -> Option<SyscallArgs> {
    let p = SYSCALLS.get_ptr_mut(&pid_tgid)?;
    // SAFETY: map value pointer, valid for this program run.
    let args = unsafe { *p };
    if args.kind == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*p).kind = 0 };
    Some(args)
}

#[inline(always)]
fn io_exit(ctx: &TracePointContext, op: usize) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = take_args(pid_tgid) else {
        return;
    };
    if args.mode != MODE_IO {
        return;
    }
    let ret = arg(ctx, RET) as i64;
    if ret <= 0 {
        return;
    }
    let n = ret as u64;
    if let Some(fd) = FDS.get_ptr_mut(&args.fd_key) {
        // SAFETY: map value pointer, valid for this program run.
        if let Some(b) = unsafe { (*fd).bytes.get_mut(op) } {
            add_shared(b, n);
        }
    }
    let Some(io) = io_of(&args.io) else { return };
    count(io, op, n, false);
}

/// Bytes and calls into an io.
#[inline(always)]
fn count(io: &mut Io, op: usize, n: u64, datagram: bool) {
    if let Some(b) = io.bytes.get_mut(op) {
        add_shared(b, n);
    }
    if let Some(c) = io.syscalls.get_mut(op) {
        add_shared(c, 1);
    }
    if datagram && let Some(d) = io.datagrams.get_mut(op) {
        add_shared(d, 1);
    }
    io.last_ns = now_ns();
}

#[tracepoint]
pub fn io_exit_read(ctx: TracePointContext) -> u32 {
    io_exit(&ctx, OP_READ);
    0
}

#[tracepoint]
pub fn io_exit_write(ctx: TracePointContext) -> u32 {
    io_exit(&ctx, OP_WRITE);
    0
}

#[inline(always)]
fn read_user<T: Copy>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: a fault-tolerant copy from the current process.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr as *const T).ok() }
}

// --- datagram payloads: RTP and MPEG-TS ----------------------------------------------------

const TS_PACKET: u64 = 188;
const TS_SYNC: u8 = 0x47;
const TS_NULL_PID: u32 = 0x1fff;
const RTP_WINDOW: i64 = 64;

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u32 {
    match (b.get(i), b.get(i + 1)) {
        (Some(h), Some(l)) => ((*h as u32) << 8) | *l as u32,
        _ => 0,
    }
}

#[inline(always)]
fn be32(b: &[u8], i: usize) -> u32 {
    (be16(b, i) << 16) | be16(b, i + 2)
}

/// Bytes of a datagram read in one go: an RTP header without extensions and seven
/// transport packets, the layout of nearly every MPEG-TS over UDP/RTP sender.
const SCRATCH: usize = RTP_HEADER + TS_PER_DATAGRAM as usize * TS_PACKET as usize;
const RTP_HEADER: usize = 12;

#[map]
static PAYLOAD: PerCpuArray<[u8; SCRATCH]> = PerCpuArray::with_max_entries(1, 0);

/// Parses a received datagram: an RTP header (if any), then the MPEG-TS packets behind it.
/// Reads the datagram's first bytes in one copy (the receive buffer is always larger than a
/// datagram); a buffer too short for that, or an RTP header with extensions, is read header
/// by header instead.
#[inline(always)]
fn parse_datagram(io: &mut Io, key: &IoKey, fd_generation: u64, buf: u64, len: u64, now: u64) {
    let Some(p) = PAYLOAD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: copies SCRATCH bytes into the per-CPU scratch buffer, fault-tolerantly.
    let rc =
        unsafe { generated::bpf_probe_read_user(p.cast(), SCRATCH as u32, buf as *const c_void) };
    if rc != 0 {
        parse_slowly(io, key, fd_generation, buf, len, now);
        return;
    }
    // SAFETY: the per-CPU scratch buffer; nothing else on this CPU runs while we do.
    let p = unsafe { &*p };
    let counted = if p[0] == TS_SYNC {
        ts_run::<0>(io, key, p, len)
    } else {
        let mut h = [0u8; RTP_HEADER];
        h.copy_from_slice(&p[..RTP_HEADER]);
        let Some(pt) = rtp_payload_type(&h) else {
            return;
        };
        rtp_packet(&mut io.rtp, fd_generation, &h, pt, now);
        if h[0] & 0x1f != 0 {
            // CSRCs or an extension: the transport packets start further in.
            ts_slowly(io, key, buf, rtp_header_len(&h, buf), len)
        } else {
            ts_run::<RTP_HEADER>(io, key, p, len)
        }
    };
    if counted > 0 {
        add_shared(&mut io.ts_packets, counted);
    }
}

/// The RTP payload type, if `h` is an RTP (version 2) header and not RTCP, whose packet
/// types 200-204 read as payload types 72-76 (RFC 5761).
#[inline(always)]
fn rtp_payload_type(h: &[u8; RTP_HEADER]) -> Option<u32> {
    let pt = (h[1] & 0x7f) as u32;
    (h[0] >> 6 == 2 && !(72..=76).contains(&pt)).then_some(pt)
}

#[inline(always)]
fn rtp_header_len(h: &[u8; RTP_HEADER], buf: u64) -> u64 {
    let mut hdr = RTP_HEADER as u64 + 4 * (h[0] & 0x0f) as u64;
    if h[0] & 0x10 != 0 {
        hdr += 4 + 4 * read_user::<[u8; 4]>(buf + hdr).map_or(0, |e| be16(&e, 2) as u64);
    }
    hdr
}

/// The transport packets at offset `AT` of the scratch copy: constant offsets, so the
/// verifier sees every index in bounds.
#[inline(always)]
fn ts_run<const AT: usize>(io: &mut Io, key: &IoKey, p: &[u8; SCRATCH], len: u64) -> u64 {
    let mut counted = 0;
    macro_rules! packet {
        ($i:expr) => {
            let off = AT + $i * TS_PACKET as usize;
            if off + TS_PACKET as usize > SCRATCH
                || (off + TS_PACKET as usize) as u64 > len
                || p[off] != TS_SYNC
            {
                return counted;
            }
            counted += ts_packet(
                io,
                key,
                p[off + 1],
                p[off + 2],
                p[off + 3],
                p[off + 4],
                p[off + 5],
            );
        };
    }
    packet!(0);
    packet!(1);
    packet!(2);
    packet!(3);
    packet!(4);
    packet!(5);
    packet!(6);
    counted
}

/// The same, reading each transport packet's header from the process.
#[inline(always)]
fn ts_slowly(io: &mut Io, key: &IoKey, buf: u64, at: u64, len: u64) -> u64 {
    let mut counted = 0;
    let mut i = 0;
    while i < TS_PER_DATAGRAM {
        let off = at + i * TS_PACKET;
        if off + TS_PACKET > len {
            break;
        }
        let Some(p) = read_user::<[u8; 6]>(buf + off) else {
            break;
        };
        if p[0] != TS_SYNC {
            break;
        }
        counted += ts_packet(io, key, p[1], p[2], p[3], p[4], p[5]);
        i += 1;
    }
    counted
}

#[inline(always)]
fn parse_slowly(io: &mut Io, key: &IoKey, fd_generation: u64, buf: u64, len: u64, now: u64) {
    let Some(h) = read_user::<[u8; RTP_HEADER]>(buf) else {
        return;
    };
    let at = if h[0] == TS_SYNC {
        0
    } else {
        let Some(pt) = rtp_payload_type(&h) else {
            return;
        };
        rtp_packet(&mut io.rtp, fd_generation, &h, pt, now);
        rtp_header_len(&h, buf)
    };
    let counted = ts_slowly(io, key, buf, at, len);
    if counted > 0 {
        add_shared(&mut io.ts_packets, counted);
    }
}

/// One MPEG-TS packet's continuity counter (header bytes 1-5), judged exactly as FFmpeg's
/// demuxer does (`libavformat/mpegts.c`, `handle_packet`): the counter advances only with a
/// payload, a repeat without one is fine, a discontinuity indicator or the null PID excuses
/// anything. Returns 1 if the packet counts (not null, not reserved).
#[inline(always)]
fn ts_packet(io: &mut Io, key: &IoKey, b1: u8, b2: u8, b3: u8, b4: u8, b5: u8) -> u64 {
    let pid = ((b1 as u32 & 0x1f) << 8) | b2 as u32;
    let afc = (b3 >> 4) & 3;
    if afc == 0 || pid == TS_NULL_PID {
        return 0;
    }
    let has_payload = afc & 1 != 0;
    let discontinuity = afc & 2 != 0 && b4 != 0 && b5 & 0x80 != 0;
    let cc = b3 & 0x0f;
    let check = |io: &mut Io, last: u8| {
        if !discontinuity {
            let expected = if has_payload { (last + 1) & 0x0f } else { last };
            if expected != cc {
                add_shared(&mut io.ts_cc_errors, 1);
            }
        }
    };
    let mut i = 0;
    while i < CC_SLOTS {
        if let Some(slot) = io.cc.get(i).copied() {
            if slot.used == 0 {
                if let Some(s) = io.cc.get_mut(i) {
                    *s = CcSlot {
                        pid: pid as u16,
                        last: cc,
                        used: 1,
                    };
                }
                return 1;
            }
            if slot.pid as u32 == pid {
                check(io, slot.last);
                if let Some(s) = io.cc.get_mut(i) {
                    s.last = cc;
                }
                return 1;
            }
        }
        i += 1;
    }
    let ck = CcKey {
        io: *key,
        pid,
        _pad: 0,
    };
    match CONTINUITY.get_ptr_mut(&ck) {
        Some(last) => {
            // SAFETY: map value pointer, valid for this program run.
            let last = unsafe { &mut *last };
            check(io, *last as u8);
            *last = cc as u32;
        }
        None => {
            let _ = CONTINUITY.insert(&ck, &(cc as u32), 0);
        }
    }
    1
}

/// RFC 3550 receive statistics: extended sequence numbers, distinct packets, duplicates and
/// late arrivals (a 64-packet window tells them apart), and interarrival jitter in a 90 kHz
/// clock (the clock of MPEG-TS over RTP and of every video payload type).
#[inline(always)]
fn rtp_packet(r: &mut Rtp, fd_generation: u64, p: &[u8; 12], pt: u32, now: u64) {
    let seq = be16(p, 2) as u64;
    let ts = be32(p, 4);
    let arrival = (now / 100_000 * 9 + (now % 100_000) * 9 / 100_000) as u32;
    let transit = arrival.wrapping_sub(ts) as i64;
    let ssrc = be32(p, 8);
    if r.socket != fd_generation || r.ssrc != ssrc || r.received == 0 {
        if r.received != 0 {
            r.prior_expected += r.max_seq - r.base_seq + 1;
            r.prior_received += r.received;
        }
        r.socket = fd_generation;
        // Start one cycle up, so packets older than the first still have a sequence number.
        r.base_seq = seq + 65536;
        r.max_seq = r.base_seq;
        r.window = 1;
        r.received = 1;
        r.ssrc = ssrc;
        r.payload_type = pt;
        r.transit = transit;
        return;
    }
    let delta = (seq as u16).wrapping_sub(r.max_seq as u16) as i16 as i64;
    if delta > 0 {
        r.max_seq += delta as u64;
        r.window = if delta >= RTP_WINDOW {
            1
        } else {
            (r.window << delta) | 1
        };
        r.received += 1;
        let d = (transit as u32).wrapping_sub(r.transit as u32) as i32;
        let d = if d < 0 { -(d as i64) } else { d as i64 } as u64;
        r.jitter16 = (r.jitter16 + d).saturating_sub((r.jitter16 + 8) >> 4);
        r.transit = transit;
    } else if delta == 0 {
        r.duplicates += 1;
    } else {
        let back = -delta;
        if back < RTP_WINDOW {
            let bit = 1u64 << back;
            if r.window & bit != 0 {
                r.duplicates += 1;
                return;
            }
            r.window |= bit;
        }
        r.received += 1;
        r.reordered += 1;
    }
}

// --- descriptors: creation and close -------------------------------------------------------

const SOCK_DGRAM: u64 = 2;

/// `openat(dfd, filename, flags, mode)` entry, on threads working on an io.
#[tracepoint]
pub fn fd_enter_open(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(io) = current_io(pid_tgid) else {
        return 0;
    };
    let args = SyscallArgs {
        fd_key: 0,
        buf: arg(&ctx, ARG1),
        io,
        kind: FdKind::File as u32,
        mode: MODE_OPEN,
    };
    let _ = SYSCALLS.insert(&pid_tgid, &args, 0);
    0
}

/// `socket(family, type, protocol)` entry, on threads working on an io.
#[tracepoint]
pub fn fd_enter_socket(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(io) = current_io(pid_tgid) else {
        return 0;
    };
    let kind = if arg(&ctx, ARG1) & 0xf == SOCK_DGRAM {
        FdKind::Datagram
    } else {
        FdKind::Stream
    };
    let args = SyscallArgs {
        fd_key: 0,
        buf: 0,
        io,
        kind: kind as u32,
        mode: MODE_SOCKET,
    };
    let _ = SYSCALLS.insert(&pid_tgid, &args, 0);
    0
}

#[inline(always)]
fn tie(pid_tgid: u64, fd: i64, io: IoKey, kind: u32) -> bool {
    let entry = FdEntry {
        io,
        kind,
        _pad: 0,
        opened_ns: now_ns(),
        bytes: [0; 2],
        sk: 0,
    };
    if FDS.insert(&fd_key(pid_tgid, fd as u64), &entry, 0).is_err() {
        bump(counter::IOS_FULL);
        return false;
    }
    if let Some(io) = io_of(&io)
        && let Some(n) = io.fds.get_mut((kind as usize).wrapping_sub(1))
    {
        add_shared(n, 1);
    }
    true
}

/// A new descriptor that belongs to no io may reuse the number of one whose close we did not
/// see (`close_range`, `dup2` over it): forget the old one.
#[inline(always)]
fn untie(pid_tgid: u64, fd: i64) {
    if fd >= 0 {
        let _ = FDS.remove(&fd_key(pid_tgid, fd as u64));
    }
}

/// `openat` and `socket` exits.
#[tracepoint]
pub fn fd_exit_created(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = arg(&ctx, RET) as i64;
    let Some(args) = take_args(pid_tgid) else {
        untie(pid_tgid, fd);
        return 0;
    };
    if fd < 0 || args.mode < MODE_OPEN {
        return 0;
    }
    if args.mode == MODE_OPEN && system_file(args.buf) {
        untie(pid_tgid, fd);
        return 0;
    }
    if tie(pid_tgid, fd, args.io, args.kind) && args.mode == MODE_OPEN {
        send_file(
            EventKind::FileOpen,
            pid_tgid,
            &args.io,
            fd as i32,
            args.kind,
            args.buf,
            None,
        );
    }
    0
}

/// Files the C library opens on an io's behalf (resolver configuration under /etc, locale
/// data under /usr, /proc and /sys entries) are not the io's data.
#[inline(always)]
fn system_file(path: u64) -> bool {
    let Some(p) = read_user::<[u8; 6]>(path) else {
        return false;
    };
    matches!(
        &p,
        [b'/', b'e', b't', b'c', b'/', _]
            | [b'/', b'u', b's', b'r', b'/', _]
            | [b'/', b'p', b'r', b'o', b'c', b'/']
            | [b'/', b's', b'y', b's', b'/', _]
            | [b'/', b'd', b'e', b'v', b'/', _]
            | [b'/', b'l', b'i', b'b', _, _]
    )
}

/// `accept` / `accept4` exits: a connection accepted by a listening output (`listen=1`).
#[tracepoint]
pub fn fd_exit_accept(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = arg(&ctx, RET) as i64;
    match current_io(pid_tgid) {
        Some(io) if fd >= 0 => {
            tie(pid_tgid, fd, io, FdKind::Stream as u32);
        }
        _ => untie(pid_tgid, fd),
    }
    0
}

/// `close(fd)` entry: a descriptor of an io ends; its totals go to the daemon (an HLS
/// segment's size and write time).
#[tracepoint]
pub fn fd_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = arg(&ctx, ARG0);
    let key = fd_key(pid_tgid, fd);
    let Some(entry) = copied(FDS.get_ptr(&key)) else {
        return 0;
    };
    let _ = FDS.remove(&key);
    // A TCP socket outlives its descriptor (FIN, retransmissions of the last data): it is
    // forgotten when the kernel destroys it (`tcp_destroy`).
    if entry.sk != 0 && entry.kind == FdKind::Datagram as u32 {
        let _ = SOCKETS.remove(&entry.sk);
    }
    send_file(
        EventKind::FileClose,
        pid_tgid,
        &entry.io,
        fd as i32,
        entry.kind,
        0,
        Some(&entry),
    );
    0
}

#[inline(always)]
fn send_file(
    kind: EventKind,
    pid_tgid: u64,
    io: &IoKey,
    fd: i32,
    fd_kind: u32,
    path: u64,
    closed: Option<&FdEntry>,
) {
    let Some(mut entry) = EVENTS.reserve::<IoEvent>(0) else {
        bump(counter::EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    let now = now_ns();
    // SAFETY: the reservation is sized for an IoEvent; every field is written before submit.
    unsafe {
        (*ev).kind = kind as u32;
        (*ev).tgid = (pid_tgid >> 32) as u32;
        (*ev).ktime_ns = now;
        (*ev).io = io.id;
        (*ev).fd = fd;
        (*ev).direction = fd_kind;
        (*ev).text[0] = 0;
        match closed {
            Some(e) => {
                (*ev).bytes = e.bytes;
                (*ev).duration_ns = now.saturating_sub(e.opened_ns);
            }
            None => {
                (*ev).bytes = [0; 2];
                (*ev).duration_ns = 0;
                if path != 0 {
                    let _ = bpf_probe_read_user_str_bytes(path as *const u8, &mut (*ev).text);
                }
            }
        }
        (*ev).text[TEXT_LEN - 1] = 0;
    }
    entry.submit(0);
}

// --- kernel sockets: drops and retransmissions ----------------------------------------------

// The socket tracepoints below learn which syscall they fire in from the thread's saved
// user registers; the numbers are the architecture's (`arch::nr`).
use crate::arch::nr::{
    CONNECT as SYS_CONNECT, READ as SYS_READ, READV as SYS_READV, RECVFROM as SYS_RECVFROM,
    RECVMMSG as SYS_RECVMMSG, RECVMSG as SYS_RECVMSG, SENDMMSG as SYS_SENDMMSG,
    SENDMSG as SYS_SENDMSG, SENDTO as SYS_SENDTO, WRITE as SYS_WRITE, WRITEV as SYS_WRITEV,
};
const MSG_PEEK: i32 = 2;

/// The syscall this thread is in: (number, first argument, second argument), from its saved
/// user registers (the architecture's syscall ABI, stable like ptrace's: `arch::syscall`),
/// or, on kernels without `bpf_task_pt_regs`, from what the syscall's entry left in
/// `SYSCALL_ARGS`.
#[inline(always)]
fn current_syscall() -> Option<(u64, u64, u64)> {
    if kernel!(task_pt_regs) == 0 {
        return copied(SYSCALL_ARGS.get_ptr(&bpf_get_current_pid_tgid()))
            .map(|a| (a[0], a[1], a[2]));
    }
    // SAFETY: helpers on the current task. The helper returns a BTF-typed pointer, so the
    // loads `arch::syscall` makes are plain ones the verifier checks against the kernel's
    // `struct pt_regs` (and turns into fault-tolerant ones): no probe-read call, which costs
    // about 100 ns here.
    unsafe {
        let regs = generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf())
            as *const core::ffi::c_void;
        if regs.is_null() {
            return None;
        }
        Some(crate::arch::syscall(regs))
    }
}

/// The socket syscalls in progress of processes with ios, by thread: (number, first
/// argument, second argument). Kept only where `bpf_task_pt_regs` is missing (before 5.15).
#[map]
static SYSCALL_ARGS: HashMap<u64, [u64; 3]> = HashMap::with_max_entries(MAX_FDS, 0);

/// Where a syscall tracepoint record keeps the syscall's number.
const SYSCALL_NR: usize = 8;

/// Entry of `read`, `readv`, `recvfrom`, `recvmsg`, `write`, `writev`, `sendto`, `sendmsg`
/// and `connect` (kernels without `bpf_task_pt_regs`): the socket programs that fire inside
/// learn the syscall and its descriptor here.
#[tracepoint]
pub fn syscall_args_enter(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if IO_PROCESSES.get_ptr(&((pid_tgid >> 32) as u32)).is_none() {
        return 0;
    }
    // SAFETY: the syscall number's place in every syscall tracepoint record.
    let nr = unsafe { ctx.read_at::<i32>(SYSCALL_NR) }.unwrap_or(-1) as u64;
    let _ = SYSCALL_ARGS.insert(&pid_tgid, &[nr, arg(&ctx, ARG0), arg(&ctx, ARG1)], 0);
    0
}

/// The same syscalls' exits.
#[tracepoint]
pub fn syscall_args_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if SYSCALL_ARGS.get_ptr(&pid_tgid).is_some() {
        let _ = SYSCALL_ARGS.remove(&pid_tgid);
    }
    0
}

#[inline(always)]
fn socket_syscall(nr: u64) -> bool {
    matches!(
        nr,
        SYS_READ
            | SYS_READV
            | SYS_RECVFROM
            | SYS_RECVMSG
            | SYS_RECVMMSG
            | SYS_WRITE
            | SYS_WRITEV
            | SYS_SENDTO
            | SYS_SENDMSG
            | SYS_SENDMMSG
            | SYS_CONNECT
    )
}

/// The io behind kernel socket `sk`. Known sockets cost one lookup; an unknown one is looked
/// up by the descriptor its syscall works on, only in processes that have ios (every other
/// socket on the node costs one more lookup and nothing else).
#[inline(always)]
fn socket_entry(sk: u64) -> Option<SockEntry> {
    if let Some(e) = copied(SOCKETS.get_ptr(&sk)) {
        return Some(e);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    IO_PROCESSES.get_ptr(&((pid_tgid >> 32) as u32))?;
    let (nr, fd, _) = current_syscall()?;
    if !socket_syscall(nr) {
        return None;
    }
    let e = FDS.get_ptr_mut(&fd_key(pid_tgid, fd))?;
    // SAFETY: map value pointer, valid for this program run.
    let e = unsafe { &mut *e };
    if e.kind == FdKind::File as u32 || sk == 0 {
        return None;
    }
    e.sk = sk;
    let entry = SockEntry {
        io: e.io,
        generation: e.opened_ns,
        kind: e.kind,
        _pad: 0,
    };
    let _ = SOCKETS.insert(&sk, &entry, 0);
    claim_drops(sk, &entry);
    Some(entry)
}

/// Moves the drops a socket had before it was known (`UNCLAIMED_DROPS`) to its io. Drops
/// recorded before the io's descriptor was opened happened at an earlier socket at the same
/// address and are dropped. (A drop that races the claim on another CPU, inside the few
/// instructions between its `SOCKETS` miss and its `UNCLAIMED_DROPS` update, is charged to
/// no io.)
#[inline(always)]
fn claim_drops(sk: u64, entry: &SockEntry) {
    let Some(unclaimed) = copied(UNCLAIMED_DROPS.get_ptr(&sk)) else {
        return;
    };
    let _ = UNCLAIMED_DROPS.remove(&sk);
    if unclaimed.first_ns < entry.generation {
        return;
    }
    let Some(io) = io_of(&entry.io) else { return };
    let mut i = 0;
    while i < DROP_SLOTS {
        if let Some(d) = unclaimed.drops.get(i)
            && d.reason != 0
        {
            add_drop(&mut io.drops, d.reason, d.count);
        }
        i += 1;
    }
}

/// Adds `n` drops of `reason` to a drop table: the reason's slot, a free one, or the last
/// (which then counts every other reason).
#[inline(always)]
fn add_drop(drops: &mut [DropCount; DROP_SLOTS], reason: u32, n: u64) {
    let mut i = 0;
    while i < DROP_SLOTS {
        let last = i == DROP_SLOTS - 1;
        if let Some(d) = drops.get_mut(i) {
            if d.reason == 0 {
                d.reason = if last { u32::MAX } else { reason };
            }
            if d.reason == reason || last {
                add_shared(&mut d.count, n);
                return;
            }
        }
        i += 1;
    }
}

/// Counts a drop at a socket not (yet) an io's, for `claim_drops`.
#[inline(always)]
fn record_unclaimed(sk: u64, reason: u32) {
    if let Some(u) = UNCLAIMED_DROPS.get_ptr_mut(&sk) {
        // SAFETY: map value pointer, valid for this program run.
        add_drop(unsafe { &mut (*u).drops }, reason, 1);
        return;
    }
    let mut fresh = UnclaimedDrops {
        first_ns: now_ns(),
        drops: [DropCount::default(); DROP_SLOTS],
    };
    fresh.drops[0] = DropCount {
        reason,
        _pad: 0,
        count: 1,
    };
    // BPF_NOEXIST: another CPU may have made the entry since the lookup; then add to it.
    if UNCLAIMED_DROPS.insert(&sk, &fresh, BPF_NOEXIST).is_err()
        && let Some(u) = UNCLAIMED_DROPS.get_ptr_mut(&sk)
    {
        // SAFETY: as above.
        add_drop(unsafe { &mut (*u).drops }, reason, 1);
    }
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`: every message a socket syscall
/// returns (`recv*`, `read`, one per message of `recvmmsg`), in the receiving thread. One
/// program per datagram: bytes, and the payload's RTP and MPEG-TS headers.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv(ctx: BtfTracePointContext) -> u32 {
    received(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`: every message a socket syscall
/// sends.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send(ctx: BtfTracePointContext) -> u32 {
    sent(ctx.arg(0), ctx.arg(1));
    0
}

/// The `struct sock *` of a `struct socket *`.
#[inline(always)]
fn sock_of(socket: u64) -> u64 {
    read_kernel(socket, kernel!(offsets.socket_sk)).unwrap_or(0)
}

// Where the `sock_*_length` tracepoints are missing (before Linux 6.3), the same counting runs
// at the return of the IPv4 and IPv6 socket layer's receive and send calls, which every socket
// syscall goes through (an fexit reads a function's arguments, then its return value).

/// `int inet_recvmsg(struct socket *sock, struct msghdr *msg, size_t size, int flags)`.
#[fexit(function = "inet_recvmsg")]
pub fn inet_recv(ctx: FExitContext) -> u32 {
    received(sock_of(ctx.arg(0)), ctx.arg::<i64>(4) as i32, ctx.arg(3));
    0
}

/// `int inet6_recvmsg(struct socket *sock, struct msghdr *msg, size_t size, int flags)`.
#[fexit(function = "inet6_recvmsg")]
pub fn inet6_recv(ctx: FExitContext) -> u32 {
    received(sock_of(ctx.arg(0)), ctx.arg::<i64>(4) as i32, ctx.arg(3));
    0
}

/// `int inet_sendmsg(struct socket *sock, struct msghdr *msg, size_t size)`.
#[fexit(function = "inet_sendmsg")]
pub fn inet_send(ctx: FExitContext) -> u32 {
    sent(sock_of(ctx.arg(0)), ctx.arg::<i64>(3) as i32);
    0
}

/// `int inet6_sendmsg(struct socket *sock, struct msghdr *msg, size_t size)`.
#[fexit(function = "inet6_sendmsg")]
pub fn inet6_send(ctx: FExitContext) -> u32 {
    sent(sock_of(ctx.arg(0)), ctx.arg::<i64>(3) as i32);
    0
}

// Where fexit cannot attach either (arm64 before Linux 6.4 has no BPF trampoline for kernel
// functions), kprobes do the same: the entry keeps the socket and flags by thread, the
// return reads them with the result. Only threads of processes with ios keep anything.

/// Arguments of a socket call in progress, by thread: (`struct socket *`, flags). LRU: a
/// return the kernel misses (its kretprobe instances all taken) or a thread that dies in the
/// call leaves its entry behind.
#[map]
static SOCKET_CALLS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(MAX_FDS, 0);

#[inline(always)]
fn socket_call_enter(socket: Option<u64>, flags: Option<u64>) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if IO_PROCESSES.get_ptr(&((pid_tgid >> 32) as u32)).is_none() {
        return;
    }
    let _ = SOCKET_CALLS.insert(&pid_tgid, &[socket.unwrap_or(0), flags.unwrap_or(0)], 0);
}

#[inline(always)]
fn socket_call_return() -> Option<[u64; 2]> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let args = copied(SOCKET_CALLS.get_ptr(&pid_tgid))?;
    let _ = SOCKET_CALLS.remove(&pid_tgid);
    Some(args)
}

/// Entry of `inet_recvmsg` and `inet6_recvmsg` (same arguments).
#[kprobe]
pub fn inet_recv_enter(ctx: ProbeContext) -> u32 {
    socket_call_enter(ctx.arg(0), ctx.arg(3));
    0
}

#[kretprobe]
pub fn inet_recv_return(ctx: RetProbeContext) -> u32 {
    if let Some([socket, flags]) = socket_call_return() {
        received(sock_of(socket), ctx.ret::<i64>() as i32, flags as i32);
    }
    0
}

/// Entry of `inet_sendmsg` and `inet6_sendmsg`.
#[kprobe]
pub fn inet_send_enter(ctx: ProbeContext) -> u32 {
    socket_call_enter(ctx.arg(0), None);
    0
}

#[kretprobe]
pub fn inet_send_return(ctx: RetProbeContext) -> u32 {
    if let Some([socket, _]) = socket_call_return() {
        sent(sock_of(socket), ctx.ret::<i64>() as i32);
    }
    0
}

/// A message of `ret` bytes received on kernel socket `sk`.
#[inline(always)]
fn received(sk: u64, ret: i32, flags: i32) {
    if ret <= 0 || flags & MSG_PEEK != 0 {
        return;
    }
    let Some(e) = socket_entry(sk) else {
        return;
    };
    let datagram = e.kind == FdKind::Datagram as u32;
    let Some(io) = io_of(&e.io) else { return };
    let n = ret as u64;
    count(io, OP_READ, n, datagram);
    if !datagram {
        return;
    }
    let Some((nr, _, arg1)) = current_syscall() else {
        return;
    };
    let buf = match nr {
        SYS_READ | SYS_RECVFROM => arg1,
        // msghdr.msg_iov (offset 16) -> iov[0].iov_base
        SYS_RECVMSG => match read_user::<u64>(arg1 + 16).and_then(read_user::<u64>) {
            Some(b) => b,
            None => return,
        },
        _ => return,
    };
    parse_datagram(io, &e.io, e.generation, buf, n, io.last_ns);
}

/// A message of `ret` bytes sent on kernel socket `sk`.
#[inline(always)]
fn sent(sk: u64, ret: i32) {
    if ret <= 0 {
        return;
    }
    if let Some(e) = socket_entry(sk)
        && let Some(io) = io_of(&e.io)
    {
        count(io, OP_WRITE, ret as u64, e.kind == FdKind::Datagram as u32);
    }
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`: a TCP connect
/// on an io's descriptor (SYN_SENT, inside `connect`), so a retransmitted SYN counts too.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_state(ctx: BtfTracePointContext) -> u32 {
    // Only the move to SYN_SENT: it happens inside the process's own `connect`. The others
    // may run for any socket in whatever task the packet arrived in: a connection across
    // network namespaces on one CPU completes the peer's handshake inside the connecting
    // process's syscall, and the peer's socket would be taken for its descriptor's.
    let newstate: i32 = ctx.arg(2);
    if newstate == TCP_SYN_SENT {
        let _ = socket_entry(ctx.arg(0));
    }
    0
}

/// `TCP_SYN_SENT` of the kernel's TCP states (include/net/tcp_states.h).
const TCP_SYN_SENT: i32 = 2;

/// `tcp_destroy_sock(struct sock *sk)`: the socket is gone; its address may be reused.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let _ = SOCKETS.remove(&sk);
    0
}

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason,
/// struct sock *rx_sk)`: a packet dropped; `rx_sk` (Linux 6.12 on) is the receiving socket
/// when the drop happened at it (receive buffer full, socket filter, ...). Kernels from 5.17
/// without `rx_sk` pass the reason only: it is kept for `udp_drop`, which fires next for a
/// drop at a UDP socket's queue and names the socket.
#[btf_tracepoint(function = "kfree_skb")]
pub fn skb_drop(ctx: BtfTracePointContext) -> u32 {
    if kernel!(kfree_skb_args) < 4 {
        // Tracepoint arguments by position, as declared above.
        let reason: u32 = ctx.arg(2);
        if let Some(r) = LAST_REASON.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot; nothing else on this CPU runs while a BPF program does.
            unsafe { *r = reason };
        }
        return 0;
    }
    // Tracepoint arguments by position, as declared above.
    let sk: u64 = ctx.arg(3);
    if sk == 0 {
        return 0;
    }
    charge_drop(sk, ctx.arg(2));
    0
}

/// The reason of the last packet `kfree_skb` dropped on this CPU (kernels whose `kfree_skb`
/// names no socket).
#[map]
static LAST_REASON: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `udp_fail_queue_rcv_skb(int rc, struct sock *sk, ...)`: a datagram that did not fit the
/// socket's receive queue (its buffer, or UDP's memory), on kernels whose `kfree_skb` does not
/// name the receiving socket. The kernel frees it with `kfree_skb` just before, on this CPU
/// in the same softirq: that call's reason is this drop's (none before 5.17).
#[btf_tracepoint(function = "udp_fail_queue_rcv_skb")]
pub fn udp_drop(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(1);
    if sk == 0 {
        return 0;
    }
    let mut reason = REASON_NOT_GIVEN;
    if kernel!(kfree_skb_args) >= 3
        && let Some(r) = LAST_REASON.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU slot, as above.
        unsafe {
            if *r != 0 {
                reason = *r;
            }
            *r = 0;
        }
    }
    charge_drop(sk, reason);
    0
}

/// Counts a drop of `reason` at kernel socket `sk`: to its io, or kept for a socket not known
/// yet.
#[inline(always)]
fn charge_drop(sk: u64, reason: u32) {
    let Some(key) = copied(SOCKETS.get_ptr(&sk)).map(|e| e.io) else {
        record_unclaimed(sk, reason);
        return;
    };
    if let Some(io) = io_of(&key) {
        add_drop(&mut io.drops, reason, 1);
    }
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)`; `err`
/// only from Linux 6.13, which fires it for failed transmissions too. Before, it fired only
/// for a retransmission that went out.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit(ctx: BtfTracePointContext) -> u32 {
    // Tracepoint arguments by position, as declared above.
    let sk: u64 = ctx.arg(0);
    if kernel!(retransmit_args) >= 3 {
        let err: i32 = ctx.arg(2);
        if err != 0 {
            return 0;
        }
    }
    if let Some(e) = copied(SOCKETS.get_ptr(&sk))
        && let Some(io) = io_of(&e.io)
    {
        add_shared(&mut io.tcp_retransmits, 1);
    }
    0
}

/// Forgets a thread's io state when it exits.
#[inline(always)]
pub fn thread_exit(pid_tgid: u64) {
    let _ = SYSCALLS.remove(&pid_tgid);
    let _ = SYSCALL_ARGS.remove(&pid_tgid);
    let _ = CURRENT_IO.remove(&pid_tgid);
}
