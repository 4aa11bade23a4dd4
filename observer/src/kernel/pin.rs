//! Processes a daemon held and could not resume: one killed (OOM, SIGKILL) while a process
//! waited for it leaves that process stopped. Each daemon pins its `HELD` map in the BPF file
//! system, which outlives it; a daemon starting resumes what a dead one's map still holds.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData};
use observer_common::kernel::Held;

/// Where the maps are pinned: `held-PID`, one a daemon.
const DIR: &str = "/sys/fs/bpf/observer";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Pins `held` as this daemon's; returns the pin, removed at a clean exit.
pub fn pin_held(held: &Map) -> Option<PathBuf> {
    if let Err(e) = ensure_bpffs() {
        tracing::warn!(error = %e, "no BPF file system at /sys/fs/bpf: processes held by a daemon that is killed stay stopped until resumed by hand (kill -CONT)");
        return None;
    }
    if let Err(e) = std::fs::create_dir_all(DIR) {
        tracing::warn!(error = %e, dir = DIR, "cannot pin the held processes' map");
        return None;
    }
    let path = Path::new(DIR).join(format!("held-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    match held.pin(&path) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot pin the held processes' map");
            None
        }
    }
}

/// Resumes the processes that daemons no longer running held, and removes their pins.
/// Returns how many it resumed.
pub fn resume_orphans() -> usize {
    let Ok(dir) = std::fs::read_dir(DIR) else {
        return 0;
    };
    let mut resumed = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix("held-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if crate::procfs::comm(owner).is_some_and(|c| c.starts_with("observer")) {
            continue;
        }
        let held = MapData::from_pin(entry.path())
            .map(Map::HashMap)
            .ok()
            .and_then(|m| HashMap::<_, u32, Held>::try_from(m).ok());
        for (tgid, h) in held
            .iter()
            .flat_map(|m| m.iter().filter_map(Result::ok).collect::<Vec<_>>())
        {
            // The same process, not a later one that got its pid: started before the hold.
            if crate::procfs::stat(tgid).is_some_and(|s| s.start_ns <= h.since_ns) {
                // SAFETY: kill(2) on a process the kernel stopped for a daemon.
                unsafe { libc::kill(tgid as i32, libc::SIGCONT) };
                resumed += 1;
                tracing::warn!(
                    pid = tgid,
                    daemon = owner,
                    "resumed a process a daemon that is gone had held"
                );
            }
        }
        let _ = std::fs::remove_file(entry.path());
    }
    resumed
}

/// Mounts the BPF file system at /sys/fs/bpf if something else is there (hosts that never
/// pinned anything often have none).
fn ensure_bpffs() -> std::io::Result<()> {
    // SAFETY: statfs writes the struct we pass; the path is a constant C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut st) } == 0
        && st.f_type as i64 == BPF_FS_MAGIC
    {
        return Ok(());
    }
    // SAFETY: constant NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        tracing::info!("mounted the BPF file system at /sys/fs/bpf");
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
