//! transformers' `CLIPTextModel` (`models/clip/modeling_clip.py`): token + position embedding,
//! pre-norm encoder layers with causal self-attention and an MLP, final layer norm. Weights are
//! named without the `text_model.` prefix (transformers 5); the weight source strips it from
//! transformers 4 checkpoints.

use sd_core::config::{CLIPTextConfig, HiddenAct};
use sd_kernels::ops::{self, Activation};
use sd_kernels::{Batch, DType, Tensor};

use crate::attention::{Attention, ProjectionNames};
use crate::layers::{self, LayerNorm, Linear, Params};
use crate::{ModelError, Result};

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// Which hidden state the text encoder returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextOutput {
    /// `last_hidden_state`: after every layer and the final layer norm (SD 1.x, 2.x).
    Last,
    /// `hidden_states[-1 - skip]`: the output of an earlier layer, without the final norm
    /// (SDXL reads `hidden_states[-2]`, i.e. `skip = 1`).
    SkipRaw { skip: usize },
    /// `hidden_states[-1 - skip]` with the final layer norm applied (diffusers' `clip_skip`).
    SkipNormed { skip: usize },
}

/// The CLIP text encoder.
#[derive(Debug)]
pub struct CLIPTextModel {
    config: CLIPTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl CLIPTextModel {
    /// Builds the encoder from its config and weights.
    pub fn load(config: &CLIPTextConfig, p: &Params<'_>) -> Result<Self> {
        let c = config;
        let d = c.hidden_size;
        let head_dim = c.head_dim();
        let layers_p = p.scope("encoder.layers");
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let lp = layers_p.at(i);
                Ok(EncoderLayer {
                    layer_norm1: LayerNorm::load(&lp, "layer_norm1", d, c.layer_norm_eps)?,
                    self_attn: Attention::load(
                        &lp.scope("self_attn"),
                        ProjectionNames::CLIP,
                        d,
                        d,
                        c.num_attention_heads,
                        head_dim,
                        true,
                    )?,
                    layer_norm2: LayerNorm::load(&lp, "layer_norm2", d, c.layer_norm_eps)?,
                    fc1: Linear::load(&lp, "mlp.fc1", d, c.intermediate_size, true)?,
                    fc2: Linear::load(&lp, "mlp.fc2", c.intermediate_size, d, true)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config: c.clone(),
            token_embedding: p.matrix("embeddings.token_embedding.weight", &[c.vocab_size, d])?,
            position_embedding: p.f32_tensor(
                "embeddings.position_embedding.weight",
                &[c.max_position_embeddings, d],
            )?,
            layers,
            final_layer_norm: LayerNorm::load(p, "final_layer_norm", d, c.layer_norm_eps)?,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &CLIPTextConfig {
        &self.config
    }

    /// Records the encoder on token ids `[B, L]` (`ids_host` is their CPU copy, checked against
    /// the vocabulary); returns hidden states `[B, L, D]`.
    pub fn forward(
        &self,
        batch: &mut Batch<'_>,
        ids: &Tensor,
        ids_host: &[u32],
        output: TextOutput,
    ) -> Result<Tensor> {
        let [b, l] = *ids.shape() else {
            return Err(ModelError::Shape(format!(
                "token ids must be [B, L], are {:?}",
                ids.shape()
            )));
        };
        let d = self.config.hidden_size;
        let skip = match output {
            TextOutput::Last => 0,
            TextOutput::SkipRaw { skip } | TextOutput::SkipNormed { skip } => skip,
        };
        if skip >= self.layers.len() {
            return Err(ModelError::Shape(format!(
                "cannot skip {skip} of {} text encoder layers",
                self.layers.len()
            )));
        }
        let h = batch.context().empty(&[b, l, d], DType::F32)?;
        ops::embedding(
            batch,
            ids,
            ids_host,
            &self.token_embedding,
            &self.position_embedding,
            &h,
        )?;
        let act = match self.config.hidden_act {
            HiddenAct::QuickGelu => Activation::QuickGelu,
            HiddenAct::Gelu => Activation::Gelu,
        };
        for layer in &self.layers[..self.layers.len() - skip] {
            let n = layer.layer_norm1.forward(batch, &h)?;
            let a = layer.self_attn.forward(batch, &n, None, true)?;
            ops::residual_add(batch, &a, &h, 1.0)?;
            let n = layer.layer_norm2.forward(batch, &h)?;
            let f = layer.fc1.forward(batch, &n)?;
            let f = layers::activation(batch, act, &f)?;
            let f = layer.fc2.forward(batch, &f)?;
            ops::residual_add(batch, &f, &h, 1.0)?;
        }
        match output {
            TextOutput::SkipRaw { .. } => Ok(h),
            _ => self.final_layer_norm.forward(batch, &h),
        }
    }
}
