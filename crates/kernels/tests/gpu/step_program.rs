//! The step interpreter against the host's: every sampler's programs, call by call with the
//! latents and kept buffers staying on the GPU, against `Sampler::step` on the host; the
//! inpainting blend; and malformed programs refused by name.

use sd_core::config::{PredictionType, SchedulerConfig};
use sd_core::sampler::program::{Expr, Input, NOISE, OUTPUT, SAMPLE, StepProgram};
use sd_core::sampler::{Bytecode, SamplerKind};
use sd_kernels::ops::{self, ModelOutput, StepCode, StepInputs};
use sd_kernels::reference::Tolerance;
use sd_kernels::{KernelError, Tensor};

use crate::common::*;

/// A few float32 roundings per step on latents up to ~15 (the starting sigma), compounded
/// over the calls of a short schedule.
const TOL: Tolerance = Tolerance {
    abs: 2e-5,
    rel: 2e-5,
};

fn config(prediction: PredictionType) -> SchedulerConfig {
    let prediction = match prediction {
        PredictionType::Epsilon => "epsilon",
        PredictionType::VPrediction => "v_prediction",
        PredictionType::Sample => "sample",
    };
    SchedulerConfig::from_json(
        "scheduler_config.json",
        &format!(
            r#"{{"_class_name": "PNDMScheduler", "num_train_timesteps": 1000,
            "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "{prediction}"}}"#
        ),
    )
    .expect("valid config")
}

fn code(bytecode: &Bytecode) -> StepCode<'_> {
    StepCode {
        instructions: bytecode.instructions(),
        constants: bytecode.constants(),
    }
}

/// The interpreter's limits are the compiler's.
#[test]
fn the_kernel_limits_are_the_compilers() {
    use sd_core::sampler::program as p;
    assert_eq!(ops::STEP_PROGRAM_MAX_INSTRUCTIONS, p::MAX_INSTRUCTIONS);
    assert_eq!(ops::STEP_PROGRAM_MAX_CONSTANTS, p::MAX_CONSTANTS);
    assert_eq!(ops::STEP_PROGRAM_REGISTERS as usize, p::MAX_REGISTERS);
    assert_eq!(ops::STEP_PROGRAM_MAX_KEPT as usize, p::MAX_KEPT);
}

