//! What the daemon reads of a CPU architecture: an ELF file's machine, where an entry probe on
//! a function is cheapest (uprobes emulate some instructions and single-step the rest, which
//! costs a second trap), and the multiarch library directories. One module per architecture
//! behind [`Arch`]; the kernel programs' side is observer-ebpf's `arch`.

mod aarch64;
mod x86_64;

/// A CPU architecture the daemon runs on and reads FFmpeg files of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this daemon is built for.
    #[cfg(target_arch = "x86_64")]
    pub const NATIVE: Arch = Arch::X86_64;
    #[cfg(target_arch = "aarch64")]
    pub const NATIVE: Arch = Arch::Aarch64;

    /// The architecture of an ELF file, if it is one we read.
    pub fn of(elf: &object::File<'_>) -> Option<Arch> {
        use object::Object as _;
        match elf.architecture() {
            object::Architecture::X86_64 if elf.is_64() => Some(Arch::X86_64),
            object::Architecture::Aarch64 if elf.is_64() => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The name operators know it by (Debian's and Docker's).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Where an entry-only probe on the function whose code starts `code` (at `address`) is
    /// cheapest, as an offset from its start, provided the argument registers a probe reads
    /// (the first four) are intact there and every call passes it. `None`: the start itself.
    pub fn cheap_entry(self, code: &[u8], address: u64) -> Option<u64> {
        match self {
            Arch::X86_64 => x86_64::cheap_entry(code, address),
            Arch::Aarch64 => aarch64::cheap_entry(code),
        }
    }
}

/// The multiarch directories the dynamic linker searches first (Debian's and Ubuntu's layout).
#[cfg(target_arch = "x86_64")]
pub const MULTIARCH_LIBRARY_DIRS: [&str; 2] =
    ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"];
#[cfg(target_arch = "aarch64")]
pub const MULTIARCH_LIBRARY_DIRS: [&str; 2] =
    ["/usr/lib/aarch64-linux-gnu", "/lib/aarch64-linux-gnu"];
