//! Finds FFmpeg copies in processes and keeps the probes attached while anything maps them:
//! one attachment per file (device, inode), reference-counted by the processes that map it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use observer_common::kernel::FileKey;

use crate::{
    elf::{self, FfmpegFile},
    kernel::{Attachment, Kernel, kernel_dev},
    procfs::{self, ExecMapping, FileId},
};

/// What a file turned out to be; kept per (device, inode) so each file is read once.
#[derive(Clone)]
enum Verdict {
    NotFfmpeg,
    Unsupported,
    Ffmpeg(Arc<FfmpegFile>),
}

struct AttachedFile {
    attachment: Attachment,
    /// Names the kernel gave this file when it held processes for it (`JUDGED`): forgotten
    /// when the file is detached, so the next process that maps it is held again.
    judged: Vec<FileKey>,
    path: String,
    file: Arc<FfmpegFile>,
    /// Kept open so strings can be read from the file after every process using it (and
    /// its mount namespace) is gone.
    handle: std::fs::File,
    /// Processes mapping the file now. Files attached at start from the library path stay
    /// attached with none.
    pids: HashSet<u32>,
    pinned: bool,
    /// When the last process unmapped it.
    unused_since: Option<Instant>,
}

/// A process the daemon has seen map at least one FFmpeg file.
#[derive(Clone, Debug)]
pub struct Process {
    pub comm: String,
    /// The command line, URLs redacted, read while the process surely runs.
    pub command_line: Option<String>,
    /// Start time, the kernel programs' clock.
    pub start_ns: Option<u64>,
    /// The container it runs in (None on the host).
    pub container: Option<crate::container::Container>,
    files: Vec<FileId>,
}

/// What is kept of a process, read from /proc while it runs; a field is None (comm empty)
/// where the process had exited.
pub struct ProcessFacts {
    comm: Option<String>,
    command_line: Option<String>,
    start_ns: Option<u64>,
    container: Option<crate::container::Container>,
}

impl ProcessFacts {
    pub fn read(pid: u32) -> ProcessFacts {
        ProcessFacts {
            comm: procfs::comm(pid),
            command_line: procfs::cmdline(pid).map(|c| crate::redact::redact_text(&c)),
            start_ns: procfs::stat(pid).map(|s| s.start_ns),
            container: crate::container::of_process(pid),
        }
    }
}

impl Process {
    fn new(facts: ProcessFacts, files: Vec<FileId>) -> Process {
        Process {
            comm: facts.comm.unwrap_or_default(),
            command_line: facts.command_line,
            start_ns: facts.start_ns,
            container: facts.container,
            files,
        }
    }
}

/// One attached file, for `/metrics`.
#[derive(Clone, Debug)]
pub struct AttachedInfo {
    pub path: String,
    pub versions: String,
}

pub struct Tracker {
    verdicts: HashMap<FileId, Verdict>,
    attached: HashMap<FileId, AttachedFile>,
    processes: HashMap<u32, Process>,
    /// Distinct unsupported files by reason.
    unsupported: BTreeMap<&'static str, HashSet<FileId>>,
    /// Inspections of a mapped file cut short, by reason (see [`Skip`]).
    skipped: BTreeMap<&'static str, u64>,
    /// Files whose skip was logged: one line a file, however often it is skipped.
    skips_logged: HashSet<FileId>,
    linger: Duration,
}

/// Why the inspection of a file a process maps was cut short. No verdict is kept: the file is
/// inspected again when a process maps it next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The process exited between reading its mappings and opening the file.
    ProcessExited,
    /// The file could not be opened through the running process (permissions, a mount
    /// namespace the daemon cannot enter).
    Unreadable,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::ProcessExited => "process_exited",
            Skip::Unreadable => "unreadable",
        }
    }
}

const MAX_VERDICTS: usize = 65536;

impl Tracker {
    pub fn new(linger: Duration) -> Self {
        Tracker {
            verdicts: HashMap::new(),
            attached: HashMap::new(),
            processes: HashMap::new(),
            unsupported: BTreeMap::new(),
            skipped: BTreeMap::new(),
            skips_logged: HashSet::new(),
            linger,
        }
    }

    /// Attaches a library file found on disk (not through a process), for good. It is named as
    /// processes' mappings will name it, so a process that maps it finds it attached.
    pub fn attach_path(&mut self, kernel: &mut Kernel, path: &Path) {
        let Ok(id) = std::fs::File::open(path).and_then(|f| procfs::mapped_id(&f)) else {
            return;
        };
        let shown = path.display().to_string();
        if let Some(f) = self.verdict(id, path, &shown, None)
            && let Some(a) = self.ensure_attached(kernel, id, path, &shown, f, None)
        {
            a.pinned = true;
        }
    }

