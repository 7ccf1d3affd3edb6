//! The samplers' rules where no diffusers reference tensor exists: the names (canonical,
//! AUTOMATIC1111's, aliases, unknown ones, Karras only with sigmas) and `order`; steps computed
//! by hand (v-prediction; DPM++ 2S ancestral and DPM++ 2M v2, which diffusers lacks); the
//! errors (out-of-range or out-of-order steps and calls, wrong lengths, unsupported
//! predictions, LCM's step limit); where the stochastic samplers draw noise; the config keys
//! that change the schedule (`use_karras_sigmas`, `rescale_betas_zero_snr`,
//! `squaredcos_cap_v2`, spacing defaults), the Karras schedules, `scale_model_input` and
//! `add_noise`.

use sd_core::config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use sd_core::sampler::{Algorithm, SamplerError, SamplerKind, SamplerOptions};
use sd_core::schedule::{self, ScheduleError};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// SD 1.5's scheduler config (as diffusers' `from_config` sees the PNDM config).
fn sd15(prediction: PredictionType) -> SchedulerConfig {
    SchedulerConfig {
        class_name: "PNDMScheduler".into(),
        num_train_timesteps: 1000,
        beta_start: 0.00085,
        beta_end: 0.012,
        beta_schedule: BetaSchedule::ScaledLinear,
        trained_betas: None,
        prediction_type: prediction,
        timestep_spacing: Some(TimestepSpacing::Leading),
        steps_offset: 1,
        clip_sample: Some(false),
        clip_sample_range: None,
        set_alpha_to_one: Some(false),
        skip_prk_steps: Some(true),
        use_karras_sigmas: None,
        rescale_betas_zero_snr: None,
        original_inference_steps: None,
        timestep_scaling: None,
    }
}

fn no_noise(_: usize) -> Vec<f32> {
    Vec::new()
}

fn close(got: &[f32], want: &[f64], tolerance: f64) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (f64::from(*g) - w).abs() <= tolerance * w.abs().max(1.0),
            "{g} vs {w}"
        );
    }
}

/// Every canonical name, with its A1111 name, its order and whether Karras is in it.
const NAMES: [(&str, &str, usize); 19] = [
    ("euler", "Euler", 1),
    ("euler_karras", "Euler Karras", 1),
    ("euler_a", "Euler a", 1),
    ("euler_a_karras", "Euler a Karras", 1),
    ("heun", "Heun", 2),
    ("heun_karras", "Heun Karras", 2),
    ("dpm2", "DPM2", 2),
    ("dpm2_karras", "DPM2 Karras", 2),
    ("dpm2_a", "DPM2 a", 2),
    ("dpm2_a_karras", "DPM2 a Karras", 2),
    ("dpm++2s_a", "DPM++ 2S a", 2),
    ("dpm++2s_a_karras", "DPM++ 2S a Karras", 2),
    ("dpm++2m", "DPM++ 2M", 1),
    ("dpm++2m_karras", "DPM++ 2M Karras", 1),
    ("dpm++2mv2", "DPM++ 2M v2", 1),
    ("dpm++2mv2_karras", "DPM++ 2M v2 Karras", 1),
    ("lcm", "LCM", 1),
    ("ddim", "DDIM", 1),
    ("pndm", "PLMS", 1),
];

const KNOWN: &str = "euler, euler_karras, euler_a, euler_a_karras, heun, heun_karras, dpm2, \
    dpm2_karras, dpm2_a, dpm2_a_karras, dpm++2s_a, dpm++2s_a_karras, dpm++2m, dpm++2m_karras, \
    dpm++2mv2, dpm++2mv2_karras, lcm, ddim, pndm";

/// Names round trip (canonical and A1111, any case), `ALL` lists them in order, and the
/// built sampler reports its kind and order.
#[test]
fn sampler_names() -> TestResult {
    assert_eq!(SamplerKind::ALL.len(), NAMES.len());
    for (kind, (name, a1111, order)) in SamplerKind::ALL.into_iter().zip(NAMES) {
        assert_eq!(kind.name(), name);
        assert_eq!(kind.to_string(), name);
        assert_eq!(kind.a1111_name(), a1111);
        assert_eq!(kind.order(), order, "{name}");
        assert_eq!(kind.karras, name.ends_with("_karras"), "{name}");
        assert!(kind.is_valid());
        for spelling in [
            name.to_string(),
            name.to_uppercase(),
            a1111.to_string(),
            a1111.to_lowercase(),
            a1111.to_uppercase(),
            format!("  {a1111} "),
        ] {
            assert_eq!(spelling.parse::<SamplerKind>(), Ok(kind), "`{spelling}`");
        }
        let sampler = kind.build(&sd15(PredictionType::Epsilon), 10)?;
        assert_eq!(sampler.kind(), kind);
        assert_eq!(sampler.order(), order, "{name}");
        // One timestep per model call.
        let calls = match kind.algorithm {
            Algorithm::Pndm => 11,
            _ if order == 2 => 19,
            _ => 10,
        };
        assert_eq!(sampler.timesteps().len(), calls, "{name}");
        assert_eq!(SamplerKind::new(kind.algorithm, kind.karras), Ok(kind));
    }
    assert_eq!(SamplerKind::default(), SamplerKind::EULER_A);
    assert_eq!(SamplerKind::ALL.map(SamplerKind::name).join(", "), KNOWN);
    Ok(())
}

