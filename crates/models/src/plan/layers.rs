//! Building blocks shared by the UNet and the VAE walks, after diffusers' `models/resnet.py`
//! (`ResnetBlock2D`, `Downsample2D`, `Upsample2D`), `models/attention_processor.py`
//! (`Attention` with `AttnProcessor2_0`) and `models/attention.py` (`FeedForward`, `GEGLU`),
//! plus the single torch layers they are made of (`nn.Conv2d`, `nn.GroupNorm`, `nn.Linear`,
//! `nn.LayerNorm`).
//!
//! Each function records the ops of one module's forward pass, in order, with the kernel
//! bindings the executor will use, and returns the output tensor. `path` is the module's
//! attribute path inside the model (the weights' key prefix).

use super::PlanError;
use super::graph::{
    Activation, Graph, OpKind, Padding, Shape, TensorId, read, update, weight, write,
};

/// `nn.Conv2d(in, out, kernel, stride, padding)` on an NCHW tensor. Weight `[out, in, k, k]`
/// (f16) and bias `[out]` (f32). The output side is `(side + before + after - k) / stride + 1`.
pub(crate) fn conv2d(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
) -> Result<TensorId, PlanError> {
    let (n, c, h, w) = g.nchw_dims(x)?;
    let side =
        |s: usize| (s + padding.before + padding.after).saturating_sub(kernel) / stride.max(1) + 1;
    let y = g.nchw(path, n, out_channels, side(h), side(w))?;
    let wt = g.weight(format!("{path}.weight"), &[out_channels, c, kernel, kernel]);
    let bias = g.weight(format!("{path}.bias"), &[out_channels]);
    g.op(
        path,
        OpKind::Conv2d {
            kernel,
            stride,
            padding,
        },
        vec![
            read("x", x),
            weight("w", wt),
            weight("bias", bias),
            write("y", y),
        ],
    )?;
    Ok(y)
}

/// `nn.GroupNorm(groups, channels, eps)` (then SiLU if `silu`) as the statistics kernel and the
/// apply kernel. The statistics (`[n, groups, 2]`) live from one to the other.
pub(crate) fn group_norm(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<TensorId, PlanError> {
    let (n, c, h, w) = g.nchw_dims(x)?;
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(PlanError::Architecture {
            part: "group norm",
            message: format!(
                "{}: {groups} groups do not divide {c} channels",
                g.name(path)
            ),
        });
    }
    let stats = g.tensor(
        &format!("{path}.stats"),
        Shape::Flat {
            len: n * groups * 2,
        },
    )?;
    g.op(
        &format!("{path}.stats"),
        OpKind::GroupNormStats { groups, eps },
        vec![read("x", x), write("stats", stats)],
    )?;
    let gamma = g.weight(format!("{path}.weight"), &[c]);
    let beta = g.weight(format!("{path}.bias"), &[c]);
    let y = g.nchw(path, n, c, h, w)?;
    g.op(
        path,
        OpKind::GroupNormApply { groups, eps, silu },
        vec![
            read("x", x),
            read("stats", stats),
            weight("gamma", gamma),
            weight("beta", beta),
            write("y", y),
        ],
    )?;
    Ok(y)
}

/// `nn.Linear(in, out, bias)` on the rows of a token-major tensor: weight `[out, in]` (f16),
/// bias `[out]` (f32).
pub(crate) fn linear(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    out_features: usize,
    bias: bool,
) -> Result<TensorId, PlanError> {
    let (n, l, d) = g.token_dims(x)?;
    let y = g.tokens(path, n, l, out_features)?;
    let wt = g.weight(format!("{path}.weight"), &[out_features, d]);
    let mut args = vec![read("x", x), weight("w", wt)];
    if bias {
        let b = g.weight(format!("{path}.bias"), &[out_features]);
        args.push(weight("bias", b));
    }
    args.push(write("y", y));
    g.op(path, OpKind::Linear { bias }, args)?;
    Ok(y)
}

/// `nn.LayerNorm(d, eps)` over each token.
pub(crate) fn layer_norm(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    eps: f64,
) -> Result<TensorId, PlanError> {
    let (n, l, d) = g.token_dims(x)?;
    let y = g.tokens(path, n, l, d)?;
    let gamma = g.weight(format!("{path}.weight"), &[d]);
    let beta = g.weight(format!("{path}.bias"), &[d]);
    g.op(
        path,
        OpKind::LayerNorm { eps },
        vec![
            read("x", x),
            weight("gamma", gamma),
            weight("beta", beta),
            write("y", y),
        ],
    )?;
    Ok(y)
}

