//! The samplers against diffusers 0.42.1: timesteps, sigmas and `init_noise_sigma` of every
//! scheduler in `shared/fixtures/tiny-sd-digits-refs/` (`refs.*`, `more_refs.*`) and of the
//! tiny architectures (`tiny-arch/*-refs.*`), and every recorded `scheduler.step` call replayed
//! without the UNet: the recorded `sample`, `model_output` and (for the stochastic samplers)
//! noise draws go into a fresh sampler and each `prev_sample` is compared. Every diffusers
//! scheduler of the fixtures is covered: Euler (plain, Karras), Euler ancestral, DDIM
//! (leading, trailing), DPM-Solver++ 2M (plain, Karras), Heun, KDPM2, KDPM2 ancestral, PNDM
//! and LCM. (DPM++ 2S ancestral and DPM++ 2M v2 have no diffusers class and so no reference
//! here; `sampler_rules.rs` and `sampler_convergence.rs` check them.)

use sd_test_support::fixtures;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use sd_core::config::{PredictionType, SchedulerConfig};
use sd_core::sampler::{Algorithm, Sampler, SamplerKind};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type AnyError = Box<dyn std::error::Error>;

fn refs_dir() -> PathBuf {
    fixtures().join("tiny-sd-digits-refs")
}

/// The tensors of one safetensors file, as f64 values with their shapes.
struct Tensors(HashMap<String, (Vec<usize>, Vec<f64>)>);

impl Tensors {
    fn load(path: &Path) -> Result<Self, AnyError> {
        let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = SafeTensors::deserialize(&bytes)?;
        let mut map = HashMap::new();
        for (name, view) in file.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
                Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        i64::from_le_bytes(b) as f64
                    })
                    .collect(),
                _ => continue,
            };
            map.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Self(map))
    }

    fn f64s(&self, name: &str) -> Result<&[f64], AnyError> {
        self.0
            .get(name)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| format!("no tensor `{name}`").into())
    }

    /// A tensor of f32 values split into its first dimension's rows.
    fn rows(&self, name: &str) -> Result<Vec<Vec<f32>>, AnyError> {
        let (shape, values) = self
            .0
            .get(name)
            .ok_or_else(|| format!("no tensor `{name}`"))?;
        let rows = *shape.first().ok_or("scalar tensor")?;
        let row_len = values.len() / rows;
        Ok(values
            .chunks_exact(row_len)
            .map(|row| row.iter().map(|&x| x as f32).collect())
            .collect())
    }
}

fn json(path: &Path) -> Result<serde_json::Value, AnyError> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The fixture's scheduler config (SD 1.5's PNDM config) with extra keys, like diffusers'
/// `from_config(config, **kwargs)`.
fn digits_config(extra: &[(&str, serde_json::Value)]) -> Result<SchedulerConfig, AnyError> {
    let path = fixtures().join("tiny-sd-digits/scheduler/scheduler_config.json");
    let mut value = json(&path)?;
    let object = value.as_object_mut().ok_or("config is not an object")?;
    for (key, v) in extra {
        object.insert((*key).into(), v.clone());
    }
    Ok(SchedulerConfig::from_json(
        "scheduler_config.json",
        &serde_json::to_string(&value)?,
    )?)
}

/// A sampler of the fixture runs, by the run's name in the reference files.
fn run_sampler(run: &str) -> Result<(Box<dyn Sampler>, usize), AnyError> {
    use serde_json::json;
    let (kind, extra, steps) = match run {
        "euler" | "euler_negative" | "euler_nocfg" => (SamplerKind::EULER, vec![], 20),
        "euler_karras" => (SamplerKind::EULER_KARRAS, vec![], 20),
        "euler_a" => (SamplerKind::EULER_A, vec![], 20),
        "ddim" => (SamplerKind::DDIM, vec![], 20),
        "ddim_trailing" => (
            SamplerKind::DDIM,
            vec![("timestep_spacing", json!("trailing"))],
            20,
        ),
        "dpmpp_2m" => (SamplerKind::DPMPP_2M, vec![], 20),
        "dpmpp_2m_karras" => (SamplerKind::DPMPP_2M_KARRAS, vec![], 20),
        "heun" => (SamplerKind::HEUN, vec![], 10),
        "dpm2" => (SamplerKind::DPM2, vec![], 10),
        "dpm2_a" => (SamplerKind::DPM2_A, vec![], 10),
        "pndm" => (SamplerKind::PNDM, vec![], 20),
        "lcm" => (SamplerKind::LCM, vec![], 8),
        other => return Err(format!("no sampler for run `{other}`").into()),
    };
    let config = digits_config(&extra)?;
    Ok((kind.build(&config, steps)?, steps))
}

