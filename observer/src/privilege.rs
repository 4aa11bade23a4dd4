//! The capabilities the daemon needs, checked once at start: a missing one is named with
//! what it is for, instead of surfacing later as "Permission denied" on some attach. The
//! systemd unit and the DaemonSet grant exactly these (tests/tests/deploy.rs holds them
//! equal and runs the daemon without each).

use thiserror::Error;

/// A capability the daemon needs, and what for.
#[derive(Debug)]
pub struct Need {
    /// Bit number in the capability sets (`linux/capability.h`).
    pub bit: u32,
    pub name: &'static str,
    pub why: &'static str,
    /// The first kernel (major, minor) that needs it, if not all.
    pub since: Option<(u32, u32)>,
    /// The last kernel that needs it, if not all.
    pub until: Option<(u32, u32)>,
}

pub const NEEDS: &[Need] = &[
    Need {
        bit: 39,
        name: "CAP_BPF",
        why: "load the kernel programs and create their maps",
        // Before 5.8 there is no CAP_BPF: CAP_SYS_ADMIN covers it.
        since: Some((5, 8)),
        until: None,
    },
    Need {
        bit: 38,
        name: "CAP_PERFMON",
        why: "attach probes through perf events and read kernel memory from the programs",
        since: Some((5, 8)),
        until: None,
    },
    Need {
        bit: 21,
        name: "CAP_SYS_ADMIN",
        why: "attach uprobes (perf_event_open answers EACCES without it) and mount tracefs",
        since: None,
        until: None,
    },
    Need {
        bit: 19,
        name: "CAP_SYS_PTRACE",
        why: "read pipelines' memory and mappings under /proc (codec names, log templates, \
              which FFmpeg copy a process runs)",
        since: None,
        until: None,
    },
    Need {
        bit: 2,
        name: "CAP_DAC_READ_SEARCH",
        why: "open FFmpeg libraries inside containers through /proc/PID/root",
        since: None,
        until: None,
    },
    Need {
        bit: 24,
        name: "CAP_SYS_RESOURCE",
        why: "raise RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to",
        since: None,
        until: Some((5, 10)),
    },
];

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "missing {}; observer needs {} on this kernel. Grant them (deploy/systemd/observer.service \
         and the DaemonSet's securityContext list them) or run it as root",
        missing.iter().map(|n| format!("{} (to {})", n.name, n.why)).collect::<Vec<_>>().join(", "),
        needed.join(", ")
    )]
    Missing {
        missing: Vec<&'static Need>,
        needed: Vec<&'static str>,
    },
}

/// The capabilities this kernel needs, by name.
pub fn needed(kernel: (u32, u32)) -> Vec<&'static Need> {
    NEEDS
        .iter()
        .filter(|n| n.since.is_none_or(|v| kernel >= v) && n.until.is_none_or(|v| kernel <= v))
        .collect()
}

/// Checks the effective set `effective` (a `CapEff` bitmask) against what `kernel` needs.
pub fn check(effective: u64, kernel: (u32, u32)) -> Result<Vec<&'static str>, Error> {
    let needed = needed(kernel);
    let missing: Vec<&'static Need> = needed
        .iter()
        .copied()
        .filter(|n| effective & (1 << n.bit) == 0)
        .collect();
    let names = needed.iter().map(|n| n.name).collect();
    if missing.is_empty() {
        Ok(names)
    } else {
        Err(Error::Missing {
            missing,
            needed: names,
        })
    }
}

/// This process's effective capabilities (`CapEff` in /proc/self/status).
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The running kernel's (major, minor), from `uname -r`'s digits.
pub fn kernel_version() -> (u32, u32) {
    let release = crate::procfs::kernel_release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = (1 << 40) - 1;

    #[test]
    fn every_need_is_named_when_missing() {
        let kernel = (6, 18);
        assert_eq!(check(ALL, kernel).unwrap().len(), 5);
        for need in needed(kernel) {
            let e = check(ALL & !(1 << need.bit), kernel)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("missing {} (to {})", need.name, need.why)),
                "{e}"
            );
        }
    }

    #[test]
    fn older_kernels_need_other_capabilities() {
        let names = |k| needed(k).iter().map(|n| n.name).collect::<Vec<_>>();
        assert!(!names((5, 4)).contains(&"CAP_BPF"));
        assert!(names((5, 4)).contains(&"CAP_SYS_RESOURCE"));
        assert!(names((5, 10)).contains(&"CAP_BPF"));
        assert!(!names((5, 11)).contains(&"CAP_SYS_RESOURCE"));
    }
}
