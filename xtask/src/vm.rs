//! The kernel matrix: the kernel-dependent tests, run inside Debian's own generic kernels
//! (bullseye's 5.10, bookworm's 6.1, trixie's 6.12; arm64's 6.1 and 6.12) booted under QEMU.
//! The kernel packages come from Debian's suites like the other assets.
//!
//! A guest boots from a small initramfs (busybox and the kernel's 9p, virtio and overlay
//! modules), mounts its root over 9p read-only under a tmpfs overlay, the kernel's modules at
//! /lib/modules and a writable share for its results, and runs the tests there. An amd64
//! guest's root is this machine's own: the same test binaries and daemon, the same ffmpeg,
//! with the guest's kernel underneath. An arm64 guest's root is unpacked from Debian's arm64
//! packages (`setup::arm64_guest`), with the checkout mounted at its own path (over a tmpfs
//! overlay too) for the arm64 test binaries and daemon built here. KVM is used where it runs
//! guests; elsewhere QEMU emulates the CPU (TCG), several times slower, and an arm64 CPU
//! always.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    setup::{DebianSuite, run, unpack},
    step,
};

/// The kernels the matrix boots on amd64: Debian suite, and the release line its generic
/// kernel follows (what the README's kernel table names).
pub const KERNELS: &[(&str, &str)] = &[
    ("bullseye", "5.10"),
    ("bookworm", "6.1"),
    ("trixie", "6.12"),
];

/// The kernels the matrix boots on arm64.
pub const ARM64_KERNELS: &[(&str, &str)] = &[("bookworm", "6.1"), ("trixie", "6.12")];

/// A CPU architecture the daemon is built and tested for, by Debian's name (`--arch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The machine this runs on.
    pub fn native() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        }
    }

    /// Debian's cross compiler for it (`gcc-aarch64-linux-gnu`'s `aarch64-linux-gnu-gcc`).
    pub fn gnu_prefix(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// Rust's target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The tests its guests run.
    pub fn guest_tests(self) -> Vec<(&'static str, &'static str)> {
        let mut t = GUEST_TESTS.to_vec();
        if self == Arch::Arm64 {
            t.extend_from_slice(ARM64_EXTRA_TESTS);
        }
        t
    }

    /// The kernels the matrix boots for it.
    pub fn kernels(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Arch::Amd64 => KERNELS,
            Arch::Arm64 => ARM64_KERNELS,
        }
    }
}

/// The root file system a guest runs on.
pub enum Root {
    /// This machine's own (amd64 guests).
    Host,
    /// A directory holding another architecture's root (with its busybox, which the
    /// initramfs takes).
    Foreign(PathBuf),
}

/// The tests that depend on the kernel, run inside each guest: (test binary, test name). The
/// transcode checks decode and encode counts both; FFmpeg 4.3 and a killed daemon's held
/// process depend on no kernel feature of their own and run on this machine only.
pub const GUEST_TESTS: &[(&str, &str)] = &[
    (
        "daemon",
        "every_kernel_dependent_feature_runs_on_this_kernel",
    ),
    ("codec", "transcode_counts_equal_ffprobe"),
    (
        "hold",
        "a_static_build_never_seen_before_is_counted_from_its_first_frame",
    ),
    (
        "hold",
        "a_wheel_never_seen_before_is_counted_from_its_first_frame",
    ),
    (
        "transport",
        "udp_mpegts_bytes_datagrams_and_continuity_match_the_network_and_ffmpeg",
    ),
    (
        "transport",
        "rtp_lost_packets_equal_the_nftables_drop_count",
    ),
    (
        "transport",
        "receive_buffer_drops_equal_the_sockets_own_drop_counter",
    ),
    (
        "transport",
        "tcp_output_through_loss_shows_the_kernels_retransmissions",
    ),
];

/// What arm64 guests run besides: the code written once per architecture that the tests
/// above do not reach (the log probe's placement, `arch::cheap_entry`, and its `va_list`
/// capture: formatted messages equal FFmpeg's own), codec errors read at the return of the
/// calls, and a container's copy found through its mount namespace.
pub const ARM64_EXTRA_TESTS: &[(&str, &str)] = &[
    (
        "logs",
        "warnings_and_errors_become_structured_events_formatted_like_ffmpegs_own",
    ),
    ("logs", "messages_of_a_codec_land_on_its_stream"),
    ("codec", "corrupt_input_counts_codec_errors_by_name"),
    // Discovery through /proc/PID/root: a wheel-style renamed copy in a mount namespace of
    // its own, as in a container (the arm64 root carries patchelf and unshare for it).
    ("discovery", "renamed_copy_in_another_mount_namespace"),
];

