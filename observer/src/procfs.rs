//! The little of /proc the daemon reads: executable file mappings, names and start times.

use std::{fs, path::PathBuf};

/// A file on some filesystem, as /proc/PID/maps names it: device and inode. The same library
/// seen from two mount namespaces has the same identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub inode: u64,
}

/// One executable file mapping of a process.
#[derive(Clone, Debug)]
pub struct ExecMapping {
    pub id: FileId,
    /// The path inside the process's mount namespace, as the maps file prints it.
    pub path: String,
    pub start: u64,
    pub end: u64,
}

impl ExecMapping {
    /// A path the daemon can open whatever namespace the process is in, and even after the
    /// file was deleted or replaced: the kernel keeps the mapping's file reachable here.
    pub fn open_path(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))
    }
}

/// Parses /proc/PID/maps into its executable file mappings, one per file.
pub fn exec_mappings(pid: u32) -> std::io::Result<Vec<ExecMapping>> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(parse_maps(&text))
}

pub fn parse_maps(text: &str) -> Vec<ExecMapping> {
    let mut out: Vec<ExecMapping> = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(_off), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.next().unwrap_or("").trim_start();
        if !perms.contains('x') || path.is_empty() || path.starts_with('[') {
            continue;
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if inode == 0 {
            continue;
        }
        let Some((maj, min)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (u64::from_str_radix(maj, 16), u64::from_str_radix(min, 16))
        else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let id = FileId {
            dev: (maj << 32) | min,
            inode,
        };
        if out.iter().any(|m| m.id == id) {
            continue;
        }
        out.push(ExecMapping {
            id,
            path: path.to_string(),
            start,
            end,
        });
    }
    out
}

/// The identity /proc/PID/maps gives `file` when a process maps it, which is not always what
/// `stat` says: on an overlay (a container's root) `stat` answers with the overlay's device,
/// while a mapping holds the file underneath. Found by mapping the file's first page (read
/// only, never executable) and reading this process's own maps.
pub fn mapped_id(file: &fs::File) -> std::io::Result<FileId> {
    // SAFETY: a private read-only mapping, unmapped at the end of this function; its bytes are
    // never read.
    let map = unsafe { memmap2::MmapOptions::new().len(1).map(file)? };
    let start = map.as_ptr() as u64;
    let maps = fs::read_to_string("/proc/self/maps")?;
    maps.lines()
        .find_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let (from, _) = range.split_once('-')?;
            if u64::from_str_radix(from, 16).ok()? != start {
                return None;
            }
            let (_perms, _off, dev, inode) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let (maj, min) = dev.split_once(':')?;
            Some(FileId {
                dev: (u64::from_str_radix(maj, 16).ok()? << 32)
                    | u64::from_str_radix(min, 16).ok()?,
                inode: inode.parse().ok()?,
            })
        })
        .ok_or_else(|| std::io::Error::other("the file's mapping is not in /proc/self/maps"))
}

/// All process ids, from the names of /proc's numeric entries.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The process's name (comm), as `ps` shows it.
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// What /proc/PID/stat says about a process's life.
#[derive(Clone, Copy, Debug)]
pub struct ProcStat {
    /// Start time, nanoseconds since boot, suspend included: the kernel programs' clock
    /// (`bpf_ktime_get_boot_ns`).
    pub start_ns: u64,
    pub zombie: bool,
    /// Stopped by a signal (`T`) or a tracer (`t`).
    pub stopped: bool,
}

/// The command line, arguments separated by spaces, at most 4 KiB (not redacted).
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let raw = &raw[..raw.len().min(4096)];
    let text = String::from_utf8_lossy(raw).replace('\0', " ");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

pub fn stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?;
    // Field 22 of stat is starttime; fields here start at field 3.
    let ticks: u64 = fields.get(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ProcStat {
        start_ns: ticks * (1_000_000_000 / hz),
        zombie: matches!(*state, "Z" | "X"),
        stopped: matches!(*state, "T" | "t"),
    })
}

/// Reads a NUL-terminated identifier (a codec name) of at most `N - 1` bytes from a
/// process's memory, faulting its page in if need be. `None` unless it is a plausible
/// identifier: letters, digits, `_`, `-` and `.`.
pub fn read_c_string<const N: usize>(pid: u32, addr: u64) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    read_mem(pid, addr, &mut buf[..N - 1])?;
    identifier(&buf).then_some(buf)
}

