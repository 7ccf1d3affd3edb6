//! diffusers' `Attention` (`models/attention_processor.py`) with the default processor:
//! projections, multi-head scaled dot-product attention (flash kernel, no score matrix),
//! output projection. Also serves CLIP's `CLIPAttention` (other names, causal).

use sd_kernels::ops::{self, AttentionShape};
use sd_kernels::{Batch, DType, Tensor};

use crate::layers::{Linear, Params};
use crate::{ModelError, Result};

/// The parameter names of the four projections.
#[derive(Clone, Copy, Debug)]
pub struct ProjectionNames {
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub out: &'static str,
}

impl ProjectionNames {
    /// diffusers: `to_q`, `to_k`, `to_v`, `to_out.0`.
    pub const DIFFUSERS: Self = Self {
        q: "to_q",
        k: "to_k",
        v: "to_v",
        out: "to_out.0",
    };
    /// transformers' CLIP: `q_proj`, `k_proj`, `v_proj`, `out_proj`.
    pub const CLIP: Self = Self {
        q: "q_proj",
        k: "k_proj",
        v: "v_proj",
        out: "out_proj",
    };
}

/// Multi-head attention with its projections.
#[derive(Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Loads the projections: queries from `query_dim`, keys and values from `context_dim`
    /// (the same for self-attention), `heads` heads of `head_dim`.
    pub fn load(
        p: &Params<'_>,
        names: ProjectionNames,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: Linear::load(p, names.q, query_dim, inner, qkv_bias)?,
            to_k: Linear::load(p, names.k, context_dim, inner, qkv_bias)?,
            to_v: Linear::load(p, names.v, context_dim, inner, qkv_bias)?,
            to_out: Linear::load(p, names.out, inner, query_dim, true)?,
            heads,
            head_dim,
        })
    }

    /// Records attention of `x` `[B, L, C]` over `context` `[B, Lk, Ck]` (`x` itself when
    /// `None`); returns the output projection, without residual.
    pub fn forward(
        &self,
        batch: &mut Batch<'_>,
        x: &Tensor,
        context: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let (&[b, l, _], &[_, lk, _]) = (x.shape(), context.shape()) else {
            return Err(ModelError::Shape(format!(
                "attention inputs must be [B, L, C]: {:?}, {:?}",
                x.shape(),
                context.shape()
            )));
        };
        let q = self.to_q.forward(batch, x)?;
        let k = self.to_k.forward(batch, context)?;
        let v = self.to_v.forward(batch, context)?;
        let o = batch.context().empty(q.shape(), DType::F32)?;
        let shape = AttentionShape {
            batch: b,
            heads: self.heads,
            head_dim: self.head_dim,
            q_len: l,
            kv_len: lk,
            causal,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
        };
        ops::attention(batch, &q, &k, &v, &o, shape)?;
        self.to_out.forward(batch, &o)
    }
}
