//! An image group's UNet on the GPU: one call with host latents ([`NoisePredictor::predict`]),
//! or the whole denoising loop with the latents, the guidance and the samplers' steps on the
//! GPU ([`NoisePredictor::denoise_on_device`]).
//!
//! The loop records each step as one batch: the UNet input (each image's latents divided by
//! the sampler's input scale, twice under CFG, with a 9-channel UNet's extra channels), the
//! UNet, then per image the sampler's step program (`ops::step_program`, which reads the
//! guided output from the prediction's rows in place) and the inpainting blend. Nothing is read
//! back inside the loop: the noise is drawn on the host from the same generators as on the
//! host path and uploaded, previews are read back without waiting and delivered when they
//! arrive, and the host waits only for the step before the one the GPU is running, so the next
//! step is recorded while the GPU runs the current one.

use std::collections::VecDeque;

use sd_core::progress::Stage;
use sd_core::sampler::program::{Expr, Input, SAMPLE, StepProgram};
use sd_core::sampler::{Bytecode, Sampler};
use sd_kernels::ops::{self, ModelOutput, StepCode, StepInputs};
use sd_kernels::{Batch, Fence, GpuContext, PendingRead, Tensor};

use super::models::{TextKeysValues, UNetConditioning};
use super::networks::GpuNetworks;
use crate::backend::{BoxFuture, DenoiseLoop, NoisePredictor, UNetInputs};
use crate::{ModelError, Result};

/// An image group's UNet conditioning on the GPU.
pub(super) struct GpuUNetCall<'a> {
    networks: &'a GpuNetworks,
    /// The text hidden states, until the first call projects them.
    context: Tensor,
    /// The text's keys and values, projected by the first call (in its batch) and read by
    /// every call.
    text: std::sync::OnceLock<TextKeysValues>,
    timestep_cond: Option<Tensor>,
    text_embeds: Option<Tensor>,
    time_ids: Option<Tensor>,
}

impl<'a> GpuUNetCall<'a> {
    /// Uploads the group's conditioning.
    pub(super) fn new(networks: &'a GpuNetworks, inputs: &UNetInputs) -> Result<Self> {
        let ctx = &networks.ctx;
        let upload = |values: &Option<Vec<f32>>| -> Result<Option<Tensor>> {
            values
                .as_ref()
                .map(|v| {
                    let rows = inputs.rows();
                    ctx.upload_f32(v, &[rows, v.len() / rows])
                })
                .transpose()
                .map_err(ModelError::from)
        };
        Ok(Self {
            networks,
            context: ctx.upload_f32(&inputs.context, &inputs.context_shape)?,
            text: std::sync::OnceLock::new(),
            timestep_cond: upload(&inputs.timestep_cond)?,
            text_embeds: upload(&inputs.text_embeds)?,
            time_ids: upload(&inputs.time_ids)?,
        })
    }

