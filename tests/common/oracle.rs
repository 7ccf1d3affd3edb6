//! candle-transformers' configs for a diffusers model, read from its `config.json` files
//! directly with `serde_json` (not through `sd_core`'s parser, so the oracle does not share our
//! parsing), as `shared/notes/oracle.md` describes. Included with `#[path]` by the test and the
//! example that use candle (it is a dev-dependency, so it cannot live in the library).

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::stable_diffusion::{unet_2d, vae};
use serde_json::Value;

/// Parses a config file's text.
pub fn raw(json: &str) -> Value {
    serde_json::from_str(json).expect("config JSON")
}

fn count(v: &Value, key: &str) -> usize {
    v[key]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or_else(|| panic!("`{key}` is not a count"))
}

fn counts(v: &Value, key: &str) -> Vec<usize> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not a list"))
        .iter()
        .map(|n| {
            n.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or_else(|| panic!("`{key}` holds a non-count"))
        })
        .collect()
}

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number"))
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    v[key].as_bool().unwrap_or(default)
}

/// The text encoder (`ClipTextTransformer`; candle's CLIP has quick_gelu only).
pub fn clip(v: &Value) -> ClipTextConfig {
    assert_eq!(
        v["hidden_act"], "quick_gelu",
        "candle's CLIP is quick_gelu only"
    );
    ClipTextConfig {
        vocab_size: count(v, "vocab_size"),
        embed_dim: count(v, "hidden_size"),
        activation: Activation::QuickGelu,
        intermediate_size: count(v, "intermediate_size"),
        max_position_embeddings: count(v, "max_position_embeddings"),
        pad_with: None,
        num_hidden_layers: count(v, "num_hidden_layers"),
        num_attention_heads: count(v, "num_attention_heads"),
        projection_dim: count(v, "projection_dim"),
    }
}

/// The UNet config and its (in, out) channels. diffusers' `attention_head_dim` (one number
/// for SD 1.x) is a head count, and so is candle's.
pub fn unet(v: &Value) -> (unet_2d::UNet2DConditionModelConfig, usize, usize) {
    assert!(
        !flag(v, "use_linear_projection", false),
        "the SD 1.x layout (conv proj_in/proj_out)"
    );
    let heads = count(v, "attention_head_dim");
    let kinds = v["down_block_types"]
        .as_array()
        .expect("`down_block_types` is a list");
    let blocks = counts(v, "block_out_channels")
        .into_iter()
        .zip(kinds)
        .map(|(out_channels, kind)| unet_2d::BlockConfig {
            out_channels,
            use_cross_attn: kind
                .as_str()
                .is_some_and(|k| k.starts_with("CrossAttn"))
                .then_some(1),
            attention_head_dim: heads,
        })
        .collect();
    let config = unet_2d::UNet2DConditionModelConfig {
        center_input_sample: flag(v, "center_input_sample", false),
        flip_sin_to_cos: flag(v, "flip_sin_to_cos", true),
        freq_shift: number(v, "freq_shift"),
        blocks,
        layers_per_block: count(v, "layers_per_block"),
        downsample_padding: count(v, "downsample_padding"),
        mid_block_scale_factor: number(v, "mid_block_scale_factor"),
        norm_num_groups: count(v, "norm_num_groups"),
        norm_eps: number(v, "norm_eps"),
        cross_attention_dim: count(v, "cross_attention_dim"),
        sliced_attention_size: None,
        use_linear_projection: false,
    };
    (config, count(v, "in_channels"), count(v, "out_channels"))
}

/// The VAE config, its (in, out) channels and its latent scaling factor.
pub fn vae(v: &Value) -> (vae::AutoEncoderKLConfig, usize, usize, f64) {
    let config = vae::AutoEncoderKLConfig {
        block_out_channels: counts(v, "block_out_channels"),
        layers_per_block: count(v, "layers_per_block"),
        latent_channels: count(v, "latent_channels"),
        norm_num_groups: count(v, "norm_num_groups"),
        use_quant_conv: flag(v, "use_quant_conv", true),
        use_post_quant_conv: flag(v, "use_post_quant_conv", true),
    };
    let scaling = v["scaling_factor"].as_f64().unwrap_or(0.18215);
    (
        config,
        count(v, "in_channels"),
        count(v, "out_channels"),
        scaling,
    )
}