    /// Reads a process's mappings and attaches to any FFmpeg file among them.
    pub fn scan(&mut self, kernel: &mut Kernel, pid: u32) {
        // A process gone before its mappings are read is not counted as skipped: it may be
        // any short command on the node, and the exit event already ends what it had.
        let Ok(maps) = procfs::exec_mappings(pid) else {
            return;
        };
        // Inspecting and attaching new files takes long enough for a short pipeline to finish:
        // what is kept of the process is read first, if it may map FFmpeg (most processes
        // on a node map only files already known not to be).
        let facts = self.may_map_ffmpeg(&maps).then(|| ProcessFacts::read(pid));
        self.scan_mappings(kernel, pid, &maps, facts);
    }

    /// Scans a process the kernel held because it mapped `file`, not judged yet; returns
    /// whether `file` is judged now (inspected, and attached if FFmpeg), so processes that map
    /// it later run on without a hold.
    pub fn scan_held(&mut self, kernel: &mut Kernel, pid: u32, file: &FileKey) -> bool {
        let Ok(maps) = procfs::exec_mappings(pid) else {
            return false;
        };
        let facts = self.may_map_ffmpeg(&maps).then(|| ProcessFacts::read(pid));
        self.scan_mappings(kernel, pid, &maps, facts);
        // The kernel names the file it was handed (an overlay's own inode, in a container),
        // /proc/PID/maps the file behind it; in both the inode number is the same, and the
        // device too outside containers.
        let same_ino: Vec<FileId> = maps
            .iter()
            .map(|m| m.id)
            .filter(|id| id.inode == file.ino)
            .collect();
        let id = same_ino
            .iter()
            .find(|id| kernel_dev(id.dev) == file.dev)
            .or_else(|| {
                same_ino
                    .first()
                    .filter(|_| same_ino.iter().all(|i| i == &same_ino[0]))
            });
        let Some(id) = id else {
            return false;
        };
        match self.verdicts.get(id) {
            Some(Verdict::NotFfmpeg | Verdict::Unsupported) => true,
            Some(Verdict::Ffmpeg(_)) => match self.attached.get_mut(id) {
                Some(a) => {
                    if !a.judged.contains(file) {
                        a.judged.push(*file);
                    }
                    true
                }
                None => false,
            },
            None => false,
        }
    }

    /// Whether any of `maps` is FFmpeg or not inspected yet.
    fn may_map_ffmpeg(&self, maps: &[ExecMapping]) -> bool {
        maps.iter()
            .any(|m| matches!(self.verdicts.get(&m.id), None | Some(Verdict::Ffmpeg(_))))
    }

    /// The rest of [`Tracker::scan`], from the mappings (and what is kept of the process, if
    /// read): the files are opened through the process, so it may exit meanwhile.
    pub fn scan_mappings(
        &mut self,
        kernel: &mut Kernel,
        pid: u32,
        maps: &[ExecMapping],
        facts: Option<ProcessFacts>,
    ) {
        let mut files = Vec::new();
        for m in maps {
            let open = m.open_path(pid);
            let Some(file) = self.verdict(m.id, &open, &m.path, Some(pid)) else {
                continue;
            };
            let attach_path = attach_path(pid, m);
            if let Some(a) =
                self.ensure_attached(kernel, m.id, &attach_path, &m.path, file, Some(pid))
            {
                a.pids.insert(pid);
                a.unused_since = None;
                files.push(m.id);
            }
        }
        if files.is_empty() {
            if let Some(p) = self.processes.remove(&pid) {
                self.release(&p.files, pid);
            }
            return;
        }
        let old = self.processes.insert(
            pid,
            Process::new(
                facts.unwrap_or_else(|| ProcessFacts::read(pid)),
                files.clone(),
            ),
        );
        if let Some(old) = old {
            let gone: Vec<FileId> = old
                .files
                .into_iter()
                .filter(|f| !files.contains(f))
                .collect();
            self.release(&gone, pid);
        }
    }

    /// A process ended: drops its references.
    pub fn exited(&mut self, pid: u32) -> Option<Process> {
        let p = self.processes.remove(&pid)?;
        self.release(&p.files, pid);
        Some(p)
    }

