//! `sd generate`: text to image with a progress bar, PNGs with their parameters, and a report of
//! where everything went and how long each stage took.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sd_core::params::{GenerationParams, ParamLimits, size_for_input_image};
use sd_core::progress::Stage;
use sd_core::sampler::SamplerKind;
use sd_kernels::{ContextOptions, DType, GpuContext};
use sd_models::{Inputs, ModelSource, StableDiffusion};
use sd_weights::SafetensorsFile;

use crate::embedded;
use sd_models::png;

/// Options of `sd generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// What to draw.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// What to steer away from (the unconditional half of guidance).
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 or less: no unconditional pass).
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    pub guidance: f32,
    /// Noise seed; a random one when absent (printed, and stored in the PNG).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sampler: euler, euler_a, heun, dpm2, dpm2_a, dpm++2s_a, dpm++2m, dpm++2mv2 (each also
    /// with `_karras`), lcm, ddim, pndm; A1111 names such as "DPM++ 2M Karras" work too.
    #[arg(long, default_value = "euler_a")]
    pub sampler: String,
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
    /// A diffusers model folder (default: the embedded digits model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Initial latents (unit noise, count x 4 x h/8 x w/8 values): a .safetensors file with one
    /// tensor, or raw little-endian f32.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// Keep weight matrices in f32 on the GPU (twice the memory; for comparisons).
    #[arg(long)]
    pub f32_weights: bool,
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

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos as u64) % (1 << 32)
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

fn output_path(out: &Path, index: usize, count: u32) -> PathBuf {
    if count <= 1 {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sd".into());
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    out.with_file_name(format!("{stem}-{}.{ext}", index + 1))
}

/// The model at `path` (a diffusers or web model folder), or the embedded one; with its name.
pub fn model_source(path: Option<&Path>) -> Result<(ModelSource, String)> {
    match path {
        Some(path) => {
            if !path.is_dir() {
                bail!(
                    "--model {}: not a folder (expected a diffusers model folder or a web \
                     model folder with manifest.json)",
                    path.display()
                );
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((ModelSource::open(path)?, name))
        }
        None => Ok((embedded::source(), embedded::NAME.to_string())),
    }
}

/// Runs `sd generate`: loads the model, generates, writes the PNGs. `show_progress` draws the
/// progress bar on stderr.
pub fn run(args: &GenerateArgs, show_progress: bool) -> Result<Report> {
    let sampler = SamplerKind::parse(&args.sampler)?;
    let latents = args.latents.as_deref().map(read_latents).transpose()?;
    if args.mask.is_some() && args.init_image.is_none() {
        bail!("--mask needs --init-image: the mask says which part of that image to repaint");
    }
    let init_image = args
        .init_image
        .as_deref()
        .map(|path| read_image("--init-image", path).map(|i| i.to_rgb8()))
        .transpose()?;
    let mask = args
        .mask
        .as_deref()
        .map(|path| read_image("--mask", path).map(|i| i.to_luma8()))
        .transpose()?;
    // Refuse an output folder that does not exist now, not after the whole generation.
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
    let (source, model_name) = model_source(args.model.as_deref())?;

    let bar = if show_progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<12} [{bar:30}] {pos}/{len} steps, ETA {eta}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut timings = Vec::new();
    let start = Instant::now();

    bar.set_message("load");
    let ctx = pollster::block_on(GpuContext::new(ContextOptions::from_env()?))?;
    let matrices = if args.f32_weights {
        DType::F32
    } else {
        DType::F16
    };
    let model = StableDiffusion::load(Arc::new(ctx), &source, matrices)
        .with_context(|| format!("cannot load the model from {}", source.describe()))?;
    let (native_w, native_h) = match &init_image {
        Some(image) => size_for_input_image(image.width(), image.height(), &ParamLimits::default()),
        None => model.native_size(),
    };
    timings.push(("load".to_string(), start.elapsed()));

    let params = GenerationParams {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps,
        guidance_scale: args.guidance,
        seed: args.seed.unwrap_or_else(random_seed),
        sampler,
        width: args.width.unwrap_or(native_w),
        height: args.height.unwrap_or(native_h),
        count: args.count,
        strength: args.strength,
        sample_init_latents: args.init_sample,
        latents_len: None,
    };
    let mut stage_start = Instant::now();
    let mut current = "encode".to_string();
    let mut on_stage = |stage: Stage| {
        let name = stage.name().to_string();
        if name != current {
            timings.push((
                std::mem::replace(&mut current, name.clone()),
                stage_start.elapsed(),
            ));
            stage_start = Instant::now();
        }
        bar.set_message(name);
        if let Stage::Diffusion { step, total } = stage {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
        }
    };
    let generated = pollster::block_on(model.generate(
        &params,
        &Inputs {
            initial_latents: latents.as_deref(),
            init_image: init_image.as_ref(),
            mask: mask.as_ref(),
        },
        &mut on_stage,
        None,
    ))?;
    bar.finish_and_clear();

    let mut files = Vec::new();
    for (i, (pixels, seed)) in generated.images.iter().zip(&generated.seeds).enumerate() {
        let path = output_path(&args.out, i, args.count);
        let text = png::parameters_text(
            &GenerationParams {
                seed: *seed,
                ..params.clone()
            },
            *seed,
            &model_name,
        );
        let bytes = png::encode_png(generated.width, generated.height, pixels, &text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        files.push(path);
    }
    Ok(Report {
        files,
        seeds: generated.seeds,
        timings,
        warnings: generated.warnings,
    })
}
