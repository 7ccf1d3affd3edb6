//! The samplers' rules where no diffusers reference tensor exists: v-prediction steps computed
//! by hand, the errors (unknown names, out-of-range or out-of-order steps, wrong lengths), the
//! config keys that change the schedule (`use_karras_sigmas`, `rescale_betas_zero_snr`,
//! `squaredcos_cap_v2`, spacing defaults) and `scale_model_input`.

use sd_core::config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use sd_core::sampler::{SamplerError, SamplerKind, SamplerOptions};
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

#[test]
fn sampler_names() {
    for (name, kind) in [
        ("euler", SamplerKind::Euler),
        ("euler_karras", SamplerKind::EulerKarras),
        ("euler_a", SamplerKind::EulerAncestral),
        ("ddim", SamplerKind::Ddim),
        ("dpmpp_2m", SamplerKind::DpmPP2M),
        ("dpmpp_2m_karras", SamplerKind::DpmPP2MKarras),
    ] {
        assert_eq!(name.parse::<SamplerKind>(), Ok(kind));
        assert_eq!(kind.name(), name);
    }
    assert_eq!(SamplerKind::default(), SamplerKind::EulerAncestral);
    for bad in [
        "",
        "Euler",
        "euler_a_karras",
        "ddim_karras",
        "dpm++2m",
        "heun",
    ] {
        let err = SamplerKind::parse(bad).expect_err("unknown name");
        let message = err.to_string();
        assert!(message.contains(&format!("`{bad}`")), "{message}");
        assert!(
            message.contains("euler, euler_karras, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras"),
            "{message}"
        );
    }
}

/// Euler, v-prediction: `x0 = v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)`, then
/// `x + (x - x0) / sigma * (sigma_next - sigma)`.
#[test]
fn euler_v_prediction_by_hand() -> TestResult {
    let mut sampler = SamplerKind::Euler.build(&sd15(PredictionType::VPrediction), 20)?;
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
    let mut sampler = SamplerKind::EulerAncestral.build(&sd15(PredictionType::VPrediction), 20)?;
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
    let mut sampler = SamplerKind::DpmPP2M.build(&sd15(PredictionType::VPrediction), steps)?;
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
    let mut sampler = SamplerKind::DpmPP2M.build(&sd15(PredictionType::Epsilon), 20)?;
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
        assert!(matches!(
            sampler.step(&[0.0], 20, &[0.0], &mut |n| vec![0.0; n]),
            Err(SamplerError::StepOutOfRange {
                step: 20,
                steps: 20
            })
        ));
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
            sampler.model_input_divisor(21),
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
    let mut euler_a = SamplerKind::EulerAncestral.build(&sd15(PredictionType::Epsilon), 20)?;
    assert!(matches!(
        euler_a.step(&[0.0, 0.0], 0, &[1.0, 1.0], &mut |_| vec![0.0]),
        Err(SamplerError::Length {
            what: "noise",
            expected: 2,
            found: 1
        })
    ));
    // diffusers' Euler ancestral has no `sample` prediction.
    assert!(matches!(
        SamplerKind::EulerAncestral.build(&sd15(PredictionType::Sample), 20),
        Err(SamplerError::UnsupportedPrediction { .. })
    ));
    assert!(matches!(
        SamplerKind::Ddim.build_with(
            &sd15(PredictionType::Epsilon),
            20,
            &SamplerOptions::with_eta(-1.0)
        ),
        Err(SamplerError::BadEta(_))
    ));
    // leading spacing with steps_offset 1 at 1000 steps reaches t = 1000: refused for DDIM.
    assert!(matches!(
        SamplerKind::Ddim.build(&sd15(PredictionType::Epsilon), 1000),
        Err(SamplerError::TimestepOutOfRange { .. })
    ));
    Ok(())
}

