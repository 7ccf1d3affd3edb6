//! The cost model: the networks' walks read by a recorder that counts, per op, its diffusers
//! path, FLOPs, bytes read and written, and the commands (dispatches and copies) the GPU
//! recorder issues for it when nothing is split.
//!
//! FLOPs count the multiply-adds of convolutions, linear layers and attention's two matrix
//! products as 2 each (softmax, norms and elementwise work are left out: they are memory-bound
//! and a fraction of a percent of the FLOPs). Bytes count every activation read or written (4
//! bytes per element) and every weight read (2 bytes per f16 matrix element, 4 per f32 vector
//! element), once per op: what an op must move at the least, not what a kernel's caches do.

use std::fmt;

use sd_core::config::{AutoencoderKLConfig, CLIPTextConfig, UNet2DConditionConfig};
use sd_kernels::ops::{self, Activation};

use crate::backend::NetworkConfigs;
use crate::nets::clip::clip_text_model;
use crate::nets::unet::{UNetSize, unet_2d_condition_model, unet_context_projections};
use crate::nets::vae;
use crate::plan::{Part, PlanError, PlanRequest, Shape, counted_text_call};
use crate::record::{Conv2d, GroupNorm, Heads, InputNorm, Recorder, Sinusoids, shapes};

/// The cost of one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpCost {
    /// Its diffusers module path in the part (`down_blocks.0.resnets.0.conv1`).
    pub path: String,
    /// What it computes (`conv2d`, `linear`, `attention`, ...).
    pub kind: &'static str,
    /// Floating-point operations (2 per multiply-add of the matrix work).
    pub flops: u64,
    /// Bytes of activations and weights read.
    pub bytes_read: u64,
    /// Bytes of activations written.
    pub bytes_written: u64,
    /// Commands the GPU recorder issues for it, unsplit.
    pub dispatches: usize,
}

/// Records the cost of every op of a walk.
#[derive(Debug, Default)]
pub struct CostRecorder {
    ops: Vec<OpCost>,
}

impl CostRecorder {
    /// `nn.Conv2d`; a fused residual connection reads the output's size once more.
    /// `nn.Conv2d`; a fused epilogue reads `epilogue` (a residual, a channel bias) once more.
    fn conv2d_with(
        &mut self,
        path: &str,
        x: &Shape,
        conv: Conv2d,
        epilogue: Option<&Shape>,
    ) -> Result<Shape, PlanError> {
        let y = shapes::conv2d(path, *x, &conv)?;
        let (Shape::Nchw { c, .. }, Shape::Nchw { n, c: oc, h, w }) = (*x, y) else {
            return Ok(y);
        };
        let k = conv.kernel;
        let flops = 2 * mul(&[n, oc, h, w, c, k, k]);
        let weights = matrix(&[oc, c, k, k]) + vector(oc);
        let read = x.bytes() + weights + epilogue.map_or(0, |e| e.bytes());
        self.push(path, "conv2d", flops, (read, y.bytes()), 1);
        Ok(y)
    }

    /// `nn.Linear` with `rows` weight rows (twice `out_features` for GEGLU, whose epilogue
    /// halves the output); a fused residual connection reads the output's size once more, and
    /// a fused input layer norm the input (its statistics) and its two vectors.
    fn linear_with(
        &mut self,
        path: &str,
        x: &Shape,
        (out_features, rows): (usize, usize),
        bias: bool,
        residual: bool,
        norm: bool,
    ) -> Result<Shape, PlanError> {
        let y = shapes::linear(path, *x, out_features)?;
        let Shape::Tokens { n, l, d } = *x else {
            return Ok(y);
        };
        let flops = 2 * mul(&[n, l, d, rows]);
        let weights = matrix(&[rows, d]) + if bias { vector(rows) } else { 0 };
        let mut read = x.bytes() + weights + if residual { y.bytes() } else { 0 };
        if norm {
            read += x.bytes() + 2 * vector(d);
        }
        self.push(path, "linear", flops, (read, y.bytes()), 1);
        Ok(y)
    }

