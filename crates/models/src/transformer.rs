//! diffusers' `Transformer2DModel` (`models/transformers/transformer_2d.py`, continuous input)
//! and `BasicTransformerBlock` (`models/attention.py`): self-attention, cross-attention and a
//! GEGLU feed-forward, each pre-normed with a layer norm and added back.

use sd_kernels::ops::{self, Conv2dShape};
use sd_kernels::{Batch, DType, Tensor};

use crate::attention::{Attention, ProjectionNames};
use crate::layers::{self, Conv2d, GroupNorm, LayerNorm, Linear, Params};
use crate::plan::row_chunk;
use crate::{ModelError, Result};

/// `BasicTransformerBlock` with diffusers' SD defaults (layer norms, GEGLU with exact GELU).
#[derive(Debug)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    /// Loads a block of width `dim` with `heads` heads attending to a context of `context_dim`.
    pub fn load(p: &Params<'_>, dim: usize, heads: usize, context_dim: usize) -> Result<Self> {
        let head_dim = dim / heads;
        let inner = 4 * dim;
        Ok(Self {
            norm1: LayerNorm::load(p, "norm1", dim, 1e-5)?,
            attn1: Attention::load(
                &p.scope("attn1"),
                ProjectionNames::DIFFUSERS,
                dim,
                dim,
                heads,
                head_dim,
                false,
            )?,
            norm2: LayerNorm::load(p, "norm2", dim, 1e-5)?,
            attn2: Attention::load(
                &p.scope("attn2"),
                ProjectionNames::DIFFUSERS,
                dim,
                context_dim,
                heads,
                head_dim,
                false,
            )?,
            norm3: LayerNorm::load(p, "norm3", dim, 1e-5)?,
            ff_proj: Linear::load(p, "ff.net.0.proj", dim, 2 * inner, true)?,
            ff_out: Linear::load(p, "ff.net.2", inner, dim, true)?,
        })
    }

    /// Records the block on tokens `h` `[B, L, C]` (updated in place) with `context` `[B, 77, D]`.
    pub fn forward(&self, batch: &mut Batch<'_>, h: &Tensor, context: &Tensor) -> Result<()> {
        let n = self.norm1.forward(batch, h)?;
        let a = self.attn1.forward(batch, &n, None, false)?;
        ops::residual_add(batch, &a, h, 1.0)?;
        let n = self.norm2.forward(batch, h)?;
        let a = self.attn2.forward(batch, &n, Some(context), false)?;
        ops::residual_add(batch, &a, h, 1.0)?;
        let n = self.norm3.forward(batch, h)?;
        let f = self.feed_forward(batch, &n)?;
        ops::residual_add(batch, &f, h, 1.0)?;
        Ok(())
    }
}

impl BasicTransformerBlock {
    /// The GEGLU feed-forward on tokens `x` `[B, L, C]`. Its hidden state is `2 * 4C` wide (the
    /// largest UNet tensor: SD 1.5 at 768x768 with CFG is 189 MB), so when it would exceed one
    /// binding the tokens go through in row chunks (the planner's [`row_chunk`]), copied out of
    /// `x` and back into the result.
    fn feed_forward(&self, batch: &mut Batch<'_>, x: &Tensor) -> Result<Tensor> {
        let ctx = batch.context();
        let dim = *x.shape().last().unwrap_or(&0);
        let rows = x.len() / dim.max(1);
        let hidden = self.ff_proj.out_features();
        let max_binding = ctx.chunk_budget();
        let per_chunk = row_chunk(rows, (hidden * 4) as u64, max_binding)?;
        if per_chunk >= rows {
            return self.feed_forward_rows(batch, x);
        }
        let out = ctx.empty(x.shape(), DType::F32)?;
        for start in (0..rows).step_by(per_chunk) {
            let len = per_chunk.min(rows - start);
            let part = ctx.empty(&[len, dim], DType::F32)?;
            batch.copy_f32(x, start * dim, &part, 0, len * dim)?;
            let y = self.feed_forward_rows(batch, &part)?;
            batch.copy_f32(&y, 0, &out, start * dim, len * dim)?;
        }
        Ok(out)
    }

    fn feed_forward_rows(&self, batch: &mut Batch<'_>, x: &Tensor) -> Result<Tensor> {
        let projected = self.ff_proj.forward(batch, x)?;
        let mut shape = projected.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last /= 2;
        }
        let gated = batch.context().empty(&shape, DType::F32)?;
        ops::geglu(batch, &projected, &gated)?;
        self.ff_out.forward(batch, &gated)
    }
}

/// How `Transformer2DModel` projects between the feature map and the tokens.
#[derive(Debug)]
enum Projection {
    /// 1x1 convolutions on the feature map (SD 1.x).
    Conv(Conv2d),
    /// Linear layers on the tokens (SD 2.x, SDXL).
    Linear(Linear),
}

/// `Transformer2DModel`: group norm, proj_in, transformer blocks, proj_out, residual.
#[derive(Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    /// Loads a model of `channels` with `heads` heads and `depth` blocks.
    pub fn load(
        p: &Params<'_>,
        channels: usize,
        heads: usize,
        depth: usize,
        context_dim: usize,
        groups: usize,
        use_linear_projection: bool,
    ) -> Result<Self> {
        let projection = |name: &str| -> Result<Projection> {
            Ok(if use_linear_projection {
                Projection::Linear(Linear::load(p, name, channels, channels, true)?)
            } else {
                Projection::Conv(Conv2d::load(
                    p,
                    name,
                    channels,
                    channels,
                    1,
                    Conv2dShape::symmetric(1, 0),
                )?)
            })
        };
        let blocks_p = p.scope("transformer_blocks");
        Ok(Self {
            norm: GroupNorm::load(p, "norm", channels, groups, 1e-6)?,
            proj_in: projection("proj_in")?,
            blocks: (0..depth)
                .map(|i| BasicTransformerBlock::load(&blocks_p.at(i), channels, heads, context_dim))
                .collect::<Result<_>>()?,
            proj_out: projection("proj_out")?,
        })
    }

    /// Records the model on `x` `[N, C, H, W]` with `context` `[N, 77, D]`.
    pub fn forward(&self, batch: &mut Batch<'_>, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let [_, _, h, w] = *x.shape() else {
            return Err(ModelError::Shape(format!(
                "transformer input must be NCHW, is {:?}",
                x.shape()
            )));
        };
        let normed = self.norm.forward(batch, x, false)?;
        let tokens = match &self.proj_in {
            Projection::Conv(conv) => {
                let projected = conv.forward(batch, &normed)?;
                layers::to_tokens(batch, &projected)?
            }
            Projection::Linear(linear) => {
                let tokens = layers::to_tokens(batch, &normed)?;
                linear.forward(batch, &tokens)?
            }
        };
        for block in &self.blocks {
            block.forward(batch, &tokens, context)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => {
                let map = layers::to_nchw(batch, &tokens, h, w)?;
                conv.forward(batch, &map)?
            }
            Projection::Linear(linear) => {
                let projected = linear.forward(batch, &tokens)?;
                layers::to_nchw(batch, &projected, h, w)?
            }
        };
        ops::residual_add(batch, x, &out, 1.0)?;
        Ok(out)
    }
}
