//! Shared test set-up: one context per f16 mode, random data, poisoned outputs, running a batch.

use std::sync::OnceLock;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sd_kernels::reference::{Tolerance, compare};
use sd_kernels::{Batch, ContextOptions, DType, F16Mode, GpuContext, Tensor};

/// Weight storage variants every weight-reading kernel is tested with.
#[derive(Clone, Copy, Debug)]
pub enum Weights {
    F32,
    /// f16 read with native `shader-f16`.
    F16Native,
    /// f16 read from packed `u32` with `unpack2x16float`.
    F16Packed,
}

pub const ALL_WEIGHTS: [Weights; 3] = [Weights::F32, Weights::F16Native, Weights::F16Packed];

fn make_context(f16: F16Mode) -> GpuContext {
    let mut options = ContextOptions::for_tests().expect("valid environment");
    options.f16 = f16;
    // WebGPU's default limits, as in a browser: the limit test allocates past the binding limit
    // and needs a buffer limit above it (with the adapter's own limits both can be 2^31 - 1).
    options.adapter_limits = false;
    let ctx = pollster::block_on(GpuContext::new(options))
        .expect("a GPU adapter on the expected backend (see SD_EXPECT_BACKEND)");
    eprintln!("adapter: {}", ctx.describe());
    ctx
}

/// The context that reads f16 natively; fails if the adapter cannot, since that path must be
/// proven (lavapipe has shader-f16).
pub fn native() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    let ctx = CTX.get_or_init(|| make_context(F16Mode::Auto));
    assert!(
        ctx.native_f16(),
        "adapter {} lacks shader-f16: the native f16 path is untested",
        ctx.describe()
    );
    ctx
}

/// The context forced to the packed f16 path.
pub fn packed() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| make_context(F16Mode::ForcePacked))
}

pub fn context_for(weights: Weights) -> &'static GpuContext {
    match weights {
        Weights::F32 | Weights::F16Native => native(),
        Weights::F16Packed => packed(),
    }
}

pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// Uniform values in [-scale, scale): never zeros, never constant.
pub fn random(rng: &mut SmallRng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Rounds through f16, as the GPU sees f16 weights.
pub fn round_f16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// Uploads `values` as weights of the variant; returns the tensor and the values the GPU sees.
pub fn weight(
    ctx: &GpuContext,
    weights: Weights,
    values: &[f32],
    shape: &[usize],
) -> (Tensor, Vec<f32>) {
    match weights {
        Weights::F32 => (
            ctx.upload_weight(values, shape, DType::F32)
                .expect("upload"),
            values.to_vec(),
        ),
        Weights::F16Native | Weights::F16Packed => (
            ctx.upload_weight(values, shape, DType::F16)
                .expect("upload"),
            round_f16(values),
        ),
    }
}

pub fn upload(ctx: &GpuContext, values: &[f32], shape: &[usize]) -> Tensor {
    ctx.upload_f32(values, shape).expect("upload")
}

/// An output tensor filled with NaN, so an element the kernel forgets to write fails the test.
pub fn poisoned(ctx: &GpuContext, shape: &[usize]) -> Tensor {
    let t = ctx.empty(shape, DType::F32).expect("allocate");
    ctx.fill_f32(&t, f32::NAN).expect("poison");
    t
}

/// Records with `record`, submits, and reads `out` back.
pub fn run(ctx: &GpuContext, out: &Tensor, record: impl FnOnce(&mut Batch<'_>)) -> Vec<f32> {
    let mut batch = ctx.batch();
    record(&mut batch);
    pollster::block_on(batch.submit()).expect("submit");
    pollster::block_on(ctx.read_f32(out)).expect("read back")
}

/// Panics with the comparison report.
pub fn assert_close(label: &str, got: &[f32], want: &[f32], tol: Tolerance) {
    if let Err(report) = compare(label, got, want, tol) {
        panic!("{report}");
    }
}
