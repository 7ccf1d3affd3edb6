//! `cargo xtask bench sd15`: SD 1.5 at its real sizes, per op, on the adapter wgpu picks.
//!
//! Why: speed at SD 1.5 scale had never been measured. This times what a 512x512 image costs,
//! op by op, so every kernel change and fusion is judged by numbers measured in one run.
//!
//! Model: SD 1.5's configs (`shared/fixtures/configs/sd15`), the real CLIP tokenizer (the digits
//! fixture's), and seeded random f16 weights scaled like a real init, written once as a
//! diffusers folder (`--model-dir`, default `target/bench-sd15/model`; 2.1 GB) and reused.
//!
//! What, per part (the text encoder on the CFG pair, one UNet call with CFG, the VAE decode):
//! - the wall time of the part as the pipeline runs it (one submission, waited for), the median
//!   of `--reps` runs after a warm-up that compiles the kernels;
//! - the GPU time of every op, from timestamp queries around each dispatch where the adapter has
//!   them, otherwise the wall time of one submission per command (the table says which);
//! - per op family and per diffusers block: milliseconds, achieved TFLOP/s and GB/s (FLOPs and
//!   bytes from the cost model, `sd_models::cost`), dispatches.
//!
//! Then one whole `--steps`-step generation through `StableDiffusion::generate`: its wall time
//! and, per denoising step, the dispatches, submissions and readbacks.
//!
//! Projection: the time of a 20-step 512x512 image, from each op's measured throughput scaled
//! by the cost model's FLOPs (bytes for ops without FLOPs) at 512x512, plus the measured
//! per-step overhead of the pipeline. At `--size 512` it is the measured parts.
//!
//! `--json PATH` writes all of it; `--baseline PATH` (another run's JSON, e.g. of another
//! revision: `cargo xtask bench sd15 --against REV`) prints the ratios per part and family.
//!
//! Run: `cargo run --release -p sd-tests --example bench_sd15 -- [--size N] [--steps N]
//! [--reps N] [--json PATH] [--baseline PATH] [--model-dir DIR]`.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sd_core::params::GenerationParams;
use sd_core::progress::Stage;
use sd_core::sampler::SamplerKind;
use sd_kernels::{Batch, ContextOptions, DType, GpuContext, Tensor, Timing, WorkCount};
use sd_models::cost::OpCost;
use sd_models::gpu::{GpuRecorder, Issued};
use sd_models::nets::clip::{TextOutput, TextRequest, clip_text_model};
use sd_models::nets::unet::{UNetSize, unet_2d_condition_model};
use sd_models::nets::vae;
use sd_models::plan::{
    DeviceLimits, Part, PlanRequest, plan_text_encoder, plan_unet, plan_unet_context,
    plan_vae_decoder, plan_vae_encoder,
};
use sd_models::{
    CLIPTextModel, Inputs, ModelSource, NetworkConfigFiles, StableDiffusion, UNet2DConditionModel,
    VaeDecoder, WeightLoader,
};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const SEED: u64 = 0x5d15;
/// CLIP's start and end tokens.
const BOS: u32 = 49406;
const EOS: u32 = 49407;
/// The size and steps the projection is for.
const TARGET_SIZE: u32 = 512;
const TARGET_STEPS: usize = 20;

struct Args {
    size: Option<u32>,
    steps: Option<usize>,
    reps: usize,
    json: Option<PathBuf>,
    baseline: Option<PathBuf>,
    model_dir: PathBuf,
    parts: Vec<String>,
}

/// What `--parts` may name.
const PARTS: [&str; 4] = ["text", "unet", "vae", "generation"];

