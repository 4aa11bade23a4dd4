//! Recognises an FFmpeg copy by what is in the file, not by its name: bundled copies carry
//! hashed names (`libavcodec-5e6b81c2.so.62.28.102`) and static builds are plain executables.
//! A file is FFmpeg if it defines any of the probed API functions; its version comes from
//! the `LavcNN.NN.NNN`-style ident in its read-only data.

use std::{collections::BTreeMap, fs::File, path::Path};

use memchr::memmem;
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};

use crate::ffmpeg::{self, Hook, Library, PROBES, Probe, Version};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot open: {0}")]
    Open(#[source] std::io::Error),
    #[error("not a readable ELF file: {0}")]
    Parse(#[from] object::Error),
    /// The file defines FFmpeg API symbols but carries no version ident we can read.
    #[error("defines the FFmpeg API but carries no version string")]
    NoVersion,
    /// Two different versions of the same library in one file.
    #[error("carries more than one {0:?} version ({1} and {2})")]
    AmbiguousVersion(Library, Version, Version),
    #[error(
        "{library:?} {version} is not a supported FFmpeg release (supported: libavcodec 58 to 63)"
    )]
    UnknownVersion { library: Library, version: Version },
}

impl InspectError {
    /// The `reason` label of `observer_unsupported_files`.
    pub fn reason(&self) -> &'static str {
        match self {
            InspectError::Open(_) => "unreadable",
            InspectError::Parse(_) => "malformed_elf",
            InspectError::NoVersion => "no_version",
            InspectError::AmbiguousVersion(..) => "ambiguous_version",
            InspectError::UnknownVersion { .. } => "unknown_version",
        }
    }
}

/// A probe point found in a file.
#[derive(Clone, Debug)]
pub struct ProbePoint {
    pub probe: Probe,
    /// File offset of the function's first instruction, as uprobes want it.
    pub offset: u64,
}

/// What an FFmpeg file offers.
#[derive(Clone, Debug)]
pub struct FfmpegFile {
    pub points: Vec<ProbePoint>,
    pub versions: BTreeMap<Library, Version>,
    /// The release (as libavcodec major) whose layout reads this file's structs, if any of
    /// its probes reads fields.
    pub release: Option<u32>,
    /// `avcodec_open2`'s address in the file, if it has one.
    pub open2_vaddr: Option<u64>,
    /// Loadable segments: (address, size, file offset), to turn an address into file bytes.
    pub segments: Vec<(u64, u64, u64)>,
}

impl FfmpegFile {
    /// Reads, from the file itself, the identifier (a codec name) that a process sees at
    /// `ptr`, given where that process ran `avcodec_open2` (`open_ip`), which gives the
    /// library's load bias. Works after the process is gone.
    pub fn identifier_at(&self, file: &File, open_ip: u64, ptr: u64) -> Option<[u8; 32]> {
        use std::os::unix::fs::FileExt as _;
        let bias = open_ip.checked_sub(self.open2_vaddr?)?;
        let offset = self.file_offset(ptr.checked_sub(bias)?)?;
        let mut buf = [0u8; 32];
        let n = file.read_at(&mut buf[..31], offset).ok()?;
        crate::procfs::identifier(&buf[..n]).then_some(buf)
    }

    /// The file offset of address `vaddr`, if a loadable segment holds it.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(a, size, _)| vaddr >= *a && vaddr - *a < *size)
            .map(|(a, _, off)| off + (vaddr - a))
    }
}

/// Inspects the file at `path`. `Ok(None)`: not FFmpeg (most files on a node).
pub fn inspect(path: &Path) -> Result<Option<FfmpegFile>, InspectError> {
    let file = File::open(path).map_err(InspectError::Open)?;
    // SAFETY: the map is read-only and private. A library replaced on disk while we read it
    // can change under us; the ELF parser bounds-checks every access, so the worst outcome is
    // a parse error.
    let data = unsafe { memmap2::Mmap::map(&file) }.map_err(InspectError::Open)?;
    inspect_bytes(&data)
}

