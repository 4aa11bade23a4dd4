//! Per-stream state aggregated in the kernel.
//!
//! A *stream* is one codec context (a decoder or an encoder) or one filter graph in one
//! process. The kernel keeps a [`Stream`] per live `(tgid, context)` in the `STREAMS` map and
//! counts into it (plain adds: FFmpeg serializes the calls on one context); nothing per
//! frame reaches user space. When a context is
//! freed, closed or reopened, the kernel moves its `Stream` to `ENDED_STREAMS` under an
//! [`EndedKey`] that adds the stream's open time (its generation), so a reused context pointer
//! starts a new stream and the old one's final counts wait there until the daemon collects them.

/// What a stream does. Known from the first API call on it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Unknown = 0,
    Decode = 1,
    Encode = 2,
    /// A libavfilter graph: frames in through buffer sources, out through buffer sinks.
    Filter = 3,
}

impl Direction {
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Decode,
            2 => Self::Encode,
            3 => Self::Filter,
            _ => Self::Unknown,
        }
    }
}

/// The API calls the probes time and count. Values index [`Stream::calls`] and travel in the
/// probe cookie.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    SendPacket = 0,
    ReceiveFrame = 1,
    SendFrame = 2,
    ReceivePacket = 3,
    DecodeSubtitle = 4,
    EncodeSubtitle = 5,
    /// `avcodec_encode_video2` / `avcodec_encode_audio2`, libavcodec 58 only.
    EncodeLegacy = 6,
    BuffersrcAddFrame = 7,
    BuffersinkGetFrame = 8,
}

/// Number of [`Call`] values.
pub const CALLS: usize = 9;

impl Call {
    pub const ALL: [Call; CALLS] = [
        Call::SendPacket,
        Call::ReceiveFrame,
        Call::SendFrame,
        Call::ReceivePacket,
        Call::DecodeSubtitle,
        Call::EncodeSubtitle,
        Call::EncodeLegacy,
        Call::BuffersrcAddFrame,
        Call::BuffersinkGetFrame,
    ];