    /// The ops recorded, in order.
    pub fn ops(&self) -> &[OpCost] {
        &self.ops
    }

    fn push(
        &mut self,
        path: &str,
        kind: &'static str,
        flops: u64,
        (bytes_read, bytes_written): (u64, u64),
        dispatches: usize,
    ) {
        self.ops.push(OpCost {
            path: path.to_owned(),
            kind,
            flops,
            bytes_read,
            bytes_written,
            dispatches,
        });
    }
}

fn mul(values: &[usize]) -> u64 {
    values
        .iter()
        .fold(1u64, |acc, &v| acc.saturating_mul(v as u64))
}

/// f16 matrix bytes.
fn matrix(values: &[usize]) -> u64 {
    2 * mul(values)
}

/// f32 vector bytes.
fn vector(len: usize) -> u64 {
    4 * len as u64
}

impl Recorder for CostRecorder {
    type Tensor = Shape;
    type Error = PlanError;

    fn shape(&self, t: &Shape) -> Shape {
        *t
    }

    fn input(&mut self, _name: &str, shape: Shape) -> Result<Shape, PlanError> {
        Ok(shape)
    }

    fn output(&mut self, _name: &str, _t: &Shape) -> Result<(), PlanError> {
        Ok(())
    }

    fn conv2d(&mut self, path: &str, x: &Shape, conv: Conv2d) -> Result<Shape, PlanError> {
        self.conv2d_with(path, x, conv, None)
    }

    fn conv2d_residual(
        &mut self,
        path: &str,
        x: &Shape,
        conv: Conv2d,
        r: &Shape,
        _scale: f64,
    ) -> Result<Shape, PlanError> {
        self.conv2d_with(path, x, conv, Some(r))
    }

    fn conv2d_to_tokens(
        &mut self,
        path: &str,
        x: &Shape,
        conv: Conv2d,
    ) -> Result<Shape, PlanError> {
        let y = self.conv2d_with(path, x, conv, None)?;
        shapes::to_tokens(path, y)
    }

    fn conv2d_residual_from_tokens(
        &mut self,
        path: &str,
        x: &Shape,
        size: (usize, usize),
        conv: Conv2d,
        r: &Shape,
        _scale: f64,
    ) -> Result<Shape, PlanError> {
        let x = shapes::to_nchw(path, *x, size)?;
        self.conv2d_with(path, &x, conv, Some(r))
    }

    fn conv2d_channel_bias(
        &mut self,
        path: &str,
        x: &Shape,
        conv: Conv2d,
        (t, _offset): (&Shape, usize),
    ) -> Result<Shape, PlanError> {
        // It reads this ResNet's columns only.
        let columns = Shape::Tokens {
            n: t.batch(),
            l: 1,
            d: conv.out_channels,
        };
        self.conv2d_with(path, x, conv, Some(&columns))
    }

    fn linear(
        &mut self,
        path: &str,
        x: &Shape,
        out_features: usize,
        bias: bool,
    ) -> Result<Shape, PlanError> {
        self.linear_with(path, x, (out_features, out_features), bias, false, false)
    }

    fn linear_residual(
        &mut self,
        path: &str,
        x: &Shape,
        out_features: usize,
        bias: bool,
        _residual: (&Shape, f64),
    ) -> Result<Shape, PlanError> {
        self.linear_with(path, x, (out_features, out_features), bias, true, false)
    }

    fn group_norm(&mut self, path: &str, x: &Shape, norm: GroupNorm) -> Result<Shape, PlanError> {
        let Shape::Nchw { c, h, w, .. } = *x else {
            return Ok(*x);
        };
        // The mean, the squared deviations, then the affine: the input is read three times,
        // in one dispatch for short groups.
        let read = 3 * x.bytes() + 2 * vector(c);
        let dispatches = ops::group_norm_dispatches(c / norm.groups.max(1) * h * w);
        self.push(path, "group_norm", 0, (read, x.bytes()), dispatches);
        Ok(*x)
    }

