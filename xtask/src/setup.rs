//! Installs what building and testing need, saying what it does. Everything comes from the
//! package registries a fresh machine reaches: rustup components, crates.io, Debian, PyPI.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::step;

/// The only bpf-linker that links with the nightly's own LLVM (later ones need a system LLVM).
const BPF_LINKER_VERSION: &str = "0.10.0";

pub fn require_root(why: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run this as root: {why} (CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE at least)");
    }
    Ok(())
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    eprintln!("    $ {}", format!("{cmd:?}").replace('"', ""));
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start the command"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// How many times a download is tried: registries and mirrors fail now and then (a Debian
/// suite mid-sync answers "Hash Sum mismatch" for a few minutes), and a fresh machine's
/// `cargo xtask test` should not fail for a moment's network.
const DOWNLOAD_TRIES: u32 = 3;

/// Like [`run`], for a command that downloads: tried again after a pause if it fails.
/// `make` builds the command afresh for each try.
pub(crate) fn download(make: impl FnMut() -> Command, what: &str) -> anyhow::Result<()> {
    retrying(make, what, std::time::Duration::from_secs(20))
}

/// [`download`]'s loop: the pause grows by `pause` after each failed try.
fn retrying(
    mut make: impl FnMut() -> Command,
    what: &str,
    pause: std::time::Duration,
) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        match run(&mut make(), what) {
            Err(e) if attempt < DOWNLOAD_TRIES => {
                let wait = pause * attempt;
                eprintln!("    {e:#}; trying again in {} s", wait.as_secs());
                std::thread::sleep(wait);
                attempt += 1;
            }
            result => return result,
        }
    }
}

pub(crate) fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nightly toolchain with rust-src, and bpf-linker: what observer/build.rs needs to
/// build the kernel programs.
pub fn build_deps() -> anyhow::Result<()> {
    step("checking the toolchain for the kernel programs (nightly + rust-src + bpf-linker)");
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is not installed; install Rust with rustup first")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly toolchain (the kernel programs build with it)");
        download(
            || {
                let mut c = Command::new("rustup");
                c.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
                c
            },
            "installing the nightly toolchain",
        )?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        step("installing rust-src for nightly (the BPF target builds core from source)");
        download(
            || {
                let mut c = Command::new("rustup");
                c.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
                c
            },
            "installing rust-src",
        )?;
    }
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        step(&format!(
            "installing bpf-linker {BPF_LINKER_VERSION} (about a minute)"
        ));
        download(
            || {
                let mut c = Command::new("cargo");
                c.args(["+nightly", "install", "bpf-linker", "--version"])
                    .args([BPF_LINKER_VERSION, "--locked", "--force"]);
                c
            },
            "installing bpf-linker",
        )?;
    }
    Ok(())
}

/// A cargo subcommand at a pinned version (installed from crates.io if missing or another
/// version): `toolchain` is `+nightly` for tools that need it to build.
pub fn cargo_tool(
    krate: &str,
    version: &str,
    toolchain: Option<&str>,
    why: &str,
) -> anyhow::Result<()> {
    let sub = krate.trim_start_matches("cargo-");
    let found = output(Command::new("cargo").args([sub, "--version"])).unwrap_or_default();
    if found.contains(version) {
        return Ok(());
    }
    step(&format!("installing {krate} {version} ({why})"));
    download(
        || {
            let mut cmd = Command::new("cargo");
            cmd.args(toolchain).args([
                "install",
                krate,
                "--version",
                version,
                "--locked",
                "--force",
            ]);
            cmd
        },
        &format!("installing {krate}"),
    )
}

