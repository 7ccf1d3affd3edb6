//! Bad input to `sd generate` (`sd_cli::generate::run`, the CLI's own code path) is refused with
//! an error, never a panic, and the message (as the CLI prints it, `{:#}`) names the field and
//! what is allowed: sizes, steps, guidance (negative, NaN, infinite), sampler (listing the known
//! ones), count, latents files, and model folders that are missing, lack a weight file, hold a
//! truncated weight file or a tensor of the wrong shape. An empty prompt is allowed and
//! generates. Each refusal's time is printed; parameter checks do not wait for the slow parts
//! (diffusion), and file checks happen before the model is loaded where they can.

use sd_test_support::fixtures;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sd_cli::generate::{GenerateArgs, run};
use sd_wgsl::Device;

/// The CLI's defaults (`sd generate` with no options), writing into `dir`, with a fixed seed.
fn defaults(dir: &Path) -> GenerateArgs {
    GenerateArgs {
        prompt: "a red digit seven on a blue background".into(),
        negative_prompt: String::new(),
        steps: Some(20),
        guidance: Some(7.5),
        seed: Some(1),
        sampler: Some("euler_a".into()),
        width: None,
        height: None,
        count: 1,
        out: dir.join("out.png"),
        model: None,
        latents: None,
        init_image: None,
        strength: 0.8,
        mask: None,
        init_sample: false,
        f32_weights: false,
        model_config: None,
        device: Device::Gpu,
    }
}

/// Copies the fixture's digits model folder into `dir/name` (plain writable files).
fn copy_model(dir: &Path, name: &str) -> PathBuf {
    fn copy(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).expect("create a model folder copy");
        for entry in std::fs::read_dir(src).expect("read the fixture folder") {
            let entry = entry.expect("a folder entry");
            let to = dst.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                copy(&entry.path(), &to);
            } else {
                // Read and write rather than fs::copy: the fixtures are read-only, the copy
                // must not be.
                let bytes = std::fs::read(entry.path()).expect("read a fixture file");
                std::fs::write(&to, bytes).expect("write the copy");
            }
        }
    }
    let dst = dir.join(name);
    copy(&fixtures().join("tiny-sd-digits"), &dst);
    dst
}

const VAE_WEIGHTS: &str = "vae/diffusion_pytorch_model.safetensors";
const UNET_WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors";

