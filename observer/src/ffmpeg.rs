//! Everything observer knows about FFmpeg, as data: which symbols it probes, how to read a
//! library's version, and where the fields it reads sit in each release.
//!
//! The layouts are checked against the real headers of every major Debian ships
//! (`tests/tests/layouts.rs`: 58 from bullseye, 59 from bookworm, 61 from trixie, 63 from
//! sid) and, for the majors no registry ships headers for (60 and 62), against the
//! `AVOption` offset tables of the real libraries PyAV bundles (12.3.0: FFmpeg 6.1, 16.0.1:
//! FFmpeg 8.0). Within a major FFmpeg only appends fields, so one table per major is sound.

use observer_common::{
    layout::{ABSENT, LibLayout},
    stream::{Call, hook},
};

/// What a probe on a symbol does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A data call: entry and return probes, counted into the stream.
    Data(Call),
    /// `avcodec_open2`: entry and return.
    Open,
    /// `avformat_find_stream_info`: entry and return, scoping probe decoders.
    FindStreamInfo,
    /// The stream ends (entry probe only): the value is the cookie kind from `hook`.
    End(u32),
    /// `av_vlog`: a log message (entry probe only).
    Log,
    /// An input or output is created (`hook::OPEN_INPUT`, `ALLOC_OUTPUT`, `AVIO_OPEN`): entry
    /// and return.
    IoOpen(u32),
    /// An input is read or an output written (`hook::READ_FRAME`, `WRITE_*`): entry and
    /// return.
    IoCall(u32),
    /// An input or output is closed (`hook::CLOSE_INPUT`, `FREE_FORMAT`): entry only.
    IoClose(u32),
}

impl Hook {
    /// Hooks that follow inputs and outputs (off with `--io-stats false`).
    pub fn is_io(self) -> bool {
        matches!(self, Hook::IoOpen(_) | Hook::IoCall(_) | Hook::IoClose(_))
    }
}

/// One probed symbol.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub symbol: &'static str,
    pub hook: Hook,
    /// Probe this symbol only if the file lacks this other one. `avcodec_receive_frame` is a
    /// tail jump to `avcodec_receive_frame_flags` from libavcodec 62 on, so probing both would
    /// count every frame twice.
    pub unless: Option<&'static str>,
    /// The probe reads fields through the library's layout (so the file needs a known version).
    pub needs_layout: bool,
}

const fn data(symbol: &'static str, call: Call) -> Probe {
    Probe {
        symbol,
        hook: Hook::Data(call),
        unless: None,
        needs_layout: true,
    }
}

