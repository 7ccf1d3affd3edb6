//! PNDM (`pndm`, AUTOMATIC1111's "PLMS"): Liu et al.'s pseudo numerical methods for diffusion
//! models, the pseudo linear multistep variant: DDIM's transfer step (their equation 9) fed with
//! an Adams-Bashforth combination of the last model outputs.
//!
//! Mirrors `PNDMScheduler` of diffusers 0.42 (`diffusers/schedulers/scheduling_pndm.py`) with
//! `skip_prk_steps: true`, as SD checkpoints configure it (the Runge-Kutta warm-up of
//! `skip_prk_steps: false` is not implemented: we always run the PLMS steps), and the class's
//! defaults for keys the config lacks (`timestep_spacing: leading`, `set_alpha_to_one: false`).
//! It has no `rescale_betas_zero_snr`, no clipping and no `sample` prediction (refused, as
//! diffusers raises). With `r = T // steps` and the spaced timesteps `t(0) > ... > t(n-1)`,
//! the model is called `steps + 1` times, at `[t0, t1, t1, t2, ..., t(n-1)]`:
//!
//! - call 0: DDIM-like transfer from `t0` to `t0 - r` with the output `e0`, remembering the
//!   sample (a first Euler step);
//! - call 1: the output at the Euler point averaged with `e0`, the transfer redone from the
//!   remembered sample from `t0` to `t1` (a Heun step);
//! - then Adams-Bashforth on the outputs kept (`e1` on, the second call's output is not
//!   kept): `(3 e[-1] - e[-2]) / 2`, `(23 e[-1] - 16 e[-2] + 5 e[-3]) / 12`, and from the
//!   fourth on `(55 e[-1] - 59 e[-2] + 37 e[-3] - 9 e[-4]) / 24`, each step from `t` to `t - r`
//!   (the last to `alphas_cumprod[0]`).
//!
//! The transfer, with `a = acp(t)`, `a' = acp(t')`: `x' = (a' / a) ** 0.5 x - (a' - a) e /
//! (a (1 - a') ** 0.5 + (a (1 - a) a') ** 0.5)` (float32, in diffusers' order). The counter
//! starts at the first call made, so img2img may start anywhere; later calls must follow in
//! order.

use alloc::vec::Vec;

use super::common::{
    Schedule, check_training_range, final_alpha_cumprod, plain_alphas_cumprod, whole_timesteps,
};
use super::program::{Expr, OUTPUT, SAMPLE, StepProgram, kept};
use super::{Sampler, SamplerError, SamplerKind, check_next, refuse_sample_prediction};
use crate::config::{PredictionType, SchedulerConfig};

/// The PNDM (PLMS) sampler. It remembers the previous model outputs, so steps must be taken in
/// order.
#[derive(Debug, Clone)]
pub struct Pndm {
    schedule: Schedule,
    prediction: PredictionType,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    /// `num_train_timesteps // steps`.
    step_ratio: usize,
    /// The index of the last call and how many calls were made.
    last: Option<usize>,
    counter: usize,
    /// How many model outputs are kept for the multistep combination (`ets`, at most 4;
    /// kept buffers `0..ets`, oldest first).
    ets: usize,
    /// Whether the first call's sample is kept for the second (kept buffer `ets`).
    cur_sample: bool,
    host_kept: Vec<Vec<f32>>,
}

impl Pndm {
    /// The sampler for `steps` steps (`steps + 1` model calls; 1 for a single step).
    ///
    /// # Errors
    ///
    /// [`SamplerError::Schedule`], [`SamplerError::UnsupportedPrediction`] for `sample` and
    /// [`SamplerError::TimestepOutOfRange`].
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SamplerError> {
        refuse_sample_prediction(config, SamplerKind::PNDM.name())?;
        let alphas_cumprod = plain_alphas_cumprod(config)?;
        let num_train = config.num_train_timesteps;
        // diffusers' `_timesteps`, ascending.
        let mut spaced = whole_timesteps(config, steps)?;
        spaced.reverse();
        check_training_range(&spaced, num_train)?;
        // plms_timesteps = concat([_ts[:-1], _ts[-2:-1], _ts[-1:]])[::-1].
        let n = spaced.len();
        let mut plms: Vec<f64> = spaced[..n - 1].to_vec();
        if n >= 2 {
            plms.push(spaced[n - 2]);
        }
        plms.push(spaced[n - 1]);
        plms.reverse();
        Ok(Self {
            schedule: Schedule::without_sigmas(SamplerKind::PNDM, plms, &alphas_cumprod),
            prediction: config.prediction_type,
            final_alpha_cumprod: final_alpha_cumprod(config, false, &alphas_cumprod),
            alphas_cumprod,
            step_ratio: num_train / steps,
            last: None,
            counter: 0,
            ets: 0,
            cur_sample: false,
            host_kept: Vec::new(),
        })
    }

