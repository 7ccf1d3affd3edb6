//! Property tests (proptest) of what takes outside input: the shared request parser and the
//! sampler schedules built from scheduler configs.
//!
//! - Any JSON object is either refused with an error naming one of its keys (or the request
//!   as a whole), or read into parameters that pass validation; a valid request reads back
//!   exactly what it said.
//! - Any scheduler config of the shapes diffusers ships, with any step count, builds each
//!   sampler or refuses with a typed error; a built sampler's timesteps lie within the trained
//!   range, its sigmas are finite, and every step of a run with a bounded model output gives
//!   finite latents of the right length.

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use sd_core::config::SchedulerConfig;
use sd_core::params::ModelDefaults;
use sd_core::request::{Dialect, parse_params, request_object};
use sd_core::sampler::SamplerKind;
use serde_json::{Map, Value, json};

/// `cases` cases from a fixed seed: CI runs the same cases every time (a new random case that
/// fails belongs in a session's notes and a regression test, not in a CI run's luck).
fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x5d_2026),
        ..ProptestConfig::default()
    }
}

fn defaults() -> ModelDefaults {
    ModelDefaults {
        width: 512,
        height: 512,
        steps: 20,
        guidance_scale: 7.5,
        sampler: SamplerKind::ALL[0],
    }
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        (0u32..4000).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        prop_oneof![Just("euler_a"), Just("ddim"), Just("nope"), Just("")].prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The request's keys, and a few it does not know.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("prompt"),
        Just("negativePrompt"),
        Just("steps"),
        Just("cfgScale"),
        Just("seed"),
        Just("sampler"),
        Just("width"),
        Just("height"),
        Just("count"),
        Just("strength"),
        Just("format"),
        Just("bogus"),
    ]
    .prop_map(str::to_owned)
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn any_request_is_refused_naming_a_key_or_read_valid(
        entries in prop::collection::btree_map(key(), any_json(), 0..8)
    ) {
        let obj: Map<String, Value> = entries.into_iter().collect();
        let body = Value::Object(obj.clone()).to_string();
        let dialect = Dialect::HTTP;
        let read = request_object(&body, &dialect).and_then(|obj| {
            parse_params(&obj, &dialect, &defaults(), || 42)
        });
        match read {
            Err(e) => prop_assert!(
                e.field == "request" || obj.contains_key(&e.field)
                    || (e.field == "prompt" && e.message == "is required"),
                "the error names {} which the request lacks: {e}", e.field
            ),
            Ok(params) => {
                prop_assert!(params.validate().is_ok(), "{params:?}");
                prop_assert!((1..=150).contains(&params.steps), "{params:?}");
                prop_assert!(params.width % 8 == 0 && params.height % 8 == 0, "{params:?}");
                prop_assert!(params.guidance_scale.is_finite(), "{params:?}");
                prop_assert!((0.0..=1.0).contains(&params.strength), "{params:?}");
            }
        }
    }

    #[test]
    fn any_text_is_refused_or_read(body in "\\PC{0,64}") {
        let _ = request_object(&body, &Dialect::HTTP)
            .and_then(|obj| parse_params(&obj, &Dialect::HTTP, &defaults(), || 1));
    }

    #[test]
    fn a_valid_request_reads_back_what_it_said(
        steps in 1usize..=150,
        seed in 0u64..(1 << 53),
        side in (8u32..=128).prop_map(|n| n * 8),
        count in 1u32..=4,
        strength in 0.0f32..=1.0,
        guidance in 0.0f32..30.0,
        sampler in prop::sample::select(SamplerKind::ALL.to_vec()),
        prompt in "\\PC{0,40}",
    ) {
        let body = json!({
            "prompt": prompt, "steps": steps, "seed": seed, "width": side, "height": side,
            "count": count, "strength": strength, "cfgScale": guidance, "sampler": sampler.name(),
        });
        let obj = request_object(&body.to_string(), &Dialect::HTTP).expect("an object");
        let params = parse_params(&obj, &Dialect::HTTP, &defaults(), || 0).expect("valid");
        prop_assert_eq!(&params.prompt, &prompt);
        prop_assert_eq!(params.steps, steps);
        prop_assert_eq!(params.seed, seed);
        prop_assert_eq!((params.width, params.height, params.count), (side, side, count));
        prop_assert_eq!(params.strength, strength);
        prop_assert_eq!(params.guidance_scale, guidance);
        prop_assert_eq!(params.sampler, sampler);
    }
}