pub fn inspect_bytes(data: &[u8]) -> Result<Option<FfmpegFile>, InspectError> {
    let elf = object::File::parse(data)?;
    let mut found: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut open2_vaddr = None;
    let wanted = |name: &[u8]| PROBES.iter().find(|p| p.symbol.as_bytes() == name);
    // .dynsym first (stripped static builds export the API there), then .symtab.
    for sym in elf.dynamic_symbols().chain(elf.symbols()) {
        if sym.kind() != SymbolKind::Text || sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name_bytes() else { continue };
        let Some(probe) = wanted(name) else { continue };
        if probe.hook == Hook::Open {
            open2_vaddr = Some(sym.address());
        }
        if found.contains_key(probe.symbol) {
            continue;
        }
        let Some(index) = sym.section_index() else {
            continue;
        };
        let Ok(section) = elf.section_by_index(index) else {
            continue;
        };
        let Some((file_start, _)) = section.file_range() else {
            continue;
        };
        let Some(offset) = sym
            .address()
            .checked_sub(section.address())
            .and_then(|o| o.checked_add(file_start))
        else {
            continue;
        };
        // Entry-only probes may sit a few instructions in (see `cheap_entry`).
        let skip = if probe.hook == Hook::Log {
            section.data().ok().and_then(|d| {
                let at = usize::try_from(sym.address() - section.address()).ok()?;
                cheap_entry(d.get(at..)?, sym.address())
            })
        } else {
            None
        };
        found.insert(probe.symbol, offset + skip.unwrap_or(0));
    }
    if found.is_empty() {
        return Ok(None);
    }

    let points: Vec<ProbePoint> = PROBES
        .iter()
        .filter(|p| p.unless.is_none_or(|other| !found.contains_key(other)))
        .filter_map(|p| {
            found
                .get(p.symbol)
                .map(|&offset| ProbePoint { probe: *p, offset })
        })
        .collect();

    let versions = versions(&elf, data)?;
    let needs_layout = points.iter().any(|p| p.probe.needs_layout);
    let release = if needs_layout {
        // The codec structs are libavcodec's: prefer its version; a libavfilter-only file
        // is read with its own release's row.
        let (library, version) = [Library::Avcodec, Library::Avfilter]
            .into_iter()
            .find_map(|l| versions.get(&l).map(|v| (l, *v)))
            .ok_or(InspectError::NoVersion)?;
        Some(
            ffmpeg::release_of(library, version.major)
                .ok_or(InspectError::UnknownVersion { library, version })?,
        )
    } else {
        None
    };
    let segments = elf
        .segments()
        .filter_map(|seg| {
            let (off, size) = seg.file_range();
            (size > 0).then_some((seg.address(), size, off))
        })
        .collect();
    Ok(Some(FfmpegFile {
        points,
        versions,
        release,
        open2_vaddr,
        segments,
    }))
}

/// Where an entry-only probe on a function is cheapest, as an offset from its start.
///
/// x86 uprobes emulate a few instructions (pushes and direct branches) and single-step the
/// rest out of line, which costs a second trap: `av_vlog` starts with `sub $0x18,%rsp`, and
/// a probe there costs four times one on a `push`. So the probe goes on the first emulated
/// instruction of the function's straight-line start, provided nothing before it writes the
/// argument registers the program reads (rdi, rsi, rdx, and rcx: the `va_list` of a message
/// sent as a structured event) and every call passes it. `None`:
/// the start itself.
pub fn cheap_entry(code: &[u8], address: u64) -> Option<u64> {
    use iced_x86::{
        Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, OpAccess, Register,
    };
    let mut decoder = Decoder::with_ip(
        64,
        &code[..code.len().min(64)],
        address,
        DecoderOptions::NONE,
    );
    let mut info = InstructionInfoFactory::new();
    let args = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];
    for insn in decoder.iter().take(16) {
        if insn.is_invalid() {
            return None;
        }
        let push = matches!(insn.code(), Code::Push_r64);
        let branch = matches!(
            insn.flow_control(),
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
        ) && insn.is_jcc_short_or_near() | insn.is_jmp_short_or_near();
        if push || branch {
            return Some(insn.ip() - address).filter(|&o| o > 0);
        }
        if insn.flow_control() != FlowControl::Next {
            return None;
        }
        let writes_args = info.info(&insn).used_registers().iter().any(|u| {
            args.contains(&u.register().full_register())
                && !matches!(
                    u.access(),
                    OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess
                )
        });
        if writes_args {
            return None;
        }
    }
    None
}

