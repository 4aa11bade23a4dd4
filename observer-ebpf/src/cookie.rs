//! A uprobe's cookie: which call it is and which library slot (layout) its file has
//! (`observer_common::layout::cookie`). The daemon attaches every probe with it; from Linux 5.15
//! a program reads it with `bpf_get_attach_cookie`. Older kernels have no attach cookies, so
//! there the daemon also files each probe point by file and offset (`PROBE_COOKIES`), and an
//! entry probe finds its cookie from the mapping that holds the probed instruction (once per
//! process and address, `IP_COOKIES`); a return probe finds the one its entry left under the
//! thread and the stack pointer at entry, which is the return's stack pointer less what the
//! call pushed (`arch::CALL_PUSH`).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use observer_common::{
    kernel::{MAX_PROBE_POINTS, ProbeKey},
    layout::cookie as make_cookie,
    stream::MAX_CALLS_IN_PROGRESS,
};

use crate::{
    arch,
    kernel::{current_task, kernel, mapping_of, read},
    maps::copied,
};

/// Probe points by file and offset, filled by the daemon where attach cookies are missing.
#[map]
pub static PROBE_COOKIES: HashMap<ProbeKey, u64> = HashMap::with_max_entries(MAX_PROBE_POINTS, 0);

/// Cookies found by address, by (`struct mm_struct *`, probed address): the mapping walk runs
/// once per process and probe point. The address space is part of the key, so a later
/// process's probe at the same address is never read with an earlier one's cookie.
#[map]
static IP_COOKIES: LruHashMap<[u64; 2], u64> = LruHashMap::with_max_entries(16384, 0);

/// Cookies an entry probe leaves for its return probe, by (thread, stack pointer at entry).
/// LRU: a thread that exits inside a call leaves its entry behind.
#[map]
static RETURN_COOKIES: LruHashMap<[u64; 2], u64> =
    LruHashMap::with_max_entries(MAX_CALLS_IN_PROGRESS, 0);

/// The cookie of a probe whose point is not known: no call, no slot; every program ignores it.
pub const UNKNOWN: u64 = make_cookie(0xffff, 0xff);

/// The cookie of the entry probe that runs; `with_return` keeps it for the return probe of
/// the same call.
#[inline(always)]
pub fn entry(ctx: &ProbeContext, with_return: bool) -> u64 {
    if kernel!(attach_cookie) != 0 {
        // SAFETY: the helper only reads the cookie of the link that ran this program.
        return unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    }
    // SAFETY: ctx.regs points at the probed thread's saved registers; the kernel sets the
    // instruction pointer back to the probed instruction before it runs the programs.
    let (ip, sp) = unsafe { (arch::ip(ctx.regs), arch::sp(ctx.regs)) };
    let cookie = by_address(ip).unwrap_or(UNKNOWN);
    if with_return {
        let _ = RETURN_COOKIES.insert(&[bpf_get_current_pid_tgid(), sp], &cookie, 0);
    }
    cookie
}

/// The cookie of the return probe that runs.
#[inline(always)]
pub fn of_return(ctx: &RetProbeContext) -> u64 {
    if kernel!(attach_cookie) != 0 {
        // SAFETY: as above.
        return unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    }
    // SAFETY: ctx.regs points at the returning thread's saved registers.
    let sp = unsafe { arch::sp(ctx.regs) };
    let key = [bpf_get_current_pid_tgid(), sp.wrapping_sub(arch::CALL_PUSH)];
    let cookie = copied(RETURN_COOKIES.get_ptr(&key)).unwrap_or(UNKNOWN);
    let _ = RETURN_COOKIES.remove(&key);
    cookie
}

/// The cookie of the probe point at user address `ip` of the current process.
#[inline(always)]
fn by_address(ip: u64) -> Option<u64> {
    let mm: u64 = read(current_task(), kernel!(offsets.task_mm))?;
    let key = [mm, ip];
    if let Some(c) = copied(IP_COOKIES.get_ptr(&key)) {
        return Some(c);
    }
    let (vma, start) = mapping_of(mm, ip)?;
    let file: u64 = read(vma, kernel!(offsets.vma_file))?;
    let inode: u64 = read(file, kernel!(offsets.file_inode))?;
    let sb: u64 = read(inode, kernel!(offsets.inode_sb))?;
    let pgoff: u64 = read(vma, kernel!(offsets.vma_pgoff))?;
    let point = ProbeKey {
        dev: read(sb, kernel!(offsets.sb_dev))?,
        _pad: 0,
        ino: read(inode, kernel!(offsets.inode_ino))?,
        offset: (ip - start) + (pgoff << kernel!(page_shift)),
    };
    let cookie = copied(PROBE_COOKIES.get_ptr(&point))?;
    let _ = IP_COOKIES.insert(&key, &cookie, 0);
    Some(cookie)
}
