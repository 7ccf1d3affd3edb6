//! Elementwise kernels: activations, arithmetic, GEGLU, upsampling, concatenation, layout
//! changes (shaders/unary.wgsl, shaders/binary.wgsl), the timestep embedding and the token +
//! position embedding (shaders/embedding.wgsl).

use super::{expect_f32, to_u32, weight_variant};
use crate::batch::grid_1d;
use crate::kernel::{Binding, Entry, Kernel, Uniform, no_consts, uniform};
use crate::{Batch, DType, KernelError, Result, ShaderVariant, Tensor};

const WG: u32 = 256;

uniform! {
    #[derive(Default)]
    struct UnaryParams {
        len: u32,
        dim0: u32,
        dim1: u32,
        dim2: u32,
        dim3: u32,
        alpha: f32,
        _pad: [u32; 2],
    }
}

uniform! {
    #[derive(Default)]
    struct BinaryParams {
        len: u32,
        dim0: u32,
        dim1: u32,
        dim2: u32,
    }
}

uniform! {
    struct EmbeddingParams {
        tokens: u32,
        seq_len: u32,
        dim: u32,
        vocab: u32,
    }
}

/// Entry points that bind every binding of their kernel.
const fn entries<const N: usize>(names: [&'static str; N], bindings: usize) -> [Entry; N] {
    let mut out = [Entry { name: "", bindings }; N];
    let mut i = 0;
    while i < N {
        out[i].name = names[i];
        i += 1;
    }
    out
}

pub(crate) static UNARY: Kernel = Kernel {
    file: "unary.wgsl",
    source: include_str!("../shaders/unary.wgsl"),
    params: UnaryParams::LAYOUT,
    bindings: &[Binding::read("x"), Binding::write("y")],
    entries: &entries(
        [
            "act_silu",
            "act_gelu",
            "act_gelu_tanh",
            "act_quick_gelu",
            "scale",
            "residual_add",
            "upsample_nearest",
            "nchw_to_nlc",
            "nlc_to_nchw",
        ],
        2,
    ),
    reads_weights: false,
    consts: no_consts,
};

pub(crate) static BINARY: Kernel = Kernel {
    file: "binary.wgsl",
    source: include_str!("../shaders/binary.wgsl"),
    params: BinaryParams::LAYOUT,
    bindings: &[Binding::read("a"), Binding::read("b"), Binding::write("y")],
    entries: &entries(["add", "mul", "concat_channels", "timestep_embedding"], 3),
    reads_weights: false,
    consts: no_consts,
};

pub(crate) static EMBEDDING: Kernel = Kernel {
    file: "embedding.wgsl",
    source: include_str!("../shaders/embedding.wgsl"),
    params: EmbeddingParams::LAYOUT,
    bindings: &[
        Binding::ids("ids"),
        Binding::weights(),
        Binding::read("positions"),
        Binding::write("y"),
    ],
    entries: &[Entry {
        name: "embedding",
        bindings: 4,
    }],
    reads_weights: true,
    consts: no_consts,
};

/// Pointwise activation functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)`.
    Silu,
    /// Exact GELU with erf (diffusers, CLIP's `gelu`).
    Gelu,
    /// The tanh approximation of GELU.
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (CLIP's `quick_gelu`).
    QuickGelu,
}

impl Activation {
    fn entry(self) -> &'static str {
        match self {
            Activation::Silu => "act_silu",
            Activation::Gelu => "act_gelu",
            Activation::GeluTanh => "act_gelu_tanh",
            Activation::QuickGelu => "act_quick_gelu",
        }
    }
}

fn unary(
    batch: &mut Batch<'_>,
    entry: &'static str,
    params: UnaryParams,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    batch.dispatch(
        &UNARY,
        UNARY.key(entry, ShaderVariant::NoWeights),
        &params,
        &[x, y],
        grid_1d(params.len as usize, WG),
    )
}

fn binary(
    batch: &mut Batch<'_>,
    entry: &'static str,
    params: BinaryParams,
    a: &Tensor,
    b: &Tensor,
    y: &Tensor,
) -> Result<()> {
    batch.dispatch(
        &BINARY,
        BINARY.key(entry, ShaderVariant::NoWeights),
        &params,
        &[a, b, y],
        grid_1d(params.len as usize, WG),
    )
}

fn same_len(op: &'static str, x: &Tensor, y: &Tensor) -> Result<u32> {
    expect_f32(op, "x", x, x.len())?;
    expect_f32(op, "y", y, x.len())?;
    to_u32(op, x.len())
}

/// Records `y = f(x)`.
pub fn activation(batch: &mut Batch<'_>, f: Activation, x: &Tensor, y: &Tensor) -> Result<()> {
    let len = same_len("activation", x, y)?;
    unary(
        batch,
        f.entry(),
        UnaryParams {
            len,
            ..Default::default()
        },
        x,
        y,
    )
}

