//! The file descriptors of ios, seen from the kernel: syscall tracepoints tie descriptors
//! created while a thread works on an io (`probes::io::CURRENT_IO`) to that io, count the
//! bytes every read and write moves on them, and parse received datagrams for RTP sequence
//! gaps, jitter and MPEG-TS continuity errors. Socket tracepoints learn which kernel socket
//! backs a descriptor, so drops (`skb:kfree_skb`, with the kernel's own reason) and TCP
//! retransmissions, which happen outside the process, are charged to the right io.
//!
//! Every program here runs for every process on the node; each starts with one hash lookup
//! that fails fast for descriptors and threads that are not ours.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user_str_bytes},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use observer_common::{
    event::EventKind,
    io::{
        CcKey, DROP_SLOTS, FdEntry, FdKind, Io, IoEvent, IoKey, MAX_FDS, OP_READ, OP_WRITE, Rtp,
        TEXT_LEN,
    },
    stream::counter,
};

use super::{
    codec::{add_shared, now_ns},
    io::{CURRENT_IO, io_of},
};
use crate::maps::{EVENTS, bump, copied};

/// Descriptors tied to an io, by `tgid << 32 | fd`. LRU: a process killed without closing
/// them leaves entries that age out.
#[map]
pub static FDS: LruHashMap<u64, FdEntry> = LruHashMap::with_max_entries(MAX_FDS, 0);

/// What a syscall's entry leaves for its exit, by `pid_tgid`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    pub fd_key: u64,
    /// The buffer (read/write), `struct msghdr *` (recvmsg/sendmsg) or path (openat).
    pub buf: u64,
    pub io: IoKey,
    /// [`FdKind`]; 0 marks the entry consumed.
    pub kind: u32,
    pub mode: u32,
}

const MODE_BUF: u32 = 0;
const MODE_MSG: u32 = 1;
const MODE_VEC: u32 = 2;
const MODE_OPEN: u32 = 3;
const MODE_SOCKET: u32 = 4;

#[map]
pub static SYSCALLS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(MAX_FDS, 0);

/// Kernel sockets (`struct sock *`) of io descriptors.
#[map]
static SOCKETS: LruHashMap<u64, IoKey> = LruHashMap::with_max_entries(MAX_FDS, 0);

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
    let args = SyscallArgs {
        fd_key: key,
        buf: arg(ctx, ARG1),
        io: fd.io,
        kind: fd.kind,
        mode,
    };
    let _ = SYSCALLS.insert(&pid_tgid, &args, 0);
}

/// `read`, `pread64`, `recvfrom`, `write`, `pwrite64`, `sendto` entries: `(fd, buf, ...)`.
#[tracepoint]
pub fn io_enter_buf(ctx: TracePointContext) -> u32 {
    io_enter(&ctx, MODE_BUF);
    0
}

/// `recvmsg`, `sendmsg` entries: `(fd, struct msghdr *msg, flags)`.
#[tracepoint]
pub fn io_enter_msg(ctx: TracePointContext) -> u32 {
    io_enter(&ctx, MODE_MSG);
    0
}

