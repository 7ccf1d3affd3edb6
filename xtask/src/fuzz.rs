//! `cargo xtask fuzz [--seconds N] [TARGET...]`: the cargo-fuzz targets of `fuzz/` (libFuzzer
//! on a pinned nightly), each for N seconds (default 30, what `cargo xtask test` runs), from
//! the committed seeds (`fuzz/seeds/<target>/`) and the corpus earlier runs grew
//! (`<target dir>/fuzz-corpus/<target>/`). Installs the nightly toolchain and cargo-fuzz if
//! missing. A crash fails the run and leaves its input under `fuzz/artifacts/<target>/`: turn
//! it into a regression test beside the code it broke.
//!
//! Built without a sanitizer (`-s none`): the crates under test have no `unsafe` code, so
//! AddressSanitizer would find nothing that the Rust checks (bounds, overflow with debug
//! assertions, which cargo-fuzz turns on) do not, at twice the time. What the fuzzers look for
//! is a panic, an allocation over libFuzzer's RSS limit, or an input slower than its timeout.

use std::path::Path;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::{stage, target_dir};

/// The nightly cargo-fuzz builds with, pinned so that a new nightly cannot break CI.
const NIGHTLY: &str = "nightly-2026-10-30";
/// cargo-fuzz, pinned.
const CARGO_FUZZ: &str = "cargo-fuzz@0.13.2";
/// Every target of `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 7] = [
    "safetensors",
    "single_file",
    "web_manifest",
    "configs",
    "requests",
    "multipart",
    "images",
];

/// `cargo xtask fuzz [--seconds N] [TARGET...]`.
pub fn command(sh: &Shell, root: &Path, args: &[&str]) -> Result<()> {
    let mut seconds = 30u64;
    let mut targets = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match *arg {
            "--seconds" => {
                seconds = rest
                    .next()
                    .context("--seconds needs a value")?
                    .parse()
                    .context("--seconds: a whole number")?;
            }
            target if TARGETS.contains(&target) => targets.push(target),
            other => bail!(
                "unknown fuzz target or option {other}; the targets are {} (--seconds N)",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    run(sh, root, seconds, &targets)
}

/// Installs what is missing, builds every target once, then runs each for `seconds`.
pub fn run(sh: &Shell, root: &Path, seconds: u64, targets: &[&str]) -> Result<()> {
    stage("fuzz: toolchain and cargo-fuzz", || {
        let toolchains = cmd!(sh, "rustup toolchain list").quiet().read()?;
        if !toolchains.lines().any(|t| t.starts_with(NIGHTLY)) {
            cmd!(sh, "rustup toolchain install {NIGHTLY} --profile minimal").run()?;
        }
        if cmd!(sh, "cargo +{NIGHTLY} fuzz --version")
            .quiet()
            .ignore_stderr()
            .read()
            .is_err()
        {
            cmd!(sh, "cargo install --locked {CARGO_FUZZ}").run()?;
        }
        Ok(())
    })?;
    let build_dir = target_dir(root).join("fuzz");
    let _target = sh.push_env("CARGO_TARGET_DIR", &build_dir);
    stage("fuzz: build every target", || {
        Ok(cmd!(sh, "cargo +{NIGHTLY} fuzz build -s none").run()?)
    })?;
    let mut report = Vec::new();
    for target in targets {
        let corpus = target_dir(root).join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = root.join("fuzz/seeds").join(target);
        let time = format!("-max_total_time={seconds}");
        let out = stage(&format!("fuzz {target} for {seconds} s"), || {
            let output = cmd!(
                sh,
                "cargo +{NIGHTLY} fuzz run -s none {target} {corpus} {seeds} --
                 {time} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1"
            )
            .ignore_status()
            .output()?;
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            if !output.status.success() {
                eprintln!("{stderr}");
                bail!(
                    "the fuzzer found a failing input for {target}: see fuzz/artifacts/{target}/"
                );
            }
            Ok(stderr)
        })?;
        let stat = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map_or_else(|| "?".to_owned(), |v| v.trim().to_owned())
        };
        report.push(format!(
            "{target:<14} {:>12} runs  {:>9} exec/s  {:>6} new units",
            stat("number_of_executed_units"),
            stat("average_exec_per_sec"),
            stat("new_units_added"),
        ));
    }
    println!(
        "fuzz: {seconds} s each, no failing input\n{}",
        report.join("\n")
    );
    Ok(())
}