/// Rewrites `file` inside `model` with the tensor `name` given `shape` (same element count).
fn reshape_tensor(model: &Path, file: &str, name: &str, shape: &[usize]) {
    use safetensors::tensor::{SafeTensors, TensorView};
    let path = model.join(file);
    let bytes = std::fs::read(&path).expect("read the weights");
    let parsed = SafeTensors::deserialize(&bytes).expect("a valid safetensors file");
    let mut found = false;
    let views: Vec<(String, TensorView<'_>)> = parsed
        .tensors()
        .into_iter()
        .map(|(tensor, view)| {
            if tensor != name {
                return (tensor, view);
            }
            found = true;
            assert_eq!(
                view.shape().iter().product::<usize>(),
                shape.iter().product::<usize>(),
                "the new shape keeps the element count"
            );
            let reshaped = TensorView::new(view.dtype(), shape.to_vec(), view.data())
                .expect("a valid reshaped view");
            (tensor, reshaped)
        })
        .collect();
    assert!(found, "{name} is in {file}");
    let out = safetensors::serialize(views, None).expect("serialise");
    std::fs::write(&path, out).expect("write the damaged weights");
}

/// One bad input: how to set it up, and words the message must contain (case-insensitive).
struct Case {
    name: &'static str,
    args: GenerateArgs,
    must_say: Vec<String>,
}

fn case(name: &'static str, args: GenerateArgs, must_say: &[&str]) -> Case {
    Case {
        name,
        args,
        must_say: must_say.iter().map(|s| s.to_string()).collect(),
    }
}

fn cases(dir: &Path) -> Vec<Case> {
    let base = defaults(dir);
    let with = |f: &dyn Fn(&mut GenerateArgs)| {
        let mut args = base.clone();
        f(&mut args);
        args
    };
    let known = "euler, euler_karras, euler_a, euler_a_karras, heun, heun_karras, dpm2, \
                 dpm2_karras, dpm2_a, dpm2_a_karras, dpm++2s_a, dpm++2s_a_karras, dpm++2m, \
                 dpm++2m_karras, dpm++2mv2, dpm++2mv2_karras, lcm, ddim, pndm";

    // Latents files: 100 f32 values (256 are needed at 64x64), 10 bytes, two tensors, none.
    let short = dir.join("short.bin");
    std::fs::write(&short, [0u8; 400]).expect("write short latents");
    let ragged = dir.join("ragged.bin");
    std::fs::write(&ragged, [0u8; 10]).expect("write ragged latents");
    let two = dir.join("two.safetensors");
    {
        use safetensors::tensor::TensorView;
        let data = [0u8; 16];
        let a = TensorView::new(safetensors::Dtype::F32, vec![4], &data).expect("view");
        let b = TensorView::new(safetensors::Dtype::F32, vec![4], &data).expect("view");
        let bytes = safetensors::serialize([("a", a), ("b", b)], None).expect("serialise");
        std::fs::write(&two, bytes).expect("write two tensors");
    }
    let absent_latents = dir.join("no-such-latents.bin");
    let input_png = fixtures().join("tiny-sd-digits-refs/more_refs_png/img2img_input.png");

    // Broken model folders.
    let no_model = dir.join("no-such-model");
    let no_vae = copy_model(dir, "no-vae-weights");
    std::fs::remove_file(no_vae.join(VAE_WEIGHTS)).expect("remove the VAE weights");
    let truncated = copy_model(dir, "truncated-unet");
    {
        let path = truncated.join(UNET_WEIGHTS);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    }
    let misshaped = copy_model(dir, "misshaped-vae");
    // conv_in [64, 4, 3, 3] stored as [4, 64, 3, 3]: the same bytes, transposed channels.
    reshape_tensor(
        &misshaped,
        VAE_WEIGHTS,
        "decoder.conv_in.weight",
        &[4, 64, 3, 3],
    );
    let no_config = copy_model(dir, "no-unet-config");
    std::fs::remove_file(no_config.join("unet/config.json")).expect("remove the UNet config");

    vec![
        case(
            "width not a multiple of 8",
            with(&|a| a.width = Some(60)),
            &["width", "60", "multiple of 8"],
        ),
        case(
            "height not a multiple of 8",
            with(&|a| a.height = Some(100)),
            &["height", "100", "multiple of 8"],
        ),
        case(
            "width 0",
            with(&|a| a.width = Some(0)),
            &["width", "multiple of 8 from 64 to 2048"],
        ),
        case(
            "width too large",
            with(&|a| a.width = Some(4096)),
            &["width", "4096", "from 64 to 2048"],
        ),
        case(
            "steps 0",
            with(&|a| a.steps = Some(0)),
            &["steps", "from 1 to 150"],
        ),
        case(
            "steps 10000",
            with(&|a| a.steps = Some(10000)),
            &["steps", "10000", "from 1 to 150"],
        ),
        case(
            "negative guidance",
            with(&|a| a.guidance = Some(-1.0)),
            &["guidance", "-1", ">= 0"],
        ),
        case(
            "NaN guidance",
            with(&|a| a.guidance = Some(f32::NAN)),
            &["guidance", "NaN", "finite"],
        ),
        case(
            "infinite guidance",
            with(&|a| a.guidance = Some(f32::INFINITY)),
            &["guidance", "inf", "finite"],
        ),
        case(
            "unknown sampler",
            with(&|a| a.sampler = Some("euler_b".into())),
            &["sampler", "euler_b", known],
        ),
        case(
            "Karras sigmas on a sampler without sigmas",
            with(&|a| a.sampler = Some("ddim_karras".into())),
            &["sampler", "ddim_karras", known],
        ),
        case(
            "count 0",
            with(&|a| a.count = 0),
            &["count", "from 1 to 16"],
        ),
        case(
            "count 100",
            with(&|a| a.count = 100),
            &["count", "100", "from 1 to 16"],
        ),
        case(
            "latents of the wrong length",
            with(&|a| a.latents = Some(short.clone())),
            &["latents", "100 values given, 256 needed"],
        ),
        case(
            "latents not a whole number of f32",
            with(&|a| a.latents = Some(ragged.clone())),
            &["ragged.bin", "10 bytes", "f32"],
        ),
        case(
            "latents safetensors with two tensors",
            with(&|a| a.latents = Some(two.clone())),
            &["two.safetensors", "exactly one tensor"],
        ),
        case(
            "latents file that does not exist",
            with(&|a| a.latents = Some(absent_latents.clone())),
            &["no-such-latents.bin", "cannot read"],
        ),
        case(
            "model folder that does not exist",
            with(&|a| a.model = Some(no_model.display().to_string())),
            &[
                "--model",
                "no-such-model",
                "not found",
                "the presets (digits, sd15, sd21, sd-turbo, sdxl, sdxl-turbo, lcm)",
            ],
        ),
        case(
            "model folder without the VAE weights",
            with(&|a| a.model = Some(no_vae.display().to_string())),
            &["no-vae-weights", "vae", "safetensors"],
        ),
        case(
            "model folder with a truncated UNet file",
            with(&|a| a.model = Some(truncated.display().to_string())),
            &["diffusion_pytorch_model.safetensors", "truncated"],
        ),
        case(
            "model folder with a mis-shaped VAE tensor",
            with(&|a| a.model = Some(misshaped.display().to_string())),
            &[
                "vae",
                "decoder.conv_in.weight",
                "[4, 64, 3, 3]",
                "[64, 4, 3, 3]",
            ],
        ),
        case(
            "model folder without the UNet config",
            with(&|a| a.model = Some(no_config.display().to_string())),
            &["unet", "config.json", "cannot read"],
        ),
        case(
            "--mask without --init-image",
            with(&|a| a.mask = Some(input_png.clone())),
            &["--mask", "--init-image"],
        ),
        case(
            "--init-image that does not exist",
            with(&|a| a.init_image = Some(dir.join("no-such-image.png"))),
            &["--init-image", "no-such-image.png"],
        ),
        case(
            "--init-image that is not an image",
            with(&|a| a.init_image = Some(short.clone())),
            &["--init-image", "short.bin", "not a PNG, JPEG or WebP"],
        ),
        case(
            "--mask that is not an image",
            with(&|a| {
                a.init_image = Some(input_png.clone());
                a.mask = Some(short.clone());
            }),
            &["--mask", "short.bin", "not a PNG, JPEG or WebP"],
        ),
        case(
            "--strength above 1",
            with(&|a| {
                a.init_image = Some(input_png.clone());
                a.strength = 1.5;
            }),
            &["strength", "1.5", "from 0 to 1"],
        ),
        case(
            "output folder that does not exist",
            with(&|a| a.out = dir.join("no-such-folder/out.png")),
            &["--out", "no-such-folder", "does not exist"],
        ),
    ]
}

#[test]
fn bad_input_is_refused_with_a_message_naming_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut failures = Vec::new();
    println!("{:<44} {:>8}  message", "case", "time");
    for case in cases(dir.path()) {
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| run(&case.args, false)));
        let took = start.elapsed();
        let message = match outcome {
            Err(_) => {
                failures.push(format!("{}: panicked", case.name));
                continue;
            }
            Ok(Ok(report)) => {
                failures.push(format!(
                    "{}: succeeded (wrote {:?})",
                    case.name, report.files
                ));
                continue;
            }
            Ok(Err(error)) => format!("{error:#}"),
        };
        println!("{:<44} {:>7.2}s  {message}", case.name, took.as_secs_f64());
        let lower = message.to_lowercase();
        for word in &case.must_say {
            if !lower.contains(&word.to_lowercase()) {
                failures.push(format!("{}: {message:?} does not say {word:?}", case.name));
            }
        }
        // Refusals come before diffusion: loading the model takes ~0.2 s on lavapipe, the 20
        // steps every case asks for ~8 s.
        if took > Duration::from_secs(5) {
            failures.push(format!("{}: took {took:?} to refuse", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_empty_prompt_is_allowed() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let args = GenerateArgs {
        prompt: String::new(),
        steps: Some(2),
        ..defaults(dir.path())
    };
    let report = run(&args, false).expect("an empty prompt generates");
    assert_eq!(report.files, [dir.path().join("out.png")]);
    assert_eq!(report.seeds, [1]);
    let bytes = std::fs::read(&report.files[0]).expect("the PNG was written");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
}

/// `sd serve`'s own options are refused naming the option, before the model loads.
#[test]
fn bad_serve_options_are_refused_naming_the_option() {
    for (args, must_say) in [
        (
            &["--job-timeout", "0"][..],
            &["--job-timeout", "(0, 604800]"][..],
        ),
        (
            &["--job-timeout", "soon"],
            &["--job-timeout", "not a number"],
        ),
        (&["--max-connections", "0"], &["--max-connections"]),
        (
            &["--cors-origin", "app.example"],
            &["--cors-origin", "https://app.example"],
        ),
        (
            &["--cors-origin", "https://app.example/page"],
            &["--cors-origin", "no path"],
        ),
        (&["--api-key", " "], &["--api-key", "empty"]),
    ] {
        let start = Instant::now();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sd"))
            .arg("serve")
            .args(["--port", "0", "--device", "cpu"])
            .args(args)
            .env_remove("SD_API_KEY")
            .output()
            .expect("run sd serve");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{args:?} was accepted: {text}");
        for word in must_say {
            assert!(text.contains(word), "{args:?} must say {word:?}: {text}");
        }
        assert!(
            !text.contains("loaded"),
            "{args:?}: checked after loading: {text}"
        );
        eprintln!("{args:?}: refused in {:.2?}", start.elapsed());
    }
}