pub const PROBES: &[Probe] = &[
    Probe {
        symbol: "avcodec_open2",
        hook: Hook::Open,
        unless: None,
        needs_layout: true,
    },
    data("avcodec_send_packet", Call::SendPacket),
    data("avcodec_receive_frame_flags", Call::ReceiveFrame),
    Probe {
        unless: Some("avcodec_receive_frame_flags"),
        ..data("avcodec_receive_frame", Call::ReceiveFrame)
    },
    data("avcodec_send_frame", Call::SendFrame),
    data("avcodec_receive_packet", Call::ReceivePacket),
    data("avcodec_decode_subtitle2", Call::DecodeSubtitle),
    data("avcodec_encode_subtitle", Call::EncodeSubtitle),
    // libavcodec 58 only; avcodec_send_frame calls them internally there, which the kernel
    // side's nesting guard keeps from being counted twice.
    data("avcodec_encode_video2", Call::EncodeLegacy),
    data("avcodec_encode_audio2", Call::EncodeLegacy),
    Probe {
        symbol: "avcodec_free_context",
        hook: Hook::End(hook::FREE_CONTEXT),
        unless: None,
        needs_layout: false,
    },
    // Gone from libavcodec 62 on.
    Probe {
        symbol: "avcodec_close",
        hook: Hook::End(hook::CLOSE),
        unless: None,
        needs_layout: false,
    },
    Probe {
        symbol: "avformat_find_stream_info",
        hook: Hook::FindStreamInfo,
        unless: None,
        needs_layout: false,
    },
    data("av_buffersrc_add_frame_flags", Call::BuffersrcAddFrame),
    data("av_buffersink_get_frame_flags", Call::BuffersinkGetFrame),
    // libavutil: every av_log passes through here.
    Probe {
        symbol: "av_vlog",
        hook: Hook::Log,
        unless: None,
        needs_layout: false,
    },
    Probe {
        symbol: "avfilter_graph_free",
        hook: Hook::End(hook::GRAPH_FREE),
        unless: None,
        needs_layout: false,
    },
    // libavformat: inputs and outputs.
    io("avformat_open_input", Hook::IoOpen(hook::OPEN_INPUT), false),
    io(
        "avformat_alloc_output_context2",
        Hook::IoOpen(hook::ALLOC_OUTPUT),
        false,
    ),
    // Without a layout an avio_open2 cannot be matched to its output context and becomes an
    // io of its own.
    io("avio_open2", Hook::IoOpen(hook::AVIO_OPEN), false),
    io("av_read_frame", Hook::IoCall(hook::READ_FRAME), true),
    io(
        "avformat_write_header",
        Hook::IoCall(hook::WRITE_HEADER),
        false,
    ),
    io(
        "av_interleaved_write_frame",
        Hook::IoCall(hook::INTERLEAVED_WRITE),
        true,
    ),
    io("av_write_frame", Hook::IoCall(hook::WRITE_FRAME), true),
    io("av_write_trailer", Hook::IoCall(hook::WRITE_TRAILER), false),
    io(
        "avformat_close_input",
        Hook::IoClose(hook::CLOSE_INPUT),
        false,
    ),
    io(
        "avformat_free_context",
        Hook::IoClose(hook::FREE_FORMAT),
        false,
    ),
];

const fn io(symbol: &'static str, hook: Hook, needs_layout: bool) -> Probe {
    Probe {
        symbol,
        hook,
        unless: None,
        needs_layout,
    }
}

/// The `hwaccel` label of a codec stream: the hardware its codec drives by name (NVDEC's
/// `*_cuvid` decoders, NVENC, VAAPI, QSV, ... wrappers), else the type of the hardware device
/// the context was given (`-hwaccel cuda` keeps the native decoder and sets its
/// `hw_device_ctx`), else `none`. `device_type` is `AVHWDeviceType`, whose values have only
/// been appended to (checked for the common ones against every major's headers).
pub fn hwaccel(codec: &str, device_type: u32) -> &'static str {
    const BY_NAME: [(&str, &str); 9] = [
        ("_cuvid", "nvdec"),
        ("_nvenc", "nvenc"),
        ("_vaapi", "vaapi"),
        ("_qsv", "qsv"),
        ("_v4l2m2m", "v4l2m2m"),
        ("_videotoolbox", "videotoolbox"),
        ("_amf", "amf"),
        ("_mediacodec", "mediacodec"),
        ("_vulkan", "vulkan"),
    ];
    if let Some((_, hw)) = BY_NAME.iter().find(|(suffix, _)| codec.ends_with(suffix)) {
        return hw;
    }
    match device_type {
        1 => "vdpau",
        2 => "cuda",
        3 => "vaapi",
        4 => "dxva2",
        5 => "qsv",
        6 => "videotoolbox",
        7 => "d3d11va",
        8 => "drm",
        9 => "opencl",
        10 => "mediacodec",
        11 => "vulkan",
        0 => "none",
        _ => "other",
    }
}

/// The codecs NVML reports encoder sessions in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvencCodec {
    H264,
    Hevc,
}

/// The `AVCodecID` of an NVENC codec in a libavcodec major. IDs are an enum that FFmpeg
/// renumbers when it removes a codec: HEVC is 173 up to libavcodec 62 and 172 from 63.
/// Checked against the headers of 58, 59, 61 and 63 and the codec descriptors of the bundled
/// 60 and 62 by `tests/tests/layouts.rs`.
pub fn codec_id(lavc_major: u32, codec: NvencCodec) -> Option<u32> {
    layout_for(lavc_major)?;
    Some(match codec {
        NvencCodec::H264 => 27,
        NvencCodec::Hevc if lavc_major >= 63 => 172,
        NvencCodec::Hevc => 173,
    })
}

