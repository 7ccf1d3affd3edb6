//! `AutoencoderKL`'s decode and encode, after diffusers' `models/autoencoders/autoencoder_kl.py`
//! and `models/autoencoders/vae.py` (`Encoder`, `Decoder`), with
//! `models/unets/unet_2d_blocks.py` (`DownEncoderBlock2D`, `UpDecoderBlock2D`,
//! `UNetMidBlock2D`). The VAE runs one image at a time (batch 1).

use sd_core::config::AutoencoderKLConfig;

use super::blocks::ResnetInput::One;
use super::blocks::{
    Attention, ProjectionNames, ResnetBlock2D, architecture, downsample_2d, upsample_2d,
};
use crate::plan::{Padding, PlanError, Shape};
use crate::record::{self, Conv2d, GroupNorm, Out, Recorder};

/// Epsilon of every group norm in the VAE (fixed in diffusers' `Encoder`/`Decoder`).
const VAE_NORM_EPS: f64 = 1e-6;

/// Records `vae.decode` of one `latent_height` x `latent_width` latent (input `latents`,
/// already divided by the scaling factor): `post_quant_conv` and the decoder, up to the RGB
/// image in about `[-1, 1]` (output `sample`).
///
/// # Errors
///
/// [`PlanError::Unsupported`] for block types other than SD's, and the recorder's errors.
pub fn decoder<R: Recorder>(
    r: &mut R,
    config: &AutoencoderKLConfig,
    (latent_height, latent_width): (usize, usize),
) -> Result<(), R::Error> {
    check_supported(config)?;
    let z = r.input(
        "latents",
        Shape::Nchw {
            n: 1,
            c: config.latent_channels,
            h: latent_height,
            w: latent_width,
        },
    )?;
    let z = if config.use_post_quant_conv {
        r.conv2d(
            "post_quant_conv",
            &z,
            Conv2d::same(config.latent_channels, 1),
        )?
    } else {
        z
    };
    let channels: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
    let mut x = r.conv2d("decoder.conv_in", &z, Conv2d::same(channels[0], 3))?;
    x = UNetMidBlock2D::new(config).forward(r, "decoder.mid_block", &x)?;
    for (i, &out_channels) in channels.iter().enumerate() {
        let block = UpDecoderBlock2D {
            resnet: resnet(config, out_channels),
            layers: config.layers_per_block + 1,
            add_upsample: i + 1 < channels.len(),
        };
        x = block.forward(r, &format!("decoder.up_blocks.{i}"), &x)?;
    }
    x = r.group_norm("decoder.conv_norm_out", &x, norm(config, true))?;
    let image = r.conv2d("decoder.conv_out", &x, Conv2d::same(config.out_channels, 3))?;
    r.output("sample", &image)
}

/// Records `vae.encode` of one `height` x `width` image (input `sample`, in `[-1, 1]`): the
/// encoder and `quant_conv`, up to the latent distribution's moments (output `moments`: mean
/// and log-variance, `2 * latent_channels` channels).
///
/// # Errors
///
/// As [`decoder`].
pub fn encoder<R: Recorder>(
    r: &mut R,
    config: &AutoencoderKLConfig,
    (height, width): (usize, usize),
) -> Result<(), R::Error> {
    check_supported(config)?;
    let image = r.input(
        "sample",
        Shape::Nchw {
            n: 1,
            c: config.in_channels,
            h: height,
            w: width,
        },
    )?;
    let channels = &config.block_out_channels;
    let mut x = r.conv2d("encoder.conv_in", &image, Conv2d::same(channels[0], 3))?;
    for (i, &out_channels) in channels.iter().enumerate() {
        let block = DownEncoderBlock2D {
            resnet: resnet(config, out_channels),
            layers: config.layers_per_block,
            add_downsample: i + 1 < channels.len(),
        };
        x = block.forward(r, &format!("encoder.down_blocks.{i}"), &x)?;
    }
    x = UNetMidBlock2D::new(config).forward(r, "encoder.mid_block", &x)?;
    x = r.group_norm("encoder.conv_norm_out", &x, norm(config, true))?;
    let moments = 2 * config.latent_channels;
    let mut moments_t = r.conv2d("encoder.conv_out", &x, Conv2d::same(moments, 3))?;
    if config.use_quant_conv {
        moments_t = r.conv2d("quant_conv", &moments_t, Conv2d::same(moments, 1))?;
    }
    r.output("moments", &moments_t)
}

fn norm(config: &AutoencoderKLConfig, silu: bool) -> GroupNorm {
    GroupNorm {
        groups: config.norm_num_groups,
        eps: VAE_NORM_EPS,
        silu,
    }
}

fn resnet(config: &AutoencoderKLConfig, out_channels: usize) -> ResnetBlock2D {
    ResnetBlock2D {
        out_channels,
        groups: config.norm_num_groups,
        eps: VAE_NORM_EPS,
        output_scale_factor: 1.0,
    }
}

/// `DownEncoderBlock2D`: `layers` ResNets, then a stride-2 downsampler padded bottom/right
/// unless it is the last block.
#[derive(Debug, Clone, Copy)]
pub struct DownEncoderBlock2D {
    /// Every ResNet's settings.
    pub resnet: ResnetBlock2D,
    /// ResNets (`layers_per_block`).
    pub layers: usize,
    /// Whether a downsampler follows.
    pub add_downsample: bool,
}