/// The distance in float32 ulps between two values that are float32 numbers.
fn ulps(a: f64, b: f64) -> u32 {
    let (a, b) = (a as f32, b as f32);
    if a == b {
        return 0;
    }
    // Both have the same sign in every schedule here; count representable steps.
    a.to_bits().abs_diff(b.to_bits())
}

/// Largest absolute difference and largest ulp distance.
fn diff(ours: &[f64], theirs: &[f64]) -> (f64, u32) {
    assert_eq!(ours.len(), theirs.len(), "lengths differ");
    let mut max = 0.0_f64;
    let mut max_ulps = 0;
    for (&a, &b) in ours.iter().zip(theirs) {
        max = max.max((a - b).abs());
        max_ulps = max_ulps.max(ulps(a, b));
    }
    (max, max_ulps)
}

/// How far a timestep of `more_refs` may be from ours. Euler's Karras timesteps and the
/// midpoint timesteps of DPM2 and DPM2 ancestral interpolate in the log of the training
/// sigmas, so a one-ulp difference in a sigma of the table (see
/// [`schedules_of_the_second_reference_file`]) moves them by up to a few float32 ulps (at
/// t = 3.76, 2 ulps = 5e-7; at DPM2's midpoint t = 852.78, 1 ulp = 6.1e-5, the largest
/// difference seen); for the UNet's time embedding that is nothing. (DPM2's midpoint
/// `_sigma_to_t` runs in float32 in diffusers; computing it in float64 instead misses more of
/// the recorded values, so the float32 emulation is kept.) The whole-number timesteps (Heun,
/// PNDM, LCM, DDIM, the spaced ones of DPM2) are equal.
const T_TOLERANCE_MORE_REFS: f64 = 1e-4;

/// Checks timesteps, sigmas and init_noise_sigma of `run` against `<run>_timesteps`,
/// `<run>_sigmas` of `tensors`: sigmas and init_noise_sigma to `max_ulps` float32 ulps,
/// timesteps to `t_tolerance`.
fn check_schedule(
    run: &str,
    tensors: &Tensors,
    init_noise_sigma: Option<f64>,
    max_ulps: u32,
    t_tolerance: f64,
) -> TestResult {
    let (sampler, steps) = run_sampler(run)?;
    let timesteps = tensors.f64s(&format!("{run}_timesteps"))?;
    // One timestep per model call: `steps` of them, `2 * steps - 1` for the two-call
    // samplers, `steps + 1` for PNDM.
    let calls = match sampler.kind().algorithm {
        Algorithm::Pndm => steps + 1,
        _ => sampler.order() * steps - (sampler.order() - 1),
    };
    assert_eq!(sampler.timesteps().len(), calls, "{run}: model calls");
    let (t_max, t_ulps) = diff(sampler.timesteps(), timesteps);
    let (mut s_max, mut s_ulps) = (0.0, 0);
    if let Ok(sigmas) = tensors.f64s(&format!("{run}_sigmas")) {
        let ours = sampler.sigmas().ok_or("sampler has no sigmas")?;
        (s_max, s_ulps) = diff(ours, sigmas);
    }
    let init = init_noise_sigma.map(|expected| sampler.init_noise_sigma() - expected);
    println!(
        "{run}: timesteps max diff {t_max:e} ({t_ulps} ulp), sigmas max diff {s_max:e} ({s_ulps} ulp), init_noise_sigma diff {init:?}"
    );
    assert!(
        t_max <= t_tolerance,
        "{run}: timesteps: ours {:?}",
        sampler.timesteps()
    );
    assert!(
        s_ulps <= max_ulps,
        "{run}: sigmas: ours {:?}",
        sampler.sigmas()
    );
    if let Some(expected) = init_noise_sigma {
        let got = sampler.init_noise_sigma();
        assert!(
            ulps(got, expected) <= max_ulps,
            "{run}: init_noise_sigma {got} vs {expected}"
        );
    }
    Ok(())
}