/// Which FFmpeg library a version string names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Library {
    Avcodec,
    Avformat,
    Avfilter,
    Avutil,
}

impl Library {
    /// The `LIB*_IDENT` prefix each library embeds in `.rodata` (e.g. `Lavc59.37.100`).
    /// `Lavfi` must be tried before `Lavf`.
    pub const IDENTS: [(&'static [u8], Library); 4] = [
        (b"Lavfi", Library::Avfilter),
        (b"Lavc", Library::Avcodec),
        (b"Lavf", Library::Avformat),
        (b"Lavu", Library::Avutil),
    ];
}

/// A library version as its ident string gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Parses `NN.NN.NNN` right after an ident prefix; the text must end there (a NUL or a
/// non-digit), so `Lavc59.37.100` parses and `Lavc5x` does not.
pub fn parse_version(s: &[u8]) -> Option<Version> {
    let mut parts = [0u32; 3];
    let mut i = 0;
    for (n, part) in parts.iter_mut().enumerate() {
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() && i - start < 4 {
            *part = *part * 10 + u32::from(s[i] - b'0');
            i += 1;
        }
        if i == start {
            return None;
        }
        if n < 2 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    match s.get(i) {
        Some(c) if c.is_ascii_digit() || *c == b'.' => None,
        _ => Some(Version {
            major: parts[0],
            minor: parts[1],
            micro: parts[2],
        }),
    }
}

/// The FFmpeg release a library major belongs to, as its libavcodec major: the key of
/// [`LAYOUTS`]. Libraries of one release ship together, so a libavfilter's layout row is
/// its release's row.
pub fn release_of(lib: Library, major: u32) -> Option<u32> {
    let lavc = match lib {
        Library::Avcodec => major,
        // libavformat's majors follow libavcodec's.
        Library::Avformat => major,
        // libavutil 56 shipped with libavcodec 58.
        Library::Avutil => major.checked_add(2)?,
        // libavfilter 7 shipped with libavcodec 58 (FFmpeg 4.x), 12 with 63 (FFmpeg 9.x).
        Library::Avfilter => major.checked_add(51)?,
    };
    LAYOUTS.iter().any(|r| r.lavc_major == lavc).then_some(lavc)
}

/// Where a row's numbers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `offsetof()` against the release's installed headers.
    Headers,
    /// Read from the release's libraries: AVCodecContext fields from the `AVOption` offset
    /// table (`avcodec_get_class()`), AVFilterContext's `graph` from its `thread_type` option
    /// (the field after it), AVFrame fields from reads of live frames. Fields no option
    /// exposes sit between two fields that do, or are stable in every header-checked major.
    Library,
}

/// One FFmpeg release's layout (x86-64 and arm64 alike).
#[derive(Clone, Copy, Debug)]
pub struct LayoutRow {
    pub lavc_major: u32,
    pub release: &'static str,
    pub source: Source,
    pub layout: LibLayout,
}

/// Fields whose offsets never changed from libavcodec 58 to 63.
const STABLE: LibLayout = LibLayout {
    valid: 1,
    lavc_major: 0,
    ctx_codec_type: 12,
    ctx_codec: 16,
    ctx_codec_id: 24,
    ctx_bit_rate: 56,
    ctx_width: 116,
    ctx_height: 120,
    ctx_pix_fmt: 136,
    ctx_sample_rate: 0,
    ctx_sample_fmt: 0,
    ctx_channels: 0,
    codec_name: 0,
    pkt_pts: 8,
    pkt_data: 24,
    pkt_size: 32,
    pkt_flags: 40,
    frame_width: 104,
    frame_height: 108,
    frame_nb_samples: 112,
    frame_format: 116,
    frame_key_frame: 120,
    frame_flags: 0,
    frame_pts: 136,
    filter_graph: 80,
    fmt_pb: 32,
    ctx_hw_device_ctx: 0,
    // AVHWDeviceContext lost its `internal` pointer in libavutil 59 (FFmpeg 7).
    hwdev_type: 16,
    // Moved up next to time_base and pkt_timebase in libavcodec 61.
    ctx_framerate: 100,
    _pad: 0,
};

pub const LAYOUTS: &[LayoutRow] = &[
    LayoutRow {
        lavc_major: 58,
        release: "4.x",
        source: Source::Headers,
        layout: LibLayout {
            lavc_major: 58,
            ctx_hw_device_ctx: 1032,
            ctx_framerate: 872,
            ctx_sample_rate: 400,
            ctx_sample_fmt: 408,
            // `channels`; AVChannelLayout came in 59.
            ctx_channels: 404,
            frame_flags: 380,
            ..STABLE
        },
    },
    LayoutRow {
        lavc_major: 59,
        release: "5.x",
        source: Source::Headers,
        layout: LibLayout {
            lavc_major: 59,
            ctx_hw_device_ctx: 872,
            ctx_framerate: 712,
            ctx_sample_rate: 352,
            ctx_sample_fmt: 360,
            // ch_layout (920) + 4: AVChannelLayout.nb_channels. The deprecated `channels`
            // (356) is not filled by every caller of 59.
            ctx_channels: 924,
            frame_flags: 316,
            ..STABLE
        },
    },
    LayoutRow {
        lavc_major: 60,
        release: "6.x",
        source: Source::Library,
        layout: LibLayout {
            lavc_major: 60,
            ctx_hw_device_ctx: 864,
            // framerate, sw_pix_fmt, then option "pkt_timebase" 716, as in 58 and 59.
            ctx_framerate: 704,
            // AVHWDeviceContext.type stays at 16 (libavutil 58 keeps its `internal` pointer;
            // 59 dropped it): PyAV's build has no hardware type to allocate a context of, so
            // the layout test finds it through av_hwdevice_ctx_init instead.
            // options "ar" 352 and "ac" 356; sample_fmt is declared right after channels.
            // "ch_layout" 912, + 4 for nb_channels.
            ctx_sample_rate: 352,
            ctx_sample_fmt: 360,
            ctx_channels: 916,
            frame_flags: 316,
            ..STABLE
        },
    },
    LayoutRow {
        lavc_major: 61,
        release: "7.x",
        source: Source::Headers,
        layout: LibLayout {
            lavc_major: 61,
            ctx_hw_device_ctx: 560,
            hwdev_type: 8,
            ctx_pix_fmt: 140,
            ctx_sample_rate: 344,
            ctx_sample_fmt: 348,
            // ch_layout (352) + 4: AVChannelLayout.nb_channels
            ctx_channels: 356,
            frame_flags: 292,
            ..STABLE
        },
    },
    LayoutRow {
        lavc_major: 62,
        release: "8.x",
        source: Source::Library,
        layout: LibLayout {
            lavc_major: 62,
            ctx_hw_device_ctx: 560,
            hwdev_type: 8,
            // option "video_size" 112; "ar" 344; "ch_layout" 352, as in 61 and 63.
            ctx_width: 112,
            ctx_height: 116,
            ctx_sample_rate: 344,
            ctx_sample_fmt: 348,
            ctx_channels: 356,
            frame_key_frame: ABSENT,
            frame_flags: 276,
            ..STABLE
        },
    },
    LayoutRow {
        lavc_major: 63,
        release: "9.x",
        source: Source::Headers,
        layout: LibLayout {
            lavc_major: 63,
            ctx_hw_device_ctx: 560,
            hwdev_type: 8,
            ctx_width: 112,
            ctx_height: 116,
            ctx_sample_rate: 344,
            ctx_sample_fmt: 348,
            ctx_channels: 356,
            frame_key_frame: ABSENT,
            frame_flags: 276,
            ..STABLE
        },
    },
];

/// Where each [`LibLayout`] field lives in C: the struct, and the member as `offsetof()`
/// names it, newest spelling first (the layout test uses the first that compiles).
pub struct FieldSpec {
    pub name: &'static str,
    pub c_struct: &'static str,
    pub c_members: &'static [&'static str],
    pub get: fn(&LibLayout) -> u16,
}

