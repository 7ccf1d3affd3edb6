//! Multi-head attention, flash-style with an online softmax (shaders/attention.wgsl).

use super::{expect_f32, to_u32};
use crate::kernel::{Binding, Entry, Kernel, Uniform, uniform};
use crate::{Batch, KernelError, Result, ShaderVariant, Tensor};

const QUERY_ROWS: usize = 64;
/// Bytes of workgroup memory the two key/value tiles may use: under WebGPU's default 16 KiB.
const TILE_BUDGET: usize = 12 << 10;
/// Largest head size a thread keeps in registers: SD 1.5's 40..160, SD XL's 64, and the VAE's
/// single-head mid-block attention over 512 channels.
pub const MAX_HEAD_DIM: usize = 512;

uniform! {
    struct Params {
        batch: u32,
        heads: u32,
        q_len: u32,
        kv_len: u32,
        q_stride: u32,
        kv_stride: u32,
        o_stride: u32,
        causal: u32,
        scale: f32,
        q_offset: u32,
        k_offset: u32,
        v_offset: u32,
    }
}

pub(crate) static ATTENTION: Kernel = Kernel {
    file: "attention.wgsl",
    source: include_str!("../shaders/attention.wgsl"),
    params: Params::LAYOUT,
    bindings: &[
        Binding::read("q"),
        Binding::read("k"),
        Binding::read("v"),
        Binding::write("o"),
    ],
    entries: &[Entry {
        name: "attention",
        bindings: 4,
    }],
    reads_weights: false,
    consts: checked_consts,
};

/// The template constants of the kernel for `head_dim`: the head size, its padding to whole
/// vec4s, and the key/value tile that fits the workgroup memory.
fn template_consts(head_dim: usize) -> [(&'static str, usize); 3] {
    [
        ("HEAD_DIM", head_dim),
        ("HEAD_VEC", padded_head_dim(head_dim) / 4),
        ("BLOCK_K", block_k(head_dim)),
    ]
}

/// The head sizes the descriptor test composes the kernel with: the smallest, odd ones, SD's
/// (40..160, 64) and the largest.
fn checked_consts() -> Vec<std::collections::BTreeMap<&'static str, u32>> {
    [1, 3, 8, 40, 64, 80, 160, MAX_HEAD_DIM]
        .into_iter()
        .map(|head_dim| {
            template_consts(head_dim)
                .into_iter()
                .map(|(name, value)| (name, value as u32))
                .collect()
        })
        .collect()
}

/// Sizes of one attention call. Tensors are token-major: `q` `[batch, q_len, heads * head_dim]`,
/// `k` and `v` `[batch, kv_len, heads * head_dim]`, the output like `q`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub q_len: usize,
    pub kv_len: usize,
    /// Query i sees keys 0..=i (CLIP's text encoder).
    pub causal: bool,
    /// Multiplies the scores, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}

/// Keys per shared-memory block: the largest power of two whose k and v tiles fit the budget.
pub(crate) fn block_k(head_dim: usize) -> usize {
    let fit = TILE_BUDGET / (2 * 4 * padded_head_dim(head_dim));
    let mut block = 1;
    while block * 2 <= fit.min(64) {
        block *= 2;
    }
    block
}

/// The head size rounded up to whole vec4s, as the shader holds it.
fn padded_head_dim(head_dim: usize) -> usize {
    head_dim.max(1).div_ceil(4) * 4
}

/// The features of one token-major operand an attention reads: `heads * head_dim` of them from
/// `offset`, in tokens of `stride` features (q, k and v side by side in one tensor, as one
/// matmul for the three projections writes them).
#[derive(Clone, Copy, Debug)]
pub struct TokenFeatures<'t> {
    pub tensor: &'t Tensor,
    pub offset: usize,
    pub stride: usize,
}

