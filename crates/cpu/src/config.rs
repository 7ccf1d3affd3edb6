//! Our diffusers configs as candle-transformers' configs, refusing with a typed error what
//! candle's Stable Diffusion modules do not implement.

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::stable_diffusion::clip::Config as SdClipConfig;
use candle_transformers::models::stable_diffusion::{unet_2d, vae};
use sd_core::config::{AutoencoderKLConfig, CLIPTextConfig, HiddenAct, UNet2DConditionConfig};
use sd_models::ModelError;

fn unsupported(part: &'static str, what: impl Into<String>) -> ModelError {
    ModelError::Unsupported {
        part,
        what: format!("{} on the CPU backend (use --device gpu)", what.into()),
    }
}

/// Which of candle's two CLIP text transformers runs a text encoder config.
#[derive(Debug, Clone)]
pub enum TextEncoderConfig {
    /// `quick_gelu` (SD 1.x) at any size: `clip::text_model`, whose config is public.
    QuickGelu(ClipTextConfig),
    /// `gelu` (SD 2.x's OpenCLIP-H): only at SD 2.1's published size, the one
    /// `stable_diffusion::clip` has (its fields are private). candle's GELU there is the tanh
    /// approximation, not transformers' erf one.
    Sd21(SdClipConfig),
}

/// The text encoder's candle config.
pub fn text_encoder(c: &CLIPTextConfig) -> Result<TextEncoderConfig, ModelError> {
    match c.hidden_act {
        HiddenAct::QuickGelu => Ok(TextEncoderConfig::QuickGelu(ClipTextConfig {
            vocab_size: c.vocab_size,
            embed_dim: c.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: c.intermediate_size,
            max_position_embeddings: c.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            projection_dim: c.projection_dim.unwrap_or(c.hidden_size),
        })),
        HiddenAct::Gelu
            if (
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.max_position_embeddings,
            ) == (49408, 1024, 4096, 23, 16, 77) =>
        {
            Ok(TextEncoderConfig::Sd21(SdClipConfig::v2_1()))
        }
        HiddenAct::Gelu => Err(unsupported(
            "text_encoder",
            format!(
                "a `gelu` text encoder other than SD 2.1's (hidden_size {}, {} layers)",
                c.hidden_size, c.num_hidden_layers
            ),
        )),
    }
}

/// The UNet's candle config and its (in, out) channels.
pub fn unet(
    c: &UNet2DConditionConfig,
) -> Result<(unet_2d::UNet2DConditionModelConfig, usize, usize), ModelError> {
    let refuse = |what: String| Err(unsupported("unet", what));
    if let Some(kind) = &c.addition_embed_type {
        return refuse(format!("addition_embed_type {kind:?} (SDXL)"));
    }
    if c.time_cond_proj_dim.is_some() {
        return refuse("time_cond_proj_dim (LCM's guidance embedding)".into());
    }
    if let Some(kind) = &c.class_embed_type {
        return refuse(format!("class_embed_type {kind:?}"));
    }
    if c.encoder_hid_dim_type.is_some() {
        return refuse("encoder_hid_dim_type".into());
    }
    if c.dual_cross_attention || c.only_cross_attention_per_block().iter().any(|&b| b) {
        return refuse("dual or only cross-attention".into());
    }
    if c.reverse_transformer_layers_per_block.is_some() {
        return refuse("reverse_transformer_layers_per_block".into());
    }
    if c.act_fn != "silu" || c.resnet_time_scale_shift != "default" {
        return refuse(format!(
            "act_fn {:?} with resnet_time_scale_shift {:?} (silu, default)",
            c.act_fn, c.resnet_time_scale_shift
        ));
    }
    if c.time_embedding_type != "positional" || c.time_embed_dim() != 4 * c.block_out_channels[0] {
        return refuse(
            "a time embedding other than positional at 4x the first block's width".into(),
        );
    }
    if c.conv_in_kernel != 3 || c.conv_out_kernel != 3 {
        return refuse("conv_in/conv_out kernels other than 3".into());
    }
    if c.attention_type != "default" {
        return refuse(format!("attention_type {:?}", c.attention_type));
    }
    let layers = c.layers_per_block();
    let cross = c.cross_attention_dim_per_block();
    if layers.iter().any(|&l| l != layers[0]) || cross.iter().any(|&d| d != cross[0]) {
        return refuse("per-block layers_per_block or cross_attention_dim".into());
    }
    if c.mid_block_type
        .as_deref()
        .is_some_and(|t| t != "UNetMidBlock2DCrossAttn")
    {
        return refuse(format!("mid_block_type {:?}", c.mid_block_type));
    }
    let Some(groups) = c.norm_num_groups else {
        return refuse("norm_num_groups null".into());
    };
    let heads = c.heads_per_block();
    let depths = c.transformer_depth_per_block();
    let mut blocks = Vec::with_capacity(c.blocks());
    for (i, kind) in c.down_block_types.iter().enumerate() {
        let cross_attention = match kind.as_str() {
            "CrossAttnDownBlock2D" => true,
            "DownBlock2D" => false,
            other => return refuse(format!("down block type {other:?}")),
        };
        // candle mirrors the down blocks for the up blocks.
        let mirrored = if cross_attention {
            "CrossAttnUpBlock2D"
        } else {
            "UpBlock2D"
        };
        if c.up_block_types.get(c.blocks() - 1 - i).map(String::as_str) != Some(mirrored) {
            return refuse("up blocks that do not mirror the down blocks".into());
        }
        blocks.push(unet_2d::BlockConfig {
            out_channels: c.block_out_channels[i],
            use_cross_attn: cross_attention.then_some(depths[i]),
            attention_head_dim: heads[i],
        });
    }
    let config = unet_2d::UNet2DConditionModelConfig {
        center_input_sample: c.center_input_sample,
        flip_sin_to_cos: c.flip_sin_to_cos,
        freq_shift: c.freq_shift,
        blocks,
        layers_per_block: layers[0],
        downsample_padding: c.downsample_padding,
        mid_block_scale_factor: c.mid_block_scale_factor,
        norm_num_groups: groups,
        norm_eps: c.norm_eps,
        cross_attention_dim: cross[0],
        sliced_attention_size: None,
        use_linear_projection: c.use_linear_projection,
    };
    Ok((config, c.in_channels, c.out_channels))
}

/// The VAE's candle config.
pub fn vae(c: &AutoencoderKLConfig) -> Result<vae::AutoEncoderKLConfig, ModelError> {
    let plain = c.down_block_types.iter().all(|t| t == "DownEncoderBlock2D")
        && c.up_block_types.iter().all(|t| t == "UpDecoderBlock2D");
    if !plain || c.act_fn != "silu" || !c.mid_block_add_attention {
        return Err(unsupported(
            "vae",
            "blocks other than DownEncoderBlock2D/UpDecoderBlock2D with silu and mid-block attention",
        ));
    }
    Ok(vae::AutoEncoderKLConfig {
        block_out_channels: c.block_out_channels.clone(),
        layers_per_block: c.layers_per_block,
        latent_channels: c.latent_channels,
        norm_num_groups: c.norm_num_groups,
        use_quant_conv: c.use_quant_conv,
        use_post_quant_conv: c.use_post_quant_conv,
    })
}
