//! Events the kernel sends to the daemon through the `EVENTS` ring buffer. They are rare (per
//! process start, executable mapping, exit, io and file open), never per frame or packet.
//! Every record starts with its `kind`.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A process called exec: its executable may be a static ffmpeg build.
    Exec = 1,
    /// A process mapped a file executable: a library may have been loaded.
    ExecMmap = 2,
    /// A thread group ended: its streams end.
    Exit = 3,
    /// A codec was opened whose name the kernel could not read (its page not resident yet):
    /// the daemon reads it from the process now, while it surely runs. `addr` is the name's
    /// address.
    CodecName = 4,
    /// A log message template the kernel could not read; `addr` is its address.
    LogTemplate = 5,
    /// An input or output was opened ([`crate::io::IoEvent`] with its URL).
    IoOpen = 6,
    /// A file was opened for an io ([`crate::io::IoEvent`] with its path).
    FileOpen = 7,
    /// A descriptor tied to an io was closed ([`crate::io::IoEvent`] with its bytes).
    FileClose = 8,
    /// A log message at or above the configured level, with its arguments
    /// ([`crate::log::LogEvent`]).
    LogMessage = 9,
    /// The kernel stopped the process (SIGSTOP) because it mapped an executable file the
    /// daemon has not judged; it waits in `HELD` until the daemon resumes it.
    Held = 10,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ktime_ns: u64,
    pub addr: u64,
}

crate::user_pod!(ProcessEvent);
