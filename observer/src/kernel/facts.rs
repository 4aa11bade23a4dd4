//! What the running kernel offers the programs, read from its BTF ([`crate::btf`]): which
//! program serves each job here, and the values the programs get as `KERNEL`.

use observer_common::kernel::{KernelInfo, KernelOffsets};

use crate::btf::KernelBtf;

/// How socket messages are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketPath {
    /// The `sock_recv_length`/`sock_send_length` tracepoints (Linux 6.3 on): one program per
    /// message, whatever syscall moved it.
    Tracepoints,
    /// fexit on `inet_recvmsg`/`inet_sendmsg` (and their IPv6 twins), which every socket
    /// syscall on an IP socket goes through.
    InetReturns,
    /// Neither exists: no socket counts.
    None(&'static str),
}

/// How drops at a socket are charged to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropPath {
    /// `kfree_skb` names the receiving socket (Linux 6.12 on): every drop at a socket, by
    /// reason.
    KfreeSkb,
    /// `udp_fail_queue_rcv_skb` names the UDP socket whose receive queue refused a datagram;
    /// `kfree_skb`, just before it, gives the reason where it has one (5.17 on).
    UdpQueue,
    None(&'static str),
}

/// The running kernel, as far as the programs care.
#[derive(Clone, Debug)]
pub struct Facts {
    pub info: KernelInfo,
    /// Hash maps may allocate their entries at run time in tracing programs (kernels with
    /// BPF's own allocator, `struct bpf_mem_alloc`, 6.1 on). Before, the verifier warns with a
    /// kernel WARN (and refuses on PREEMPT_RT kernels): those maps are then preallocated.
    pub runtime_alloc: bool,
    pub sockets: SocketPath,
    pub drops: DropPath,
    /// Why holding new files cannot work here, if it cannot.
    pub hold_unavailable: Option<&'static str>,
    /// Why uprobes cannot find their cookie, if they cannot (no attach cookies and no way to
    /// find a probed address's file).
    pub cookies_unavailable: Option<&'static str>,
}

