//! `--model` by name through the environment, as a user's shell sets it: `sd models` lists the
//! presets and the folders of `$DIFFUSION_MODELS_PATH` and `$MODELS_PATH`, and `sd generate
//! --model NAME` looks in the first, then the second, and refuses names that leave them; a hub
//! preset downloads from `$HF_ENDPOINT` into `$HF_HOME` (a stand-in hub here), once.

use sd_test_support::hub_mirror;
mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::output_text;

fn fixture_model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/tiny-sd-digits")
}

fn sd(args: &[&str], diffusion_models: Option<&Path>, models: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sd"));
    command
        .args(args)
        .env_remove("DIFFUSION_MODELS_PATH")
        .env_remove("MODELS_PATH");
    if let Some(dir) = diffusion_models {
        command.env("DIFFUSION_MODELS_PATH", dir);
    }
    if let Some(dir) = models {
        command.env("MODELS_PATH", dir);
    }
    command.output().expect("run sd")
}

#[test]
fn model_names_resolve_through_the_environment() {
    let first = tempfile::tempdir().expect("temp dir");
    let second = tempfile::tempdir().expect("temp dir");
    // `tiny` in the second folder is the real model; in the first, a broken one of the same
    // name (a model_index.json only), so which one was taken shows.
    std::os::unix::fs::symlink(fixture_model(), second.path().join("tiny")).expect("link");
    std::fs::create_dir(first.path().join("broken")).expect("folder");
    std::fs::write(first.path().join("broken/model_index.json"), "{}").expect("file");

    let listed = sd(&["models"], Some(first.path()), Some(second.path()));
    let listed = output_text(&listed);
    println!("{listed}");
    for want in ["digits", "preset", "broken", "tiny", "diffusers"] {
        assert!(listed.contains(want), "`sd models` lacks {want}:\n{listed}");
    }

    let out = first.path().join("out.png");
    let args = |model: &'static str| {
        vec![
            "generate",
            "--model",
            model,
            "--prompt",
            "a red digit seven on a blue background",
            "--steps",
            "2",
            "--seed",
            "1",
            "--out",
            out.to_str().expect("utf-8 path"),
            // What is resolved is the subject; the CPU backend generates ~20x faster here.
            "--device",
            "cpu",
        ]
    };
    // MODELS_PATH is the fallback when DIFFUSION_MODELS_PATH lacks the name.
    let run = sd(&args("tiny"), Some(first.path()), Some(second.path()));
    assert!(run.status.success(), "{}", output_text(&run));
    assert!(
        std::fs::read(&out)
            .expect("the PNG")
            .starts_with(b"\x89PNG")
    );

    // DIFFUSION_MODELS_PATH comes first: its broken `broken` is what loads (and fails).
    std::fs::create_dir(second.path().join("broken")).expect("folder");
    let run = sd(&args("broken"), Some(first.path()), Some(second.path()));
    let message = output_text(&run);
    assert!(!run.status.success());
    assert!(
        message.contains(&first.path().join("broken").display().to_string()),
        "{message}"
    );

    let run = sd(&args("nowhere"), Some(first.path()), None);
    let message = output_text(&run);
    assert!(!run.status.success());
    for want in ["--model nowhere", "not found", "$MODELS_PATH (not set)"] {
        assert!(message.contains(want), "{message} lacks {want}");
    }

    let run = sd(&args("../escape"), Some(first.path()), Some(second.path()));
    let message = output_text(&run);
    assert!(!run.status.success());
    assert!(
        message.contains("may not leave the models folder"),
        "{message}"
    );
}

/// `sd` with the hub settings of `hub` (`HF_ENDPOINT`, `HF_HOME`, `HF_HUB_OFFLINE`) only.
fn sd_hub(args: &[&str], hub: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sd"));
    command.args(args);
    for var in [
        "DIFFUSION_MODELS_PATH",
        "MODELS_PATH",
        "HF_ENDPOINT",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
    ] {
        command.env_remove(var);
    }
    command.envs(hub.iter().copied());
    command.output().expect("run sd")
}

/// The line of `sd models` for `name`.
fn listed_line(listing: &str, name: &str) -> String {
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("`sd models` lacks {name}:\n{listing}"))
        .to_string()
}

