//! Frame spans: the few frames that leave the kernel one by one.
//!
//! Every frame is counted in the kernel (`stream::Stream`); only a sampled share of them,
//! and every frame slower than a threshold, is also sent whole through the `FRAMES` ring
//! buffer, for the daemon to export as an OpenTelemetry span. The ring buffer is bounded: a
//! full one drops the span and counts it (`counter::FRAMES_LOST`), never the frame's counts.

/// `FrameSpan::flags`: a key frame out of a decoder, a key packet out of an encoder.
pub const FRAME_KEY: u32 = 1;
/// `FrameSpan::flags`: chosen by the sampling ratio.
pub const FRAME_SAMPLED: u32 = 2;
/// `FrameSpan::flags`: kept because it took at least the slow-frame threshold.
pub const FRAME_SLOW: u32 = 4;

/// The sampling ratio as the kernel applies it: a frame is sampled when a 32-bit random
/// number is below this. `FRAME_SAMPLE_ALL` samples every frame; 0 none.
pub const FRAME_SAMPLE_ALL: u64 = 1 << 32;

/// The threshold that keeps no frame for being slow.
pub const SLOW_FRAME_NEVER: u64 = u64::MAX;

/// Converts a ratio in [0, 1] to the kernel's threshold.
pub fn sample_threshold(ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        0
    } else if ratio >= 1.0 {
        FRAME_SAMPLE_ALL
    } else {
        (ratio * FRAME_SAMPLE_ALL as f64) as u64
    }
}

/// One frame through a codec (or filter graph): from the input submitted (packet into a
/// decoder, frame into an encoder) to the output with the same pts returned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameSpan {
    pub tgid: u32,
    /// `stream::Direction` of the stream.
    pub direction: u32,
    /// The stream's identity: context and generation (`Stream::opened_ns`).
    pub ctx: u64,
    pub opened_ns: u64,
    /// Input submitted and output returned, `bpf_ktime_get_boot_ns`.
    pub start_ns: u64,
    pub end_ns: u64,
    pub pts: i64,
    /// Bytes of the frame's packet: the one a decoder took, the one an encoder gave.
    pub size: u32,
    pub flags: u32,
}

crate::user_pod!(FrameSpan);
const _: () = assert!(core::mem::size_of::<FrameSpan>() == 56);