    fn group_norm_of_concat(
        &mut self,
        path: &str,
        [a, b]: [&Shape; 2],
        norm: GroupNorm,
    ) -> Result<Shape, PlanError> {
        // The same traffic as the norm of the concatenated tensor, which is never written.
        let x = shapes::concat(path, *a, *b)?;
        self.group_norm(path, &x, norm)
    }

    fn conv2d_of_concat(
        &mut self,
        path: &str,
        [a, b]: [&Shape; 2],
        conv: Conv2d,
    ) -> Result<Shape, PlanError> {
        let x = shapes::concat(path, *a, *b)?;
        self.conv2d_with(path, &x, conv, None)
    }

    fn linear_stacked(
        &mut self,
        path: &str,
        x: &Shape,
        layers: &[(&str, usize)],
        bias: bool,
        norm: Option<InputNorm<'_>>,
    ) -> Result<Shape, PlanError> {
        let out = layers.iter().map(|(_, o)| o).sum();
        self.linear_with(path, x, (out, out), bias, false, norm.is_some())
    }

    fn linear_normed(
        &mut self,
        path: &str,
        x: &Shape,
        out_features: usize,
        bias: bool,
        _norm: InputNorm<'_>,
    ) -> Result<Shape, PlanError> {
        self.linear_with(path, x, (out_features, out_features), bias, false, true)
    }

    fn layer_norm(&mut self, path: &str, x: &Shape, _eps: f64) -> Result<Shape, PlanError> {
        let Shape::Tokens { d, .. } = *x else {
            return Ok(*x);
        };
        self.push(
            path,
            "layer_norm",
            0,
            (x.bytes() + 2 * vector(d), x.bytes()),
            1,
        );
        Ok(*x)
    }

    fn activation(&mut self, path: &str, x: &Shape, _f: Activation) -> Result<Shape, PlanError> {
        self.push(path, "activation", 0, (x.bytes(), x.bytes()), 1);
        Ok(*x)
    }

    fn residual_add(
        &mut self,
        path: &str,
        x: Shape,
        _r: &Shape,
        _scale: f64,
    ) -> Result<Shape, PlanError> {
        self.push(path, "residual_add", 0, (2 * x.bytes(), x.bytes()), 1);
        Ok(x)
    }

    fn to_tokens(&mut self, path: &str, x: &Shape) -> Result<Shape, PlanError> {
        let y = shapes::to_tokens(path, *x)?;
        self.push(path, "to_tokens", 0, (x.bytes(), y.bytes()), 1);
        Ok(y)
    }

    fn to_nchw(&mut self, path: &str, x: &Shape, size: (usize, usize)) -> Result<Shape, PlanError> {
        let y = shapes::to_nchw(path, *x, size)?;
        self.push(path, "to_nchw", 0, (x.bytes(), y.bytes()), 1);
        Ok(y)
    }

    fn concat(&mut self, path: &str, a: &Shape, b: &Shape) -> Result<Shape, PlanError> {
        let y = shapes::concat(path, *a, *b)?;
        self.push(path, "concat", 0, (a.bytes() + b.bytes(), y.bytes()), 1);
        Ok(y)
    }

    fn upsample_nearest(
        &mut self,
        path: &str,
        x: &Shape,
        size: (usize, usize),
    ) -> Result<Shape, PlanError> {
        let y = shapes::upsample(path, *x, size)?;
        self.push(path, "upsample_nearest", 0, (x.bytes(), y.bytes()), 1);
        Ok(y)
    }

    fn attention_kv(
        &mut self,
        path: &str,
        q: &Shape,
        kv: &Shape,
        heads: Heads,
    ) -> Result<Shape, PlanError> {
        let Shape::Tokens { n, l, d } = *kv else {
            return Ok(*q);
        };
        let half = Shape::Tokens { n, l, d: d / 2 };
        self.attention(path, [q, &half, &half], heads)
    }

