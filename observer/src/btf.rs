//! The running kernel as its own BTF describes it (`/sys/kernel/btf/vmlinux`): which structs,
//! functions and helpers it has, how many arguments each tracepoint passes, and where the
//! fields that the kernel programs' fallbacks read sit. The kernel programs are chosen from
//! these facts, never from the version string: distributions backport, and the same release
//! number means different things on different vendors' kernels.

use std::collections::HashMap;

use btfparse::{Offset, Readable, TypeInformation, TypeVariant};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the kernel's BTF: {0:?}")]
    Parse(btfparse::Error),
}

/// Where the kernel keeps its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's types, with structs, enums and functions indexed by name.
pub struct KernelBtf {
    types: TypeInformation,
    structs: HashMap<String, u32>,
    functions: HashMap<String, u32>,
    typedefs: HashMap<String, u32>,
    enums: HashMap<String, u32>,
}

struct Bytes<'a>(&'a [u8]);

impl Readable for Bytes<'_> {
    // Called for every few bytes of a kernel's BTF (strings byte by byte: millions of calls),
    // so written to stay cheap in a debug build too, where nothing here is inlined: the
    // kernel matrix runs the debug daemon on an emulated CPU.
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let (len, n) = (self.0.len() as u64, buffer.len() as u64);
        if offset > len || n > len - offset {
            return Err(btfparse::Error::new(
                btfparse::ErrorKind::IOError,
                "read past the end of the BTF data",
            ));
        }
        let start = offset as usize;
        if let [byte] = buffer {
            *byte = self.0[start];
        } else {
            buffer.copy_from_slice(&self.0[start..start + buffer.len()]);
        }
        Ok(())
    }
}

impl KernelBtf {
    /// The running kernel's BTF.
    pub fn load() -> Result<KernelBtf, BtfError> {
        let data = std::fs::read(VMLINUX).map_err(|source| BtfError::Read {
            path: VMLINUX,
            source,
        })?;
        KernelBtf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<KernelBtf, BtfError> {
        let types = TypeInformation::new(&Bytes(data)).map_err(BtfError::Parse)?;
        let (mut structs, mut functions, mut typedefs, mut enums) = (
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
        );
        // Names are indexed per kind: a struct, a function and a typedef can share one, and a
        // forward declaration must never stand for the struct it declares.
        for (id, t) in types.get() {
            let (index, name) = match t {
                TypeVariant::Struct(s) => (&mut structs, s.name()),
                TypeVariant::Func(f) => (&mut functions, f.name()),
                TypeVariant::Typedef(t) => (&mut typedefs, t.name()),
                TypeVariant::Enum(e) => (&mut enums, e.name()),
                _ => continue,
            };
            if let Some(name) = name {
                index.entry(name.clone()).or_insert(*id);
            }
        }
        Ok(KernelBtf {
            types,
            structs,
            functions,
            typedefs,
            enums,
        })
    }

    pub fn has_struct(&self, name: &str) -> bool {
        self.structs.contains_key(name)
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// The byte offset of `path` (`"mm"`, `"d_name.len"`) in `struct strukt`.
    pub fn offset(&self, strukt: &str, path: &str) -> Option<u32> {
        let id = *self.structs.get(strukt)?;
        match self.types.offset_of(id, path).ok()?.1 {
            Offset::ByteOffset(b) => Some(b),
            // A bitfield is no field a program can read at an offset.
            Offset::BitOffsetAndSize(..) => None,
        }
    }

    /// How many arguments function `name` takes.
    pub fn function_arguments(&self, name: &str) -> Option<usize> {
        let TypeVariant::Func(f) = self.types.from_id(*self.functions.get(name)?)? else {
            return None;
        };
        self.prototype_arguments(*f.prototype_tid())
    }

    /// How many arguments tracepoint `name` passes its programs: its `btf_trace_NAME` typedef
    /// is a pointer to a prototype whose first parameter is the tracepoint's own data.
    pub fn tracepoint_arguments(&self, name: &str) -> Option<usize> {
        let id = *self.typedefs.get(&format!("btf_trace_{name}"))?;
        let TypeVariant::Typedef(t) = self.types.from_id(id)? else {
            return None;
        };
        let pointee = self.types.pointee_tid(*t.tid()).ok()?;
        self.prototype_arguments(pointee)?.checked_sub(1)
    }

    fn prototype_arguments(&self, id: u32) -> Option<usize> {
        match self.types.from_id(id)? {
            TypeVariant::FuncProto(p) => Some(p.parameter_list().len()),
            _ => None,
        }
    }

    /// Whether `enum name` has a value named `value` (`bpf_func_id`, `BPF_FUNC_task_pt_regs`:
    /// the helpers this kernel has).
    pub fn has_enum_value(&self, name: &str, value: &str) -> bool {
        let Some(TypeVariant::Enum(e)) =
            self.enums.get(name).and_then(|id| self.types.from_id(*id))
        else {
            return false;
        };
        e.named_value_list().iter().any(|v| v.name == value)
    }

    /// Whether the kernel has BPF helper `name` (`task_pt_regs`).
    pub fn has_helper(&self, name: &str) -> bool {
        self.has_enum_value("bpf_func_id", &format!("BPF_FUNC_{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel this runs on: every kernel the suite runs on has BTF (5.10 with BTF is the
    /// oldest the daemon supports).
    fn running() -> KernelBtf {
        KernelBtf::load().expect("the running kernel's BTF")
    }

    #[test]
    fn facts_read_from_the_running_kernels_btf() {
        let btf = running();
        // Present in every kernel with BTF.
        assert!(btf.has_struct("task_struct"));
        assert!(!btf.has_struct("no_such_struct"));
        assert!(btf.has_function("do_exit"));
        assert!(btf.has_helper("probe_read_kernel"));
        assert!(!btf.has_helper("no_such_helper"));
        // struct file's inode pointer sits past its first members on every kernel, and a
        // struct's first member is at 0.
        assert!(btf.offset("file", "f_inode").is_some_and(|o| o > 0));
        assert_eq!(btf.offset("list_head", "next"), Some(0));
        assert_eq!(btf.offset("list_head", "prev"), Some(8));
        assert_eq!(btf.offset("task_struct", "no_such_field"), None);
        // `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
        assert_eq!(btf.tracepoint_arguments("sched_process_exec"), Some(3));
        assert_eq!(btf.tracepoint_arguments("no_such_tracepoint"), None);
        // `int inet_recvmsg(struct socket *, struct msghdr *, size_t, int)`
        assert_eq!(btf.function_arguments("inet_recvmsg"), Some(4));
    }

    #[test]
    fn truncated_btf_is_an_error_not_a_panic() {
        let data = std::fs::read(VMLINUX).unwrap();
        for len in [0, 10, 24, data.len() / 2] {
            assert!(KernelBtf::parse(&data[..len]).is_err(), "{len} bytes");
        }
    }
}