/// Finds the `LIB*_IDENT` strings in the file's read-only data.
fn versions(
    elf: &object::File<'_>,
    data: &[u8],
) -> Result<BTreeMap<Library, Version>, InspectError> {
    let rodata: Vec<&[u8]> = elf
        .sections()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with(".rodata")))
        .filter_map(|s| s.data().ok())
        .collect();
    // A file without section headers: search it whole.
    let haystacks = if rodata.is_empty() {
        vec![data]
    } else {
        rodata
    };
    let mut versions = BTreeMap::new();
    for hay in haystacks.iter().copied() {
        for (ident, library) in Library::IDENTS {
            for at in memmem::find_iter(hay, ident) {
                let rest = &hay[at + ident.len()..];
                // "Lavf" is a prefix of "Lavfi": the longer ident was tried first.
                if library == Library::Avformat && rest.first() == Some(&b'i') {
                    continue;
                }
                // The ident starts a string: it follows a NUL or starts the section.
                if at > 0 && hay[at - 1] != 0 {
                    continue;
                }
                let Some(v) = ffmpeg::parse_version(&rest[..rest.len().min(16)]) else {
                    continue;
                };
                match versions.insert(library, v) {
                    Some(old) if old != v => {
                        return Err(InspectError::AmbiguousVersion(library, old, v));
                    }
                    _ => {}
                }
            }
        }
    }
    // libavfilter embeds no ident string; FFmpeg's linker version script names every shared
    // library's exported symbols `LIBAVFILTER_<major>`, which gives the major.
    if let Some(dynstr) = elf.section_by_name(".dynstr").and_then(|s| s.data().ok()) {
        for (tag, library) in VERSION_TAGS {
            if versions.contains_key(&library) {
                continue;
            }
            for at in memmem::find_iter(dynstr, tag) {
                if at > 0 && dynstr[at - 1] != 0 {
                    continue;
                }
                let digits: Vec<u8> = dynstr[at + tag.len()..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .copied()
                    .collect();
                if digits.is_empty()
                    || digits.len() > 3
                    || dynstr.get(at + tag.len() + digits.len()) != Some(&0)
                {
                    continue;
                }
                let major = digits
                    .iter()
                    .fold(0u32, |a, d| a * 10 + u32::from(d - b'0'));
                versions.insert(
                    library,
                    Version {
                        major,
                        minor: 0,
                        micro: 0,
                    },
                );
            }
        }
    }
    Ok(versions)
}

/// Symbol version names of FFmpeg's shared libraries.
const VERSION_TAGS: [(&[u8], Library); 4] = [
    (b"LIBAVCODEC_", Library::Avcodec),
    (b"LIBAVFORMAT_", Library::Avformat),
    (b"LIBAVFILTER_", Library::Avfilter),
    (b"LIBAVUTIL_", Library::Avutil),
];

#[cfg(test)]
mod tests {
    use super::cheap_entry;

    #[test]
    fn probes_skip_to_the_first_emulated_instruction_while_arguments_are_intact() {
        // Debian's av_vlog: sub $0x18,%rsp; mov %fs:0x28,%rax; mov %rax,0x8(%rsp);
        // mov 0x8b487(%rip),%rax; test %rdi,%rdi; je +0x2a
        let code = [
            0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, 0x48,
            0x89, 0x44, 0x24, 0x08, 0x48, 0x8b, 0x05, 0x87, 0xb4, 0x08, 0x00, 0x48, 0x85, 0xff,
            0x74, 0x2a,
        ];
        assert_eq!(cheap_entry(&code, 0x55b80), Some(28));
        // A function that starts with a push is cheap at its start.
        assert_eq!(cheap_entry(&[0x41, 0x55, 0x41, 0x54], 0x1000), None);
        // mov (%rdi),%rdx overwrites the third argument before the branch: stay at the start.
        let clobber = [
            0x48, 0x83, 0xec, 0x18, 0x48, 0x8b, 0x17, 0x48, 0x85, 0xd2, 0x74, 0x10,
        ];
        assert_eq!(cheap_entry(&clobber, 0x2000), None);
        // A return before any branch: stay at the start.
        assert_eq!(cheap_entry(&[0x48, 0x83, 0xec, 0x18, 0xc3], 0x3000), None);
    }
}
