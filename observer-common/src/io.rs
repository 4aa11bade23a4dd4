//! Inputs and outputs: what a pipeline reads from and writes to, aggregated in the kernel.
//!
//! An *io* is one `avformat_open_input` (an input), one `avformat_alloc_output_context2` (an
//! output), or one `avio_open2` that belongs to neither (an application's own AVIO). The
//! kernel keeps an [`Io`] per `(tgid, opened_ns)` in the `IOS` map. File descriptors created
//! while an io is being opened, read or written (the sockets of an input, the segment files
//! of an HLS output) are tied to it, so the bytes, datagrams, kernel drops and TCP
//! retransmissions on them count into it; the URL travels once, in an [`IoEvent`].

/// What an io does.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDirection {
    Input = 1,
    Output = 2,
}

/// What a file descriptor tied to an io is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    File = 1,
    /// A datagram socket: its received payloads are parsed for RTP and MPEG-TS.
    Datagram = 2,
    /// A stream socket (TCP) or any other socket.
    Stream = 3,
}

/// Key of an io: the process and the boot-clock time the io was opened (its identity and
/// generation at once).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IoKey {
    pub tgid: u32,
    pub _pad: u32,
    pub id: u64,
}

/// Kinds of kernel drops kept per io; more kinds count in the last slot with reason 0.
pub const DROP_SLOTS: usize = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DropCount {
    /// `enum skb_drop_reason` of the running kernel; 0 marks a free slot (0 is
    /// SKB_NOT_DROPPED_YET, never a drop).
    pub reason: u32,
    pub _pad: u32,
    pub count: u64,
}

/// Sockets whose drops are kept until an io claims them (see [`UnclaimedDrops`]).
pub const UNCLAIMED_SOCKETS: u32 = 1024;

/// Drops at a socket before it was known to be an io's: a UDP input's socket is learned at
/// its first read, and its buffer can overflow before.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UnclaimedDrops {
    /// When the first of them happened: an entry older than the descriptor that claims its
    /// socket's address was another socket's.
    pub first_ns: u64,
    pub drops: [DropCount; DROP_SLOTS],
}

/// Index of [`Io::bytes`] and the other per-operation pairs.
pub const OP_READ: usize = 0;
pub const OP_WRITE: usize = 1;

/// Everything the kernel counts for one io.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Io {
    pub opened_ns: u64,
    /// When the io was closed (`avformat_close_input`, `avformat_free_context`), or 0.
    pub closed_ns: u64,
    /// Last byte moved or packet demuxed/muxed, same clock.
    pub last_ns: u64,
    pub tgid: u32,
    /// [`IoDirection`]
    pub direction: u32,
    /// The AVERROR the open failed with, or 0.
    pub open_error: i32,
    /// 1 once the open succeeded.
    pub opened: u32,
    /// The `AVFormatContext` (0 for an io of its own AVIO), to attribute its log messages.
    pub ctx: u64,
    /// The io whose call created this one (an HLS muxer's inner MPEG-TS muxer, an HLS
    /// demuxer's per-segment demuxer), or 0. Inner ios are FFmpeg's plumbing: their files and
    /// sockets count into the outer io, and they are not exported.
    pub parent: u64,
    /// Bytes, calls and datagrams on the io's file descriptors, per [`OP_READ`]/[`OP_WRITE`].
    pub bytes: [u64; 2],
    pub syscalls: [u64; 2],
    pub datagrams: [u64; 2],
    /// File descriptors tied to the io, by [`FdKind`] - 1.
    pub fds: [u64; 3],
    /// Packets and payload bytes `av_read_frame` returned (inputs).
    pub demux_packets: u64,
    pub demux_bytes: u64,
    /// Of those, packets the demuxer flagged `AV_PKT_FLAG_CORRUPT`.
    pub corrupt_packets: u64,
    /// Packets and bytes written through `av_(interleaved_)write_frame` (outputs).
    pub mux_packets: u64,
    pub mux_bytes: u64,
    pub mux_errors: u64,
    /// MPEG-TS packets parsed from received datagrams, and continuity-counter errors in
    /// them (counted exactly as FFmpeg's demuxer does).
    pub ts_packets: u64,
    pub ts_cc_errors: u64,
    /// Continuity state of the io's first [`CC_SLOTS`] PIDs, inline: a map lookup per
    /// transport packet would be most of the cost of a datagram. More PIDs go to a map.
    pub cc: [CcSlot; CC_SLOTS],
    pub rtp: Rtp,
    pub drops: [DropCount; DROP_SLOTS],
    pub tcp_retransmits: u64,
}