    fn attention_packed(
        &mut self,
        path: &str,
        qkv: &Shape,
        heads: Heads,
    ) -> Result<Shape, PlanError> {
        let o = shapes::attention_packed(path, *qkv)?;
        self.attention(path, [&o, &o, &o], heads)
    }

    fn attention(
        &mut self,
        path: &str,
        [q, k, v]: [&Shape; 3],
        heads: Heads,
    ) -> Result<Shape, PlanError> {
        let (Shape::Tokens { n, l, .. }, Shape::Tokens { l: lk, .. }) = (*q, *k) else {
            return Ok(*q);
        };
        // q k^T and the weighted sum of v: two products of l x lk x head_dim per head.
        let flops = 4 * mul(&[n, heads.heads, l, lk, heads.head_dim]);
        let read = q.bytes() + k.bytes() + v.bytes();
        self.push(path, "attention", flops, (read, q.bytes()), 1);
        Ok(*q)
    }

    fn linear_geglu(
        &mut self,
        path: &str,
        x: &Shape,
        out_features: usize,
        norm: Option<InputNorm<'_>>,
    ) -> Result<Shape, PlanError> {
        let rows = 2 * out_features;
        self.linear_with(path, x, (out_features, rows), true, false, norm.is_some())
    }

    fn sinusoids(&mut self, path: &str, t: &Shape, spec: Sinusoids) -> Result<Shape, PlanError> {
        let y = shapes::sinusoids(path, *t, &spec)?;
        self.push(path, "sinusoids", 0, (t.bytes(), y.bytes()), 1);
        Ok(y)
    }

    fn embedding(
        &mut self,
        path: &str,
        ids: &Shape,
        _vocab: usize,
        len: usize,
        dim: usize,
    ) -> Result<Shape, PlanError> {
        let y = shapes::embedding(path, *ids, len, dim)?;
        // One table row (f16) and one position row (f32) per token.
        let Shape::Tokens { n, l, d } = y else {
            return Ok(y);
        };
        let read = ids.bytes() + matrix(&[n, l, d]) + vector(l * d);
        self.push(path, "embedding", 0, (read, y.bytes()), 1);
        Ok(y)
    }

    fn gather_rows(&mut self, path: &str, x: &Shape, rows: &[usize]) -> Result<Shape, PlanError> {
        let y = shapes::gather_rows(path, *x, rows)?;
        // One buffer copy per row.
        self.push(path, "gather_rows", 0, (y.bytes(), y.bytes()), rows.len());
        Ok(y)
    }
}

/// The cost of one model part for one call.
#[derive(Debug, Clone, PartialEq)]
pub struct PartCost {
    /// Which part.
    pub part: Part,
    /// Its ops.
    pub ops: Vec<OpCost>,
    /// The activation peak and weights of the part's plan, when one was made.
    pub peak_bytes: Option<u64>,
}

impl PartCost {
    /// Total FLOPs.
    pub fn flops(&self) -> u64 {
        self.ops.iter().map(|o| o.flops).sum()
    }

    /// Total bytes read and written.
    pub fn bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|o| o.bytes_read + o.bytes_written)
            .sum()
    }

    /// Total commands.
    pub fn dispatches(&self) -> usize {
        self.ops.iter().map(|o| o.dispatches).sum()
    }
}