/// Debian packages the tests use.
const TEST_PACKAGES: &[&str] = &[
    // real pipelines and ground truth (ffprobe)
    "ffmpeg",
    // headers of the system FFmpeg, for the layout test
    "libavcodec-dev",
    "libavformat-dev",
    "libavutil-dev",
    "libavfilter-dev",
    "gcc",
    // renaming a library copy the way wheel bundlers do
    "patchelf",
    // Mesa's software Vulkan device (lavapipe): a hardware device any machine can give a
    // decoder, for the `hwaccel` label read from `hw_device_ctx`
    "mesa-vulkan-drivers",
    // mount namespaces (unshare); setpriv for the least-privilege test
    "util-linux",
    // systemd-analyze verify, for the shipped unit
    "systemd",
    // `observer top` driven as a person would: keys sent, screen read
    "tmux",
    // the benchmarks' probe accounting (BPF run statistics)
    "bpftool",
    // the transport tests' private network: namespaces, veth, exact drop counters
    "iproute2",
    "nftables",
    // ApacheBench: many concurrent scrapers of /metrics; htpasswd, the bcrypt hashes of the
    // web configuration's basic auth
    "apache2-utils",
    // the secured endpoints' clients and certificates: curl proves each refusal, openssl
    // makes the compose stack's certificates (deploy/compose/make-certs.sh)
    "curl",
    "openssl",
    // promtool and amtool: the shipped alert rules' unit tests and config checks
    "prometheus",
    "prometheus-alertmanager",
    // the kernel matrix: Debian's kernels booted under QEMU from a busybox initramfs; depmod
    // indexes their modules, and the guests load veth and nftables with modprobe
    "qemu-system-x86",
    "qemu-system-arm",
    // arm64: the cross compiler (the layout test compiles FFmpeg's headers for arm64 too),
    // and binutils' disassembler (with it), the ELF tests' truth for arm64 binaries
    "gcc-aarch64-linux-gnu",
    "busybox-static",
    "kmod",
    "xz-utils",
];

fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .map(|p| (*p).to_string())
        .collect()
}

/// What only `cargo xtask bench` needs, beyond the tests' packages.
const BENCH_PACKAGES: &[&str] = &[
    // the peer the overhead benchmark compares with: the same counting as a bpftrace script
    "bpftrace",
    // text in the plots, which are rasterized with the system's fonts
    "fonts-dejavu-core",
];

pub fn bench_deps() -> anyhow::Result<()> {
    apt_install(BENCH_PACKAGES)
}

fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(pkgs);
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    download(
        || {
            let mut c = Command::new("apt-get");
            c.args(["update", "-q"]);
            c
        },
        "apt-get update",
    )?;
    download(
        || {
            let mut c = Command::new("apt-get");
            c.args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive");
            c
        },
        "apt-get install",
    )
}

/// FFmpeg headers of other majors: Debian's other releases carry them. (suite, what it holds)
const HEADER_SUITES: &[&str] = &["bullseye", "trixie", "sid"];

/// PyAV wheels bundle FFmpeg under hashed file names: 12.3.0 bundles FFmpeg 6.1
/// (libavcodec 60), 16.0.1 FFmpeg 8.0 (libavcodec 62), the two majors Debian has no
/// headers for.
pub const PYAV_VERSIONS: &[&str] = &["12.3.0", "16.0.1"];

/// imageio-ffmpeg ships a static, stripped ffmpeg 9 build that exports the libav* API.
const IMAGEIO_FFMPEG: &str = "imageio-ffmpeg==0.8.1";

