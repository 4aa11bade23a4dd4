//! Recognises an FFmpeg copy by what is in the file, not by its name: bundled copies carry
//! hashed names (`libavcodec-5e6b81c2.so.62.28.102`) and static builds are plain executables.
//! A file is FFmpeg if it defines any of the probed API functions; its version comes from
//! the `LavcNN.NN.NNN`-style ident in its read-only data.

use std::{collections::BTreeMap, fs::File, path::Path};

use memchr::memmem;
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};

use crate::{
    arch::Arch,
    ffmpeg::{self, Hook, Library, PROBES, Probe, Version},
};

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
    /// Built for a machine this daemon does not run (another architecture's container under
    /// an emulator, a 32-bit copy): its code never runs natively, so no probe would fire.
    #[error("built for {0}, and this daemon runs on {native}", native = Arch::NATIVE.name())]
    OtherArchitecture(String),
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
            InspectError::OtherArchitecture(_) => "other_architecture",
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
    /// The machine its code is for.
    pub arch: Arch,
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

/// Inspects the file at `path` for this daemon to probe. `Ok(None)`: not FFmpeg (most files
/// on a node). An FFmpeg copy for another architecture is an error.
pub fn inspect(path: &Path) -> Result<Option<FfmpegFile>, InspectError> {
    let file = File::open(path).map_err(InspectError::Open)?;
    // SAFETY: the map is read-only and private. A library replaced on disk while we read it
    // can change under us; the ELF parser bounds-checks every access, so the worst outcome is
    // a parse error.
    let data = unsafe { memmap2::Mmap::map(&file) }.map_err(InspectError::Open)?;
    match inspect_bytes(&data)? {
        Some(f) if f.arch != Arch::NATIVE => {
            Err(InspectError::OtherArchitecture(f.arch.name().to_string()))
        }
        found => Ok(found),
    }
}

/// Inspects an ELF file of any architecture the daemon reads.
pub fn inspect_bytes(data: &[u8]) -> Result<Option<FfmpegFile>, InspectError> {
    let elf = object::File::parse(data)?;
    let arch = Arch::of(&elf);
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
                arch?.cheap_entry(d.get(at..)?, sym.address())
            })
        } else {
            None
        };
        found.insert(probe.symbol, offset + skip.unwrap_or(0));
    }
    if found.is_empty() {
        return Ok(None);
    }
    let arch = arch.ok_or_else(|| {
        use object::Object as _;
        InspectError::OtherArchitecture(format!("{:?}", elf.architecture()).to_lowercase())
    })?;

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
        arch,
    }))
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
