//! Issue 4's check on a real NVIDIA GPU, on a machine the project is never built on (the
//! `device` tool lends one to some sessions: no Rust, no registries, 64 MiB carried).
//!
//! `cargo xtask gpu-kit` packs into `target/gpu-kit` what that machine needs: the release
//! daemon, the `gpu_device` test binary, this xtask, and the static ffmpeg the tests already
//! use (it decodes on NVDEC: `-hwaccel cuda`, `h264_cuvid`), all but the xtask xz-compressed to
//! fit. There,
//! `target/gpu-kit/xtask gpu-check` records the machine, runs the device tests, measures the
//! cost of sampling the real driver, and writes `report.md` for BENCHMARKS.md.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{self, Nvml},
    cargo,
    setup::{output as text, run},
    step,
};

/// Where the kit is packed, relative to the workspace root (ignored by git, so the device
/// tool takes it only when named in `carry`).
pub const KIT: &str = "target/gpu-kit";

/// What the device tool carries: the working tree and the kit together. Its README says
/// 64 MiB, but its own count is not ours: it refused a kit of 60,533,048 bytes with a
/// 1,023,292-byte tree and took one of 59,824,624 bytes (2026-12-04). The check holds to
/// what was taken.
const CARRY_LIMIT: u64 = 60_850_000;