/// Installs the test dependencies and returns the directory holding the downloaded assets.
pub fn test_deps(root: &Path) -> anyhow::Result<PathBuf> {
    step("checking the test dependencies");
    apt_install(TEST_PACKAGES)?;
    let assets = root.join("target").join("test-assets");
    std::fs::create_dir_all(&assets)?;
    for suite in HEADER_SUITES {
        debian_headers(&assets, suite)?;
    }
    ffmpeg4(&assets)?;
    for v in PYAV_VERSIONS {
        let dir = assets.join("pyav").join(v);
        if !dir.join("av").exists() {
            step(&format!(
                "installing PyAV {v} (a bundled FFmpeg) into {}",
                dir.display()
            ));
            pip_target(&dir, &format!("av=={v}"), false, None)?;
        }
    }
    let static_dir = assets.join("static-ffmpeg");
    if !static_dir.join("ffmpeg").exists() {
        step("fetching a static ffmpeg build (imageio-ffmpeg's)");
        let tmp = assets.join("imageio-ffmpeg");
        pip_target(&tmp, IMAGEIO_FFMPEG, false, None)?;
        move_static_ffmpeg(&tmp, &static_dir)?;
    }
    for (dir, module, requirement, what) in [
        (
            "kubernetes-validate",
            "kubernetes_validate",
            "kubernetes-validate==1.37.0",
            "Kubernetes' schemas, for the manifests",
        ),
        (
            "check-jsonschema",
            "check_jsonschema",
            "check-jsonschema==0.39.0",
            "the Compose specification's schema, for the compose stack",
        ),
    ] {
        let target = assets.join(dir);
        if !target.join(module).exists() {
            step(&format!("installing {requirement} ({what}) from PyPI"));
            pip_target(&target, requirement, true, None)?;
        }
    }
    Ok(assets)
}

/// What building for another architecture needs: the Rust standard library for the target
/// (rustup) and Debian's cross linker and C compiler (`gcc-aarch64-linux-gnu`; the C library
/// for the target comes with it).
pub fn cross_deps(arch: crate::vm::Arch) -> anyhow::Result<()> {
    let triple = arch.triple();
    step(&format!("checking the cross toolchain for {triple}"));
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is not installed; install Rust with rustup first")?;
    if !installed.lines().any(|l| l.trim() == triple) {
        step(&format!(
            "installing the Rust standard library for {triple} (rustup target add)"
        ));
        download(
            || {
                let mut c = Command::new("rustup");
                c.args(["target", "add", triple]);
                c
            },
            &format!("rustup target add {triple}"),
        )?;
    }
    let gcc = format!("gcc-{}", arch.gnu_prefix().replace('_', "-"));
    apt_install(&[gcc.as_str()])
}

/// The Debian release whose arm64 packages make the arm64 guests' root: its ffmpeg is 5.1, as
/// on this machine, and its Python 3.11 takes the same cp311 wheels.
const ARM64_ROOT_SUITE: &str = "bookworm";

/// Debian packages the arm64 guests' root is made of (with everything they depend on).
const ARM64_ROOT_PACKAGES: &[&str] = &[
    // the file system's skeleton (/proc, /sys, /tmp, /root, /etc/host.conf, ...); /mnt is
    // its maintainer script's, made below
    "base-files",
    "libc-bin",
    "dash",
    "coreutils",
    "busybox-static",
    "kmod",
    "iproute2",
    "nftables",
    "ffmpeg",
    "python3",
    // the container test: a relinked copy in a mount namespace of its own
    "patchelf",
    "util-linux",
];

