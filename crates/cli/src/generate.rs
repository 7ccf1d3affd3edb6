//! `sd generate`: text to image with a progress bar, PNGs with their parameters, and a report of
//! where everything went and how long each stage took.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sd_weights::SafetensorsFile;
use sd_wgsl::{CancelToken, Device, LoadOptions, Model, Options, Progress, Stage};

/// Options of `sd generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// What to draw.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// What to steer away from (the unconditional half of guidance).
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Denoising steps (default: 20, or a distilled model's own: 1 for sd-turbo and
    /// sdxl-turbo, 4 for LCM models).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale, 1 or less: no unconditional pass (default: 7.5, or a
    /// distilled model's own: 0 for the turbo presets, 8.5 for LCM models).
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// Noise seed; a random one when absent (printed, and stored in the PNG).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sampler: euler, euler_a, heun, dpm2, dpm2_a, dpm++2s_a, dpm++2m, dpm++2mv2 (each also
    /// with `_karras`), lcm, ddim, pndm; A1111 names such as "DPM++ 2M Karras" work too
    /// (default: euler_a, or a distilled model's own).
    #[arg(long)]
    pub sampler: Option<String>,
    /// Image width in pixels, a multiple of 8 (default: the input image's width rounded down to
    /// a multiple of 8, else the model's native size).
    #[arg(long)]
    pub width: Option<u32>,
    /// Image height in pixels, a multiple of 8 (default: the input image's height rounded down
    /// to a multiple of 8, else the model's native size).
    #[arg(long)]
    pub height: Option<u32>,
    /// img2img: start from this image (PNG, JPEG or WebP), resized to the output size.
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// img2img and inpainting: how much of the input to repaint, 0 (nothing) to 1 (all).
    #[arg(long, default_value_t = 0.8)]
    pub strength: f32,
    /// Inpainting: a mask image (white = repaint, black = keep); needs --init-image.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// img2img: encode the input by a seeded sample of the VAE's latent distribution instead of
    /// its mean.
    #[arg(long)]
    pub init_sample: bool,
    /// Number of images; image i uses seed + i.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Output PNG; with --count > 1, `-<i>` is added before the extension.
    #[arg(long, default_value = "sd.png")]
    pub out: PathBuf,
    /// A preset (`digits`, built in: the default; hub presets such as `sd15`, `sd-turbo` or
    /// `sdxl` download into the Hugging Face cache on first use, see `sd models`), a model
    /// folder (diffusers or web format), a single-file .safetensors checkpoint (SD 1.x, 2.x,
    /// XL in the original layout; .ckpt pickles are refused), or a folder or file name under
    /// $DIFFUSION_MODELS_PATH, then $MODELS_PATH.
    #[arg(long)]
    pub model: Option<String>,
    /// Initial latents (unit noise, count x 4 x h/8 x w/8 values): a .safetensors file with one
    /// tensor, or raw little-endian f32.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// Keep weight matrices in f32 on the GPU (twice the memory; for comparisons).
    #[arg(long)]
    pub f32_weights: bool,
    /// Where the model runs: auto (a hardware GPU if wgpu finds one, else the CPU backend),
    /// gpu (the WGSL kernels on any adapter, software ones included), or cpu (candle; wgpu is
    /// not touched).
    #[arg(long, env = "SD_DEVICE", default_value = "auto", value_parser = parse_device)]
    pub device: Device,
    /// With a single-file .safetensors --model: a folder of diffusers configs
    /// (unet/config.json, scheduler/scheduler_config.json, ...) to use instead of the built-in
    /// published configs of the checkpoint's architecture.
    #[arg(long, value_name = "DIR", requires = "model")]
    pub model_config: Option<PathBuf>,
}

/// What a `generate` run did.
#[derive(Debug)]
pub struct Report {
    /// The PNGs written, in image order.
    pub files: Vec<PathBuf>,
    /// The seed of each image.
    pub seeds: Vec<u64>,
    /// Stage name and time spent.
    pub timings: Vec<(String, Duration)>,
    /// Warnings (e.g. a truncated prompt).
    pub warnings: Vec<String>,
}

