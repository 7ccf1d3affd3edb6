//! The walk of the CLIP text encoder's forward pass, after transformers'
//! `models/clip/modeling_clip.py` (`CLIPTextTransformer`, `CLIPEncoderLayer`,
//! `CLIPAttention`, `CLIPMLP`): what SD's pipelines call to turn token ids into
//! `last_hidden_state`.

use sd_core::config::{CLIPTextConfig, HiddenAct};

use super::graph::{Activation, Graph, OpKind, Shape, TensorId, read, weight, write};
use super::layers::{activation, layer_norm, linear, residual_add};
use super::{DeviceLimits, Part, PartPlan, PlanError};

/// Plans one text-encoder call on `batch` prompts of `max_position_embeddings` (77) tokens:
/// two per image with classifier-free guidance (the negative or empty prompt, and the prompt).
/// `part` is [`Part::TextEncoder`] or, for SDXL's `CLIPTextModelWithProjection`,
/// [`Part::TextEncoder2`], which adds the pooled output's `text_projection`.
///
/// # Errors
///
/// [`PlanError::Limit`] for a buffer that does not fit (at tiny limits: the token embedding).
pub fn plan_text_encoder(
    config: &CLIPTextConfig,
    part: Part,
    batch: usize,
    limits: &DeviceLimits,
) -> Result<PartPlan, PlanError> {
    let mut g = Graph::new(part, *limits, 0);
    let len = config.max_position_embeddings;
    let ids = g.tensor("input_ids", Shape::Flat { len: batch * len })?;
    g.op("inputs", OpKind::Input, vec![write("input_ids", ids)])?;
    let hidden = clip_text_transformer(&mut g, config, ids, batch)?;
    let mut outputs = vec![read("last_hidden_state", hidden)];
    if part == Part::TextEncoder2 {
        // The end token's row of each prompt, projected: `text_embeds`.
        let rows = g.tokens("pooled_output", batch, 1, config.hidden_size)?;
        g.op(
            "pooled_output",
            OpKind::GatherRows,
            vec![read("hidden", hidden), write("y", rows)],
        )?;
        let out = config.projection_dim.unwrap_or(512);
        let text_embeds = linear(&mut g, "text_projection", rows, out, false)?;
        outputs.push(read("text_embeds", text_embeds));
    }
    g.op("outputs", OpKind::Output, outputs)?;
    g.finish()
}

/// `CLIPTextTransformer`: embeddings (token + position), the encoder layers, the final layer
/// norm. Returns `last_hidden_state`, `[batch, len, hidden_size]`.
fn clip_text_transformer(
    g: &mut Graph,
    config: &CLIPTextConfig,
    ids: TensorId,
    batch: usize,
) -> Result<TensorId, PlanError> {
    let d = config.hidden_size;
    let len = config.max_position_embeddings;
    let table = g.weight(
        "embeddings.token_embedding.weight".into(),
        &[config.vocab_size, d],
    );
    let positions = g.weight("embeddings.position_embedding.weight".into(), &[len, d]);
    let mut x = g.tokens("embeddings", batch, len, d)?;
    g.op(
        "embeddings",
        OpKind::Embedding,
        vec![
            read("ids", ids),
            weight("table", table),
            weight("positions", positions),
            write("y", x),
        ],
    )?;
    for i in 0..config.num_hidden_layers {
        x = clip_encoder_layer(g, config, &format!("encoder.layers.{i}"), x)?;
    }
    layer_norm(g, "final_layer_norm", x, config.layer_norm_eps)
}

/// `CLIPEncoderLayer` (pre-norm): `x + self_attn(layer_norm1(x))`, then
/// `x + mlp(layer_norm2(x))`.
fn clip_encoder_layer(
    g: &mut Graph,
    config: &CLIPTextConfig,
    path: &str,
    x: TensorId,
) -> Result<TensorId, PlanError> {
    let eps = config.layer_norm_eps;
    let n1 = layer_norm(g, &format!("{path}.layer_norm1"), x, eps)?;
    let a = clip_attention(g, config, &format!("{path}.self_attn"), n1)?;
    residual_add(g, &format!("{path}.self_attn.residual"), a, x)?;
    let n2 = layer_norm(g, &format!("{path}.layer_norm2"), a, eps)?;
    let m = clip_mlp(g, config, &format!("{path}.mlp"), n2)?;
    residual_add(g, &format!("{path}.mlp.residual"), m, a)?;
    Ok(m)
}

/// `CLIPAttention`: `q_proj`, `k_proj`, `v_proj` (with biases), causal multi-head attention,
/// `out_proj`.
fn clip_attention(
    g: &mut Graph,
    config: &CLIPTextConfig,
    path: &str,
    x: TensorId,
) -> Result<TensorId, PlanError> {
    let (n, l, d) = g.token_dims(x)?;
    let q = linear(g, &format!("{path}.q_proj"), x, d, true)?;
    let k = linear(g, &format!("{path}.k_proj"), x, d, true)?;
    let v = linear(g, &format!("{path}.v_proj"), x, d, true)?;
    g.require_whole_items(path, "k", k)?;
    g.require_whole_items(path, "v", v)?;
    let o = g.tokens(path, n, l, d)?;
    g.op(
        path,
        OpKind::Attention {
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
            causal: true,
        },
        vec![read("q", q), read("k", k), read("v", v), write("o", o)],
    )?;
    linear(g, &format!("{path}.out_proj"), o, d, true)
}

/// `CLIPMLP`: `fc1`, the activation (in place), `fc2`.
fn clip_mlp(
    g: &mut Graph,
    config: &CLIPTextConfig,
    path: &str,
    x: TensorId,
) -> Result<TensorId, PlanError> {
    let h = linear(g, &format!("{path}.fc1"), x, config.intermediate_size, true)?;
    let act = match config.hidden_act {
        HiddenAct::QuickGelu => Activation::QuickGelu,
        HiddenAct::Gelu => Activation::Gelu,
    };
    activation(g, &format!("{path}.activation_fn"), h, act)?;
    linear(g, &format!("{path}.fc2"), h, config.hidden_size, true)
}