/// What the arm64 guests run on: a root file system unpacked from Debian's arm64 packages (no
/// maintainer scripts run: the guest runs `ldconfig`, and busybox's applets fill the gaps),
/// and the tests' assets for arm64 beside it (the PyAV wheel and static ffmpeg built for
/// arm64, the media shared with this machine's tests). Returns (root, assets).
pub fn arm64_guest(assets: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let root = assets.join("arm64").join("root");
    let marker = root.join(".observer-packages");
    let packages = ARM64_ROOT_PACKAGES.join(" ");
    // The marker names what the root was made of, and how: a new way remakes it.
    let made = format!("{packages}\nalternatives in ld.so.conf.d\n");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(made.as_str()) {
        step(&format!(
            "assembling the arm64 guests' root from Debian {ARM64_ROOT_SUITE}'s arm64 packages \
             ({packages} and what they need)"
        ));
        let apt = DebianSuite::of_arch(assets, ARM64_ROOT_SUITE, "arm64")?;
        let mut wanted: Vec<String> = Vec::new();
        for p in ARM64_ROOT_PACKAGES {
            for q in apt.closure(p)? {
                if !wanted.contains(&q) {
                    wanted.push(q);
                }
            }
        }
        let debs = apt.download(&wanted.iter().map(String::as_str).collect::<Vec<_>>())?;
        unpack(&debs, &root)?;
        // What maintainer scripts would have made: the shell's usual name, and the libraries
        // Debian's alternatives put on the linker's path (BLAS and LAPACK, in directories of
        // their own: the guest's ldconfig reads them from this list).
        let sh = root.join("bin/sh");
        if std::fs::symlink_metadata(&sh).is_err() {
            std::os::unix::fs::symlink("dash", &sh)?;
        }
        let multiarch = root.join("usr/lib/aarch64-linux-gnu");
        let mut alternatives = String::new();
        for e in std::fs::read_dir(&multiarch)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type()?.is_dir() && ["blas", "lapack"].contains(&name.as_str()) {
                alternatives.push_str(&format!("/usr/lib/aarch64-linux-gnu/{name}\n"));
            }
        }
        std::fs::create_dir_all(root.join("etc/ld.so.conf.d"))?;
        std::fs::write(
            root.join("etc/ld.so.conf.d/observer-alternatives.conf"),
            alternatives,
        )?;
        std::fs::write(&marker, &made)?;
    }
    // Directories base-files' maintainer script makes (a test mounts a tmpfs on /mnt).
    for d in ["mnt", "media", "srv", "opt"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let arm = assets.join("arm64").join("assets");
    // The wheel the hold test installs fresh (FFmpeg 6.1 under hashed names).
    let v = PYAV_VERSIONS[0];
    let dir = arm.join("pyav").join(v);
    if !dir.join("av").exists() {
        step(&format!(
            "installing PyAV {v} for arm64 into {}",
            dir.display()
        ));
        pip_target(&dir, &format!("av=={v}"), false, Some("aarch64"))?;
    }
    let static_dir = arm.join("static-ffmpeg");
    if !static_dir.join("ffmpeg").exists() {
        step("fetching a static arm64 ffmpeg build (imageio-ffmpeg's)");
        let tmp = arm.join("imageio-ffmpeg");
        pip_target(&tmp, IMAGEIO_FFMPEG, false, Some("aarch64"))?;
        move_static_ffmpeg(&tmp, &static_dir)?;
    }
    // The media the tests make with ffmpeg, made on this machine once rather than under an
    // emulated CPU.
    let media = arm.join("media");
    std::fs::create_dir_all(&media)?;
    if let Ok(dir) = std::fs::read_dir(assets.join("media")) {
        for e in dir.flatten() {
            let dest = media.join(e.file_name());
            if !dest.exists() && e.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::copy(e.path(), dest)?;
            }
        }
    }
    Ok((root, arm))
}

/// imageio-ffmpeg's one ffmpeg binary, moved out of the wheel unpacked at `tmp` into `dir`.
fn move_static_ffmpeg(tmp: &Path, dir: &Path) -> anyhow::Result<()> {
    let bin = std::fs::read_dir(tmp.join("imageio_ffmpeg").join("binaries"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ffmpeg-linux"))
        })
        .context("imageio-ffmpeg carries no ffmpeg-linux binary")?;
    std::fs::create_dir_all(dir)?;
    std::fs::rename(&bin, dir.join("ffmpeg"))?;
    std::fs::remove_dir_all(tmp)?;
    Ok(())
}

