//! Which container a process runs in, from its cgroup path (`/proc/PID/cgroup`).
//!
//! Container runtimes name the cgroup of each container after its id, in a handful of
//! layouts: systemd's (`<prefix>-<id>.scope`) and cgroupfs's (a bare id directory), under
//! Kubernetes' `kubepods` tree or the runtime's own. The deepest segment that names a
//! container wins (a nested `.../libpod-<id>.scope/container` is that container).

/// A process's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The runtime's full container id (64 hex digits).
    pub id: String,
    /// `containerd`, `cri-o`, `docker`, `podman`, or `unknown` for a bare id whose tree does
    /// not say.
    pub runtime: &'static str,
    /// The Kubernetes pod's UID, when the path is under `kubepods`.
    pub pod_uid: Option<String>,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// systemd scope prefixes: `<prefix><id>.scope`. Monitor processes (`crio-conmon-`,
/// `libpod-conmon-`) have their own scope and are not in the container.
const SCOPES: &[(&str, &str)] = &[
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
];

/// The container named in one cgroup path, if any.
pub fn from_path(path: &str) -> Option<Container> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let kube = segments.iter().any(|s| s.starts_with("kubepods"));
    for (i, seg) in segments.iter().enumerate().rev() {
        let found = SCOPES.iter().find_map(|(prefix, runtime)| {
            let id = seg.strip_prefix(prefix)?.strip_suffix(".scope")?;
            is_id(id).then_some((id, *runtime))
        });
        let found = found.or_else(|| {
            is_id(seg).then(|| {
                let runtime = match segments[..i].first().copied() {
                    Some("docker") => "docker",
                    Some("libpod_parent") | Some("machine.slice") => "podman",
                    _ => "unknown",
                };
                (*seg, runtime)
            })
        });
        if let Some((id, runtime)) = found {
            let pod_uid = if kube {
                segments[..i].iter().rev().find_map(|s| pod_uid(s))
            } else {
                None
            };
            return Some(Container {
                id: id.to_string(),
                runtime,
                pod_uid,
            });
        }
    }
    None
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let at = seg.rfind("pod")?;
    let uid = seg[at + 3..].replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// The container in `/proc/PID/cgroup`'s text: the unified (v2) line, or any v1 hierarchy.
pub fn from_cgroup_file(text: &str) -> Option<Container> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(from_path)
}

/// The container of a running process; None on the host (or if it is gone).
pub fn of_process(pid: u32) -> Option<Container> {
    from_cgroup_file(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e0b1c2d5a6978e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
    const UID: &str = "0b2f6a1e-9c4d-4e7a-8f3b-2c1d0e9f8a7b";

    fn check(path: &str, runtime: &str, pod: bool) {
        let c = from_path(path).unwrap_or_else(|| panic!("no container in {path}"));
        assert_eq!(c.id, ID, "{path}");
        assert_eq!(c.runtime, runtime, "{path}");
        assert_eq!(c.pod_uid.as_deref(), pod.then_some(UID), "{path}");
    }

    /// The layouts each runtime writes, as /proc/PID/cgroup shows them on real nodes.
    #[test]
    fn every_runtimes_layout() {
        let uid_ = UID.replace('-', "_");
        // containerd under Kubernetes, systemd cgroup driver (kubeadm's default).
        check(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            "containerd",
            true,
        );
        // Guaranteed QoS pods sit directly under kubepods.slice.
        check(
            &format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"),
            "containerd",
            true,
        );
        // containerd or any CRI under Kubernetes, cgroupfs driver.
        check(
            &format!("/kubepods/besteffort/pod{UID}/{ID}"),
            "unknown",
            true,
        );
        // CRI-O, systemd driver.
        check(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
            ),
            "cri-o",
            true,
        );
        // Docker, systemd driver and cgroupfs driver.
        check(&format!("/system.slice/docker-{ID}.scope"), "docker", false);
        check(&format!("/docker/{ID}"), "docker", false);
        // Podman, rootful and rootless, and with systemd inside the container.
        check(
            &format!("/machine.slice/libpod-{ID}.scope"),
            "podman",
            false,
        );
        check(
            &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            "podman",
            false,
        );
        check(
            &format!("/machine.slice/libpod-{ID}.scope/container"),
            "podman",
            false,
        );
    }

    #[test]
    fn hosts_and_monitors_are_not_containers() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/containerd.service",
            "/init.scope",
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            &format!("/kubepods.slice/kubepods-besteffort.slice/crio-conmon-{ID}.scope"),
            // Not an id: too short.
            "/system.slice/docker-3f4e0b1c.scope",
        ] {
            assert_eq!(from_path(path), None, "{path}");
        }
    }

    #[test]
    fn cgroup_v1_files_are_read_too() {
        let v1 =
            format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(from_cgroup_file(&v1).unwrap().id, ID);
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(from_cgroup_file(&v2).unwrap().runtime, "docker");
        assert_eq!(from_cgroup_file("0::/\n"), None);
    }
}
