//! `--device` through the `sd` binary on a machine where wgpu finds no adapter (the Vulkan
//! loader pointed at a driver list that does not exist, and wgpu held to Vulkan): `auto` makes
//! a judged image on the CPU and says so once with the remedy, `gpu` fails once with the remedy,
//! and `cpu` runs without touching wgpu. Also: no stray `XDG_RUNTIME_DIR` warning.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::judge::{Judged, judge_png};
use support::output_text;

const PROMPT: &str = "a green digit four on a white background";

/// `sd generate` with no GPU driver visible, `SD_DEVICE` and `XDG_RUNTIME_DIR` unset.
fn sd_without_gpu(out: &Path, device: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sd"));
    command
        .args([
            "generate", "--prompt", PROMPT, "--seed", "84671", "--steps", "20",
        ])
        .args(["--guidance", "5", "--out"])
        .arg(out)
        .env("VK_ICD_FILENAMES", "/nonexistent")
        .env("VK_DRIVER_FILES", "/nonexistent")
        .env("WGPU_BACKEND", "vulkan")
        .env_remove("SD_DEVICE")
        .env_remove("SD_EXPECT_BACKEND")
        .env_remove("XDG_RUNTIME_DIR");
    if let Some(device) = device {
        command.args(["--device", device]);
    }
    command.output().expect("run sd")
}

#[test]
fn auto_falls_back_to_the_cpu_and_says_so_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("auto.png");
    let output = sd_without_gpu(&out, None);
    let text = output_text(&output);
    println!("{text}");
    assert!(output.status.success(), "sd generate failed:\n{text}");
    assert_eq!(
        text.matches("running on the CPU").count(),
        1,
        "the CPU note, once: {text}"
    );
    assert!(text.contains("mesa-vulkan-drivers"), "the remedy: {text}");
    assert!(
        !text.contains("XDG_RUNTIME_DIR"),
        "no runtime-dir warning: {text}"
    );
    assert!(
        !text.contains("error"),
        "nothing reads as a failure: {text}"
    );
    let judged = judge_png(&out);
    assert_eq!(
        judged,
        Judged {
            digit: 4,
            fg: "green",
            bg: "white"
        },
        "{PROMPT}"
    );
}

#[test]
fn gpu_without_an_adapter_fails_once_with_the_remedy() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("gpu.png");
    let output = sd_without_gpu(&out, Some("gpu"));
    let text = output_text(&output);
    println!("{text}");
    assert!(!output.status.success(), "no adapter must fail: {text}");
    assert_eq!(
        text.matches("no GPU adapter found").count(),
        1,
        "said once: {text}"
    );
    for part in ["--device gpu", "mesa-vulkan-drivers", "--device cpu"] {
        assert!(text.contains(part), "the message names {part:?}: {text}");
    }
    assert!(!out.exists(), "no image without a device");
}

#[test]
fn cpu_never_needs_an_adapter() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("cpu.png");
    let output = sd_without_gpu(&out, Some("cpu"));
    let text = output_text(&output);
    assert!(output.status.success(), "--device cpu failed:\n{text}");
    assert!(
        !text.contains("running on the CPU"),
        "asked for, so no note: {text}"
    );
    assert_eq!(judge_png(&out).digit, 4, "{text}");
}

#[test]
fn an_unknown_device_is_refused_naming_the_option() {
    let output = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["generate", "--device", "tpu"])
        .output()
        .expect("run sd");
    let text = output_text(&output);
    assert!(!output.status.success());
    assert!(
        text.contains("--device") && text.contains("auto, gpu or cpu"),
        "{text}"
    );
}
