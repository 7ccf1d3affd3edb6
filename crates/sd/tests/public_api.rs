//! The library as a user's crate calls it: only `sd_wgsl`'s public API (and `image`), judged for
//! meaning with the fixtures' judge.

use sd_test_support::judge;

use std::path::PathBuf;
use std::sync::Arc;

use judge::{Judged, judge_rgb};
use sd_test_support::fixtures;
use sd_wgsl::{
    CancelToken, Error, ImageFormat, ModelLocation, ModelPaths, Options, Progress, Stage,
    list_models, resolve,
};

/// The built-in model on the CPU backend: these tests are about the library's API, the same
/// whatever runs the networks, and the CPU backend runs the digits model ~20x faster than
/// lavapipe (`crates/cli/tests/end_to_end.rs` runs the same calls on the GPU).
fn load() -> sd_wgsl::Model {
    let options = sd_wgsl::LoadOptions::new().device(sd_wgsl::Device::Cpu);
    sd_wgsl::Model::load_with("digits", &options).expect("the built-in model loads")
}

fn model() -> &'static sd_wgsl::Model {
    static MODEL: std::sync::OnceLock<sd_wgsl::Model> = std::sync::OnceLock::new();
    MODEL.get_or_init(load)
}

#[test]
fn a_generation_with_progress_comes_out_as_asked() {
    let mut events: Vec<Progress> = Vec::new();
    let images = model()
        .generate_with(
            "a red digit seven on a blue background",
            &Options::new()
                .steps(20)
                .guidance_scale(5.0)
                .seed(7)
                .sampler("Euler a")
                .count(2),
            |p| events.push(p.clone()),
            &CancelToken::new(),
        )
        .expect("generate");
    assert_eq!(images.len(), 2);
    assert_eq!(images.seeds(), &[7, 8]);
    for image in images.images() {
        assert_eq!(image.dimensions(), (64, 64));
        let judged = judge_rgb(image.as_raw(), 64, 64);
        println!("seed {:?}: {judged}", images.seeds());
        assert_eq!(
            judged,
            Judged {
                digit: 7,
                fg: "red",
                bg: "blue"
            }
        );
    }
    // Progress: encode, then 20 steps each with a preview, then a decode per image, then done.
    let steps: Vec<usize> = events
        .iter()
        .filter_map(|e| match e.stage {
            Stage::Diffusion { step, total: 20 } if step > 0 => Some(step),
            _ => None,
        })
        .collect();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "steps in order");
    assert_eq!(steps.last(), Some(&20));
    assert!(
        events
            .iter()
            .filter(|e| matches!(e.stage, Stage::Diffusion { step, .. } if step > 0))
            .all(|e| e.preview.as_ref().is_some_and(|p| p.dimensions() == (8, 8))),
        "every step has an 8x8 preview"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.stage, Stage::Decode))
            .count(),
        2
    );
    let last = events.last().expect("events");
    assert!(matches!(last.stage, Stage::Done) && last.percent == 100.0);
    assert!(events.windows(2).all(|w| w[0].percent <= w[1].percent));

    // Output: PNG with the parameters, JPEG, WebP, files.
    let png = images.encode(0, ImageFormat::Png).expect("png");
    assert!(png.starts_with(b"\x89PNG"));
    assert!(images.parameters_text(1).contains("Seed: 8,"));
    assert!(
        images
            .encode(0, ImageFormat::Jpeg)
            .expect("jpeg")
            .starts_with(&[0xFF, 0xD8])
    );
    assert!(
        images
            .encode(0, ImageFormat::Webp)
            .expect("webp")
            .starts_with(b"RIFF")
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let files = images.save(dir.path().join("out.png")).expect("save");
    assert_eq!(
        files,
        [dir.path().join("out-1.png"), dir.path().join("out-2.png")]
    );
}

#[test]
fn a_cancelled_generation_stops_between_steps() {
    let cancel = CancelToken::new();
    let mut last_step = 0;
    let result = model().generate_with(
        "a yellow digit zero on a green background",
        &Options::new().steps(20),
        |p| {
            if let Stage::Diffusion { step, .. } = p.stage {
                last_step = step;
                if step == 2 {
                    cancel.cancel();
                }
            }
        },
        &cancel,
    );
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(last_step, 2, "no step after the cancel");
}

#[test]
fn generations_run_from_other_threads_and_async_code() {
    let model = Arc::new(load());
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let images = runtime.block_on(async {
        let worker = Arc::clone(&model);
        tokio::task::spawn_blocking(move || {
            worker.generate(
                "a white digit three on a black background",
                &Options::new().steps(20).guidance_scale(5.0).seed(3),
            )
        })
        .await
        .expect("join")
    });
    let images = images.expect("generate");
    let judged = judge_rgb(images.images()[0].as_raw(), 64, 64);
    assert_eq!(
        judged,
        Judged {
            digit: 3,
            fg: "white",
            bg: "black"
        }
    );
}

