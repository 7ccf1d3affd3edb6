//! The other architectures against diffusers' own numbers: the tiny random-weight models of
//! `shared/fixtures/tiny-arch/` (SD 2 v-prediction, SD-Turbo, SDXL, LCM; described in the
//! fixtures README and each `<name>-refs.json`). With f32 weights: text encoder(s), the UNet at
//! t=500 and the VAE decode within 1e-4, the recorded run within 1e-3 at every step.

mod common;

use sd_core::conditioning::{guidance_scale_embedding, sdxl_time_ids};
use sd_core::params::GenerationParams;
use sd_core::rng::NoiseRng;
use sd_core::sampler::SamplerKind;
use sd_kernels::DType;
use sd_models::{Inputs, ModelSource, StableDiffusion, UNetInputs};
use sd_weights::SafetensorsFile;

use common::{assert_run_matches, context, fixtures, max_abs_diff, run, tensor};

const PROMPT: &str = "a red digit seven on a blue background";
const COMPONENT_BOUND: f32 = 1e-4;

/// A tiny-arch model with f32 weights and its references.
fn load(name: &str) -> (StableDiffusion, SafetensorsFile) {
    let dir = fixtures().join("tiny-arch");
    let source = ModelSource::folder(dir.join(name));
    let model = StableDiffusion::load(context(), &source, DType::F32)
        .unwrap_or_else(|e| panic!("load {name}: {e}"));
    let refs = SafetensorsFile::read(&dir.join(format!("{name}-refs.safetensors")))
        .unwrap_or_else(|e| panic!("{name} refs: {e}"));
    (model, refs)
}

fn check(label: &str, got: &[f32], want: &[f32], bound: f32) {
    let err = max_abs_diff(got, want);
    println!("{label}: max abs error {err:e}");
    assert!(err <= bound, "{label}: {err:e} > {bound:e}");
}

/// The UNet at t=500 on the recorded latents with `context` `[1, 77, D]` and the extra
/// conditioning in `cond` (its context left empty).
fn unet_t500(
    model: &StableDiffusion,
    refs: &SafetensorsFile,
    context_rows: &[f32],
    cond: UNetInputs,
) -> Vec<f32> {
    let dim = context_rows.len() / 77;
    let inputs = UNetInputs {
        context: context_rows.to_vec(),
        context_shape: [1, 77, dim],
        ..cond
    };
    let latents = tensor(refs, "init_latents");
    pollster::block_on(model.predict_noise(&latents, [1, 4, 8, 8], 500.0, &inputs)).expect("unet")
}

/// The VAE decode of the recorded latents, as diffusers' `[-1, 1]` NCHW output mapped to the
/// pipeline's NHWC `[0, 1]`.
fn check_vae(name: &str, model: &StableDiffusion, refs: &SafetensorsFile) {
    let got =
        pollster::block_on(model.decode(&tensor(refs, "init_latents"), 8, 8)).expect("decode");
    let nchw = tensor(refs, "vae_decode");
    let plane = 64 * 64;
    let want: Vec<f32> = (0..3 * plane)
        .map(|i| (nchw[(i % 3) * plane + i / 3] / 2.0 + 0.5).clamp(0.0, 1.0))
        .collect();
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{name}: NaN in the decode"
    );
    check(&format!("{name} vae_decode"), &got, &want, COMPONENT_BOUND);
}

/// The recorded run through the pipeline from the recorded latents.
fn check_run(
    name: &str,
    model: &StableDiffusion,
    refs: &SafetensorsFile,
    params: GenerationParams,
) {
    let latents = tensor(refs, "init_latents");
    let inputs = Inputs {
        initial_latents: Some(&latents),
        ..Inputs::default()
    };
    let (out, steps) = run(model, &params, &inputs);
    let trajectory = tensor(refs, "run_trajectory");
    let want: Vec<&[f32]> = trajectory.chunks(4 * 8 * 8).collect();
    assert_eq!(steps.len(), want.len(), "{name}: steps run");
    let last = want.last().copied().expect("a step");
    assert_run_matches(name, &out, &steps, &want, last, &tensor(refs, "run_image"));
}

