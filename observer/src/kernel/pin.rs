//! Never leaving a held process stopped. The daemon resumes what its kernel programs hold
//! within milliseconds; when it cannot (stopped by a debugger or a freezer, starved, killed),
//! something else must:
//!
//! - each daemon pins its `HELD` map in the BPF file system, which outlives it, and runs a
//!   watchdog, a process of its own (`observer hold-watchdog`), that resumes any process held
//!   longer than [`HOLD_LIMIT`] while the daemon is stopped, longer than
//!   [`HOLD_LIMIT_RUNNING`] while it runs, and everything when the daemon is gone;
//! - a daemon starting resumes what the pinned maps of daemons no longer running still hold
//!   (a container killed with its watchdog).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use observer_common::kernel::Held;

/// Where the maps are pinned: `held-PID`, one a daemon.
const DIR: &str = "/sys/fs/bpf/observer";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The longest a process stays held while the daemon is stopped (a debugger, SIGSTOP): past
/// it the watchdog resumes it, attached or not.
pub const HOLD_LIMIT: Duration = Duration::from_secs(3);

/// The longest while the daemon runs. It answers in milliseconds (23 ms for a 172 MB static
/// build; BENCHMARKS.md), but an emulated CPU or a starved container can take seconds for
/// the same inspection, which a hold cut short would lose frames to.
pub const HOLD_LIMIT_RUNNING: Duration = Duration::from_secs(30);

/// Pins `held` as this daemon's; returns the pin, removed at a clean exit.
pub fn pin_held(held: &Map) -> Result<PathBuf, String> {
    ensure_bpffs().map_err(|e| format!("no BPF file system at /sys/fs/bpf ({e})"))?;
    std::fs::create_dir_all(DIR).map_err(|e| format!("{DIR}: {e}"))?;
    let path = Path::new(DIR).join(format!("held-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    held.pin(&path)
        .map_err(|e| format!("pinning {}: {e}", path.display()))?;
    Ok(path)
}

/// The map pinned at `path`.
fn open(path: &Path) -> Option<HashMap<MapData, u32, Held>> {
    MapData::from_pin(path)
        .map(Map::HashMap)
        .ok()
        .and_then(|m| HashMap::try_from(m).ok())
}

/// Resumes the processes of `held` that `due` selects and forgets them; returns how many.
fn resume(held: &mut HashMap<MapData, u32, Held>, due: impl Fn(&Held) -> bool) -> usize {
    let entries: Vec<(u32, Held)> = held.iter().filter_map(Result::ok).collect();
    let mut resumed = 0;
    for (tgid, h) in entries.into_iter().filter(|(_, h)| due(h)) {
        let _ = held.remove(&tgid);
        // The same process, not a later one that got its pid: started before the hold.
        if crate::procfs::stat(tgid).is_some_and(|s| s.start_ns <= h.since_ns) {
            // SAFETY: kill(2) on a process the kernel stopped for a daemon.
            unsafe { libc::kill(tgid as i32, libc::SIGCONT) };
            resumed += 1;
        }
    }
    resumed
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
        if let Some(mut held) = open(&entry.path()) {
            resumed += resume(&mut held, |_| true);
        }
        let _ = std::fs::remove_file(entry.path());
    }
    resumed
}

/// `observer hold-watchdog PIN DAEMON_PID`: the watchdog's loop, until the daemon exits
/// (then it resumes everything and removes the pin) or removes the pin itself.
pub fn watchdog(pin: &Path, daemon: u32) -> ! {
    let started = crate::procfs::stat(daemon).map(|s| s.start_ns);
    loop {
        let Some(mut held) = open(pin) else {
            // The daemon removed it: a clean exit.
            std::process::exit(0);
        };
        let now_stat = crate::procfs::stat(daemon);
        let alive = started.is_some()
            && now_stat.map(|s| s.start_ns) == started
            && now_stat.is_some_and(|s| !s.zombie);
        if !alive {
            let n = resume(&mut held, |_| true);
            let _ = std::fs::remove_file(pin);
            if n > 0 {
                eprintln!("observer hold-watchdog: the daemon is gone; resumed {n} held processes");
            }
            std::process::exit(0);
        }
        let limit = if now_stat.is_some_and(|s| s.stopped) {
            HOLD_LIMIT
        } else {
            HOLD_LIMIT_RUNNING
        };
        let now = super::boot_ns();
        let n = resume(&mut held, |h| {
            now.saturating_sub(h.since_ns) > limit.as_nanos() as u64
        });
        if n > 0 {
            eprintln!(
                "observer hold-watchdog: resumed {n} processes the daemon did not answer for in {} s",
                limit.as_secs()
            );
        }
        drop(held);
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Starts this daemon's watchdog on its pinned map.
pub fn start_watchdog(pin: &Path) -> std::io::Result<std::process::Child> {
    std::process::Command::new(std::env::current_exe()?)
        .arg("hold-watchdog")
        .arg(pin)
        .arg(std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
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