/// The modules a guest needs before its root is mounted (their dependencies come along).
const BOOT_MODULES: [&str; 4] = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// A guest gets this long for the whole run before it is stopped.
const GUEST_LIMIT: Duration = Duration::from_secs(25 * 60);

/// One Debian generic kernel, unpacked.
pub struct Kernel {
    pub suite: String,
    pub arch: Arch,
    /// `uname -r` inside it.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The directory holding `RELEASE/` with the modules and depmod's index.
    pub modules: PathBuf,
}

/// The newest generic kernel of `suite` for `arch`, downloaded and unpacked under the assets
/// once (a newer one in the suite replaces it).
pub fn kernel(assets: &Path, suite: &str, arch: Arch) -> anyhow::Result<Kernel> {
    let a = arch.name();
    let dir = match arch {
        Arch::Amd64 => assets.join("kernels").join(suite),
        Arch::Arm64 => assets.join("kernels").join(format!("{suite}-{a}")),
    };
    let apt = DebianSuite::of_arch(assets, suite, a)?;
    let mut images: Vec<String> = apt
        .search(&format!("^linux-image-[0-9].*-{a}-unsigned$"))
        .into_iter()
        .filter(|p| !p.contains("-cloud-") && !p.contains("-rt-"))
        .collect();
    images.sort_by_key(|p| version_key(p));
    let package = images
        .pop()
        .with_context(|| format!("Debian {suite} has no generic {a} kernel"))?;
    let marker = dir.join("package");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(package.as_str()) {
        step(&format!("fetching Debian {suite}'s kernel ({package})"));
        let debs = apt.download(&[package.as_str()])?;
        unpack(&debs, &dir)?;
        std::fs::write(&marker, &package)?;
    }
    let vmlinuz = std::fs::read_dir(dir.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the kernel package has no vmlinuz")?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz name")?
        .to_string();
    // Modules sit in /lib/modules before trixie, /usr/lib/modules from it.
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| dir.join(d))
        .find(|d| d.join(&release).is_dir())
        .context("the kernel package has no modules")?;
    if !modules.join(&release).join("modules.dep").exists() {
        run(
            Command::new("depmod")
                .arg("-b")
                .arg(modules.parent().and_then(Path::parent).context("modules")?)
                .arg(&release),
            "depmod",
        )?;
    }
    Ok(Kernel {
        suite: suite.to_string(),
        arch,
        release,
        vmlinuz,
        modules,
    })
}

/// Orders `linux-image-5.10.0-32-amd64-unsigned` by its numbers.
fn version_key(package: &str) -> Vec<u64> {
    package
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The modules `wanted` need, each after its dependencies, from depmod's `modules.dep`;
/// those built into the kernel (`modules.builtin`, one path a line) need nothing.
fn with_dependencies(dep: &str, builtin: &str, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    fn add(dep: &str, path: &str, out: &mut Vec<String>) {
        if out.iter().any(|p| p == path) {
            return;
        }
        let needs = dep
            .lines()
            .find_map(|l| l.strip_prefix(path)?.strip_prefix(':'))
            .unwrap_or("");
        for n in needs.split_whitespace() {
            add(dep, n, out);
        }
        out.push(path.to_string());
    }
    let named = |p: &&str, name: &str| {
        let file = p.rsplit('/').next().unwrap_or(p);
        file.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(".ko"))
    };
    let mut out = Vec::new();
    for name in wanted {
        match dep
            .lines()
            .filter_map(|l| l.split(':').next())
            .find(|p| named(p, name))
        {
            Some(path) => add(dep, path, &mut out),
            None if builtin.lines().any(|p| named(&p, name)) => {}
            None => bail!("no module {name}"),
        }
    }
    Ok(out)
}

/// The first stage, in the initramfs: load the boot modules, mount the guest's root under an
/// overlay, the modules and the share, and hand over to the second stage in the share.
/// `{checkout}`: where a foreign root's guest mounts the checkout (see [`CHECKOUT_MOUNT`]).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "observer-vm: insmod $m failed"; done
mkdir -p /lower /upper /root
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose root /lower
mount -t tmpfs -o size=75% tmpfs /upper
mkdir -p /upper/up /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/up,workdir=/upper/work /root
mkdir -p /root/lib/modules /root/observer-vm /root/dev /root/proc /root/sys /root/tmp /root/run
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 modules /root/lib/modules
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share /root/observer-vm
{checkout}umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root /observer-vm/stage2
"#;