#[test]
fn schedules_of_the_first_reference_file() -> TestResult {
    let tensors = Tensors::load(&refs_dir().join("refs.safetensors"))?;
    let meta = json(&refs_dir().join("refs.json"))?;
    for run in ["euler", "ddim", "dpmpp_2m"] {
        let init = meta["schedulers"][run]["init_noise_sigma"].as_f64();
        check_schedule(run, &tensors, init, 0, 0.0)?;
    }
    Ok(())
}

/// `more_refs` was made with another torch (2.15) than `refs` (2.11), and the two disagree with
/// each other: the same Euler schedule (same config, same timesteps) has sigmas 12, 15 and 18 one
/// float32 ulp apart (torch 2.15 evidently computes `** 0.5` without a correctly rounded sqrt).
/// We reproduce `refs` bit for bit, so here one ulp is allowed (and the step replays below,
/// which use these sigmas, stay within 1e-6).
#[test]
fn schedules_of_the_second_reference_file() -> TestResult {
    let tensors = Tensors::load(&refs_dir().join("more_refs.safetensors"))?;
    let meta = json(&refs_dir().join("more_refs.json"))?;
    for run in [
        "euler_karras",
        "euler_a",
        "dpmpp_2m_karras",
        "ddim_trailing",
        "euler_negative",
        "euler_nocfg",
        "heun",
        "dpm2",
        "dpm2_a",
        "pndm",
        "lcm",
    ] {
        let init = meta["runs"][run]["init_noise_sigma"].as_f64();
        check_schedule(run, &tensors, init, 1, T_TOLERANCE_MORE_REFS)?;
    }
    Ok(())
}

/// Replays every recorded step call of `run`; returns the largest error of `prev_sample`.
fn replay_steps(run: &str, tensors: &Tensors, init_latents: &[f32]) -> Result<f64, AnyError> {
    let (mut sampler, _) = run_sampler(run)?;
    let samples = tensors.rows(&format!("{run}_step_sample"))?;
    let outputs = tensors.rows(&format!("{run}_step_model_output"))?;
    let expected = tensors.rows(&format!("{run}_step_prev_sample"))?;
    let step_timesteps = tensors.f64s(&format!("{run}_step_timestep"))?;
    let noise = tensors.rows(&format!("{run}_noise")).unwrap_or_default();
    assert_eq!(
        samples.len(),
        sampler.timesteps().len(),
        "{run}: step count"
    );

    // The recorded `sample` is the unscaled latents: the first is init_latents times
    // init_noise_sigma, each next one the previous step's output. (scale_model_input only
    // feeds the UNet.)
    let sigma = sampler.init_noise_sigma() as f32;
    let first: Vec<f32> = init_latents.iter().map(|x| x * sigma).collect();
    assert_eq!(
        samples[0], first,
        "{run}: first sample is init_latents * init_noise_sigma"
    );

    let mut draws = noise.iter();
    let mut drawn = 0;
    let mut max_err = 0.0_f64;
    for (step, ((sample, output), want)) in samples.iter().zip(&outputs).zip(&expected).enumerate()
    {
        let t_err = (sampler.timesteps()[step] - step_timesteps[step]).abs();
        assert!(t_err <= T_TOLERANCE_MORE_REFS, "{run}: t of step {step}");
        if step > 0 {
            assert_eq!(
                sample,
                &expected[step - 1],
                "{run}: sample {step} is the last output"
            );
        }
        let got = sampler.step(output, step, sample, &mut |n| {
            drawn += 1;
            draws
                .next()
                .map(|d| d[..n.min(d.len())].to_vec())
                .unwrap_or_default()
        })?;
        let err = got
            .iter()
            .zip(want)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max);
        max_err = max_err.max(err);
    }
    assert_eq!(drawn, noise.len(), "{run}: noise draws");
    println!(
        "{run}: {} steps, max |prev_sample error| {max_err:e}",
        samples.len()
    );
    Ok(max_err)
}