/// Counts the text encoder(s), one UNet call, the VAE decode and encode of `request`.
///
/// # Errors
///
/// The walks' [`PlanError`]s (an unsupported config, a bad size).
pub fn cost(
    configs: &NetworkConfigs<'_>,
    request: &PlanRequest,
) -> Result<Vec<PartCost>, PlanError> {
    let factor = configs.vae.scale_factor().max(1);
    let (w, h) = (request.width as usize, request.height as usize);
    if w == 0 || h == 0 || !w.is_multiple_of(factor) || !h.is_multiple_of(factor) {
        return Err(PlanError::Resolution {
            width: request.width,
            height: request.height,
            multiple: u32::try_from(factor).unwrap_or(u32::MAX),
        });
    }
    let batch = request.unet_batch();
    let mut parts = vec![text_cost(configs.text_encoder, Part::TextEncoder, batch)?];
    if let Some(second) = configs.text_encoder_2 {
        parts.push(text_cost(second, Part::TextEncoder2, batch)?);
    }
    let mut r = CostRecorder::default();
    let inputs = UNetSize {
        batch,
        height: h / factor,
        width: w / factor,
        text_len: configs.text_encoder.max_position_embeddings,
    };
    let projections = unet_2d_condition_model(&mut r, configs.unet, &inputs)?;
    let mut context = CostRecorder::default();
    unet_context_projections(&mut context, configs.unet, &inputs, &projections)?;
    parts.push(part_cost(Part::UNetContext, context));
    parts.push(part_cost(Part::UNet, r));
    let mut r = CostRecorder::default();
    vae::decoder(&mut r, configs.vae, (h / factor, w / factor))?;
    parts.push(part_cost(Part::VaeDecoder, r));
    let mut r = CostRecorder::default();
    vae::encoder(&mut r, configs.vae, (h, w))?;
    parts.push(part_cost(Part::VaeEncoder, r));
    Ok(parts)
}

fn text_cost(config: &CLIPTextConfig, part: Part, batch: usize) -> Result<PartCost, PlanError> {
    let mut r = CostRecorder::default();
    counted_text_call(config, part, batch, |request| {
        clip_text_model(&mut r, config, request)
    })?;
    Ok(part_cost(part, r))
}

fn part_cost(part: Part, r: CostRecorder) -> PartCost {
    PartCost {
        part,
        ops: r.ops,
        peak_bytes: None,
    }
}

/// The UNet alone (for tests and reports).
///
/// # Errors
///
/// The walk's errors.
pub fn unet_cost(
    config: &UNet2DConditionConfig,
    inputs: &UNetSize,
) -> Result<Vec<OpCost>, PlanError> {
    let mut r = CostRecorder::default();
    unet_2d_condition_model(&mut r, config, inputs)?;
    Ok(r.ops)
}

/// The VAE decoder alone, for `(latent height, latent width)`.
///
/// # Errors
///
/// The walk's errors.
pub fn vae_decoder_cost(
    config: &AutoencoderKLConfig,
    latent: (usize, usize),
) -> Result<Vec<OpCost>, PlanError> {
    let mut r = CostRecorder::default();
    vae::decoder(&mut r, config, latent)?;
    Ok(r.ops)
}

/// A report of [`cost`]'s parts: per part FLOPs, bytes, dispatches and peak memory, then the
/// `top` ops by FLOPs with their paths.
#[derive(Debug)]
pub struct CostReport<'a> {
    /// The parts.
    pub parts: &'a [PartCost],
    /// How many ops to list.
    pub top: usize,
}

impl fmt::Display for CostReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<15} {:>12} {:>12} {:>11} {:>14}",
            "part", "GFLOP", "MB moved", "dispatches", "peak MiB"
        )?;
        for p in self.parts {
            let peak = p.peak_bytes.map_or_else(
                || "-".to_owned(),
                |b| format!("{:.1}", b as f64 / 1048576.0),
            );
            writeln!(
                f,
                "{:<15} {:>12.1} {:>12.1} {:>11} {:>14}",
                p.part.label(),
                p.flops() as f64 / 1e9,
                p.bytes() as f64 / 1e6,
                p.dispatches(),
                peak
            )?;
        }
        let mut all: Vec<(&PartCost, &OpCost)> = self
            .parts
            .iter()
            .flat_map(|p| p.ops.iter().map(move |o| (p, o)))
            .collect();
        all.sort_by_key(|(_, op)| std::cmp::Reverse(op.flops));
        writeln!(f, "top {} ops by FLOPs:", self.top)?;
        for (p, op) in all.iter().take(self.top) {
            writeln!(
                f,
                "  {:>8.1} GFLOP  {:<10} {}.{}",
                op.flops as f64 / 1e9,
                op.kind,
                p.part.prefix(),
                op.path
            )?;
        }
        Ok(())
    }
}
