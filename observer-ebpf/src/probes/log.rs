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
    log::{LOG_STRINGS, LogEntry, LogEvent, LogKey, MAX_LOG_KEYS, TEMPLATE_LEN},
    stream::counter,
};

use super::{
    codec::{now_ns, thread_codec},
    process::send_addr,
};
use crate::maps::{BPF_F_NO_PREALLOC, BPF_NOEXIST, EVENTS, bump};

#[map]
pub static LOGS: HashMap<LogKey, LogEntry> =
    HashMap::with_max_entries(MAX_LOG_KEYS, BPF_F_NO_PREALLOC);

/// Messages at this `AV_LOG_*` level or more severe are also sent whole, with their
/// arguments, as structured events; a negative value sends none. Set by the loader.
#[unsafe(no_mangle)]
static LOG_EVENT_LEVEL: i32 = -1;

#[uprobe]
pub fn log_message(ctx: ProbeContext) -> u32 {
    let (Some(avcl), Some(level), Some(fmt)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: a constant the loader may have set; volatile so it is not folded at build time.
    // Negative levels (AV_LOG_QUIET) are never printed: not messages.
    if (0..=unsafe { core::ptr::read_volatile(&LOG_EVENT_LEVEL) }).contains(&(level as i32)) {
        send_message(
            pid_tgid,
            avcl,
            level as i32,
            fmt,
            ctx.arg::<u64>(3).unwrap_or(0),
        );
    }
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
        thread_codec: thread_codec(pid_tgid),
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

/// Sends one message with the raw material to format it: the `va_list`'s saved registers and
/// stack part (`arch::capture_va_list`), and a string read at each of the next
/// integer-class arguments.
#[inline(always)]
fn send_message(pid_tgid: u64, avcl: u64, level: i32, fmt: u64, vl: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let Some(mut entry) = EVENTS.reserve::<LogEvent>(0) else {
        bump(counter::EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reservation is sized for a LogEvent; every field is written before submit,
    // and every read from the process is fault-tolerant and bounded by its buffer.
    unsafe {
        (*ev).kind = EventKind::LogMessage as u32;
        (*ev).tgid = tgid;
        (*ev).ktime_ns = now_ns();
        (*ev).avcl = avcl;
        (*ev).thread_codec = thread_codec(pid_tgid);
        (*ev).fmt = fmt;
        (*ev).level = level;
        crate::arch::capture_va_list(vl, ev);
        // The next integer-class arguments: registers from gp_offset on, then the stack.
        let first = ((*ev).gp_offset / 8) as usize;
        let mut i = 0;
        while i < LOG_STRINGS {
            let arg = integer_arg(&*ev, first + i);
            if let Some(s) = (*ev).strings.get_mut(i) {
                // 0xff first: no string there (an integer, or unreadable).
                s[0] = 0xff;
                s[1] = 0;
                if arg > 4096 && bpf_probe_read_user_str_bytes(arg as *const u8, s).is_err() {
                    s[0] = 0xff;
                    s[1] = 0;
                }
            }
            i += 1;
        }
        (*ev).template[0] = 0;
        let _ = bpf_probe_read_user_str_bytes(fmt as *const u8, &mut (*ev).template);
    }
    entry.submit(0);
}

/// Integer-class argument slot `n` of a captured `va_list`: the registers, then the stack.
/// Constant offsets only, so the verifier sees every access in bounds.
#[inline(always)]
fn integer_arg(ev: &LogEvent, n: usize) -> u64 {
    const SLOTS: usize = crate::arch::GP_SAVED / 8;
    if n < SLOTS {
        return match n {
            0 => read_u64(&ev.gp_regs, 0),
            1 => read_u64(&ev.gp_regs, 8),
            2 => read_u64(&ev.gp_regs, 16),
            3 => read_u64(&ev.gp_regs, 24),
            4 => read_u64(&ev.gp_regs, 32),
            5 => read_u64(&ev.gp_regs, 40),
            6 => read_u64(&ev.gp_regs, 48),
            7 => read_u64(&ev.gp_regs, 56),
            _ => 0,
        };
    }
    match n - SLOTS {
        0 => read_u64(&ev.overflow, 0),
        1 => read_u64(&ev.overflow, 8),
        2 => read_u64(&ev.overflow, 16),
        3 => read_u64(&ev.overflow, 24),
        _ => 0,
    }
}

#[inline(always)]
fn read_u64<const N: usize>(b: &[u8; N], at: usize) -> u64 {
    match b.get(at..at + 8) {
        Some(s) => {
            let mut v = [0u8; 8];
            v.copy_from_slice(s);
            u64::from_ne_bytes(v)
        }
        None => 0,
    }
}
