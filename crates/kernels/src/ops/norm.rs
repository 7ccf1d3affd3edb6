//! Group norm with optional fused SiLU (shaders/group_norm.wgsl) and layer norm
//! (shaders/layer_norm.wgsl).

use super::{expect_f32, to_u32};
use crate::batch::grid_1d;
use crate::kernel::{Binding, Entry, Kernel, Uniform, no_consts, uniform};
use crate::{Batch, DType, KernelError, Result, ShaderVariant, Tensor};

uniform! {
    struct GroupNormParams {
        batch: u32,
        channels: u32,
        spatial: u32,
        groups: u32,
        eps: f32,
        silu: u32,
        c_offset: u32,
        x_channels: u32,
    }
}

uniform! {
    struct LayerNormParams {
        rows: u32,
        dim: u32,
        eps: f32,
        _pad: u32,
    }
}

pub(crate) static GROUP_NORM: Kernel = Kernel {
    file: "group_norm.wgsl",
    source: include_str!("../shaders/group_norm.wgsl"),
    params: GroupNormParams::LAYOUT,
    bindings: &[
        Binding::read("x"),
        Binding::read("x2"),
        Binding::write("stats"),
        Binding::read("gamma"),
        Binding::read("beta"),
        Binding::write("y"),
    ],
    // The statistics pass binds only the input and stats.
    entries: &[
        Entry {
            name: "group_norm_stats",
            bindings: 3,
        },
        Entry {
            name: "group_norm_apply",
            bindings: 6,
        },
        Entry {
            name: "group_norm_fused",
            bindings: 6,
        },
    ],
    reads_weights: false,
    consts: no_consts,
};

pub(crate) static LAYER_NORM: Kernel = Kernel {
    file: "layer_norm.wgsl",
    source: include_str!("../shaders/layer_norm.wgsl"),
    params: LayerNormParams::LAYOUT,
    bindings: &[
        Binding::read("x"),
        Binding::read("gamma"),
        Binding::read("beta"),
        Binding::write("y"),
    ],
    entries: &[Entry {
        name: "layer_norm",
        bindings: 4,
    }],
    reads_weights: false,
    consts: no_consts,
};

/// Group norm settings for one tensor or channel chunk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormShape {
    /// Groups in this tensor or chunk (a chunk holds whole groups).
    pub groups: usize,
    pub eps: f32,
    /// Apply SiLU after the affine (the norm + activation pairs of ResNet blocks).
    pub silu: bool,
    /// First channel of gamma and beta that this chunk holds (0 when unchunked).
    pub c_offset: usize,
}

/// The longest group (channels per group times H*W) that one workgroup normalizes alone, in
/// one dispatch; longer groups take a statistics pass and a parallel apply. Every group of
/// SD 1.5's UNet at 512x512 is at most 40 960 elements; the VAE's full-resolution levels are
/// longer (up to 1 M).
pub const FUSED_GROUP_NORM_MAX: usize = 1 << 18;

/// The dispatches [`group_norm`] records for groups of `group_len` elements.
pub fn group_norm_dispatches(group_len: usize) -> usize {
    if group_len <= FUSED_GROUP_NORM_MAX {
        1
    } else {
        2
    }
}

/// Records group norm of `x` `[N, C, H, W]` (or `[N, C, L]`) into `y` of the same shape:
/// statistics per (item, group), then the affine with `gamma`, `beta` (`[C_total]`, f32).
/// One dispatch for groups of up to [`FUSED_GROUP_NORM_MAX`] elements, two beyond.
pub fn group_norm(
    batch: &mut Batch<'_>,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    y: &Tensor,
    shape: GroupNormShape,
) -> Result<()> {
    group_norm_with(batch, (x, None), gamma, beta, y, shape)
}

/// [`group_norm`] of `torch.cat([a, b], dim=1)` (`a` `[N, Ca, ...]`, `b` `[N, Cb, ...]`, the
/// same spatial size), read in place: no concatenated copy is written. A group may straddle
/// the two. Whole tensors only (`shape.c_offset` 0).
pub fn group_norm_of_concat(
    batch: &mut Batch<'_>,
    [a, b]: [&Tensor; 2],
    gamma: &Tensor,
    beta: &Tensor,
    y: &Tensor,
    shape: GroupNormShape,
) -> Result<()> {
    if shape.c_offset != 0 {
        return Err(KernelError::shape(
            "group_norm",
            "a concatenation is normalized whole (c_offset 0)",
        ));
    }
    group_norm_with(batch, (a, Some(b)), gamma, beta, y, shape)
}

