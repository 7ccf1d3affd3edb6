//! `y = x W^T + b` (shaders/linear.wgsl).

use super::{Epilogue, GEMM_TILE, Residual, expect_f32, gemm_epilogue, to_u32, weight_variant};
use crate::kernel::{Binding, Entry, GEMM_BINDINGS, Kernel, Uniform, no_consts, uniform};
use crate::{Batch, KernelError, Result, Tensor};

uniform! {
    struct Params {
        rows: u32,
        n: u32,
        k: u32,
        has_bias: u32,
        epilogue: u32,
        residual_factor: f32,
        layer_norm: u32,
        norm_eps: f32,
    }
}

/// The GEMM bindings, then the layer norm's gamma and beta.
const LINEAR_BINDINGS: [Binding; 7] = [
    GEMM_BINDINGS[0],
    GEMM_BINDINGS[1],
    GEMM_BINDINGS[2],
    GEMM_BINDINGS[3],
    GEMM_BINDINGS[4],
    Binding::read("gamma"),
    Binding::read("beta"),
];

/// The most rows `linear_few_rows` takes (`FEW_ROWS` in linear.wgsl).
const FEW_ROWS: usize = 8;

/// `nn.LayerNorm` over each row of a linear layer's input, applied as the rows are loaded
/// (`gamma`, `beta` `[k]`, f32) instead of in a pass of its own.
#[derive(Clone, Copy, Debug)]
pub struct InputLayerNorm<'t> {
    pub gamma: &'t Tensor,
    pub beta: &'t Tensor,
    pub eps: f32,
}

pub(crate) static LINEAR: Kernel = Kernel {
    file: "linear.wgsl",
    source: include_str!("../shaders/linear.wgsl"),
    params: Params::LAYOUT,
    bindings: &LINEAR_BINDINGS,
    // The few-rows entry has no input layer norm.
    entries: &[
        Entry {
            name: "linear",
            bindings: 7,
        },
        Entry {
            name: "linear_few_rows",
            bindings: 5,
        },
    ],
    reads_weights: true,
    consts: no_consts,
};

/// Records `y = x W^T + b`: `x` is `[..., k]` (f32, leading dimensions flattened into rows),
/// `weight` is `[n, k]` (f16 or f32), `bias` is `[n]` (f32), `y` is `[..., n]` (f32).
pub fn linear(
    batch: &mut Batch<'_>,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
) -> Result<()> {
    linear_with_residual(batch, x, weight, bias, y, None)
}

/// [`linear`], then `y = (y + residual) * factor` in the same pass: the residual connection
/// after a block's output projection. `residual` has `y`'s shape.
pub fn linear_with_residual(
    batch: &mut Batch<'_>,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    residual: Option<Residual<'_>>,
) -> Result<()> {
    let epilogue = residual.map_or(Epilogue::None, Epilogue::Residual);
    linear_with_epilogue(batch, x, None, weight, bias, y, epilogue)
}

/// [`linear`] of `norm` applied to each row of `x`: `nn.LayerNorm` then `nn.Linear` in one pass.
pub fn linear_with_layer_norm(
    batch: &mut Batch<'_>,
    x: &Tensor,
    norm: InputLayerNorm<'_>,
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
) -> Result<()> {
    linear_with_epilogue(batch, x, Some(norm), weight, bias, y, Epilogue::None)
}

/// diffusers' `GEGLU` in the projection's epilogue: `y = value * gelu(gate)` where `[value,
/// gate] = x W^T + b`, without writing the 2x-wide projection. `weight` `[2 * d, k]` and `bias`
/// `[2 * d]` hold the value and gate rows in pairs, as [`geglu_pairs`] arranges them; `y` is
/// `[..., d]`. With `norm`, each row of `x` is layer-normed first, as it is loaded.
pub fn linear_geglu(
    batch: &mut Batch<'_>,
    x: &Tensor,
    norm: Option<InputLayerNorm<'_>>,
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
) -> Result<()> {
    linear_with_epilogue(batch, x, norm, weight, bias, y, Epilogue::Geglu)
}