/// Other spellings: our old names, k-diffusion's function names, AUTOMATIC1111's "PLMS".
#[test]
fn sampler_aliases() {
    for (alias, kind) in [
        ("dpmpp_2m", SamplerKind::DPMPP_2M),
        ("dpmpp_2m_karras", SamplerKind::DPMPP_2M_KARRAS),
        ("DPMPP_2M_KARRAS", SamplerKind::DPMPP_2M_KARRAS),
        ("k_euler", SamplerKind::EULER),
        ("k_euler_a", SamplerKind::EULER_A),
        ("k_euler_ancestral", SamplerKind::EULER_A),
        ("k_heun", SamplerKind::HEUN),
        ("k_dpm_2", SamplerKind::DPM2),
        ("k_dpm_2_a", SamplerKind::DPM2_A),
        ("k_dpm_2_ancestral_karras", SamplerKind::DPM2_A_KARRAS),
        ("k_dpmpp_2s_ancestral", SamplerKind::DPMPP_2S_A),
        ("dpmpp_2s_a_karras", SamplerKind::DPMPP_2S_A_KARRAS),
        ("k_dpmpp_2m", SamplerKind::DPMPP_2M),
        ("dpmpp_2m_v2", SamplerKind::DPMPP_2M_V2),
        ("plms", SamplerKind::PNDM),
        ("PLMS", SamplerKind::PNDM),
        ("Euler a", SamplerKind::EULER_A),
        ("DPM++ 2M Karras", SamplerKind::DPMPP_2M_KARRAS),
        ("DPM2 a Karras", SamplerKind::DPM2_A_KARRAS),
        ("DPM++ 2S a", SamplerKind::DPMPP_2S_A),
        ("LCM", SamplerKind::LCM),
        ("DDIM", SamplerKind::DDIM),
        ("Heun", SamplerKind::HEUN),
    ] {
        assert_eq!(SamplerKind::parse(alias), Ok(kind), "`{alias}`");
    }
}

/// Unknown names (and Karras with the samplers that step between training timesteps) are
/// refused with the list of canonical names; nothing panics.
#[test]
fn unknown_sampler_names() {
    for bad in [
        "",
        " ",
        "_karras",
        "karras",
        "euler_ancestral_a",
        "ddim_karras",
        "DDIM Karras",
        "lcm_karras",
        "pndm_karras",
        "PLMS Karras",
        "euler_karras_karras",
        "dpm++ 2m v3",
        "dpm++2m sde",
        "unipc",
        "é",
        "euler\0",
    ] {
        let err = SamplerKind::parse(bad).expect_err("unknown name");
        assert!(
            matches!(&err, SamplerError::UnknownSampler { name, .. } if name == bad),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&format!("`{bad}`")), "{message}");
        assert!(message.contains(KNOWN), "{message}");
    }
}

/// Karras exists only for the sigma-based samplers: a hand-made Karras DDIM, LCM or PNDM is
/// refused by `new` and by `build`, and reports itself under a name `parse` refuses.
#[test]
fn karras_only_with_sigmas() {
    for algorithm in [Algorithm::Ddim, Algorithm::Lcm, Algorithm::Pndm] {
        assert!(!algorithm.supports_karras());
        let kind = SamplerKind {
            algorithm,
            karras: true,
        };
        assert!(!kind.is_valid());
        assert!(matches!(
            SamplerKind::new(algorithm, true),
            Err(SamplerError::KarrasUnsupported { .. })
        ));
        assert!(matches!(
            kind.build(&sd15(PredictionType::Epsilon), 20),
            Err(SamplerError::KarrasUnsupported { .. })
        ));
        assert!(SamplerKind::parse(kind.name()).is_err());
        assert!(SamplerKind::new(algorithm, false).is_ok());
    }
    for algorithm in Algorithm::ALL {
        assert_eq!(
            SamplerKind::new(algorithm, true).is_ok(),
            algorithm.supports_karras(),
            "{algorithm}"
        );
        assert_eq!(algorithm.to_string(), algorithm.name());
    }
}

/// Euler, v-prediction: `x0 = v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)`, then
/// `x + (x - x0) / sigma * (sigma_next - sigma)`.
#[test]
fn euler_v_prediction_by_hand() -> TestResult {
    let mut sampler = SamplerKind::EULER.build(&sd15(PredictionType::VPrediction), 20)?;
    let sigmas = sampler.sigmas().ok_or("sigmas")?.to_vec();
    let (x, v) = ([3.0_f32, -7.5, 0.25], [0.5_f32, 1.25, -2.0]);
    for step in [0, 7, 19] {
        let (s, next) = (sigmas[step], sigmas[step + 1]);
        let want: Vec<f64> = x
            .iter()
            .zip(&v)
            .map(|(&x, &v)| {
                let (x, v) = (f64::from(x), f64::from(v));
                let x0 = v * (-s / (s * s + 1.0).sqrt()) + x / (s * s + 1.0);
                x + (x - x0) / s * (next - s)
            })
            .collect();
        close(&sampler.step(&v, step, &x, &mut no_noise)?, &want, 1e-6);
    }
    Ok(())
}

/// Euler ancestral, v-prediction, with its noise: `sigma_up = sqrt(next^2 (s^2 - next^2) / s^2)`,
/// `sigma_down = sqrt(next^2 - up^2)`, one draw per step.
#[test]
fn euler_ancestral_v_prediction_by_hand() -> TestResult {
    let mut sampler = SamplerKind::EULER_A.build(&sd15(PredictionType::VPrediction), 20)?;
    let sigmas = sampler.sigmas().ok_or("sigmas")?.to_vec();
    let (x, v, z) = ([3.0_f32, -7.5], [0.5_f32, 1.25], [0.3_f32, -1.1]);
    let step = 4;
    let (s, next) = (sigmas[step], sigmas[step + 1]);
    let up = (next * next * (s * s - next * next) / (s * s)).sqrt();
    let down = (next * next - up * up).sqrt();
    let want: Vec<f64> = (0..2)
        .map(|i| {
            let (x, v, z) = (f64::from(x[i]), f64::from(v[i]), f64::from(z[i]));
            let x0 = v * (-s / (s * s + 1.0).sqrt()) + x / (s * s + 1.0);
            x + (x - x0) / s * (down - s) + z * up
        })
        .collect();
    let mut draws = 0;
    let got = sampler.step(&v, step, &x, &mut |n| {
        draws += 1;
        z[..n].to_vec()
    })?;
    assert_eq!(draws, 1);
    close(&got, &want, 1e-6);
    Ok(())
}

