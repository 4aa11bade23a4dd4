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
    /// The format string, NUL-terminated; empty if the kernel could not read it (the daemon
    /// then reads it from the process).
    pub template: [u8; TEMPLATE_LEN],
}

crate::user_pod!(LogKey, LogEntry);