/// DDIM with eta > 0 draws one noise tensor per step; eta 0 draws none.
#[test]
fn ddim_draws_noise_only_with_eta() -> TestResult {
    let config = sd15(PredictionType::Epsilon);
    for (eta, expected_draws) in [(0.0, 0), (1.0, 20)] {
        let mut ddim = SamplerKind::Ddim.build_with(&config, 20, &SamplerOptions::with_eta(eta))?;
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

#[test]
fn scale_model_input() -> TestResult {
    let config = sd15(PredictionType::Epsilon);
    for kind in SamplerKind::ALL {
        let sampler = kind.build(&config, 20)?;
        let mut input = vec![2.0_f32, -4.0];
        sampler.scale_model_input(&mut input, 3)?;
        match sampler.sigmas() {
            Some(sigmas)
                if matches!(
                    kind,
                    SamplerKind::Euler | SamplerKind::EulerKarras | SamplerKind::EulerAncestral
                ) =>
            {
                let d = (sigmas[3] * sigmas[3] + 1.0).sqrt();
                close(&input, &[2.0 / d, -4.0 / d], 1e-6);
            }
            _ => assert_eq!(input, vec![2.0, -4.0], "{kind}: no input scaling"),
        }
    }
    Ok(())
}

/// `use_karras_sigmas: true` in the config is carried over, as by diffusers' `from_config`.
#[test]
fn karras_from_the_config() -> TestResult {
    let mut config = sd15(PredictionType::Epsilon);
    config.use_karras_sigmas = Some(true);
    assert_eq!(
        SamplerKind::Euler.build(&config, 20)?.kind(),
        SamplerKind::EulerKarras
    );
    assert_eq!(
        SamplerKind::DpmPP2M.build(&config, 20)?.kind(),
        SamplerKind::DpmPP2MKarras
    );
    // Not offered for Euler ancestral and DDIM.
    assert_eq!(
        SamplerKind::EulerAncestral.build(&config, 20)?.kind(),
        SamplerKind::EulerAncestral
    );
    assert_eq!(
        SamplerKind::Ddim.build(&config, 20)?.kind(),
        SamplerKind::Ddim
    );
    Ok(())
}

/// Without `timestep_spacing` each class uses its own default: linspace for Euler (fractional
/// timesteps, sigmas interpolated) and DPM-Solver, leading for DDIM.
#[test]
fn spacing_defaults_per_class() -> TestResult {
    let mut config = sd15(PredictionType::Epsilon);
    config.timestep_spacing = None;
    let euler = SamplerKind::Euler.build(&config, 7)?;
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

    let dpm = SamplerKind::DpmPP2M.build(&config, 7)?;
    assert_eq!(dpm.timesteps()[0], 999.0);
    assert!(dpm.timesteps().iter().all(|t| t.fract() == 0.0));
    let ddim = SamplerKind::Ddim.build(&config, 7)?;
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
    let euler = SamplerKind::Euler.build(&config, 4)?;
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
    let dpm = SamplerKind::DpmPP2MKarras.build(&config, 20)?;
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
    let euler = SamplerKind::Euler.build(&config, 20)?;
    let s = euler.sigmas().ok_or("sigmas")?[5];
    close(
        &euler.add_noise(&x, &n, 5)?,
        &[1.0 + 0.5 * s, -2.0 + 0.25 * s],
        1e-6,
    );
    let ddim = SamplerKind::Ddim.build(&config, 20)?;
    let acp = schedule::alphas_cumprod(&config)?[ddim.timesteps()[5] as usize];
    let (a, b) = (acp.sqrt(), (1.0 - acp).sqrt());
    close(
        &ddim.add_noise(&x, &n, 5)?,
        &[a + 0.5 * b, -2.0 * a + 0.25 * b],
        1e-6,
    );
    let dpm = SamplerKind::DpmPP2M.build(&config, 20)?;
    let s = dpm.sigmas().ok_or("sigmas")?[5];
    let alpha = 1.0 / (s * s + 1.0).sqrt();
    close(
        &dpm.add_noise(&x, &n, 5)?,
        &[alpha + 0.5 * s * alpha, -2.0 * alpha + 0.25 * s * alpha],
        1e-6,
    );
    Ok(())
}