fn params(sampler: SamplerKind, steps: usize, guidance_scale: f32) -> GenerationParams {
    GenerationParams {
        prompt: PROMPT.into(),
        negative_prompt: String::new(),
        steps,
        guidance_scale,
        sampler,
        width: 64,
        height: 64,
        ..GenerationParams::default()
    }
}

/// SD 2.x and SD-Turbo share the UNet shape (linear projections, per-block heads,
/// `upcast_attention`) and the OpenCLIP-style text encoder (`gelu`, `text_model.` key prefix).
fn check_sd2_shaped(name: &str, run_params: GenerationParams) {
    let (model, refs) = load(name);
    let (embeddings, _) = pollster::block_on(model.encode_prompts(&["", PROMPT])).expect("encode");
    let hidden = embeddings.hidden;
    let (negative, positive) = hidden.split_at(hidden.len() / 2);
    check(
        &format!("{name} text_hidden_0"),
        negative,
        &tensor(&refs, "text_hidden_0"),
        COMPONENT_BOUND,
    );
    check(
        &format!("{name} text_hidden_1"),
        positive,
        &tensor(&refs, "text_hidden_1"),
        COMPONENT_BOUND,
    );
    let got = unet_t500(
        &model,
        &refs,
        &tensor(&refs, "text_hidden_1"),
        UNetInputs::default(),
    );
    check(
        &format!("{name} unet_t500"),
        &got,
        &tensor(&refs, "unet_t500"),
        COMPONENT_BOUND,
    );
    check_vae(name, &model, &refs);
    check_run(name, &model, &refs, run_params);
}

#[test]
fn sd2_v_prediction_matches_diffusers() {
    check_sd2_shaped("sd2-v", params(SamplerKind::DDIM, 10, 5.0));
}

#[test]
fn sd_turbo_one_step_without_guidance_matches_diffusers() {
    check_sd2_shaped("turbo", params(SamplerKind::EULER, 1, 0.0));
}

#[test]
fn sdxl_matches_diffusers() {
    let (model, refs) = load("sdxl");
    let (embeddings, _) = pollster::block_on(model.encode_prompts(&["", PROMPT])).expect("encode");
    let hidden = embeddings.hidden;
    let pooled = embeddings.pooled.expect("SDXL has pooled embeddings");
    let (negative, positive) = hidden.split_at(hidden.len() / 2);
    let (negative_pooled, positive_pooled) = pooled.split_at(pooled.len() / 2);
    // `force_zeros_for_empty_prompt`: the empty negative prompt is exactly zeros.
    check(
        "sdxl negative_prompt_embeds",
        negative,
        &tensor(&refs, "negative_prompt_embeds"),
        0.0,
    );
    check(
        "sdxl negative_pooled_prompt_embeds",
        negative_pooled,
        &tensor(&refs, "negative_pooled_prompt_embeds"),
        0.0,
    );
    check(
        "sdxl prompt_embeds",
        positive,
        &tensor(&refs, "prompt_embeds"),
        COMPONENT_BOUND,
    );
    check(
        "sdxl pooled_prompt_embeds",
        positive_pooled,
        &tensor(&refs, "pooled_prompt_embeds"),
        COMPONENT_BOUND,
    );
    check(
        "sdxl add_time_ids",
        &sdxl_time_ids(64, 64),
        &tensor(&refs, "add_time_ids"),
        0.0,
    );

    let cond = UNetInputs {
        text_embeds: Some(tensor(&refs, "pooled_prompt_embeds")),
        time_ids: Some(tensor(&refs, "add_time_ids")),
        ..UNetInputs::default()
    };
    let got = unet_t500(&model, &refs, &tensor(&refs, "prompt_embeds"), cond);
    check(
        "sdxl unet_t500",
        &got,
        &tensor(&refs, "unet_t500"),
        COMPONENT_BOUND,
    );
    check_vae("sdxl", &model, &refs);
    check_run("sdxl", &model, &refs, params(SamplerKind::EULER, 10, 5.0));
}

