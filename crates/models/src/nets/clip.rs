//! The CLIP text encoder's forward pass, after transformers' `models/clip/modeling_clip.py`
//! (`CLIPTextTransformer`, `CLIPEncoderLayer`, `CLIPAttention`, `CLIPMLP`), and
//! `CLIPTextModelWithProjection` (SDXL's second encoder), whose `text_embeds` are the end
//! token's final state through `text_projection`. Weights are named without the `text_model.`
//! prefix of transformers 4 checkpoints.

use sd_core::config::{CLIPTextConfig, HiddenAct};
use sd_kernels::ops::Activation;

use super::blocks::{Attention, ProjectionNames, architecture};
use crate::plan::Shape;
use crate::record::{InputNorm, Out, Recorder};

/// Which hidden state the text encoder returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextOutput {
    /// `last_hidden_state`: after every layer and the final layer norm (SD 1.x, 2.x).
    Last,
    /// `hidden_states[-1 - skip]`: the output of an earlier layer, without the final norm
    /// (SDXL reads `hidden_states[-2]`, i.e. `skip = 1`).
    SkipRaw {
        /// Layers skipped at the end.
        skip: usize,
    },
    /// `hidden_states[-1 - skip]` with the final layer norm applied (diffusers' `clip_skip`).
    SkipNormed {
        /// Layers skipped at the end.
        skip: usize,
    },
}

/// What one text-encoder call computes.
#[derive(Debug, Clone, Copy)]
pub struct TextRequest<'a> {
    /// Prompts.
    pub prompts: usize,
    /// Which hidden state is the output `hidden`.
    pub output: TextOutput,
    /// For `CLIPTextModelWithProjection`: each prompt's end-token position; the output
    /// `text_embeds` is that token's final state through `text_projection`.
    pub pooled_at: Option<&'a [usize]>,
}

/// Records one text-encoder call: input `input_ids` (`prompts * max_position_embeddings`
/// u32), outputs `hidden` (`[prompts, len, hidden_size]`) and, when pooled, `text_embeds`
/// (`[prompts, 1, projection_dim]`).
///
/// # Errors
///
/// An architecture error when `skip` is not below the layer count or an end-token position
/// is outside the prompt; the recorder's errors.
pub fn clip_text_model<R: Recorder>(
    r: &mut R,
    config: &CLIPTextConfig,
    request: &TextRequest<'_>,
) -> Result<(), R::Error> {
    let layers = config.num_hidden_layers;
    let skip = match request.output {
        TextOutput::Last => 0,
        TextOutput::SkipRaw { skip } | TextOutput::SkipNormed { skip } => skip,
    };
    if skip >= layers {
        return Err(architecture(
            "text_encoder",
            format!("cannot skip {skip} of {layers} text encoder layers"),
        )
        .into());
    }
    let (d, len) = (config.hidden_size, config.max_position_embeddings);
    let ids = r.input(
        "input_ids",
        Shape::Flat {
            len: request.prompts * len,
        },
    )?;
    let mut x = r.embedding("embeddings", &ids, config.vocab_size, len, d)?;
    // The pooled output needs every layer; an earlier hidden state is kept on the way.
    let run = if request.pooled_at.is_some() {
        layers
    } else {
        layers - skip
    };
    let mut earlier = None;
    for i in 0..run {
        if i == layers - skip {
            earlier = Some(x.clone());
        }
        x = clip_encoder_layer(r, config, &format!("encoder.layers.{i}"), &x)?;
    }
    let earlier = earlier.unwrap_or_else(|| x.clone());
    let eps = config.layer_norm_eps;
    let mut last = None;
    if let Some(rows) = request.pooled_at {
        let normed = r.layer_norm("final_layer_norm", &x, eps)?;
        let pooled = r.gather_rows("pooled_output", &normed, rows)?;
        // transformers' default `projection_dim` when the config has none.
        let out = config.projection_dim.unwrap_or(512);
        let text_embeds = r.linear("text_projection", &pooled, out, false)?;
        r.output("text_embeds", &text_embeds)?;
        last = Some(normed);
    }
    let hidden = match request.output {
        TextOutput::SkipRaw { .. } => earlier,
        TextOutput::Last => match last {
            Some(normed) => normed,
            None => r.layer_norm("final_layer_norm", &x, eps)?,
        },
        TextOutput::SkipNormed { .. } => r.layer_norm("final_layer_norm", &earlier, eps)?,
    };
    r.output("hidden", &hidden)
}

/// `CLIPEncoderLayer` (pre-norm): `x + self_attn(layer_norm1(x))`, then
/// `x + mlp(layer_norm2(x))`.
fn clip_encoder_layer<R: Recorder>(
    r: &mut R,
    config: &CLIPTextConfig,
    path: &str,
    x: &R::Tensor,
) -> Out<R> {
    let eps = config.layer_norm_eps;
    let attention = Attention {
        heads: config.num_attention_heads,
        head_dim: config.head_dim(),
        qkv_bias: true,
        causal: true,
        names: ProjectionNames::CLIP,
        fuse_qkv: true,
    };
    // Each norm is applied by the projection that follows it, and each residual is added by the
    // projection that ends its branch.
    let (norm1, norm2) = (format!("{path}.layer_norm1"), format!("{path}.layer_norm2"));
    let norm1 = InputNorm { path: &norm1, eps };
    let a = attention.forward(
        r,
        &format!("{path}.self_attn"),
        x,
        Some(norm1),
        None,
        Some(x),
    )?;
    let norm2 = InputNorm { path: &norm2, eps };
    clip_mlp(r, config, &format!("{path}.mlp"), &a, norm2)
}

/// `CLIPMLP` on `norm(x)`: `fc1` (which applies the norm), the activation, `fc2`, which adds
/// `x` back as it writes.
fn clip_mlp<R: Recorder>(
    r: &mut R,
    config: &CLIPTextConfig,
    path: &str,
    x: &R::Tensor,
    norm: InputNorm<'_>,
) -> Out<R> {
    let h = r.linear_normed(
        &format!("{path}.fc1"),
        x,
        config.intermediate_size,
        true,
        norm,
    )?;
    let act = match config.hidden_act {
        HiddenAct::QuickGelu => Activation::QuickGelu,
        HiddenAct::Gelu => Activation::Gelu,
    };
    let h = r.activation(&format!("{path}.activation_fn"), &h, act)?;
    let size = config.hidden_size;
    r.linear_residual(&format!("{path}.fc2"), &h, size, true, (x, 1.0))
}
