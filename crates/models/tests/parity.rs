//! The models against diffusers' own numbers for the digits fixture
//! (`shared/fixtures/tiny-sd-digits-refs/refs.safetensors`, described in `refs.json`): text
//! encoder hidden states, one UNet call, VAE decode and encode. f32 weights must be within
//! 1e-4 (max abs); f16 weights are reported and bounded.

mod common;

use std::path::PathBuf;

use sd_core::config::{AutoencoderKLConfig, CLIPTextConfig, UNet2DConditionConfig};
use sd_kernels::{ContextOptions, DType, GpuContext, Tensor};
use sd_models::{
    CLIPTextModel, TextOutput, UNet2DConditionModel, VaeDecoder, VaeEncoder, WeightLoader,
};
use sd_weights::{Component, open_component};

use common::{fixtures, max_abs_diff, reference, token_ids};

fn model_dir() -> PathBuf {
    fixtures().join("tiny-sd-digits")
}

fn ctx() -> &'static GpuContext {
    sd_test_support::gpu_context()
}

fn component(name: &str) -> Component {
    open_component(&model_dir(), name, None).expect("fixture component")
}

fn config(path: &str) -> String {
    std::fs::read_to_string(model_dir().join(path)).expect("fixture config")
}

fn read(t: &Tensor) -> Vec<f32> {
    pollster::block_on(ctx().read_f32(t)).expect("read back")
}

