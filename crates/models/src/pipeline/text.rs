//! The prompt side: tokenizing, the text encoder(s), and what every UNet call is conditioned
//! on (the context rows, LCM's guidance embedding, SDXL's pooled embeddings and time ids).

use sd_core::conditioning::{guidance_scale_embedding, sdxl_time_ids};
use sd_core::params::GenerationParams;
use sd_weights::ClipTokenizer;

use super::StableDiffusion;
use crate::backend::{PromptEmbeddings, TokenIds, UNetInputs};
use crate::{ModelError, Result};

impl StableDiffusion {
    /// Tokenizes `prompts` and runs the text encoder(s) on them as one batch; returns the
    /// hidden states `[prompts, 77, D]` (and SDXL's pooled embeddings), and any truncation
    /// warnings.
    ///
    /// SD 1.x/2.x: the last hidden state (SD 2's config already drops OpenCLIP's last layer).
    /// SDXL: both encoders' `hidden_states[-2]` without the final norm, concatenated, and the
    /// second encoder's `text_embeds`; with `force_zeros_for_empty_prompt` an empty prompt is
    /// zeros (diffusers does that for the negative prompt, the only one that may be empty).
    pub async fn encode_prompts(
        &self,
        prompts: &[&str],
    ) -> Result<(PromptEmbeddings, Vec<String>)> {
        let mut warnings = Vec::new();
        let (ids, eos) = tokenize(&self.tokenizer, prompts, &mut warnings)?;
        let first = TokenIds {
            ids: &ids,
            eos: &eos,
            prompts: prompts.len(),
            len: self.tokenizer.max_length(),
        };
        let Some(tokenizer_2) = &self.tokenizer_2 else {
            let embeddings = self.networks.encode_text(first, None).await?;
            return Ok((embeddings, warnings));
        };
        // The second tokenizer cuts the same prompts: its warnings would repeat the first's.
        let (ids_2, eos_2) = tokenize(tokenizer_2, prompts, &mut Vec::new())?;
        let second = TokenIds {
            ids: &ids_2,
            eos: &eos_2,
            prompts: prompts.len(),
            len: tokenizer_2.max_length(),
        };
        let mut embeddings = self.networks.encode_text(first, Some(second)).await?;
        if self.force_zeros_for_empty_prompt {
            let row = embeddings.hidden.len() / prompts.len();
            for (i, prompt) in prompts.iter().enumerate() {
                if prompt.is_empty() {
                    embeddings.hidden[i * row..(i + 1) * row].fill(0.0);
                    if let Some(pooled) = &mut embeddings.pooled {
                        let width = pooled.len() / prompts.len();
                        pooled[i * width..(i + 1) * width].fill(0.0);
                    }
                }
            }
        }
        Ok((embeddings, warnings))
    }
}

/// What every UNet call of an image group is conditioned on: the context rows
/// `[negative x images, prompt x images]` (or `[prompt x images]` without CFG), and LCM's
/// guidance embedding or SDXL's pooled embeddings and time ids when the UNet takes them.
pub(super) fn unet_inputs(
    sd: &StableDiffusion,
    params: &GenerationParams,
    embeddings: &PromptEmbeddings,
    images: usize,
) -> Result<UNetInputs> {
    let [prompts, len, dim] = embeddings.shape;
    let context = repeat_rows(&embeddings.hidden, prompts, images);
    let rows = prompts * images;
    let config = sd.unet_config();
    let timestep_cond = config
        .time_cond_proj_dim
        .map(|dim| guidance_scale_embedding(params.guidance_scale - 1.0, dim).repeat(rows));
    let (text_embeds, time_ids) = match (config.addition_embed_type.as_deref(), &embeddings.pooled)
    {
        (Some(_), Some(pooled)) => (
            Some(repeat_rows(pooled, prompts, images)),
            Some(sdxl_time_ids(params.width, params.height).repeat(rows)),
        ),
        (Some(kind), None) => {
            return Err(ModelError::Unsupported {
                part: "unet",
                what: format!(
                    "addition_embed_type {kind:?} without a second text encoder's pooled \
                     embeddings (text_encoder_2 with a text_projection)"
                ),
            });
        }
        (None, _) => (None, None),
    };
    Ok(UNetInputs {
        context,
        context_shape: [rows, len, dim],
        timestep_cond,
        text_embeds,
        time_ids,
    })
}

/// Tokenizes `prompts` with one tokenizer: the ids of all of them, each row's end-token position,
/// and a warning for each prompt cut to fit.
fn tokenize(
    tokenizer: &ClipTokenizer,
    prompts: &[&str],
    warnings: &mut Vec<String>,
) -> Result<(Vec<u32>, Vec<usize>)> {
    let mut ids = Vec::new();
    let mut eos = Vec::new();
    for prompt in prompts {
        let encoded = tokenizer.encode(prompt)?;
        if encoded.truncated {
            warnings.push(format!(
                "the prompt is longer than {} tokens; this part was cut: {:?}",
                tokenizer.max_length(),
                encoded.removed_text
            ));
        }
        eos.push(encoded.tokens_used - 1);
        ids.extend(encoded.ids);
    }
    Ok((ids, eos))
}

/// `rows` (`prompts` equal rows) with each row repeated `images` times, in order.
fn repeat_rows(rows: &[f32], prompts: usize, images: usize) -> Vec<f32> {
    let row_len = rows.len() / prompts.max(1);
    let mut out = Vec::with_capacity(rows.len() * images);
    for row in rows.chunks_exact(row_len.max(1)) {
        for _ in 0..images {
            out.extend_from_slice(row);
        }
    }
    out
}
