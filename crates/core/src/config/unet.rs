//! `unet/config.json`: the constructor arguments of diffusers' `UNet2DConditionModel`
//! (`diffusers/models/unets/unet_2d_condition.py`), with diffusers' defaults.

use alloc::string::String;
use alloc::vec::Vec;

use serde::Deserialize;

use super::{ConfigError, OneOrMany, check_per_block, invalid, json};

/// The configuration of a `UNet2DConditionModel` (SD 1.x, 2.x, XL, LCM, inpainting).
///
/// Required keys: `in_channels`, `out_channels`, `block_out_channels`, `down_block_types`,
/// `up_block_types`, `layers_per_block`, `cross_attention_dim` and `attention_head_dim`. Every
/// other key defaults to the value of diffusers' constructor.
///
/// **Head counts.** For historical reasons diffusers' `attention_head_dim` holds the number of
/// attention *heads* of each block, not their size (SD 1.5: 8 heads of size 40..160;
/// diffusers issue 2011). `num_attention_heads`, where present, takes precedence.
/// [`UNet2DConditionConfig::heads_per_block`] resolves this.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UNet2DConditionConfig {
    /// `_class_name`: the diffusers class, `UNet2DConditionModel` (absent in some old configs).
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// `sample_size`: the latent height and width the model was trained at (a number or
    /// `[height, width]`); `None` if absent. Informational: any size works.
    #[serde(default)]
    pub sample_size: Option<OneOrMany<usize>>,
    /// `in_channels`: channels of the input latents (4; 9 for inpainting models, whose input is
    /// latents, mask and masked-image latents).
    pub in_channels: usize,
    /// `out_channels`: channels of the prediction (4).
    pub out_channels: usize,
    /// `center_input_sample`: whether the input is mapped with `2 * x - 1` first (default false).
    #[serde(default, deserialize_with = "super::json::null_as_false")]
    pub center_input_sample: bool,
    /// `flip_sin_to_cos`: whether the sinusoidal timestep embedding puts cosines first
    /// (default true).
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// `freq_shift`: `downscale_freq_shift` of the timestep embedding (default 0).
    #[serde(default)]
    pub freq_shift: f64,
    /// `down_block_types`: one diffusers block class per resolution level, highest resolution
    /// first (`CrossAttnDownBlock2D` or `DownBlock2D` for SD).
    pub down_block_types: Vec<String>,
    /// `mid_block_type`: the middle block's class (default `UNetMidBlock2DCrossAttn`); JSON
    /// `null` means the model has no middle block.
    #[serde(default = "default_mid_block_type")]
    pub mid_block_type: Option<String>,
    /// `up_block_types`: one block class per level, lowest resolution first (`UpBlock2D` or
    /// `CrossAttnUpBlock2D` for SD).
    pub up_block_types: Vec<String>,
    /// `only_cross_attention`: whether a block's transformer attends only to the text, also in
    /// its first attention (default false), for all blocks or per block.
    #[serde(default = "default_only_cross_attention")]
    pub only_cross_attention: OneOrMany<bool>,
    /// `block_out_channels`: channels of each resolution level (SD 1.5: 320, 640, 1280, 1280).
    pub block_out_channels: Vec<usize>,
    /// `layers_per_block`: ResNet layers per down block, for all blocks or per block; up
    /// blocks have one more (SD: 2).
    pub layers_per_block: OneOrMany<usize>,
    /// `downsample_padding`: padding of the stride-2 downsampling convolutions (default 1).
    #[serde(default = "default_one")]
    pub downsample_padding: usize,
    /// `mid_block_scale_factor`: the middle block's ResNet output scale (default 1).
    #[serde(default = "default_one_f64")]
    pub mid_block_scale_factor: f64,
    /// `dropout`: dropout probability, unused at inference (default 0).
    #[serde(default)]
    pub dropout: f64,
    /// `act_fn`: the activation of ResNets and the time embedding (default `silu`).
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// `norm_num_groups`: groups of every group norm (default 32); JSON `null` means the
    /// output has no norm and activation before `conv_out`.
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: Option<usize>,
    /// `norm_eps`: epsilon of the ResNet and output group norms (default 1e-5).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// `cross_attention_dim`: width of the text encoder's hidden states that the
    /// cross-attention reads (SD 1.5: 768, SD 2: 1024, SDXL: 2048), for all blocks or per block.
    pub cross_attention_dim: OneOrMany<usize>,
    /// `transformer_layers_per_block`: `BasicTransformerBlock`s in each attention of a block
    /// (default 1; SDXL: `[1, 2, 10]`), for all blocks or per block. The per-layer nested
    /// lists of asymmetric UNets are not supported (a parse error names this key).
    #[serde(default = "default_transformer_layers")]
    pub transformer_layers_per_block: OneOrMany<usize>,
    /// `reverse_transformer_layers_per_block`: for asymmetric UNets, the transformer depth of
    /// each attention layer of each up block (default: the down blocks' depths, reversed).
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<Vec<usize>>>,
    /// `encoder_hid_dim`: if set, text states are projected from this width first (default
    /// none; not used by SD).
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// `encoder_hid_dim_type`: the kind of that projection (default none).
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// `attention_head_dim`: despite its name, the number of attention **heads** of each block
    /// when `num_attention_heads` is absent (default 8; SD 2: `[5, 10, 20, 20]`).
    pub attention_head_dim: OneOrMany<usize>,
    /// `num_attention_heads`: the number of heads per block; overrides `attention_head_dim`
    /// when present (default none).
    #[serde(default)]
    pub num_attention_heads: Option<OneOrMany<usize>>,
    /// `dual_cross_attention`: two transformers per attention layer (default false; not SD).
    #[serde(default, deserialize_with = "super::json::null_as_false")]
    pub dual_cross_attention: bool,
    /// `use_linear_projection`: whether the transformers' `proj_in`/`proj_out` are linear
    /// layers on tokens (SD 2, SDXL) instead of 1x1 convolutions (SD 1.x) (default false).
    #[serde(default, deserialize_with = "super::json::null_as_false")]
    pub use_linear_projection: bool,
    /// `class_embed_type`: an extra class embedding summed with the time embedding (default
    /// none).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// `addition_embed_type`: an extra embedding summed with the time embedding (default none;
    /// SDXL: `text_time`, from the pooled text embedding and the size/crop time ids).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// `addition_time_embed_dim`: width of the sinusoidal embedding of each `text_time` time id
    /// (SDXL: 256; default none).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// `num_class_embeds`: size of a learnt class-embedding table (default none).
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// `upcast_attention`: whether diffusers computes attention scores in f32 even in f16
    /// (default false; SD 2.1: true). Our attention kernel always accumulates in f32.
    #[serde(default, deserialize_with = "super::json::null_as_false")]
    pub upcast_attention: bool,
    /// `resnet_time_scale_shift`: how ResNets apply the time embedding: `default` (added) or
    /// `scale_shift` (default `default`).
    #[serde(default = "default_default")]
    pub resnet_time_scale_shift: String,
    /// `resnet_skip_time_act`: whether ResNets skip the activation before `time_emb_proj`
    /// (default false).
    #[serde(default, deserialize_with = "super::json::null_as_false")]
    pub resnet_skip_time_act: bool,
    /// `resnet_out_scale_factor`: ResNet output scale (default 1).
    #[serde(default = "default_one_f64")]
    pub resnet_out_scale_factor: f64,
    /// `time_embedding_type`: `positional` (sinusoidal) or `fourier` (default `positional`).
    #[serde(default = "default_positional")]
    pub time_embedding_type: String,
    /// `time_embedding_dim`: width of the projected time embedding (default
    /// `4 * block_out_channels[0]`; see [`UNet2DConditionConfig::time_embed_dim`]).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// `time_embedding_act_fn`: an activation applied once to the time embedding (default
    /// none).
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    /// `timestep_post_act`: an activation after the time embedding's second linear (default
    /// none).
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    /// `time_cond_proj_dim`: width of the guidance ("w") embedding that LCM-distilled models
    /// add to the timestep embedding through `time_embedding.cond_proj` (default none).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// `conv_in_kernel`: kernel size of `conv_in` (default 3).
    #[serde(default = "default_three")]
    pub conv_in_kernel: usize,
    /// `conv_out_kernel`: kernel size of `conv_out` (default 3).
    #[serde(default = "default_three")]
    pub conv_out_kernel: usize,
    /// `projection_class_embeddings_input_dim`: input width of the `text_time` (or
    /// `projection`) embedding: pooled text width + 6 x `addition_time_embed_dim` for SDXL
    /// (default none).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// `attention_type`: `default`, or the gated GLIGEN variants (default `default`).
    #[serde(default = "default_default")]
    pub attention_type: String,
    /// `class_embeddings_concat`: concatenate instead of adding the class embedding (default
    /// false).
    #[serde(default, deserialize_with = "super::json::null_as_false")]
    pub class_embeddings_concat: bool,
    /// `mid_block_only_cross_attention`: `only_cross_attention` of a simple-cross-attention
    /// middle block (default: `only_cross_attention` when that is a single value, else false).
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    /// `cross_attention_norm`: a norm applied to the text states inside attention (default
    /// none).
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// `addition_embed_type_num_heads`: heads of the `text` addition embedding (default 64).
    #[serde(default = "default_addition_heads")]
    pub addition_embed_type_num_heads: usize,
}

