//! `sd bench kernels`: GFLOP/s of the heavy kernels at SD 1.5 layer shapes, and the plain-Rust
//! CPU reference on the same shapes in the same run, as a ratio.
//!
//! GPU time is wall time from submission to completion of `iters` back-to-back dispatches in one
//! batch (submission overhead amortised), after one warm-up run that also compiles the pipeline.
//! The CPU reference is single-threaded with f64 accumulation: a correctness oracle, not a tuned
//! BLAS, so the ratio says how far the GPU path is from a naive CPU, nothing more.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sd_kernels::ops::{self, AttentionShape, Conv2dChunk, Conv2dShape};
use sd_kernels::{Batch, DType, GpuContext, Tensor, reference};

#[derive(Debug, Args)]
pub struct KernelBenchArgs {
    /// Dispatches per timed batch.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Run the full SD 1.5 shapes even on a software adapter (slow: minutes).
    #[arg(long)]
    full: bool,
    /// Skip the CPU reference (it takes seconds per case at full size).
    #[arg(long)]
    no_cpu: bool,
}

/// Records one case's dispatches into a batch.
type Record = Box<dyn Fn(&mut Batch<'_>) -> sd_kernels::Result<()>>;

/// One benchmark case: the GPU recording and the CPU reference of the same op.
struct Case {
    name: String,
    flops: f64,
    record: Record,
    cpu: Box<dyn Fn()>,
}

fn random(rng: &mut SmallRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

pub fn kernels(ctx: &GpuContext, args: &KernelBenchArgs) -> Result<()> {
    let software = ctx.adapter_info().device_type == sd_kernels::wgpu::DeviceType::Cpu;
    // On a software adapter (1-3 GFLOP/s) the SD 1.5 shapes are scaled down in the token or
    // pixel dimension only; channel and head sizes stay real.
    let scale = if software && !args.full { 16 } else { 1 };
    println!("adapter: {}", ctx.describe());
    if scale > 1 {
        println!(
            "software adapter: token/pixel counts divided by {scale} (channels and heads as SD 1.5; --full for all)"
        );
    }
    let mut rng = SmallRng::seed_from_u64(7);
    let mut cases = Vec::new();
    // Linear layers of SD 1.5's UNet with CFG (batch 2): attention projections at 64x64
    // latents, the GEGLU projection, and the 1280-wide projections at 16x16.
    for (label, rows, n, k) in [
        ("linear to_q 64x64", 2 * 4096 / scale, 320, 320),
        ("linear geglu proj 64x64", 2 * 4096 / scale, 2560, 320),
        ("linear to_q 16x16", 2 * 256 / scale.min(4), 1280, 1280),
    ] {
        for dtype in [DType::F16, DType::F32] {
            cases.push(linear_case(
                ctx,
                &mut rng,
                format!("{label} [{rows}x{k}]x[{n}x{k}]^T {dtype:?}"),
                rows,
                n,
                k,
                dtype,
            )?);
        }
    }
    // 3x3 convolutions: the ResNet conv at 64x64 and the 1280-channel conv at 8x8.
    let side = if scale > 1 { 16 } else { 64 };
    for (label, ic, oc, hw) in [
        ("conv3x3 320->320", 320, 320, side),
        ("conv3x3 1280->1280", 1280, 1280, 8),
    ] {
        cases.push(conv_case(
            ctx,
            &mut rng,
            format!("{label} at {hw}x{hw} batch 2 f16"),
            ic,
            oc,
            hw,
        )?);
    }
    // Self-attention at 64x64 latents: 4096 tokens, 8 heads of 40, batch 2.
    let tokens = 4096 / scale.min(4);
    cases.push(attention_case(
        ctx,
        &mut rng,
        format!("attention self {tokens} tokens 8x40 batch 2"),
        tokens,
        8,
        40,
        2,
    )?);

    println!(
        "{:<58} {:>9} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "case", "GFLOP", "GPU ms", "GPU GF/s", "CPU ms", "CPU GF/s", "GPU/CPU"
    );
    for case in &cases {
        let gpu_s = time_gpu(ctx, case, args.iters)?;
        let gflop = case.flops / 1e9;
        let (cpu_ms, cpu_gfs, ratio) = if args.no_cpu {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            let start = Instant::now();
            (case.cpu)();
            let cpu_s = start.elapsed().as_secs_f64();
            (
                format!("{:.1}", cpu_s * 1e3),
                format!("{:.2}", gflop / cpu_s),
                format!("{:.2}x", cpu_s / gpu_s),
            )
        };
        println!(
            "{:<58} {:>9.3} {:>10.2} {:>10.2} {:>10} {:>10} {:>8}",
            case.name,
            gflop,
            gpu_s * 1e3,
            gflop / gpu_s,
            cpu_ms,
            cpu_gfs,
            ratio
        );
    }
    Ok(())
}

fn time_gpu(ctx: &GpuContext, case: &Case, iters: usize) -> Result<f64> {
    let mut warm = ctx.batch();
    (case.record)(&mut warm)?;
    pollster::block_on(warm.submit())?;
    pollster::block_on(ctx.finish())?;
    let mut batch = ctx.batch();
    for _ in 0..iters.max(1) {
        (case.record)(&mut batch)?;
    }
    let start = Instant::now();
    pollster::block_on(batch.submit())?;
    pollster::block_on(ctx.finish())?;
    Ok(start.elapsed().as_secs_f64() / iters.max(1) as f64)
}

fn linear_case(
    ctx: &GpuContext,
    rng: &mut SmallRng,
    name: String,
    rows: usize,
    n: usize,
    k: usize,
    dtype: DType,
) -> Result<Case> {
    let (x, w, b) = (random(rng, rows * k), random(rng, n * k), random(rng, n));
    let (xg, wg, bg) = (
        ctx.upload_f32(&x, &[rows, k])?,
        ctx.upload_weight(&w, &[n, k], dtype)?,
        ctx.upload_f32(&b, &[n])?,
    );
    let y: Tensor = ctx.empty(&[rows, n], DType::F32)?;
    Ok(Case {
        name,
        flops: 2.0 * (rows * n * k) as f64,
        record: Box::new(move |batch| ops::linear(batch, &xg, &wg, Some(&bg), &y)),
        cpu: Box::new(move || {
            std::hint::black_box(reference::linear(&x, &w, Some(&b), rows, n, k));
        }),
    })
}

fn conv_case(
    ctx: &GpuContext,
    rng: &mut SmallRng,
    name: String,
    ic: usize,
    oc: usize,
    hw: usize,
) -> Result<Case> {
    let n = 2;
    let (x, w, b) = (
        random(rng, n * ic * hw * hw),
        random(rng, oc * ic * 9),
        random(rng, oc),
    );
    let xg = ctx.upload_f32(&x, &[n, ic, hw, hw])?;
    let wg = ctx.upload_weight(&w, &[oc, ic, 3, 3], DType::F16)?;
    let bg = ctx.upload_f32(&b, &[oc])?;
    let y = ctx.empty(&[n, oc, hw, hw], DType::F32)?;
    let shape = Conv2dShape::symmetric(1, 1);
    Ok(Case {
        name,
        flops: 2.0 * (n * oc * hw * hw * ic * 9) as f64,
        record: Box::new(move |batch| {
            ops::conv2d(batch, &xg, &wg, Some(&bg), &y, shape, Conv2dChunk::WHOLE)
        }),
        cpu: Box::new(move || {
            std::hint::black_box(reference::conv2d(
                &x,
                [n, ic, hw, hw],
                &w,
                [oc, 3, 3],
                Some(&b),
                1,
                (1, 1),
            ));
        }),
    })
}

fn attention_case(
    ctx: &GpuContext,
    rng: &mut SmallRng,
    name: String,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    batch: usize,
) -> Result<Case> {
    let width = heads * head_dim;
    let len = batch * tokens * width;
    let (q, k, v) = (random(rng, len), random(rng, len), random(rng, len));
    let shape3 = [batch, tokens, width];
    let (qg, kg, vg) = (
        ctx.upload_f32(&q, &shape3)?,
        ctx.upload_f32(&k, &shape3)?,
        ctx.upload_f32(&v, &shape3)?,
    );
    let o = ctx.empty(&shape3, DType::F32)?;
    let shape = AttentionShape {
        batch,
        heads,
        head_dim,
        q_len: tokens,
        kv_len: tokens,
        causal: false,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    Ok(Case {
        name,
        // QK^T and PV: 2 multiply-adds per (query, key, dim).
        flops: 4.0 * (batch * heads * tokens * tokens * head_dim) as f64,
        record: Box::new(move |b| ops::attention(b, &qg, &kg, &vg, &o, shape)),
        cpu: Box::new(move || {
            std::hint::black_box(reference::attention(
                &q,
                &k,
                &v,
                [batch, heads, head_dim, tokens, tokens],
                false,
                shape.scale,
                0..tokens,
            ));
        }),
    })
}
