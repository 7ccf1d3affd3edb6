//! diffusers' `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`, `vae.py`): the
//! `Encoder` to the latent distribution's mean and log-variance, and the `Decoder` back to RGB.

use sd_core::config::AutoencoderKLConfig;
use sd_kernels::ops::Conv2dShape;
use sd_kernels::{Batch, Tensor};

use crate::attention::{Attention, ProjectionNames};
use crate::chunks::{ChunkPolicy, Chunks};
use crate::layers::{self, Conv2d, GroupNorm, Params};
use crate::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::{ModelError, Result};

const EPS: f64 = 1e-6;

/// The VAE mid block's single-head self-attention over all pixels, with its own group norm
/// and the residual added back.
#[derive(Debug)]
struct SpatialAttention {
    group_norm: GroupNorm,
    attention: Attention,
}

impl SpatialAttention {
    fn load(p: &Params<'_>, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::load(p, "group_norm", channels, groups, EPS)?,
            attention: Attention::load(
                p,
                ProjectionNames::DIFFUSERS,
                channels,
                channels,
                1,
                channels,
                true,
            )?,
        })
    }

    fn forward(&self, batch: &mut Batch<'_>, x: &Tensor) -> Result<Tensor> {
        let [_, _, h, w] = *x.shape() else {
            return Err(ModelError::Shape(format!(
                "VAE attention input must be NCHW, is {:?}",
                x.shape()
            )));
        };
        let normed = self.group_norm.forward(batch, x, false)?;
        let tokens = layers::to_tokens(batch, &normed)?;
        let attended = self.attention.forward(batch, &tokens, None, false)?;
        let out = layers::to_nchw(batch, &attended, h, w)?;
        sd_kernels::ops::residual_add(batch, x, &out, 1.0)?;
        Ok(out)
    }
}

/// `UNetMidBlock2D` of the VAE: ResNet, attention (if configured), ResNet.
#[derive(Debug)]
struct MidBlock {
    resnet_0: ResnetBlock2D,
    attention: Option<SpatialAttention>,
    resnet_1: ResnetBlock2D,
}

impl MidBlock {
    fn load(p: &Params<'_>, channels: usize, groups: usize, attention: bool) -> Result<Self> {
        let resnet = |i: usize| {
            ResnetBlock2D::load(
                &p.scope("resnets").at(i),
                channels,
                channels,
                None,
                groups,
                EPS,
                1.0,
            )
        };
        Ok(Self {
            resnet_0: resnet(0)?,
            attention: attention
                .then(|| SpatialAttention::load(&p.scope("attentions").at(0), channels, groups))
                .transpose()?,
            resnet_1: resnet(1)?,
        })
    }

    fn forward(&self, batch: &mut Batch<'_>, x: &Tensor) -> Result<Tensor> {
        let mut h = self.resnet_0.forward(batch, x, None)?;
        if let Some(attention) = &self.attention {
            h = attention.forward(batch, &h)?;
        }
        self.resnet_1.forward(batch, &h, None)
    }
}

/// One resolution level: ResNets and an optional resampler.
#[derive(Debug)]
struct Level<S> {
    resnets: Vec<ResnetBlock2D>,
    resample: Option<S>,
}

/// The VAE encoder plus `quant_conv`: image `[N, 3, H, W]` in [-1, 1] to the latent moments.
#[derive(Debug)]
pub struct VaeEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<Level<Downsample2D>>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

/// The VAE decoder plus `post_quant_conv`: latents (already divided by the scaling factor) to an
/// image `[N, 3, H, W]` in about [-1, 1].
#[derive(Debug)]
pub struct VaeDecoder {
    norm_groups: usize,
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<Level<Upsample2D>>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

fn check_blocks(config: &AutoencoderKLConfig) -> Result<()> {
    let bad = config
        .down_block_types
        .iter()
        .chain(&config.up_block_types)
        .find(|t| *t != "DownEncoderBlock2D" && *t != "UpDecoderBlock2D");
    match bad {
        Some(t) => Err(ModelError::Unsupported {
            part: "vae",
            what: format!("block type {t}"),
        }),
        None => Ok(()),
    }
}

impl VaeEncoder {
    /// Loads `encoder.*` and `quant_conv` from the VAE's weights.
    pub fn load(config: &AutoencoderKLConfig, p: &Params<'_>) -> Result<Self> {
        check_blocks(config)?;
        let c = config;
        let groups = c.norm_num_groups;
        let channels = &c.block_out_channels;
        let e = p.scope("encoder");
        let mut down_blocks = Vec::new();
        let mut out_ch = channels[0];
        for i in 0..channels.len() {
            let in_ch = out_ch;
            out_ch = channels[i];
            let bp = e.scope("down_blocks").at(i);
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    ResnetBlock2D::load(
                        &bp.scope("resnets").at(j),
                        if j == 0 { in_ch } else { out_ch },
                        out_ch,
                        None,
                        groups,
                        EPS,
                        1.0,
                    )
                })
                .collect::<Result<_>>()?;
            // diffusers pads right and bottom by one, then convolves with stride 2, padding 0.
            let pad_after = Conv2dShape {
                stride: 2,
                pad_begin: 0,
                pad_end: 1,
            };
            let resample = (i + 1 < channels.len())
                .then(|| Downsample2D::load(&bp.scope("downsamplers").at(0), out_ch, pad_after))
                .transpose()?;
            down_blocks.push(Level { resnets, resample });
        }
        let top = out_ch;
        let same = Conv2dShape::symmetric(1, 1);
        Ok(Self {
            conv_in: Conv2d::load(&e, "conv_in", c.in_channels, channels[0], 3, same)?,
            down_blocks,
            mid_block: MidBlock::load(
                &e.scope("mid_block"),
                top,
                groups,
                c.mid_block_add_attention,
            )?,
            conv_norm_out: GroupNorm::load(&e, "conv_norm_out", top, groups, EPS)?,
            conv_out: Conv2d::load(&e, "conv_out", top, 2 * c.latent_channels, 3, same)?,
            quant_conv: c
                .use_quant_conv
                .then(|| {
                    Conv2d::load(
                        p,
                        "quant_conv",
                        2 * c.latent_channels,
                        2 * c.latent_channels,
                        1,
                        Conv2dShape::symmetric(1, 0),
                    )
                })
                .transpose()?,
            latent_channels: c.latent_channels,
        })
    }

    /// Latent channels (the moments have twice as many: mean, then log-variance).
    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    /// Records the encoder on `image` `[N, 3, H, W]`; returns the moments `[N, 2L, H/8, W/8]`
    /// (mean channels first, then the unclamped log-variance).
    pub fn forward(&self, batch: &mut Batch<'_>, image: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(batch, image)?;
        for level in &self.down_blocks {
            for resnet in &level.resnets {
                h = resnet.forward(batch, &h, None)?;
            }
            if let Some(down) = &level.resample {
                h = down.forward(batch, &h)?;
            }
        }
        let h = self.mid_block.forward(batch, &h)?;
        let h = self.conv_norm_out.forward(batch, &h, true)?;
        let h = self.conv_out.forward(batch, &h)?;
        match &self.quant_conv {
            Some(conv) => conv.forward(batch, &h),
            None => Ok(h),
        }
    }
}

