//! Process life: exec and executable mappings tell the daemon where to look for new FFmpeg
//! copies quickly; exit tells it a process's streams have ended.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fexit, map, tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, FExitContext, TracePointContext},
};
use observer_common::{
    event::{EventKind, ProcessEvent},
    stream::counter,
};

use crate::maps::{CALL_KINDS, CALLS, CallKey, EVENTS, bump};

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
pub fn sched_process_exec(_ctx: BtfTracePointContext) -> u32 {
    send(EventKind::Exec, (bpf_get_current_pid_tgid() >> 32) as u32);
    0
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
        send(
            EventKind::ExecMmap,
            (bpf_get_current_pid_tgid() >> 32) as u32,
        );
    }
    0
}

/// Threads inside an executable file mmap, between the syscall tracepoints below.
#[map]
static MMAP_EXEC: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

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
        let _ = MMAP_EXEC.insert(&bpf_get_current_pid_tgid(), &1, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_mmap")]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if MMAP_EXEC.get_ptr(&pid_tgid).is_none() {
        return 0;
    }
    let _ = MMAP_EXEC.remove(&pid_tgid);
    // SAFETY: `ret` follows `__syscall_nr` in sys_exit records.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_ARG0) }.unwrap_or(-1);
    if !(-4095..0).contains(&ret) {
        send(EventKind::ExecMmap, (pid_tgid >> 32) as u32);
    }
    0
}
