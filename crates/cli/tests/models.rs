//! `--model` by name through the environment, as a user's shell sets it: `sd models` lists the
//! presets and the folders of `$DIFFUSION_MODELS_PATH` and `$MODELS_PATH`, and `sd generate
//! --model NAME` looks in the first, then the second, and refuses names that leave them.

use std::path::Path;
use std::process::{Command, Output};

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

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
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
    let listed = text(&listed);
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
        ]
    };
    // MODELS_PATH is the fallback when DIFFUSION_MODELS_PATH lacks the name.
    let run = sd(&args("tiny"), Some(first.path()), Some(second.path()));
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        std::fs::read(&out)
            .expect("the PNG")
            .starts_with(b"\x89PNG")
    );

    // DIFFUSION_MODELS_PATH comes first: its broken `broken` is what loads (and fails).
    std::fs::create_dir(second.path().join("broken")).expect("folder");
    let run = sd(&args("broken"), Some(first.path()), Some(second.path()));
    let message = text(&run);
    assert!(!run.status.success());
    assert!(
        message.contains(&first.path().join("broken").display().to_string()),
        "{message}"
    );

    let run = sd(&args("nowhere"), Some(first.path()), None);
    let message = text(&run);
    assert!(!run.status.success());
    for want in ["--model nowhere", "not found", "$MODELS_PATH (not set)"] {
        assert!(message.contains(want), "{message} lacks {want}");
    }

    let run = sd(&args("../escape"), Some(first.path()), Some(second.path()));
    let message = text(&run);
    assert!(!run.status.success());
    assert!(
        message.contains("may not leave the models folder"),
        "{message}"
    );
}
