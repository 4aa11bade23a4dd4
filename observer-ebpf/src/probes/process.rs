//! Process life: exec and executable mappings tell the daemon where to look for new FFmpeg
//! copies quickly; exit tells it a process's streams have ended.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_send_signal},
    macros::{btf_tracepoint, fexit, map, tracepoint},
    maps::{Array, HashMap, LruHashMap},
    programs::{BtfTracePointContext, FExitContext, TracePointContext},
};
use observer_common::{
    event::{EventKind, ProcessEvent},
    kernel::{FileKey, Held, MAX_HELD, MAX_JUDGED},
    stream::counter,
};

use crate::{
    kernel::{fd_file, file_key, has_terminal, kernel, named_like_ffmpeg, read},
    maps::{BPF_NOEXIST, CALL_KINDS, CALLS, CallKey, EVENTS, bump, copied},
};

const PROT_EXEC: u64 = 4;

#[inline(always)]
fn send(kind: EventKind, tgid: u32) {
    send_addr(kind, tgid, 0);
}

#[inline(always)]
pub fn send_addr(kind: EventKind, tgid: u32, addr: u64) {
    let ev = ProcessEvent {
        kind: kind as u32,
        tgid,
        ktime_ns: super::codec::now_ns(),
        addr,
    };
    if EVENTS.output::<ProcessEvent>(&ev, 0).is_err() {
        bump(counter::EVENTS_LOST);
    }
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Tracepoint arguments by position, as declared above.
    let bprm: u64 = ctx.arg(2);
    if !hold_if_unjudged(tgid, read(bprm, kernel!(offsets.bprm_file)).unwrap_or(0)) {
        send(EventKind::Exec, tgid);
    }
    0
}

// --- holding a process until its new file is probed ----------------------------------------

/// Files the daemon has judged: inspected, and attached if FFmpeg. A process mapping anything
/// else executable is held. LRU: a file forgotten is judged again, once.
#[map]
pub static JUDGED: LruHashMap<FileKey, u32> = LruHashMap::with_max_entries(MAX_JUDGED, 0);

/// Processes held, until the daemon resumes them.
#[map]
pub static HELD: HashMap<u32, Held> = HashMap::with_max_entries(MAX_HELD, 0);

/// When the daemon last said it runs (`bpf_ktime_get_boot_ns`): a daemon that stopped
/// answering holds no process.
#[map]
pub static ALIVE: Array<u64> = Array::with_max_entries(1, 0);

/// A daemon silent this long holds nothing (it beats every 250 ms).
const ALIVE_WITHIN_NS: u64 = 2_000_000_000;
const SIGSTOP: u64 = 19;

/// Stops the current process (SIGSTOP, at its return to user space, before it runs a single
/// instruction of `file`) if `file` (`struct file *`) is an executable named like FFmpeg that
/// the daemon has not judged, and tells the daemon, which resumes it once its probes are
/// attached. Returns whether it did. A stop is seen by a parent that waits for stopped
/// children (a shell with job control), so only files named like FFmpeg hold, and never the
/// daemon itself nor a process with a controlling terminal (its shell would take the stop for
/// the user's Ctrl-Z).
#[inline(always)]
fn hold_if_unjudged(tgid: u32, file: u64) -> bool {
    if kernel!(hold) == 0 || tgid == kernel!(daemon_tgid) || tgid <= 1 {
        return false;
    }
    let now = super::codec::now_ns();
    match copied(ALIVE.get_ptr(0)) {
        Some(t) if now.saturating_sub(t) < ALIVE_WITHIN_NS => {}
        _ => return false,
    }
    let Some(key) = file_key(file) else {
        return false;
    };
    if JUDGED.get_ptr(&key).is_some() || !named_like_ffmpeg(file) || has_terminal() {
        return false;
    }
    let held = Held {
        since_ns: now,
        file: key,
    };
    if HELD.insert(&tgid, &held, BPF_NOEXIST).is_err() {
        // Already held (another thread mapped meanwhile), or the map is full: the daemon's
        // scan of the process judges every file it maps.
        return HELD.get_ptr(&tgid).is_some();
    }
    // SAFETY: signals the current process, as the helper always does.
    if unsafe { bpf_send_signal(SIGSTOP as u32) } != 0 {
        let _ = HELD.remove(&tgid);
        return false;
    }
    send(EventKind::Held, tgid);
    true
}

/// `sched_process_exit(struct task_struct *p, bool group_dead)` — fires per thread: the
/// thread's calls in progress are forgotten, and the thread group leader's exit is sent.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    for call in CALL_KINDS {
        let _ = CALLS.remove(&CallKey::new(pid_tgid, call));
    }
    super::net::thread_exit(pid_tgid);
    let _ = crate::maps::CODEC_THREADS.remove(&(pid_tgid as u32));
    let (tgid, pid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tgid == pid {
        let _ = super::io::IO_PROCESSES.remove(&tgid);
        let _ = HELD.remove(&tgid);
        send(EventKind::Exit, tgid);
    }
    0
}

/// `unsigned long do_mmap(struct file *file, unsigned long addr, unsigned long len,
/// unsigned long prot, unsigned long flags, vm_flags_t vm_flags, unsigned long pgoff, ...)`
/// on return: a shared library (or a bundled FFmpeg copy) was just mapped executable, so the
/// mapping is already in /proc/PID/maps when the daemon reads it. (LSM hooks such as
/// security_mmap_file cannot be traced with fentry/fexit.)
#[fexit(function = "do_mmap")]
pub fn mmap_exec(ctx: FExitContext) -> u32 {
    let file: u64 = ctx.arg(0);
    let prot: u64 = ctx.arg(3);
    // The mapped address, or an error code in the last page.
    let Ok(ret) = ctx.ret::<u64>() else { return 0 };
    if file != 0 && prot & PROT_EXEC != 0 && ret < (-4095i64) as u64 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if !hold_if_unjudged(tgid, file) {
            send(EventKind::ExecMmap, tgid);
        }
    }
    0
}

/// Threads inside an executable file mmap, between the syscall tracepoints below: the
/// descriptor mapped.
#[map]
static MMAP_EXEC: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

// Syscall tracepoints lay out their arguments from offset 16, 8 bytes each, on every kernel
// (after the common header and `__syscall_nr`).
const SYSCALL_ARG0: usize = 16;

/// `mmap(addr, len, prot, flags, fd, off)` entry: where fentry/fexit cannot load, these two
/// tracepoints do the same job as `mmap_exec`.
#[tracepoint(category = "syscalls", name = "sys_enter_mmap")]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets inside the tracepoint record, see SYSCALL_ARG0.
    let prot: u64 = unsafe { ctx.read_at(SYSCALL_ARG0 + 2 * 8) }.unwrap_or(0);
    let fd: i64 = unsafe { ctx.read_at(SYSCALL_ARG0 + 4 * 8) }.unwrap_or(-1);
    if prot & PROT_EXEC != 0 && fd >= 0 {
        let _ = MMAP_EXEC.insert(&bpf_get_current_pid_tgid(), &(fd as u64), 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_mmap")]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(fd) = copied(MMAP_EXEC.get_ptr(&pid_tgid)) else {
        return 0;
    };
    let _ = MMAP_EXEC.remove(&pid_tgid);
    // SAFETY: `ret` follows `__syscall_nr` in sys_exit records.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_ARG0) }.unwrap_or(-1);
    if !(-4095..0).contains(&ret) {
        let tgid = (pid_tgid >> 32) as u32;
        if !hold_if_unjudged(tgid, fd_file(fd)) {
            send(EventKind::ExecMmap, tgid);
        }
    }
    0
}
