//! What the running kernel offers the programs. The daemon reads it from the kernel's own BTF
//! (its helpers, the argument lists of its tracepoints, the layout of the structs a fallback
//! reads) and sets it at load time as the programs' read-only `KERNEL`, so one object serves
//! every kernel from 5.10: the verifier sees these values as constants and never visits the
//! branch a kernel cannot run (a helper it lacks, an argument its tracepoint does not have).

/// See the module. Flags are `u32` (0 or 1) so the type has no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelInfo {
    /// `bpf_get_attach_cookie` for uprobes (Linux 5.15 on). Without it a probe finds its cookie
    /// from the file and offset of the probed instruction (`PROBE_COOKIES`), and a return probe
    /// from its entry's stack pointer.
    pub attach_cookie: u32,
    /// `bpf_task_pt_regs` and `bpf_get_current_task_btf` (5.15 on). Without them the socket
    /// programs learn the syscall they fire in from its entry tracepoint (`SYSCALL_ARGS`).
    pub task_pt_regs: u32,
    /// How many arguments `kfree_skb` passes: 2 (`skb`, `location`), 3 (and `reason`, 5.17
    /// on), 4 (and `rx_sk`, the receiving socket, 6.12 on). Below 4, drops at a UDP socket's
    /// receive queue are charged at `udp_fail_queue_rcv_skb`, which names the socket.
    pub kfree_skb_args: u32,
    /// How many arguments `tcp_retransmit_skb` passes: 2 (`sk`, `skb`: fired only for a
    /// retransmission sent) or 3 (and `err`, the transmission's result).
    pub retransmit_args: u32,
    /// Stop a process that maps an executable file named like FFmpeg that the daemon has not
    /// judged yet, until the daemon has inspected it and attached its probes
    /// (`--hold-new-files`).
    pub hold: u32,
    /// The daemon's own process: never held.
    pub daemon_tgid: u32,
    /// log2 of the page size, for a mapping's file offset.
    pub page_shift: u32,
    pub _pad: u32,
    pub offsets: KernelOffsets,
}

/// Byte offsets of the kernel fields the fallbacks read with `bpf_probe_read_kernel`, from the
/// running kernel's BTF. 0 where the kernel has no such field (or none is needed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    // struct task_struct
    pub task_mm: u32,
    pub task_files: u32,
    pub task_signal: u32,
    // struct signal_struct
    pub signal_tty: u32,
    // struct files_struct / struct fdtable
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    // struct file / struct inode / struct super_block
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_generation: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    // struct mm_struct (its red-black tree of mappings, before 6.1's maple tree) and
    // struct rb_node
    pub mm_rb: u32,
    pub rb_right: u32,
    pub rb_left: u32,
    // struct vm_area_struct
    pub vma_start: u32,
    pub vma_end: u32,
    pub vma_rb: u32,
    pub vma_pgoff: u32,
    pub vma_file: u32,
    // struct socket
    pub socket_sk: u32,
    // struct linux_binprm
    pub bprm_file: u32,
    // struct file: its dentry; struct dentry: its name
    pub file_dentry: u32,
    pub dentry_name: u32,
    pub _pad: u32,
}

crate::user_pod!(KernelInfo, KernelOffsets);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 24 * 4);
const _: () = assert!(core::mem::size_of::<KernelInfo>() == 8 * 4 + 24 * 4);

/// A file as the kernel names it: `super_block.s_dev` (the kernel's `dev_t`, major << 20 |
/// minor), `inode.i_generation` and `inode.i_ino`. The generation tells apart two files that
/// got the same inode number one after the other (ext4 and tmpfs draw it at random).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u32,
    pub generation: u32,
    pub ino: u64,
}

/// A probe point as the kernel finds it without cookies: the file (`dev`, `ino`, as in
/// [`FileKey`] without the generation: /proc/PID/maps shows the same two numbers) and the
/// probed instruction's offset in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
    pub offset: u64,
}

/// A process stopped because it mapped a file not judged yet: what it mapped and since when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub since_ns: u64,
    pub file: FileKey,
}

crate::user_pod!(FileKey, ProbeKey, Held);

/// Most processes held at once; another one mapping an unjudged file then runs unheld (and
/// may lose its first frames, as without holding).
pub const MAX_HELD: u32 = 1024;
/// Files judged (inspected, and attached if FFmpeg) that map without a hold.
pub const MAX_JUDGED: u32 = 65536;
/// Probe points known by file and offset (kernels without attach cookies).
pub const MAX_PROBE_POINTS: u32 = 16384;

/// The drop reason recorded where the kernel passes none (`kfree_skb` before 5.17): the daemon
/// names it `NOT_SPECIFIED`, the kernel's own name for a drop without a reason.
pub const REASON_NOT_GIVEN: u32 = 0xffff_fffe;