/// LCM draws fresh noise at every step but the last, so the recorded run is replayed step by
/// step with diffusers' draws; the pipeline is then checked to do the same steps (its own
/// seeded draws replayed by hand).
#[test]
fn lcm_matches_diffusers() {
    let (model, refs) = load("lcm");
    // diffusers computes the sinusoids of w * 1000 = 7000 rad in float32, whose arguments are
    // only good to one float32 ulp at 7000 (4.9e-4 rad); ours are computed in f64.
    let w = guidance_scale_embedding(8.0 - 1.0, 32);
    check("lcm w_embedding", &w, &tensor(&refs, "w_embedding"), 5e-4);

    let (embeddings, _) = pollster::block_on(model.encode_prompts(&[PROMPT])).expect("encode");
    let context_rows = embeddings.hidden;
    let cond = UNetInputs {
        timestep_cond: Some(tensor(&refs, "w_embedding")),
        ..UNetInputs::default()
    };
    let got = unet_t500(&model, &refs, &context_rows, cond);
    check(
        "lcm unet_t500",
        &got,
        &tensor(&refs, "unet_t500"),
        COMPONENT_BOUND,
    );

    let lcm_params = params(SamplerKind::LCM, 4, 8.0);
    let recorded = tensor(&refs, "run_noise");
    let mut draws = recorded.chunks(4 * 8 * 8).map(<[f32]>::to_vec);
    let replayed = replay_lcm(
        &model,
        &lcm_params,
        &tensor(&refs, "init_latents"),
        &mut |_| draws.next().expect("a recorded noise draw"),
    );
    let trajectory = tensor(&refs, "run_trajectory");
    for (step, (got, want)) in replayed
        .iter()
        .zip(trajectory.chunks(4 * 8 * 8))
        .enumerate()
    {
        check(&format!("lcm step {step}"), got, want, 1e-3);
    }
    let image =
        pollster::block_on(model.decode(replayed.last().expect("steps"), 8, 8)).expect("decode");
    check(
        "lcm run_image",
        &image,
        &tensor(&refs, "run_image"),
        2.0 / 255.0,
    );

    // The pipeline: no CFG batch, guidance as the w embedding, seeded draws.
    let latents = tensor(&refs, "init_latents");
    let inputs = Inputs {
        initial_latents: Some(&latents),
        ..Inputs::default()
    };
    let (out, steps) = run(&model, &lcm_params, &inputs);
    let mut rng = NoiseRng::new(lcm_params.seed);
    let by_hand = replay_lcm(&model, &lcm_params, &latents, &mut |n| rng.normals(n));
    assert_eq!(steps.len(), 4);
    for (step, (got, want)) in steps.iter().zip(&by_hand).enumerate() {
        check(&format!("lcm pipeline step {step}"), got, want, 0.0);
    }
    assert_eq!(out.latents[0], by_hand[3]);
}

/// Runs the LCM sampler by hand from unit noise `latents` with `noise` for its draws; returns
/// the latents after every step.
fn replay_lcm(
    model: &StableDiffusion,
    params: &GenerationParams,
    latents: &[f32],
    noise: &mut dyn FnMut(usize) -> Vec<f32>,
) -> Vec<Vec<f32>> {
    let (embeddings, _) =
        pollster::block_on(model.encode_prompts(&[&params.prompt])).expect("encode");
    let w = guidance_scale_embedding(params.guidance_scale - 1.0, 32);
    let cond = UNetInputs {
        context: embeddings.hidden,
        context_shape: embeddings.shape,
        timestep_cond: Some(w),
        ..UNetInputs::default()
    };
    let mut sampler = params
        .sampler
        .build(model.scheduler_config(), params.steps)
        .expect("sampler");
    let sigma = sampler.init_noise_sigma() as f32;
    let mut x: Vec<f32> = latents.iter().map(|v| v * sigma).collect();
    let mut out = Vec::new();
    for step in 0..sampler.timesteps().len() {
        let mut scaled = x.clone();
        sampler.scale_model_input(&mut scaled, step).expect("scale");
        let t = sampler.timesteps()[step] as f32;
        let prediction =
            pollster::block_on(model.predict_noise(&scaled, [1, 4, 8, 8], t, &cond)).expect("unet");
        x = sampler.step(&prediction, step, &x, noise).expect("step");
        out.push(x.clone());
    }
    out
}
