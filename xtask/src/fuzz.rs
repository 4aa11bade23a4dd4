//! `cargo xtask fuzz`: each `cargo fuzz` target of observer/fuzz for a bounded time, starting
//! from the committed corpus (observer/fuzz/corpus/TARGET), into which inputs that reach new
//! code are then merged, small, to be committed. A crash or a hang fails the run and leaves
//! the input in observer/fuzz/artifacts/TARGET/.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{setup, step};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run(root: &Path, seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    setup::cargo_tool(
        "cargo-fuzz",
        CARGO_FUZZ_VERSION,
        None,
        "runs the fuzz targets with libFuzzer",
    )?;
    let dir = root.join("observer/fuzz");
    let listed = fuzz(&dir, "list")
        .output()
        .context("running cargo fuzz list")?;
    let targets: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .filter(|t| only.is_none_or(|o| o.split(',').any(|x| x == *t)))
        .map(String::from)
        .collect();
    if targets.is_empty() {
        bail!("no fuzz target matches {only:?} (see observer/fuzz/Cargo.toml)");
    }
    for t in &targets {
        let corpus = dir.join("corpus").join(t);
        // What the fuzzer generates goes to a working corpus under target/, not the
        // committed one: it grows to megabytes.
        let work = root.join("target/fuzz/corpus").join(t);
        std::fs::create_dir_all(&work)?;
        step(&format!("fuzzing {t} for {seconds} s"));
        let status = fuzz(&dir, "run")
            .arg(t)
            .arg(&work)
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                // A hang is an input that takes a second: nothing here should take a
                // millisecond.
                "-timeout=1",
                "-rss_limit_mb=2048",
                "-max_len=65536",
                "-print_final_stats=1",
            ])
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzz target {t} found a crash or a hang: the input is in {}",
                dir.join("artifacts").join(t).display()
            );
        }
        // Into the committed corpus: only inputs that reach code it does not, cut to 1 KiB
        // (what is found past that is in the larger seeds already), so it stays small enough
        // to commit and for `cargo xtask test` to replay.
        let before = count(&corpus);
        step(&format!("merging new coverage into {}", corpus.display()));
        let status = fuzz(&dir, "run")
            .arg(t)
            .arg(&corpus)
            .arg(&work)
            .args(["--", "-merge=1", "-max_len=1024"])
            .status()?;
        if !status.success() {
            bail!("merging the {t} corpus failed");
        }
        eprintln!(
            "    {t}: {} new inputs in {} (commit them)",
            count(&corpus) - before,
            corpus.display()
        );
    }
    Ok(())
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// `cargo +nightly fuzz SUBCOMMAND --fuzz-dir observer/fuzz`.
fn fuzz(dir: &Path, subcommand: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", subcommand, "--fuzz-dir"])
        .arg(dir);
    cmd
}