macro_rules! fields {
    ($($name:ident: $s:literal [$($m:literal),+]),* $(,)?) => {
        pub const FIELDS: &[FieldSpec] = &[$(FieldSpec {
            name: stringify!($name),
            c_struct: $s,
            c_members: &[$($m),+],
            get: |l| l.$name,
        }),*];
    };
}

fields! {
    ctx_codec_type: "AVCodecContext" ["codec_type"],
    ctx_codec: "AVCodecContext" ["codec"],
    ctx_codec_id: "AVCodecContext" ["codec_id"],
    ctx_bit_rate: "AVCodecContext" ["bit_rate"],
    ctx_width: "AVCodecContext" ["width"],
    ctx_height: "AVCodecContext" ["height"],
    ctx_pix_fmt: "AVCodecContext" ["pix_fmt"],
    ctx_sample_rate: "AVCodecContext" ["sample_rate"],
    ctx_sample_fmt: "AVCodecContext" ["sample_fmt"],
    ctx_channels: "AVCodecContext" ["ch_layout.nb_channels", "channels"],
    codec_name: "AVCodec" ["name"],
    pkt_pts: "AVPacket" ["pts"],
    pkt_data: "AVPacket" ["data"],
    pkt_size: "AVPacket" ["size"],
    pkt_flags: "AVPacket" ["flags"],
    frame_width: "AVFrame" ["width"],
    frame_height: "AVFrame" ["height"],
    frame_nb_samples: "AVFrame" ["nb_samples"],
    frame_format: "AVFrame" ["format"],
    frame_key_frame: "AVFrame" ["key_frame"],
    frame_flags: "AVFrame" ["flags"],
    frame_pts: "AVFrame" ["pts"],
    filter_graph: "AVFilterContext" ["graph"],
    fmt_pb: "AVFormatContext" ["pb"],
    ctx_hw_device_ctx: "AVCodecContext" ["hw_device_ctx"],
    hwdev_type: "AVHWDeviceContext" ["type"],
    ctx_framerate: "AVCodecContext" ["framerate"],
}

