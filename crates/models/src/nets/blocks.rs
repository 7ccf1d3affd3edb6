//! The blocks the UNet and the VAE share, after diffusers' `models/resnet.py`
//! (`ResnetBlock2D`, `Downsample2D`, `Upsample2D`), `models/attention_processor.py`
//! (`Attention` with `AttnProcessor2_0`) and `models/attention.py` (`FeedForward`, `GEGLU`).
//! Each is its config, and `forward` issues its ops to a [`Recorder`].

use crate::plan::{Padding, PlanError};
use crate::record::{self, Conv2d, GroupNorm, Heads, InputNorm, Out, Recorder};

/// diffusers' `ResnetBlock2D` (default time-embedding handling): `norm1`+SiLU, `conv1`,
/// `+ time_emb_proj(silu(temb))` per channel, `norm2`+SiLU, (dropout), `conv2`,
/// `(conv_shortcut(x) or x + h) / output_scale_factor` (the shortcut is a 1x1 convolution
/// only when the channel count changes).
#[derive(Debug, Clone, Copy)]
pub struct ResnetBlock2D {
    /// Output channels.
    pub out_channels: usize,
    /// Group-norm groups.
    pub groups: usize,
    /// Group-norm epsilon.
    pub eps: f64,
    /// The sum is divided by this (`mid_block_scale_factor` in the UNet's middle block).
    pub output_scale_factor: f64,
}

/// A ResNet's input: one tensor, or an up block's `torch.cat([hidden, skip], dim=1)`, which
/// `norm1` and `conv_shortcut` read in place (the concatenation is never written).
#[derive(Debug)]
pub enum ResnetInput<'t, T> {
    /// One NCHW tensor.
    One(&'t T),
    /// Two NCHW tensors side by side along channels.
    Concat(&'t T, &'t T),
}

impl ResnetBlock2D {
    /// The block on `x`. `temb` is this block's `time_emb_proj(silu(temb))`: columns from
    /// `offset` of `[n, 1, width]`, where the UNet projects every ResNet's time embedding in
    /// one matmul (they all read the same input). The VAE passes `None`.
    pub fn forward<R: Recorder>(
        &self,
        r: &mut R,
        path: &str,
        x: ResnetInput<'_, R::Tensor>,
        temb: Option<(&R::Tensor, usize)>,
    ) -> Out<R> {
        let out = self.out_channels;
        let channels = |r: &R, t| record::nchw(r, path, t).map(|(_, c, _, _)| c);
        let in_channels = match x {
            ResnetInput::One(x) => channels(r, x)?,
            ResnetInput::Concat(a, b) => channels(r, a)? + channels(r, b)?,
        };
        // Without a shortcut convolution the input itself is the residual: a concatenation
        // must then be written after all. (diffusers' up blocks never get here: the input plus
        // its skip always has more channels than the block's output.)
        let cat;
        let x = match x {
            ResnetInput::Concat(a, b) if in_channels == out => {
                cat = r.concat(&format!("{path}.cat"), a, b)?;
                ResnetInput::One(&cat)
            }
            x => x,
        };
        let norm = GroupNorm {
            groups: self.groups,
            eps: self.eps,
            silu: true,
        };
        let norm1 = format!("{path}.norm1");
        let h = match x {
            ResnetInput::One(x) => r.group_norm(&norm1, x, norm)?,
            ResnetInput::Concat(a, b) => r.group_norm_of_concat(&norm1, [a, b], norm)?,
        };
        let conv1 = format!("{path}.conv1");
        let h = match temb {
            // `conv1(h) + time_emb_proj(silu(temb))[:, :, None, None]`, added as conv1 writes.
            Some(t) => r.conv2d_channel_bias(&conv1, &h, Conv2d::same(out, 3), t)?,
            None => r.conv2d(&conv1, &h, Conv2d::same(out, 3))?,
        };
        let h = r.group_norm(&format!("{path}.norm2"), &h, norm)?;
        let conv_shortcut = format!("{path}.conv_shortcut");
        let shortcut = match x {
            ResnetInput::One(x) if in_channels == out => x.clone(),
            ResnetInput::One(x) => r.conv2d(&conv_shortcut, x, Conv2d::same(out, 1))?,
            ResnetInput::Concat(a, b) => {
                r.conv2d_of_concat(&conv_shortcut, [a, b], Conv2d::same(out, 1))?
            }
        };
        // `(shortcut + conv2(h)) / output_scale_factor`, added as conv2 writes its output.
        r.conv2d_residual(
            &format!("{path}.conv2"),
            &h,
            Conv2d::same(out, 3),
            &shortcut,
            1.0 / self.output_scale_factor,
        )
    }
}

/// diffusers' `Attention` on token-major input: `to_q(x)`, `to_k(c)`, `to_v(c)` with `c` the
/// context (cross-attention) or `x` (self-attention), the attention kernel, `to_out.0` (with
/// bias) back to `x`'s width. CLIP's `CLIPAttention` is the same with other names.
#[derive(Debug, Clone, Copy)]
pub struct Attention {
    /// Heads.
    pub heads: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Whether the query, key and value projections have biases (VAE, CLIP: yes; UNet: no).
    pub qkv_bias: bool,
    /// Causal (CLIP).
    pub causal: bool,
    /// The projections' names.
    pub names: ProjectionNames,
    /// Self-attention computes Q, K and V as one matmul (`names.qkv`) and the attention reads
    /// them side by side. Off for the VAE's single attention, whose packed q, k and v would
    /// outgrow one binding at large sizes, for two dispatches per decode.
    pub fuse_qkv: bool,
}