fn read_latents(path: &Path) -> Result<Vec<f32>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        let file = SafetensorsFile::read(path)?;
        let mut tensors = file.tensors();
        let (Some(tensor), None) = (tensors.next(), tensors.next()) else {
            bail!("{}: expected exactly one tensor of latents", path.display());
        };
        return Ok(tensor.to_f32()?);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() % 4 != 0 {
        bail!(
            "{}: {} bytes is not a whole number of f32 values",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Reads an input image for `flag` (`--init-image`, `--mask`), naming the flag on errors.
fn read_image(flag: &str, path: &Path) -> Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .with_context(|| format!("{flag} {}: cannot open the file", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{flag} {}: cannot read the file", path.display()))?
        .decode()
        .with_context(|| {
            format!(
                "{flag} {}: not a PNG, JPEG or WebP image we can decode",
                path.display()
            )
        })
}

/// Runs `sd generate`: checks the options, loads the model, generates, writes the images.
/// `show_progress` draws the progress bar on stderr.
pub fn run(args: &GenerateArgs, show_progress: bool) -> Result<Report> {
    let mut options = Options::new()
        .negative_prompt(args.negative_prompt.clone())
        .count(args.count)
        .strength(args.strength)
        .sample_init_latents(args.init_sample);
    if let Some(seed) = args.seed {
        options = options.seed(seed);
    }
    if let Some(steps) = args.steps {
        options = options.steps(steps);
    }
    if let Some(guidance) = args.guidance {
        options = options.guidance_scale(guidance);
    }
    if let Some(sampler) = &args.sampler {
        options = options.sampler(sampler.clone());
    }
    if let Some(width) = args.width {
        options = options.width(width);
    }
    if let Some(height) = args.height {
        options = options.height(height);
    }
    if let Some(path) = &args.latents {
        options = options.initial_latents(read_latents(path)?);
    }
    if let Some(path) = &args.init_image {
        options = options.init_image(read_image("--init-image", path)?);
    }
    if let Some(path) = &args.mask {
        options = options.mask(read_image("--mask", path)?);
    }
    // Refuse bad options and an output folder that does not exist now, not after loading.
    options.validate().map_err(flag_error)?;
    let out_dir = match args.out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !out_dir.is_dir() {
        bail!(
            "--out {}: the folder {} does not exist",
            args.out.display(),
            out_dir.display()
        );
    }

    let bar = if show_progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    let steps_style =
        ProgressStyle::with_template("{spinner} {msg:<12} [{bar:30}] {pos}/{len} steps, ETA {eta}")
            .context("progress bar template")?
            .progress_chars("=> ");
    bar.set_style(steps_style.clone());
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut timings = Vec::new();
    let start = Instant::now();

    bar.set_message("load");
    let spec = args.model.as_deref().unwrap_or(DEFAULT_MODEL);
    let mut load_options = LoadOptions::new()
        .f32_weights(args.f32_weights)
        .device(args.device);
    load_options.model_config = args.model_config.clone();
    let mut download = crate::download::DownloadReporter::new(bar.clone());
    let model = load_model(spec, &load_options, &mut download)?;
    if let Some(note) = model.device_note() {
        bar.suspend(|| eprintln!("note: {note}"));
    }
    // A preset's download restyled the bar for bytes.
    bar.set_style(steps_style);
    bar.set_message("load");
    timings.push(("load".to_string(), start.elapsed()));

    let mut stage_start = Instant::now();
    let mut current = "encode".to_string();
    let on_progress = |progress: &Progress| {
        let name = progress.stage.name().to_string();
        if name != current {
            timings.push((
                std::mem::replace(&mut current, name.clone()),
                stage_start.elapsed(),
            ));
            stage_start = Instant::now();
        }
        bar.set_message(name);
        if let Stage::Diffusion { step, total } = progress.stage {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
        }
    };
    let images = model
        .generate_with(&args.prompt, &options, on_progress, &CancelToken::new())
        .map_err(flag_error)?;
    bar.finish_and_clear();
    let files = images.save(&args.out)?;
    Ok(Report {
        files,
        seeds: images.seeds().to_vec(),
        timings,
        warnings: images.warnings().to_vec(),
    })
}

/// Loads `spec`, naming `--model` in a load error and `--device` in a missing-GPU one.
pub(crate) fn load_model(
    spec: &str,
    options: &LoadOptions,
    download: &mut crate::download::DownloadReporter,
) -> Result<Model> {
    Model::load_with_download_progress(spec, options, &mut |p| download.update(p)).map_err(
        |error| match error {
            sd_wgsl::Error::NoGpu { .. } => anyhow::anyhow!("--device gpu: {error}"),
            other => anyhow::Error::new(other).context(format!("--model {spec}")),
        },
    )
}

/// `--device`: auto, gpu or cpu.
pub(crate) fn parse_device(value: &str) -> std::result::Result<Device, String> {
    value.parse().map_err(|e: sd_wgsl::Error| e.to_string())
}

/// The model `sd generate` and `sd serve` use without `--model`.
pub const DEFAULT_MODEL: &str = "digits";

/// An option error under the command line's name of the option.
fn flag_error(error: sd_wgsl::Error) -> anyhow::Error {
    match &error {
        sd_wgsl::Error::InvalidOption { option, message } => {
            let flag = match *option {
                "guidance_scale" => "guidance",
                "init_image" => "init-image",
                "latents" => "latents",
                other => other,
            };
            // The front door names its options; the command line, its flags.
            let message = message.replace("(init_image)", "(--init-image)");
            anyhow::anyhow!("--{flag}: {message}")
        }
        _ => error.into(),
    }
}
