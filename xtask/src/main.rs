//! `cargo xtask`: the project's commands, for a fresh machine as much as a developer's.
//!
//! - `cargo xtask run`: install what the build needs, build, start the daemon, and show a
//!   live per-stream table.
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
    /// ffmpeg processes (as root).
    Test {
        /// Arguments for `cargo test`, after `--` (e.g. `-- decode`).
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
        /// `spans`, `scrapers`, `scale`, `reaction`, `churn`, `soak`.
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
        Cmd::Run { debug, args } => {
            setup::require_root("the daemon loads kernel programs")?;
            setup::build_deps()?;
            let bin = build_daemon(!debug)?;
            table::run(&bin, &args)
        }
        Cmd::Test { args } => {
            setup::require_root("the tests load kernel programs")?;
            setup::build_deps()?;
            let assets = setup::test_deps(&root)?;
            let bin = build_daemon(false)?;
            setup::cargo_tool(
                "cargo-deny",
                CARGO_DENY_VERSION,
                None,
                "checks the dependencies' advisories, licenses and sources",
            )?;
            check_dependencies()?;
            step("running the tests");
            let status = Command::new(cargo())
                // Every test binary runs even after one fails: one flaky test must not hide
                // what the others would say.
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
                bail!("tests failed");
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

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Builds the daemon (its build script builds the kernel programs) and returns its path.
fn build_daemon(release: bool) -> anyhow::Result<PathBuf> {
    step(&format!(
        "building the daemon ({})",
        if release { "release" } else { "debug" }
    ));
    let mut cmd = Command::new(cargo());
    cmd.args(["build", "--package", "observer", "--bin", "observer"]);
    if release {
        cmd.arg("--release");
    }
    if !cmd.status().context("running cargo build")?.success() {
        bail!("building the daemon failed (see the errors above)");
    }
    Ok(workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("observer"))
}
