//! What `cargo xtask test` needs on a fresh machine, installed in one place: the system
//! packages (a Vulkan driver, Chromium with its GL libraries, Node.js and npm) through apt on
//! Debian or Ubuntu as root, and the wasm32 target through rustup. Each step is timed. Not
//! root, or not Debian/Ubuntu: it stops at once with the exact command to run. (wasm-bindgen-cli
//! is installed by `build-wasm` at the Cargo.lock version, and the browser driver by
//! `browser_prerequisites`.)

use std::path::Path;

use anyhow::{Result, bail};
use xshell::{Shell, cmd};

use crate::stage;

/// A system package the tests need and how to tell it is there.
struct Need {
    packages: &'static [&'static str],
    why: &'static str,
    present: fn() -> bool,
}

fn has_command(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

fn dpkg_installed(package: &str) -> bool {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

const NEEDS: &[Need] = &[
    Need {
        packages: &["mesa-vulkan-drivers", "libvulkan1"],
        why: "a Vulkan driver (lavapipe without a GPU) for the WGSL tests",
        present: || dpkg_installed("mesa-vulkan-drivers") && dpkg_installed("libvulkan1"),
    },
    Need {
        packages: &["chromium", "libgl1-mesa-dri", "libegl1", "libgbm1"],
        why: "headless Chromium (WebGPU on SwiftShader) for the browser tests",
        present: || Path::new("/usr/bin/chromium").is_file(),
    },
    Need {
        packages: &["nodejs"],
        why: "Node.js to drive Chromium",
        present: || has_command("node"),
    },
    Need {
        packages: &["npm"],
        why: "npm for the browser driver and the package test",
        present: || has_command("npm"),
    },
];

fn is_root(sh: &Shell) -> bool {
    cmd!(sh, "id -u")
        .quiet()
        .read()
        .is_ok_and(|uid| uid.trim() == "0")
}

/// Installs what is missing, or fails with the command that would.
pub fn ensure(sh: &Shell) -> Result<()> {
    stage("set-up: system packages", || {
        let missing: Vec<&Need> = NEEDS.iter().filter(|n| !(n.present)()).collect();
        if missing.is_empty() {
            println!("all present: Vulkan driver, Chromium, Node.js, npm");
            return Ok(());
        }
        let packages: Vec<&str> = missing.iter().flat_map(|n| n.packages).copied().collect();
        for need in &missing {
            println!("missing: {} ({})", need.packages.join(" "), need.why);
        }
        let install = format!("apt-get install -y {}", packages.join(" "));
        let debian = Path::new("/etc/debian_version").is_file() && has_command("apt-get");
        if !debian {
            bail!(
                "install these with your system's package manager, then run `cargo xtask test` \
                 again: {} (on Debian or Ubuntu: `{install}`)",
                packages.join(", ")
            );
        }
        if !is_root(sh) {
            bail!(
                "run as root (or with sudo): `apt-get update && {install}`, then `cargo xtask test` again"
            );
        }
        let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
        stage("apt-get update", || {
            Ok(cmd!(sh, "apt-get update -qq").run()?)
        })?;
        stage(&format!("apt-get install {}", packages.join(" ")), || {
            Ok(cmd!(sh, "apt-get install -y -qq {packages...}").run()?)
        })
    })?;
    stage("set-up: wasm32 target", || {
        let installed = cmd!(sh, "rustup target list --installed").quiet().read()?;
        if installed
            .lines()
            .any(|t| t.trim() == "wasm32-unknown-unknown")
        {
            println!("wasm32-unknown-unknown: installed");
            return Ok(());
        }
        Ok(cmd!(sh, "rustup target add wasm32-unknown-unknown").run()?)
    })
}