/// Every `scheduler.step` call of the `more_refs` runs (for the two-call samplers, every
/// call: `2 * steps - 1`; for PNDM `steps + 1`; with the recorded noise draws for Euler
/// ancestral, DPM2 ancestral and LCM). The step arithmetic is float32 in diffusers' order, so
/// where our sigmas equal the recorded ones (`euler_karras`) the outputs are bit-identical
/// (tolerance 0); elsewhere the one-ulp sigma (or `alphas_cumprod`-derived) differences of
/// `more_refs` (see [`schedules_of_the_second_reference_file`]) leave at most about one ulp
/// of the latents, whose values reach 20 to 30 (one float32 ulp there is 1.9e-6): tolerance
/// 4e-6, two ulps. Seen: euler_a 1.9e-6, dpmpp_2m_karras 7.2e-7, ddim_trailing 4.8e-7,
/// euler_negative / euler_nocfg 4.8e-7, heun 2.4e-7, dpm2 4.8e-7, dpm2_a 6.0e-7, pndm 4.8e-7,
/// lcm 3.6e-7.
#[test]
fn every_recorded_step_call() -> TestResult {
    let refs = Tensors::load(&refs_dir().join("refs.safetensors"))?;
    let more = Tensors::load(&refs_dir().join("more_refs.safetensors"))?;
    let init: Vec<f32> = refs.rows("init_latents")?.concat();
    for (run, tolerance) in [
        ("euler_karras", 0.0),
        ("euler_a", 4e-6),
        ("dpmpp_2m_karras", 4e-6),
        ("ddim_trailing", 4e-6),
        ("euler_negative", 4e-6),
        ("euler_nocfg", 4e-6),
        ("heun", 4e-6),
        ("dpm2", 4e-6),
        ("dpm2_a", 4e-6),
        ("pndm", 4e-6),
        ("lcm", 4e-6),
    ] {
        let err = replay_steps(run, &more, &init)?;
        assert!(err <= tolerance, "{run}: max error {err:e}");
    }
    Ok(())
}

/// img2img starts from `add_noise(input latents, noise, timesteps[start])`: Euler at
/// strength 0.5 (start step 10 of 20), DDIM at 0.8 (start step 4 of 20).
#[test]
fn add_noise_of_img2img() -> TestResult {
    let more = Tensors::load(&refs_dir().join("more_refs.safetensors"))?;
    let latents = more.rows("img2img_input_latents")?.concat();
    for (run, kind, start) in [
        ("img2img_euler_s05", SamplerKind::EULER, 10),
        ("img2img_ddim_s08", SamplerKind::DDIM, 4),
    ] {
        let sampler = kind.build(&digits_config(&[])?, 20)?;
        let noise = more.rows(&format!("{run}_noise"))?.concat();
        let first = more.rows(&format!("{run}_step_sample"))?;
        let t = more.f64s(&format!("{run}_step_timestep"))?;
        assert_eq!(
            &sampler.timesteps()[start..],
            t,
            "{run}: timesteps from the start step"
        );
        let noised = sampler.add_noise(&latents, &noise, start)?;
        let err = noised
            .iter()
            .zip(&first[0])
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max);
        println!("{run}: add_noise max error {err:e}");
        assert!(err <= 1e-6, "{run}: add_noise error {err:e}");
    }
    Ok(())
}

/// The timesteps of the tiny architectures' runs, from their own scheduler configs: SD 2's
/// DDIM (v-prediction, leading, 10 steps), SD-Turbo's Euler (trailing, 1 step), SDXL's Euler
/// (leading, 10 steps) and the LCM model's LCM scheduler (4 steps: 999, 759, 499, 259, which
/// ignore its `steps_offset` and `leading` spacing).
#[test]
fn schedules_of_the_tiny_architectures() -> TestResult {
    for (name, kind, steps) in [
        ("sd2-v", SamplerKind::DDIM, 10),
        ("turbo", SamplerKind::EULER, 1),
        ("sdxl", SamplerKind::EULER, 10),
        ("lcm", SamplerKind::LCM, 4),
    ] {
        let dir = fixtures().join("tiny-arch");
        let text = fs::read_to_string(dir.join(name).join("scheduler/scheduler_config.json"))?;
        let config = SchedulerConfig::from_json("scheduler_config.json", &text)?;
        let sampler = kind.build(&config, steps)?;
        let tensors = Tensors::load(&dir.join(format!("{name}-refs.safetensors")))?;
        assert_eq!(
            sampler.timesteps(),
            tensors.f64s("run_timesteps")?,
            "{name}"
        );
        if name == "sd2-v" {
            assert_eq!(config.prediction_type, PredictionType::VPrediction);
        }
        if name == "turbo" {
            // trailing: init_noise_sigma is the largest sigma itself (no sqrt(sigma^2 + 1)).
            let sigmas = sampler.sigmas().ok_or("euler has sigmas")?;
            assert_eq!(sampler.init_noise_sigma(), sigmas[0]);
            assert_eq!(sampler.timesteps(), &[999.0]);
        }
    }
    Ok(())
}