/// A foreign root's guest mounts the checkout at its own path, read-only under an overlay
/// like the root, so paths are the same inside and out.
const CHECKOUT_MOUNT: &str = r#"mkdir -p /checkout /upper/checkout-up /upper/checkout-work /root{path}
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose checkout /checkout
mount -t overlay overlay -o lowerdir=/checkout,upperdir=/upper/checkout-up,workdir=/upper/checkout-work /root{path}
"#;

/// The second stage, PID 1 on the overlay root: the file systems a test needs, the tests one
/// by one (each result in `results`, each output in its own log), then power off. `checkout`
/// (the tests' binaries and assets) stays where it is, under `/tmp` or `/run` too, which the
/// guest mounts afresh.
fn stage2(
    tests: &[(PathBuf, &str)],
    env: &[(&str, String)],
    checkout: &Path,
    root: &Root,
) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
{foreign}CHECKOUT='{checkout}'
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /observer-checkout
mount --bind "$CHECKOUT" /observer-checkout
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run 2>/dev/null || true
mkdir -p "$CHECKOUT"
mount --move /observer-checkout "$CHECKOUT"
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
ip link set lo up
hostname observer-vm
S=/observer-vm
"#,
    )
    .replace("{checkout}", &checkout.display().to_string())
    .replace(
        "{foreign}",
        match root {
            Root::Host => "",
            // What the packages' maintainer scripts would have done: the linker's cache, and
            // busybox's applets for the commands no package carries, last on the PATH.
            // (busybox finds itself through /proc to link its applets).
            Root::Foreign(_) => {
                "/bin/busybox mkdir -p /busybox\n/bin/busybox mount -t proc proc /proc\n\
                 /bin/busybox --install -s /busybox\n/bin/busybox umount /proc\n\
                 export PATH=$PATH:/busybox\nldconfig\n"
            }
        },
    );
    for (k, v) in env {
        let _ = writeln!(s, "export {k}='{v}'");
    }
    let _ = writeln!(s, "echo \"booted $(uname -r)\" > $S/results");
    for (bin, name) in tests {
        let _ = writeln!(
            s,
            "t0=$(cut -d' ' -f1 /proc/uptime)\n\
             (cd /tmp && timeout 600 {bin} --exact {name} --include-ignored --test-threads 1 --nocapture) > $S/{name}.log 2>&1\n\
             rc=$?\n\
             echo \"{name} $rc $t0 $(cut -d' ' -f1 /proc/uptime)\" >> $S/results",
            bin = bin.display()
        );
    }
    s.push_str("echo done >> $S/results\nsync\necho o > /proc/sysrq-trigger\nsleep 30\n");
    s
}

/// Builds the initramfs of `kernel` into `out`, for a guest on `root` (whose busybox it takes)
/// with the checkout at `checkout`.
fn initramfs(kernel: &Kernel, root: &Root, checkout: &Path, out: &Path) -> anyhow::Result<()> {
    let staging = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&staging);
    for d in ["bin", "dev", "proc", "sys", "modules"] {
        std::fs::create_dir_all(staging.join(d))?;
    }
    let busybox = match root {
        Root::Host => which("busybox").context("busybox is missing (busybox-static)")?,
        Root::Foreign(dir) => dir.join("bin/busybox"),
    };
    std::fs::copy(&busybox, staging.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    let moddir = kernel.modules.join(&kernel.release);
    let dep = std::fs::read_to_string(moddir.join("modules.dep"))?;
    let builtin = std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let mut order = String::new();
    for path in with_dependencies(&dep, &builtin, &BOOT_MODULES)? {
        let file = path.rsplit('/').next().unwrap_or(&path);
        let plain = file.trim_end_matches(".xz").trim_end_matches(".zst");
        let dest = staging.join("modules").join(plain);
        // busybox's insmod takes plain modules: trixie's are xz-compressed.
        if file.ends_with(".xz") {
            let bytes = Command::new("xz")
                .arg("-dc")
                .arg(moddir.join(&path))
                .output()
                .context("xz")?;
            if !bytes.status.success() {
                bail!("xz -d {path} failed");
            }
            std::fs::write(&dest, bytes.stdout)?;
        } else {
            std::fs::copy(moddir.join(&path), &dest)?;
        }
        order.push_str(plain);
        order.push('\n');
    }
    std::fs::write(staging.join("modules/order"), order)?;
    let mount = match root {
        Root::Host => String::new(),
        Root::Foreign(_) => CHECKOUT_MOUNT.replace("{path}", &checkout.display().to_string()),
    };
    std::fs::write(staging.join("init"), INIT.replace("{checkout}", &mount))?;
    set_executable(&staging.join("init"))?;
    // The newc archive the kernel unpacks, made by busybox's cpio from a file list.
    let list = walk(&staging)?;
    let mut cpio = Command::new("busybox")
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out)?)
        .spawn()
        .context("busybox cpio")?;
    {
        use std::io::Write as _;
        let mut stdin = cpio.stdin.take().context("cpio stdin")?;
        for p in list {
            writeln!(stdin, "{p}")?;
        }
    }
    if !cpio.wait()?.success() {
        bail!("busybox cpio failed");
    }
    std::fs::remove_dir_all(&staging)?;
    Ok(())
}

