//! What the running kernel offers (`KERNEL`, set by the loader from the kernel's BTF; see
//! `observer_common::kernel`), and the reads of kernel structs that the fallbacks for older
//! kernels need. Every read goes through `bpf_probe_read_kernel` at an offset the loader
//! found in the kernel's own BTF: a field that moved between releases is read where it is.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use observer_common::kernel::{FileKey, KernelInfo};

/// Set by the loader; zero (no cookies, no offsets) only in an object never loaded.
#[unsafe(no_mangle)]
pub(crate) static KERNEL: KernelInfo = KernelInfo {
    attach_cookie: 0,
    task_pt_regs: 0,
    kfree_skb_args: 0,
    retransmit_args: 0,
    hold: 0,
    daemon_tgid: 0,
    page_shift: 12,
    _pad: 0,
    offsets: observer_common::kernel::KernelOffsets {
        task_mm: 0,
        task_files: 0,
        task_signal: 0,
        signal_tty: 0,
        files_fdt: 0,
        fdtable_fd: 0,
        file_inode: 0,
        inode_ino: 0,
        inode_generation: 0,
        inode_sb: 0,
        sb_dev: 0,
        mm_rb: 0,
        rb_right: 0,
        rb_left: 0,
        vma_start: 0,
        vma_end: 0,
        vma_rb: 0,
        vma_pgoff: 0,
        vma_file: 0,
        socket_sk: 0,
        bprm_file: 0,
        file_dentry: 0,
        dentry_name: 0,
        _pad: 0,
    },
};

/// One field of `KERNEL`, read so that the compiler cannot fold it (the object is built before
/// the kernel is known) while the verifier, which sees a frozen read-only map, can: a branch on
/// it that this kernel cannot take is never verified.
macro_rules! kernel {
    ($($field:tt)+) => {
        // SAFETY: a plain read of a read-only global.
        unsafe { core::ptr::read_volatile(&raw const crate::kernel::KERNEL.$($field)+) }
    };
}
pub(crate) use kernel;

/// A kernel value at `base + offset`, if the read succeeds and `base` is set.
#[inline(always)]
pub fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-tolerant path.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// The current task (`struct task_struct *`).
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: the helper has no arguments.
    unsafe { bpf_get_current_task() }
}

/// The file behind `struct file *file`, as [`FileKey`] names it.
#[inline(always)]
pub fn file_key(file: u64) -> Option<FileKey> {
    let inode: u64 = read(file, kernel!(offsets.file_inode))?;
    let sb: u64 = read(inode, kernel!(offsets.inode_sb))?;
    Some(FileKey {
        dev: read(sb, kernel!(offsets.sb_dev))?,
        generation: read(inode, kernel!(offsets.inode_generation))?,
        ino: read(inode, kernel!(offsets.inode_ino))?,
    })
}

/// The `struct file *` open at descriptor `fd` of the current task (0 if none).
#[inline(always)]
pub fn fd_file(fd: u64) -> u64 {
    let files: u64 = read(current_task(), kernel!(offsets.task_files)).unwrap_or(0);
    let fdt: u64 = read(files, kernel!(offsets.files_fdt)).unwrap_or(0);
    let table: u64 = read(fdt, kernel!(offsets.fdtable_fd)).unwrap_or(0);
    if table == 0 {
        return 0;
    }
    read(table + fd * 8, 0).unwrap_or(0)
}

/// The longest file name searched for an FFmpeg-like part.
const NAME_LEN: usize = 64;

/// Whether the file (`struct file *`) is named like a part of FFmpeg: its name holds
/// `avcodec`, `avformat`, `avutil`, `avfilter`, `ffmpeg` or `ffprobe` (system libraries,
/// wheels' hashed copies such as `libavcodec-1a1332f2.so.60`, static builds, Chromium's
/// `libffmpeg.so`). Only such files hold a process: any other stays unheld.
#[inline(always)]
pub fn named_like_ffmpeg(file: u64) -> bool {
    let Some(dentry) = read::<u64>(file, kernel!(offsets.file_dentry)) else {
        return false;
    };
    let Some(name) = read::<u64>(dentry, kernel!(offsets.dentry_name)) else {
        return false;
    };
    let mut buf = [0u8; NAME_LEN];
    // SAFETY: a fault-tolerant copy bounded by the buffer.
    if unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(name as *const u8, &mut buf) }
        .is_err()
    {
        return false;
    }
    let at = |i: usize| buf.get(i).copied().unwrap_or(0);
    let mut i = 0;
    while i + 6 <= NAME_LEN {
        let w = [at(i), at(i + 1), at(i + 2), at(i + 3), at(i + 4), at(i + 5)];
        match w {
            [0, ..] => return false,
            [b'a', b'v', b'c', b'o', b'd', b'e']
            | [b'a', b'v', b'f', b'o', b'r', b'm']
            | [b'a', b'v', b'u', b't', b'i', b'l']
            | [b'a', b'v', b'f', b'i', b'l', b't']
            | [b'f', b'f', b'm', b'p', b'e', b'g']
            | [b'f', b'f', b'p', b'r', b'o', b'b'] => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Whether the current process has a controlling terminal: an interactive job, whose shell
/// would take a stop for the user's Ctrl-Z.
#[inline(always)]
pub fn has_terminal() -> bool {
    let signal: u64 = read(current_task(), kernel!(offsets.task_signal)).unwrap_or(0);
    read::<u64>(signal, kernel!(offsets.signal_tty)).is_some_and(|tty| tty != 0)
}

/// Deepest a mapping tree is walked: a red-black tree of n mappings is at most 2·log2(n+1)
/// deep, 40 for a million mappings.
const MAX_TREE_DEPTH: u32 = 40;

/// The mapping of address space `mm` (`struct mm_struct *`) that holds user address `ip`: (`struct
/// vm_area_struct *`, its start), from the red-black tree of mappings that kernels before 6.1
/// keep (the only ones that need this: they lack attach cookies). The tree is read without the
/// process's mmap lock: a mapping changing meanwhile can make the walk miss, never crash.
#[inline(always)]
pub fn mapping_of(mm: u64, ip: u64) -> Option<(u64, u64)> {
    let mut node: u64 = read(mm, kernel!(offsets.mm_rb))?;
    let (vma_rb, left, right) = (
        kernel!(offsets.vma_rb) as u64,
        kernel!(offsets.rb_left),
        kernel!(offsets.rb_right),
    );
    let mut depth = 0;
    while depth < MAX_TREE_DEPTH {
        if node < vma_rb {
            return None;
        }
        let vma = node - vma_rb;
        let start: u64 = read(vma, kernel!(offsets.vma_start))?;
        let end: u64 = read(vma, kernel!(offsets.vma_end))?;
        if ip < start {
            node = read(node, left)?;
        } else if ip >= end {
            node = read(node, right)?;
        } else {
            return Some((vma, start));
        }
        depth += 1;
    }
    None
}
