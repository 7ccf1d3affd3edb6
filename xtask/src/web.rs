//! The browser side's tasks: the web model (`convert`), the demo server (`serve`), the web
//! benchmark (`bench web`) and what the browser tests need installed.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::{stage, target_dir, wasm};

/// The embedded default model and where its web form goes (the demo's `/models/digits/`).
fn default_paths(root: &Path) -> (PathBuf, PathBuf) {
    (
        root.join("crates/sd/model"),
        target_dir(root).join("web-models/digits"),
    )
}

fn newest_mtime(path: &Path) -> Result<SystemTime> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let mut newest = meta.modified()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            newest = newest.max(newest_mtime(&entry?.path())?);
        }
    }
    Ok(newest)
}

/// `sd convert --web SRC DST [EXTRA...]`, with the `sd` binary `sd` when given (the tests'
/// build of it), else through `cargo run`.
pub fn convert_with(
    sh: &Shell,
    sd: Option<&Path>,
    src: &str,
    dst: &str,
    extra: &[&str],
) -> Result<()> {
    stage(&format!("convert {src} to the web format in {dst}"), || {
        let command = match sd {
            Some(sd) => cmd!(sh, "{sd} convert --web {src} {dst} {extra...}"),
            None => cmd!(
                sh,
                "cargo run --quiet -p sd-cli -- convert --web {src} {dst} {extra...}"
            ),
        };
        Ok(command.run()?)
    })
}

/// `sd convert --web SRC DST [EXTRA...]` through `cargo run`.
pub fn convert(sh: &Shell, src: &str, dst: &str, extra: &[&str]) -> Result<()> {
    convert_with(sh, None, src, dst, extra)
}

/// The embedded model to `target/web-models/digits`, unless that is newer than every source file.
pub fn convert_default(sh: &Shell, root: &Path) -> Result<()> {
    convert_default_with(sh, root, None)
}

/// [`convert_default`] with the `sd` binary `sd` when given.
pub fn convert_default_with(sh: &Shell, root: &Path, sd: Option<&Path>) -> Result<()> {
    let (src, dst) = default_paths(root);
    let manifest = dst.join("manifest.json");
    let fresh = match std::fs::metadata(&manifest).and_then(|m| m.modified()) {
        Ok(made) => made >= newest_mtime(&src)?,
        Err(_) => false,
    };
    if fresh {
        println!("web model up to date: {}", dst.display());
        return Ok(());
    }
    if dst.exists() {
        std::fs::remove_dir_all(&dst)
            .with_context(|| format!("cannot remove the stale {}", dst.display()))?;
    }
    let (src, dst) = (src.display().to_string(), dst.display().to_string());
    // The same name the browser test gives it (sd_weights::web::convert_to_web, "digits").
    convert_with(sh, sd, &src, &dst, &["--name", "digits"])
}

/// Installs the Node driver's dependencies if missing; fails with the install command when
/// Node.js or Chromium is missing.
pub fn browser_prerequisites(sh: &Shell, root: &Path) -> Result<()> {
    stage("browser test prerequisites", || {
        if cmd!(sh, "node --version").quiet().read().is_err() {
            bail!(
                "node is missing: install Node.js 20 or newer and npm (`apt-get install -y nodejs npm` where that is new enough)"
            );
        }
        let driver = root.join("tests/browser");
        if !driver.join("node_modules/playwright-core").is_dir() {
            println!(
                "installing the browser driver's packages (playwright-core, no browser download)"
            );
            cmd!(sh, "npm ci --prefix {driver}").run()?;
        }
        let chromium = std::env::var_os("CHROMIUM")
            .filter(|c| !c.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        if !chromium.is_file() {
            bail!(
                "{} is missing: run `apt-get install -y chromium` (or set CHROMIUM to a Chromium binary)",
                chromium.display()
            );
        }
        println!("chromium: {}", chromium.display());
        Ok(())
    })
}

/// `cargo xtask serve [--port N]`.
pub fn serve(sh: &Shell, root: &Path, args: &[&str]) -> Result<()> {
    wasm::build(sh, root)?;
    convert_default(sh, root)?;
    println!("==> serve the demo (Ctrl-C stops it)");
    cmd!(
        sh,
        "cargo run --quiet -p sd-tests --example serve_demo -- {args...}"
    )
    .run()?;
    Ok(())
}

/// `cargo xtask bench web [--reps N]`.
pub fn bench(sh: &Shell, root: &Path, args: &[&str]) -> Result<()> {
    wasm::build(sh, root)?;
    convert_default(sh, root)?;
    browser_prerequisites(sh, root)?;
    stage("bench web (release)", || {
        Ok(cmd!(
            sh,
            "cargo run --release --quiet -p sd-tests --example bench_web -- {args...}"
        )
        .run()?)
    })
}