impl<'t> TokenFeatures<'t> {
    /// All of `tensor`'s `width` features.
    pub fn all(tensor: &'t Tensor, width: usize) -> Self {
        Self {
            tensor,
            offset: 0,
            stride: width,
        }
    }
}

/// Records `o = softmax(q k^T * scale) v` per head.
pub fn attention(
    batch: &mut Batch<'_>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    shape: AttentionShape,
) -> Result<()> {
    let width = shape.heads * shape.head_dim;
    let [q, k, v] = [q, k, v].map(|t| TokenFeatures::all(t, width));
    attention_of_features(batch, [q, k, v], o, shape)
}

/// [`attention`] reading q, k and v as [`TokenFeatures`] (any of them may share a tensor).
pub fn attention_of_features(
    batch: &mut Batch<'_>,
    [q, k, v]: [TokenFeatures<'_>; 3],
    o: &Tensor,
    shape: AttentionShape,
) -> Result<()> {
    const OP: &str = "attention";
    let AttentionShape {
        batch: n,
        heads,
        head_dim,
        q_len,
        kv_len,
        causal,
        scale,
    } = shape;
    if head_dim == 0 || head_dim > MAX_HEAD_DIM || heads == 0 || kv_len == 0 {
        return Err(KernelError::shape(
            OP,
            format!(
                "{heads} heads of size {head_dim} over {kv_len} keys (head size 1..={MAX_HEAD_DIM}, at least one head and key)"
            ),
        ));
    }
    if causal && q_len > kv_len {
        return Err(KernelError::shape(
            OP,
            format!("a causal mask needs q_len {q_len} <= kv_len {kv_len}"),
        ));
    }
    let width = heads * head_dim;
    for (name, features, len) in [("q", q, q_len), ("k", k, kv_len), ("v", v, kv_len)] {
        if features.offset + width > features.stride {
            return Err(KernelError::shape(
                OP,
                format!(
                    "{name}: features {}..{} of tokens of {}",
                    features.offset,
                    features.offset + width,
                    features.stride
                ),
            ));
        }
        expect_f32(OP, name, features.tensor, n * len * features.stride)?;
    }
    if k.stride != v.stride {
        return Err(KernelError::shape(
            OP,
            format!(
                "k and v have {} and {} features per token",
                k.stride, v.stride
            ),
        ));
    }
    expect_f32(OP, "o", o, n * q_len * width)?;
    let params = Params {
        batch: to_u32(OP, n)?,
        heads: to_u32(OP, heads)?,
        q_len: to_u32(OP, q_len)?,
        kv_len: to_u32(OP, kv_len)?,
        q_stride: to_u32(OP, q.stride)?,
        kv_stride: to_u32(OP, k.stride)?,
        o_stride: to_u32(OP, width)?,
        causal: u32::from(causal),
        scale,
        q_offset: to_u32(OP, q.offset)?,
        k_offset: to_u32(OP, k.offset)?,
        v_offset: to_u32(OP, v.offset)?,
    };
    let mut key = ATTENTION.key("attention", ShaderVariant::NoWeights);
    for (name, value) in template_consts(head_dim) {
        key = key.with(name, to_u32(OP, value)?);
    }
    let groups = [
        to_u32(OP, q_len.div_ceil(QUERY_ROWS))?,
        params.heads,
        params.batch,
    ];
    batch.dispatch(
        &ATTENTION,
        key,
        &params,
        &[q.tensor, k.tensor, v.tensor, o],
        groups,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_blocks_fit_the_default_workgroup_memory() {
        for head_dim in [1, 4, 8, 40, 64, 80, 160, 512, MAX_HEAD_DIM] {
            let block = block_k(head_dim);
            assert!(block >= 1 && block.is_power_of_two());
            assert!(
                2 * 4 * block * padded_head_dim(head_dim) <= 16 << 10,
                "head {head_dim}: block {block}"
            );
        }
        assert_eq!(block_k(40), 32);
        assert_eq!(block_k(160), 8);
    }
}