/// Packs the kit; `daemon` is the release build.
pub fn pack(root: &Path, daemon: &Path, assets: &Path) -> anyhow::Result<()> {
    let kit = root.join(KIT);
    let _ = std::fs::remove_dir_all(&kit);
    std::fs::create_dir_all(&kit)?;
    step("building the device tests (release)");
    let tests = release_test_binary("gpu_device")?;
    step("building this xtask (release), which runs the check there");
    run(
        Command::new(cargo()).args(["build", "--release", "--package", "xtask"]),
        "building xtask",
    )?;
    for (from, name) in [
        (daemon.to_path_buf(), "observer"),
        (tests, "gpu_device"),
        (root.join("target/release/xtask"), "xtask"),
    ] {
        run(
            Command::new("strip")
                .arg("-o")
                .arg(kit.join(name))
                .arg(&from),
            "strip",
        )?;
    }
    for name in ["observer", "gpu_device"] {
        xz(&kit.join(name), &kit.join(format!("{name}.xz")))?;
        std::fs::remove_file(kit.join(name))?;
    }
    // 172 MB; compressed once (minutes) and kept beside it for the next kit.
    let ffmpeg = assets.join("static-ffmpeg").join("ffmpeg");
    let packed = assets.join("static-ffmpeg").join("ffmpeg.xz");
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if fresh(&packed) < fresh(&ffmpeg) {
        step("compressing the static ffmpeg (xz, a few minutes; kept for the next kit)");
        let tmp = packed.with_extension("part");
        xz(&ffmpeg, &tmp)?;
        std::fs::rename(&tmp, &packed)?;
    }
    std::fs::copy(&packed, kit.join("ffmpeg.xz"))?;

    let kit_size = dir_size(&kit)?;
    let tree = String::from_utf8(
        Command::new("git")
            .args(["ls-files", "-z"])
            .current_dir(root)
            .output()
            .context("git ls-files")?
            .stdout,
    )?;
    let tree_size: u64 = tree
        .split('\0')
        .filter_map(|f| std::fs::metadata(root.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let total = kit_size + tree_size;
    eprintln!(
        "    {KIT}: {:.1} MB, with the working tree {:.1} MB of the {:.1} MB the device tool \
         was seen to carry",
        kit_size as f64 / 1e6,
        total as f64 / 1e6,
        CARRY_LIMIT as f64 / 1e6
    );
    if total > CARRY_LIMIT {
        bail!("the kit and the working tree are over what the device tool carries");
    }
    eprintln!(
        "\n    On the GPU machine (device tool): run with carry [\"{KIT}\"] and the command\n    \
         {KIT}/xtask gpu-check --kit {KIT} --out \"$OUT\"\n    \
         report.md, the tests' log and the busiest scrapes come back in $OUT.\n"
    );
    Ok(())
}

/// Runs on the GPU machine, from the kit: the machine, the device tests, the sampling cost.
/// Everything is written to `out` before a failure is reported.
pub fn check(kit: &Path, out: &Path, runs: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let kit = std::fs::canonicalize(kit).context("the kit folder")?;
    let mut report = String::from("## The machine\n\n");
    for (what, cmd, args) in [
        ("kernel", "uname", &["-r"][..]),
        (
            "GPU",
            "nvidia-smi",
            &[
                "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader",
            ][..],
        ),
    ] {
        let seen = text(Command::new(cmd).args(args)).unwrap_or_else(|| format!("({cmd} failed)"));
        let _ = writeln!(report, "- {what}: {}", seen.trim());
    }
    let _ = writeln!(
        report,
        "- BTF: {}",
        if Path::new("/sys/kernel/btf/vmlinux").exists() {
            "yes"
        } else {
            "NO (the kernel programs will not load)"
        }
    );
    // The driver's libraries may sit outside the loader's paths (a container's or a VM's
    // driver mount): the daemon loads libnvidia-ml.so.1, ffmpeg libcuda.so.1 and, for NVDEC
    // (both `-hwaccel cuda` and the cuvid decoders), libnvcuvid.so.1.
    let mut lib_dirs = Vec::new();
    let mut nvml_found = false;
    for lib in ["libnvidia-ml.so.1", "libcuda.so.1", "libnvcuvid.so.1"] {
        let found = find_library(lib);
        nvml_found |= lib == "libnvidia-ml.so.1" && found.is_some();
        let _ = writeln!(
            report,
            "- {lib}: {}",
            found
                .as_ref()
                .map_or("not found".into(), |p| p.display().to_string())
        );
        if let Some(dir) = found.and_then(|p| p.parent().map(Path::to_path_buf))
            && !lib_dirs.contains(&dir)
        {
            lib_dirs.push(dir);
        }
    }
    // The machine's own LD_LIBRARY_PATH is a list (the GPU machine's is
    // `/usr/local/nvidia/lib64:/usr/local/nvidia/lib`): its entries are kept one by one.
    let inherited = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    let ld_path = std::env::join_paths(
        lib_dirs
            .into_iter()
            .chain(std::env::split_paths(&inherited)),
    )?;
    // SAFETY: set before any thread or child starts; the daemons and ffmpeg inherit it.
    unsafe { std::env::set_var("LD_LIBRARY_PATH", &ld_path) };

    // Unpacked outside the kit, which must stay small enough to travel again.
    let bin = std::env::temp_dir().join("observer-gpu-kit");
    std::fs::create_dir_all(&bin)?;
    for name in ["ffmpeg", "observer", "gpu_device"] {
        if !bin.join(name).exists() {
            step(&format!("unpacking {name}"));
            unxz(&kit.join(format!("{name}.xz")), &bin.join(name))?;
        }
    }
    let ffmpeg = bin.join("ffmpeg");
    let version = text(Command::new(&ffmpeg).args(["-hide_banner", "-version"]))
        .and_then(|v| v.lines().next().map(str::to_string))
        .unwrap_or_else(|| "(ffmpeg -version failed)".into());
    let _ = writeln!(report, "- ffmpeg: {version}\n\n## The device tests\n");
    std::fs::write(out.join("report.md"), &report)?;

    step("the device tests");
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let tests = Command::new(bin.join("gpu_device"))
        .args(["--ignored", "--nocapture", "--test-threads", "1"])
        .env("PATH", path)
        .env("OBSERVER_BIN", bin.join("observer"))
        .env("OBSERVER_GPU_REPORT_DIR", out)
        .output()
        .context("running the device tests")?;
    let log = [tests.stdout, tests.stderr].concat();
    std::fs::write(out.join("tests.log"), &log)?;
    eprint!("{}", String::from_utf8_lossy(&log));

    let mut report = std::fs::read_to_string(out.join("report.md"))?;
    let _ = writeln!(
        report,
        "\ntests: {}\n\n## Sampling cost\n",
        if tests.status.success() {
            "passed"
        } else {
            "FAILED (tests.log)"
        }
    );
    let sampled = if nvml_found {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        bench::gpu_sampling(
            &bin.join("observer"),
            port,
            runs,
            &Nvml::Driver,
            &mut report,
        )
    } else {
        Err(anyhow::anyhow!("no libnvidia-ml.so.1 on this machine"))
    };
    if let Err(e) = &sampled {
        let _ = writeln!(report, "sampling cost not measured: {e:#}");
    }
    std::fs::write(out.join("report.md"), &report)?;
    eprintln!("\n{report}");
    if !tests.status.success() {
        bail!("the device tests failed (tests.log)");
    }
    sampled
}

/// The library's path: the loader's cache first, then where drivers are mounted.
fn find_library(name: &str) -> Option<PathBuf> {
    let cache = text(Command::new("ldconfig").arg("-p")).unwrap_or_default();
    if let Some(p) = cache
        .lines()
        .filter(|l| l.trim_start().starts_with(name) && l.contains("x86-64"))
        .find_map(|l| l.rsplit("=> ").next())
    {
        return Some(PathBuf::from(p.trim()));
    }
    [
        "/usr/local/nvidia/lib64",
        "/usr/local/nvidia/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/compat",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.exists())
}

fn xz(from: &Path, to: &Path) -> anyhow::Result<()> {
    // x86 branch filter and one thread (one block): the static ffmpeg packs 47.7 MB this way
    // against 48.4 MB with -9 -T0, the margin that let the kit travel with the working tree.
    run(
        Command::new("xz")
            .args(["--x86", "--lzma2=preset=9e", "-T1", "-c"])
            .arg(from)
            .stdout(std::fs::File::create(to)?),
        "xz",
    )
}

/// xz's own tool where the machine has it, Python's lzma where it does not.
fn unxz(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = std::fs::File::create(to)?;
    let xz = Command::new("xz")
        .arg("-dc")
        .arg(from)
        .stdout(out)
        .stderr(Stdio::null())
        .status();
    if !xz.is_ok_and(|s| s.success()) {
        run(
            Command::new("python3")
                .args([
                    "-c",
                    "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), \
                 open(sys.argv[2], 'wb'))",
                ])
                .arg(from)
                .arg(to),
            "unpacking ffmpeg with python3",
        )?;
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Builds one of the tests crate's test binaries in release and returns its path.
fn release_test_binary(name: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new(cargo())
        .args([
            "test",
            "--release",
            "--no-run",
            "--package",
            "observer-tests",
            "--test",
            name,
            "--message-format",
            "json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binary")?;
    if !out.status.success() {
        bail!("building the {name} test binary failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo built no executable for the {name} tests"))
}

/// Bytes in the (flat) kit folder.
fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        n += e?.metadata()?.len();
    }
    Ok(n)
}
