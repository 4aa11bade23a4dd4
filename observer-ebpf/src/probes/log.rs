//! `void av_vlog(void *avcl, int level, const char *fmt, va_list vl)`: every `av_log` goes
//! through it, whatever the application's log level or callback, so messages that never
//! print (MPEG-TS's debug-level "Continuity check failed") are counted too. Entry probe only.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user_str_bytes},
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};
use observer_common::{
    event::EventKind,
    log::{LogEntry, LogKey, MAX_LOG_KEYS, TEMPLATE_LEN},
    stream::counter,
};

use super::{codec::now_ns, process::send_addr};
use crate::maps::bump;

const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_NOEXIST: u64 = 1;

#[map]
pub static LOGS: HashMap<LogKey, LogEntry> =
    HashMap::with_max_entries(MAX_LOG_KEYS, BPF_F_NO_PREALLOC);

#[uprobe]
pub fn log_message(ctx: ProbeContext) -> u32 {
    let (Some(avcl), Some(level), Some(fmt)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = LogKey {
        tgid,
        level: level as i32,
        avcl,
        fmt,
    };
    if let Some(e) = LOGS.get_ptr_mut(&key) {
        // Unlike a stream's calls, log messages with one key can come from several threads
        // at once (a NULL context, a context shared by worker threads): count atomically.
        // SAFETY: map value pointer, valid for this program run.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*e).count, 1) };
        return 0;
    }
    let entry = LogEntry {
        count: 1,
        first_ns: now_ns(),
        template: [0; TEMPLATE_LEN],
    };
    if LOGS.insert(&key, &entry, BPF_NOEXIST).is_err() {
        match LOGS.get_ptr_mut(&key) {
            // Another thread inserted it first.
            // SAFETY: as above.
            Some(e) => unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*e).count, 1);
            },
            None => bump(counter::LOGS_FULL),
        }
        return 0;
    }
    let Some(e) = LOGS.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: map value pointer; the read is fault-tolerant and bounded by the buffer.
    let read = unsafe { bpf_probe_read_user_str_bytes(fmt as *const u8, &mut (*e).template) };
    if read.is_err() {
        send_addr(EventKind::LogTemplate, tgid, fmt);
    }
    0
}
