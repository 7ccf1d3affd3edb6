//! Whole text-to-image runs on the WGSL path against diffusers (`refs.safetensors`): 20 steps,
//! guidance 5, 64x64, from `init_latents`, for Euler, DDIM and DPM++ 2M, f32 weights; and from
//! `more_refs.safetensors`, Euler without classifier-free guidance (`euler_nocfg`, guidance
//! 1.0), step by step. The CPU backend replays these and the rest of the recorded runs (every
//! prompt, the negative prompt) in `crates/cpu/tests/parity.rs`: lavapipe takes about 30 s a run.

mod common;

use std::sync::{Arc, OnceLock};

use sd_core::params::GenerationParams;
use sd_core::sampler::SamplerKind;
use sd_kernels::{ContextOptions, DType, GpuContext, WorkCount};
use sd_models::{GpuNetworks, Inputs, ModelSource, StableDiffusion};

use common::recorded::{self, PROMPTS};
use common::{fixtures, max_abs_diff, reference};

/// The digits model, shared by every test of this file; the harness runs them on parallel
/// threads, which `concurrent_generations_agree_with_serial_ones` shows is safe.
fn model() -> &'static StableDiffusion {
    static MODEL: OnceLock<StableDiffusion> = OnceLock::new();
    MODEL.get_or_init(|| {
        let source = ModelSource::folder(fixtures().join("tiny-sd-digits"));
        StableDiffusion::load(common::context(), &source, DType::F32)
            .expect("load the digits model")
    })
}

/// diffusers' text-to-image runs for Euler, DDIM and DPM++ 2M, prompt 1 (every step, the final
/// latents and the image). The samplers are host code shared with the CPU backend, whose test
/// (`crates/cpu/tests/parity.rs`) replays all three prompts; the WGSL text encoder is checked
/// on every prompt in `parity.rs`.
#[test]
fn text_to_image_runs_match_diffusers_for_three_samplers() {
    for sampler in ["euler", "ddim", "dpmpp_2m"] {
        recorded::text_to_image(model(), "gpu", sampler, 1);
    }
}

/// Guidance 1.0: diffusers runs no unconditional pass (batch 1, the prediction used as is),
/// every step (see [`recorded::euler_steps`]). The negative-prompt run, whose difference is on
/// the host (which hidden states form the unconditional half), is replayed on the CPU backend.
#[test]
fn euler_nocfg() {
    recorded::euler_steps(model(), "euler_nocfg", PROMPTS[0], "", 1.0);
}

/// Two generations at once on one model (one `GpuContext`) must give what each gives alone:
/// the model is `Sync`, so a server may share it between requests. (Before batches took the
/// context's recording lock, a pooled buffer freed while one thread recorded was handed to the
/// other thread's batch, which could be submitted first and was then overwritten.)
#[test]
fn concurrent_generations_agree_with_serial_ones() {
    let options = ContextOptions::for_tests().expect("valid environment");
    let ctx = Arc::new(pollster::block_on(GpuContext::new(options)).expect("a GPU adapter"));
    let source = ModelSource::folder(fixtures().join("tiny-sd-digits"));
    let model = StableDiffusion::load(ctx, &source, DType::F32).expect("load the digits model");
    let init = reference("init_latents");
    let requests: Vec<GenerationParams> = [(0, 5.0), (1, 1.0)]
        .into_iter()
        .map(|(prompt, guidance_scale)| GenerationParams {
            prompt: PROMPTS[prompt].to_string(),
            steps: 3,
            guidance_scale,
            sampler: SamplerKind::EULER,
            width: 64,
            height: 64,
            ..GenerationParams::default()
        })
        .collect();
    let run = |params: &GenerationParams| {
        pollster::block_on(model.generate(
            params,
            &Inputs {
                initial_latents: Some(&init),
                ..Inputs::default()
            },
            &mut |_| {},
            None,
        ))
        .expect("generate")
        .latents
        .remove(0)
    };
    let alone: Vec<Vec<f32>> = requests.iter().map(run).collect();
    let together: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|params| s.spawn(move || run(params)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        let err = max_abs_diff(t, a);
        println!("request {i}: concurrent vs alone max abs difference {err:e}");
        assert!(
            err <= 1e-6,
            "request {i}: concurrent run differs by {err:e}"
        );
    }
}

/// The digits model on `ctx` with the denoising loop on the GPU or on the host.
fn digits_with_loop(ctx: Arc<GpuContext>, device_loop: bool) -> StableDiffusion {
    let source = ModelSource::folder(fixtures().join("tiny-sd-digits"));
    StableDiffusion::load_on(&source, |files| {
        let networks = GpuNetworks::load(ctx, &source, files.configs(), DType::F32, &mut |_| {})?;
        Ok(Box::new(networks.with_device_loop(device_loop)))
    })
    .expect("load the digits model")
}