/// DPM-Solver++ 2M, v-prediction, by hand: first order at step 0, second order (midpoint) at
/// step 1 from both data predictions, first order again at the last step (sigma 0: the result
/// is the data prediction).
#[test]
fn dpmpp_2m_v_prediction_by_hand() -> TestResult {
    let steps = 10;
    let mut sampler = SamplerKind::DPMPP_2M.build(&sd15(PredictionType::VPrediction), steps)?;
    let sigmas = sampler.sigmas().ok_or("sigmas")?.to_vec();
    let alpha_sigma = |s: f64| {
        let a = 1.0 / (s * s + 1.0).sqrt();
        (a, s * a)
    };
    let lambda = |s: f64| {
        let (a, st) = alpha_sigma(s);
        a.ln() - st.ln()
    };
    let x0_of = |step: usize, x: f64, v: f64| {
        let (a, st) = alpha_sigma(sigmas[step]);
        a * x - st * v
    };
    let (x, v0, v1) = (2.0_f32, 0.4_f32, -0.3_f32);

    // Step 0: first order.
    let x0_0 = x0_of(0, f64::from(x), f64::from(v0));
    let (a1, s1) = alpha_sigma(sigmas[1]);
    let (_, s0) = alpha_sigma(sigmas[0]);
    let h = lambda(sigmas[1]) - lambda(sigmas[0]);
    let want0 = s1 / s0 * f64::from(x) - a1 * ((-h).exp() - 1.0) * x0_0;
    let x1 = sampler.step(&[v0], 0, &[x], &mut no_noise)?;
    close(&x1, &[want0], 2e-6);

    // Step 1: second order from x0 at steps 1 and 0.
    let x0_1 = x0_of(1, f64::from(x1[0]), f64::from(v1));
    let (a2, s2) = alpha_sigma(sigmas[2]);
    let h = lambda(sigmas[2]) - lambda(sigmas[1]);
    let h_0 = lambda(sigmas[1]) - lambda(sigmas[0]);
    let d1 = (x0_1 - x0_0) / (h_0 / h);
    let c = a2 * ((-h).exp() - 1.0);
    let want1 = s2 / s1 * f64::from(x1[0]) - c * x0_1 - 0.5 * c * d1;
    let x2 = sampler.step(&[v1], 1, &x1, &mut no_noise)?;
    close(&x2, &[want1], 2e-6);

    // Steps 2..: the last lands on the data prediction.
    let mut latents = x2;
    for step in 2..steps {
        let next = sampler.step(&[0.1], step, &latents, &mut no_noise)?;
        if step == steps - 1 {
            let want = x0_of(step, f64::from(latents[0]), 0.1);
            close(&next, &[want], 1e-6);
        }
        latents = next;
    }
    Ok(())
}

#[test]
fn dpmpp_2m_must_be_stepped_in_order() -> TestResult {
    let mut sampler = SamplerKind::DPMPP_2M.build(&sd15(PredictionType::Epsilon), 20)?;
    // The first step may be any (img2img starts in the middle).
    sampler.step(&[0.0], 5, &[1.0], &mut no_noise)?;
    let err = sampler
        .step(&[0.0], 7, &[1.0], &mut no_noise)
        .expect_err("skipped step 6");
    assert!(matches!(
        err,
        SamplerError::OutOfOrder {
            step: 7,
            expected: 6,
            ..
        }
    ));
    sampler.step(&[0.0], 6, &[1.0], &mut no_noise)?;
    Ok(())
}