    fn ctx(&self) -> &'a GpuContext {
        &self.networks.ctx
    }

    /// Records one UNet call on `sample` at the timesteps `timestep` `[B]` into `batch`;
    /// returns the prediction and, for the group's first call, the text's keys and values it
    /// projected (to [`Self::keep_text`] once the batch is submitted).
    fn record(
        &self,
        batch: &mut Batch<'_>,
        sample: &Tensor,
        timestep: &Tensor,
    ) -> Result<(Tensor, Option<TextKeysValues>)> {
        let cond = UNetConditioning {
            timestep_cond: self.timestep_cond.as_ref(),
            text_embeds: self.text_embeds.as_ref(),
            time_ids: self.time_ids.as_ref(),
        };
        let unet = &self.networks.unet;
        let mut fresh = None;
        let text = match self.text.get() {
            Some(kept) => kept,
            None => &*fresh.insert(unet.project_context(batch, &self.context)?),
        };
        let out = unet.forward(batch, sample, timestep, text, &cond)?;
        Ok((out, fresh))
    }

    /// Keeps the first call's projected text for the later calls, once its batch has been
    /// submitted (another call of the group may have kept its own first; either is the same).
    fn keep_text(&self, fresh: Option<TextKeysValues>) {
        if let Some(text) = fresh {
            let _ = self.text.set(text);
        }
    }

    async fn predict_async(&self, latents: &[f32], shape: [usize; 4], t: f32) -> Result<Vec<f32>> {
        let ctx = self.ctx();
        let sample = ctx.upload_f32(latents, &shape)?;
        let timestep = ctx.upload_f32(&vec![t; shape[0]], &[shape[0]])?;
        let mut batch = ctx.batch();
        let (out, fresh) = self.record(&mut batch, &sample, &timestep)?;
        batch.submit().await?;
        self.keep_text(fresh);
        Ok(ctx.read_f32(&out).await?)
    }

    async fn denoise_async(&self, run: DenoiseLoop<'_>) -> Result<()> {
        let DenoiseLoop {
            samplers,
            rngs,
            latents,
            calls,
            shape: (h, w),
            guidance,
            unet_extra,
            blend,
            on_stage,
            mut on_step,
            check,
        } = run;
        let ctx = self.ctx();
        let (images, len) = (latents.len(), 4 * h * w);
        let extra_len = unet_extra.map_or(0, <[f32]>::len);
        let in_channels = 4 + extra_len / (h * w);
        let rows = if guidance.is_some() {
            2 * images
        } else {
            images
        };
        let mismatch = |message: String| ModelError::Mismatch {
            op: "denoise".into(),
            message,
        };
        let blended = blend.map(|b| (b.image_latents.len(), b.start_noise.len()));
        if samplers.len() != images
            || rngs.len() != images
            || blended.is_some_and(|(x0, noise)| x0 != images || noise != images)
        {
            return Err(mismatch(format!(
                "{images} images but {} samplers, {} noise generators, blend inputs {blended:?}",
                samplers.len(),
                rngs.len()
            )));
        }
        if extra_len % (h * w) != 0 || blend.is_some_and(|b| b.mask.len() != h * w) {
            return Err(mismatch(format!(
                "extra channels ({extra_len} values) or mask not whole {h}x{w} planes"
            )));
        }
        let Some(timesteps) = samplers.first().map(|s| s.timesteps().to_vec()) else {
            return Ok(());
        };
        let total = calls.len();
        on_stage(Stage::Diffusion { step: 0, total });
        if total == 0 {
            return Ok(()); // strength 0: the latents are the input's
        }

        let mut x = latents
            .iter()
            .map(|l| ctx.upload_f32(l, &[len]))
            .collect::<sd_kernels::Result<Vec<_>>>()?;
        let mut kept: Vec<Option<Tensor>> = vec![None; images];
        // Each image's noise, rewritten in place at the calls that draw it (after the batch
        // that read the last draw was submitted).
        let mut noise: Vec<Option<Tensor>> = vec![None; images];
        let extra = unet_extra
            .map(|e| ctx.upload_f32(e, &[e.len()]))
            .transpose()?;
        // Each blended image's clean latents, starting noise and mask, packed as the step
        // interpreter reads them.
        let blend_inputs = match &blend {
            Some(b) => (0..images)
                .map(|k| match &b.image_latents[k] {
                    Some(x0) => {
                        let packed = [&x0[..], &b.start_noise[k], b.mask].concat();
                        ctx.upload_f32(&packed, &[packed.len()]).map(Some)
                    }
                    None => Ok(None),
                })
                .collect::<sd_kernels::Result<Vec<_>>>()?,
            None => vec![None; images],
        };
        // The UNet call is recorded once, on fixed input and output tensors, and replayed at
        // every step: its pipelines, uniforms and bind groups are built once per generation.
        let sample = ctx.empty(&[rows, in_channels, h, w], sd_kernels::DType::F32)?;
        let timestep = ctx.upload_f32(&vec![0.0; rows], &[rows])?;
        if let Some(extra) = &extra {
            // A 9-channel UNet's mask and masked-image latents, the same every step.
            let mut batch = ctx.batch();
            for row in 0..rows {
                let at = row * in_channels * h * w + len;
                batch.copy_f32(extra, 0, &sample, at, extra_len)?;
            }
            batch.submit().await?;
        }
        let (prediction, unet_call) = self.record_once(&sample, &timestep).await?;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();

        for (done, call) in calls.clone().enumerate() {
            check()?;
            self.deliver(&mut in_flight, &mut on_step, on_stage, total, false)
                .await?;
            // The previous step's batch, which reads the timestep, is submitted already.
            ctx.write_f32(&timestep, &vec![timesteps[call] as f32; rows])?;
            let mut batch = ctx.batch();
            // The UNet input: `[negative x images, prompt x images]` rows of each image's
            // scaled latents. The pipeline builds every image's sampler alike, so the first
            // one's input scale is every one's.
            let divisor = samplers[0].model_input_divisor(call)?;
            let scale = StepProgram::next(SAMPLE / divisor).compile()?;
            for (k, latents) in x.iter().enumerate() {
                let scaled = ctx.empty(&[len], sd_kernels::DType::F32)?;
                ops::step_program(&mut batch, code(&scale), None, only(latents), &scaled, None)?;
                let copies = [Some(k), guidance.map(|_| images + k)];
                for row in copies.into_iter().flatten() {
                    batch.copy_f32(&scaled, 0, &sample, row * in_channels * h * w, len)?;
                }
            }
            batch.replay(&unet_call);
            for k in 0..images {
                let program = samplers[k].program(call)?.compile()?;
                let draws = program.reads(Input::Noise);
                if draws {
                    let drawn = rngs[k].normals(len);
                    match &noise[k] {
                        Some(t) => ctx.write_f32(t, &drawn)?,
                        None => noise[k] = Some(ctx.upload_f32(&drawn, &[len])?),
                    }
                }
                let next = ctx.empty(&[len], sd_kernels::DType::F32)?;
                let kept_out = match program.keeps() {
                    0 => None,
                    keeps => Some(ctx.empty(&[keeps * len], sd_kernels::DType::F32)?),
                };
                let output = ModelOutput {
                    prediction: &prediction,
                    cond_offset: guidance.map_or(k, |_| images + k) * len,
                    guidance: guidance.map(|g| (k * len, g)),
                };
                let inputs = StepInputs {
                    noise: noise[k].as_ref().filter(|_| draws),
                    kept: kept[k].as_ref(),
                    ..only(&x[k])
                };
                ops::step_program(
                    &mut batch,
                    code(&program),
                    Some(output),
                    inputs,
                    &next,
                    kept_out.as_ref(),
                )?;
                x[k] = match &blend_inputs[k] {
                    Some(packed) => {
                        let blended = ctx.empty(&[len], sd_kernels::DType::F32)?;
                        let program = blend_program(samplers[k].as_ref(), call)?.compile()?;
                        let inputs = StepInputs {
                            image: Some((packed, h * w)),
                            ..only(&next)
                        };
                        ops::step_program(
                            &mut batch,
                            code(&program),
                            None,
                            inputs,
                            &blended,
                            None,
                        )?;
                        blended
                    }
                    None => next,
                };
                kept[k] = kept_out;
            }
            batch.submit().await?;
            in_flight.push_back(InFlight {
                done,
                previews: match on_step {
                    Some(_) => x
                        .iter()
                        .map(|t| ctx.start_read_f32(t))
                        .collect::<sd_kernels::Result<_>>()?,
                    None => Vec::new(),
                },
                fence: ctx.fence(),
            });
            // Wait for the step before this one: the GPU has this one queued while the next
            // is recorded.
            while in_flight.len() > 1 {
                self.deliver(&mut in_flight, &mut on_step, on_stage, total, true)
                    .await?;
            }
        }
        while !in_flight.is_empty() {
            self.deliver(&mut in_flight, &mut on_step, on_stage, total, true)
                .await?;
        }
        for (host, device) in latents.iter_mut().zip(&x) {
            *host = ctx.read_f32(device).await?;
        }
        Ok(())
    }

    /// Projects the text (unless an earlier call did) in a batch of its own, so that the
    /// recording holds only the UNet call, and records that call on `sample` and `timestep`
    /// for replaying; returns its output tensor and the recording.
    async fn record_once(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
    ) -> Result<(Tensor, sd_kernels::Recorded)> {
        let ctx = self.ctx();
        if self.text.get().is_none() {
            let mut batch = ctx.batch();
            let text = self
                .networks
                .unet
                .project_context(&mut batch, &self.context)?;
            batch.submit().await?;
            self.keep_text(Some(text));
        }
        let mut batch = ctx.batch();
        let (prediction, _) = self.record(&mut batch, sample, timestep)?;
        Ok((prediction, batch.finish_recording().await?))
    }

    /// Reports the oldest step in flight once the GPU has finished it (its previews to
    /// `on_step`, then its `Stage::Diffusion`): waiting for it with `wait`, else only if it
    /// has finished already.
    async fn deliver(
        &self,
        in_flight: &mut VecDeque<InFlight>,
        on_step: &mut Option<crate::pipeline::StepObserver<'_>>,
        on_stage: &mut dyn FnMut(Stage),
        total: usize,
        wait: bool,
    ) -> Result<()> {
        let ctx = self.ctx();
        let Some(oldest) = in_flight.front_mut() else {
            return Ok(());
        };
        if !wait && !oldest.fence.is_done(ctx)? {
            return Ok(());
        }
        let Some(step) = in_flight.pop_front() else {
            return Ok(());
        };
        for preview in step.previews {
            let latents = preview.wait(ctx).await?;
            if let Some(f) = on_step.as_mut() {
                f(step.done, &latents);
            }
        }
        step.fence.wait(ctx).await?;
        on_stage(Stage::Diffusion {
            step: step.done + 1,
            total,
        });
        Ok(())
    }
}