/// The denoising loop on the GPU (latents, guidance and the samplers' steps there, previews read
/// back without waiting) against the loop on the host (the prediction read back every step),
/// for every sampler: the same latents after every step, delivered in order, and at the end.
#[test]
fn the_gpu_loop_agrees_with_the_host_loop_for_every_sampler() {
    let host = digits_with_loop(common::context(), false);
    let init = reference("init_latents");
    for kind in SamplerKind::ALL {
        let params = GenerationParams {
            prompt: PROMPTS[0].to_string(),
            steps: 3,
            guidance_scale: 5.0,
            sampler: kind,
            width: 64,
            height: 64,
            seed: 3,
            ..GenerationParams::default()
        };
        let inputs = Inputs {
            initial_latents: Some(&init),
            ..Inputs::default()
        };
        let (gpu, gpu_steps) = common::run(model(), &params, &inputs);
        let (cpu, cpu_steps) = common::run(&host, &params, &inputs);
        assert_eq!(gpu_steps.len(), cpu_steps.len(), "{kind}: steps seen");
        for (i, (g, c)) in gpu_steps.iter().zip(&cpu_steps).enumerate() {
            let err = max_abs_diff(g, c);
            assert!(err <= 1e-4, "{kind}: step {i} differs by {err:e}");
        }
        let err = max_abs_diff(&gpu.latents[0], &cpu.latents[0]);
        println!("{kind}: GPU loop vs host loop, final latents max abs difference {err:e}");
        assert!(err <= 1e-4, "{kind}: final latents differ by {err:e}");
    }
}

/// What the GPU loop costs per step, counted by the context: one submission, no readback (no
/// previews asked for), and only the step programs' bind groups (the UNet call is recorded
/// once and replayed); the host loop reads the prediction back and builds every bind group
/// every step. Per step: the difference between a 5-step and a 2-step run, divided by 3.
#[test]
fn the_gpu_loop_reads_nothing_back_and_builds_the_unet_once() {
    // A context of its own: the shared one counts the other tests' work too.
    let options = ContextOptions::for_tests().expect("valid environment");
    let ctx = Arc::new(pollster::block_on(GpuContext::new(options)).expect("a GPU adapter"));
    let per_step = |device_loop: bool| {
        let model = digits_with_loop(ctx.clone(), device_loop);
        let work = |steps: usize| {
            let params = GenerationParams {
                prompt: PROMPTS[1].to_string(),
                steps,
                guidance_scale: 5.0,
                sampler: SamplerKind::EULER_A,
                width: 64,
                height: 64,
                ..GenerationParams::default()
            };
            let before = ctx.work();
            pollster::block_on(model.generate(&params, &Inputs::default(), &mut |_| {}, None))
                .expect("generate");
            ctx.work() - before
        };
        let (short, long) = (work(2), work(5));
        let per = |f: fn(&WorkCount) -> u64| (f(&long) - f(&short)) as f64 / 3.0;
        [
            per(|w| w.submissions),
            per(|w| w.readbacks),
            per(|w| w.bind_groups),
            per(|w| w.dispatches),
        ]
    };
    let [submissions, readbacks, bind_groups, dispatches] = per_step(true);
    let [
        host_submissions,
        host_readbacks,
        host_bind_groups,
        host_dispatches,
    ] = per_step(false);
    println!(
        "per step, GPU loop: {submissions} submissions, {readbacks} readbacks, {bind_groups} \
         bind groups, {dispatches} dispatches; host loop: {host_submissions}, {host_readbacks}, \
         {host_bind_groups}, {host_dispatches}"
    );
    assert_eq!((submissions, readbacks), (1.0, 0.0));
    assert_eq!((host_submissions, host_readbacks), (1.0, 1.0));
    // The input scaling and the sampler step of the one image.
    assert_eq!(bind_groups, 2.0);
    assert_eq!(host_bind_groups, host_dispatches);
    assert!(
        host_dispatches > 100.0,
        "{host_dispatches} dispatches per UNet call"
    );
    assert_eq!(dispatches, host_dispatches + 2.0);
}

/// Sizes other than the model's native 64x64 work: 96x64 (12x8 latents, odd multiples through
/// the UNet's down and up blocks) gives an image of that size with real content.
#[test]
fn a_non_native_size_generates_an_image_of_that_size() {
    let params = GenerationParams {
        prompt: PROMPTS[0].to_string(),
        steps: 4,
        guidance_scale: 5.0,
        width: 96,
        height: 64,
        seed: 11,
        ..GenerationParams::default()
    };
    let out = pollster::block_on(model().generate(&params, &Inputs::default(), &mut |_| {}, None))
        .expect("generate");
    assert_eq!((out.width, out.height), (96, 64));
    assert_eq!(out.images[0].len(), 96 * 64 * 3);
    assert_eq!(out.latents[0].len(), 4 * 8 * 12);
    let pixels = &out.pixels[0];
    assert!(pixels.iter().all(|v| v.is_finite()));
    let mean = pixels.iter().sum::<f32>() / pixels.len() as f32;
    let spread = pixels.iter().map(|v| (v - mean).abs()).sum::<f32>() / pixels.len() as f32;
    assert!(
        spread > 0.05,
        "the image is flat: mean abs deviation {spread}"
    );
}
