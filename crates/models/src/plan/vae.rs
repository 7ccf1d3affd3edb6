//! The walks of `AutoencoderKL`'s decode and encode, after diffusers'
//! `models/autoencoders/autoencoder_kl.py` and `models/autoencoders/vae.py` (`Encoder`,
//! `Decoder`), with `models/unets/unet_2d_blocks.py` (`DownEncoderBlock2D`,
//! `UpDecoderBlock2D`, `UNetMidBlock2D`). The VAE runs one image at a time (batch 1).

use sd_core::config::AutoencoderKLConfig;

use super::graph::{Graph, OpKind, Padding, TensorId, read, write};
use super::layers::{
    AttentionSpec, ResnetSpec, attention, conv2d, downsample_2d, group_norm, residual_add,
    resnet_block_2d, to_nchw, to_tokens, upsample_2d,
};
use super::{DeviceLimits, Part, PartPlan, PlanError};

/// Epsilon of every group norm in the VAE (fixed in diffusers' `Encoder`/`Decoder`).
const VAE_NORM_EPS: f64 = 1e-6;

/// Plans `vae.decode` of one `latent_height` x `latent_width` latent: `post_quant_conv` and the
/// decoder, up to the RGB image in `[-1, 1]` (the pipeline's `latents / scaling_factor`
/// before and the postprocessing after are not included).
///
/// # Errors
///
/// [`PlanError::Unsupported`] for block types other than SD's, [`PlanError::Limit`] for a
/// buffer that does not fit even chunked.
pub fn plan_vae_decoder(
    config: &AutoencoderKLConfig,
    latent_height: usize,
    latent_width: usize,
    limits: &DeviceLimits,
) -> Result<PartPlan, PlanError> {
    check_supported(config)?;
    let mut g = Graph::new(Part::VaeDecoder, *limits, config.norm_num_groups);
    let z = g.nchw(
        "latents",
        1,
        config.latent_channels,
        latent_height,
        latent_width,
    )?;
    g.op("inputs", OpKind::Input, vec![write("latents", z)])?;
    let z = if config.use_post_quant_conv {
        conv2d(
            &mut g,
            "post_quant_conv",
            z,
            config.latent_channels,
            1,
            1,
            Padding::same(0),
        )?
    } else {
        z
    };
    let image = vae_decoder(&mut g, config, z)?;
    g.op("outputs", OpKind::Output, vec![read("sample", image)])?;
    g.finish()
}

/// Plans `vae.encode` of one `height` x `width` image: the encoder and `quant_conv`, up to the
/// latent distribution's moments (mean and log-variance, `2 * latent_channels` channels).
///
/// # Errors
///
/// As [`plan_vae_decoder`].
pub fn plan_vae_encoder(
    config: &AutoencoderKLConfig,
    height: usize,
    width: usize,
    limits: &DeviceLimits,
) -> Result<PartPlan, PlanError> {
    check_supported(config)?;
    let mut g = Graph::new(Part::VaeEncoder, *limits, config.norm_num_groups);
    let image = g.nchw("sample", 1, config.in_channels, height, width)?;
    g.op("inputs", OpKind::Input, vec![write("sample", image)])?;
    let moments = vae_encoder(&mut g, config, image)?;
    let moments = if config.use_quant_conv {
        conv2d(
            &mut g,
            "quant_conv",
            moments,
            2 * config.latent_channels,
            1,
            1,
            Padding::same(0),
        )?
    } else {
        moments
    };
    g.op("outputs", OpKind::Output, vec![read("moments", moments)])?;
    g.finish()
}

/// diffusers' `Decoder`: `conv_in`, the middle block, `UpDecoderBlock2D`s over the reversed
/// channels (`layers_per_block + 1` ResNets, then a 2x upsampler except in the last), group
/// norm + SiLU, `conv_out`.
fn vae_decoder(
    g: &mut Graph,
    config: &AutoencoderKLConfig,
    z: TensorId,
) -> Result<TensorId, PlanError> {
    let channels: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
    let top = channels.first().copied().unwrap_or(0);
    let mut x = conv2d(g, "decoder.conv_in", z, top, 3, 1, Padding::same(1))?;
    x = unet_mid_block_2d(g, config, "decoder.mid_block", x)?;
    for (i, &out_channels) in channels.iter().enumerate() {
        let path = format!("decoder.up_blocks.{i}");
        let spec = resnet_spec(config, out_channels);
        for j in 0..=config.layers_per_block {
            x = resnet_block_2d(g, &format!("{path}.resnets.{j}"), x, None, spec)?;
        }
        if i + 1 < channels.len() {
            let (_, _, h, w) = g.nchw_dims(x)?;
            x = upsample_2d(g, &format!("{path}.upsamplers.0"), x, (2 * h, 2 * w))?;
        }
    }
    x = group_norm(
        g,
        "decoder.conv_norm_out",
        x,
        config.norm_num_groups,
        VAE_NORM_EPS,
        true,
    )?;
    conv2d(
        g,
        "decoder.conv_out",
        x,
        config.out_channels,
        3,
        1,
        Padding::same(1),
    )
}

