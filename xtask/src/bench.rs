//! `cargo xtask bench sd15 [--against REV] [ARGS]`: SD 1.5 per op (`tests/examples/bench_sd15.rs`),
//! and with `--against`, another revision's build of the same benchmark in the same invocation,
//! so that a change is judged as a ratio measured on one machine, one after the other.
//!
//! The other revision is checked out as a git worktree under `target/bench-against/`, with
//! `shared/` linked beside it as in a clone, and built into a target folder of its own: in a
//! shared one both builds' example binaries are uplifted to the same path, and a build that is
//! already fresh does not copy its binary back, so `cargo run` would run the other revision's.
//! Both runs use the same random model folder. The revision must have the benchmark (it landed
//! with issue 17's first commit, 84ac947).

use std::path::Path;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::{stage, target_dir};

pub fn sd15(sh: &Shell, root: &Path, args: &[&str]) -> Result<()> {
    let target = target_dir(root);
    let model_dir = target.join("bench-sd15/model");
    let model_arg = model_dir.to_string_lossy().into_owned();
    let (against, rest) = match args {
        ["--against", rev, rest @ ..] => (Some(*rev), rest),
        rest => (None, rest),
    };
    if rest.contains(&"--against") {
        bail!("--against REV must come first");
    }
    if against.is_some()
        && let Some(flag) = rest.iter().find(|a| ["--json", "--baseline"].contains(a))
    {
        bail!(
            "{flag} cannot be given with --against, which writes both runs' JSON itself \
             (target/bench-sd15-<commit>.json and target/bench-sd15-this.json)"
        );
    }
    let Some(rev) = against else {
        return stage("bench sd15 (release)", || {
            Ok(cmd!(
                sh,
                "cargo run --release --quiet -p sd-tests --example bench_sd15 -- --model-dir {model_arg} {rest...}"
            )
            .run()?)
        });
    };

    let spec = format!("{rev}^{{commit}}");
    let commit = cmd!(sh, "git rev-parse --short {spec}")
        .read()
        .with_context(|| format!("{rev} is not a revision of this repository"))?;
    let worktrees = target.join("bench-against");
    let tree = worktrees.join(&commit);
    let shared = root.join("../shared");
    stage(&format!("worktree of {rev} ({commit})"), || {
        if !tree.exists() {
            std::fs::create_dir_all(&worktrees)?;
            cmd!(sh, "git worktree add --detach {tree} {commit}").run()?;
        }
        let link = worktrees.join("shared");
        if !link.exists() {
            symlink_dir(
                &shared.canonicalize().context("../shared (the fixtures)")?,
                &link,
            )?;
        }
        if !tree.join("tests/examples/bench_sd15.rs").exists() {
            bail!("{rev} has no tests/examples/bench_sd15.rs: it predates the benchmark");
        }
        Ok(())
    })?;
    let baseline = target.join(format!("bench-sd15-{commit}.json"));
    let baseline_arg = baseline.to_string_lossy().into_owned();
    stage(&format!("bench sd15 at {rev} (release)"), || {
        let _dir = sh.push_dir(&tree);
        let _target = sh.push_env("CARGO_TARGET_DIR", worktrees.join("target"));
        Ok(cmd!(
            sh,
            "cargo run --release --quiet -p sd-tests --example bench_sd15 -- --model-dir {model_arg} --json {baseline_arg} {rest...}"
        )
        .run()?)
    })?;
    let this = target.join("bench-sd15-this.json");
    let this_arg = this.to_string_lossy().into_owned();
    stage("bench sd15 at the working tree (release)", || {
        Ok(cmd!(
            sh,
            "cargo run --release --quiet -p sd-tests --example bench_sd15 -- --model-dir {model_arg} --json {this_arg} --baseline {baseline_arg} {rest...}"
        )
        .run()?)
    })
}

#[cfg(unix)]
fn symlink_dir(from: &Path, link: &Path) -> Result<()> {
    Ok(std::os::unix::fs::symlink(from, link)?)
}

#[cfg(not(unix))]
fn symlink_dir(from: &Path, link: &Path) -> Result<()> {
    Ok(std::os::windows::fs::symlink_dir(from, link)?)
}