    fn release(&mut self, files: &[FileId], pid: u32) {
        for id in files {
            if let Some(a) = self.attached.get_mut(id) {
                a.pids.remove(&pid);
                if a.pids.is_empty() && a.unused_since.is_none() {
                    a.unused_since = Some(Instant::now());
                }
            }
        }
    }

    /// Detaches files no process has mapped for the linger time. The linger keeps back-to-back
    /// runs of the same binary from paying an attach each, and from racing it.
    pub fn detach_unused(&mut self, kernel: &mut Kernel) {
        let now = Instant::now();
        let done: Vec<FileId> = self
            .attached
            .iter()
            .filter(|(_, a)| {
                !a.pinned
                    && a.unused_since
                        .is_some_and(|t| now.duration_since(t) >= self.linger)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(a) = self.attached.remove(&id) {
                tracing::info!(path = %a.path, "detached: no process maps it");
                detach(kernel, a);
            }
        }
    }

    /// Libraries whose reads keep failing their sanity check are detached and reported.
    pub fn distrust_failing(&mut self, kernel: &mut Kernel) {
        let failing: Vec<FileId> = self
            .attached
            .iter()
            .filter(|(_, a)| {
                a.attachment
                    .slot
                    .is_some_and(|s| kernel.read_failures(s) >= 3)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in failing {
            if let Some(a) = self.attached.remove(&id) {
                tracing::error!(path = %a.path, "reads through this library fail their sanity checks; detached and reported as unsupported");
                detach(kernel, a);
                self.verdicts.insert(id, Verdict::Unsupported);
                self.unsupported
                    .entry("sanity_check_failed")
                    .or_default()
                    .insert(id);
            }
        }
    }

    /// Counts an inspection of file `id` (`shown`), mapped by `pid`, cut short by `error`, and
    /// logs it once per file.
    fn skip(&mut self, id: FileId, pid: Option<u32>, shown: &str, error: &std::io::Error) {
        let why = match pid {
            Some(pid) if procfs::stat(pid).is_none() => Skip::ProcessExited,
            _ => Skip::Unreadable,
        };
        *self.skipped.entry(why.reason()).or_default() += 1;
        if self.skips_logged.len() >= MAX_VERDICTS {
            self.skips_logged.clear();
        }
        if self.skips_logged.insert(id) {
            tracing::info!(pid, path = shown, reason = why.reason(), error = %error, "mapped file not inspected; it will be when a process maps it next");
        }
    }

    fn verdict(
        &mut self,
        id: FileId,
        open: &Path,
        shown: &str,
        pid: Option<u32>,
    ) -> Option<Arc<FfmpegFile>> {
        if let Some(v) = self.verdicts.get(&id) {
            return match v {
                Verdict::Ffmpeg(f) => Some(f.clone()),
                _ => None,
            };
        }
        if self.verdicts.len() >= MAX_VERDICTS {
            self.verdicts.retain(|_, v| matches!(v, Verdict::Ffmpeg(_)));
        }
        let v = match elf::inspect(open) {
            Ok(None) => Verdict::NotFfmpeg,
            Ok(Some(f)) => {
                let versions: Vec<String> = f
                    .versions
                    .iter()
                    .map(|(l, v)| format!("{l:?} {v}"))
                    .collect();
                tracing::info!(path = shown, versions = ?versions, probes = f.points.len(), "found FFmpeg");
                Verdict::Ffmpeg(Arc::new(f))
            }
            Err(elf::InspectError::Open(e)) => {
                self.skip(id, pid, shown, &e);
                return None;
            }
            Err(e) => {
                tracing::warn!(path = shown, reason = e.reason(), error = %e, "FFmpeg file not supported; not probed");
                self.unsupported.entry(e.reason()).or_default().insert(id);
                Verdict::Unsupported
            }
        };
        self.verdicts.insert(id, v.clone());
        match v {
            Verdict::Ffmpeg(f) => Some(f),
            _ => None,
        }
    }

    fn ensure_attached(
        &mut self,
        kernel: &mut Kernel,
        id: FileId,
        path: &Path,
        shown: &str,
        file: Arc<FfmpegFile>,
        pid: Option<u32>,
    ) -> Option<&mut AttachedFile> {
        if !self.attached.contains_key(&id) {
            // Opened first and attached through the daemon's own descriptor: once it is open
            // the process may exit without failing the attach (nor marking a good file
            // unsupported).
            let handle = match std::fs::File::open(path) {
                Ok(h) => h,
                Err(e) => {
                    self.skip(id, pid, shown, &e);
                    return None;
                }
            };
            use std::os::fd::AsRawFd as _;
            let by_fd = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
            match kernel.attach(&by_fd, id, &file) {
                Ok(attachment) => {
                    tracing::info!(path = shown, slot = ?attachment.slot, "attached");
                    self.attached.insert(
                        id,
                        AttachedFile {
                            attachment,
                            judged: Vec::new(),
                            path: shown.to_string(),
                            file,
                            handle,
                            pids: HashSet::new(),
                            pinned: false,
                            unused_since: Some(Instant::now()),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(path = shown, error = %error_chain(&e), "attach failed");
                    self.verdicts.insert(id, Verdict::Unsupported);
                    self.unsupported
                        .entry("attach_failed")
                        .or_default()
                        .insert(id);
                    return None;
                }
            }
        }
        self.attached.get_mut(&id)
    }

    /// Reads the codec name at `name_ptr` in a process from the library file attached in
    /// `slot`, given where that process ran `avcodec_open2` (`open_ip`): for names the kernel
    /// could not read, of processes that are already gone.
    pub fn codec_name_from_file(&self, slot: u32, open_ip: u64, name_ptr: u64) -> Option<[u8; 32]> {
        let a = self
            .attached
            .values()
            .find(|a| a.attachment.slot == Some(slot))?;
        a.file.identifier_at(&a.handle, open_ip, name_ptr)
    }

    /// The id of the container `pid` runs in: as read at its scan, or from /proc now for a
    /// process the tracker does not know.
    pub fn container_id(&self, pid: u32) -> Option<String> {
        match self.process(pid) {
            Some(p) => p.container.as_ref().map(|c| c.id.clone()),
            None => crate::container::of_process(pid).map(|c| c.id),
        }
    }

    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    /// The process's name: as read when it was scanned, else from /proc while it runs. None
    /// for a process that exited before either read succeeded.
    pub fn process_name(&self, pid: u32) -> Option<String> {
        self.processes
            .get(&pid)
            .map(|p| p.comm.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| procfs::comm(pid))
    }

    pub fn pids(&self) -> Vec<u32> {
        self.processes.keys().copied().collect()
    }

    pub fn attached(&self) -> Vec<AttachedInfo> {
        self.attached
            .values()
            .map(|a| AttachedInfo {
                path: a.path.clone(),
                versions: a
                    .file
                    .versions
                    .iter()
                    .map(|(l, v)| format!("{l:?}:{v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            })
            .collect()
    }

    /// Inspections cut short, by reason ([`Skip::reason`]).
    pub fn skipped(&self) -> BTreeMap<&'static str, u64> {
        self.skipped.clone()
    }

    pub fn unsupported(&self) -> BTreeMap<&'static str, usize> {
        self.unsupported
            .iter()
            .map(|(r, s)| (*r, s.len()))
            .collect()
    }
}

/// Detaches a file's probes; a process that maps it later is held again, until they are back.
fn detach(kernel: &mut Kernel, a: AttachedFile) {
    for key in &a.judged {
        kernel.unjudge(key);
    }
    kernel.detach(a.attachment);
}

/// The path to hand the kernel for a uprobe: the process's own view of the file (through
/// its root, so other mount namespaces work), or the map_files link if it was deleted.
fn attach_path(pid: u32, m: &ExecMapping) -> PathBuf {
    if m.path.ends_with(" (deleted)") {
        m.open_path(pid)
    } else {
        PathBuf::from(format!("/proc/{pid}/root{}", m.path))
    }
}

/// Directories the dynamic linker searches; FFmpeg libraries in them are attached at start so
/// a process started later is counted from its first frame.
pub const LIBRARY_DIRS: &[&str] = &[
    crate::arch::MULTIARCH_LIBRARY_DIRS[0],
    crate::arch::MULTIARCH_LIBRARY_DIRS[1],
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
];

/// FFmpeg libraries in `dirs`, one path per file.
pub fn system_libraries(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let interesting = ["libavcodec", "libavformat", "libavfilter", "libavutil"]
                .iter()
                .any(|p| name.starts_with(p) && name.contains(".so"));
            if !interesting {
                continue;
            }
            let path = e.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            use std::os::unix::fs::MetadataExt as _;
            if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                out.push(path);
            }
        }
    }
    out
}

/// An error and every cause under it ("kernel program x: `perf_event_open` failed: Operation
/// not permitted"): the root cause is what an operator can act on.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}