/// `readv`, `writev` entries: `(fd, const struct iovec *vec, vlen)`; payloads not parsed.
#[tracepoint]
pub fn io_enter_vec(ctx: TracePointContext) -> u32 {
    io_enter(&ctx, MODE_VEC);
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
    if args.mode > MODE_VEC {
        return;
    }
    let ret = arg(ctx, RET) as i64;
    if ret <= 0 {
        return;
    }
    let n = ret as u64;
    // The descriptor's identity over time: its number is reused after a close.
    let mut fd_generation = 0;
    if let Some(fd) = FDS.get_ptr_mut(&args.fd_key) {
        // SAFETY: map value pointer, valid for this program run.
        let fd = unsafe { &mut *fd };
        fd_generation = fd.opened_ns;
        if let Some(b) = fd.bytes.get_mut(op) {
            add_shared(b, n);
        }
    }
    let Some(io) = io_of(&args.io) else { return };
    if let Some(b) = io.bytes.get_mut(op) {
        add_shared(b, n);
    }
    if let Some(c) = io.syscalls.get_mut(op) {
        add_shared(c, 1);
    }
    let now = now_ns();
    io.last_ns = now;
    if args.kind != FdKind::Datagram as u32 {
        return;
    }
    if let Some(d) = io.datagrams.get_mut(op) {
        add_shared(d, 1);
    }
    if op != OP_READ {
        return;
    }
    let buf = match args.mode {
        MODE_BUF => args.buf,
        // msghdr.msg_iov (offset 16) -> iov[0].iov_base
        MODE_MSG => match read_user::<u64>(args.buf + 16).and_then(read_user::<u64>) {
            Some(b) => b,
            None => return,
        },
        _ => return,
    };
    parse_datagram(io, &args.io, fd_generation, buf, n, now);
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
const NO_CC: u32 = 0xff;
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

/// Parses a received datagram: an RTP header (if any), then the MPEG-TS packets behind it.
/// Reads only the few header bytes it needs, straight from the process's buffer.
#[inline(always)]
fn parse_datagram(io: &mut Io, key: &IoKey, fd_generation: u64, buf: u64, len: u64, now: u64) {
    let Some(h) = read_user::<[u8; 12]>(buf) else {
        return;
    };
    let mut ts_at = 0u64;
    let b0 = h[0];
    if b0 != TS_SYNC {
        // RTP version 2; RTCP shares the first bits, and its packet types 200-204 read as
        // payload types 72-76 (RFC 5761).
        let pt = (h[1] & 0x7f) as u32;
        if b0 >> 6 != 2 || (72..=76).contains(&pt) {
            return;
        }
        let mut hdr = 12 + 4 * (b0 & 0x0f) as u64;
        if b0 & 0x10 != 0 {
            let Some(ext) = read_user::<[u8; 4]>(buf + hdr) else {
                return;
            };
            hdr += 4 + 4 * be16(&ext, 2) as u64;
        }
        rtp_packet(&mut io.rtp, fd_generation, &h, pt, now);
        ts_at = hdr;
    }
    let mut i = 0;
    while i < TS_PER_DATAGRAM {
        let off = ts_at + i * TS_PACKET;
        if off + TS_PACKET > len {
            break;
        }
        let Some(p) = read_user::<[u8; 6]>(buf + off) else {
            break;
        };
        if p[0] != TS_SYNC {
            break;
        }
        ts_packet(io, key, &p);
        i += 1;
    }
}

/// One MPEG-TS packet's continuity counter, judged exactly as FFmpeg's demuxer does
/// (`libavformat/mpegts.c`, `handle_packet`): the counter advances only with a payload, a
/// repeat without one is fine, a discontinuity indicator or the null PID excuses anything.
#[inline(always)]
fn ts_packet(io: &mut Io, key: &IoKey, p: &[u8; 6]) {
    let pid = ((p[1] as u32 & 0x1f) << 8) | p[2] as u32;
    let b3 = p[3];
    let afc = (b3 >> 4) & 3;
    if afc == 0 || pid == TS_NULL_PID {
        return;
    }
    add_shared(&mut io.ts_packets, 1);
    let has_payload = afc & 1 != 0;
    let discontinuity = afc & 2 != 0 && p[4] != 0 && p[5] & 0x80 != 0;
    let cc = (b3 & 0x0f) as u32;
    let ck = CcKey {
        io: *key,
        pid,
        _pad: 0,
    };
    match CONTINUITY.get_ptr_mut(&ck) {
        Some(last) => {
            // SAFETY: map value pointer, valid for this program run.
            let last = unsafe { &mut *last };
            if *last != NO_CC && !discontinuity {
                let expected = if has_payload {
                    (*last + 1) & 0x0f
                } else {
                    *last
                };
                if expected != cc {
                    add_shared(&mut io.ts_cc_errors, 1);
                }
            }
            *last = cc;
        }
        None => {
            let _ = CONTINUITY.insert(&ck, &cc, 0);
        }
    }
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
    let Some(io) = copied(CURRENT_IO.get_ptr(&pid_tgid)) else {
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
    let Some(io) = copied(CURRENT_IO.get_ptr(&pid_tgid)) else {
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
    match copied(CURRENT_IO.get_ptr(&pid_tgid)) {
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

/// `sock_recv_length(struct sock *sk, int ret, int flags)` and `sock_send_length(...)`: they
/// fire inside the recv/send syscalls the programs above track, which gives the socket behind
/// the descriptor.
#[inline(always)]
fn learn_socket(ctx: &BtfTracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = copied(SYSCALLS.get_ptr(&pid_tgid)) else {
        return;
    };
    if args.kind == 0 || args.mode > MODE_VEC {
        return;
    }
    let Some(fd) = FDS.get_ptr_mut(&args.fd_key) else {
        return;
    };
    // SAFETY: map value pointer, valid for this program run.
    let fd = unsafe { &mut *fd };
    if fd.sk != 0 {
        return;
    }
    // The tracepoint's first argument is the socket.
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return;
    }
    fd.sk = sk;
    let _ = SOCKETS.insert(&sk, &fd.io, 0);
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv(ctx: BtfTracePointContext) -> u32 {
    learn_socket(&ctx);
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send(ctx: BtfTracePointContext) -> u32 {
    learn_socket(&ctx);
    0
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`: a TCP connect
/// on an io's descriptor (SYN_SENT, inside `connect`), so a retransmitted SYN counts too.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_state(ctx: BtfTracePointContext) -> u32 {
    learn_socket(&ctx);
    0
}

/// `tcp_destroy_sock(struct sock *sk)`: the socket is gone; its address may be reused.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let _ = SOCKETS.remove(&sk);
    0
}

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason,
/// struct sock *rx_sk)`: a packet dropped; `rx_sk` (Linux 6.12 on) is the receiving socket
/// when the drop happened at it (receive buffer full, socket filter, ...).
#[btf_tracepoint(function = "kfree_skb")]
pub fn skb_drop(ctx: BtfTracePointContext) -> u32 {
    // Tracepoint arguments by position, as declared above.
    let sk: u64 = ctx.arg(3);
    if sk == 0 {
        return 0;
    }
    let Some(key) = copied(SOCKETS.get_ptr(&sk)) else {
        return 0;
    };
    // Tracepoint arguments by position, as declared above.
    let reason: u32 = ctx.arg(2);
    let Some(io) = io_of(&key) else { return 0 };
    let mut i = 0;
    while i < DROP_SLOTS {
        let last = i == DROP_SLOTS - 1;
        if let Some(d) = io.drops.get_mut(i) {
            if d.reason == 0 {
                d.reason = if last { u32::MAX } else { reason };
            }
            if d.reason == reason || last {
                add_shared(&mut d.count, 1);
                return 0;
            }
        }
        i += 1;
    }
    0
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)`.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit(ctx: BtfTracePointContext) -> u32 {
    // Tracepoint arguments by position, as declared above.
    let (sk, err): (u64, i32) = (ctx.arg(0), ctx.arg(2));
    if err != 0 {
        return 0;
    }
    if let Some(key) = copied(SOCKETS.get_ptr(&sk))
        && let Some(io) = io_of(&key)
    {
        add_shared(&mut io.tcp_retransmits, 1);
    }
    0
}

/// Forgets a thread's io state when it exits.
#[inline(always)]
pub fn thread_exit(pid_tgid: u64) {
    let _ = SYSCALLS.remove(&pid_tgid);
    let _ = CURRENT_IO.remove(&pid_tgid);
}
