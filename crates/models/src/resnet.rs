//! diffusers' `ResnetBlock2D` (`models/resnet.py`), default time-embedding norm, with the
//! `Downsample2D` and `Upsample2D` that follow blocks.

use sd_kernels::ops::{self, Conv2dShape};
use sd_kernels::{Batch, DType, Tensor};

use crate::chunks::{self, ChunkPolicy, Chunks};
use crate::layers::{Conv2d, GroupNorm, Linear, Params};
use crate::{ModelError, Result};

/// `ResnetBlock2D`: norm1 + SiLU, conv1, (+ time embedding), norm2 + SiLU, conv2, shortcut.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f32,
}

impl ResnetBlock2D {
    /// Loads a block from `in_channels` to `out_channels`; `temb_channels` is `None` in the VAE.
    pub fn load(
        p: &Params<'_>,
        in_channels: usize,
        out_channels: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let same = Conv2dShape::symmetric(1, 1);
        Ok(Self {
            norm1: GroupNorm::load(p, "norm1", in_channels, groups, eps)?,
            conv1: Conv2d::load(p, "conv1", in_channels, out_channels, 3, same)?,
            time_emb_proj: temb_channels
                .map(|t| Linear::load(p, "time_emb_proj", t, out_channels, true))
                .transpose()?,
            norm2: GroupNorm::load(p, "norm2", out_channels, groups, eps)?,
            conv2: Conv2d::load(p, "conv2", out_channels, out_channels, 3, same)?,
            conv_shortcut: (in_channels != out_channels)
                .then(|| {
                    Conv2d::load(
                        p,
                        "conv_shortcut",
                        in_channels,
                        out_channels,
                        1,
                        Conv2dShape::symmetric(1, 0),
                    )
                })
                .transpose()?,
            output_scale_factor: output_scale_factor as f32,
        })
    }

    /// Records the block on `x` `[N, C, H, W]`; `temb_silu` is SiLU of the time embedding
    /// `[N, T]` (computed once per UNet call, as every block applies SiLU first).
    pub fn forward(
        &self,
        batch: &mut Batch<'_>,
        x: &Tensor,
        temb_silu: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = self.norm1.forward(batch, x, true)?;
        let mut h = self.conv1.forward(batch, &h)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb_silu) {
            let t = proj.forward(batch, temb)?;
            let with_t = batch.context().empty(h.shape(), DType::F32)?;
            ops::add_channel_bias(batch, &h, &t, &with_t)?;
            h = with_t;
        }
        let h = self.norm2.forward(batch, &h, true)?;
        let h = self.conv2.forward(batch, &h)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(batch, x)?,
            None => x.clone(),
        };
        // h = (shortcut + h) / output_scale_factor, in place in h.
        ops::residual_add(batch, &shortcut, &h, 1.0 / self.output_scale_factor)?;
        Ok(h)
    }

    /// The same block on a channel-chunked tensor, without time embedding (the VAE decoder at
    /// full resolution).
    pub fn forward_chunks(
        &self,
        batch: &mut Batch<'_>,
        x: &Chunks,
        policy: &ChunkPolicy,
    ) -> Result<Chunks> {
        let h = self.norm1.forward_chunks(batch, x, true)?;
        let h = self.conv1.forward_chunks(batch, &h, policy)?;
        let h = self.norm2.forward_chunks(batch, &h, true)?;
        let h = self.conv2.forward_chunks(batch, &h, policy)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward_chunks(batch, x, policy)?,
            None => x.clone(),
        };
        chunks::residual_add(batch, &shortcut, &h, 1.0 / self.output_scale_factor)?;
        Ok(h)
    }
}

/// `Downsample2D` with a convolution: 3x3 stride 2, padding 1 (UNet) or padding only after
/// (the VAE encoder's `padding=0` with an explicit right/bottom pad of 1).
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    /// Loads `conv` for `channels` with the given padding.
    pub fn load(p: &Params<'_>, channels: usize, shape: Conv2dShape) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(p, "conv", channels, channels, 3, shape)?,
        })
    }

    /// Records the downsampling.
    pub fn forward(&self, batch: &mut Batch<'_>, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(batch, x)
    }
}

/// `Upsample2D`: nearest upsampling (2x, or to the size of the skip connection) then a 3x3 conv.
#[derive(Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Loads `conv` for `channels`.
    pub fn load(p: &Params<'_>, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(
                p,
                "conv",
                channels,
                channels,
                3,
                Conv2dShape::symmetric(1, 1),
            )?,
        })
    }

    /// Records the upsampling of `x` to `size` (`None`: twice the size).
    pub fn forward(
        &self,
        batch: &mut Batch<'_>,
        x: &Tensor,
        size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let [n, c, h, w] = *x.shape() else {
            return Err(ModelError::Shape(format!(
                "upsample input must be NCHW, is {:?}",
                x.shape()
            )));
        };
        let (oh, ow) = size.unwrap_or((2 * h, 2 * w));
        let up = batch.context().empty(&[n, c, oh, ow], DType::F32)?;
        ops::upsample_nearest(batch, x, &up)?;
        self.conv.forward(batch, &up)
    }

    /// 2x upsampling and the convolution on a channel-chunked tensor.
    pub fn forward_chunks(
        &self,
        batch: &mut Batch<'_>,
        x: &Chunks,
        policy: &ChunkPolicy,
    ) -> Result<Chunks> {
        let up = chunks::upsample_nearest(batch, x, 2 * x.height, 2 * x.width, policy)?;
        self.conv.forward_chunks(batch, &up, policy)
    }
}
