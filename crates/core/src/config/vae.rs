//! `vae/config.json`: the constructor arguments of diffusers' `AutoencoderKL`
//! (`diffusers/models/autoencoders/autoencoder_kl.py`), with diffusers' defaults.

use alloc::string::String;
use alloc::vec::Vec;

use serde::Deserialize;

use super::{ConfigError, invalid, json};

/// The configuration of an `AutoencoderKL` (the SD 1.x/2.x/XL VAE).
///
/// Required keys: `in_channels`, `out_channels`, `down_block_types`, `up_block_types`,
/// `block_out_channels`, `layers_per_block` and `latent_channels`. SD 1.5's original config
/// lacks `scaling_factor`, `force_upcast` and `mid_block_add_attention`, which default as in
/// diffusers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AutoencoderKLConfig {
    /// `_class_name`: the diffusers class, `AutoencoderKL` (absent in some old configs).
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// `in_channels`: channels of the images the encoder takes (3, RGB).
    pub in_channels: usize,
    /// `out_channels`: channels of the images the decoder produces (3, RGB).
    pub out_channels: usize,
    /// `down_block_types`: the encoder's block class per level (`DownEncoderBlock2D`).
    pub down_block_types: Vec<String>,
    /// `up_block_types`: the decoder's block class per level (`UpDecoderBlock2D`).
    pub up_block_types: Vec<String>,
    /// `block_out_channels`: channels of each level, highest resolution first (SD: 128, 256,
    /// 512, 512). The decoder walks them in reverse. There are `len - 1` down/upsamplings, so
    /// SD's VAE maps images to latents 8 times smaller.
    pub block_out_channels: Vec<usize>,
    /// `layers_per_block`: ResNets per encoder block; decoder blocks have one more (SD: 2).
    pub layers_per_block: usize,
    /// `act_fn`: the ResNets' activation (default `silu`).
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// `latent_channels`: channels of the latent space (4).
    pub latent_channels: usize,
    /// `norm_num_groups`: groups of every group norm (default 32).
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: usize,
    /// `sample_size`: the image size the VAE was trained at (default 32). Informational.
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
    /// `scaling_factor`: latents are multiplied by this after encoding and divided by it
    /// before decoding (default 0.18215, SD 1.x/2.x; SDXL: 0.13025).
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// `shift_factor`: subtracted from latents before scaling (default none; not SD).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// `latents_mean`: per-channel latent mean for normalisation (default none; not SD).
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// `latents_std`: per-channel latent standard deviation (default none; not SD).
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// `force_upcast`: whether diffusers runs this VAE in f32 even in an f16 pipeline (default
    /// true; SDXL's VAE overflows in f16). We always keep activations in f32.
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    /// `use_quant_conv`: whether a 1x1 `quant_conv` follows the encoder (default true).
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    /// `use_post_quant_conv`: whether a 1x1 `post_quant_conv` precedes the decoder (default
    /// true).
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// `mid_block_add_attention`: whether the encoder's and decoder's middle blocks have their
    /// single-head self-attention over all pixels (default true).
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

impl AutoencoderKLConfig {
    /// Parses `vae/config.json`; `file` labels the file in errors.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for bad JSON, a missing required key or a wrongly typed value;
    /// [`ConfigError::Invalid`] when the block lists disagree in length or a count is zero.
    pub fn from_json(file: &str, json: &str) -> Result<Self, ConfigError> {
        let config: Self = json::from_json(file, json)?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let blocks = self.block_out_channels.len();
        if blocks == 0 {
            return Err(invalid(file, "block_out_channels", "is empty".into()));
        }
        if self.block_out_channels.contains(&0) {
            return Err(invalid(file, "block_out_channels", "contains 0".into()));
        }
        for (key, len) in [
            ("down_block_types", self.down_block_types.len()),
            ("up_block_types", self.up_block_types.len()),
        ] {
            if len != blocks {
                return Err(invalid(
                    file,
                    key,
                    alloc::format!("has {len} entries but `block_out_channels` has {blocks}"),
                ));
            }
        }
        for (key, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            if value == 0 {
                return Err(invalid(file, key, "is 0".into()));
            }
        }
        Ok(())
    }

    /// How many times smaller the latents are than the images: `2^(levels - 1)` (8 for SD).
    pub fn scale_factor(&self) -> usize {
        let downsamplings = self.block_out_channels.len().saturating_sub(1);
        u32::try_from(downsamplings)
            .ok()
            .and_then(|d| 1usize.checked_shl(d))
            .unwrap_or(usize::MAX)
    }
}

fn default_true() -> bool {
    true
}

fn default_silu() -> String {
    "silu".into()
}

fn default_norm_num_groups() -> usize {
    32
}

fn default_sample_size() -> usize {
    32
}

fn default_scaling_factor() -> f64 {
    0.18215
}