/// A submitted step not yet reported.
struct InFlight {
    /// Its index among the loop's calls.
    done: usize,
    /// Each image's latents after it, being read back (when previews are asked for).
    previews: Vec<PendingRead>,
    /// Passed once the GPU has finished it.
    fence: Fence,
}

fn code(bytecode: &Bytecode) -> StepCode<'_> {
    StepCode {
        instructions: bytecode.instructions(),
        constants: bytecode.constants(),
    }
}

/// Step inputs of a program that reads only `sample`.
fn only(sample: &Tensor) -> StepInputs<'_> {
    StepInputs {
        sample,
        noise: None,
        kept: None,
        image: None,
    }
}

/// diffusers' inpainting blend after call `call`: the known region, noised to the next call's
/// level by the sampler's `add_noise` (the clean latents after the last call), replaces the
/// sampler's result where the mask is 0: `(1 - mask) * known + mask * x`.
fn blend_program(sampler: &dyn Sampler, call: usize) -> Result<StepProgram> {
    let image = Expr::Input(Input::Image);
    let known = match call + 1 < sampler.timesteps().len() {
        true => sampler
            .schedule()
            .noising(call + 1, image, Expr::Input(Input::StartNoise))?,
        false => image,
    };
    let mask = Expr::Input(Input::Mask);
    Ok(StepProgram::next(
        (1.0 - mask.clone()) * known + mask * SAMPLE,
    ))
}

impl NoisePredictor for GpuUNetCall<'_> {
    fn predict<'b>(
        &'b self,
        latents: &'b [f32],
        shape: [usize; 4],
        t: f32,
    ) -> BoxFuture<'b, Result<Vec<f32>>> {
        Box::pin(self.predict_async(latents, shape, t))
    }

    fn keeps_latents(&self) -> bool {
        self.networks.device_loop
    }

    fn denoise_on_device<'b>(&'b self, run: DenoiseLoop<'b>) -> BoxFuture<'b, Result<()>> {
        Box::pin(self.denoise_async(run))
    }
}