#[test]
fn bad_steps_and_lengths() -> TestResult {
    for kind in SamplerKind::ALL {
        let mut sampler = kind.build(&sd15(PredictionType::Epsilon), 20)?;
        let calls = sampler.timesteps().len();
        let out_of_range = sampler.step(&[0.0], calls, &[0.0], &mut |n| vec![0.0; n]);
        assert!(
            matches!(out_of_range, Err(SamplerError::StepOutOfRange { step, steps }) if step == calls && steps == calls),
            "{kind}: {out_of_range:?}"
        );
        assert!(matches!(
            sampler.step(&[0.0, 1.0], 0, &[0.0], &mut |n| vec![0.0; n]),
            Err(SamplerError::Length {
                what: "model_output",
                ..
            })
        ));
        assert!(matches!(
            sampler.add_noise(&[0.0, 1.0], &[0.0], 0),
            Err(SamplerError::Length { what: "noise", .. })
        ));
        assert!(matches!(
            sampler.model_input_divisor(calls),
            Err(SamplerError::StepOutOfRange { .. })
        ));
        assert!(matches!(
            sampler.add_noise(&[0.0], &[0.0], calls),
            Err(SamplerError::StepOutOfRange { .. })
        ));
        assert!(matches!(
            kind.build(&sd15(PredictionType::Epsilon), 0),
            Err(SamplerError::Schedule(ScheduleError::NoSteps))
        ));
        assert!(matches!(
            kind.build(&sd15(PredictionType::Epsilon), 1001),
            Err(SamplerError::Schedule(ScheduleError::TooManySteps { .. }))
        ));
    }
    // A noise source that returns too few values.
    let mut euler_a = SamplerKind::EULER_A.build(&sd15(PredictionType::Epsilon), 20)?;
    assert!(matches!(
        euler_a.step(&[0.0, 0.0], 0, &[1.0, 1.0], &mut |_| vec![0.0]),
        Err(SamplerError::Length {
            what: "noise",
            expected: 2,
            found: 1
        })
    ));
    // diffusers' Euler ancestral, KDPM2 (ancestral) and PNDM have no `sample` prediction,
    // nor has k-diffusion's DPM++ 2S ancestral (following Euler ancestral); the others do.
    for kind in SamplerKind::ALL {
        let refused = matches!(
            kind.algorithm,
            Algorithm::EulerAncestral
                | Algorithm::Dpm2
                | Algorithm::Dpm2Ancestral
                | Algorithm::DpmPP2SAncestral
                | Algorithm::Pndm
        );
        let built = kind.build(&sd15(PredictionType::Sample), 20);
        assert_eq!(
            matches!(built, Err(SamplerError::UnsupportedPrediction { .. })),
            refused,
            "{kind}"
        );
    }
    // LCM takes at most original_inference_steps (50) steps.
    assert!(
        SamplerKind::LCM
            .build(&sd15(PredictionType::Epsilon), 50)
            .is_ok()
    );
    for (original, steps) in [(None, 51), (Some(0), 1), (Some(1001), 4), (Some(4), 5)] {
        let mut config = sd15(PredictionType::Epsilon);
        config.original_inference_steps = original;
        assert!(
            matches!(
                SamplerKind::LCM.build(&config, steps),
                Err(SamplerError::LcmSteps { .. })
            ),
            "{original:?} {steps}"
        );
    }
    assert!(matches!(
        SamplerKind::DDIM.build_with(
            &sd15(PredictionType::Epsilon),
            20,
            &SamplerOptions::with_eta(-1.0)
        ),
        Err(SamplerError::BadEta(_))
    ));
    // leading spacing with steps_offset 1 at 1000 steps reaches t = 1000: refused for DDIM
    // and PNDM, which index alphas_cumprod with it.
    for kind in [SamplerKind::DDIM, SamplerKind::PNDM] {
        assert!(matches!(
            kind.build(&sd15(PredictionType::Epsilon), 1000),
            Err(SamplerError::TimestepOutOfRange { .. })
        ));
    }
    Ok(())
}

/// DDIM with eta > 0 draws one noise tensor per step; eta 0 draws none.
#[test]
fn ddim_draws_noise_only_with_eta() -> TestResult {
    let config = sd15(PredictionType::Epsilon);
    for (eta, expected_draws) in [(0.0, 0), (1.0, 20)] {
        let mut ddim = SamplerKind::DDIM.build_with(&config, 20, &SamplerOptions::with_eta(eta))?;
        let mut draws = 0;
        let mut latents = vec![1.0_f32; 3];
        for step in 0..20 {
            latents = ddim.step(&[0.1, 0.2, 0.3], step, &latents, &mut |n| {
                draws += 1;
                vec![0.5; n]
            })?;
        }
        assert_eq!(draws, expected_draws, "eta {eta}");
        assert!(latents.iter().all(|x| x.is_finite()));
    }
    Ok(())
}

/// The input scaling `1 / (sigma ** 2 + 1) ** 0.5` of the call's sigma for the sigma-based
/// samplers (DPM-Solver++ 2M aside, whose diffusers class does not scale), none for the others.
/// The sigma of a call is `sigmas[step]`, except at the midpoint calls of DPM2 and DPM2
/// ancestral (odd steps), which run at an interpolated sigma between the step's two.
#[test]
fn scale_model_input() -> TestResult {
    let config = sd15(PredictionType::Epsilon);
    for kind in SamplerKind::ALL {
        let sampler = kind.build(&config, 20)?;
        for step in [3, 4] {
            let mut input = vec![2.0_f32, -4.0];
            sampler.scale_model_input(&mut input, step)?;
            let scaled = !matches!(
                kind.algorithm,
                Algorithm::DpmPP2M | Algorithm::Lcm | Algorithm::Ddim | Algorithm::Pndm
            );
            if !scaled {
                assert_eq!(input, vec![2.0, -4.0], "{kind}: no input scaling");
                continue;
            }
            let sigmas = sampler.sigmas().ok_or("sigmas")?;
            let midpoint = matches!(kind.algorithm, Algorithm::Dpm2 | Algorithm::Dpm2Ancestral)
                && step % 2 == 1;
            let d = f64::from(2.0 / input[0]);
            if midpoint {
                let sigma = (d * d - 1.0).sqrt();
                let (low, high) = match kind.algorithm {
                    // Between S(i+1) (= sigmas[step]) and S(i) (= sigmas[step - 1]).
                    Algorithm::Dpm2 => (sigmas[step], sigmas[step - 1]),
                    // Between sigma_down(i) < S(i+1) and S(i).
                    _ => (0.0, sigmas[step - 1]),
                };
                assert!(sigma > low && sigma < high, "{kind} {step}: {sigma}");
            } else {
                let want = (sigmas[step] * sigmas[step] + 1.0).sqrt();
                assert!(
                    (d - want).abs() < 1e-6 * want,
                    "{kind} {step}: {d} vs {want}"
                );
            }
            close(&input, &[2.0 / d, -4.0 / d], 1e-6);
        }
    }
    Ok(())
}

/// `use_karras_sigmas: true` in the config is carried over, as by diffusers' `from_config`,
/// where the class has the key (and for the samplers on Euler's schedule); Euler ancestral's
/// class has none, and LCM, DDIM and PNDM have no sigmas.
#[test]
fn karras_from_the_config() -> TestResult {
    let mut config = sd15(PredictionType::Epsilon);
    config.use_karras_sigmas = Some(true);
    for kind in SamplerKind::ALL.into_iter().filter(|k| !k.karras) {
        let karras = !matches!(
            kind.algorithm,
            Algorithm::EulerAncestral | Algorithm::Lcm | Algorithm::Ddim | Algorithm::Pndm
        );
        let built = kind.build(&config, 20)?.kind();
        assert_eq!(built, SamplerKind::new(kind.algorithm, karras)?, "{kind}");
    }
    Ok(())
}