/// diffusers' `Encoder` (with `double_z`): `conv_in`, `DownEncoderBlock2D`s
/// (`layers_per_block` ResNets, then a stride-2 downsampler padded bottom/right except in the
/// last), the middle block, group norm + SiLU, `conv_out` to `2 * latent_channels`.
fn vae_encoder(
    g: &mut Graph,
    config: &AutoencoderKLConfig,
    image: TensorId,
) -> Result<TensorId, PlanError> {
    let channels = &config.block_out_channels;
    let first = channels.first().copied().unwrap_or(0);
    let mut x = conv2d(g, "encoder.conv_in", image, first, 3, 1, Padding::same(1))?;
    for (i, &out_channels) in channels.iter().enumerate() {
        let path = format!("encoder.down_blocks.{i}");
        let spec = resnet_spec(config, out_channels);
        for j in 0..config.layers_per_block {
            x = resnet_block_2d(g, &format!("{path}.resnets.{j}"), x, None, spec)?;
        }
        if i + 1 < channels.len() {
            let padding = Padding {
                before: 0,
                after: 1,
            };
            x = downsample_2d(g, &format!("{path}.downsamplers.0"), x, padding)?;
        }
    }
    x = unet_mid_block_2d(g, config, "encoder.mid_block", x)?;
    x = group_norm(
        g,
        "encoder.conv_norm_out",
        x,
        config.norm_num_groups,
        VAE_NORM_EPS,
        true,
    )?;
    conv2d(
        g,
        "encoder.conv_out",
        x,
        2 * config.latent_channels,
        3,
        1,
        Padding::same(1),
    )
}

/// `UNetMidBlock2D` without a time embedding: ResNet, (single-head self-attention over all
/// pixels if `mid_block_add_attention`), ResNet.
fn unet_mid_block_2d(
    g: &mut Graph,
    config: &AutoencoderKLConfig,
    path: &str,
    x: TensorId,
) -> Result<TensorId, PlanError> {
    let (_, channels, _, _) = g.nchw_dims(x)?;
    let spec = resnet_spec(config, channels);
    let mut x = resnet_block_2d(g, &format!("{path}.resnets.0"), x, None, spec)?;
    if config.mid_block_add_attention {
        x = spatial_attention(g, config, &format!("{path}.attentions.0"), x)?;
    }
    resnet_block_2d(g, &format!("{path}.resnets.1"), x, None, spec)
}

/// diffusers' `Attention` on a 4-D input as the VAE builds it (`heads = 1`,
/// `dim_head = channels`, `norm_num_groups` group norm, biases on `to_q/k/v`, residual
/// connection): group norm, to tokens, attention, back to NCHW, plus the input.
fn spatial_attention(
    g: &mut Graph,
    config: &AutoencoderKLConfig,
    path: &str,
    x: TensorId,
) -> Result<TensorId, PlanError> {
    let (_, channels, h, w) = g.nchw_dims(x)?;
    let normed = group_norm(
        g,
        &format!("{path}.group_norm"),
        x,
        config.norm_num_groups,
        VAE_NORM_EPS,
        false,
    )?;
    let tokens = to_tokens(g, &format!("{path}.to_tokens"), normed)?;
    let spec = AttentionSpec {
        heads: 1,
        head_dim: channels,
        qkv_bias: true,
    };
    let out = attention(g, path, tokens, None, spec)?;
    let out = to_nchw(g, &format!("{path}.to_nchw"), out, h, w)?;
    residual_add(g, &format!("{path}.residual"), out, x)?;
    Ok(out)
}

fn resnet_spec(config: &AutoencoderKLConfig, out_channels: usize) -> ResnetSpec {
    ResnetSpec {
        out_channels,
        groups: config.norm_num_groups,
        eps: VAE_NORM_EPS,
    }
}

fn check_supported(config: &AutoencoderKLConfig) -> Result<(), PlanError> {
    let unsupported = |what: String| Err(PlanError::Unsupported { part: "vae", what });
    if config.block_out_channels.is_empty() || config.norm_num_groups == 0 {
        return Err(PlanError::Architecture {
            part: "vae",
            message: "`block_out_channels` is empty or `norm_num_groups` is 0".into(),
        });
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