impl UNet2DConditionConfig {
    /// Parses `unet/config.json`; `file` labels the file in errors.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for bad JSON, a missing required key or a wrongly typed value;
    /// [`ConfigError::Invalid`] when per-block lists do not have one entry per block, or a
    /// count that must be positive is zero.
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
        check_per_block(file, "layers_per_block", &self.layers_per_block, blocks)?;
        check_per_block(
            file,
            "cross_attention_dim",
            &self.cross_attention_dim,
            blocks,
        )?;
        check_per_block(file, "attention_head_dim", &self.attention_head_dim, blocks)?;
        check_per_block(
            file,
            "transformer_layers_per_block",
            &self.transformer_layers_per_block,
            blocks,
        )?;
        check_per_block(
            file,
            "only_cross_attention",
            &self.only_cross_attention,
            blocks,
        )?;
        if let Some(heads) = &self.num_attention_heads {
            check_per_block(file, "num_attention_heads", heads, blocks)?;
        }
        if let Some(reverse) = &self.reverse_transformer_layers_per_block
            && reverse.len() != blocks
        {
            return Err(invalid(
                file,
                "reverse_transformer_layers_per_block",
                alloc::format!(
                    "has {} entries but the model has {blocks} blocks",
                    reverse.len()
                ),
            ));
        }
        if self.heads_per_block().contains(&0) {
            let key = if self.num_attention_heads.is_some() {
                "num_attention_heads"
            } else {
                "attention_head_dim"
            };
            return Err(invalid(file, key, "a block has 0 attention heads".into()));
        }
        if self.norm_num_groups == Some(0) {
            return Err(invalid(file, "norm_num_groups", "is 0".into()));
        }
        Ok(())
    }

    /// The number of resolution levels (entries of `block_out_channels`).
    pub fn blocks(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Attention heads of each down block, as diffusers resolves them: `num_attention_heads`
    /// if present, else `attention_head_dim` (which holds head counts; see the type's docs); a
    /// single number applies to every block. The middle block uses the last entry and the up
    /// blocks use this list reversed.
    pub fn heads_per_block(&self) -> Vec<usize> {
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim);
        per_block(heads, self.blocks())
    }

    /// `transformer_layers_per_block` resolved to one depth per down block (the middle block
    /// uses the last entry).
    pub fn transformer_depth_per_block(&self) -> Vec<usize> {
        per_block(&self.transformer_layers_per_block, self.blocks())
    }

    /// Transformer depth of each attention layer of each up block, in up-block order (lowest
    /// resolution first): `reverse_transformer_layers_per_block` if given, else each up
    /// block's reversed down-block depth repeated for its `layers_per_block + 1` layers.
    pub fn up_transformer_depths(&self) -> Vec<Vec<usize>> {
        if let Some(reverse) = &self.reverse_transformer_layers_per_block {
            return reverse.clone();
        }
        let depths = self.transformer_depth_per_block();
        let layers = self.layers_per_block();
        depths
            .iter()
            .zip(&layers)
            .rev()
            .map(|(&depth, &layers)| alloc::vec![depth; layers + 1])
            .collect()
    }

    /// `layers_per_block` resolved per down block (ResNets per down block; up blocks have one
    /// more).
    pub fn layers_per_block(&self) -> Vec<usize> {
        per_block(&self.layers_per_block, self.blocks())
    }

    /// `cross_attention_dim` resolved per down block.
    pub fn cross_attention_dim_per_block(&self) -> Vec<usize> {
        per_block(&self.cross_attention_dim, self.blocks())
    }

    /// `only_cross_attention` resolved per down block.
    pub fn only_cross_attention_per_block(&self) -> Vec<bool> {
        per_block(&self.only_cross_attention, self.blocks())
    }

    /// Width of the time embedding that every ResNet receives: `time_embedding_dim`, else
    /// `4 * block_out_channels[0]` (for `positional` time embeddings; SD 1.5: 1280).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or_else(|| 4 * self.block_out_channels.first().copied().unwrap_or(0))
    }
}

/// [`OneOrMany`] resolved for `blocks` blocks; a list is returned as given (`validate` has
/// checked its length for configs that came through `from_json`).
fn per_block<T: Clone>(value: &OneOrMany<T>, blocks: usize) -> Vec<T> {
    match value {
        OneOrMany::One(value) => alloc::vec![value.clone(); blocks],
        OneOrMany::Many(values) => values.clone(),
    }
}

fn default_true() -> bool {
    true
}

fn default_one() -> usize {
    1
}

fn default_three() -> usize {
    3
}

fn default_one_f64() -> f64 {
    1.0
}

fn default_silu() -> String {
    "silu".into()
}

fn default_default() -> String {
    "default".into()
}

fn default_positional() -> String {
    "positional".into()
}

fn default_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}

fn default_only_cross_attention() -> OneOrMany<bool> {
    OneOrMany::One(false)
}

fn default_norm_num_groups() -> Option<usize> {
    Some(32)
}

fn default_norm_eps() -> f64 {
    1e-5
}

fn default_transformer_layers() -> OneOrMany<usize> {
    OneOrMany::One(1)
}

fn default_addition_heads() -> usize {
    64
}