/// The names of an attention's four projections.
#[derive(Debug, Clone, Copy)]
pub struct ProjectionNames {
    /// Query.
    pub q: &'static str,
    /// Key.
    pub k: &'static str,
    /// Value.
    pub v: &'static str,
    /// Output.
    pub out: &'static str,
    /// Q, K and V stacked (diffusers' `fuse_qkv_projections` names it `to_qkv`).
    pub qkv: &'static str,
}

impl ProjectionNames {
    /// diffusers: `to_q`, `to_k`, `to_v`, `to_out.0`.
    pub const DIFFUSERS: Self = Self {
        q: "to_q",
        k: "to_k",
        v: "to_v",
        out: "to_out.0",
        qkv: "to_qkv",
    };
    /// transformers' CLIP: `q_proj`, `k_proj`, `v_proj`, `out_proj`.
    pub const CLIP: Self = Self {
        q: "q_proj",
        k: "k_proj",
        v: "v_proj",
        out: "out_proj",
        qkv: "qkv_proj",
    };
}

impl Attention {
    /// Attention of `norm(x)` (or `x`) over itself, or over the text when `text_kv` holds its
    /// keys and values (projected once per generation, side by side in each token: `[k | v]`);
    /// the projections apply `norm` as they load `x`. With `residual`, the output projection
    /// adds it as it writes (`to_out(o) + residual`, one op).
    pub fn forward<R: Recorder>(
        &self,
        r: &mut R,
        path: &str,
        x: &R::Tensor,
        norm: Option<InputNorm<'_>>,
        text_kv: Option<&R::Tensor>,
        residual: Option<&R::Tensor>,
    ) -> Out<R> {
        let (_, _, query_dim) = record::tokens(r, path, x)?;
        let inner = self.heads * self.head_dim;
        let names = self.names;
        let heads = Heads {
            heads: self.heads,
            head_dim: self.head_dim,
            causal: self.causal,
        };
        let [q_path, k_path, v_path] = [names.q, names.k, names.v].map(|n| format!("{path}.{n}"));
        let o = if let Some(kv) = text_kv {
            let q = match norm {
                Some(n) => r.linear_normed(&q_path, x, inner, self.qkv_bias, n)?,
                None => r.linear(&q_path, x, inner, self.qkv_bias)?,
            };
            r.attention_kv(path, &q, kv, heads)?
        } else if self.fuse_qkv {
            let layers = [(q_path.as_str(), inner), (&k_path, inner), (&v_path, inner)];
            let qkv_path = format!("{path}.{}", names.qkv);
            let qkv = r.linear_stacked(&qkv_path, x, &layers, self.qkv_bias, norm)?;
            r.attention_packed(path, &qkv, heads)?
        } else {
            // Three projections of one normed input: the norm is a pass of its own.
            let x = match norm {
                Some(n) => r.layer_norm(n.path, x, n.eps)?,
                None => x.clone(),
            };
            let q = r.linear(&q_path, &x, inner, self.qkv_bias)?;
            let k = r.linear(&k_path, &x, inner, self.qkv_bias)?;
            let v = r.linear(&v_path, &x, inner, self.qkv_bias)?;
            r.attention(path, [&q, &k, &v], heads)?
        };
        let out = format!("{path}.{}", names.out);
        match residual {
            Some(res) => r.linear_residual(&out, &o, query_dim, true, (res, 1.0)),
            None => r.linear(&out, &o, query_dim, true),
        }
    }
}

/// diffusers' `FeedForward` with `GEGLU` (SD's transformers) on `norm(x)`: `net.0.proj` to
/// `2 * 4 * dim`, GEGLU to `4 * dim` (one op, which also applies the norm), `net.2` back to
/// `dim`, adding `residual` as it writes.
pub fn feed_forward<R: Recorder>(
    r: &mut R,
    path: &str,
    x: &R::Tensor,
    norm: Option<InputNorm<'_>>,
    residual: &R::Tensor,
) -> Out<R> {
    let (_, _, dim) = record::tokens(r, path, x)?;
    let gated = r.linear_geglu(&format!("{path}.net.0"), x, 4 * dim, norm)?;
    r.linear_residual(&format!("{path}.net.2"), &gated, dim, true, (residual, 1.0))
}

/// diffusers' `Downsample2D` with a convolution: 3x3, stride 2, `padding` (UNet: 1 on every
/// side; VAE encoder: 0 and diffusers' extra `(0, 1, 0, 1)` pad, i.e. bottom/right only).
pub fn downsample_2d<R: Recorder>(
    r: &mut R,
    path: &str,
    x: &R::Tensor,
    padding: Padding,
) -> Out<R> {
    let (_, c, _, _) = record::nchw(r, path, x)?;
    let conv = Conv2d {
        out_channels: c,
        kernel: 3,
        stride: 2,
        padding,
    };
    r.conv2d(&format!("{path}.conv"), x, conv)
}

/// diffusers' `Upsample2D` with a convolution: nearest-neighbour resize to `size` (2x, or the
/// skip connection's size in the UNet), then a 3x3 convolution.
pub fn upsample_2d<R: Recorder>(
    r: &mut R,
    path: &str,
    x: &R::Tensor,
    size: (usize, usize),
) -> Out<R> {
    let (_, c, _, _) = record::nchw(r, path, x)?;
    let up = r.upsample_nearest(path, x, size)?;
    r.conv2d(&format!("{path}.conv"), &up, Conv2d::same(c, 3))
}

/// An architecture error in `part`.
pub fn architecture(part: &'static str, message: String) -> PlanError {
    PlanError::Architecture { part, message }
}
