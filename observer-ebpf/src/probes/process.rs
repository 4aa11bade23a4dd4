//! Process life: exec and executable mappings tell the daemon where to look for new FFmpeg
//! copies quickly; exit tells it a process's streams have ended.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, fentry},
    programs::{BtfTracePointContext, FEntryContext},
};
use observer_common::{
    event::{EventKind, ProcessEvent},
    stream::counter,
};

use crate::maps::{EVENTS, bump};

const PROT_EXEC: u64 = 4;

#[inline(always)]
fn send(kind: EventKind, tgid: u32) {
    let ev = ProcessEvent { kind: kind as u32, tgid, ktime_ns: unsafe { bpf_ktime_get_ns() } };
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

/// `sched_process_exit(struct task_struct *p, bool group_dead)` — fires per thread; only the
/// thread group leader's exit is sent.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, pid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tgid == pid {
        send(EventKind::Exit, tgid);
    }
    0
}

/// `int security_mmap_file(struct file *file, unsigned long prot, unsigned long flags)`:
/// a shared library (or a bundled FFmpeg copy) being mapped executable.
#[fentry(function = "security_mmap_file")]
pub fn mmap_exec(ctx: FEntryContext) -> u32 {
    let file: u64 = ctx.arg(0);
    let prot: u64 = ctx.arg(1);
    if file != 0 && prot & PROT_EXEC != 0 {
        send(EventKind::ExecMmap, (bpf_get_current_pid_tgid() >> 32) as u32);
    }
    0
}