impl VaeDecoder {
    /// Loads `decoder.*` and `post_quant_conv` from the VAE's weights.
    pub fn load(config: &AutoencoderKLConfig, p: &Params<'_>) -> Result<Self> {
        check_blocks(config)?;
        let c = config;
        let groups = c.norm_num_groups;
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let d = p.scope("decoder");
        let same = Conv2dShape::symmetric(1, 1);
        let top = reversed[0];
        let mut up_blocks = Vec::new();
        let mut out_ch = top;
        for (i, &ch) in reversed.iter().enumerate() {
            let prev = out_ch;
            out_ch = ch;
            let bp = d.scope("up_blocks").at(i);
            let resnets = (0..=c.layers_per_block)
                .map(|j| {
                    ResnetBlock2D::load(
                        &bp.scope("resnets").at(j),
                        if j == 0 { prev } else { out_ch },
                        out_ch,
                        None,
                        groups,
                        EPS,
                        1.0,
                    )
                })
                .collect::<Result<_>>()?;
            let resample = (i + 1 < reversed.len())
                .then(|| Upsample2D::load(&bp.scope("upsamplers").at(0), out_ch))
                .transpose()?;
            up_blocks.push(Level { resnets, resample });
        }
        let last = out_ch;
        Ok(Self {
            norm_groups: groups,
            post_quant_conv: c
                .use_post_quant_conv
                .then(|| {
                    Conv2d::load(
                        p,
                        "post_quant_conv",
                        c.latent_channels,
                        c.latent_channels,
                        1,
                        Conv2dShape::symmetric(1, 0),
                    )
                })
                .transpose()?,
            conv_in: Conv2d::load(&d, "conv_in", c.latent_channels, top, 3, same)?,
            mid_block: MidBlock::load(
                &d.scope("mid_block"),
                top,
                groups,
                c.mid_block_add_attention,
            )?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&d, "conv_norm_out", last, groups, EPS)?,
            conv_out: Conv2d::load(&d, "conv_out", last, c.out_channels, 3, same)?,
        })
    }

    /// Records the decoder on `latents` `[1, L, h, w]` (divided by the scaling factor already).
    /// From the up blocks on, activations are channel-chunked wherever a tensor would exceed one
    /// binding (SD 1.5 at 512x512 and beyond); below that everything is one chunk.
    pub fn forward(&self, batch: &mut Batch<'_>, latents: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(batch, latents)?,
            None => latents.clone(),
        };
        let h = self.conv_in.forward(batch, &z)?;
        let h = self.mid_block.forward(batch, &h)?;
        let [_, _, lh, lw] = *h.shape() else {
            return Err(ModelError::Shape(format!(
                "VAE latents must be NCHW, are {:?}",
                h.shape()
            )));
        };
        let scale = 1
            << self
                .up_blocks
                .iter()
                .filter(|l| l.resample.is_some())
                .count();
        let policy = ChunkPolicy {
            max_binding: batch.context().chunk_budget(),
            norm_groups: self.norm_groups,
            plane: (lh * scale, lw * scale),
        };
        let mut x = Chunks::split(batch, &h, &policy)?;
        for level in &self.up_blocks {
            for resnet in &level.resnets {
                x = resnet.forward_chunks(batch, &x, &policy)?;
            }
            if let Some(up) = &level.resample {
                x = up.forward_chunks(batch, &x, &policy)?;
            }
        }
        let x = self.conv_norm_out.forward_chunks(batch, &x, true)?;
        self.conv_out
            .forward_chunks(batch, &x, &policy)?
            .join(batch)
    }
}