pub fn layout_for(lavc_major: u32) -> Option<&'static LayoutRow> {
    LAYOUTS.iter().find(|r| r.lavc_major == lavc_major)
}

/// Names of the pixel formats observer reports by name, with their `AVPixelFormat` value in
/// each release that has headers (58, 59, 61, 63). Others are reported as `id:N`.
pub const PIXEL_FORMATS: &[(&str, [i32; 4])] = &[
    ("yuv420p", [0, 0, 0, 0]),
    ("yuyv422", [1, 1, 1, 1]),
    ("rgb24", [2, 2, 2, 2]),
    ("bgr24", [3, 3, 3, 3]),
    ("yuv422p", [4, 4, 4, 4]),
    ("yuv444p", [5, 5, 5, 5]),
    ("gray", [8, 8, 8, 8]),
    ("yuvj420p", [12, 12, 12, 12]),
    ("yuvj422p", [13, 13, 13, 13]),
    ("yuvj444p", [14, 14, 14, 14]),
    ("uyvy422", [15, 15, 15, 15]),
    ("nv12", [23, 23, 23, 23]),
    ("nv21", [24, 24, 24, 24]),
    ("argb", [25, 25, 25, 25]),
    ("rgba", [26, 26, 26, 26]),
    ("abgr", [27, 27, 27, 27]),
    ("bgra", [28, 28, 28, 28]),
    ("yuva420p", [33, 33, 33, 33]),
    ("vaapi", [46, 44, 44, 44]),
    ("yuv420p10le", [64, 62, 62, 62]),
    ("yuv422p10le", [66, 64, 64, 64]),
    ("yuv444p10le", [70, 68, 68, 68]),
    ("nv16", [103, 101, 101, 101]),
    ("qsv", [116, 114, 114, 114]),
    ("cuda", [119, 117, 117, 117]),
    ("yuv420p12le", [125, 123, 123, 123]),
    ("videotoolbox", [160, 158, 157, 157]),
    ("p010le", [161, 159, 158, 158]),
    ("gray10le", [171, 169, 168, 168]),
    ("p016le", [172, 170, 169, 169]),
    ("d3d11", [174, 172, 171, 171]),
    ("drm_prime", [181, 179, 178, 178]),
    ("vulkan", [193, 191, 190, 190]),
];