fn args() -> Result<Args> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let mut out = Args {
        size: None,
        steps: None,
        reps: 3,
        json: None,
        baseline: None,
        model_dir: target.join("bench-sd15/model"),
        parts: PARTS.map(String::from).to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let count = |v: String| -> Result<usize> {
            match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{flag}: `{v}` is not a count of at least 1").into()),
            }
        };
        match flag.as_str() {
            "--size" => {
                let size = count(value()?)?;
                if size % 64 != 0 {
                    return Err(format!("--size {size}: must be a multiple of 64").into());
                }
                out.size = Some(u32::try_from(size)?);
            }
            "--steps" => out.steps = Some(count(value()?)?),
            "--reps" => out.reps = count(value()?)?,
            "--json" => out.json = Some(value()?.into()),
            "--baseline" => out.baseline = Some(value()?.into()),
            "--model-dir" => out.model_dir = value()?.into(),
            "--parts" => {
                out.parts = value()?.split(',').map(String::from).collect();
                if let Some(bad) = out.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    return Err(format!("--parts: `{bad}` is not one of {PARTS:?}").into());
                }
            }
            "-h" | "--help" => {
                println!(
                    "bench_sd15 [--size N (512 on a GPU, 128 on a software adapter)] \
                     [--steps N (20; 2 on a software adapter)] [--reps N (3)] [--json PATH] \
                     [--baseline PATH] [--model-dir DIR] [--parts text,unet,vae,generation]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    Ok(out)
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

/// Limits that split nothing: the walks that list the weights.
const NO_LIMITS: DeviceLimits = DeviceLimits {
    max_storage_binding: u64::MAX,
    max_buffer: u64::MAX,
};

/// Writes SD 1.5 with random f16 weights as a diffusers folder, unless it is there already.
fn random_model(dir: &Path) -> Result<()> {
    let done = dir.join("complete");
    if done.exists() {
        return Ok(());
    }
    let start = Instant::now();
    let configs = fixtures().join("configs/sd15");
    let digits = fixtures().join("tiny-sd-digits");
    for (from, to) in [
        (
            configs.join("text_encoder/config.json"),
            "text_encoder/config.json",
        ),
        (configs.join("unet/config.json"), "unet/config.json"),
        (configs.join("vae/config.json"), "vae/config.json"),
        (
            configs.join("scheduler/scheduler_config.json"),
            "scheduler/scheduler_config.json",
        ),
        (digits.join("model_index.json"), "model_index.json"),
    ] {
        std::fs::create_dir_all(dir.join(to).parent().ok_or("no parent")?)?;
        std::fs::copy(&from, dir.join(to)).map_err(|e| format!("{}: {e}", from.display()))?;
    }
    std::fs::create_dir_all(dir.join("tokenizer"))?;
    for entry in std::fs::read_dir(digits.join("tokenizer"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join("tokenizer").join(entry.file_name()))?;
    }
    let files = NetworkConfigFiles::read(&ModelSource::folder(dir))?;
    let configs = files.configs();
    let unet_size = UNetSize {
        batch: 1,
        height: 8,
        width: 8,
        text_len: configs.text_encoder.max_position_embeddings,
    };
    let text = plan_text_encoder(configs.text_encoder, Part::TextEncoder, 1, &NO_LIMITS)?;
    let unet = plan_unet(configs.unet, &unet_size, &NO_LIMITS)?;
    let unet_context = plan_unet_context(configs.unet, &unet_size, &NO_LIMITS)?;
    let decoder = plan_vae_decoder(configs.vae, 8, 8, &NO_LIMITS)?;
    let encoder = plan_vae_encoder(configs.vae, 64, 64, &NO_LIMITS)?;
    // The file's tensors: an assembled weight (Q, K and V stacked, GEGLU's rows paired) is
    // made of them.
    let list = |weights: &[&[sd_models::plan::Weight]]| {
        let mut named = BTreeMap::new();
        for w in weights.iter().flat_map(|w| w.iter()) {
            for (name, shape) in w.assembly.sources(&w.name, &w.shape) {
                named.insert(name.to_owned(), shape.to_vec());
            }
        }
        named.into_iter().collect::<Vec<_>>()
    };
    for (file, weights) in [
        ("text_encoder/model.safetensors", list(&[&text.weights])),
        (
            "unet/diffusion_pytorch_model.safetensors",
            list(&[&unet_context.weights, &unet.weights]),
        ),
        (
            "vae/diffusion_pytorch_model.safetensors",
            list(&[&decoder.weights, &encoder.weights]),
        ),
    ] {
        std::fs::write(
            dir.join(file),
            sd_tests::random_safetensors_f16(&weights, SEED),
        )?;
    }
    std::fs::write(&done, "")?;
    println!(
        "wrote SD 1.5 with random f16 weights to {} in {:.1} s",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Loads weights from `weights` with f16 matrices, as the pipeline does.
fn f16_loader<'a>(ctx: &'a GpuContext, weights: &'a sd_weights::WeightSource) -> WeightLoader<'a> {
    WeightLoader {
        ctx,
        scope: weights.root(),
        matrices: DType::F16,
    }
}

/// The measured time of one op.
struct OpTime {
    cost: OpCost,
    seconds: f64,
    /// Commands the GPU recorder issued for it (more than the cost model's unsplit count where
    /// tensors are split into chunks).
    commands: usize,
}

/// One part's measurements.
struct PartTimes {
    name: &'static str,
    wall_ms: f64,
    ops: Vec<OpTime>,
}

impl PartTimes {
    fn profiled_ms(&self) -> f64 {
        self.ops.iter().map(|o| o.seconds).sum::<f64>() * 1e3
    }
}

/// Records one call of a part into `batch`; returns what each op issued.
type RecordPart<'a> = dyn Fn(&mut Batch<'_>) -> Result<Vec<Issued>> + 'a;

/// Times a part: `reps` plain submissions (after a warm-up), then one profiled submission whose
/// commands are summed per op and matched with the cost model's ops, path by path.
fn time_part(
    ctx: &GpuContext,
    name: &'static str,
    record: &RecordPart<'_>,
    cost: Vec<OpCost>,
    reps: usize,
) -> Result<(PartTimes, Timing)> {
    let run = || -> Result<f64> {
        let start = Instant::now();
        let mut batch = ctx.batch();
        record(&mut batch)?;
        pollster::block_on(batch.submit())?;
        pollster::block_on(ctx.finish())?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    run()?;
    let mut ms: Vec<f64> = (0..reps).map(|_| run()).collect::<Result<_>>()?;
    ms.sort_by(f64::total_cmp);

    let mut batch = ctx.batch();
    let issued = record(&mut batch)?;
    let profile = pollster::block_on(batch.submit_profiled())?;
    if issued.len() != cost.len() {
        return Err(format!(
            "{name}: {} ops issued, the cost model counts {}",
            issued.len(),
            cost.len()
        )
        .into());
    }
    let mut seconds = profile.seconds.iter();
    let mut ops = Vec::with_capacity(cost.len());
    for (op, cost) in issued.iter().zip(cost) {
        if op.path != cost.path {
            return Err(format!(
                "{name}: issued {} where the cost model has {}",
                op.path, cost.path
            )
            .into());
        }
        let s = seconds.by_ref().take(op.commands).sum();
        ops.push(OpTime {
            cost,
            seconds: s,
            commands: op.commands,
        });
    }
    Ok((
        PartTimes {
            name,
            wall_ms: ms[ms.len() / 2],
            ops,
        },
        profile.timing,
    ))
}

fn random_tensor(ctx: &GpuContext, shape: &[usize], seed: u64) -> Result<Tensor> {
    let n = shape.iter().product();
    let values = sd_tests::Rng::new(seed).uniform(n, 1.0);
    Ok(ctx.upload_f32(&values, shape)?)
}

/// The family of an op for the tables: its kind, with the elementwise kinds together.
fn family(kind: &str) -> &str {
    match kind {
        "conv2d" | "linear" | "attention" | "group_norm" | "layer_norm" => kind,
        _ => "elementwise and layout",
    }
}

/// The diffusers block of an op path: `down_blocks.1`, `mid_block`, `conv_in`, ...
fn block(path: &str) -> String {
    let mut parts = path.split('.');
    match (parts.next(), parts.next()) {
        (Some(top @ ("down_blocks" | "up_blocks" | "encoder" | "decoder")), Some(i)) => {
            if top == "decoder" || top == "encoder" {
                // The VAE: one level deeper (`decoder.up_blocks.2`).
                match (i, parts.next()) {
                    (b @ ("up_blocks" | "down_blocks"), Some(j)) => format!("{top}.{b}.{j}"),
                    _ => format!("{top}.{i}"),
                }
            } else {
                format!("{top}.{i}")
            }
        }
        (Some(top), _) => top.to_owned(),
        (None, _) => String::new(),
    }
}

/// Per group: milliseconds, FLOPs, bytes, commands issued (dispatches and copies).
#[derive(Default, Clone, Copy)]
struct Sum {
    ms: f64,
    flops: u64,
    bytes: u64,
    dispatches: usize,
}

fn group<'a>(ops: &'a [OpTime], key: impl Fn(&'a OpTime) -> String) -> Vec<(String, Sum)> {
    let mut order = Vec::new();
    let mut sums: BTreeMap<String, Sum> = BTreeMap::new();
    for op in ops {
        let k = key(op);
        let sum = sums.entry(k.clone()).or_insert_with(|| {
            order.push(k);
            Sum::default()
        });
        sum.ms += op.seconds * 1e3;
        sum.flops += op.cost.flops;
        sum.bytes += op.cost.bytes_read + op.cost.bytes_written;
        sum.dispatches += op.commands;
    }
    order.into_iter().map(|k| (k.clone(), sums[&k])).collect()
}

fn print_groups(title: &str, groups: &[(String, Sum)]) {
    println!(
        "  {:<28} {:>10} {:>6} {:>10} {:>9} {:>9} {:>6}",
        title, "ms", "%", "GFLOP", "TFLOP/s", "GB/s", "disp"
    );
    let total: f64 = groups.iter().map(|(_, s)| s.ms).sum();
    for (name, s) in groups {
        println!(
            "  {:<28} {:>10.2} {:>6.1} {:>10.2} {:>9.4} {:>9.2} {:>6}",
            name,
            s.ms,
            100.0 * s.ms / total.max(1e-12),
            s.flops as f64 / 1e9,
            s.flops as f64 / 1e12 / (s.ms / 1e3).max(1e-12),
            s.bytes as f64 / 1e9 / (s.ms / 1e3).max(1e-12),
            s.dispatches
        );
    }
}

fn groups_json(groups: &[(String, Sum)]) -> Value {
    Value::Array(
        groups
            .iter()
            .map(|(name, s)| {
                json!({
                    "name": name,
                    "ms": s.ms,
                    "gflop": s.flops as f64 / 1e9,
                    "gbytes": s.bytes as f64 / 1e9,
                    "dispatches": s.dispatches,
                })
            })
            .collect(),
    )
}

/// Seconds this part would take at the target size: each op's measured time scaled by its
/// FLOPs there (bytes for ops without FLOPs).
fn projected_seconds(part: &PartTimes, at_target: &[OpCost]) -> Result<f64> {
    if part.ops.len() != at_target.len() {
        return Err(format!("{}: another op count at {TARGET_SIZE}", part.name).into());
    }
    Ok(part
        .ops
        .iter()
        .zip(at_target)
        .map(|(op, target)| {
            let (now, then) = if op.cost.flops > 0 {
                (op.cost.flops, target.flops)
            } else {
                (
                    op.cost.bytes_read + op.cost.bytes_written,
                    target.bytes_read + target.bytes_written,
                )
            };
            op.seconds * then as f64 / (now as f64).max(1.0)
        })
        .sum())
}

fn main() -> Result<()> {
    let args = args()?;
    let ctx = Arc::new(pollster::block_on(GpuContext::new(
        ContextOptions::from_env()?,
    ))?);
    let software = ctx.adapter_info().device_type == sd_kernels::wgpu::DeviceType::Cpu;
    let size = args
        .size
        .unwrap_or(if software { 128 } else { TARGET_SIZE });
    let steps = args
        .steps
        .unwrap_or(if software { 2 } else { TARGET_STEPS });
    println!("adapter: {}", ctx.describe());
    println!(
        "SD 1.5 (random f16 weights) at {size}x{size}, CFG, {steps}-step generation{}",
        if software && args.size.is_none() {
            " (a software adapter: --size 128 and --steps 2 unless asked; 512 takes hours)"
        } else {
            ""
        }
    );
    random_model(&args.model_dir)?;
    let source = ModelSource::folder(&args.model_dir);
    let files = NetworkConfigFiles::read(&source)?;
    let configs = files.configs();
    let latent = size as usize / 8;
    let text_len = configs.text_encoder.max_position_embeddings;
    let request = |side: u32| PlanRequest {
        width: side,
        height: side,
        images: 1,
        classifier_free_guidance: true,
    };
    let costs = sd_models::cost::cost(&configs, &request(size))?;
    let target_costs = sd_models::cost::cost(&configs, &request(TARGET_SIZE))?;
    let ops_of = |costs: &[sd_models::cost::PartCost], part: Part| {
        costs
            .iter()
            .find(|p| p.part == part)
            .map(|p| p.ops.clone())
            .ok_or_else(|| format!("no cost for {part:?}"))
    };

    let wants = |part: &str| args.parts.iter().any(|p| p == part);
    let mut parts = Vec::new();
    let mut timing = None;
    // Times one part and keeps its ops' costs at the target size beside it.
    let mut measure = |name: &'static str, part: Part, record: &RecordPart<'_>| -> Result<()> {
        let (t, how) = time_part(&ctx, name, record, ops_of(&costs, part)?, args.reps)?;
        parts.push((t, ops_of(&target_costs, part)?));
        timing = Some(how);
        Ok(())
    };
    // The text encoder on the CFG pair.
    if wants("text") {
        let weights = source.weights("text_encoder")?;
        let model = CLIPTextModel::load(configs.text_encoder, &f16_loader(&ctx, &weights))?;
        let mut ids = vec![EOS; 2 * text_len];
        for row in ids.chunks_mut(text_len) {
            row[0] = BOS;
        }
        ids[text_len + 1] = 320; // "a"
        let ids_gpu = ctx.upload_u32(&ids, &[2, text_len])?;
        let request = TextRequest {
            prompts: 2,
            output: TextOutput::Last,
            pooled_at: None,
        };
        let record = |batch: &mut Batch<'_>| -> Result<Vec<Issued>> {
            let mut r = GpuRecorder::new(batch, model.weights(), "text_encoder", 0)
                .with_input("input_ids", ids_gpu.clone())
                .with_host_ids(&ids);
            clip_text_model(&mut r, configs.text_encoder, &request)?;
            Ok(r.issued().to_vec())
        };
        measure("text encoder", Part::TextEncoder, &record)?;
    }
    // One UNet call with CFG (batch 2).
    if wants("unet") {
        let weights = source.weights("unet")?;
        let model = UNet2DConditionModel::load(configs.unet, &f16_loader(&ctx, &weights))?;
        let cross = configs.unet.cross_attention_dim_per_block()[0];
        let sample = random_tensor(&ctx, &[2, 4, latent, latent], 1)?;
        let timestep = ctx.upload_f32(&[500.0, 500.0], &[2])?;
        let context = random_tensor(&ctx, &[2, text_len, cross], 2)?;
        let inputs = UNetSize {
            batch: 2,
            height: latent,
            width: latent,
            text_len,
        };
        let groups = configs.unet.norm_num_groups.unwrap_or(0);
        // The text's keys and values are projected once per generation, before the calls.
        let mut batch = ctx.batch();
        let text = model.project_context(&mut batch, &context)?;
        pollster::block_on(batch.submit())?;
        let record = |batch: &mut Batch<'_>| -> Result<Vec<Issued>> {
            let mut r = GpuRecorder::new(batch, model.weights(), "unet", groups)
                .with_input("sample", sample.clone())
                .with_input("timestep", timestep.clone());
            for (name, kv) in text.tensors() {
                r = r.with_input(name, kv.clone());
            }
            unet_2d_condition_model(&mut r, configs.unet, &inputs)?;
            Ok(r.issued().to_vec())
        };
        measure("UNet call (CFG)", Part::UNet, &record)?;
    }
    // The VAE decode.
    if wants("vae") {
        let weights = source.weights("vae")?;
        let model = VaeDecoder::load(configs.vae, &f16_loader(&ctx, &weights))?;
        let latents = random_tensor(&ctx, &[1, 4, latent, latent], 3)?;
        let record = |batch: &mut Batch<'_>| -> Result<Vec<Issued>> {
            let mut r =
                GpuRecorder::new(batch, model.weights(), "vae", configs.vae.norm_num_groups)
                    .with_input("latents", latents.clone());
            vae::decoder(&mut r, configs.vae, (latent, latent))?;
            Ok(r.issued().to_vec())
        };
        measure("VAE decode", Part::VaeDecoder, &record)?;
    }
    let timing_label = match timing {
        Some(Timing::Timestamps) => "GPU timestamps around each dispatch",
        Some(Timing::SeparateSubmissions) => {
            "no timestamp queries: wall time of one submission per command"
        }
        None => "no part profiled",
    };
    let generation = if wants("generation") {
        Some(generate(&ctx, &source, size, steps)?)
    } else {
        None
    };

    // Report.
    println!("\ntiming: {timing_label}");
    let mut parts_json = serde_json::Map::new();
    let mut projected = BTreeMap::new();
    for (part, at_target) in &parts {
        let flops: u64 = part.ops.iter().map(|o| o.cost.flops).sum();
        let dispatches: usize = part.ops.iter().map(|o| o.commands).sum();
        println!(
            "\n{}: {:.1} ms as one submission (median of {}), {:.1} ms profiled; {:.1} GFLOP, {:.4} TFLOP/s, {} dispatches",
            part.name,
            part.wall_ms,
            args.reps,
            part.profiled_ms(),
            flops as f64 / 1e9,
            flops as f64 / 1e12 / (part.wall_ms / 1e3),
            dispatches
        );
        let families = group(&part.ops, |o| family(o.cost.kind).to_owned());
        let blocks = group(&part.ops, |o| block(&o.cost.path));
        print_groups("op family", &families);
        print_groups("block", &blocks);
        let seconds = projected_seconds(part, at_target)?;
        projected.insert(part.name, seconds);
        parts_json.insert(
            part.name.into(),
            json!({
                "wall_ms": part.wall_ms,
                "profiled_ms": part.profiled_ms(),
                "gflop": flops as f64 / 1e9,
                "dispatches": dispatches,
                "families": groups_json(&families),
                "blocks": groups_json(&blocks),
                "projected_ms_at_512": seconds * 1e3,
            }),
        );
    }
    let unet_ms = parts
        .iter()
        .find(|(p, _)| p.name == "UNet call (CFG)")
        .map(|(p, _)| p.wall_ms);
    let mut report = json!({
        "adapter": ctx.describe(),
        "timing": timing_label,
        "size": size,
        "steps": steps,
        "parts": parts_json,
    });
    if let Some(g) = &generation {
        let per_step = |n: u64| n as f64 / g.steps;
        let overhead = unet_ms.map(|unet| (g.step_ms - unet).max(0.0));
        println!(
            "\nwhole generation: {:.1} ms for {steps} steps at {size}x{size}; per step {:.1} ms{}, \
             {:.0} dispatches, {:.1} submissions, {:.1} readbacks, {:.1} bind groups made",
            g.wall_ms,
            g.step_ms,
            overhead.map_or(String::new(), |o| format!(
                " ({o:.1} ms beyond the UNet call)"
            )),
            per_step(g.work.dispatches),
            per_step(g.work.submissions),
            per_step(g.work.readbacks),
            per_step(g.work.bind_groups)
        );
        report["generation"] = json!({
            "wall_ms": g.wall_ms,
            "step_ms": g.step_ms,
            "per_step": {
                "dispatches": per_step(g.work.dispatches),
                "submissions": per_step(g.work.submissions),
                "readbacks": per_step(g.work.readbacks),
                "bind_groups": per_step(g.work.bind_groups),
            },
        });
        // The projection needs every part and the per-step overhead.
        if let (Some(overhead), 3) = (overhead, parts.len()) {
            let scaled = |name: &str| {
                let wall = parts
                    .iter()
                    .find(|(p, _)| p.name == name)
                    .map_or(1.0, |(p, _)| p.wall_ms / p.profiled_ms().max(1e-9));
                projected.get(name).copied().unwrap_or(0.0) * 1e3 * wall
            };
            let image_ms = scaled("text encoder")
                + TARGET_STEPS as f64 * (scaled("UNet call (CFG)") + overhead)
                + scaled("VAE decode");
            println!(
                "projected 20-step 512x512 image: {image_ms:.0} ms (each op's throughput here, scaled \
                 by the cost model's work at 512 and by each part's one-submission/profiled ratio; \
                 {overhead:.1} ms per-step overhead)"
            );
            report["projected_20_steps_512_ms"] = json!(image_ms);
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.baseline {
        compare(&report, path)?;
    }
    Ok(())
}

/// What a whole generation measured.
struct GenerationTimes {
    wall_ms: f64,
    step_ms: f64,
    steps: f64,
    work: WorkCount,
}

/// One whole generation through `StableDiffusion::generate`, timed per denoising step.
fn generate(
    ctx: &Arc<GpuContext>,
    source: &ModelSource,
    size: u32,
    steps: usize,
) -> Result<GenerationTimes> {
    let sd = StableDiffusion::load(Arc::clone(ctx), source, DType::F16)?;
    let params = GenerationParams {
        prompt: "a photograph of an astronaut riding a horse".into(),
        negative_prompt: String::new(),
        steps,
        guidance_scale: 7.5,
        seed: 42,
        sampler: SamplerKind::EULER,
        width: size,
        height: size,
        count: 1,
        strength: GenerationParams::default().strength,
        sample_init_latents: false,
        latents_len: None,
    };
    let mut marks: Vec<(Instant, WorkCount)> = Vec::new();
    let mut on_stage = |stage: Stage| {
        if matches!(stage, Stage::Diffusion { .. } | Stage::Decode) {
            marks.push((Instant::now(), ctx.work()));
        }
    };
    let start = Instant::now();
    pollster::block_on(sd.generate(&params, &Inputs::default(), &mut on_stage, None))?;
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    // Marks: before step 1, after each step, then the decode's start.
    let step_marks = &marks[..marks.len().min(steps + 1)];
    let (first, last) = (step_marks[0], step_marks[step_marks.len() - 1]);
    let denoise_steps = (step_marks.len() - 1).max(1) as f64;
    Ok(GenerationTimes {
        wall_ms,
        step_ms: last.0.duration_since(first.0).as_secs_f64() * 1e3 / denoise_steps,
        steps: denoise_steps,
        work: last.1 - first.1,
    })
}

/// Prints this run against another run's JSON: per part and op family, baseline / this.
fn compare(this: &Value, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base: Value = serde_json::from_str(&text)?;
    if base["size"] != this["size"] {
        return Err(format!(
            "the baseline ran at size {}, this at {}",
            base["size"], this["size"]
        )
        .into());
    }
    println!(
        "\nagainst {} (speed-up = baseline time / this time)",
        path.display()
    );
    println!(
        "  {:<40} {:>12} {:>12} {:>9} {:>12}",
        "", "baseline ms", "this ms", "speed-up", "dispatches"
    );
    let row = |label: &str, b: &Value, t: &Value, bd: &Value, td: &Value| {
        if let (Some(b), Some(t)) = (b.as_f64(), t.as_f64()) {
            println!(
                "  {:<40} {:>12.1} {:>12.1} {:>8.2}x {:>5} -> {:<5}",
                label,
                b,
                t,
                b / t.max(1e-9),
                bd,
                td
            );
        }
    };
    let parts = this["parts"].as_object().ok_or("no parts")?;
    for (name, part) in parts {
        let b = &base["parts"][name];
        row(
            &format!("{name} (one submission)"),
            &b["wall_ms"],
            &part["wall_ms"],
            &b["dispatches"],
            &part["dispatches"],
        );
        for family in part["families"].as_array().into_iter().flatten() {
            let bf = b["families"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["name"] == family["name"]);
            let null = Value::Null;
            let bf = bf.unwrap_or(&null);
            row(
                &format!("  {}", family["name"].as_str().unwrap_or("?")),
                &bf["ms"],
                &family["ms"],
                &bf["dispatches"],
                &family["dispatches"],
            );
        }
    }
    row(
        "whole generation",
        &base["generation"]["wall_ms"],
        &this["generation"]["wall_ms"],
        &base["generation"]["per_step"]["dispatches"],
        &this["generation"]["per_step"]["dispatches"],
    );
    row(
        "projected 20 steps at 512",
        &base["projected_20_steps_512_ms"],
        &this["projected_20_steps_512_ms"],
        &Value::Null,
        &Value::Null,
    );
    Ok(())
}