/// FFmpeg 4.x (libavcodec 58), run for real: Debian bullseye's ffmpeg 4.3 with the libraries
/// it needs that this system lacks (its own libav*, codec libraries of older sonames),
/// unpacked under the assets; tests run it with those libraries on `LD_LIBRARY_PATH`.
fn ffmpeg4(assets: &Path) -> anyhow::Result<()> {
    let dir = assets.join("ffmpeg4");
    if dir.join("usr/bin/ffmpeg").exists() {
        return Ok(());
    }
    step("fetching FFmpeg 4.3 (Debian bullseye's ffmpeg and the libraries it needs)");
    let apt = DebianSuite::new(assets, "bullseye")?;
    let closure = apt.closure("ffmpeg")?;
    // This system's newer copies of the rest (the C library, zlib, ...) serve it.
    let missing = missing_packages(&closure.iter().map(String::as_str).collect::<Vec<_>>());
    let mut wanted: Vec<&str> = missing.iter().map(String::as_str).collect();
    if !wanted.contains(&"ffmpeg") {
        wanted.push("ffmpeg");
    }
    let debs = apt.download(&wanted)?;
    unpack(&debs, &dir)
}

/// `pip install --target dir requirement`, binary wheels only; `machine`: the wheel for
/// another machine (`aarch64`: manylinux, CPython 3.11 as the arm64 guests' Python) rather
/// than this one's.
fn pip_target(
    dir: &Path,
    requirement: &str,
    deps: bool,
    machine: Option<&str>,
) -> anyhow::Result<()> {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| output(Command::new(p).arg("--version")).is_some())
        .context("no python3: install it (apt-get install python3 python3-pip)")?;
    download(
        || {
            let mut c = Command::new(python);
            c.args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--only-binary=:all:", "--upgrade", "--target"])
            .arg(dir)
            .args((!deps).then_some("--no-deps"));
            if let Some(m) = machine {
                c.args(["--python-version", "3.11", "--implementation", "cp"]);
                for tag in ["manylinux2014", "manylinux_2_17", "manylinux_2_28"] {
                    c.arg("--platform").arg(format!("{tag}_{m}"));
                }
            }
            c.arg(requirement);
            c
        },
        &match machine {
            Some(m) => format!("pip install {requirement} for {m}"),
            None => format!("pip install {requirement}"),
        },
    )
}

/// Downloads and unpacks FFmpeg's -dev packages from another Debian release.
fn debian_headers(assets: &Path, suite: &str) -> anyhow::Result<()> {
    let dir = assets.join("headers").join(suite);
    if dir.join("usr/include").exists() {
        return Ok(());
    }
    step(&format!("fetching FFmpeg headers from Debian {suite}"));
    let apt = DebianSuite::new(assets, suite)?;
    let debs = apt.download(&[
        "libavcodec-dev",
        "libavformat-dev",
        "libavutil-dev",
        "libavfilter-dev",
    ])?;
    unpack(&debs, &dir)
}

/// Unpacks Debian packages into `dir`, whole or not at all.
pub(crate) fn unpack(debs: &[PathBuf], dir: &Path) -> anyhow::Result<()> {
    let staging = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    for deb in debs {
        run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&staging),
            "unpacking a package",
        )?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir)?;
    Ok(())
}

/// Another Debian release's packages, through a private apt state (its own sources, lists and
/// cache under the test assets) so the system's own sources are untouched.
pub(crate) struct DebianSuite {
    apt: PathBuf,
    suite: String,
    /// Debian's name of the architecture whose packages it lists (`amd64`, `arm64`).
    arch: &'static str,
}

impl DebianSuite {
    /// The suite's amd64 package lists, fetched.
    pub(crate) fn new(assets: &Path, suite: &str) -> anyhow::Result<DebianSuite> {
        DebianSuite::of_arch(assets, suite, "amd64")
    }