/// The headers-checked majors, in the column order of [`PIXEL_FORMATS`].
pub const PIXEL_FORMAT_MAJORS: [u32; 4] = [58, 59, 61, 63];

/// The name of pixel format `value` in release `lavc_major`. For 60 and 62, which no
/// registry ships headers for, a value is named only when the releases on both sides agree
/// on it: enum entries are only appended within a major and only removed at a major bump,
/// so a value equal in 59 and 61 cannot differ in 60.
pub fn pixel_format_name(lavc_major: u32, value: i32) -> Option<&'static str> {
    let columns: &[usize] = match lavc_major {
        58 => &[0],
        59 => &[1],
        60 => &[1, 2],
        61 => &[2],
        62 => &[2, 3],
        63 => &[3],
        _ => return None,
    };
    PIXEL_FORMATS
        .iter()
        .find(|(_, values)| columns.iter().all(|&c| values[c] == value))
        .map(|(name, _)| *name)
}

/// `AVSampleFormat` names; this enum has not changed since libavutil 56.
pub fn sample_format_name(value: i32) -> Option<&'static str> {
    const NAMES: [&str; 12] = [
        "u8", "s16", "s32", "flt", "dbl", "u8p", "s16p", "s32p", "fltp", "dblp", "s64", "s64p",
    ];
    usize::try_from(value)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
}

/// The name of an AV_LOG_* level, as the `level` label gives it.
pub fn log_level_name(level: i32) -> &'static str {
    match level {
        i32::MIN..=-1 => "quiet",
        0..=7 => "panic",
        8..=15 => "fatal",
        16..=23 => "error",
        24..=31 => "warning",
        32..=39 => "info",
        40..=47 => "verbose",
        48..=55 => "debug",
        _ => "trace",
    }
}

/// The `AVERROR` name of a negative return code, as the `error` label gives it.
pub fn error_name(code: i32) -> String {
    const fn tag(a: u8, b: u8, c: u8, d: u8) -> i32 {
        -((a as i32) | ((b as i32) << 8) | ((c as i32) << 16) | ((d as i32) << 24))
    }
    const TAGS: &[(i32, &str)] = &[
        (tag(0xF8, b'B', b'S', b'F'), "BSF_NOT_FOUND"),
        (tag(b'B', b'U', b'G', b'!'), "BUG"),
        (tag(b'B', b'U', b'F', b'S'), "BUFFER_TOO_SMALL"),
        (tag(0xF8, b'D', b'E', b'C'), "DECODER_NOT_FOUND"),
        (tag(0xF8, b'D', b'E', b'M'), "DEMUXER_NOT_FOUND"),
        (tag(0xF8, b'E', b'N', b'C'), "ENCODER_NOT_FOUND"),
        (tag(b'E', b'O', b'F', b' '), "EOF"),
        (tag(b'E', b'X', b'I', b'T'), "EXIT"),
        (tag(b'E', b'X', b'T', b' '), "EXTERNAL"),
        (tag(0xF8, b'F', b'I', b'L'), "FILTER_NOT_FOUND"),
        (tag(b'I', b'N', b'D', b'A'), "INVALIDDATA"),
        (tag(0xF8, b'M', b'U', b'X'), "MUXER_NOT_FOUND"),
        (tag(0xF8, b'O', b'P', b'T'), "OPTION_NOT_FOUND"),
        (tag(b'P', b'A', b'W', b'E'), "PATCHWELCOME"),
        (tag(0xF8, b'P', b'R', b'O'), "PROTOCOL_NOT_FOUND"),
        (tag(0xF8, b'S', b'T', b'R'), "STREAM_NOT_FOUND"),
        (tag(b'B', b'U', b'G', b' '), "BUG2"),
        (tag(b'U', b'N', b'K', b'N'), "UNKNOWN"),
        (-0x2bb2_afa8, "EXPERIMENTAL"),
        (-0x636e_6701, "INPUT_CHANGED"),
        (-0x636e_6702, "OUTPUT_CHANGED"),
        (tag(0xF8, b'4', b'0', b'0'), "HTTP_BAD_REQUEST"),
        (tag(0xF8, b'4', b'0', b'1'), "HTTP_UNAUTHORIZED"),
        (tag(0xF8, b'4', b'0', b'3'), "HTTP_FORBIDDEN"),
        (tag(0xF8, b'4', b'0', b'4'), "HTTP_NOT_FOUND"),
        (tag(0xF8, b'4', b'X', b'X'), "HTTP_OTHER_4XX"),
        (tag(0xF8, b'5', b'X', b'X'), "HTTP_SERVER_ERROR"),
    ];
    if code == observer_common::stream::ERROR_OTHER {
        return "OTHER".into();
    }
    if let Some((_, name)) = TAGS.iter().find(|(c, _)| *c == code) {
        return (*name).into();
    }
    // Small negative codes are AVERROR(errno).
    if (-4095..0).contains(&code)
        && let Some(name) = errno_name(-code)
    {
        return name.into();
    }
    format!("code_{code}")
}

fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENOTSUP => "ENOTSUP",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwaccel_by_codec_name_then_by_device() {
        assert_eq!(hwaccel("h264_cuvid", 0), "nvdec");
        assert_eq!(hwaccel("hevc_nvenc", 2), "nvenc");
        assert_eq!(hwaccel("h264_vaapi", 3), "vaapi");
        // `-hwaccel cuda`: the native decoder with a CUDA device.
        assert_eq!(hwaccel("h264", 2), "cuda");
        assert_eq!(hwaccel("h264", 5), "qsv");
        assert_eq!(hwaccel("libx264", 0), "none");
        assert_eq!(hwaccel("h264", 99), "other");
    }

    #[test]
    fn version_strings_parse_and_reject_garbage() {
        assert_eq!(
            parse_version(b"59.37.100\0"),
            Some(Version {
                major: 59,
                minor: 37,
                micro: 100
            })
        );
        assert_eq!(
            parse_version(b"62.11.100"),
            Some(Version {
                major: 62,
                minor: 11,
                micro: 100
            })
        );
        assert_eq!(parse_version(b"59.37"), None);
        assert_eq!(parse_version(b"5x.1.1"), None);
        assert_eq!(parse_version(b"59.37.100.4"), None);
        assert_eq!(parse_version(b"99999.1.1"), None);
    }

    #[test]
    fn releases_map_across_libraries() {
        assert_eq!(release_of(Library::Avfilter, 8), Some(59));
        assert_eq!(release_of(Library::Avfilter, 12), Some(63));
        assert_eq!(release_of(Library::Avcodec, 57), None);
        assert_eq!(release_of(Library::Avcodec, 64), None);
    }

    #[test]
    fn error_names_match_ffmpeg() {
        assert_eq!(error_name(-0x4144_4e49), "INVALIDDATA");
        assert_eq!(error_name(-libc::ENOMEM), "ENOMEM");
        assert_eq!(error_name(-0x2046_4f45), "EOF");
        assert_eq!(error_name(-99999999), "code_-99999999");
    }

    #[test]
    fn pixel_formats_between_checked_majors_need_agreement() {
        assert_eq!(pixel_format_name(60, 0), Some("yuv420p"));
        assert_eq!(pixel_format_name(60, 62), Some("yuv420p10le"));
        // p010le is 159 in 59 and 158 in 61: 60's value is unknown, so no name.
        assert_eq!(pixel_format_name(60, 159), None);
        assert_eq!(pixel_format_name(60, 158), None);
        assert_eq!(pixel_format_name(61, 158), Some("p010le"));
    }
}
