//! `cargo xtask`: the project's commands, for a fresh machine as much as a developer's.
//!
//! - `cargo xtask run`: install what the build needs, build, start the daemon, and show a
//!   live per-stream table.
//! - `cargo xtask build [--arch arm64]`: install what the build needs and build the daemon,
//!   for this machine or cross-built for arm64.
//! - `cargo xtask test`: install what the tests need too, then run every test.
//! - `cargo xtask bench`: the benchmarks behind BENCHMARKS.md: overhead on pipelines (beside
//!   the empty-probe floor and a bpftrace peer), the ingest, GPU sampling, frame spans, and
//!   the daemon at scale (streams, reaction, churn), with plots.
//! - `cargo xtask setup [--tests]`: only the installing.
//! - `cargo xtask gpu-kit`: pack the check that needs a real NVIDIA GPU for a machine that has
//!   one, where `xtask gpu-check` runs it (see `gpukit`).

mod bench;
mod fuzz;
mod gpukit;
mod plot;
mod scale;
mod setup;
mod table;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building (and, with --tests, testing) needs.
    Setup {
        #[arg(long)]
        tests: bool,
    },
    /// Build the daemon (release) for an architecture: `target/release/observer` for amd64,
    /// `target/aarch64-unknown-linux-gnu/release/observer` for arm64 (cross-built here, with
    /// the kernel programs built for arm64's registers inside).
    Build {
        #[arg(long, value_enum, default_value_t = vm::Arch::Amd64)]
        arch: vm::Arch,
        /// Build without optimisations.
        #[arg(long)]
        debug: bool,
    },
    /// Build and start the daemon on this machine and show its streams live.
    Run {
        /// Build without optimisations (faster to build, slower to run).
        #[arg(long)]
        debug: bool,
        /// Flags for the daemon, after `--` (e.g. `-- --listen 0.0.0.0:9464`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests and the tests that load the kernel programs against real
    /// ffmpeg processes (as root), on this machine's kernel and then inside Debian's 5.10, 6.1
    /// and 6.12 kernels under QEMU, and arm64's 6.1 and 6.12 (the kernel matrix).
    Test {
        /// Only these kernels (repeat or comma-separate): `host` (this machine's, the whole
        /// suite), `bullseye` (5.10), `bookworm` (6.1), `trixie` (6.12). Default: all.
        #[arg(long, value_delimiter = ',', value_parser = ["host", "bullseye", "bookworm", "trixie"])]
        kernel: Vec<String>,
        /// Only these architectures' kernels (comma-separated): `amd64` (this machine's and
        /// the amd64 guests), `arm64` (guests of bookworm's and trixie's arm64 kernels).
        /// Default: both.
        #[arg(long, value_enum, value_delimiter = ',')]
        arch: Vec<vm::Arch>,
        /// Arguments for `cargo test` on this machine, after `--` (e.g. `-- decode`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz the parsers of untrusted input (ELF files, configuration, kernel records, /proc
    /// and URLs) with `cargo fuzz`, each target for a bounded time.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (comma-separated): `elf`, `config`, `events`, `text`.
        #[arg(long)]
        only: Option<String>,
    },
    /// Measure the daemon's overhead on real pipelines (see BENCHMARKS.md).
    Bench {
        /// Repetitions of each measurement.
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Only these parts (comma-separated): `worst-case`, `720p`, `AAC`, `ingest`, `gpu`,
        /// `spans`, `scrapers`, `web`, `scale`, `reaction`, `hold`, `arm64`, `churn`, `soak`.
        #[arg(long)]
        only: Option<String>,
        /// Length of the soak run.
        #[arg(long, default_value_t = 30)]
        soak_minutes: u64,
    },
    /// Pack into target/gpu-kit what a machine with an NVIDIA GPU needs to run the checks
    /// that need one (the daemon, the device tests, a static ffmpeg with NVDEC).
    GpuKit,
    /// On the GPU machine, from the kit: the machine's facts, the device tests, and the cost
    /// of sampling the real driver, written to `--out` (report.md).
    GpuCheck {
        #[arg(long, default_value = gpukit::KIT)]
        kit: PathBuf,
        #[arg(long, env = "OUT", default_value = "gpu-check")]
        out: PathBuf,
        /// Repetitions of the sampling-cost measurement (20 s a mode each).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Runs from the kit on a machine that has no checkout of this workspace.
    if let Cmd::GpuCheck { kit, out, runs } = &cli.command {
        setup::require_root("the device tests load kernel programs")?;
        return gpukit::check(kit, out, *runs);
    }
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup { tests } => {
            setup::build_deps()?;
            if tests {
                setup::test_deps(&root)?;
            }
            Ok(())
        }
        Cmd::Build { arch, debug } => {
            setup::build_deps()?;
            let bin = build_daemon_for(arch, !debug, false)?;
            // The path alone on standard output, for scripts (deploy/docker/Dockerfile).
            println!("{}", bin.display());
            Ok(())
        }
        Cmd::Run { debug, args } => {
            setup::require_root("the daemon loads kernel programs")?;
            setup::build_deps()?;
            let bin = build_daemon(!debug)?;
            table::run(&bin, &args)
        }
        Cmd::Test { kernel, arch, args } => {
            setup::require_root("the tests load kernel programs")?;
            setup::build_deps()?;
            let archs: Vec<vm::Arch> = if arch.is_empty() {
                vec![vm::Arch::Amd64, vm::Arch::Arm64]
            } else {
                arch.clone()
            };
            let all = kernel.is_empty();
            let (host, guests_wanted) = selected(&kernel, &archs);
            if !host && !guests_wanted {
                bail!(
                    "nothing to run: --kernel {} with --arch {} selects no kernel (this \
                     machine's is amd64's `host`; arm64 runs bookworm and trixie)",
                    kernel.join(","),
                    archs.iter().map(|a| a.name()).collect::<Vec<_>>().join(",")
                );
            }
            let assets = setup::test_deps(&root)?;
            // The arm64 root and assets: the arm64 guests run on them, and this machine's ELF
            // tests read their binaries.
            let (arm64_root, arm64_assets) = setup::arm64_guest(&assets)?;
            let bin = build_daemon(false)?;
            let mut failed = Vec::new();
            if host {
                setup::cargo_tool(
                    "cargo-deny",
                    CARGO_DENY_VERSION,
                    None,
                    "checks the dependencies' advisories, licenses and sources",
                )?;
                check_dependencies()?;
                step("running the tests");
                let status = Command::new(cargo())
                    // Every test binary runs even after one fails: one flaky test must not
                    // hide what the others would say.
                    .args([
                        "test",
                        "--no-fail-fast",
                        "--workspace",
                        "--exclude",
                        "observer-ebpf",
                    ])
                    .args(&args)
                    .env("OBSERVER_BIN", &bin)
                    .env("OBSERVER_TEST_ASSETS", &assets)
                    .status()
                    .context("running cargo test")?;
                if !status.success() {
                    failed.push("this machine's kernel".to_string());
                }
            }
            let mut guests = Vec::new();
            for &a in &archs {
                let suites: Vec<&str> = a
                    .kernels()
                    .iter()
                    .map(|(suite, _)| *suite)
                    .filter(|s| all || kernel.iter().any(|k| k == s))
                    .collect();
                if suites.is_empty() {
                    continue;
                }
                // amd64's guests run this machine's debug daemon and test binaries: what the
                // daemon does at start is optimized even in debug (Cargo.toml), fast enough
                // under an emulated CPU. arm64's are built here for it in one profile, release:
                // the daemon `cargo xtask build --arch arm64` makes, and tests that share its
                // dependencies' build.
                let (daemon, guest_root, guest_assets, release) = match a {
                    vm::Arch::Amd64 => (Some(bin.clone()), vm::Root::Host, assets.clone(), false),
                    vm::Arch::Arm64 => (
                        None,
                        vm::Root::Foreign(arm64_root.clone()),
                        arm64_assets.clone(),
                        true,
                    ),
                };
                guests.push(Guests {
                    arch: a,
                    suites,
                    daemon,
                    release,
                    root: guest_root,
                    assets: guest_assets,
                });
            }
            if !guests.is_empty() {
                failed.extend(kernel_matrix(&root, &assets, &guests)?);
            }
            if !failed.is_empty() {
                bail!("tests failed on {}", failed.join(", "));
            }
            Ok(())
        }
        Cmd::Fuzz { seconds, only } => {
            setup::build_deps()?;
            fuzz::run(&root, seconds, only.as_deref())
        }
        Cmd::Bench {
            runs,
            only,
            soak_minutes,
        } => {
            setup::require_root("the benchmarks load kernel programs")?;
            setup::build_deps()?;
            let assets = setup::test_deps(&root)?;
            setup::bench_deps()?;
            let bin = build_daemon(true)?;
            bench::run(&root, &bin, &assets, runs, only.as_deref(), soak_minutes)
        }
        Cmd::GpuKit => {
            setup::build_deps()?;
            let assets = setup::test_deps(&root)?;
            let bin = build_daemon(true)?;
            gpukit::pack(&root, &bin, &assets)
        }
        Cmd::GpuCheck { .. } => unreachable!("handled before the workspace is entered"),
    }
}

