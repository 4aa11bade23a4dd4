//! Reads from a pipeline's memory. Every read may fail (the page may be swapped out or the
//! pointer garbage): callers treat `None` as "skip this", never as zero.

use aya_ebpf::helpers::bpf_probe_read_user;
use observer_common::layout::ABSENT;

#[inline(always)]
pub fn field<T: Copy>(base: u64, offset: u16) -> Option<T> {
    if base == 0 || offset == ABSENT {
        return None;
    }
    // SAFETY: bpf_probe_read_user copies through the kernel's fault-tolerant path.
    unsafe { bpf_probe_read_user((base + offset as u64) as *const T).ok() }
}