/// Every path under `root`, relative (`.`, `./init`, ...), directories first.
fn walk(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = vec![".".to_string()];
    let mut stack = vec![PathBuf::from(".")];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let p = rel.join(e.file_name());
            out.push(p.display().to_string());
            if e.file_type()?.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(out)
}

fn set_executable(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// What one test did in a guest.
pub struct Outcome {
    pub test: String,
    pub passed: bool,
    pub seconds: f64,
    pub log: PathBuf,
}

/// Boots `kernel` and runs `tests` (their binaries, in `checkout`) inside it with `env`;
/// `work` holds the guest's files and its results.
pub fn run_tests(
    kernel: &Kernel,
    root: &Root,
    tests: &[(PathBuf, &str)],
    env: &[(&str, String)],
    checkout: &Path,
    work: &Path,
) -> anyhow::Result<Vec<Outcome>> {
    let _ = std::fs::remove_dir_all(work);
    let share = work.join("share");
    std::fs::create_dir_all(&share)?;
    let initrd = work.join("initramfs.cpio");
    initramfs(kernel, root, checkout, &initrd)?;
    std::fs::write(share.join("stage2"), stage2(tests, env, checkout, root))?;
    set_executable(&share.join("stage2"))?;
    let console = work.join("console.log");
    let accel = accelerator(kernel, root, checkout, &initrd, work);
    step(&format!(
        "booting Debian {}'s {} kernel {} ({accel}) for {} tests",
        kernel.suite,
        kernel.arch.name(),
        kernel.release,
        tests.len()
    ));
    let t0 = Instant::now();
    let mut qemu = qemu(kernel, root, checkout, &initrd, &share, accel)
        .stdout(std::fs::File::create(&console)?)
        .stderr(std::fs::File::create(work.join("qemu.log"))?)
        .spawn()
        .context("starting QEMU (qemu-system-x86, qemu-system-arm)")?;
    loop {
        if qemu.try_wait()?.is_some() {
            break;
        }
        if t0.elapsed() > GUEST_LIMIT {
            let _ = qemu.kill();
            let _ = qemu.wait();
            bail!(
                "the guest ran past {} minutes; its console is in {}",
                GUEST_LIMIT.as_secs() / 60,
                console.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let results = std::fs::read_to_string(share.join("results")).with_context(|| {
        format!(
            "the guest wrote no results; its console is in {}",
            console.display()
        )
    })?;
    if !results.starts_with(&format!("booted {}", kernel.release)) {
        bail!("the guest booted another kernel: {results}");
    }
    let mut outcomes = Vec::new();
    for line in results.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [name, rc, t0, t1] = f[..] {
            let secs = t1.parse::<f64>().unwrap_or(0.0) - t0.parse::<f64>().unwrap_or(0.0);
            outcomes.push(Outcome {
                test: name.to_string(),
                passed: rc == "0",
                seconds: secs,
                log: share.join(format!("{name}.log")),
            });
        }
    }
    for (_, name) in tests {
        if !outcomes.iter().any(|o| o.test == *name) {
            outcomes.push(Outcome {
                test: name.to_string(),
                passed: false,
                seconds: 0.0,
                log: console.clone(),
            });
        }
    }
    Ok(outcomes)
}

fn qemu(
    kernel: &Kernel,
    root: &Root,
    checkout: &Path,
    initrd: &Path,
    share: &Path,
    accel: &str,
) -> Command {
    let (mut c, console) = match kernel.arch {
        Arch::Amd64 => {
            let mut c = Command::new("qemu-system-x86_64");
            // TCG runs both virtual CPUs on one host thread: with one thread each, 5.10
            // guests locked up (both CPUs spinning in syscall_trace_enter) when the daemon
            // enabled syscall tracepoints, whose code the kernel patches while the other CPU
            // runs it.
            let accel = if accel == "tcg" {
                "tcg,thread=single"
            } else {
                accel
            };
            c.args(["-accel", accel, "-cpu", "max"]);
            (c, "ttyS0")
        }
        Arch::Arm64 => {
            let mut c = Command::new("qemu-system-aarch64");
            // QEMU's own pointer authentication: the architected algorithm costs TCG dearly.
            c.args(["-M", "virt", "-accel", accel, "-cpu", "max,pauth-impdef=on"]);
            (c, "ttyAMA0")
        }
    };
    let root_dir = match root {
        Root::Host => Path::new("/"),
        Root::Foreign(dir) => dir.as_path(),
    };
    c.args(["-smp", "2", "-m", "4G"])
        .args([
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
            "-net",
            "none",
        ])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console={console} quiet panic=-1 rdinit=/init"))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=root,security_model=none,readonly=on,multidevs=remap",
            root_dir.display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=modules,security_model=none,readonly=on",
            kernel.modules.display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=share,security_model=none",
            share.display()
        ));
    if let Root::Foreign(_) = root {
        c.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=checkout,security_model=none,readonly=on,multidevs=remap",
            checkout.display()
        ));
    }
    c.stdin(Stdio::null());
    c
}

