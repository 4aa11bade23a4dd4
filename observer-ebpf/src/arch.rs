//! What the programs read of a CPU architecture: the saved user registers (instruction and
//! stack pointer, the syscall's number and arguments), the syscall numbers, how a call leaves
//! its return address, and C's `va_list`. One implementation per architecture the daemon is
//! built for (`bpf_target_arch`, set from the daemon's own target by aya-build), the same
//! interface each: everything else in the programs is architecture-free.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf},
};
use observer_common::log::{LOG_VR_AREA, LogEvent};

/// A uprobe's instruction pointer: the kernel sets it back to the probed instruction before
/// the programs run, on both architectures.
///
/// # Safety
/// `regs` points at the probed thread's saved registers (a probe context's).
#[inline(always)]
pub unsafe fn ip(regs: *const pt_regs) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    // SAFETY: as the caller promises.
    return unsafe { (*regs).rip };
    #[cfg(bpf_target_arch = "aarch64")]
    // SAFETY: as the caller promises.
    return unsafe { (*regs).pc };
}

/// The stack pointer.
///
/// # Safety
/// As [`ip`].
#[inline(always)]
pub unsafe fn sp(regs: *const pt_regs) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    // SAFETY: as the caller promises.
    return unsafe { (*regs).rsp };
    #[cfg(bpf_target_arch = "aarch64")]
    // SAFETY: as the caller promises.
    return unsafe { (*regs).sp };
}

/// What a call moves the stack pointer by before the callee's first instruction: x86-64
/// pushes the return address, arm64 keeps it in the link register. A return probe's stack
/// pointer less this is the entry's.
#[cfg(bpf_target_arch = "x86_64")]
pub const CALL_PUSH: u64 = 8;
#[cfg(bpf_target_arch = "aarch64")]
pub const CALL_PUSH: u64 = 0;

/// Syscall numbers: x86-64's own table, arm64's the generic one (asm-generic/unistd.h).
#[cfg(bpf_target_arch = "x86_64")]
pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const CONNECT: u64 = 42;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const RECVMMSG: u64 = 299;
    pub const SENDMMSG: u64 = 307;
}
#[cfg(bpf_target_arch = "aarch64")]
pub mod nr {
    pub const READ: u64 = 63;
    pub const WRITE: u64 = 64;
    pub const READV: u64 = 65;
    pub const WRITEV: u64 = 66;
    pub const CONNECT: u64 = 203;
    pub const SENDTO: u64 = 206;
    pub const RECVFROM: u64 = 207;
    pub const SENDMSG: u64 = 211;
    pub const RECVMSG: u64 = 212;
    pub const RECVMMSG: u64 = 243;
    pub const SENDMMSG: u64 = 269;
}

/// The kernel's `struct pt_regs` on arm64 up to the syscall number: the user registers (what
/// aya's `pt_regs` is there), then `orig_x0` and `syscallno` (stable since 5.0).
#[cfg(bpf_target_arch = "aarch64")]
#[repr(C)]
pub struct KernelRegs {
    pub user: pt_regs,
    pub orig_x0: u64,
    pub syscallno: i32,
}

/// The syscall a thread is in, from the registers `bpf_task_pt_regs` gives: (number, first
/// argument, second argument). The pointer is BTF-typed, so these are plain loads the
/// verifier checks against the kernel's `struct pt_regs` (and makes fault-tolerant).
///
/// # Safety
/// `regs` is `bpf_task_pt_regs`'s answer for the current task, not null.
#[inline(always)]
pub unsafe fn syscall(regs: *const core::ffi::c_void) -> (u64, u64, u64) {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // x86-64's syscall ABI: the number in orig_rax, arguments in rdi, rsi.
        let r = regs as *const pt_regs;
        // SAFETY: as the caller promises.
        unsafe { ((*r).orig_rax, (*r).rdi, (*r).rsi) }
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        // arm64's: the number in x8 (kept in syscallno), arguments in x0 (kept in orig_x0,
        // as x0 takes the return value), x1.
        let r = regs as *const KernelRegs;
        // SAFETY: as the caller promises.
        unsafe { ((*r).syscallno as u64, (*r).orig_x0, (*r).user.regs[1]) }
    }
}

