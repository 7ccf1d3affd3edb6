//! Typed launchers: each checks shapes (returning [`KernelError::Shape`]), picks the pipeline
//! variant and records one or more dispatches into a [`Batch`]. Outputs are passed in, so the
//! caller (the model runner, following the memory plan) owns every buffer.

mod attention;
mod conv2d;
mod elementwise;
mod linear;
mod norm;
mod step_program;

pub use attention::{AttentionShape, TokenFeatures, attention, attention_of_features};
pub use conv2d::{
    ChannelBias, Conv2dChunk, Conv2dLayouts, Conv2dShape, conv2d, conv2d_in_layouts,
    conv2d_of_concat, conv2d_with_channel_bias, conv2d_with_residual,
};
pub use elementwise::{
    Activation, activation, add, concat_channels, embedding, layout_nchw_to_nlc,
    layout_nlc_to_nchw, mul, residual_add, scale, timestep_embedding, timestep_frequencies,
    upsample_nearest,
};
pub use linear::{
    InputLayerNorm, geglu_pairs, linear, linear_geglu, linear_with_layer_norm, linear_with_residual,
};
pub use norm::{
    FUSED_GROUP_NORM_MAX, GroupNormShape, group_norm, group_norm_dispatches, group_norm_of_concat,
    layer_norm,
};
pub use step_program::{
    ModelOutput, STEP_PROGRAM_MAX_CONSTANTS, STEP_PROGRAM_MAX_INSTRUCTIONS, STEP_PROGRAM_MAX_KEPT,
    STEP_PROGRAM_REGISTERS, StepCode, StepInputs, step_program,
};

use crate::kernel::Kernel;

/// A residual connection a GEMM's epilogue adds: `y = (y + tensor) * factor` (`factor` is
/// `1 / output_scale_factor`, usually 1), instead of a `residual_add` pass of its own.
#[derive(Clone, Copy, Debug)]
pub struct Residual<'t> {
    /// The skip connection's tensor, shaped as the output.
    pub tensor: &'t Tensor,
    /// What the sum is multiplied by.
    pub factor: f32,
}

/// Rows and columns of the GEMM kernels' output tiles (`GEMM_TILE` in common.wgsl).
pub(crate) const GEMM_TILE: usize = 64;

/// What a GEMM adds to its output as it writes it, beyond the bias.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Epilogue<'t> {
    /// Nothing.
    None,
    /// A residual connection, `epilogue = 1`.
    Residual(Residual<'t>),
    /// `y[n, c, ..] += t[n, offset + c]`, `epilogue = 2` (conv2d only).
    ChannelBias(ChannelBias<'t>),
    /// GEGLU over (value, gate) column pairs, `epilogue = 3` (linear only).
    Geglu,
}

/// A GEMM's epilogue: `epilogue` and `residual_factor` for its uniforms, and its bias and
/// residual bindings (the context's placeholder where there is none).
pub(crate) fn gemm_epilogue<'t>(
    ctx: &'t crate::GpuContext,
    bias: Option<&'t Tensor>,
    epilogue: Epilogue<'t>,
) -> ((u32, f32), [&'t Tensor; 2]) {
    let placeholder = ctx.placeholder();
    let (mode, factor, tensor) = match epilogue {
        Epilogue::None => (0, 1.0, placeholder),
        Epilogue::Residual(r) => (1, r.factor, r.tensor),
        Epilogue::ChannelBias(t) => (2, 1.0, t.tensor),
        Epilogue::Geglu => (3, 1.0, placeholder),
    };
    ((mode, factor), [bias.unwrap_or(placeholder), tensor])
}
use crate::{Batch, DType, KernelError, Result, ShaderVariant, Tensor};

/// Every kernel file's table (see [`crate::kernel`]).
#[cfg_attr(not(test), allow(dead_code))] // read by the descriptor test
pub(crate) static KERNELS: [&Kernel; 9] = [
    &linear::LINEAR,
    &conv2d::CONV2D,
    &attention::ATTENTION,
    &elementwise::UNARY,
    &elementwise::BINARY,
    &elementwise::EMBEDDING,
    &norm::GROUP_NORM,
    &norm::LAYER_NORM,
    &step_program::STEP_PROGRAM,
];

/// The shader variant that reads `weights` of this tensor's storage type on this device.
pub(crate) fn weight_variant(
    batch: &Batch<'_>,
    op: &'static str,
    w: &Tensor,
) -> Result<ShaderVariant> {
    match w.dtype() {
        DType::F32 => Ok(ShaderVariant::WeightsF32),
        DType::F16 if batch.context().native_f16() => Ok(ShaderVariant::WeightsF16),
        DType::F16 => Ok(ShaderVariant::WeightsPacked),
        DType::U32 => Err(KernelError::shape(
            op,
            "weights must be f32 or f16, not u32",
        )),
    }
}

/// Fails unless the tensor is f32 with exactly `len` elements.
pub(crate) fn expect_f32(op: &'static str, name: &str, t: &Tensor, len: usize) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(KernelError::shape(
            op,
            format!("{name} must be f32, is {:?}", t.dtype()),
        ));
    }
    if t.len() != len {
        return Err(KernelError::shape(
            op,
            format!(
                "{name} has {} elements (shape {:?}), expected {len}",
                t.len(),
                t.shape()
            ),
        ));
    }
    Ok(())
}

/// Converts a size to the u32 the shaders index with.
pub(crate) fn to_u32(op: &'static str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        KernelError::shape(
            op,
            format!("size {value} exceeds the u32 range of a shader index"),
        )
    })
}
