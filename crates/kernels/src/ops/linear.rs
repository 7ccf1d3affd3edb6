//! `y = x W^T + b` (shaders/linear.wgsl).

use super::{Epilogue, GEMM_TILE, Residual, expect_f32, gemm_epilogue, to_u32, weight_variant};
use crate::kernel::{Entry, GEMM_BINDINGS, Kernel, Uniform, no_consts, uniform};
use crate::{Batch, KernelError, Result, Tensor};

uniform! {
    struct Params {
        rows: u32,
        n: u32,
        k: u32,
        has_bias: u32,
        has_residual: u32,
        residual_factor: f32,
        _pad0: u32,
        _pad1: u32,
    }
}

pub(crate) static LINEAR: Kernel = Kernel {
    file: "linear.wgsl",
    source: include_str!("../shaders/linear.wgsl"),
    params: Params::LAYOUT,
    bindings: &GEMM_BINDINGS,
    entries: &[Entry {
        name: "linear",
        bindings: 5,
    }],
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
    expect_f32(OP, "y", y, rows * n)?;
    if let Some(b) = bias {
        expect_f32(OP, "bias", b, n)?;
    }
    if let Some(r) = &residual {
        expect_f32(OP, "residual", r.tensor, rows * n)?;
    }
    let variant = weight_variant(batch, OP, weight)?;
    let has_bias = u32::from(bias.is_some());
    let ((has_residual, residual_factor), [bias, residual]) = gemm_epilogue(
        batch.context(),
        bias,
        residual.map_or(Epilogue::None, Epilogue::Residual),
    );
    let params = Params {
        rows: to_u32(OP, rows)?,
        n: to_u32(OP, n)?,
        k: to_u32(OP, k)?,
        has_bias,
        has_residual,
        residual_factor,
        _pad0: 0,
        _pad1: 0,
    };
    let groups = [
        to_u32(OP, n.div_ceil(GEMM_TILE))?,
        to_u32(OP, rows.div_ceil(GEMM_TILE))?,
        1,
    ];
    batch.dispatch(
        &LINEAR,
        LINEAR.key("linear", variant),
        &params,
        &[x, weight, bias, y, residual],
        groups,
    )
}