/// Records `y = x * factor`.
pub fn scale(batch: &mut Batch<'_>, x: &Tensor, factor: f32, y: &Tensor) -> Result<()> {
    let len = same_len("scale", x, y)?;
    unary(
        batch,
        "scale",
        UnaryParams {
            len,
            alpha: factor,
            ..Default::default()
        },
        x,
        y,
    )
}

/// Records, in place, `y = (y + x) * factor` (residual connections; `factor` is
/// `1 / output_scale_factor`, usually 1).
pub fn residual_add(batch: &mut Batch<'_>, x: &Tensor, y: &Tensor, factor: f32) -> Result<()> {
    let len = same_len("residual_add", x, y)?;
    unary(
        batch,
        "residual_add",
        UnaryParams {
            len,
            alpha: factor,
            ..Default::default()
        },
        x,
        y,
    )
}

/// Records nearest-neighbour upsampling of `x` `[N, C, H, W]` to the size of `y`
/// `[N, C, OH, OW]` (2x in SD, or the size of an odd skip connection).
pub fn upsample_nearest(batch: &mut Batch<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "upsample_nearest";
    let [n, c, h, w] = *x.shape() else {
        return Err(KernelError::shape(
            OP,
            format!("x must be NCHW, is {:?}", x.shape()),
        ));
    };
    let [yn, yc, oh, ow] = *y.shape() else {
        return Err(KernelError::shape(
            OP,
            format!("y must be NCHW, is {:?}", y.shape()),
        ));
    };
    if (yn, yc) != (n, c) || oh < h || ow < w || h == 0 || w == 0 {
        return Err(KernelError::shape(
            OP,
            format!("cannot upsample {:?} to {:?}", x.shape(), y.shape()),
        ));
    }
    expect_f32(OP, "x", x, x.len())?;
    expect_f32(OP, "y", y, y.len())?;
    let params = UnaryParams {
        len: to_u32(OP, y.len())?,
        dim0: to_u32(OP, h)?,
        dim1: to_u32(OP, w)?,
        dim2: to_u32(OP, oh)?,
        dim3: to_u32(OP, ow)?,
        ..Default::default()
    };
    unary(batch, "upsample_nearest", params, x, y)
}

fn layout(
    op: &'static str,
    entry: &'static str,
    batch: &mut Batch<'_>,
    x: &Tensor,
    y: &Tensor,
    channels: usize,
) -> Result<()> {
    let n = *x.shape().first().unwrap_or(&0);
    if channels == 0 || n == 0 || !x.len().is_multiple_of(n * channels) {
        return Err(KernelError::shape(
            op,
            format!("x {:?} does not have {channels} channels", x.shape()),
        ));
    }
    let len = same_len(op, x, y)?;
    let params = UnaryParams {
        len,
        dim0: to_u32(op, channels)?,
        dim1: to_u32(op, x.len() / (n * channels))?,
        ..Default::default()
    };
    unary(batch, entry, params, x, y)
}

/// Records the change from `[N, C, H, W]` (or `[N, C, L]`) to token-major `[N, H*W, C]`.
pub fn layout_nchw_to_nlc(batch: &mut Batch<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    let channels = *x.shape().get(1).unwrap_or(&0);
    layout("layout_nchw_to_nlc", "nchw_to_nlc", batch, x, y, channels)
}

/// Records the change from token-major `[N, L, C]` back to `[N, C, L]` (reshape `y` to NCHW).
pub fn layout_nlc_to_nchw(batch: &mut Batch<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    let channels = *x.shape().last().unwrap_or(&0);
    layout("layout_nlc_to_nchw", "nlc_to_nchw", batch, x, y, channels)
}

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<u32> {
    if a.shape() != b.shape() {
        return Err(KernelError::shape(
            op,
            format!("a {:?} and b {:?} differ", a.shape(), b.shape()),
        ));
    }
    expect_f32(op, "b", b, a.len())?;
    same_len(op, a, y)
}

/// Records `y = a + b`.
pub fn add(batch: &mut Batch<'_>, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<()> {
    let len = same_shape("add", a, b, y)?;
    binary(
        batch,
        "add",
        BinaryParams {
            len,
            ..Default::default()
        },
        a,
        b,
        y,
    )
}

/// Records `y = a * b`.
pub fn mul(batch: &mut Batch<'_>, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<()> {
    let len = same_shape("mul", a, b, y)?;
    binary(
        batch,
        "mul",
        BinaryParams {
            len,
            ..Default::default()
        },
        a,
        b,
        y,
    )
}