/// A scheduler config of the shapes diffusers ships (the ranges SD checkpoints use, and
/// beyond), as JSON.
fn scheduler_config() -> impl Strategy<Value = (Value, bool)> {
    (
        prop::sample::select(vec![
            "PNDMScheduler",
            "EulerDiscreteScheduler",
            "DDIMScheduler",
            "LCMScheduler",
        ]),
        // Shipped configs train on 1000 steps. Far fewer (9 train steps sampled in 9) puts
        // DPM++ 2M's last steps at sigmas so small that its update overflows: outside the
        // shapes diffusers ships, and left as found (see the notes of stop 29).
        prop_oneof![Just(1000usize), 100usize..=2000],
        1e-5f64..0.01,
        0.005f64..0.04,
        prop::sample::select(vec!["linear", "scaled_linear", "squaredcos_cap_v2"]),
        prop::sample::select(vec!["epsilon", "v_prediction", "sample"]),
        prop::option::of(prop::sample::select(vec![
            "leading", "trailing", "linspace",
        ])),
        0usize..=2,
        any::<Option<bool>>(),
        any::<Option<bool>>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                class,
                train,
                start,
                end,
                schedule,
                prediction,
                spacing,
                offset,
                karras,
                zero_snr,
                alpha_one,
            )| {
                let config = json!({
                    "_class_name": class,
                    "num_train_timesteps": train,
                    "beta_start": start,
                    "beta_end": end.max(start),
                    "beta_schedule": schedule,
                    "prediction_type": prediction,
                    "timestep_spacing": spacing,
                    "steps_offset": offset,
                    "use_karras_sigmas": karras,
                    "rescale_betas_zero_snr": zero_snr,
                    "set_alpha_to_one": alpha_one,
                    "skip_prk_steps": true,
                    "original_inference_steps": 50,
                });
                // Zero terminal SNR makes the last noise level infinite for the samplers that
                // divide by it; finiteness is checked without it.
                (config, zero_snr != Some(true))
            },
        )
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn schedules_stay_in_range_and_steps_stay_finite(
        (config, finite) in scheduler_config(),
        steps in 1usize..=60,
        seed in any::<u64>(),
    ) {
        let config = SchedulerConfig::from_json("scheduler_config.json", &config.to_string())
            .expect("a config of the documented shape");
        let train = config.num_train_timesteps as f64;
        for kind in SamplerKind::ALL {
            let Ok(mut sampler) = kind.build(&config, steps) else {
                continue; // a typed refusal (e.g. `sample` prediction with Euler ancestral)
            };
            let timesteps = sampler.timesteps().to_vec();
            prop_assert!(!timesteps.is_empty(), "{kind:?}");
            for t in &timesteps {
                prop_assert!(t.is_finite() && *t >= 0.0 && *t < train, "{kind:?}: timestep {t}");
            }
            if let Some(sigmas) = sampler.sigmas() {
                prop_assert!(
                    sigmas.iter().all(|s| *s >= 0.0 && (s.is_finite() || !finite)),
                    "{kind:?}: sigmas {sigmas:?}"
                );
            }
            let mut state = seed | 1;
            let mut noise = move |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state % 2000) as f32 / 1000.0 - 1.0
                    })
                    .collect()
            };
            let mut sample = noise(16);
            for step in 0..timesteps.len() {
                // A bounded model output (whatever the prediction type), as a trained network's.
                let output = noise(16);
                let next = sampler.step(&output, step, &sample, &mut noise);
                let next = match next {
                    Ok(next) => next,
                    Err(e) => return Err(TestCaseError::fail(format!("{kind:?} step {step}: {e}"))),
                };
                prop_assert_eq!(next.len(), sample.len());
                if finite {
                    prop_assert!(
                        next.iter().all(|x| x.is_finite()),
                        "{kind:?} step {step} of {}: {next:?}", timesteps.len()
                    );
                }
                sample = next;
            }
        }
    }
}
