//! Where the fields the probes read sit in one attached FFmpeg library.
//!
//! The daemon fills one [`LibLayout`] per attached file (from the table in
//! `observer/src/ffmpeg.rs`, chosen by the library's own version string) into the `LIBS` array
//! map, and attaches every probe on that file with the slot index as its BPF cookie. A probe
//! reads its layout with `bpf_get_attach_cookie`, so two FFmpeg majors in one process (or on
//! one node) are each read with their own offsets.

/// Marks a field that does not exist in this major (for example `AVFrame.key_frame` from
/// libavutil 59 on, where the key flag moved into `AVFrame.flags`).
pub const ABSENT: u16 = u16::MAX;

/// Number of library slots; also the `LIBS` map's size. A node rarely holds more than a few
/// distinct FFmpeg builds, but containers each bring their own.
pub const MAX_LIBS: u32 = 256;

/// Byte offsets of every field a probe reads, for one FFmpeg release: the same on x86-64 and
/// arm64 (both LP64; the layout test compiles the headers for both).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LibLayout {
    /// 1 once the daemon has filled the slot; probes ignore calls through an empty slot.
    pub valid: u32,
    /// libavcodec major version, reported with the stream.
    pub lavc_major: u32,
    // AVCodecContext
    pub ctx_codec_type: u16,
    pub ctx_codec: u16,
    pub ctx_codec_id: u16,
    pub ctx_bit_rate: u16,
    pub ctx_width: u16,
    pub ctx_height: u16,
    pub ctx_pix_fmt: u16,
    pub ctx_sample_rate: u16,
    pub ctx_sample_fmt: u16,
    pub ctx_channels: u16,
    // AVCodec
    pub codec_name: u16,
    // AVPacket
    pub pkt_pts: u16,
    pub pkt_data: u16,
    pub pkt_size: u16,
    pub pkt_flags: u16,
    // AVFrame (libavutil of the same release)
    pub frame_width: u16,
    pub frame_height: u16,
    pub frame_nb_samples: u16,
    pub frame_format: u16,
    pub frame_key_frame: u16,
    pub frame_flags: u16,
    pub frame_pts: u16,
    // AVFilterContext (libavfilter of the same release)
    pub filter_graph: u16,
    // AVFormatContext (libavformat of the same release)
    pub fmt_pb: u16,
    // Hardware acceleration: AVCodecContext.hw_device_ctx (an AVBufferRef whose data is an
    // AVHWDeviceContext), and AVHWDeviceContext.type (libavutil of the same release).
    pub ctx_hw_device_ctx: u16,
    pub hwdev_type: u16,
    /// AVCodecContext.framerate (AVRational): the nominal frame rate the caller set (an
    /// encoder's output rate; a decoder's, where the caller or the bitstream gives one).
    pub ctx_framerate: u16,
    pub _pad: u16,
}

crate::user_pod!(LibLayout);
const _: () = assert!(core::mem::size_of::<LibLayout>() == 64);

/// The probe attached at one symbol: the low 16 bits of a probe's cookie are the library slot,
/// the next 8 bits are the [`Call`](crate::stream::Call), so one program can serve symbols
/// whose work is the same (the flags and non-flags variants of a call).
pub const fn cookie(slot: u32, call: u32) -> u64 {
    ((call as u64) << 16) | slot as u64
}

pub const fn cookie_slot(cookie: u64) -> u32 {
    (cookie & 0xffff) as u32
}

pub const fn cookie_call(cookie: u64) -> u32 {
    ((cookie >> 16) & 0xff) as u32
}