impl Facts {
    /// The facts of the kernel `btf` describes. `attach_cookie` is aya's own probe of the
    /// helper (it loads a program that calls it).
    pub fn read(btf: &KernelBtf, attach_cookie: bool, hold: bool, daemon_tgid: u32) -> Facts {
        let o = |s: &str, f: &str| btf.offset(s, f).unwrap_or(0);
        let offsets = KernelOffsets {
            task_mm: o("task_struct", "mm"),
            task_files: o("task_struct", "files"),
            task_signal: o("task_struct", "signal"),
            signal_tty: o("signal_struct", "tty"),
            files_fdt: o("files_struct", "fdt"),
            fdtable_fd: o("fdtable", "fd"),
            file_inode: o("file", "f_inode"),
            inode_ino: o("inode", "i_ino"),
            inode_generation: o("inode", "i_generation"),
            inode_sb: o("inode", "i_sb"),
            sb_dev: o("super_block", "s_dev"),
            mm_rb: o("mm_struct", "mm_rb"),
            rb_right: o("rb_node", "rb_right"),
            rb_left: o("rb_node", "rb_left"),
            vma_start: o("vm_area_struct", "vm_start"),
            vma_end: o("vm_area_struct", "vm_end"),
            vma_rb: o("vm_area_struct", "vm_rb"),
            vma_pgoff: o("vm_area_struct", "vm_pgoff"),
            vma_file: o("vm_area_struct", "vm_file"),
            socket_sk: o("socket", "sk"),
            bprm_file: o("linux_binprm", "file"),
            file_dentry: o("file", "f_path.dentry"),
            dentry_name: o("dentry", "d_name.name"),
            _pad: 0,
        };
        // Fields a fallback cannot do without sit past offset 0 in every kernel; 0 means the
        // kernel has no such field.
        let present = |offsets: &[u32]| offsets.iter().all(|o| *o != 0);
        let file_fields = present(&[
            offsets.file_inode,
            offsets.inode_sb,
            offsets.inode_ino,
            offsets.inode_generation,
        ]) && btf.offset("super_block", "s_dev").is_some();
        let cookies_unavailable = if attach_cookie {
            None
        } else if !(file_fields
            && present(&[
                offsets.task_mm,
                offsets.vma_rb,
                offsets.vma_end,
                offsets.vma_file,
                offsets.vma_pgoff,
                offsets.rb_left,
            ])
            && btf.offset("mm_struct", "mm_rb").is_some())
        {
            Some("no attach cookies, and no red-black tree of mappings to find a probe's file by")
        } else {
            None
        };
        let hold_unavailable = if !hold {
            Some("turned off (--hold-new-files false)")
        } else if !file_fields
            || !present(&[
                offsets.task_files,
                offsets.files_fdt,
                offsets.task_signal,
                offsets.signal_tty,
                offsets.bprm_file,
                offsets.file_dentry,
                offsets.dentry_name,
            ])
            || btf.offset("fdtable", "fd").is_none()
        {
            Some(
                "the kernel's BTF lacks a field it reads (file, inode, dentry, fdtable, signal_struct)",
            )
        } else if !btf.has_helper("send_signal") {
            Some("no bpf_send_signal helper")
        } else {
            None
        };
        let sockets = if btf.tracepoint_arguments("sock_recv_length") == Some(3)
            && btf.tracepoint_arguments("sock_send_length") == Some(3)
        {
            SocketPath::Tracepoints
        } else if btf.function_arguments("inet_recvmsg") == Some(4)
            && btf.function_arguments("inet_sendmsg") == Some(3)
            && offsets.socket_sk != 0
        {
            SocketPath::InetReturns
        } else {
            SocketPath::None(
                "neither the sock_recv_length/sock_send_length tracepoints nor inet_recvmsg/inet_sendmsg",
            )
        };
        let kfree_skb_args = btf.tracepoint_arguments("kfree_skb").unwrap_or(0);
        let drops = if kfree_skb_args >= 4 {
            DropPath::KfreeSkb
        } else if btf
            .tracepoint_arguments("udp_fail_queue_rcv_skb")
            .unwrap_or(0)
            >= 2
        {
            DropPath::UdpQueue
        } else {
            DropPath::None("kfree_skb names no socket and udp_fail_queue_rcv_skb is missing")
        };
        let info = KernelInfo {
            attach_cookie: attach_cookie as u32,
            task_pt_regs: (btf.has_helper("task_pt_regs") && btf.has_helper("get_current_task_btf"))
                as u32,
            kfree_skb_args: kfree_skb_args as u32,
            retransmit_args: btf.tracepoint_arguments("tcp_retransmit_skb").unwrap_or(0) as u32,
            hold: hold_unavailable.is_none() as u32,
            daemon_tgid,
            page_shift: page_size().trailing_zeros(),
            _pad: 0,
            offsets,
        };
        Facts {
            info,
            runtime_alloc: btf.has_struct("bpf_mem_alloc"),
            sockets,
            drops,
            hold_unavailable,
            cookies_unavailable,
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel (the suite runs this on every kernel of its matrix): whatever it
    /// lacks, each job has a way, and every offset a chosen way reads was found.
    #[test]
    fn every_job_has_a_way_on_the_running_kernel() {
        let btf = KernelBtf::load().expect("BTF");
        let cookie = aya::features().bpf_cookie();
        let f = Facts::read(&btf, cookie, true, std::process::id());
        assert_eq!(f.cookies_unavailable, None);
        assert_eq!(f.hold_unavailable, None);
        assert!(!matches!(f.sockets, SocketPath::None(_)), "{:?}", f.sockets);
        assert!(!matches!(f.drops, DropPath::None(_)), "{:?}", f.drops);
        assert!(f.info.kfree_skb_args >= 2, "{:?}", f.info);
        assert!((2..=3).contains(&f.info.retransmit_args), "{:?}", f.info);
        assert_eq!(f.info.page_shift, 12);
        let o = f.info.offsets;
        for (name, v) in [
            ("task_struct.mm", o.task_mm),
            ("task_struct.files", o.task_files),
            ("file.f_inode", o.file_inode),
            ("inode.i_sb", o.inode_sb),
            ("linux_binprm.file", o.bprm_file),
        ] {
            assert_ne!(v, 0, "{name}");
        }
        if f.info.attach_cookie == 0 {
            assert!(o.mm_rb != 0 && o.vma_rb != 0, "{o:?}");
        }
    }
}