    pub const fn from_u32(v: u32) -> Option<Self> {
        if (v as usize) < CALLS {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// Which of a stream's two call histograms this call is timed in: 0 for calls that feed
    /// the stream (packets into a decoder, frames into an encoder or a graph), 1 for calls
    /// that take its output.
    pub const fn side(self) -> usize {
        match self {
            Call::SendPacket
            | Call::SendFrame
            | Call::DecodeSubtitle
            | Call::EncodeSubtitle
            | Call::EncodeLegacy
            | Call::BuffersrcAddFrame => 0,
            Call::ReceiveFrame | Call::ReceivePacket | Call::BuffersinkGetFrame => 1,
        }
    }

    /// The direction a stream has if this call is made on it.
    pub const fn direction(self) -> Direction {
        match self {
            Call::SendPacket | Call::ReceiveFrame | Call::DecodeSubtitle => Direction::Decode,
            Call::SendFrame | Call::ReceivePacket | Call::EncodeSubtitle | Call::EncodeLegacy => {
                Direction::Encode
            }
            Call::BuffersrcAddFrame | Call::BuffersinkGetFrame => Direction::Filter,
        }
    }
}

/// `Stream::flags`: the context was opened inside `avformat_find_stream_info`, which decodes
/// a few packets on a throwaway decoder to probe the input. Such a stream is not the
/// pipeline's and is never counted or exported.
pub const FLAG_PROBE_DECODER: u32 = 1;
/// `Stream::flags`: the kernel saw `avcodec_open2` for this context (as opposed to meeting it
/// first in a data call, for processes that opened it before the daemon attached).
pub const FLAG_SEEN_OPEN: u32 = 2;
/// `Stream::flags`: a read of this stream's context failed its sanity check; the stream is
/// not counted, and the library's failure counter was raised.
pub const FLAG_INSANE: u32 = 4;

/// Number of log2 buckets in a [`Histogram`]: bucket `i` holds durations in
/// `[2^i, 2^(i+1))` nanoseconds (bucket 0 also holds 0), and the last holds everything from
/// `2^(HIST_BUCKETS-1)` ns (about 69 s) up.
pub const HIST_BUCKETS: usize = 37;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Histogram {
    pub buckets: [u64; HIST_BUCKETS],
    pub sum_ns: u64,
}

impl Histogram {
    pub const fn bucket(ns: u64) -> usize {
        let i = log2(ns) as usize;
        if i >= HIST_BUCKETS {
            HIST_BUCKETS - 1
        } else {
            i
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// floor(log2(v)), and 0 for 0. Written as a fixed sequence of shifts because BPF has no
/// count-leading-zeros instruction and the verifier wants no loops on the hot path.
#[inline(always)]
pub const fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >> 32 != 0 {
        v >>= 32;
        r += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        r += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        r += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        r += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        r += 2;
    }
    if v >> 1 != 0 {
        r += 1;
    }
    r
}

/// One kind of failed call: which call and which AVERROR, and how often.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorCount {
    pub call: u32,
    /// The (negative) AVERROR code; 0 marks a free slot.
    pub code: i32,
    pub count: u64,
}

/// Distinct (call, error) pairs kept per stream. A stream that fails in more ways than this
/// counts the rest in the last slot under code [`ERROR_OTHER`].
pub const ERROR_SLOTS: usize = 6;
/// Code of the overflow slot.
pub const ERROR_OTHER: i32 = i32::MIN;

pub const CODEC_NAME_LEN: usize = 32;
pub const COMM_LEN: usize = 16;

/// Everything the kernel knows and counts about one stream.
///
/// Counters are named by position, because their meaning follows the direction: a decoder
/// takes packets in and gives frames out, an encoder the reverse, a filter graph frames both
/// ways.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    /// `bpf_ktime_get_boot_ns` when the stream began: its generation.
    pub opened_ns: u64,
    /// Last successful call that moved data, same clock.
    pub last_ns: u64,
    /// The context (or filter graph) address, for the daemon's stream identity.
    pub ctx: u64,
    pub tgid: u32,
    /// Library slot whose layout reads this stream.
    pub slot: u32,
    /// [`Direction`]
    pub direction: u32,
    /// AVMediaType: 0 video, 1 audio, 2 data, 3 subtitle, 4 attachment.
    pub media: i32,
    pub codec_id: u32,
    pub flags: u32,
    pub width: u32,
    pub height: u32,
    /// AVPixelFormat for video, AVSampleFormat for audio.
    pub format: i32,
    pub sample_rate: u32,
    pub channels: u32,
    /// `AVHWDeviceType` of the context's `hw_device_ctx` at open (0: none).
    pub hw_device_type: u32,
    /// AVCodecContext.framerate at open (num, den); 0/0 when the caller set none.
    pub frame_rate: [i32; 2],
    pub bit_rate: i64,
    /// Address of the codec's name in the process. BPF cannot fault pages in, so when the
    /// name's page is not resident yet the kernel leaves `codec_name` empty and the daemon
    /// reads it from the process.
    pub codec_name_ptr: u64,
    /// Address of `avcodec_open2` in the process (0 if the open was not seen): with the
    /// symbol's address in the file it gives the library's load bias, so the daemon can read
    /// the codec name from the library file even after the process is gone.
    pub open_ip: u64,
    pub codec_name: [u8; CODEC_NAME_LEN],
    pub comm: [u8; COMM_LEN],
    /// Packets into a decoder, frames into an encoder or graph.
    pub in_count: u64,
    /// Payload bytes of the packets counted in `in_count` (decoders).
    pub in_bytes: u64,
    /// Frames out of a decoder or graph, packets out of an encoder.
    pub out_count: u64,
    /// Payload bytes of the packets counted in `out_count` (encoders).
    pub out_bytes: u64,
    /// Key frames out of a decoder, key packets out of an encoder.
    pub keyframes: u64,
    /// Outputs whose timestamp matched no input still in flight (no latency sample).
    pub latency_unmatched: u64,
    pub errors: [ErrorCount; ERROR_SLOTS],
    /// Input submitted -> output with the same pts returned.
    pub latency: Histogram,
    /// Time inside the calls, per side (see [`Call::side`]); `side_call` says which call
    /// each side last timed (a stream uses one call per side: `avcodec_send_packet` and
    /// `avcodec_receive_frame` for a decoder, for example).
    pub calls: [Histogram; 2],
    pub side_call: [u32; 2],
    /// Inputs waiting for their output, for the latency histogram: a ring, searched newest
    /// first (a decoder's output matches one of the last few inputs; an encoder with
    /// lookahead one a few dozen back).
    pub inflight: [Inflight; INFLIGHT_SLOTS],
    pub inflight_next: u32,
    pub _pad2: u32,
    /// When the context was freed, closed or reopened (0 while live, and for a stream whose
    /// process died without freeing it).
    pub closed_ns: u64,
    /// The packet size of each input in `inflight` (decoders), for frame spans.
    pub inflight_size: [u32; INFLIGHT_SLOTS],
    /// The io (its [`crate::io::IoKey::id`], same process) whose packets a decoder takes or
    /// that an encoder's packets go to; 0 until linked.
    pub io: u64,
}

/// Inputs a stream can have in flight before the oldest is forgotten (its output then counts
/// as unmatched). x264's deepest presets hold about 70 frames.
pub const INFLIGHT_SLOTS: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Inflight {
    pub pts: i64,
    /// When the input was submitted; 0 marks a free slot.
    pub at_ns: u64,
}

crate::user_pod!(Stream, StreamKey, EndedKey);
const _: () = assert!(core::mem::size_of::<Stream>().is_multiple_of(8));

/// Key of a live stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ctx: u64,
}

/// Key of an ended stream: the live key plus the generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndedKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ctx: u64,
    pub opened_ns: u64,
}