const CARGO_DENY_VERSION: &str = "0.20.2";

/// What `--kernel` and `--arch` select: (this machine's suite, any guest). No `--kernel`
/// means every kernel; `host` is amd64's.
fn selected(kernel: &[String], archs: &[vm::Arch]) -> (bool, bool) {
    let wants = |k: &str| kernel.is_empty() || kernel.iter().any(|w| w == k);
    let host = archs.contains(&vm::Arch::Amd64) && wants("host");
    let guests = archs
        .iter()
        .any(|a| a.kernels().iter().any(|(suite, _)| wants(suite)));
    (host, guests)
}

/// One architecture's part of the kernel matrix.
struct Guests {
    arch: vm::Arch,
    suites: Vec<&'static str>,
    /// The daemon built for it; `None`: build it (in the release profile) beside the other
    /// architecture's guests.
    daemon: Option<PathBuf>,
    /// Whether its test binaries are built in the release profile.
    release: bool,
    root: vm::Root,
    /// `OBSERVER_TEST_ASSETS` inside its guests.
    assets: PathBuf,
}

/// What one guest did: its kernel, its tests' outcomes, its seconds.
type GuestRun = (String, anyhow::Result<Vec<vm::Outcome>>, f64, usize);

/// Runs the kernel-dependent tests inside each of `guests`' kernels; returns the kernels
/// where any failed. Each architecture's part runs in a thread of its own: the amd64 guests
/// start as soon as their kernels are fetched (what they run is built); the arm64 part
/// meanwhile cross-builds its daemon and tests at the lowest CPU priority (`nice`), so the
/// guests keep the CPU they need and the build takes what they leave (BENCHMARKS.md has the
/// phases), and boots its guests when the amd64 guests are done.
fn kernel_matrix(root: &Path, assets: &Path, guests: &[Guests]) -> anyhow::Result<Vec<String>> {
    // This machine's test binaries first, before any other build holds cargo's locks.
    let native: Vec<anyhow::Result<Vec<(String, PathBuf)>>> = guests
        .iter()
        .map(|g| {
            if g.daemon.is_some() {
                step(&format!(
                    "building the {} test binaries the kernel matrix runs",
                    g.arch.name()
                ));
                test_binaries(g.arch, g.release, false)
            } else {
                Ok(Vec::new())
            }
        })
        .collect();
    // One architecture's guests at a time: all five at once on CI's two cores stretched an
    // x264 frame past the latency bound, a UDP receiver past its socket's buffer and a static
    // build's file past the tests' linger (CI failed so). Each part's guests wait for the
    // previous part to end, however it ends: its thread drops its sender then, a panic
    // included, and `recv` returns.
    let mut previous: Option<std::sync::mpsc::Receiver<()>> = None;
    let turns: Vec<_> = guests
        .iter()
        .map(|_| {
            let (done, next) = std::sync::mpsc::channel::<()>();
            (previous.replace(next), done)
        })
        .collect();
    let results: Vec<GuestRun> = std::thread::scope(|scope| {
        let parts: Vec<_> = guests
            .iter()
            .zip(native)
            .zip(turns)
            .map(|((g, binaries), (after, done))| {
                scope.spawn(move || {
                    let part = guest_part(root, assets, g, binaries, after);
                    drop(done);
                    part
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("an architecture's thread"))
            .collect()
    });
    let mut failed = Vec::new();
    let (mut passed_all, mut failed_all) = (0, 0);
    for (kernel, outcomes, seconds, n) in results {
        let outcomes = match outcomes {
            Ok(o) => o,
            Err(e) => {
                eprintln!("\n    {kernel}: {e:#}");
                failed_all += n;
                failed.push(kernel);
                continue;
            }
        };
        eprintln!("\n    {kernel} ({seconds:.0} s in all):");
        for o in &outcomes {
            eprintln!(
                "    {} {} ({:.0} s){}",
                if o.passed { "ok    " } else { "FAILED" },
                o.test,
                o.seconds,
                if o.passed {
                    String::new()
                } else {
                    format!(": {}", o.log.display())
                }
            );
        }
        let bad = outcomes.iter().filter(|o| !o.passed).count();
        passed_all += outcomes.len() - bad;
        failed_all += bad;
        if bad > 0 {
            failed.push(kernel);
        }
    }
    // The plain closing line CI reads, for the matrix as a whole.
    println!("kernel matrix: {passed_all} passed, {failed_all} failed");
    Ok(failed)
}

/// One architecture's part of the matrix: its builds where needed, its kernels, then (once
/// `after` ends, if given: the previous part's guests are done) its guests at once. Every
/// failure is reported per guest, never lost.
fn guest_part(
    root: &Path,
    assets: &Path,
    g: &Guests,
    native: anyhow::Result<Vec<(String, PathBuf)>>,
    after: Option<std::sync::mpsc::Receiver<()>>,
) -> Vec<GuestRun> {
    let name = |suite: &str| format!("Debian {suite}'s {} kernel", g.arch.name());
    let wanted = g.arch.guest_tests();
    let n = wanted.len();
    let failed = |e: &anyhow::Error| -> Vec<GuestRun> {
        g.suites
            .iter()
            .map(|s| (name(s), Err(anyhow::anyhow!("{e:#}")), 0.0, n))
            .collect()
    };
    let built = (|| -> anyhow::Result<(PathBuf, Vec<(PathBuf, &'static str)>)> {
        let (daemon, binaries) = match &g.daemon {
            Some(d) => (d.clone(), native?),
            None => {
                step(&format!(
                    "cross-building the {} daemon and test binaries (at low priority, beside \
                     the other guests)",
                    g.arch.name()
                ));
                let daemon = build_daemon_for(g.arch, g.release, true)?;
                (daemon, test_binaries(g.arch, g.release, true)?)
            }
        };
        let tests = wanted
            .iter()
            .map(|(binary, test)| {
                binaries
                    .iter()
                    .find(|(b, _)| b == binary)
                    .map(|(_, path)| (path.clone(), *test))
                    .with_context(|| format!("no test binary {binary}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok((daemon, tests))
    })();
    let (daemon, tests) = match built {
        Ok(b) => b,
        Err(e) => return failed(&e),
    };
    let env = [
        ("OBSERVER_BIN", daemon.display().to_string()),
        ("OBSERVER_TEST_ASSETS", g.assets.display().to_string()),
        // Several emulated CPUs on two cores stretch the tests' waits: a debug daemon took
        // 25-35 s to start there (the kernel's verifier), a receiver decoding at debug level
        // longer than 30 s to finish.
        ("OBSERVER_TEST_PATIENCE", "4".to_string()),
    ];
    let kernels: Vec<anyhow::Result<vm::Kernel>> = g
        .suites
        .iter()
        .map(|suite| vm::kernel(assets, suite, g.arch))
        .collect();
    if let Some(previous) = after {
        // Nothing is ever sent: this returns when the previous part's thread ends.
        let _ = previous.recv();
    }
    // The guests of one architecture boot at once: the three amd64 guests on CI's two cores
    // took 7 to 8 minutes each (9 to 13 with the niced arm64 build beside), where one
    // alone took 4 to 6.
    std::thread::scope(|scope| {
        let handles: Vec<_> = g
            .suites
            .iter()
            .zip(&kernels)
            .map(|(suite, kernel)| {
                let (tests, env) = (&tests, &env);
                scope.spawn(move || {
                    let kernel = match kernel {
                        Ok(k) => k,
                        Err(e) => return (name(suite), Err(anyhow::anyhow!("{e:#}")), 0.0, n),
                    };
                    let work = root.join("target").join("vm").join(match g.arch {
                        vm::Arch::Amd64 => kernel.suite.clone(),
                        a => format!("{}-{}", kernel.suite, a.name()),
                    });
                    let t0 = std::time::Instant::now();
                    let outcomes = vm::run_tests(kernel, &g.root, tests, env, root, &work);
                    (
                        format!("{} {}", name(suite), kernel.release),
                        outcomes,
                        t0.elapsed().as_secs_f64(),
                        n,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a guest's thread"))
            .collect()
    })
}

/// The integration test binaries by name, built for `arch` (`cargo test --no-run`).
/// `low_priority`: under `nice`, so that what runs beside takes the CPU first.
fn test_binaries(
    arch: vm::Arch,
    release: bool,
    low_priority: bool,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo_command(low_priority);
    cmd.args([
        "test",
        "--no-run",
        "--package",
        "observer-tests",
        "--message-format=json",
    ]);
    if arch != vm::Arch::native() {
        // Only what the guests run: each test binary links the whole daemon, slow to link
        // in release.
        let mut names: Vec<&str> = arch.guest_tests().iter().map(|(b, _)| *b).collect();
        names.sort();
        names.dedup();
        for n in names {
            cmd.args(["--test", n]);
        }
    }
    if release {
        cmd.arg("--release");
    }
    cross(&mut cmd, arch);
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = m["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            m["target"]["name"].as_str(),
            m["executable"].as_str(),
        ) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(found)
}

/// `cargo deny` with deny.toml: licenses, bans and sources always; advisories when the
/// RustSec database can be fetched (it lives on GitHub, which some build machines cannot
/// reach: then the run says so, loudly, rather than pass in silence).
fn check_dependencies() -> anyhow::Result<()> {
    step("checking the dependencies' licenses, bans and sources (cargo deny, deny.toml)");
    let deny = |args: &[&str]| {
        Command::new(cargo())
            .arg("deny")
            .args(args)
            .status()
            .context("running cargo deny")
    };
    if !deny(&["check", "licenses", "bans", "sources"])?.success() {
        bail!("cargo deny check failed (see above; the policy is deny.toml)");
    }
    step("fetching the RustSec advisory database");
    if deny(&["fetch", "db"])?.success() {
        step("checking the dependencies against RustSec advisories");
        if !deny(&["--offline", "check", "advisories"])?.success() {
            bail!("a dependency has a RustSec advisory (see above; deny.toml says what to do)");
        }
    } else {
        eprintln!(
            "\n    WARNING: dependencies NOT checked against RustSec advisories: the database \
             (github.com/RustSec/advisory-db) cannot be fetched from this machine.\n"
        );
    }
    Ok(())
}

pub fn step(what: &str) {
    eprintln!("==> {what}");
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// cargo, at the lowest CPU priority if `low_priority` (`nice -n 19`).
fn cargo_command(low_priority: bool) -> Command {
    if low_priority {
        let mut c = Command::new("nice");
        c.args(["-n", "19"]).arg(cargo());
        c
    } else {
        Command::new(cargo())
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Builds the daemon for this machine (its build script builds the kernel programs) and
/// returns its path.
fn build_daemon(release: bool) -> anyhow::Result<PathBuf> {
    build_daemon_for(vm::Arch::native(), release, false)
}

/// Builds the daemon for `arch` and returns its path: this machine's where it always was
/// (`target/release`), another architecture's under its target triple, cross-built with the
/// toolchain `setup::cross_deps` installs. aya-build builds the kernel programs for the same
/// architecture (`bpf_target_arch`), so they read its registers. `low_priority`: under `nice`.
fn build_daemon_for(arch: vm::Arch, release: bool, low_priority: bool) -> anyhow::Result<PathBuf> {
    if arch != vm::Arch::native() {
        setup::cross_deps(arch)?;
    }
    let profile = if release { "release" } else { "debug" };
    step(&format!(
        "building the daemon for {} ({profile})",
        arch.name()
    ));
    let mut cmd = cargo_command(low_priority);
    cmd.args(["build", "--package", "observer", "--bin", "observer"]);
    if release {
        cmd.arg("--release");
    }
    cross(&mut cmd, arch);
    if !cmd.status().context("running cargo build")?.success() {
        bail!("building the daemon failed (see the errors above)");
    }
    let target = workspace_root().join("target");
    Ok(if arch == vm::Arch::native() {
        target.join(profile).join("observer")
    } else {
        target.join(arch.triple()).join(profile).join("observer")
    })
}

/// Makes a cargo command build for `arch`: this machine's as always, another with Debian's
/// cross linker and C compiler (for whatever builds C).
fn cross(cmd: &mut Command, arch: vm::Arch) {
    if arch == vm::Arch::native() {
        return;
    }
    let triple = arch.triple();
    let env = triple.replace('-', "_");
    let gcc = format!("{}-gcc", arch.gnu_prefix());
    cmd.arg("--target").arg(triple);
    cmd.env(format!("CARGO_TARGET_{}_LINKER", env.to_uppercase()), &gcc)
        .env(format!("CC_{env}"), &gcc)
        .env(format!("AR_{env}"), format!("{}-ar", arch.gnu_prefix()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_arch_select_the_host_and_the_guests() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let both = [vm::Arch::Amd64, vm::Arch::Arm64];
        assert_eq!(selected(&k(&[]), &both), (true, true));
        assert_eq!(selected(&k(&["host"]), &both), (true, false));
        assert_eq!(
            selected(&k(&["bookworm"]), &[vm::Arch::Arm64]),
            (false, true)
        );
        assert_eq!(selected(&k(&[]), &[vm::Arch::Arm64]), (false, true));
        // arm64 has no 5.10 guest and no host: nothing, which the command refuses.
        assert_eq!(
            selected(&k(&["bullseye"]), &[vm::Arch::Arm64]),
            (false, false)
        );
        assert_eq!(selected(&k(&["host"]), &[vm::Arch::Arm64]), (false, false));
    }
}