/// RTP receive statistics of an io's RTP socket (RFC 3550, appendix A.1 and A.8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Rtp {
    pub ssrc: u32,
    pub payload_type: u32,
    /// The socket the sequence below is counted on (its descriptor's open time: numbers are
    /// reused). A new socket or a new SSRC starts a new sequence (FFmpeg's RTP demuxer reads
    /// its first packet on a throwaway socket); the old one's totals move to `prior_*`.
    pub socket: u64,
    pub prior_expected: u64,
    pub prior_received: u64,
    /// Extended sequence numbers (cycles in the high bits) of the first and the highest
    /// packet seen; `received` counts distinct packets.
    pub base_seq: u64,
    pub max_seq: u64,
    pub received: u64,
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Bit i: packet `max_seq - i` arrived (the last 64), to tell duplicates from late ones.
    pub window: u64,
    /// Interarrival jitter in 1/16 timestamp units (the RFC's fixed-point form), and the
    /// previous packet's transit time in timestamp units.
    pub jitter16: u64,
    pub transit: i64,
}

/// What the socket programs need of an io descriptor, by its kernel socket (`struct sock *`,
/// the `SOCKETS` map): one lookup per message.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockEntry {
    pub io: IoKey,
    /// The descriptor's open time (see `Rtp::socket`).
    pub generation: u64,
    /// [`FdKind`]
    pub kind: u32,
    pub _pad: u32,
}

crate::user_pod!(IoKey, Io, FdEntry, IoEvent, PacketKey, CcKey, SockEntry);
const _: () = assert!(core::mem::size_of::<Io>().is_multiple_of(8));

/// A file descriptor tied to an io, keyed by `tgid << 32 | fd` in the `FDS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdEntry {
    pub io: IoKey,
    /// [`FdKind`]
    pub kind: u32,
    pub _pad: u32,
    pub opened_ns: u64,
    /// Bytes moved on this descriptor, per [`OP_READ`]/[`OP_WRITE`], for its close event.
    pub bytes: [u64; 2],
    /// The kernel socket (`struct sock *`) behind it, once seen, to forget on close.
    pub sk: u64,
}

/// Bytes of a URL or path an event carries; longer ones are cut.
pub const TEXT_LEN: usize = 256;

/// The rare io events: opens (with the URL) and closes of ios and of their files.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoEvent {
    /// [`crate::event::EventKind`]: `IoOpen`, `FileOpen` or `FileClose`.
    pub kind: u32,
    pub tgid: u32,
    pub ktime_ns: u64,
    pub io: u64,
    pub fd: i32,
    /// IoOpen: [`IoDirection`]; FileClose: [`FdKind`].
    pub direction: u32,
    /// FileClose: bytes read and written on the descriptor.
    pub bytes: [u64; 2],
    /// FileClose: how long the descriptor was open.
    pub duration_ns: u64,
    /// IoOpen: the URL; FileOpen: the path; NUL-terminated.
    pub text: [u8; TEXT_LEN],
}

/// PIDs whose continuity state sits inline in an [`Io`]: PAT, PMT, SDT, PCR, and a few
/// elementary streams.
pub const CC_SLOTS: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CcSlot {
    pub pid: u16,
    pub last: u8,
    /// 1 once the slot holds a PID.
    pub used: u8,
}

/// Key of the per-PID continuity state of an io's MPEG-TS, for PIDs beyond the inline slots.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CcKey {
    pub io: IoKey,
    pub pid: u32,
    pub _pad: u32,
}

/// Key of a packet's data pointer in a process, to link inputs and outputs to codec streams.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PacketKey {
    pub tgid: u32,
    pub _pad: u32,
    pub data: u64,
}

pub const MAX_IOS: u32 = 4096;
pub const MAX_FDS: u32 = 16384;

impl Rtp {
    /// Packets expected from the sequence numbers, over every sequence.
    pub fn expected(&self) -> u64 {
        let current = if self.received == 0 {
            0
        } else {
            self.max_seq - self.base_seq + 1
        };
        self.prior_expected + current
    }

    pub fn received_total(&self) -> u64 {
        self.prior_received + self.received
    }
}