/// The Karras schedules: Euler's (Karras sigmas between Euler's own first and last sigma,
/// float32 fractional timesteps) is shared by Euler ancestral, Heun, DPM++ 2S ancestral and
/// DPM++ 2M v2; DPM2 rounds its Karras timesteps to whole numbers.
#[test]
fn karras_schedules() -> TestResult {
    let config = sd15(PredictionType::Epsilon);
    let euler = SamplerKind::EULER_KARRAS.build(&config, 10)?;
    let (t, s) = (euler.timesteps(), euler.sigmas().ok_or("sigmas")?);
    let plain = SamplerKind::EULER.build(&config, 10)?;
    let plain_sigmas = plain.sigmas().ok_or("sigmas")?;
    assert_eq!((s[0], s[9], s[10]), (plain_sigmas[0], plain_sigmas[9], 0.0));
    assert!(t.iter().any(|t| t.fract() != 0.0));
    for kind in [SamplerKind::EULER_A_KARRAS, SamplerKind::DPMPP_2M_V2_KARRAS] {
        let other = kind.build(&config, 10)?;
        assert_eq!(other.timesteps(), t, "{kind}");
        assert_eq!(other.sigmas(), Some(s), "{kind}");
        assert_eq!(other.init_noise_sigma(), euler.init_noise_sigma(), "{kind}");
    }
    // Heun and DPM++ 2S a: the same at their even calls.
    for kind in [SamplerKind::HEUN_KARRAS, SamplerKind::DPMPP_2S_A_KARRAS] {
        let other = kind.build(&config, 10)?;
        let sigmas = other.sigmas().ok_or("sigmas")?;
        for i in 0..10 {
            assert_eq!(other.timesteps()[2 * i], t[i], "{kind}");
            assert_eq!(sigmas[2 * i], s[i], "{kind}");
        }
    }
    let dpm2 = SamplerKind::DPM2_KARRAS.build(&config, 10)?;
    for (i, &t) in t.iter().enumerate() {
        assert_eq!(dpm2.timesteps()[2 * i], t.round(), "{i}");
    }
    Ok(())
}

/// Without `timestep_spacing` each class uses its own default: linspace for Euler (fractional
/// timesteps, sigmas interpolated) and DPM-Solver, leading for DDIM.
#[test]
fn spacing_defaults_per_class() -> TestResult {
    let mut config = sd15(PredictionType::Epsilon);
    config.timestep_spacing = None;
    let euler = SamplerKind::EULER.build(&config, 7)?;
    let t = euler.timesteps();
    assert_eq!(t[0], 999.0);
    assert_eq!(t[1], f64::from((999.0_f64 * 5.0 / 6.0) as f32)); // 832.5, kept as a fraction
    assert_eq!(t[6], 0.0);
    // linspace: init_noise_sigma is the largest sigma itself.
    let sigmas = euler.sigmas().ok_or("sigmas")?;
    assert_eq!(euler.init_noise_sigma(), sigmas[0]);
    // Sigma at 832.5 lies between the training sigmas at 832 and 833.
    let table = schedule::train_sigmas(&schedule::alphas_cumprod(&config)?);
    assert!(sigmas[1] > table[832] && sigmas[1] < table[833]);

    let dpm = SamplerKind::DPMPP_2M.build(&config, 7)?;
    assert_eq!(dpm.timesteps()[0], 999.0);
    assert!(dpm.timesteps().iter().all(|t| t.fract() == 0.0));
    let ddim = SamplerKind::DDIM.build(&config, 7)?;
    assert_eq!(ddim.timesteps()[0], 1.0 + 6.0 * 142.0); // leading, 1000 // 7 = 142
    Ok(())
}

/// `rescale_betas_zero_snr`: the last alphas_cumprod is (about) 0; the sigma samplers put
/// 2^-24 there, so their first sigma is sqrt((1 - 2^-24) / 2^-24) ~ 4096.
#[test]
fn zero_terminal_snr() -> TestResult {
    let mut config = sd15(PredictionType::VPrediction);
    config.rescale_betas_zero_snr = Some(true);
    config.timestep_spacing = Some(TimestepSpacing::Trailing);
    let acp = schedule::alphas_cumprod(&config)?;
    assert!(acp[999] < 1e-9, "{}", acp[999]);
    let plain = schedule::alphas_cumprod(&sd15(PredictionType::Epsilon))?;
    assert!((acp[0] - plain[0]).abs() < 1e-6);
    let euler = SamplerKind::EULER.build(&config, 4)?;
    let first = euler.sigmas().ok_or("sigmas")?[0];
    assert!((first - 4096.0).abs() < 1.0, "{first}");
    assert_eq!(euler.timesteps()[0], 999.0);
    Ok(())
}

/// The cosine schedule uses float division (candle's `i / T` in integers made every beta the
/// same): betas grow, are capped at 0.999, and DPM-Solver's Karras timesteps are truncated.
#[test]
fn cosine_schedule() -> TestResult {
    let mut config = sd15(PredictionType::Epsilon);
    config.beta_schedule = BetaSchedule::SquaredcosCapV2;
    let betas = schedule::betas(&config)?;
    assert!(betas.windows(2).all(|w| w[0] <= w[1]));
    assert!(betas[0] > 0.0 && betas[0] < 1e-4, "{}", betas[0]);
    assert_eq!(betas[999], f64::from(0.999_f32));
    let acp = schedule::alphas_cumprod(&config)?;
    assert!(acp.windows(2).all(|w| w[0] > w[1]));
    let dpm = SamplerKind::DPMPP_2M_KARRAS.build(&config, 20)?;
    assert!(dpm.timesteps().iter().all(|t| t.fract() == 0.0));
    assert!(dpm.timesteps().windows(2).all(|w| w[0] >= w[1]));
    Ok(())
}

