//! transformers' `CLIPTextModel` (`models/clip/modeling_clip.py`): token + position embedding,
//! pre-norm encoder layers with causal self-attention and an MLP, final layer norm; and
//! `CLIPTextModelWithProjection` (SDXL's second encoder), whose `text_embeds` are the end
//! token's final state through `text_projection`. Weights are
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
    /// `text_projection` (`CLIPTextModelWithProjection` only).
    text_projection: Option<Linear>,
}

/// What [`CLIPTextModel::forward_with_pooled`] returns.
#[derive(Debug)]
pub struct TextEncoding {
    /// The hidden states `[B, L, D]` the [`TextOutput`] asked for.
    pub hidden: Tensor,
    /// `text_embeds` `[B, projection_dim]`: the end token's final (normed) state through
    /// `text_projection`; `None` for a model without one.
    pub pooled: Option<Tensor>,
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
            // transformers saves `CLIPTextModelWithProjection`'s projection beside `text_model.`
            // (the weight source strips that prefix, so it is a sibling here).
            text_projection: p
                .contains("text_projection.weight")
                .then(|| {
                    // transformers' default `projection_dim` when the config has none.
                    let out = c.projection_dim.unwrap_or(512);
                    Linear::load(p, "text_projection", d, out, false)
                })
                .transpose()?,
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
        Ok(self.run(batch, ids, ids_host, output, None)?.hidden)
    }

    /// [`Self::forward`] plus the pooled `text_embeds` of a model with a `text_projection`,
    /// read at each row's end token (`eos[b]`, its position in row `b`: where transformers finds
    /// the first end token).
    pub fn forward_with_pooled(
        &self,
        batch: &mut Batch<'_>,
        ids: &Tensor,
        ids_host: &[u32],
        output: TextOutput,
        eos: &[usize],
    ) -> Result<TextEncoding> {
        self.run(batch, ids, ids_host, output, Some(eos))
    }

    fn run(
        &self,
        batch: &mut Batch<'_>,
        ids: &Tensor,
        ids_host: &[u32],
        output: TextOutput,
        eos: Option<&[usize]>,
    ) -> Result<TextEncoding> {
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
        let pooled_wanted = eos.is_some() && self.text_projection.is_some();
        if let Some(eos) = eos
            && (eos.len() != b || eos.iter().any(|&p| p >= l))
        {
            return Err(ModelError::Shape(format!(
                "end token positions {eos:?} do not fit token ids {:?}",
                ids.shape()
            )));
        }
        let ctx = batch.context();
        let h = ctx.empty(&[b, l, d], DType::F32)?;
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
        // The pooled output needs every layer; an earlier hidden state is copied out on the way.
        let run_layers = if pooled_wanted {
            self.layers.len()
        } else {
            self.layers.len() - skip
        };
        let mut earlier = None;
        for (i, layer) in self.layers[..run_layers].iter().enumerate() {
            if skip > 0 && i == self.layers.len() - skip && pooled_wanted {
                let copy = ctx.empty(&[b, l, d], DType::F32)?;
                batch.copy_f32(&h, 0, &copy, 0, b * l * d)?;
                earlier = Some(copy);
            }
            let n = layer.layer_norm1.forward(batch, &h)?;
            let a = layer.self_attn.forward(batch, &n, None, true)?;
            ops::residual_add(batch, &a, &h, 1.0)?;
            let n = layer.layer_norm2.forward(batch, &h)?;
            let f = layer.fc1.forward(batch, &n)?;
            let f = layers::activation(batch, act, &f)?;
            let f = layer.fc2.forward(batch, &f)?;
            ops::residual_add(batch, &f, &h, 1.0)?;
        }
        let earlier = earlier.unwrap_or_else(|| h.clone());
        let pooled = match (eos, &self.text_projection) {
            (Some(eos), Some(projection)) => {
                let last = self.final_layer_norm.forward(batch, &h)?;
                let rows = ctx.empty(&[b, d], DType::F32)?;
                for (row, &position) in eos.iter().enumerate() {
                    batch.copy_f32(&last, (row * l + position) * d, &rows, row * d, d)?;
                }
                Some(projection.forward(batch, &rows)?)
            }
            _ => None,
        };
        let hidden = match output {
            TextOutput::SkipRaw { .. } => earlier,
            TextOutput::Last => self.final_layer_norm.forward(batch, &h)?,
            TextOutput::SkipNormed { .. } => self.final_layer_norm.forward(batch, &earlier)?,
        };
        Ok(TextEncoding { hidden, pooled })
    }
}