/// AVERROR(EAGAIN): "call the other side first"; not an error.
pub const AVERROR_EAGAIN: i32 = -11;
/// AVERROR_EOF: end of stream; not an error.
pub const AVERROR_EOF: i32 = -0x2046_4f45;
/// AV_NOPTS_VALUE.
pub const NOPTS: i64 = i64::MIN;

/// Sizes of the kernel maps. User space reads them to report fill levels.
pub const MAX_STREAMS: u32 = 8192;
pub const MAX_ENDED_STREAMS: u32 = 8192;
pub const MAX_CALLS_IN_PROGRESS: u32 = 16384;

/// Indexes of the `COUNTERS` per-CPU array: the kernel side's own health.
pub mod counter {
    /// A stream could not be inserted: `STREAMS` full.
    pub const STREAMS_FULL: u32 = 0;
    /// An ended stream could not be kept: `ENDED_STREAMS` full; its final counts are lost.
    pub const ENDED_FULL: u32 = 1;
    /// A call's entry state could not be stored: the call is not counted.
    pub const CALLS_FULL: u32 = 2;
    /// A read from a pipeline's memory failed or gave an impossible value.
    pub const READ_FAILED: u32 = 3;
    /// Ring buffer full: a process event was dropped.
    pub const EVENTS_LOST: u32 = 4;
    /// A log message's key could not be inserted: `LOGS` full; the message is not counted.
    pub const LOGS_FULL: u32 = 5;
    /// An io or one of its descriptors could not be inserted: `IOS` or `FDS` full.
    pub const IOS_FULL: u32 = 6;
    /// `FRAMES` ring buffer full: a frame span was dropped (its frame is still counted).
    pub const FRAMES_LOST: u32 = 7;
    pub const COUNT: u32 = 8;
}

/// Cookie call kinds of the probes that mark a stream's life, beyond the data calls of
/// [`Call`].
pub mod hook {
    /// `avcodec_open2`
    pub const OPEN: u32 = 16;
    /// `avformat_find_stream_info`
    pub const FIND_STREAM_INFO: u32 = 17;
    /// `avcodec_free_context(AVCodecContext **)`
    pub const FREE_CONTEXT: u32 = 18;
    /// `avcodec_close(AVCodecContext *)`
    pub const CLOSE: u32 = 19;
    /// `avfilter_graph_free(AVFilterGraph **)`
    pub const GRAPH_FREE: u32 = 20;
    /// `av_vlog`
    pub const LOG: u32 = 21;
    /// `avformat_open_input(AVFormatContext **ps, const char *url, ...)`
    pub const OPEN_INPUT: u32 = 22;
    /// `avformat_alloc_output_context2(AVFormatContext **ctx, fmt, format_name, filename)`
    pub const ALLOC_OUTPUT: u32 = 23;
    /// `avio_open2(AVIOContext **s, const char *url, int flags, ...)`
    pub const AVIO_OPEN: u32 = 24;
    /// `av_read_frame(AVFormatContext *s, AVPacket *pkt)`
    pub const READ_FRAME: u32 = 25;
    /// `avformat_write_header(AVFormatContext *s, ...)`
    pub const WRITE_HEADER: u32 = 26;
    /// `av_interleaved_write_frame(AVFormatContext *s, AVPacket *pkt)`
    pub const INTERLEAVED_WRITE: u32 = 27;
    /// `av_write_frame(AVFormatContext *s, AVPacket *pkt)`
    pub const WRITE_FRAME: u32 = 28;
    /// `av_write_trailer(AVFormatContext *s)`
    pub const WRITE_TRAILER: u32 = 29;
    /// `avformat_close_input(AVFormatContext **s)`
    pub const CLOSE_INPUT: u32 = 30;
    /// `avformat_free_context(AVFormatContext *s)`
    pub const FREE_FORMAT: u32 = 31;
}