#[test]
fn bad_betas() {
    let mut config = sd15(PredictionType::Epsilon);
    config.trained_betas = Some(vec![0.1; 10]);
    assert!(matches!(
        schedule::betas(&config),
        Err(ScheduleError::TrainedBetasLength {
            expected: 1000,
            found: 10
        })
    ));
    let mut betas = vec![0.01; 1000];
    betas[3] = 1.5;
    config.trained_betas = Some(betas);
    assert!(matches!(
        schedule::betas(&config),
        Err(ScheduleError::BadBeta { index: 3, .. })
    ));
    config.trained_betas = None;
    config.num_train_timesteps = 1;
    assert!(matches!(
        schedule::betas(&config),
        Err(ScheduleError::TooFewTrainTimesteps(1))
    ));
}

/// The noising rules of add_noise.
#[test]
fn add_noise_rules() -> TestResult {
    let config = sd15(PredictionType::Epsilon);
    let (x, n) = ([1.0_f32, -2.0], [0.5_f32, 0.25]);
    let euler = SamplerKind::EULER.build(&config, 20)?;
    let s = euler.sigmas().ok_or("sigmas")?[5];
    close(
        &euler.add_noise(&x, &n, 5)?,
        &[1.0 + 0.5 * s, -2.0 + 0.25 * s],
        1e-6,
    );
    let ddim = SamplerKind::DDIM.build(&config, 20)?;
    let acp = schedule::alphas_cumprod(&config)?[ddim.timesteps()[5] as usize];
    let (a, b) = (acp.sqrt(), (1.0 - acp).sqrt());
    close(
        &ddim.add_noise(&x, &n, 5)?,
        &[a + 0.5 * b, -2.0 * a + 0.25 * b],
        1e-6,
    );
    let dpm = SamplerKind::DPMPP_2M.build(&config, 20)?;
    let s = dpm.sigmas().ok_or("sigmas")?[5];
    let alpha = 1.0 / (s * s + 1.0).sqrt();
    close(
        &dpm.add_noise(&x, &n, 5)?,
        &[alpha + 0.5 * s * alpha, -2.0 * alpha + 0.25 * s * alpha],
        1e-6,
    );
    Ok(())
}

/// `add_noise` of the samplers added with the two-call and multistep ones: `x + sigma * n`
/// at `sigmas[step]` for the sigma-based ones (an even step of a two-call sampler is the
/// start of a step, so img2img's `t_start * order` lands there), the DDIM rule at the
/// step's timestep for LCM and PNDM.
#[test]
fn add_noise_of_every_sampler() -> TestResult {
    let config = sd15(PredictionType::Epsilon);
    let acp = schedule::alphas_cumprod(&config)?;
    let (x, n) = ([1.0_f32, -2.0], [0.5_f32, 0.25]);
    for kind in SamplerKind::ALL {
        let sampler = kind.build(&config, 10)?;
        let step = 2 * sampler.order();
        let got = sampler.add_noise(&x, &n, step)?;
        let want: Vec<f64> = match (kind.algorithm, sampler.sigmas()) {
            (Algorithm::DpmPP2M, Some(sigmas)) => {
                let s = sigmas[step];
                let alpha = 1.0 / (s * s + 1.0).sqrt();
                vec![alpha + 0.5 * s * alpha, -2.0 * alpha + 0.25 * s * alpha]
            }
            (_, Some(sigmas)) => {
                let s = sigmas[step];
                vec![1.0 + 0.5 * s, -2.0 + 0.25 * s]
            }
            (_, None) => {
                let a = acp[sampler.timesteps()[step] as usize];
                let (a, b) = (a.sqrt(), (1.0 - a).sqrt());
                vec![a + 0.5 * b, -2.0 * a + 0.25 * b]
            }
        };
        close(&got, &want, 1e-6);
    }
    Ok(())
}

/// A two-call sampler's second call (odd step) needs its first call just before; the first
/// call of any step may come first (img2img). PNDM and DPM++ 2M v2 must be stepped in order
/// after their first step.
#[test]
fn calls_in_order() -> TestResult {
    let config = sd15(PredictionType::Epsilon);
    for kind in [
        SamplerKind::HEUN,
        SamplerKind::DPM2,
        SamplerKind::DPM2_A,
        SamplerKind::DPMPP_2S_A,
    ] {
        let mut sampler = kind.build(&config, 10)?;
        let err = sampler
            .step(&[0.1], 3, &[1.0], &mut |n| vec![0.0; n])
            .expect_err("second call without the first");
        assert!(
            matches!(
                err,
                SamplerError::OutOfOrder {
                    step: 3,
                    expected: 2,
                    ..
                }
            ),
            "{kind}: {err:?}"
        );
        let mid = sampler.step(&[0.1], 4, &[1.0], &mut |n| vec![0.0; n])?;
        assert!(matches!(
            sampler.step(&[0.1], 3, &mid, &mut |n| vec![0.0; n]),
            Err(SamplerError::OutOfOrder { .. })
        ));
        let mid = sampler.step(&[0.1], 4, &[1.0], &mut |n| vec![0.0; n])?;
        sampler.step(&[0.1], 5, &mid, &mut |n| vec![0.0; n])?;
    }
    for kind in [SamplerKind::PNDM, SamplerKind::DPMPP_2M_V2] {
        let mut sampler = kind.build(&config, 10)?;
        sampler.step(&[0.0], 5, &[1.0], &mut no_noise)?;
        assert!(matches!(
            sampler.step(&[0.0], 7, &[1.0], &mut no_noise),
            Err(SamplerError::OutOfOrder {
                step: 7,
                expected: 6,
                ..
            })
        ));
        sampler.step(&[0.0], 6, &[1.0], &mut no_noise)?;
    }
    Ok(())
}