fn run(record: impl FnOnce(&mut sd_kernels::Batch<'_>) -> sd_models::Result<Tensor>) -> Vec<f32> {
    let mut batch = ctx().batch();
    let out = record(&mut batch).expect("record");
    pollster::block_on(batch.submit()).expect("submit");
    read(&out)
}

/// (storage, bound): f32 weights must match to 1e-4; f16 weights are bounded loosely.
const STORAGES: [(DType, f32); 2] = [(DType::F32, 1e-4), (DType::F16, 2e-2)];

#[test]
fn text_encoder_matches_diffusers() {
    let cfg = CLIPTextConfig::from_json(
        "text_encoder/config.json",
        &config("text_encoder/config.json"),
    )
    .expect("config");
    let weights = component("text_encoder");
    for (dtype, bound) in STORAGES {
        let p = WeightLoader {
            ctx: ctx(),
            scope: weights.source.root(),
            matrices: dtype,
        };
        let model = CLIPTextModel::load(&cfg, &p).expect("load");
        for i in 0..4 {
            let ids = token_ids(i);
            let ids_gpu = ctx().upload_u32(&ids, &[1, 77]).expect("upload");
            let got = run(|b| model.forward(b, &ids_gpu, &ids, TextOutput::Last));
            let err = max_abs_diff(&got, &reference(&format!("text_hidden_{i}")));
            println!("text_hidden_{i} {dtype:?}: max abs error {err:e}");
            assert!(
                err <= bound,
                "text_hidden_{i} {dtype:?}: {err:e} > {bound:e}"
            );
        }
    }
}

#[test]
fn unet_matches_diffusers_at_t500() {
    let cfg = UNet2DConditionConfig::from_json("unet/config.json", &config("unet/config.json"))
        .expect("config");
    let weights = component("unet");
    for (dtype, bound) in STORAGES {
        let p = WeightLoader {
            ctx: ctx(),
            scope: weights.source.root(),
            matrices: dtype,
        };
        let model = UNet2DConditionModel::load(&cfg, &p).expect("load");
        let sample = ctx()
            .upload_f32(&reference("init_latents"), &[1, 4, 8, 8])
            .expect("upload");
        let t = ctx().upload_f32(&[500.0], &[1]).expect("upload");
        let context = ctx()
            .upload_f32(&reference("text_hidden_1"), &[1, 77, 64])
            .expect("upload");
        let got = run(|b| {
            let text = model.project_context(b, &context)?;
            model.forward(b, &sample, &t, &text, &Default::default())
        });
        let err = max_abs_diff(&got, &reference("unet_t500"));
        println!("unet_t500 {dtype:?}: max abs error {err:e}");
        assert!(err <= bound, "unet_t500 {dtype:?}: {err:e} > {bound:e}");
    }
    let unused = weights.source.unused();
    assert!(unused.is_empty(), "UNet weights never read: {unused:?}");
}

#[test]
fn vae_decoder_matches_diffusers() {
    let cfg = AutoencoderKLConfig::from_json("vae/config.json", &config("vae/config.json"))
        .expect("config");
    let weights = component("vae");
    for (dtype, bound) in STORAGES {
        let p = WeightLoader {
            ctx: ctx(),
            scope: weights.source.root(),
            matrices: dtype,
        };
        let model = VaeDecoder::load(&cfg, &p).expect("load");
        let latents: Vec<f32> = reference("init_latents")
            .iter()
            .map(|v| v / cfg.scaling_factor as f32)
            .collect();
        let z = ctx().upload_f32(&latents, &[1, 4, 8, 8]).expect("upload");
        let got = run(|b| model.forward(b, &z));
        let err = max_abs_diff(&got, &reference("vae_decode"));
        println!("vae_decode {dtype:?}: max abs error {err:e}");
        assert!(err <= bound, "vae_decode {dtype:?}: {err:e} > {bound:e}");
    }
}

#[test]
fn vae_encoder_matches_diffusers() {
    let cfg = AutoencoderKLConfig::from_json("vae/config.json", &config("vae/config.json"))
        .expect("config");
    let weights = component("vae");
    for (dtype, bound) in STORAGES {
        let p = WeightLoader {
            ctx: ctx(),
            scope: weights.source.root(),
            matrices: dtype,
        };
        let model = VaeEncoder::load(&cfg, &p).expect("load");
        let image = ctx()
            .upload_f32(&reference("vae_encode_input"), &[1, 3, 64, 64])
            .expect("upload");
        let moments = run(|b| model.forward(b, &image));
        assert_moments(&format!("vae_encode {dtype:?}"), &moments, bound);
    }
}

/// The encoder's moments against diffusers' mean and (clamped) log-variance.
fn assert_moments(label: &str, moments: &[f32], bound: f32) {
    let (mean, logvar) = moments.split_at(moments.len() / 2);
    let logvar: Vec<f32> = logvar.iter().map(|v| v.clamp(-30.0, 20.0)).collect();
    let err_mean = max_abs_diff(mean, &reference("vae_encode_mean"));
    let err_logvar = max_abs_diff(&logvar, &reference("vae_encode_logvar"));
    println!("{label}: mean {err_mean:e}, logvar {err_logvar:e}");
    assert!(
        err_mean <= bound && err_logvar <= bound,
        "{label}: {err_mean:e}, {err_logvar:e} > {bound:e}"
    );
}

/// A context that splits tensors as if bindings held at most `budget` bytes.
fn chunking_ctx(budget: u64) -> GpuContext {
    let mut options = ContextOptions::for_tests().expect("valid environment");
    options.chunk_budget = Some(budget);
    pollster::block_on(GpuContext::new(options)).expect("a GPU adapter on the expected backend")
}

/// With a 256 KiB chunk budget every up-block tensor of the decoder is split into channel
/// chunks of whole groups (16 of 64 channels at 64x64), as SD 1.5 at 512x512 is at 128 MiB;
/// the result must still be diffusers' decode.
#[test]
fn vae_decoder_in_channel_chunks_matches_diffusers() {
    with_chunked_vae(256 << 10, |ctx, cfg, p| {
        let model = VaeDecoder::load(cfg, p).expect("load");
        let latents: Vec<f32> = reference("init_latents")
            .iter()
            .map(|v| v / cfg.scaling_factor as f32)
            .collect();
        let z = ctx.upload_f32(&latents, &[1, 4, 8, 8]).expect("upload");
        // Unsplit, the decoder issues what the cost model counts.
        let unchunked: usize = sd_models::cost::vae_decoder_cost(cfg, (8, 8))
            .expect("cost")
            .iter()
            .map(|op| op.dispatches)
            .sum();
        let mut batch = ctx.batch();
        let out = model.forward(&mut batch, &z).expect("record");
        assert!(
            batch.len() > unchunked,
            "chunking multiplies the dispatches: {} vs {unchunked}",
            batch.len()
        );
        pollster::block_on(batch.submit()).expect("submit");
        let got = pollster::block_on(ctx.read_f32(&out)).expect("read back");
        let err = max_abs_diff(&got, &reference("vae_decode"));
        println!("vae_decode in chunks: max abs error {err:e}");
        assert!(err <= 1e-4, "vae_decode in chunks: {err:e}");
    });
}

/// Runs `f` with the digits VAE's config and f32 weights on a context that splits tensors as
/// if bindings held at most `budget` bytes.
fn with_chunked_vae(
    budget: u64,
    f: impl FnOnce(&GpuContext, &AutoencoderKLConfig, &WeightLoader<'_>),
) {
    let ctx = &chunking_ctx(budget);
    let cfg = AutoencoderKLConfig::from_json("vae/config.json", &config("vae/config.json"))
        .expect("config");
    let weights = component("vae");
    let p = WeightLoader {
        ctx,
        scope: weights.source.root(),
        matrices: DType::F32,
    };
    f(ctx, &cfg, &p);
}

/// With a 256 KiB chunk budget the encoder's full-resolution tensors (64 channels at 64x64, 1
/// MiB) are split into channel chunks as the decoder's are, so img2img runs at every size the
/// planner accepts; the moments must still be diffusers' encode.
#[test]
fn vae_encoder_in_channel_chunks_matches_diffusers() {
    with_chunked_vae(256 << 10, |ctx, cfg, p| {
        let model = VaeEncoder::load(cfg, p).expect("load");
        let image = ctx
            .upload_f32(&reference("vae_encode_input"), &[1, 3, 64, 64])
            .expect("upload");
        let mut batch = ctx.batch();
        let out = model.forward(&mut batch, &image).expect("record");
        // The same encoder unchunked records fewer commands: the split really happened.
        let unchunked = {
            let shared: &GpuContext = sd_test_support::gpu_context();
            let p = WeightLoader {
                ctx: shared,
                ..p.clone()
            };
            let whole = VaeEncoder::load(cfg, &p).expect("load");
            let image = shared
                .upload_f32(&reference("vae_encode_input"), &[1, 3, 64, 64])
                .expect("upload");
            let mut batch = shared.batch();
            whole.forward(&mut batch, &image).expect("record");
            batch.len()
        };
        assert!(
            batch.len() > unchunked,
            "chunking multiplies the dispatches: {} vs {unchunked}",
            batch.len()
        );
        pollster::block_on(batch.submit()).expect("submit");
        let moments = pollster::block_on(ctx.read_f32(&out)).expect("read back");
        assert_moments("vae_encode in chunks", &moments, 1e-4);
    });
}

/// With a 64 KiB budget the text encoder's MLP hidden states (77 tokens x 256 x 4 bytes) go
/// through in row chunks, `fc1`, the activation and `fc2` with its fused residual piece by
/// piece, while its packed q, k and v (77 x 192 x 4 bytes) stay whole; the result must still be
/// transformers' hidden states. (The UNet's fixture-sized tensors can no longer be split this
/// way: its attentions' packed operands would split before its feed-forward does.)
#[test]
fn text_encoder_with_row_chunked_mlp_matches_transformers() {
    let chunking = &chunking_ctx(64 << 10);
    let cfg = CLIPTextConfig::from_json(
        "text_encoder/config.json",
        &config("text_encoder/config.json"),
    )
    .expect("config");
    let weights = component("text_encoder");
    let p = WeightLoader {
        ctx: chunking,
        scope: weights.source.root(),
        matrices: DType::F32,
    };
    let model = CLIPTextModel::load(&cfg, &p).expect("load");
    let ids = token_ids(1);
    let ids_gpu = chunking.upload_u32(&ids, &[1, 77]).expect("upload");
    let mut batch = chunking.batch();
    let out = model
        .forward(&mut batch, &ids_gpu, &ids, TextOutput::Last)
        .expect("record");
    let chunked = batch.len();
    pollster::block_on(batch.submit()).expect("submit");
    let got = pollster::block_on(chunking.read_f32(&out)).expect("read back");
    let mut whole = ctx().batch();
    let unchunked = CLIPTextModel::load(
        &cfg,
        &WeightLoader {
            ctx: ctx(),
            scope: weights.source.root(),
            matrices: DType::F32,
        },
    )
    .expect("load")
    .forward(
        &mut whole,
        &ctx().upload_u32(&ids, &[1, 77]).expect("upload"),
        &ids,
        TextOutput::Last,
    )
    .map(|_| whole.len())
    .expect("record");
    assert!(
        chunked > unchunked,
        "the MLP goes through in pieces: {chunked} vs {unchunked} commands"
    );
    let err = max_abs_diff(&got, &reference("text_hidden_1"));
    println!("text_hidden_1 with a row-chunked MLP: max abs error {err:e}");
    assert!(err <= 1e-4, "text_hidden_1 chunked: {err:e}");
}
