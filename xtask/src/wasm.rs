//! `cargo xtask build-wasm`: the npm package `sd-wgsl` in `target/npm/sd-wgsl/`.
//!
//! 1. wasm-bindgen-cli at exactly the version of the `wasm-bindgen` crate in Cargo.lock (the
//!    generated glue must match the crate), installed with `cargo install` when missing or
//!    different;
//! 2. `sd-web` for wasm32-unknown-unknown in release, twice: the WebGPU module and, with the
//!    `cpu` feature, the CPU module (candle) for browsers without WebGPU;
//! 3. `wasm-bindgen --target web` of each into `wasm/` (`sd_web.js`, `sd_web_bg.wasm`, and
//!    `sd_web_cpu.js`, `sd_web_cpu_bg.wasm`);
//! 4. the hand-written package files of `crates/web/js/` beside it.
//!
//! No wasm-opt: Debian's binaryen (108) breaks wasm-bindgen's externref table (the module then
//! fails to load with "WebAssembly.Table.set(): Argument 1 is invalid"); see
//! shared/notes/browser.md.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::{stage, target_dir};

/// The package folder.
pub fn package_dir(root: &Path) -> PathBuf {
    target_dir(root).join("npm/sd-wgsl")
}

pub fn build(sh: &Shell, root: &Path) -> Result<()> {
    let version = locked_wasm_bindgen(root)?;
    let bindgen = stage(&format!("wasm-bindgen-cli {version}"), || {
        ensure_wasm_bindgen(sh, &version)
    })?;
    let pkg = package_dir(root);
    let out = pkg.join("wasm");
    if pkg.exists() {
        // Stale files of an earlier build must not be served.
        std::fs::remove_dir_all(&pkg)
            .with_context(|| format!("cannot remove {}", pkg.display()))?;
    }
    // The WebGPU module, then the CPU module (the same crate with `cpu`: candle's networks),
    // which the package fetches only where WebGPU is missing. The dependencies of both feature
    // sets stay built side by side; only the sd-web crate itself is compiled again.
    for (features, name) in [(None, "sd_web"), (Some("cpu"), "sd_web_cpu")] {
        let feature_args: Vec<&str> = features.map(|f| vec!["--features", f]).unwrap_or_default();
        stage(
            &format!("build {name} for wasm32-unknown-unknown (release)"),
            || {
                Ok(cmd!(
                sh,
                "cargo build --quiet --release --target wasm32-unknown-unknown -p sd-web {feature_args...}"
            )
            .run()?)
            },
        )?;
        let input = target_dir(root).join("wasm32-unknown-unknown/release/sd_web.wasm");
        stage(&format!("wasm-bindgen --target web ({name})"), || {
            Ok(cmd!(
                sh,
                "{bindgen} --target web --out-dir {out} --out-name {name} {input}"
            )
            .run()?)
        })?;
    }
    stage("package files", || {
        let js = root.join("crates/web/js");
        if !js.is_dir() {
            bail!("{} is missing: the package's JavaScript", js.display());
        }
        copy_dir(&js, &pkg)?;
        // The licences the package declares, shipped in it.
        for licence in ["LICENSE-MIT", "LICENSE-APACHE"] {
            std::fs::copy(root.join(licence), pkg.join(licence))
                .with_context(|| format!("cannot copy {licence} into the package"))?;
        }
        Ok(())
    })?;
    for name in ["sd_web_bg.wasm", "sd_web_cpu_bg.wasm"] {
        let wasm = out.join(name);
        let size = std::fs::metadata(&wasm)
            .with_context(|| format!("wasm-bindgen wrote no {}", wasm.display()))?
            .len();
        println!(
            "npm package: {} ({name}: {size} bytes, {:.2} MiB)",
            pkg.display(),
            size as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
/// `cargo xtask pack`: the package built, then `npm pack` of it into `target/npm/`; returns the
/// tarball's path (`target/npm/sd-wgsl-<version>.tgz`, which the package test installs).
pub fn pack(sh: &Shell, root: &Path) -> Result<PathBuf> {
    build(sh, root)?;
    let pkg = package_dir(root);
    let dest = target_dir(root).join("npm");
    stage("npm pack", || {
        let name = cmd!(sh, "npm pack --silent --pack-destination {dest} {pkg}")
            .read()
            .context("npm pack (is npm installed?)")?;
        let tarball = dest.join(name.lines().last().unwrap_or_default().trim());
        if !tarball.is_file() {
            bail!("npm pack wrote no {}", tarball.display());
        }
        println!("npm tarball: {}", tarball.display());
        Ok(tarball)
    })
}

/// The version of the `wasm-bindgen` crate in Cargo.lock.
fn locked_wasm_bindgen(root: &Path) -> Result<String> {
    let lock = root.join("Cargo.lock");
    let text = std::fs::read_to_string(&lock)
        .with_context(|| format!("cannot read {}", lock.display()))?;
    let versions: Vec<&str> = text
        .split("[[package]]")
        .filter(|block| block.lines().any(|l| l.trim() == "name = \"wasm-bindgen\""))
        .filter_map(|block| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix("version = "))
                .map(|v| v.trim_matches('"'))
        })
        .collect();
    match versions.as_slice() {
        [version] => Ok(version.to_string()),
        [] => bail!("{} has no wasm-bindgen crate", lock.display()),
        many => bail!(
            "{} has several wasm-bindgen versions ({}); wasm-bindgen-cli must match exactly one",
            lock.display(),
            many.join(", ")
        ),
    }
}

/// The installed wasm-bindgen's version, if it runs.
fn installed_version(sh: &Shell, binary: &Path) -> Option<String> {
    let out = cmd!(sh, "{binary} --version")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    // "wasm-bindgen 0.2.130"
    out.split_whitespace().nth(1).map(str::to_string)
}

/// `wasm-bindgen` on PATH, else where `cargo install` puts it.
fn candidates() -> Vec<PathBuf> {
    let mut list = vec![PathBuf::from("wasm-bindgen")];
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        list.push(home.join("bin/wasm-bindgen"));
    }
    list
}