/// Captures the `va_list` at user address `vl` into `ev` in the architecture-free form the
/// daemon walks: integer registers in `gp_regs[..gp_end]`, vector registers in `vr_regs` (16
/// bytes each), the stack part in `overflow`, the next of each at `gp_offset` and
/// `fp_offset`. What is not captured reads as zero.
///
/// # Safety
/// `ev` points at a reserved ring buffer record.
#[inline(always)]
pub unsafe fn capture_va_list(vl: u64, ev: *mut LogEvent) {
    // A list that cannot be read leaves every register taken and nothing on the stack.
    let (gp_offset, fp_offset, gp, vr, stack) =
        read_list(vl).unwrap_or((GP_SAVED as u32, LOG_VR_AREA as u32, 0, 0, 0));
    // SAFETY: as the caller promises; every read from the process is fault-tolerant (and
    // fails at address 0).
    unsafe {
        (*ev).gp_end = GP_SAVED as u32;
        (*ev).gp_offset = gp_offset;
        (*ev).fp_offset = fp_offset;
        // x86-64 saves fewer integer registers than the field holds: the rest stays zero.
        (&mut (*ev).gp_regs)[GP_SAVED..].fill(0);
        read_or_zero(gp, &mut (&mut (*ev).gp_regs)[..GP_SAVED]);
        read_or_zero(vr, &mut (*ev).vr_regs);
        read_or_zero(stack, &mut (*ev).overflow);
    }
}

/// Reads `buf.len()` bytes of the process's memory at `addr` into `buf`, or zeroes it.
#[inline(always)]
fn read_or_zero(addr: u64, buf: &mut [u8]) {
    // SAFETY: a fault-tolerant read bounded by the buffer.
    if addr == 0 || unsafe { bpf_probe_read_user_buf(addr as *const u8, buf) }.is_err() {
        buf.fill(0);
    }
}

/// The `va_list` at `vl`: (next integer register's byte offset, next vector register's,
/// where the integer registers are saved, where the vector registers are, the stack part).
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn read_list(vl: u64) -> Option<(u32, u32, u64, u64, u64)> {
    if vl == 0 {
        return None;
    }
    // { u32 gp_offset; u32 fp_offset; void *overflow_arg_area; void *reg_save_area }: the
    // save area holds rdi..r9 (48 bytes), then xmm0..7 (16 bytes each), fp_offset counting
    // from its start.
    // SAFETY: a fault-tolerant read of the process's memory.
    let [offsets, stack, save] = unsafe { bpf_probe_read_user(vl as *const [u64; 3]) }.ok()?;
    let fp_offset = ((offsets >> 32) as u32).saturating_sub(GP_SAVED as u32);
    Some((
        offsets as u32,
        fp_offset,
        save,
        save.wrapping_add(GP_SAVED as u64),
        stack,
    ))
}

#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn read_list(vl: u64) -> Option<(u32, u32, u64, u64, u64)> {
    if vl == 0 {
        return None;
    }
    // AAPCS64: { void *__stack; void *__gr_top; void *__vr_top; int __gr_offs; int
    // __vr_offs }: x0..x7 are saved below __gr_top and q0..q7 below __vr_top, the offsets
    // negative while registers remain (from the first unnamed argument's).
    // SAFETY: a fault-tolerant read of the process's memory.
    let [stack, gr_top, vr_top, offsets] =
        unsafe { bpf_probe_read_user(vl as *const [u64; 4]) }.ok()?;
    let gr_offs = (offsets as u32 as i32).clamp(-(GP_SAVED as i32), 0);
    let vr_offs = ((offsets >> 32) as u32 as i32).clamp(-(LOG_VR_AREA as i32), 0);
    Some((
        (GP_SAVED as i32 + gr_offs) as u32,
        (LOG_VR_AREA as i32 + vr_offs) as u32,
        gr_top.wrapping_sub(GP_SAVED as u64),
        vr_top.wrapping_sub(LOG_VR_AREA as u64),
        stack,
    ))
}

/// Bytes of integer registers a `va_list` saves: x86-64 passes six arguments in registers,
/// arm64 eight.
#[cfg(bpf_target_arch = "x86_64")]
pub const GP_SAVED: usize = 48;
#[cfg(bpf_target_arch = "aarch64")]
pub const GP_SAVED: usize = 64;