/// An activation applied to `x` in place.
pub(crate) fn activation(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    act: Activation,
) -> Result<(), PlanError> {
    g.op(path, OpKind::Activation(act), vec![update("x", x)])
}

/// `x += r` in place (the residual connections).
pub(crate) fn residual_add(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    r: TensorId,
) -> Result<(), PlanError> {
    g.op(
        path,
        OpKind::ResidualAdd,
        vec![update("x", x), read("r", r)],
    )
}

/// `[n, c, h, w]` to a new `[n, h*w, c]` tensor.
pub(crate) fn to_tokens(g: &mut Graph, path: &str, x: TensorId) -> Result<TensorId, PlanError> {
    let (n, c, h, w) = g.nchw_dims(x)?;
    let y = g.tokens(path, n, h * w, c)?;
    g.op(
        path,
        OpKind::NchwToTokens,
        vec![read("x", x), write("y", y)],
    )?;
    Ok(y)
}

/// `[n, h*w, c]` to a new `[n, c, h, w]` tensor.
pub(crate) fn to_nchw(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    h: usize,
    w: usize,
) -> Result<TensorId, PlanError> {
    let (n, l, c) = g.token_dims(x)?;
    if l != h * w {
        return Err(PlanError::Architecture {
            part: "layout",
            message: format!("{}: {l} tokens are not {h}x{w}", g.name(path)),
        });
    }
    let y = g.nchw(path, n, c, h, w)?;
    g.op(
        path,
        OpKind::TokensToNchw,
        vec![read("x", x), write("y", y)],
    )?;
    Ok(y)
}

/// `torch.cat([a, b], dim=1)` of two NCHW tensors of the same batch and size.
pub(crate) fn concat_channels(
    g: &mut Graph,
    path: &str,
    a: TensorId,
    b: TensorId,
) -> Result<TensorId, PlanError> {
    let (n, ca, h, w) = g.nchw_dims(a)?;
    let (nb, cb, hb, wb) = g.nchw_dims(b)?;
    if (n, h, w) != (nb, hb, wb) {
        return Err(PlanError::Architecture {
            part: "concat",
            message: format!(
                "{}: {} and {} differ in batch or size",
                g.name(path),
                g.shape(a),
                g.shape(b)
            ),
        });
    }
    let y = g.nchw(path, n, ca + cb, h, w)?;
    g.op(
        path,
        OpKind::Concat,
        vec![read("a", a), read("b", b), write("y", y)],
    )?;
    Ok(y)
}

/// How a [`resnet_block_2d`] is configured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResnetSpec {
    /// Output channels.
    pub out_channels: usize,
    /// Group-norm groups.
    pub groups: usize,
    /// Group-norm epsilon.
    pub eps: f64,
}

/// diffusers' `ResnetBlock2D` (default time-embedding handling, output scale 1):
/// `norm1`+SiLU, `conv1`, `+ time_emb_proj(silu(temb))` per channel, `norm2`+SiLU, (dropout),
/// `conv2`, `+ conv_shortcut(x)` (1x1, only when the channel count changes) or `+ x`.
///
/// `temb_act` is the time embedding *after* SiLU, `[n, 1, temb]`: every ResNet applies the
/// same SiLU to the same embedding, so the UNet computes it once. The VAE passes `None`.
pub(crate) fn resnet_block_2d(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    temb_act: Option<TensorId>,
    spec: ResnetSpec,
) -> Result<TensorId, PlanError> {
    let (_, in_channels, _, _) = g.nchw_dims(x)?;
    let out = spec.out_channels;
    let h1 = group_norm(g, &format!("{path}.norm1"), x, spec.groups, spec.eps, true)?;
    let h2 = conv2d(g, &format!("{path}.conv1"), h1, out, 3, 1, Padding::same(1))?;
    if let Some(temb) = temb_act {
        let t = linear(g, &format!("{path}.time_emb_proj"), temb, out, true)?;
        g.op(
            &format!("{path}.time_emb_add"),
            OpKind::AddChannelBias,
            vec![update("x", h2), read("t", t)],
        )?;
    }
    let h3 = group_norm(g, &format!("{path}.norm2"), h2, spec.groups, spec.eps, true)?;
    let h4 = conv2d(g, &format!("{path}.conv2"), h3, out, 3, 1, Padding::same(1))?;
    let shortcut = if in_channels == out {
        x
    } else {
        conv2d(
            g,
            &format!("{path}.conv_shortcut"),
            x,
            out,
            1,
            1,
            Padding::same(0),
        )?
    };
    residual_add(g, &format!("{path}.residual"), h4, shortcut)?;
    Ok(h4)
}