/// Records `y = cat([a, b], dim=1)` for `[N, Ca, ...]` and `[N, Cb, ...]` with equal rest.
pub fn concat_channels(batch: &mut Batch<'_>, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<()> {
    const OP: &str = "concat_channels";
    let (na, ca, rest_a) = match a.shape() {
        [n, c, rest @ ..] => (*n, *c, rest),
        _ => {
            return Err(KernelError::shape(
                OP,
                format!("a must be [N, C, ...], is {:?}", a.shape()),
            ));
        }
    };
    let (nb, cb, rest_b) = match b.shape() {
        [n, c, rest @ ..] => (*n, *c, rest),
        _ => {
            return Err(KernelError::shape(
                OP,
                format!("b must be [N, C, ...], is {:?}", b.shape()),
            ));
        }
    };
    if na != nb || rest_a != rest_b {
        return Err(KernelError::shape(
            OP,
            format!(
                "a {:?} and b {:?} differ outside the channels",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let spatial: usize = rest_a.iter().product();
    expect_f32(OP, "a", a, a.len())?;
    expect_f32(OP, "b", b, b.len())?;
    expect_f32(OP, "y", y, a.len() + b.len())?;
    let params = BinaryParams {
        len: to_u32(OP, y.len())?,
        dim0: to_u32(OP, ca)?,
        dim1: to_u32(OP, cb)?,
        dim2: to_u32(OP, spatial)?,
    };
    binary(batch, OP, params, a, b, y)
}

/// The sinusoid frequencies of diffusers' `get_timestep_embedding` (max period 10000), computed
/// in f64 and rounded once, as torch's f32 `exp` gives them.
pub fn timestep_frequencies(dim: usize, freq_shift: f64) -> Vec<f32> {
    let half = dim / 2;
    (0..half)
        .map(|j| (-(10000f64.ln()) * j as f64 / (half as f64 - freq_shift)).exp() as f32)
        .collect()
}

/// Records the sinusoidal embedding of `timesteps` `[N]` into `y` `[N, dim]` (`flip_sin_to_cos`
/// puts cos first, `freq_shift` is diffusers' `downscale_freq_shift`).
pub fn timestep_embedding(
    batch: &mut Batch<'_>,
    timesteps: &Tensor,
    y: &Tensor,
    flip_sin_to_cos: bool,
    freq_shift: f32,
) -> Result<()> {
    const OP: &str = "timestep_embedding";
    let [n, dim] = *y.shape() else {
        return Err(KernelError::shape(
            OP,
            format!("y must be [N, dim], is {:?}", y.shape()),
        ));
    };
    if dim < 2 || f64::from(freq_shift) >= (dim / 2) as f64 {
        return Err(KernelError::shape(
            OP,
            format!("dim {dim} too small for freq_shift {freq_shift}"),
        ));
    }
    expect_f32(OP, "timesteps", timesteps, n)?;
    expect_f32(OP, "y", y, n * dim)?;
    let freqs = timestep_frequencies(dim, f64::from(freq_shift));
    let freqs = batch.context().upload_f32(&freqs, &[dim / 2])?;
    let params = BinaryParams {
        len: to_u32(OP, n * dim)?,
        dim0: to_u32(OP, dim)?,
        dim1: u32::from(flip_sin_to_cos),
        dim2: 0,
    };
    binary(batch, OP, params, timesteps, &freqs, y)
}

/// Records CLIP's input embedding: `y[b, l] = token_table[ids[b, l]] + positions[l]`. `ids` is
/// `[B, L]` (u32, each below the vocabulary size: checked here on the CPU copy `ids_host`),
/// `token_table` `[vocab, D]` (f16 or f32), `positions` `[>= L, D]` (f32), `y` `[B, L, D]`.
pub fn embedding(
    batch: &mut Batch<'_>,
    ids: &Tensor,
    ids_host: &[u32],
    token_table: &Tensor,
    positions: &Tensor,
    y: &Tensor,
) -> Result<()> {
    const OP: &str = "embedding";
    let [vocab, dim] = *token_table.shape() else {
        return Err(KernelError::shape(
            OP,
            format!(
                "token table must be [vocab, D], is {:?}",
                token_table.shape()
            ),
        ));
    };
    let [b, l] = *ids.shape() else {
        return Err(KernelError::shape(
            OP,
            format!("ids must be [B, L], is {:?}", ids.shape()),
        ));
    };
    if ids.dtype() != DType::U32 || ids_host.len() != b * l {
        return Err(KernelError::shape(
            OP,
            "ids must be u32 and match their host copy",
        ));
    }
    if let Some((i, id)) = ids_host
        .iter()
        .enumerate()
        .find(|(_, id)| **id as usize >= vocab)
    {
        return Err(KernelError::shape(
            OP,
            format!("token id {id} at position {i} is outside the vocabulary of {vocab}"),
        ));
    }
    if positions.len() < l * dim || positions.shape().last() != Some(&dim) {
        return Err(KernelError::shape(
            OP,
            format!(
                "positions {:?} do not cover {l} tokens of width {dim}",
                positions.shape()
            ),
        ));
    }
    expect_f32(OP, "positions", positions, positions.len())?;
    expect_f32(OP, "y", y, b * l * dim)?;
    let variant = weight_variant(batch, OP, token_table)?;
    let params = EmbeddingParams {
        tokens: to_u32(OP, b * l)?,
        seq_len: to_u32(OP, l)?,
        dim: to_u32(OP, dim)?,
        vocab: to_u32(OP, vocab)?,
    };
    batch.dispatch(
        &EMBEDDING,
        EMBEDDING.key("embedding", variant),
        &params,
        &[ids, token_table, positions, y],
        grid_1d(b * l * dim, WG),
    )
}
