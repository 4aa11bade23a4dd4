//! Reads from a pipeline's memory. Every read may fail (the page may be swapped out or the
//! pointer garbage): callers treat `None` as "skip this", never as zero.

use aya_ebpf::helpers::{bpf_probe_read_user, bpf_probe_read_user_buf};
use observer_common::layout::ABSENT;

#[inline(always)]
pub fn field<T: Copy>(base: u64, offset: u16) -> Option<T> {
    if base == 0 || offset == ABSENT {
        return None;
    }
    // SAFETY: bpf_probe_read_user copies through the kernel's fault-tolerant path.
    unsafe { bpf_probe_read_user((base + offset as u64) as *const T).ok() }
}

/// The bytes of a struct from offset `lo` on, read in one go: each `bpf_probe_read_user`
/// costs tens of nanoseconds, and the fields a probe needs sit close together (an AVFrame's
/// size, format and pts within 40 bytes in every major).
pub struct Window<const N: usize> {
    lo: u16,
    bytes: [u8; N],
}

impl<const N: usize> Window<N> {
    #[inline(always)]
    pub fn read(base: u64, lo: u16) -> Option<Self> {
        if base == 0 || lo == ABSENT {
            return None;
        }
        let mut bytes = [0u8; N];
        // SAFETY: bpf_probe_read_user_buf copies through the kernel's fault-tolerant path.
        unsafe { bpf_probe_read_user_buf((base + lo as u64) as *const u8, &mut bytes).ok()? };
        Some(Window { lo, bytes })
    }

    /// The field at struct offset `off`, if the window holds it.
    #[inline(always)]
    pub fn get<T: Copy>(&self, off: u16) -> Option<T> {
        if off == ABSENT || off < self.lo {
            return None;
        }
        let i = (off - self.lo) as usize;
        if i + core::mem::size_of::<T>() > N {
            return None;
        }
        // SAFETY: bounds checked above; the bytes are plain data.
        Some(unsafe { core::ptr::read_unaligned(self.bytes.as_ptr().add(i).cast::<T>()) })
    }
}
