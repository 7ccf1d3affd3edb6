//! `cargo xtask bench`: the digits fixture (`shared/fixtures/tiny-sd-digits`) at 64x64 with
//! classifier-free guidance, on the GPU adapter wgpu picks (lavapipe on a machine without a GPU)
//! against candle-transformers running the same model on the CPU in the same process.
//!
//! A third column is our own CPU backend (`sd-cpu`: candle's networks under our pipeline, what
//! `--device cpu` and `auto` without a hardware GPU run), so its overhead over candle alone and
//! its lead over a software adapter show in the same run.
//!
//! Why: the CPU bar. A WebGPU path that is slower than a CPU library on the same machine needs
//! a reason; this prints the ratio per stage so a regression or a win shows where it is.
//!
//! What: per stage (text encode of the CFG pair, one UNet call on the CFG batch of 2, VAE
//! decode) and for a whole 20-step DDIM generation, one warm-up run, then `--reps` runs
//! (`--gen-reps` for whole generations); the table gives the median in milliseconds. The GPU
//! side is `StableDiffusion` with f16 weight matrices, timed through its public calls:
//! `encode_prompts` (followed by `GpuContext::finish`, as it does not read back),
//! `predict_noise` and `decode` (which read back), and `generate`. candle runs f32 weights from
//! the same safetensors, configured per `shared/notes/oracle.md`; its times include reading
//! results back to host vectors too. Both generations start from the same noise, and the
//! largest difference between the two final images is printed as a check that they ran the same
//! computation (f16 weights and candle's tanh GELU make it differ slightly).
//!
//! Run: `cargo run -p sd-tests --example bench_pipeline --release [-- --reps N --gen-reps N]`.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::stable_diffusion::ddim::DDIMSchedulerConfig;
use candle_transformers::models::stable_diffusion::schedulers::SchedulerConfig;
use candle_transformers::models::stable_diffusion::{unet_2d, vae};
use sd_core::params::GenerationParams;
use sd_core::rng::NoiseRng;
use sd_core::sampler::SamplerKind;
use sd_kernels::{ContextOptions, DType, GpuContext};
use sd_models::{ModelSource, StableDiffusion, UNetInputs};
use sd_tests::Comparison;
use sd_weights::ClipTokenizer;

#[path = "../common/oracle.rs"]
mod oracle;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const PROMPT: &str = "a red digit seven on a blue background";
const SIZE: u32 = 64;
const LATENT: usize = 8;
const STEPS: usize = 20;
const GUIDANCE: f32 = 7.5;
const SEED: u64 = 42;
/// The timestep of the single UNet call.
const T: f32 = 500.0;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tiny-sd-digits")
}

struct Args {
    reps: usize,
    gen_reps: usize,
}

fn args() -> Result<Args> {
    let mut out = Args {
        reps: 10,
        gen_reps: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = |it: &mut dyn Iterator<Item = String>| -> Result<usize> {
            let v = it.next().ok_or(format!("{flag} needs a value"))?;
            let n: usize = v
                .parse()
                .map_err(|_| format!("{flag}: `{v}` is not a count"))?;
            if n == 0 {
                return Err(format!("{flag} must be at least 1").into());
            }
            Ok(n)
        };
        match flag.as_str() {
            "--reps" => out.reps = value(&mut it)?,
            "--gen-reps" => out.gen_reps = value(&mut it)?,
            "-h" | "--help" => {
                println!("bench_pipeline [--reps N (default 10)] [--gen-reps N (default 3)]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    Ok(out)
}

/// Runs `f` once to warm up, then `reps` times; returns the median in milliseconds and the last
/// result.
fn time<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut last = f()?;
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        last = f()?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], last))
}

/// The fixture on candle, f32 on the CPU.
struct Candle {
    tokenizer: ClipTokenizer,
    clip: ClipTextTransformer,
    unet: unet_2d::UNet2DConditionModel,
    vae: vae::AutoEncoderKL,
    vae_scale: f64,
    scheduler: DDIMSchedulerConfig,
}

fn read_text(dir: &Path, file: &str) -> Result<String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn weights(dir: &Path, component: &str, file: &str) -> Result<VarBuilder<'static>> {
    let path = dir.join(component).join(file);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(VarBuilder::from_buffered_safetensors(
        bytes,
        CDType::F32,
        &Device::Cpu,
    )?)
}