/// The rows of a GEGLU projection's weight `[2 * d, k]` (or bias, `k = 1`) as
/// [`linear_geglu`] reads them: value row `j` (of the first half) and gate row `j` (of the
/// second) side by side, at rows `2j` and `2j + 1`.
pub fn geglu_pairs<T: Copy>(values: &[T], rows: usize) -> Vec<T> {
    let half = rows / 2;
    let k = values.len() / rows.max(1);
    (0..half)
        .flat_map(|j| {
            let value = &values[j * k..(j + 1) * k];
            let gate = &values[(half + j) * k..(half + j + 1) * k];
            value.iter().chain(gate).copied()
        })
        .collect()
}

fn linear_with_epilogue(
    batch: &mut Batch<'_>,
    x: &Tensor,
    norm: Option<InputLayerNorm<'_>>,
    weight: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    epilogue: Epilogue<'_>,
) -> Result<()> {
    const OP: &str = "linear";
    let [n, k] = *weight.shape() else {
        return Err(KernelError::shape(
            OP,
            format!("weight must be [n, k], is {:?}", weight.shape()),
        ));
    };
    if k == 0 || x.shape().last() != Some(&k) {
        return Err(KernelError::shape(
            OP,
            format!("x {:?} does not end in the weight's k = {k}", x.shape()),
        ));
    }
    let rows = x.len() / k;
    expect_f32(OP, "x", x, rows * k)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, n)?;
    }
    if let Some(norm) = norm {
        expect_f32(OP, "gamma", norm.gamma, k)?;
        expect_f32(OP, "beta", norm.beta, k)?;
    }
    match epilogue {
        Epilogue::Geglu if !n.is_multiple_of(2) => {
            return Err(KernelError::shape(
                OP,
                format!("a GEGLU projection needs an even output width, not {n}"),
            ));
        }
        Epilogue::Geglu => expect_f32(OP, "y", y, rows * n / 2)?,
        Epilogue::Residual(r) => {
            expect_f32(OP, "y", y, rows * n)?;
            expect_f32(OP, "residual", r.tensor, rows * n)?;
        }
        Epilogue::None => expect_f32(OP, "y", y, rows * n)?,
        Epilogue::ChannelBias(_) => {
            return Err(KernelError::shape(OP, "no per-channel bias on tokens"));
        }
    }
    let variant = weight_variant(batch, OP, weight)?;
    let has_bias = u32::from(bias.is_some());
    let ((epilogue, residual_factor), [bias, residual]) =
        gemm_epilogue(batch.context(), bias, epilogue);
    let params = Params {
        rows: to_u32(OP, rows)?,
        n: to_u32(OP, n)?,
        k: to_u32(OP, k)?,
        has_bias,
        epilogue,
        residual_factor,
        layer_norm: u32::from(norm.is_some()),
        norm_eps: norm.map_or(0.0, |n| n.eps),
    };
    // A few rows without a layer norm or GEGLU (a batch's time embeddings): one thread per
    // output column, instead of 64-row tiles that would be mostly padding.
    if rows <= FEW_ROWS && norm.is_none() && epilogue != 3 {
        return batch.dispatch(
            &LINEAR,
            LINEAR.key("linear_few_rows", variant),
            &params,
            &[x, weight, bias, y, residual],
            [to_u32(OP, n.div_ceil(64))?, 1, 1],
        );
    }
    let placeholder = batch.context().placeholder();
    let (gamma, beta) = norm.map_or((placeholder, placeholder), |n| (n.gamma, n.beta));
    let groups = [
        to_u32(OP, n.div_ceil(GEMM_TILE))?,
        to_u32(OP, rows.div_ceil(GEMM_TILE))?,
        1,
    ];
    batch.dispatch(
        &LINEAR,
        LINEAR.key("linear", variant),
        &params,
        &[x, weight, bias, y, residual, gamma, beta],
        groups,
    )
}
