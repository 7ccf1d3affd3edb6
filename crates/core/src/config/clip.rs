//! `text_encoder/config.json`: transformers' `CLIPTextConfig`
//! (`transformers/models/clip/configuration_clip.py`), the text half of CLIP that SD uses.

use alloc::string::String;
use alloc::vec::Vec;

use serde::Deserialize;

use super::{ConfigError, invalid, json};

/// The activation of CLIP's MLPs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum HiddenAct {
    /// `quick_gelu`: `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// `gelu`: the exact, erf-based GELU (OpenCLIP, SD 2.x, SDXL's second encoder).
    #[serde(rename = "gelu")]
    Gelu,
}

/// The configuration of a `CLIPTextModel` / `CLIPTextModelWithProjection`.
///
/// transformers always writes the model-specific keys, so `vocab_size`, `hidden_size`,
/// `intermediate_size`, `num_hidden_layers`, `num_attention_heads` and
/// `max_position_embeddings` are required; the rest default as in `CLIPTextConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CLIPTextConfig {
    /// `architectures`: the transformers class(es) saved, e.g. `["CLIPTextModel"]` or
    /// `["CLIPTextModelWithProjection"]` (default none).
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// `vocab_size`: rows of the token embedding (49408).
    pub vocab_size: usize,
    /// `hidden_size`: width of the hidden states (ViT-L/14: 768; OpenCLIP ViT-H: 1024).
    pub hidden_size: usize,
    /// `intermediate_size`: width of each MLP's hidden layer (usually 4 x `hidden_size`).
    pub intermediate_size: usize,
    /// `num_hidden_layers`: encoder layers (ViT-L/14: 12).
    pub num_hidden_layers: usize,
    /// `num_attention_heads`: heads of each self-attention (ViT-L/14: 12).
    pub num_attention_heads: usize,
    /// `max_position_embeddings`: rows of the position embedding, the longest token sequence
    /// (77).
    pub max_position_embeddings: usize,
    /// `hidden_act`: the MLP activation (default `quick_gelu`).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: HiddenAct,
    /// `layer_norm_eps`: epsilon of every layer norm (default 1e-5).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// `projection_dim`: output width of `text_projection` in `CLIPTextModelWithProjection`
    /// (SDXL's second encoder); `None` when absent.
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// `pad_token_id`: the padding token id (default 1). The tokenizer's own files are
    /// authoritative for tokenising: SD 1.5's config says 1 while its tokenizer pads with 49407.
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: u32,
    /// `bos_token_id`: the start-of-text token id (default 49406; SD 1.5's config says 0).
    #[serde(default = "default_bos_token_id")]
    pub bos_token_id: u32,
    /// `eos_token_id`: the end-of-text token id (default 49407; SD 1.5's config says 2, and
    /// transformers then finds the pooled token as the highest id instead).
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: u32,
}

impl CLIPTextConfig {
    /// Parses `text_encoder/config.json`; `file` labels the file in errors.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for bad JSON, a missing required key, a wrongly typed value or an
    /// unknown `hidden_act`; [`ConfigError::Invalid`] when `hidden_size` is not a positive
    /// multiple of `num_attention_heads` or a size is zero.
    pub fn from_json(file: &str, json: &str) -> Result<Self, ConfigError> {
        let config: Self = json::from_json(file, json)?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(invalid(file, key, "is 0".into()));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(invalid(
                file,
                "num_attention_heads",
                alloc::format!(
                    "{} heads do not divide `hidden_size` {}",
                    self.num_attention_heads,
                    self.hidden_size
                ),
            ));
        }
        Ok(())
    }

    /// Width of one attention head: `hidden_size / num_attention_heads` (ViT-L/14: 64).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }
}

fn default_hidden_act() -> HiddenAct {
    HiddenAct::QuickGelu
}

fn default_layer_norm_eps() -> f64 {
    1e-5
}

fn default_pad_token_id() -> u32 {
    1
}

fn default_bos_token_id() -> u32 {
    49406
}

fn default_eos_token_id() -> u32 {
    49407
}