    /// `alphas_cumprod` at a (possibly negative) timestep: the final value before timestep 0.
    fn alpha_at(&self, t: i64) -> Result<f32, SamplerError> {
        if t < 0 {
            return Ok(self.final_alpha_cumprod as f32);
        }
        self.alphas_cumprod
            .get(t as usize)
            .map(|&a| a as f32)
            .ok_or(SamplerError::TimestepOutOfRange {
                timestep: t as f64,
                num_train_timesteps: self.alphas_cumprod.len(),
            })
    }

    /// diffusers' `_get_prev_sample`: DDIM's transfer of `sample` from `t` to `prev_t` with
    /// the combined model output.
    fn prev_sample(
        &self,
        sample: Expr,
        t: i64,
        prev_t: i64,
        model_output: Expr,
    ) -> Result<Expr, SamplerError> {
        let alpha_prod_t = self.alpha_at(t)?;
        let alpha_prod_prev = self.alpha_at(prev_t)?;
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_prev = 1.0 - alpha_prod_prev;
        let (sqrt_alpha, sqrt_beta) = (libm::sqrtf(alpha_prod_t), libm::sqrtf(beta_prod_t));
        let sample_coeff = libm::sqrtf(alpha_prod_prev / alpha_prod_t);
        let denom = alpha_prod_t * libm::sqrtf(beta_prod_prev)
            + libm::sqrtf(alpha_prod_t * beta_prod_t * alpha_prod_prev);
        let diff = alpha_prod_prev - alpha_prod_t;
        let eps = match self.prediction {
            PredictionType::VPrediction => sqrt_alpha * model_output + sqrt_beta * sample.clone(),
            _ => model_output,
        };
        Ok(sample_coeff * sample - diff * eps / denom)
    }
}

impl Sampler for Pndm {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn host_kept(&mut self) -> &mut Vec<Vec<f32>> {
        &mut self.host_kept
    }

    fn program(&mut self, step: usize) -> Result<StepProgram, SamplerError> {
        self.schedule.check_step(step)?;
        check_next(SamplerKind::PNDM.name(), self.last, step)?;
        let ratio = self.step_ratio as i64;
        let mut t = self.schedule.timesteps[step] as i64;
        let mut prev_t = t - ratio;
        // The kept buffers: the outputs `ets` (oldest first), then the first call's sample.
        let mut ets: Vec<Expr> = (0..self.ets).map(|k| kept(k as u8)).collect();
        let cur_sample = self.cur_sample.then(|| kept(self.ets as u8));
        if self.counter != 1 {
            if ets.len() > 3 {
                ets.remove(0);
            }
            ets.push(OUTPUT);
        } else {
            prev_t = t;
            t += ratio;
        }
        let first_of_two = ets.len() == 1 && self.counter == 0;
        let second_of_two = ets.len() == 1 && self.counter == 1;
        let (from, keep_sample) = match cur_sample {
            _ if first_of_two => (SAMPLE, Some(SAMPLE)),
            Some(cur_sample) if second_of_two => (cur_sample, None),
            other => (SAMPLE, other),
        };
        let e = &ets;
        let combined = match e.len() {
            _ if first_of_two => OUTPUT,
            _ if second_of_two => (OUTPUT + e[0].clone()) / 2.0,
            2 => (3.0 * e[1].clone() - e[0].clone()) / 2.0,
            3 => (23.0 * e[2].clone() - 16.0 * e[1].clone() + 5.0 * e[0].clone()) / 12.0,
            _ => {
                let c = (1.0_f64 / 24.0) as f32;
                c * (55.0 * e[3].clone() - 59.0 * e[2].clone() + 37.0 * e[1].clone()
                    - 9.0 * e[0].clone())
            }
        };
        let prev = self.prev_sample(from, t, prev_t, combined)?;
        self.counter += 1;
        self.last = Some(step);
        self.ets = ets.len();
        self.cur_sample = keep_sample.is_some();
        ets.extend(keep_sample);
        Ok(StepProgram::next(prev).keeping(ets))
    }
}