impl Candle {
    fn load(dir: &Path) -> Result<Self> {
        let tokenizer = ClipTokenizer::from_pipeline_files(
            &std::fs::read(dir.join("tokenizer/tokenizer.json"))?,
            Some(&std::fs::read(dir.join("tokenizer/tokenizer_config.json"))?),
        )?;
        let clip_cfg = oracle::clip(&oracle::raw(&read_text(dir, "text_encoder/config.json")?));
        // The fixture was saved by transformers 5: no `text_model.` prefix.
        let clip = ClipTextTransformer::new(
            weights(dir, "text_encoder", "model.safetensors")?,
            &clip_cfg,
        )?;
        let (unet_cfg, unet_in, unet_out) =
            oracle::unet(&oracle::raw(&read_text(dir, "unet/config.json")?));
        let unet = unet_2d::UNet2DConditionModel::new(
            weights(dir, "unet", "diffusion_pytorch_model.safetensors")?,
            unet_in,
            unet_out,
            false,
            unet_cfg,
        )?;
        let (vae_cfg, vae_in, vae_out, vae_scale) =
            oracle::vae(&oracle::raw(&read_text(dir, "vae/config.json")?));
        let vae = vae::AutoEncoderKL::new(
            weights(dir, "vae", "diffusion_pytorch_model.safetensors")?,
            vae_in,
            vae_out,
            vae_cfg,
        )?;
        let s = oracle::raw(&read_text(dir, "scheduler/scheduler_config.json")?);
        if s["beta_schedule"] != "scaled_linear"
            || s["prediction_type"] != "epsilon"
            || !matches!(s["timestep_spacing"].as_str(), None | Some("leading"))
        {
            return Err("the bench's candle DDIM expects SD 1.5's scheduler config".into());
        }
        let scheduler = DDIMSchedulerConfig {
            beta_start: s["beta_start"].as_f64().ok_or("beta_start")?,
            beta_end: s["beta_end"].as_f64().ok_or("beta_end")?,
            steps_offset: s["steps_offset"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or("steps_offset")?,
            train_timesteps: s["num_train_timesteps"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or("num_train_timesteps")?,
            ..DDIMSchedulerConfig::default()
        };
        Ok(Self {
            tokenizer,
            clip,
            unet,
            vae,
            vae_scale,
            scheduler,
        })
    }

    /// Hidden states `[prompts, 77, D]`.
    fn encode(&self, prompts: &[&str]) -> Result<CTensor> {
        let mut ids = Vec::new();
        for p in prompts {
            ids.extend(self.tokenizer.encode(p)?.ids);
        }
        let len = self.tokenizer.max_length();
        let ids = CTensor::from_vec(ids, (prompts.len(), len), &Device::Cpu)?;
        Ok(self.clip.forward_with_mask(&ids, usize::MAX)?)
    }

    fn unet(&self, latents: &CTensor, t: f64, context: &CTensor) -> Result<CTensor> {
        Ok(self.unet.forward(latents, t, context)?)
    }

    /// Latents `[1, 4, h, w]` as the sampler leaves them to an NHWC image in [0, 1].
    fn decode(&self, latents: &CTensor) -> Result<Vec<f32>> {
        let image = self.vae.decode(&(latents / self.vae_scale)?)?;
        let image = ((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
        Ok(image
            .squeeze(0)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_vec1()?)
    }

    /// A whole CFG generation from unit `noise` `[1, 4, h, w]`.
    fn generate(&self, noise: &CTensor) -> Result<Vec<f32>> {
        let context = self.encode(&["", PROMPT])?;
        let mut scheduler = self.scheduler.build(STEPS)?;
        let mut latents = (noise * scheduler.init_noise_sigma())?;
        let timesteps = scheduler.timesteps().to_vec();
        for t in timesteps {
            let input = CTensor::cat(&[&latents, &latents], 0)?;
            let input = scheduler.scale_model_input(input, t)?;
            let prediction = self.unet(&input, t as f64, &context)?;
            let uncond = prediction.get(0)?;
            let cond = prediction.get(1)?;
            let guided = (&uncond + ((cond - &uncond)? * f64::from(GUIDANCE))?)?.unsqueeze(0)?;
            latents = scheduler.step(&guided, t, &latents)?;
        }
        self.decode(&latents)
    }
}

fn main() -> Result<()> {
    let args = args()?;
    let dir = model_dir();
    let dir = dir.canonicalize().unwrap_or(dir);

    let ctx = pollster::block_on(GpuContext::new(ContextOptions::from_env()?))?;
    let adapter = ctx.describe();
    let start = Instant::now();
    let sd = StableDiffusion::load(Arc::new(ctx), &ModelSource::folder(&dir), DType::F16)?;
    let gpu_load = start.elapsed();
    let start = Instant::now();
    let candle = Candle::load(&dir)?;
    let candle_load = start.elapsed();
    let start = Instant::now();
    let source = ModelSource::folder(&dir);
    let cpu_model = StableDiffusion::load_on(&source, |files| {
        Ok(Box::new(sd_cpu::CpuNetworks::load(
            &source,
            files.configs(),
            &mut |_| {},
        )?))
    })?;
    let cpu_load = start.elapsed();
    println!(
        "model: {} (64x64, {STEPS} steps DDIM, CFG {GUIDANCE})",
        dir.display()
    );
    println!("GPU: {adapter}; weight matrices f16; loaded in {gpu_load:.1?}");
    println!(
        "CPU backend (sd-cpu): loaded in {cpu_load:.1?}; candle alone: candle-transformers 0.11, f32, {} threads; loaded in {candle_load:.1?}",
        candle_core::utils::get_num_threads()
    );
    println!(
        "median of {} runs per stage, {} per generation, after one warm-up\n",
        args.reps, args.gen_reps
    );

    let latent_len = 4 * LATENT * LATENT;
    let noise = NoiseRng::new(SEED).normals(latent_len);
    let cfg_latents: Vec<f32> = noise.iter().chain(&noise).copied().collect();
    let noise_c = CTensor::from_slice(&noise, (1, 4, LATENT, LATENT), &Device::Cpu)?;
    let cfg_latents_c = CTensor::cat(&[&noise_c, &noise_c], 0)?;

    let mut rows: Vec<(&str, f64, f64, f64)> = Vec::new();

    let encode = |model: &StableDiffusion| -> Result<UNetInputs> {
        let (embeddings, _) = pollster::block_on(model.encode_prompts(&["", PROMPT]))?;
        Ok(UNetInputs::context(embeddings.hidden, embeddings.shape))
    };
    let (gpu, context) = time(args.reps, || encode(&sd))?;
    let (ours, cpu_context) = time(args.reps, || encode(&cpu_model))?;
    let (cpu, context_c) = time(args.reps, || candle.encode(&["", PROMPT]))?;
    rows.push(("text encode (2 prompts)", gpu, ours, cpu));

    let unet = |model: &StableDiffusion, inputs: &UNetInputs| -> Result<Vec<f32>> {
        Ok(pollster::block_on(model.predict_noise(
            &cfg_latents,
            [2, 4, LATENT, LATENT],
            T,
            inputs,
        ))?)
    };
    let (gpu, _) = time(args.reps, || unet(&sd, &context))?;
    let (ours, _) = time(args.reps, || unet(&cpu_model, &cpu_context))?;
    let (cpu, _) = time(args.reps, || {
        let out: Vec<f32> = candle
            .unet(&cfg_latents_c, f64::from(T), &context_c)?
            .flatten_all()?
            .to_vec1()?;
        Ok(out)
    })?;
    rows.push(("UNet step (CFG batch 2)", gpu, ours, cpu));

    let decode = |model: &StableDiffusion| -> Result<Vec<f32>> {
        Ok(pollster::block_on(model.decode(&noise, LATENT, LATENT))?)
    };
    let (gpu, _) = time(args.reps, || decode(&sd))?;
    let (ours, _) = time(args.reps, || decode(&cpu_model))?;
    let (cpu, _) = time(args.reps, || candle.decode(&noise_c))?;
    rows.push(("VAE decode", gpu, ours, cpu));

    let params = GenerationParams {
        prompt: PROMPT.into(),
        negative_prompt: String::new(),
        steps: STEPS,
        guidance_scale: GUIDANCE,
        seed: SEED,
        sampler: SamplerKind::DDIM,
        width: SIZE,
        height: SIZE,
        count: 1,
        ..GenerationParams::default()
    };
    let generate = |model: &StableDiffusion| -> Result<sd_models::Generated> {
        Ok(pollster::block_on(model.generate(
            &params,
            &sd_models::Inputs {
                initial_latents: Some(&noise),
                ..sd_models::Inputs::default()
            },
            &mut |_| {},
            None,
        ))?)
    };
    let (gpu, generated) = time(args.gen_reps, || generate(&sd))?;
    let (ours, generated_cpu) = time(args.gen_reps, || generate(&cpu_model))?;
    let (cpu, image_c) = time(args.gen_reps, || candle.generate(&noise_c))?;
    rows.push(("whole generation (20 steps)", gpu, ours, cpu));

    println!(
        "{:<30} {:>10} {:>16} {:>14} {:>10} {:>14}",
        "stage", "GPU ms", "CPU backend ms", "candle ms", "GPU / CPU", "backend / candle"
    );
    for (stage, gpu, ours, cpu) in rows {
        println!(
            "{stage:<30} {gpu:>10.1} {ours:>16.1} {cpu:>14.1} {:>10.2} {:>14.2}",
            gpu / ours,
            ours / cpu
        );
    }
    let image = generated.pixels.first().ok_or("no image generated")?;
    let image_cpu = generated_cpu.pixels.first().ok_or("no image generated")?;
    println!(
        "\nfinal image, CPU backend vs candle alone (same f32 networks): {}",
        Comparison::new(image_cpu, &image_c)
    );
    println!(
        "\nfinal image, GPU (f16 weights) vs candle (f32, tanh GELU): {}",
        Comparison::new(image, &image_c)
    );
    Ok(())
}
