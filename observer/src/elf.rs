//! Recognises an FFmpeg copy by what is in the file, not by its name: bundled copies carry
//! hashed names (`libavcodec-5e6b81c2.so.62.28.102`) and static builds are plain executables.
//! A file is FFmpeg if it defines any of the probed API functions; its version comes from
//! the `LavcNN.NN.NNN`-style ident in its read-only data.

use std::{collections::BTreeMap, fs::File, path::Path};

use memchr::memmem;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

use crate::ffmpeg::{self, Library, PROBES, Probe, Version};

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
    let wanted = |name: &[u8]| PROBES.iter().find(|p| p.symbol.as_bytes() == name);
    // .dynsym first (stripped static builds export the API there), then .symtab.
    for sym in elf.dynamic_symbols().chain(elf.symbols()) {
        if sym.kind() != SymbolKind::Text || sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name_bytes() else { continue };
        let Some(probe) = wanted(name) else { continue };
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
        found.insert(probe.symbol, offset);
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
    Ok(Some(FfmpegFile {
        points,
        versions,
        release,
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