/// KVM where it runs a guest (a nested machine may open /dev/kvm and still fail to run one),
/// else TCG. Tried with a guest that powers off at once.
fn accelerator(
    kernel: &Kernel,
    root: &Root,
    checkout: &Path,
    initrd: &Path,
    work: &Path,
) -> &'static str {
    // KVM runs a guest of this machine's own architecture only.
    if kernel.arch != Arch::native() {
        return "tcg";
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return "tcg";
    }
    let probe = work.join("kvm-probe");
    let _ = std::fs::create_dir_all(&probe);
    if std::fs::write(
        probe.join("stage2"),
        "#!/bin/sh\nmount -t proc proc /proc\necho kvm > /observer-vm/results\necho o > /proc/sysrq-trigger\nsleep 30\n",
    )
    .and_then(|()| set_executable(&probe.join("stage2")))
    .is_err()
    {
        return "tcg";
    }
    let ok = qemu(kernel, root, checkout, initrd, &probe, "kvm")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(60) {
                if let Some(status) = c.try_wait()? {
                    return Ok(status.success());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = c.kill();
            let _ = c.wait();
            Ok(false)
        })
        .unwrap_or(false);
    let ran = ok && probe.join("results").exists();
    let _ = std::fs::remove_dir_all(&probe);
    if ran { "kvm" } else { "tcg" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_come_after_their_dependencies() {
        let dep = "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/fs/netfs/netfs.ko.xz:\n\
                   kernel/fs/overlayfs/overlay.ko.xz:\n\
                   kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n";
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\n";
        assert_eq!(
            with_dependencies(
                dep,
                builtin,
                &["9pnet_virtio", "9p", "overlay", "virtio_pci"]
            )
            .unwrap(),
            [
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/9p/9p.ko.xz",
                "kernel/fs/overlayfs/overlay.ko.xz",
            ]
        );
        // `9p` is not `9pnet`'s prefix match, and a module neither loadable nor built in is
        // an error.
        assert!(with_dependencies(dep, "", &["virtio_pci"]).is_err());
        assert!(with_dependencies(dep, "", &["9pne"]).is_err());
    }

    #[test]
    fn kernel_packages_order_by_their_numbers() {
        let mut v = [
            "linux-image-6.1.0-9-amd64-unsigned",
            "linux-image-6.1.0-50-amd64-unsigned",
            "linux-image-6.1.0-10-amd64-unsigned",
        ];
        v.sort_by_key(|p| version_key(p));
        assert_eq!(v[2], "linux-image-6.1.0-50-amd64-unsigned");
    }
}