    /// The suite's package lists for `arch` (Debian's name), fetched.
    pub(crate) fn of_arch(
        assets: &Path,
        suite: &str,
        arch: &'static str,
    ) -> anyhow::Result<DebianSuite> {
        let apt = match arch {
            "amd64" => assets.join("apt").join(suite),
            _ => assets.join("apt").join(format!("{suite}-{arch}")),
        };
        for d in [
            "sources.list.d",
            "lists/partial",
            "cache/archives/partial",
            "debs",
        ] {
            std::fs::create_dir_all(apt.join(d))?;
        }
        std::fs::write(
            apt.join("sources.list.d/suite.sources"),
            format!(
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        )?;
        let _ = std::fs::remove_file(apt.join("sources.list.d/ffmpeg.sources"));
        let s = DebianSuite {
            apt,
            suite: suite.to_string(),
            arch,
        };
        download(
            || s.command("apt-get", &["update", "-q"]),
            &format!("apt-get update for {suite}"),
        )?;
        Ok(s)
    }

    /// `apt-get` or `apt-cache` with this suite's private state; it runs in the download folder.
    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(tool);
        c.arg("-o").arg("Dir::Etc::SourceList=/dev/null");
        c.arg("-o").arg(format!(
            "Dir::Etc::SourceParts={}",
            self.apt.join("sources.list.d").display()
        ));
        c.arg("-o").arg(format!(
            "Dir::State::Lists={}",
            self.apt.join("lists").display()
        ));
        c.arg("-o")
            .arg(format!("Dir::Cache={}", self.apt.join("cache").display()));
        c.arg("-o").arg("Dir::State::status=/dev/null");
        c.arg("-o").arg(format!("APT::Architecture={}", self.arch));
        c.arg("-o").arg(format!("APT::Architectures={}", self.arch));
        c.current_dir(self.apt.join("debs")).args(args);
        c
    }

    /// The suite's package names matching the regular expression `pattern`.
    pub(crate) fn search(&self, pattern: &str) -> Vec<String> {
        output(&mut self.command("apt-cache", &["search", "--names-only", pattern]))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Every package installing `package` from this suite on an empty system takes, as apt
    /// resolves it (first alternatives).
    pub(crate) fn closure(&self, package: &str) -> anyhow::Result<Vec<String>> {
        let text = output(&mut self.command(
            "apt-get",
            &["-s", "install", "--no-install-recommends", package],
        ))
        .with_context(|| format!("resolving {package} in Debian {}", self.suite))?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("Inst "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect())
    }

    /// Downloads `packages` (a failed try starts again from none) and returns the files.
    pub(crate) fn download(&self, packages: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
        let debs = self.apt.join("debs");
        download(
            || {
                let _ = std::fs::remove_dir_all(&debs);
                let _ = std::fs::create_dir_all(&debs);
                let mut args = vec!["download"];
                args.extend_from_slice(packages);
                self.command("apt-get", &args)
            },
            &format!(
                "downloading {} from Debian {}",
                packages.join(" "),
                self.suite
            ),
        )?;
        Ok(std::fs::read_dir(&debs)?
            .flatten()
            .map(|e| e.path())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that fails until it has run `fail` times, counting its runs in `count`.
    fn flaky(count: &Path, fail: u32) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"n=$(($(cat "$1" 2>/dev/null || echo 0) + 1)); echo $n > "$1"; [ $n -gt "$2" ]"#)
            .arg("sh")
            .arg(count)
            .arg(fail.to_string());
        c
    }

    #[test]
    fn a_download_is_tried_until_it_succeeds_and_at_most_three_times() {
        let dir = std::env::temp_dir().join(format!("xtask-retry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let runs = |name: &str| -> u32 {
            std::fs::read_to_string(dir.join(name))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let pause = std::time::Duration::from_millis(1);
        retrying(|| flaky(&dir.join("two"), 2), "flaky", pause).expect("third try succeeds");
        assert_eq!(runs("two"), 3);
        let err = retrying(|| flaky(&dir.join("three"), 3), "flaky", pause).unwrap_err();
        assert!(err.to_string().contains("flaky failed"), "{err:#}");
        assert_eq!(runs("three"), DOWNLOAD_TRIES);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