/// Where the stochastic samplers draw: Euler ancestral every step, DPM2 ancestral and
/// DPM++ 2S ancestral at each step's second call except the last step (which goes to sigma 0
/// and has one call), LCM every step but the last; the deterministic ones never.
#[test]
fn noise_draws() -> TestResult {
    let config = sd15(PredictionType::Epsilon);
    let steps = 10;
    for kind in SamplerKind::ALL {
        let mut sampler = kind.build(&config, steps)?;
        let mut draws = Vec::new();
        let mut latents = vec![1.0_f32, -0.5];
        for step in 0..sampler.timesteps().len() {
            latents = sampler.step(&[0.2, 0.1], step, &latents, &mut |n| {
                draws.push(step);
                vec![0.3; n]
            })?;
        }
        assert!(latents.iter().all(|x| x.is_finite()), "{kind}");
        let want: Vec<usize> = match kind.algorithm {
            Algorithm::EulerAncestral => (0..steps).collect(),
            Algorithm::Dpm2Ancestral | Algorithm::DpmPP2SAncestral => {
                (0..steps - 1).map(|i| 2 * i + 1).collect()
            }
            Algorithm::Lcm => (0..steps - 1).collect(),
            _ => Vec::new(),
        };
        assert_eq!(draws, want, "{kind}");
    }
    Ok(())
}

/// DPM++ 2S ancestral by hand (float64, k-diffusion's formulas) on Euler's schedule,
/// v-prediction: the first call goes to the midpoint sigma `sqrt(s * down)` with
/// `x_2 = (s_mid / s) x - expm1(-h / 2) D`, the second to `down` with
/// `x = (down / s) x - expm1(-h) D_2 + up * z`.
#[test]
fn dpmpp_2s_ancestral_by_hand() -> TestResult {
    let config = sd15(PredictionType::VPrediction);
    let mut sampler = SamplerKind::DPMPP_2S_A.build(&config, 10)?;
    let euler = SamplerKind::EULER.build(&config, 10)?;
    let es = euler.sigmas().ok_or("sigmas")?;
    let sigmas = sampler.sigmas().ok_or("sigmas")?.to_vec();
    let step = 3;
    let (s, next) = (es[step], es[step + 1]);
    let up = (next * next * (s * s - next * next) / (s * s))
        .sqrt()
        .min(next);
    let down = (next * next - up * up).sqrt();
    let h = (s / down).ln();
    let s_mid = (s * down).sqrt();
    assert!((sigmas[2 * step] - s).abs() < 1e-12);
    assert!((sigmas[2 * step + 1] - s_mid).abs() < 1e-6 * s_mid);
    // The midpoint's timestep maps back to its sigma (log-linear between training sigmas).
    let table = schedule::train_sigmas(&schedule::alphas_cumprod(&config)?);
    let t_mid = sampler.timesteps()[2 * step + 1];
    let (lo, w) = (t_mid.floor() as usize, t_mid.fract());
    let sigma_of_t = (table[lo].ln() * (1.0 - w) + table[lo + 1].ln() * w).exp();
    assert!(
        (sigma_of_t - s_mid).abs() < 1e-5 * s_mid,
        "{sigma_of_t} vs {s_mid}"
    );
    let denoise = |x: f64, v: f64, sigma: f64| {
        v * (-sigma / (sigma * sigma + 1.0).sqrt()) + x / (sigma * sigma + 1.0)
    };
    let (x, v1, v2, z) = (3.0_f32, 0.5_f32, -0.25_f32, 0.7_f32);
    let x2_want = s_mid / s * f64::from(x) - (-h / 2.0).exp_m1() * denoise(x.into(), v1.into(), s);
    let x2 = sampler.step(&[v1], 2 * step, &[x], &mut no_noise)?;
    close(&x2, &[x2_want], 2e-6);
    let want = down / s * f64::from(x) - (-h).exp_m1() * denoise(x2[0].into(), v2.into(), s_mid)
        + up * f64::from(z);
    let got = sampler.step(&[v2], 2 * step + 1, &x2, &mut |n| vec![z; n])?;
    close(&got, &[want], 2e-6);
    Ok(())
}

/// DPM++ 2M v2 by hand (float64): first step DPM-Solver++ 1, second with
/// `r = h_max / h_min`, `h_d = (h + h_last) / 2`, the last (to sigma 0) the data prediction.
#[test]
fn dpmpp_2m_v2_by_hand() -> TestResult {
    let steps = 6;
    let mut sampler = SamplerKind::DPMPP_2M_V2.build(&sd15(PredictionType::Epsilon), steps)?;
    let s = sampler.sigmas().ok_or("sigmas")?.to_vec();
    let x0_of = |step: usize, x: f64, eps: f64| x - s[step] * eps;
    let (x, e0, e1) = (5.0_f32, 0.4_f32, -0.3_f32);
    let d0 = x0_of(0, x.into(), e0.into());
    let h0 = (s[0] / s[1]).ln();
    let want0 = s[1] / s[0] * f64::from(x) - (-h0).exp_m1() * d0;
    let x1 = sampler.step(&[e0], 0, &[x], &mut no_noise)?;
    close(&x1, &[want0], 2e-6);
    let d1 = x0_of(1, x1[0].into(), e1.into());
    let h1 = (s[1] / s[2]).ln();
    let (h_min, h_max) = (h0.min(h1), h0.max(h1));
    let r = h_max / h_min;
    let h_d = (h0 + h1) / 2.0;
    let d = (1.0 + 1.0 / (2.0 * r)) * d1 - 1.0 / (2.0 * r) * d0;
    let want1 = s[2] / s[1] * f64::from(x1[0]) - (-h_d).exp_m1() * d;
    let x2 = sampler.step(&[e1], 1, &x1, &mut no_noise)?;
    close(&x2, &[want1], 2e-6);
    let mut latents = x2;
    for step in 2..steps {
        let next = sampler.step(&[0.1], step, &latents, &mut no_noise)?;
        if step == steps - 1 {
            close(&next, &[x0_of(step, latents[0].into(), 0.1)], 1e-6);
        }
        latents = next;
    }
    Ok(())
}