#[test]
fn a_preset_downloads_from_the_hub_once_and_shows_as_downloaded() {
    let mirror = hub_mirror::Mirror::serve(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        &fixture_model(),
    );
    let home = tempfile::tempdir().expect("temp dir");
    let home_path = home.path().to_str().expect("utf-8 path");
    let hub = [("HF_ENDPOINT", mirror.url.as_str()), ("HF_HOME", home_path)];

    let listing = output_text(&sd_hub(&["models", "list"], &hub));
    println!("{listing}");
    assert!(listed_line(&listing, "sd15").contains("not downloaded"));
    assert!(listed_line(&listing, "digits").contains("built in"));
    assert!(listed_line(&listing, "sdxl-turbo").contains("stabilityai/sdxl-turbo"));

    // Offline with an empty cache: refused, naming the preset and a missing file.
    let out = home.path().join("seven.png");
    let args = [
        "generate",
        "--model",
        "sd15",
        "--prompt",
        "a red digit seven on a blue background",
        "--steps",
        "20",
        "--guidance",
        "5",
        "--seed",
        "7",
        "--out",
        out.to_str().expect("utf-8 path"),
        // The download and the cache are the subject; the CPU backend generates ~20x faster.
        "--device",
        "cpu",
    ];
    let offline = [hub[0], hub[1], ("HF_HUB_OFFLINE", "1")];
    let run = sd_hub(&args, &offline);
    let message = output_text(&run);
    assert!(!run.status.success());
    for want in [
        "--model sd15",
        "HF_HUB_OFFLINE",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ] {
        assert!(message.contains(want), "{message} lacks {want}");
    }
    assert!(mirror.requests().is_empty(), "offline asks nothing");

    // Cold: downloads with a line per file, then generates from the cache.
    let run = sd_hub(&args, &hub);
    let message = output_text(&run);
    println!("{message}");
    assert!(run.status.success(), "{message}");
    for want in [
        "downloading sd15 model_index.json",
        "downloaded unet/diffusion_pytorch_model.fp16.safetensors (8853352 bytes)",
    ] {
        assert!(message.contains(want), "{message} lacks {want}");
    }
    let judged = support::judge::judge_png(&out);
    assert_eq!(
        judged,
        support::judge::Judged {
            digit: 7,
            fg: "red",
            bg: "blue"
        }
    );

    // Warm: no request, no download line; listed as downloaded.
    mirror.clear_requests();
    let mut warm = args.to_vec();
    warm[6] = "1"; // --steps: the cache is what is checked here
    let run = sd_hub(&warm, &hub);
    assert!(run.status.success(), "{}", output_text(&run));
    assert!(
        !output_text(&run).contains("download"),
        "{}",
        output_text(&run)
    );
    assert_eq!(mirror.requests(), Vec::<String>::new());
    let listing = output_text(&sd_hub(&["models"], &hub));
    assert!(
        listed_line(&listing, "sd15").contains(" downloaded"),
        "{listing}"
    );
    assert!(!listed_line(&listing, "sd15").contains("not downloaded"));
}

/// A tiny-arch fixture folder laid out as its hub repository: the fixture's files plus the
/// slow tokenizer files the presets fetch (the digits fixture's: CLIP's vocabulary).
fn as_hub_repo(fixture: &str, dir: &Path) {
    let fixtures = fixture_model().join("..");
    let copy = |from: &Path, to: &Path| {
        for entry in walk(from) {
            let target = to.join(entry.strip_prefix(from).expect("inside"));
            std::fs::create_dir_all(target.parent().expect("a parent")).expect("mkdir");
            std::fs::copy(&entry, &target).expect("copy");
        }
    };
    copy(&fixtures.join("tiny-arch").join(fixture), dir);
    for file in ["vocab.json", "merges.txt", "special_tokens_map.json"] {
        std::fs::copy(
            fixture_model().join("tokenizer").join(file),
            dir.join("tokenizer").join(file),
        )
        .expect("copy a tokenizer file");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Distilled presets generate with their own defaults when the command gives none: SD-Turbo
/// one Euler step without guidance, an LCM model 4 LCM steps at guidance 8.5 (the tiny
/// random-weight models of their architectures served as the presets' repositories).
#[test]
fn distilled_presets_default_to_their_own_steps_guidance_and_sampler() {
    for (preset, repo, fixture, want) in [
        (
            "sd-turbo",
            "stabilityai/sd-turbo",
            "turbo",
            ["Steps: 1,", "Sampler: Euler,", "CFG scale: 0,"],
        ),
        (
            "lcm",
            "SimianLuo/LCM_Dreamshaper_v7",
            "lcm",
            ["Steps: 4,", "Sampler: LCM,", "CFG scale: 8.5,"],
        ),
    ] {
        let served = tempfile::tempdir().expect("temp dir");
        as_hub_repo(fixture, served.path());
        let mirror = hub_mirror::Mirror::serve(repo, served.path());
        let home = tempfile::tempdir().expect("temp dir");
        let home_path = home.path().to_str().expect("utf-8 path");
        let hub = [("HF_ENDPOINT", mirror.url.as_str()), ("HF_HOME", home_path)];
        let out = home.path().join("out.png");
        let run = sd_hub(
            &[
                "generate",
                "--model",
                preset,
                "--prompt",
                "a red digit seven on a blue background",
                "--width",
                "64",
                "--height",
                "64",
                "--seed",
                "1",
                "--out",
                out.to_str().expect("utf-8 path"),
            ],
            &hub,
        );
        let message = output_text(&run);
        assert!(run.status.success(), "{preset}: {message}");
        let parameters = support::parameters_chunk(&out);
        println!("{preset}: {parameters}");
        for want in want {
            assert!(
                parameters.contains(want),
                "{preset}: {parameters:?} lacks {want}"
            );
        }
    }
}