/// Returns a wasm-bindgen binary of exactly `version`, installing it if needed.
fn ensure_wasm_bindgen(sh: &Shell, version: &str) -> Result<PathBuf> {
    let find = || {
        candidates()
            .into_iter()
            .map(|bin| {
                let found = installed_version(sh, &bin);
                (bin, found)
            })
            .collect::<Vec<_>>()
    };
    let found = find();
    if let Some((bin, _)) = found.iter().find(|(_, v)| v.as_deref() == Some(version)) {
        println!("wasm-bindgen {version}: {}", bin.display());
        return Ok(bin.clone());
    }
    match found.iter().find_map(|(_, v)| v.clone()) {
        Some(other) => println!(
            "wasm-bindgen {other} is installed, but Cargo.lock has the wasm-bindgen crate at {version}: \
             installing wasm-bindgen-cli {version} (a few minutes)"
        ),
        None => println!(
            "wasm-bindgen is not installed: installing wasm-bindgen-cli {version}, the version of \
             the wasm-bindgen crate in Cargo.lock (a few minutes)"
        ),
    }
    // A bare version is an exact requirement for `cargo install`.
    cmd!(sh, "cargo install wasm-bindgen-cli --version {version}").run()?;
    find()
        .into_iter()
        .find(|(_, v)| v.as_deref() == Some(version))
        .map(|(bin, _)| bin)
        .with_context(|| {
            format!("wasm-bindgen {version} is still not found after `cargo install` (is ~/.cargo/bin on PATH?)")
        })
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let dst = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dst)?;
        } else {
            std::fs::copy(entry.path(), &dst).with_context(|| {
                format!(
                    "cannot copy {} to {}",
                    entry.path().display(),
                    dst.display()
                )
            })?;
        }
    }
    Ok(())
}