#[test]
fn every_sampler_steps_on_the_gpu_as_on_the_host() {
    let ctx = native();
    let (len, guidance) = (4 * 5 * 7, 6.5_f32);
    let predictions = [
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ];
    let mut checked = 0;
    for (p, prediction) in predictions.into_iter().enumerate() {
        let config = config(prediction);
        for (s, kind) in SamplerKind::ALL.into_iter().enumerate() {
            // diffusers refuses `sample` prediction for some samplers; so do we.
            let (Ok(mut host), Ok(mut gpu)) = (kind.build(&config, 5), kind.build(&config, 5))
            else {
                assert_eq!(
                    prediction,
                    PredictionType::Sample,
                    "{kind} refused {prediction:?}"
                );
                continue;
            };
            let mut rng = rng(900 + (p * 100 + s) as u64);
            let sigma = host.init_noise_sigma() as f32;
            let mut x: Vec<f32> = random(&mut rng, len, 1.0)
                .iter()
                .map(|v| v * sigma)
                .collect();
            let mut xg = upload(ctx, &x, &[len]);
            let mut kept_g: Option<Tensor> = None;
            for step in 0..host.timesteps().len() {
                let label = format!("{kind} {prediction:?} call {step}");
                // [uncond; cond] rows, as a CFG batch of one image.
                let rows = random(&mut rng, 2 * len, 1.5);
                let noise = random(&mut rng, len, 1.0);
                let guided: Vec<f32> = rows[..len]
                    .iter()
                    .zip(&rows[len..])
                    .map(|(u, c)| u + guidance * (c - u))
                    .collect();
                x = host
                    .step(&guided, step, &x, &mut |n| noise[..n].to_vec())
                    .expect("host step");

                let bytecode = gpu
                    .program(step)
                    .expect("program")
                    .compile()
                    .expect("compile");
                let (rows_g, noise_g) =
                    (upload(ctx, &rows, &[2 * len]), upload(ctx, &noise, &[len]));
                let next = poisoned(ctx, &[len]);
                let kept_out =
                    (bytecode.keeps() > 0).then(|| poisoned(ctx, &[bytecode.keeps() * len]));
                let got = run(ctx, &next, |b| {
                    ops::step_program(
                        b,
                        code(&bytecode),
                        Some(ModelOutput {
                            prediction: &rows_g,
                            cond_offset: len,
                            guidance: Some((0, guidance)),
                        }),
                        StepInputs {
                            sample: &xg,
                            noise: Some(&noise_g),
                            kept: kept_g.as_ref(),
                            image: None,
                        },
                        &next,
                        kept_out.as_ref(),
                    )
                    .expect("record")
                });
                assert_close(&label, &got, &x, TOL);
                xg = next;
                kept_g = kept_out;
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} calls checked");
}

#[test]
fn the_inpainting_blend_runs_on_the_gpu_as_on_the_host() {
    let ctx = native();
    let (len, pixels) = (4 * 6 * 5, 6 * 5);
    let mut rng = rng(960);
    let x = random(&mut rng, len, 3.0);
    let image = random(&mut rng, len, 1.0);
    let start_noise = random(&mut rng, len, 1.0);
    let mask: Vec<f32> = random(&mut rng, pixels, 1.0)
        .iter()
        .map(|v| v.abs())
        .collect();
    let sampler = SamplerKind::DDIM
        .build(&config(PredictionType::Epsilon), 10)
        .expect("ddim");
    let known = sampler
        .schedule()
        .noising(3, Expr::Input(Input::Image), Expr::Input(Input::StartNoise))
        .expect("noising");
    let mask_expr = Expr::Input(Input::Mask);
    let program = StepProgram::next((1.0 - mask_expr.clone()) * known + mask_expr * SAMPLE);
    let bytecode = program.compile().expect("compile");
    let inputs = sd_core::sampler::HostInputs {
        sample: &x,
        image: &image,
        start_noise: &start_noise,
        mask: &mask,
        ..Default::default()
    };
    let want = bytecode.run(&inputs, &mut Vec::new()).expect("host");
    let packed: Vec<f32> = [&image[..], &start_noise, &mask].concat();
    let (xg, packed_g) = (
        upload(ctx, &x, &[len]),
        upload(ctx, &packed, &[packed.len()]),
    );
    let next = poisoned(ctx, &[len]);
    let got = run(ctx, &next, |b| {
        ops::step_program(
            b,
            code(&bytecode),
            None,
            StepInputs {
                sample: &xg,
                noise: None,
                kept: None,
                image: Some((&packed_g, pixels)),
            },
            &next,
            None,
        )
        .expect("record")
    });
    assert_close("blend", &got, &want, TOL);
}

#[test]
fn malformed_programs_and_missing_inputs_are_refused() {
    let ctx = native();
    let len = 12;
    let x = upload(ctx, &vec![1.0; len], &[len]);
    let next = poisoned(ctx, &[len]);
    let inputs = StepInputs {
        sample: &x,
        noise: None,
        kept: None,
        image: None,
    };
    let noisy = StepProgram::next(SAMPLE + NOISE * 0.5)
        .compile()
        .expect("compile");
    let guided = StepProgram::next(OUTPUT).compile().expect("compile");
    let in_place = StepProgram::next(SAMPLE * 2.0).compile().expect("compile");
    let one = [1.0_f32];
    let bad = |instructions: &'static [[u32; 4]]| StepCode {
        instructions,
        constants: &one,
    };
    let cases = [
        ("opcode", bad(&[[15, 0, 0, 0]]), &next, "opcode 15"),
        ("register", bad(&[[0, 16, 0, 0]]), &next, "register 16"),
        ("constant", bad(&[[7, 0, 2, 0]]), &next, "constant 2"),
        ("kept", bad(&[[3, 0, 5, 0]]), &next, "kept buffer 5"),
        ("noise", code(&noisy), &next, "noise"),
        ("output", code(&guided), &next, "prediction"),
        ("in place", code(&in_place), &x, "next is also an input"),
    ];
    for (what, program, out, says) in cases {
        let mut batch = ctx.batch();
        let err = ops::step_program(&mut batch, program, None, inputs, out, None).expect_err(what);
        assert!(
            matches!(&err, KernelError::Shape { .. }) && err.to_string().contains(says),
            "{what}: {err}"
        );
    }
}
