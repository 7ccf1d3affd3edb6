//! What the browser test and the web benchmark share: the repository's paths, the web model
//! they serve (the embedded digits model converted by `sd_weights::web::convert_to_web`), the
//! prerequisites with the command that installs each, and running the Node driver
//! `tests/browser/run.mjs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The repository root (the workspace folder).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("sd-tests lives in the workspace root")
        .to_path_buf()
}

/// Cargo's target folder: `CARGO_TARGET_DIR` when set, else `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// The npm package `cargo xtask build-wasm` writes.
pub fn npm_package_dir(root: &Path) -> PathBuf {
    target_dir(root).join("npm/sd-wgsl")
}

/// The embedded digits model in the web format (`manifest.json` + shards).
pub fn web_model_dir(root: &Path) -> PathBuf {
    target_dir(root).join("web-models/digits")
}

/// The embedded default model's diffusers folder.
pub fn embedded_model_dir(root: &Path) -> PathBuf {
    root.join("crates/sd/model")
}

/// The Node driver's folder (its `package.json`, `node_modules`, `run.mjs`).
pub fn driver_dir(root: &Path) -> PathBuf {
    root.join("tests/browser")
}

/// The Chromium the driver launches: `CHROMIUM` when set, else Debian's `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    match std::env::var_os("CHROMIUM") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from("/usr/bin/chromium"),
    }
}

fn newest_mtime(dir: &Path) -> std::io::Result<SystemTime> {
    let mut newest = std::fs::metadata(dir)?.modified()?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let time = if entry.file_type()?.is_dir() {
            newest_mtime(&entry.path())?
        } else {
            entry.metadata()?.modified()?
        };
        newest = newest.max(time);
    }
    Ok(newest)
}

/// Converts the embedded model to the web format in `web_model_dir` unless its `manifest.json`
/// is newer than every file of the source folder. Returns the folder.
pub fn ensure_web_model(root: &Path) -> Result<PathBuf, String> {
    let src = embedded_model_dir(root);
    let dst = web_model_dir(root);
    let manifest = dst.join("manifest.json");
    let source_time = newest_mtime(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    let fresh = std::fs::metadata(&manifest)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= source_time);
    if fresh {
        return Ok(dst);
    }
    if dst.exists() {
        std::fs::remove_dir_all(&dst)
            .map_err(|e| format!("cannot remove the stale {}: {e}", dst.display()))?;
    }
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    println!(
        "converting {} to the web format in {}",
        src.display(),
        dst.display()
    );
    sd_weights::web::convert_to_web(&src, &dst, Some("digits"))
        .map_err(|e| format!("cannot convert {} to {}: {e}", src.display(), dst.display()))?;
    Ok(dst)
}

/// Everything the driver needs besides the server, each with the command that provides it.
/// Returns one line per missing thing (empty: all there).
pub fn missing_prerequisites(root: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    let pkg = npm_package_dir(root);
    for file in ["index.js", "wasm/sd_web.js", "wasm/sd_web_bg.wasm"] {
        let path = pkg.join(file);
        if !path.is_file() {
            missing.push(format!(
                "{} is missing: run `cargo xtask build-wasm` first",
                path.display()
            ));
        }
    }
    let playwright = driver_dir(root).join("node_modules/playwright-core");
    if !playwright.is_dir() {
        missing.push(format!(
            "{} is missing: run `npm ci --prefix tests/browser`",
            playwright.display()
        ));
    }
    let chromium = chromium_path();
    if !chromium.is_file() {
        missing.push(format!(
            "{} is missing: run `apt-get install -y chromium` (or set CHROMIUM to a Chromium binary)",
            chromium.display()
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node is missing: install Node.js (20 or newer) and npm".to_string());
    }
    missing
}

/// Runs `node tests/browser/run.mjs --base <base> --out <out> --mode <mode> [extra...]` with
/// its output on this process's stdout and stderr. `Ok(true)` when it exited 0.
pub fn run_driver(
    root: &Path,
    base: &str,
    out: &Path,
    mode: &str,
    extra: &[String],
) -> Result<bool, String> {
    let script = driver_dir(root).join("run.mjs");
    let status = Command::new("node")
        .arg(&script)
        .args(["--base", base, "--mode", mode])
        .arg("--out")
        .arg(out)
        .args(extra)
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run node {}: {e}", script.display()))?;
    Ok(status.success())
}
