//! The npm tarball as a user installs it before the package is on the registry: `cargo xtask
//! pack` writes `target/npm/sd-wgsl-<version>.tgz`; this installs it into a scratch project with
//! `npm install ./sd-wgsl-<version>.tgz` (no registry: the package has no dependencies) and
//! imports it in Node.js, checking the public API and that the wasm module and its glue are in
//! the installed package.
//!
//! Needs `cargo xtask pack` (which `cargo xtask test` runs) and Node.js with npm.

use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_packed_tarball_installs_and_imports() {
    let npm_dir = target_dir().join("npm");
    let version = env!("CARGO_PKG_VERSION");
    let tarball = npm_dir.join(format!("sd-wgsl-{version}.tgz"));
    assert!(
        tarball.is_file(),
        "{} is missing: run `cargo xtask pack` first",
        tarball.display()
    );
    let project = tempfile::tempdir().expect("scratch project");
    std::fs::write(
        project.path().join("package.json"),
        r#"{"name": "scratch", "version": "1.0.0", "private": true, "type": "module"}"#,
    )
    .expect("package.json");
    let local = project
        .path()
        .join(tarball.file_name().expect("a file name"));
    std::fs::copy(&tarball, &local).expect("copy the tarball");
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--offline",
            &format!("./{}", local.file_name().expect("name").to_string_lossy()),
        ])
        .current_dir(project.path()));

    let installed = project.path().join("node_modules/sd-wgsl");
    for file in [
        "package.json",
        "index.js",
        "index.d.ts",
        "worker.js",
        "README.md",
        "wasm/sd_web.js",
        "wasm/sd_web_bg.wasm",
    ] {
        assert!(
            installed.join(file).is_file(),
            "the installed package lacks {file}"
        );
    }
    // Node has no WebGPU: the API must import cleanly and say so without throwing.
    let script = r#"
import * as sd from "sd-wgsl";
const names = Object.keys(sd).sort();
const webgpu = await sd.isWebGPUAvailable();
console.log(JSON.stringify({ names, webgpu, sdError: typeof sd.SdError, load: typeof sd.StableDiffusion?.load }));
"#;
    let out = run(Command::new("node")
        .args(["--input-type=module", "-e", script])
        .current_dir(project.path()));
    let line = out.lines().last().unwrap_or_default();
    let report: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("node printed {out:?}: {e}"));
    println!("imported: {report}");
    assert_eq!(report["webgpu"], false, "Node.js has no WebGPU");
    assert_eq!(report["sdError"], "function");
    assert_eq!(report["load"], "function", "StableDiffusion.load");
    let names: Vec<&str> = report["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for name in [
        "StableDiffusion",
        "SdError",
        "isWebGPUAvailable",
        "listCachedModels",
    ] {
        assert!(
            names.contains(&name),
            "the package exports {name}: {names:?}"
        );
    }
}