/// How an [`attention`] is configured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionSpec {
    /// Heads.
    pub heads: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Whether `to_q`, `to_k`, `to_v` have biases (VAE: yes; UNet transformers: no).
    pub qkv_bias: bool,
}

/// diffusers' `Attention` on token-major input: `to_q(x)`, `to_k(c)`, `to_v(c)` with `c` the
/// context (cross-attention) or `x` (self-attention), the flash attention kernel, `to_out.0`
/// (with bias) back to `x`'s width. No score matrix is ever stored.
pub(crate) fn attention(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    context: Option<TensorId>,
    spec: AttentionSpec,
) -> Result<TensorId, PlanError> {
    let (n, l, query_dim) = g.token_dims(x)?;
    let inner = spec.heads * spec.head_dim;
    let source = context.unwrap_or(x);
    let q = linear(g, &format!("{path}.to_q"), x, inner, spec.qkv_bias)?;
    let k = linear(g, &format!("{path}.to_k"), source, inner, spec.qkv_bias)?;
    let v = linear(g, &format!("{path}.to_v"), source, inner, spec.qkv_bias)?;
    g.require_whole_items(path, "k", k)?;
    g.require_whole_items(path, "v", v)?;
    let o = g.tokens(path, n, l, inner)?;
    g.op(
        path,
        OpKind::Attention {
            heads: spec.heads,
            head_dim: spec.head_dim,
            causal: false,
        },
        vec![read("q", q), read("k", k), read("v", v), write("o", o)],
    )?;
    linear(g, &format!("{path}.to_out.0"), o, query_dim, true)
}

/// diffusers' `FeedForward` with `GEGLU` (SD's transformers): `net.0.proj` to `2 * 4 * dim`,
/// GEGLU to `4 * dim`, `net.2` back to `dim`.
pub(crate) fn feed_forward(g: &mut Graph, path: &str, x: TensorId) -> Result<TensorId, PlanError> {
    let (n, l, dim) = g.token_dims(x)?;
    let inner = 4 * dim;
    let projected = linear(g, &format!("{path}.net.0.proj"), x, 2 * inner, true)?;
    let gated = g.tokens(&format!("{path}.net.0"), n, l, inner)?;
    g.op(
        &format!("{path}.net.0"),
        OpKind::Geglu,
        vec![read("x", projected), write("y", gated)],
    )?;
    linear(g, &format!("{path}.net.2"), gated, dim, true)
}

/// diffusers' `Downsample2D` with a convolution: 3x3, stride 2, `padding` (UNet: 1 on every
/// side; VAE encoder: 0 and diffusers' extra `(0, 1, 0, 1)` pad, i.e. bottom/right only).
pub(crate) fn downsample_2d(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    padding: Padding,
) -> Result<TensorId, PlanError> {
    let (_, c, _, _) = g.nchw_dims(x)?;
    conv2d(g, &format!("{path}.conv"), x, c, 3, 2, padding)
}

/// diffusers' `Upsample2D` with a convolution: nearest-neighbour resize to `size` (2x, or the
/// skip connection's size in the UNet), then a 3x3 convolution.
pub(crate) fn upsample_2d(
    g: &mut Graph,
    path: &str,
    x: TensorId,
    size: (usize, usize),
) -> Result<TensorId, PlanError> {
    let (n, c, _, _) = g.nchw_dims(x)?;
    let up = g.nchw(path, n, c, size.0, size.1)?;
    g.op(
        path,
        OpKind::UpsampleNearest,
        vec![read("x", x), write("y", up)],
    )?;
    conv2d(g, &format!("{path}.conv"), up, c, 3, 1, Padding::same(1))
}