#[test]
fn img2img_through_the_options() {
    let input = image::open(fixtures().join("tiny-sd-digits-refs/more_refs_png/img2img_input.png"))
        .expect("the fixture's input image");
    let images = model()
        .generate(
            "a yellow digit zero on a green background",
            &Options::new()
                .init_image(input)
                .strength(0.9)
                .steps(20)
                .guidance_scale(5.0)
                .seed(5),
        )
        .expect("img2img");
    let judged = judge_rgb(images.images()[0].as_raw(), 64, 64);
    assert_eq!(
        judged,
        Judged {
            digit: 0,
            fg: "yellow",
            bg: "green"
        }
    );
}

#[test]
fn bad_options_are_named_before_any_gpu_work() {
    for (options, option) in [
        (Options::new().sampler("euler_b"), "sampler"),
        (Options::new().width(100), "width"),
        (Options::new().strength(-1.0), "strength"),
    ] {
        match model().generate("x", &options) {
            Err(Error::InvalidOption { option: o, message }) => {
                assert_eq!(o, option, "{message}");
                if option == "sampler" {
                    assert!(message.contains("euler_a") && message.contains("dpm++2m_karras"));
                }
            }
            other => panic!("{option}: {other:?}"),
        }
    }
}

/// A models folder with one diffusers folder `name` (only its `model_index.json`: resolution
/// looks at folders, loading at files).
fn models_folder(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in names {
        let model = dir.path().join(name);
        std::fs::create_dir_all(&model).expect("model folder");
        std::fs::write(model.join("model_index.json"), "{}").expect("model_index.json");
    }
    dir
}

#[test]
fn model_names_resolve_in_order_and_never_leave_the_folders() {
    let first = models_folder(&["a", "both"]);
    let second = models_folder(&["b", "both"]);
    // A single-file checkpoint beside the folders (its contents do not matter to resolving).
    std::fs::write(second.path().join("c.safetensors"), b"").expect("a file");
    let paths = ModelPaths {
        diffusion_models: Some(first.path().into()),
        models: Some(second.path().into()),
    };
    let at = |p: PathBuf| ModelLocation::Path(p);
    assert!(
        matches!(resolve("digits", &paths), Ok(ModelLocation::Preset(p)) if p.name == "digits")
    );
    assert!(matches!(
        resolve("DIGITS", &paths),
        Ok(ModelLocation::Preset(_))
    ));
    let absolute = fixtures().join("tiny-sd-digits");
    assert_eq!(
        resolve(absolute.to_str().expect("utf-8"), &paths).expect("a path"),
        at(absolute)
    );
    assert_eq!(resolve("a", &paths).expect("a"), at(first.path().join("a")));
    assert_eq!(
        resolve("both", &paths).expect("both"),
        at(first.path().join("both"))
    );
    assert_eq!(
        resolve("b", &paths).expect("b"),
        at(second.path().join("b")),
        "MODELS_PATH after"
    );
    assert_eq!(
        resolve("c.safetensors", &paths).expect("a file by name"),
        at(second.path().join("c.safetensors"))
    );

    match resolve("missing", &paths) {
        Err(Error::ModelNotFound { name, searched }) => {
            assert_eq!(name, "missing");
            let all = searched.join(" | ");
            assert!(all.contains("presets (digits, sd15,"), "{all}");
            assert!(
                all.contains(&first.path().join("missing").display().to_string()),
                "{all}"
            );
            assert!(
                all.contains(&second.path().join("missing").display().to_string()),
                "{all}"
            );
            assert!(all.contains("$DIFFUSION_MODELS_PATH") && all.contains("$MODELS_PATH"));
        }
        other => panic!("missing: {other:?}"),
    }
    let unset = ModelPaths::default();
    let Err(Error::ModelNotFound { searched, .. }) = resolve("a", &unset) else {
        panic!("nothing to search")
    };
    assert!(
        searched
            .iter()
            .any(|s| s == "$DIFFUSION_MODELS_PATH (not set)"),
        "{searched:?}"
    );
    // `../<second folder>/b` from the first folder is a real model outside it: refused.
    let sibling = format!(
        "../{}/b",
        second.path().file_name().expect("a name").to_string_lossy()
    );
    assert!(
        first.path().join(&sibling).is_dir(),
        "the escape would reach a model"
    );
    for escape in [sibling.as_str(), "../a", "x/../../a", ""] {
        let err = resolve(escape, &paths).expect_err(escape);
        assert!(matches!(err, Error::ModelName { .. }), "{escape}: {err}");
    }

    let listed: Vec<(String, &str)> = list_models(&paths)
        .into_iter()
        .map(|m| (m.name, m.format))
        .collect();
    let presets = sd_wgsl::PRESETS.len();
    assert_eq!(listed[0], ("digits".to_string(), "preset"));
    assert!(listed[..presets].iter().all(|(_, f)| *f == "preset"));
    assert_eq!(
        listed[presets..],
        [
            ("a".into(), "diffusers"),
            ("both".into(), "diffusers"),
            ("b".into(), "diffusers"),
            ("c.safetensors".into(), "single-file"),
        ]
    );
}
