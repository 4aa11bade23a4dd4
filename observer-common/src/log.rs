//! FFmpeg's own log messages, counted in the kernel at `av_vlog` per process, logging
//! context, level and message template (the format string, so arguments never raise the
//! number of series).

/// Bytes of a template kept; longer ones are cut.
pub const TEMPLATE_LEN: usize = 96;

/// Distinct (process, context, level, template) counted at once.
pub const MAX_LOG_KEYS: u32 = 16384;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogKey {
    pub tgid: u32,
    /// AV_LOG_* level.
    pub level: i32,
    /// The `avcl` argument: the AVClass context that logged (a codec context, a format
    /// context, ...) or 0.
    pub avcl: u64,
    /// Address of the format string.
    pub fmt: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LogEntry {
    pub count: u64,
    /// `bpf_ktime_get_boot_ns` of the first message, to tell a reused pid apart.
    pub first_ns: u64,
    /// The codec context of the thread that logged the first message, when `avcodec_open2`
    /// started that thread (a frame-threaded decoder's worker, logging on its own copy of
    /// the decoder's context); 0 otherwise.
    pub thread_codec: u64,
    /// The format string, NUL-terminated; empty if the kernel could not read it (the daemon
    /// then reads it from the process).
    pub template: [u8; TEMPLATE_LEN],
}

crate::user_pod!(LogKey, LogEntry);

/// Arguments of a message kept for its structured event: the `va_list`'s registers and
/// stack, and a string read at each of the first [`LOG_STRINGS`] integer-class arguments
/// (the kernel cannot tell a `%s` from a `%d`; reading an integer as a pointer fails
/// harmlessly, and the string then starts with 0xff). The daemon formats the message from the
/// template, as FFmpeg would.
pub const LOG_STRINGS: usize = 4;
pub const LOG_STRING_LEN: usize = 64;
/// Bytes of the stack part of the `va_list` (arguments beyond the registers) kept.
pub const LOG_OVERFLOW_LEN: usize = 64;
/// Room for the integer registers a `va_list` saves (arm64's eight; x86-64 uses six).
pub const LOG_GP_AREA: usize = 64;
/// The vector registers a `va_list` saves: eight of 16 bytes on both architectures.
pub const LOG_VR_AREA: usize = 128;

/// One message at or above the configured level, sent through the ring buffer
/// (`EventKind::LogMessage`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LogEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ktime_ns: u64,
    pub avcl: u64,
    /// As [`LogEntry::thread_codec`], for this message's thread.
    pub thread_codec: u64,
    /// The format string's address, for the daemon to read it from the process when the
    /// kernel could not (its page not yet resident: `template` is then empty).
    pub fmt: u64,
    pub level: i32,
    /// The `va_list`, the same on every architecture (the programs translate theirs, see
    /// observer-ebpf's `arch`): byte offsets of the next integer argument in `gp_regs` and of
    /// the next floating-point one in `vr_regs`.
    pub gp_offset: u32,
    pub fp_offset: u32,
    /// Bytes of `gp_regs` the architecture passes arguments in: 48 on x86-64 (six
    /// registers), 64 on arm64 (eight); the arguments after them are on the stack.
    pub gp_end: u32,
    /// The saved integer registers.
    pub gp_regs: [u8; LOG_GP_AREA],
    /// The saved vector registers: eight of 16 bytes (xmm0-7, q0-7).
    pub vr_regs: [u8; LOG_VR_AREA],
    pub overflow: [u8; LOG_OVERFLOW_LEN],
    pub strings: [[u8; LOG_STRING_LEN]; LOG_STRINGS],
    pub template: [u8; TEMPLATE_LEN],
}

crate::user_pod!(LogEvent);
const _: () = assert!(core::mem::size_of::<LogEvent>().is_multiple_of(8));