/// Whether `buf` starts with a NUL-terminated identifier (a codec name): letters, digits,
/// `_`, `-` and `.`.
pub fn identifier(buf: &[u8]) -> bool {
    let Some(end) = buf.iter().position(|&c| c == 0) else {
        return false;
    };
    end > 0
        && buf[..end]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// Reads a NUL-terminated message template (a printf format string) of at most `max`
/// bytes from a process, faulting its page in if need be. `None` unless it is printable text.
pub fn read_template(pid: u32, addr: u64, max: usize) -> Option<String> {
    let mut buf = vec![0u8; max];
    let n = read_mem(pid, addr, &mut buf)?;
    let end = buf[..n].iter().position(|&c| c == 0).unwrap_or(n);
    let text = &buf[..end];
    let printable = text
        .iter()
        .all(|c| c.is_ascii_graphic() || matches!(c, b' ' | b'\n' | b'\t' | b'\r'));
    (printable && !text.is_empty()).then(|| String::from_utf8_lossy(text).into_owned())
}

/// Copies a process's memory at `addr` into `buf`, faulting pages in; returns the bytes read.
/// A read that crosses into an unmapped page returns what came before it.
fn read_mem(pid: u32, addr: u64, buf: &mut [u8]) -> Option<usize> {
    // Read page by page, so a string ending just before an unmapped page still reads.
    let mut done = 0;
    while done < buf.len() {
        let at = addr + done as u64;
        let page_left = 4096 - (at % 4096) as usize;
        let len = page_left.min(buf.len() - done);
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: the local iovec covers our own buffer; the remote one is only read by the
        // kernel.
        let n = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            break;
        }
        done += n as usize;
        if buf[done - n as usize..done].contains(&0) {
            break;
        }
    }
    (done > 0).then_some(done)
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The identity found by mapping a file is the one a process's maps give it: this test's
    /// own executable, which the kernel mapped when it started.
    #[test]
    fn a_mapped_files_identity_is_the_one_processes_maps_show() {
        use std::path::Path;
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let from_maps = exec_mappings(std::process::id())
            .unwrap()
            .into_iter()
            .find(|m| Path::new(&m.path) == exe)
            .expect("this executable's mapping")
            .id;
        let file = fs::File::open(&exe).unwrap();
        assert_eq!(mapped_id(&file).unwrap(), from_maps);
    }

    #[test]
    fn maps_keep_one_executable_mapping_per_file() {
        let text = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234 /usr/bin/ffmpeg
55d0c0a02000-55d0c0a04000 r-xp 00002000 fe:01 1234 /usr/bin/ffmpeg
7f00000000-7f00100000 r-xp 00000000 00:1f 99 /opt/app/lib/libavcodec-5e6b81c2.so.62.28.102
7f00200000-7f00300000 r-xp 00000000 00:1f 99 /opt/app/lib/libavcodec-5e6b81c2.so.62.28.102
7f00400000-7f00500000 r-xp 00000000 00:00 0 
7ffd0000-7ffd1000 r-xp 00000000 00:00 0 [vdso]
7f00600000-7f00700000 r-xp 00000000 08:02 77 /usr/lib/lib with space.so (deleted)
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].path, "/usr/bin/ffmpeg");
        assert_eq!(
            maps[0].id,
            FileId {
                dev: (0xfe << 32) | 1,
                inode: 1234
            }
        );
        assert_eq!(maps[1].start, 0x7f00000000);
        assert_eq!(maps[2].path, "/usr/lib/lib with space.so (deleted)");
        assert_eq!(
            maps[0].open_path(42),
            PathBuf::from("/proc/42/map_files/55d0c0a02000-55d0c0a04000")
        );
    }

    #[test]
    fn reads_identifiers_from_a_process() {
        static NAME: &[u8] = b"h264_cuvid\0";
        let got: [u8; 32] = read_c_string(std::process::id(), NAME.as_ptr() as u64).unwrap();
        assert_eq!(&got[..11], NAME);
        static BAD: &[u8] = b"no spaces\0";
        assert!(read_c_string::<32>(std::process::id(), BAD.as_ptr() as u64).is_none());
        assert!(read_c_string::<32>(std::process::id(), 8).is_none());
    }

    #[test]
    fn reads_templates_from_a_process() {
        static T: &[u8] = b"Continuity check failed for pid %d expected %d got %d\n\0";
        let got = read_template(std::process::id(), T.as_ptr() as u64, 96).unwrap();
        assert_eq!(
            got,
            "Continuity check failed for pid %d expected %d got %d\n"
        );
        static BIN: &[u8] = b"\x01\x02garbage\0";
        assert!(read_template(std::process::id(), BIN.as_ptr() as u64, 96).is_none());
    }

    #[test]
    fn own_stat_reads() {
        let s = stat(std::process::id()).expect("own stat");
        assert!(!s.zombie);
        assert!(s.start_ns > 0);
    }
}