/// Heun with v-prediction by hand: an Euler step, then the average of both derivatives from
/// the first call's sample.
#[test]
fn heun_v_prediction_by_hand() -> TestResult {
    let mut sampler = SamplerKind::HEUN.build(&sd15(PredictionType::VPrediction), 10)?;
    let s = sampler.sigmas().ok_or("sigmas")?.to_vec();
    let x0 = |x: f64, v: f64, sigma: f64| {
        v * (-sigma / (sigma * sigma + 1.0).sqrt()) + x / (sigma * sigma + 1.0)
    };
    let (x, v1, v2) = (4.0_f32, 0.5_f32, 0.75_f32);
    let (sigma, next) = (s[4], s[5]);
    assert_eq!(s[5], s[6]);
    let d1 = (f64::from(x) - x0(x.into(), v1.into(), sigma)) / sigma;
    let euler = f64::from(x) + d1 * (next - sigma);
    let x_euler = sampler.step(&[v1], 4, &[x], &mut no_noise)?;
    close(&x_euler, &[euler], 2e-6);
    let xe = f64::from(x_euler[0]);
    let d2 = (xe - x0(xe, v2.into(), next)) / next;
    let want = f64::from(x) + (d1 + d2) / 2.0 * (next - sigma);
    close(
        &sampler.step(&[v2], 5, &x_euler, &mut no_noise)?,
        &[want],
        2e-6,
    );
    Ok(())
}

/// A step whose latents do not fit what the earlier calls kept is refused before the sampler's
/// bookkeeping moves on: the same step with the right length still runs.
#[test]
fn a_length_error_leaves_a_multistep_sampler_where_it_was() -> TestResult {
    for kind in [
        SamplerKind::DPMPP_2M,
        SamplerKind::DPMPP_2M_V2,
        SamplerKind::PNDM,
    ] {
        let mut sampler = kind.build(&sd15(PredictionType::Epsilon), 10)?;
        sampler.step(&[0.1], 0, &[1.0], &mut no_noise)?;
        let err = sampler
            .step(&[0.1, 0.2], 1, &[1.0, 2.0], &mut no_noise)
            .expect_err("two values after one");
        assert!(
            matches!(
                err,
                SamplerError::Length {
                    what: "model_output",
                    expected: 1,
                    found: 2
                }
            ),
            "{kind}: {err:?}"
        );
        sampler.step(&[0.1], 1, &[1.0], &mut no_noise)?;
    }
    Ok(())
}

/// Issue 18's config bombs: a `steps_offset` near `u64::MAX` (which once overflowed) and an
/// absurd `num_train_timesteps` (which would allocate per training timestep) are typed errors.
#[test]
fn absurd_scheduler_configs_are_refused() {
    let mut config = sd15(PredictionType::Epsilon);
    config.steps_offset = usize::MAX;
    for kind in [SamplerKind::DDIM, SamplerKind::PNDM] {
        let err = kind
            .build(&config, 10)
            .expect_err("offset past the training timesteps");
        assert!(
            matches!(err, SamplerError::TimestepOutOfRange { .. }),
            "{kind}: {err:?}"
        );
    }
    let mut config = sd15(PredictionType::Epsilon);
    config.num_train_timesteps = 1 << 40;
    for kind in SamplerKind::ALL {
        let err = kind
            .build(&config, 10)
            .expect_err("too many training timesteps");
        assert!(
            matches!(
                err,
                SamplerError::Schedule(ScheduleError::TooManyTrainTimesteps(n)) if n == 1 << 40
            ),
            "{kind}: {err:?}"
        );
    }
}

/// Found by the property tests (`tests/properties.rs`): a squaredcos_cap_v2 schedule puts a
/// first sigma of ~20000 next to one of ~0.006, where `sigma_down = sqrt(to^2 - up^2)` rounds
/// to 0 in float32 (diffusers then gives DPM2 ancestral a midpoint sigma of 0, and a NaN image
/// after its second call divides by it). The ancestral samplers now stay finite there.
#[test]
fn ancestral_samplers_stay_finite_on_a_huge_first_sigma() -> TestResult {
    let config = SchedulerConfig {
        beta_schedule: BetaSchedule::SquaredcosCapV2,
        beta_start: 0.00001,
        beta_end: 0.005,
        timestep_spacing: None,
        steps_offset: 0,
        ..sd15(PredictionType::Epsilon)
    };
    for kind in SamplerKind::ALL {
        let Ok(mut sampler) = kind.build(&config, 2) else {
            continue;
        };
        let mut sample = vec![0.5f32; 4];
        for step in 0..sampler.timesteps().len() {
            sample = sampler.step(&[0.1; 4], step, &sample, &mut |n| vec![0.3; n])?;
            assert!(
                sample.iter().all(|x| x.is_finite()),
                "{kind:?} step {step}: {sample:?}"
            );
        }
    }
    Ok(())
}
