//! What the candle comparisons share (`sd15_vs_candle.rs`, `arch_vs_candle.rs`): one test at a
//! time, the GPU context, the recording weight backend that lists what candle's models ask for,
//! running a recorded GPU batch, and the relative-error check. Included with `#[path]` (candle
//! is a dev-dependency, so this cannot live in the library).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use candle_core::{DType as CDType, Device, Shape, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use sd_kernels::{ContextOptions, DType, GpuContext, Tensor};
use sd_models::WeightLoader;
use sd_tests::{Comparison, TensorList};
use sd_weights::WeightSource;

/// The tests hold gigabytes each: run them one at a time, whatever `--test-threads` says.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let options = ContextOptions::for_tests().expect("valid environment");
        let ctx = pollster::block_on(GpuContext::new(options))
            .expect("a GPU adapter on the expected backend");
        println!("adapter: {}", ctx.describe());
        ctx
    })
}

/// A candle weight backend that hands out a broadcast zero (no allocation) for every tensor
/// asked for and records its name and shape, in order.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<TensorList>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: CDType,
        dev: &Device,
    ) -> candle_core::Result<CTensor> {
        let mut seen = self.0.lock().expect("recorder lock");
        match seen.iter().find(|(n, _)| n == name) {
            Some((_, shape)) if shape.as_slice() != s.dims() => {
                candle_core::bail!("{name} asked for as {:?} and as {shape:?}", s.dims())
            }
            Some(_) => {}
            None => seen.push((name.to_owned(), s.dims().to_vec())),
        }
        CTensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: CDType, _: &Device) -> candle_core::Result<CTensor> {
        candle_core::bail!("the recorder needs a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        // Makes candle's VAE attention pick diffusers' current names (`to_q`, ...).
        true
    }
}

/// Every tensor candle's model asks for when `build` constructs it.
pub fn candle_tensors<M>(
    build: impl FnOnce(VarBuilder<'_>) -> candle_core::Result<M>,
) -> TensorList {
    let recorder = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), CDType::F32, Device::Cpu);
    drop(build(vb).expect("candle builds the model"));
    recorder.0.lock().expect("recorder lock").clone()
}

pub fn candle_out(t: &CTensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("candle output to host")
}

pub fn gpu_run(
    record: impl FnOnce(&mut sd_kernels::Batch<'_>) -> sd_models::Result<Tensor>,
) -> Vec<f32> {
    let mut batch = ctx().batch();
    let out = record(&mut batch).expect("record");
    pollster::block_on(batch.submit()).expect("submit");
    pollster::block_on(ctx().read_f32(&out)).expect("read back")
}

pub fn params(weights: &WeightSource, matrices: DType) -> WeightLoader<'_> {
    WeightLoader {
        ctx: ctx(),
        scope: weights.root(),
        matrices,
    }
}

pub fn report(label: &str, got: &[f32], want: &[f32], bound: f32) {
    let c = Comparison::new(got, want);
    println!("{label}: {c} (bound {bound:e} relative)");
    assert!(
        c.non_finite == 0 && c.relative() <= bound,
        "{label}: {c} exceeds {bound:e} relative"
    );
}