impl DownEncoderBlock2D {
    fn forward<R: Recorder>(&self, r: &mut R, path: &str, x: &R::Tensor) -> Out<R> {
        let x = resnets(r, path, x, self.resnet, self.layers)?;
        if !self.add_downsample {
            return Ok(x);
        }
        let padding = Padding {
            before: 0,
            after: 1,
        };
        downsample_2d(r, &format!("{path}.downsamplers.0"), &x, padding)
    }
}

/// `layers` ResNets one after the other (`<path>.resnets.<j>`).
fn resnets<R: Recorder>(
    r: &mut R,
    path: &str,
    x: &R::Tensor,
    resnet: ResnetBlock2D,
    layers: usize,
) -> Out<R> {
    let mut x = x.clone();
    for j in 0..layers {
        x = resnet.forward(r, &format!("{path}.resnets.{j}"), One(&x), None)?;
    }
    Ok(x)
}

/// `UpDecoderBlock2D`: `layers` ResNets, then a 2x upsampler unless it is the last block.
#[derive(Debug, Clone, Copy)]
pub struct UpDecoderBlock2D {
    /// Every ResNet's settings.
    pub resnet: ResnetBlock2D,
    /// ResNets (`layers_per_block + 1`).
    pub layers: usize,
    /// Whether an upsampler follows.
    pub add_upsample: bool,
}

impl UpDecoderBlock2D {
    fn forward<R: Recorder>(&self, r: &mut R, path: &str, x: &R::Tensor) -> Out<R> {
        let x = resnets(r, path, x, self.resnet, self.layers)?;
        if !self.add_upsample {
            return Ok(x);
        }
        let (_, _, h, w) = record::nchw(r, path, &x)?;
        upsample_2d(r, &format!("{path}.upsamplers.0"), &x, (2 * h, 2 * w))
    }
}

/// `UNetMidBlock2D` without a time embedding: ResNet, (single-head self-attention over all
/// pixels if `mid_block_add_attention`), ResNet.
#[derive(Debug, Clone, Copy)]
pub struct UNetMidBlock2D {
    /// Group-norm groups.
    pub groups: usize,
    /// Whether the attention is there.
    pub add_attention: bool,
}

impl UNetMidBlock2D {
    fn new(config: &AutoencoderKLConfig) -> Self {
        Self {
            groups: config.norm_num_groups,
            add_attention: config.mid_block_add_attention,
        }
    }

    fn forward<R: Recorder>(&self, r: &mut R, path: &str, x: &R::Tensor) -> Out<R> {
        let (_, channels, _, _) = record::nchw(r, path, x)?;
        let resnet = ResnetBlock2D {
            out_channels: channels,
            groups: self.groups,
            eps: VAE_NORM_EPS,
            output_scale_factor: 1.0,
        };
        let mut x = resnet.forward(r, &format!("{path}.resnets.0"), One(x), None)?;
        if self.add_attention {
            x = self.spatial_attention(r, &format!("{path}.attentions.0"), &x)?;
        }
        resnet.forward(r, &format!("{path}.resnets.1"), One(&x), None)
    }

    /// diffusers' `Attention` on a 4-D input as the VAE builds it (`heads = 1`,
    /// `dim_head = channels`, group norm, biases on `to_q/k/v`, residual connection): group
    /// norm, to tokens, attention, back to NCHW, plus the input.
    fn spatial_attention<R: Recorder>(&self, r: &mut R, path: &str, x: &R::Tensor) -> Out<R> {
        let (_, channels, h, w) = record::nchw(r, path, x)?;
        let norm = GroupNorm {
            groups: self.groups,
            eps: VAE_NORM_EPS,
            silu: false,
        };
        let normed = r.group_norm(&format!("{path}.group_norm"), x, norm)?;
        let tokens = r.to_tokens(&format!("{path}.to_tokens"), &normed)?;
        let attention = Attention {
            heads: 1,
            head_dim: channels,
            qkv_bias: true,
            causal: false,
            names: ProjectionNames::DIFFUSERS,
            fuse_qkv: false,
        };
        let out = attention.forward(r, path, &tokens, None, None, None)?;
        let out = r.to_nchw(&format!("{path}.to_nchw"), &out, (h, w))?;
        r.residual_add(&format!("{path}.residual"), out, x, 1.0)
    }
}

/// The one check of a VAE config, run before any weight is read.
///
/// # Errors
///
/// [`PlanError::Unsupported`] for block types other than SD's or another activation,
/// [`PlanError::Architecture`] for an empty channel list.
pub fn check_supported(config: &AutoencoderKLConfig) -> Result<(), PlanError> {
    let unsupported = |what: String| Err(PlanError::Unsupported { part: "vae", what });
    if config.block_out_channels.is_empty() || config.norm_num_groups == 0 {
        return Err(architecture(
            "vae",
            "`block_out_channels` is empty or `norm_num_groups` is 0".into(),
        ));
    }
    if let Some(ty) = config
        .down_block_types
        .iter()
        .find(|t| *t != "DownEncoderBlock2D")
    {
        return unsupported(format!("down block type `{ty}`"));
    }
    if let Some(ty) = config
        .up_block_types
        .iter()
        .find(|t| *t != "UpDecoderBlock2D")
    {
        return unsupported(format!("up block type `{ty}`"));
    }
    if config.act_fn != "silu" {
        return unsupported(format!("`act_fn` `{}`", config.act_fn));
    }
    Ok(())
}