fn group_norm_with(
    batch: &mut Batch<'_>,
    (x, x2): (&Tensor, Option<&Tensor>),
    gamma: &Tensor,
    beta: &Tensor,
    y: &Tensor,
    shape: GroupNormShape,
) -> Result<()> {
    const OP: &str = "group_norm";
    let dims = |t: &Tensor| match *t.shape() {
        [n, c, ref rest @ ..] if !rest.is_empty() => Some((n, c, rest.iter().product::<usize>())),
        _ => None,
    };
    let Some((n, x_channels, spatial)) = dims(x) else {
        return Err(KernelError::shape(
            OP,
            format!("x must be [N, C, ...], is {:?}", x.shape()),
        ));
    };
    let x2_channels = match x2.map(|t| (t, dims(t))) {
        None => 0,
        Some((_, Some((n2, c2, s2)))) if n2 == n && s2 == spatial => c2,
        Some((t, _)) => {
            return Err(KernelError::shape(
                OP,
                format!(
                    "the second input must be [{n}, C, ...] of {spatial} per channel as x {:?}, is {:?}",
                    x.shape(),
                    t.shape()
                ),
            ));
        }
    };
    let c = x_channels + x2_channels;
    if shape.groups == 0 || c % shape.groups != 0 {
        return Err(KernelError::shape(
            OP,
            format!("{c} channels do not split into {} groups", shape.groups),
        ));
    }
    if gamma.len() < shape.c_offset + c || beta.len() != gamma.len() {
        return Err(KernelError::shape(
            OP,
            format!(
                "gamma/beta have {}/{} channels, channels {}..{} needed",
                gamma.len(),
                beta.len(),
                shape.c_offset,
                shape.c_offset + c
            ),
        ));
    }
    expect_f32(OP, "x", x, n * x_channels * spatial)?;
    if let Some(x2) = x2 {
        expect_f32(OP, "x2", x2, n * x2_channels * spatial)?;
    }
    expect_f32(OP, "y", y, n * c * spatial)?;
    expect_f32(OP, "gamma", gamma, gamma.len())?;
    expect_f32(OP, "beta", beta, beta.len())?;
    let x2 = x2.unwrap_or(batch.context().placeholder());
    let stats = batch.context().empty(&[n, shape.groups, 2], DType::F32)?;
    let params = GroupNormParams {
        batch: to_u32(OP, n)?,
        channels: to_u32(OP, c)?,
        spatial: to_u32(OP, spatial)?,
        groups: to_u32(OP, shape.groups)?,
        eps: shape.eps,
        silu: u32::from(shape.silu),
        c_offset: to_u32(OP, shape.c_offset)?,
        x_channels: to_u32(OP, x_channels)?,
    };
    if group_norm_dispatches(c / shape.groups * spatial) == 1 {
        return batch.dispatch(
            &GROUP_NORM,
            GROUP_NORM.key("group_norm_fused", ShaderVariant::NoWeights),
            &params,
            &[x, x2, &stats, gamma, beta, y],
            [params.groups, params.batch, 1],
        );
    }
    batch.dispatch(
        &GROUP_NORM,
        GROUP_NORM.key("group_norm_stats", ShaderVariant::NoWeights),
        &params,
        &[x, x2, &stats],
        [params.groups, params.batch, 1],
    )?;
    batch.dispatch(
        &GROUP_NORM,
        GROUP_NORM.key("group_norm_apply", ShaderVariant::NoWeights),
        &params,
        &[x, x2, &stats, gamma, beta, y],
        grid_1d(y.len(), 256),
    )
}

/// Records layer norm over the last dimension of `x` `[..., D]` into `y`, with `gamma`, `beta`
/// `[D]` (f32).
pub fn layer_norm(
    batch: &mut Batch<'_>,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    y: &Tensor,
    eps: f32,
) -> Result<()> {
    const OP: &str = "layer_norm";
    let dim = *x.shape().last().unwrap_or(&0);
    if dim == 0 {
        return Err(KernelError::shape(
            OP,
            format!("x {:?} has no last dimension", x.shape()),
        ));
    }
    let rows = x.len() / dim;
    expect_f32(OP, "x", x, rows * dim)?;
    expect_f32(OP, "y", y, rows * dim)?;
    expect_f32(OP, "gamma", gamma, dim)?;
    expect_f32(OP, "beta", beta, dim)?;
    let params = LayerNormParams {
        rows: to_u32(OP, rows)?,
        dim: to_u32(OP, dim)?,
        eps,
        _pad: 0,
    };
    // One workgroup per row: grid_1d with a "workgroup size" of 1 spreads rows over x and y.
    batch.dispatch(
        &LAYER_NORM,
        LAYER_NORM.key("layer_norm", ShaderVariant::NoWeights),
        &params,
        &[x, gamma, beta, y],
        grid_1d(rows, 1),
    )
}
