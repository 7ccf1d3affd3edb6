//! The WGSL backend: the text encoder(s), UNet and VAE as compositions of `sd-kernels` on one
//! [`GpuContext`], behind [`Networks`]. Host arrays go up, results come back; the memory
//! planner decides what fits the device before anything runs.

use std::sync::Arc;

use sd_core::config::{AutoencoderKLConfig, CLIPTextConfig};
use sd_kernels::{DType, GpuContext, ops};

use super::models::{CLIPTextModel, UNet2DConditionModel, VaeDecoder, VaeEncoder, WeightLoader};
use super::unet_call::GpuUNetCall;
use crate::backend::{
    BoxFuture, DeviceKind, NetworkConfigs, Networks, NoisePredictor, PromptEmbeddings, RunSize,
    TokenIds, UNetInputs,
};
use crate::nets::clip::TextOutput;
use crate::plan::{DeviceLimits, MemoryPlan, PlanRequest, plan};
use crate::source::ModelSource;
use crate::{ModelError, Result};

/// The activations the UNet may use at once when images are batched (weights not counted):
/// more images per call only while a call's plan stays within this. 1 GiB leaves room on any
/// GPU that holds SD 1.5 at all; past it, images run in smaller groups, one after the other.
pub const BATCH_ACTIVATION_BUDGET: u64 = 1 << 30;

/// A model's networks on a GPU.
#[derive(Debug)]
pub struct GpuNetworks {
    pub(super) ctx: Arc<GpuContext>,
    text_encoder: CLIPTextModel,
    /// SDXL's second text encoder (`CLIPTextModelWithProjection`).
    text_encoder_2: Option<CLIPTextModel>,
    pub(super) unet: UNet2DConditionModel,
    vae_encoder: VaeEncoder,
    vae_decoder: VaeDecoder,
    vae_config: AutoencoderKLConfig,
    /// Whether the denoising loop runs on the GPU (`SD_DENOISE_LOOP`, default `gpu`) or steps
    /// the samplers on the host between UNet calls (`host`: for A/B benchmarks and tests).
    pub(super) device_loop: bool,
}

/// `SD_DENOISE_LOOP`: `gpu` (the default) or `host`.
fn device_loop_from_env() -> Result<bool> {
    match std::env::var("SD_DENOISE_LOOP").as_deref() {
        Err(_) | Ok("gpu") => Ok(true),
        Ok("host") => Ok(false),
        Ok(other) => Err(ModelError::Input {
            field: "SD_DENOISE_LOOP",
            message: format!("`{other}` is not a denoising loop; use `gpu` or `host`"),
        }),
    }
}

impl GpuNetworks {
    /// Uploads the networks of `source` to `ctx`, weight matrices stored as `matrices` (f16
    /// normally; f32 for parity tests), telling `on_component` which component is next.
    pub fn load(
        ctx: Arc<GpuContext>,
        source: &ModelSource,
        configs: NetworkConfigs<'_>,
        matrices: DType,
        on_component: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        on_component("text_encoder");
        let text_encoder =
            load_text_encoder(&ctx, source, "text_encoder", configs.text_encoder, matrices)?;
        let text_encoder_2 = match configs.text_encoder_2 {
            Some(config) => {
                on_component("text_encoder_2");
                Some(load_text_encoder(
                    &ctx,
                    source,
                    "text_encoder_2",
                    config,
                    matrices,
                )?)
            }
            None => None,
        };
        on_component("unet");
        let weights = source.weights("unet")?;
        let unet = UNet2DConditionModel::load(
            configs.unet,
            &WeightLoader {
                ctx: &ctx,
                scope: weights.root(),
                matrices,
            },
        )?;
        on_component("vae");
        let weights = source.weights("vae")?;
        let vae_params = WeightLoader {
            ctx: &ctx,
            scope: weights.root(),
            matrices,
        };
        let vae_encoder = VaeEncoder::load(configs.vae, &vae_params)?;
        let vae_decoder = VaeDecoder::load(configs.vae, &vae_params)?;
        Ok(Self {
            ctx,
            text_encoder,
            text_encoder_2,
            unet,
            vae_encoder,
            vae_decoder,
            vae_config: configs.vae.clone(),
            device_loop: device_loop_from_env()?,
        })
    }

    /// These networks with the denoising loop on the GPU (`true`) or on the host.
    pub fn with_device_loop(self, on: bool) -> Self {
        Self {
            device_loop: on,
            ..self
        }
    }

    /// The GPU context the networks live on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    async fn encode_text_async(
        &self,
        first: TokenIds<'_>,
        second: Option<TokenIds<'_>>,
    ) -> Result<PromptEmbeddings> {
        let ids_gpu = self
            .ctx
            .upload_u32(first.ids, &[first.prompts, first.len])?;
        let mut batch = self.ctx.batch();
        let (Some(second), Some(text_encoder_2)) = (second, &self.text_encoder_2) else {
            let hidden =
                self.text_encoder
                    .forward(&mut batch, &ids_gpu, first.ids, TextOutput::Last)?;
            batch.submit().await?;
            let shape = shape3(hidden.shape())?;
            return Ok(PromptEmbeddings {
                hidden: self.ctx.read_f32(&hidden).await?,
                shape,
                pooled: None,
            });
        };
        let penultimate = TextOutput::SkipRaw { skip: 1 };
        let hidden_1 = self
            .text_encoder
            .forward(&mut batch, &ids_gpu, first.ids, penultimate)?;
        let ids_2_gpu = self
            .ctx
            .upload_u32(second.ids, &[second.prompts, second.len])?;
        let encoded_2 = text_encoder_2.forward_with_pooled(
            &mut batch,
            &ids_2_gpu,
            second.ids,
            penultimate,
            second.eos,
        )?;
        let pooled = encoded_2.pooled.ok_or(ModelError::MissingModule {
            part: "text_encoder_2",
            module: "text_projection",
            purpose: "SDXL's pooled text embedding",
        })?;
        let (rows, d1, d2) = (
            first.prompts * first.len,
            hidden_1.shape()[2],
            encoded_2.hidden.shape()[2],
        );
        // Concatenating along the last axis is a channel concat of `[rows, D]` matrices.
        let hidden = self.ctx.empty(&[rows, d1 + d2], DType::F32)?;
        ops::concat_channels(
            &mut batch,
            &hidden_1.reshape(&[rows, d1])?,
            &encoded_2.hidden.reshape(&[rows, d2])?,
            &hidden,
        )?;
        batch.submit().await?;
        Ok(PromptEmbeddings {
            hidden: self.ctx.read_f32(&hidden).await?,
            shape: [first.prompts, first.len, d1 + d2],
            pooled: Some(self.ctx.read_f32(&pooled).await?),
        })
    }

    async fn decode_async(&self, latents: &[f32], h: usize, w: usize) -> Result<Vec<f32>> {
        let z = self.ctx.upload_f32(latents, &[1, 4, h, w])?;
        let mut batch = self.ctx.batch();
        let image = self.vae_decoder.forward(&mut batch, &z)?;
        batch.submit().await?;
        Ok(self.ctx.read_f32(&image).await?)
    }

    async fn encode_image_async(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
    ) -> Result<Vec<f32>> {
        let x = self.ctx.upload_f32(image, &[1, 3, height, width])?;
        let mut batch = self.ctx.batch();
        let moments = self.vae_encoder.forward(&mut batch, &x)?;
        batch.submit().await?;
        Ok(self.ctx.read_f32(&moments).await?)
    }

    /// Plans the generation's buffers for this device before any GPU work, so a size that
    /// cannot run fails at once, naming the buffer that does not fit even in chunks. The GPU
    /// recorder splits exactly what the plan splits.
    fn plan(&self, width: u32, height: u32, cfg: bool, images: u32) -> Result<MemoryPlan> {
        let limits = self.ctx.limits();
        let device = DeviceLimits {
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
        };
        let request = PlanRequest {
            width,
            height,
            images,
            classifier_free_guidance: cfg,
        };
        Ok(plan(&self.configs(), &request, &device)?)
    }
}

impl Networks for GpuNetworks {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Gpu
    }

    fn describe(&self) -> String {
        self.ctx.describe()
    }

    fn configs(&self) -> NetworkConfigs<'_> {
        NetworkConfigs {
            text_encoder: self.text_encoder.config(),
            text_encoder_2: self.text_encoder_2.as_ref().map(CLIPTextModel::config),
            unet: self.unet.config(),
            vae: &self.vae_config,
        }
    }

    fn encode_text<'a>(
        &'a self,
        first: TokenIds<'a>,
        second: Option<TokenIds<'a>>,
    ) -> BoxFuture<'a, Result<PromptEmbeddings>> {
        Box::pin(self.encode_text_async(first, second))
    }

    fn prepare_unet<'a>(&'a self, inputs: &UNetInputs) -> Result<Box<dyn NoisePredictor + 'a>> {
        Ok(Box::new(GpuUNetCall::new(self, inputs)?))
    }

    fn decode<'a>(
        &'a self,
        latents: &'a [f32],
        h: usize,
        w: usize,
    ) -> BoxFuture<'a, Result<Vec<f32>>> {
        Box::pin(self.decode_async(latents, h, w))
    }

    fn encode_image<'a>(
        &'a self,
        image: &'a [f32],
        height: usize,
        width: usize,
    ) -> BoxFuture<'a, Result<Vec<f32>>> {
        Box::pin(self.encode_image_async(image, height, width))
    }

    /// The plan must fit; the VAE encoder splits its activations as the decoder does, so
    /// img2img runs at every size text-to-image does.
    fn check_size(&self, size: RunSize) -> Result<()> {
        self.plan(size.width, size.height, size.cfg, 1)?;
        Ok(())
    }

    /// The largest group up to `count` whose plan fits the device and whose activations stay
    /// within [`BATCH_ACTIVATION_BUDGET`]; 1 when even two do not.
    fn images_per_unet_call(&self, width: u32, height: u32, cfg: bool, count: u32) -> u32 {
        (2..=count)
            .rev()
            .find(|&images| {
                self.plan(width, height, cfg, images).is_ok_and(|plan| {
                    plan.peak_bytes.saturating_sub(plan.weight_bytes) <= BATCH_ACTIVATION_BUDGET
                })
            })
            .unwrap_or(1)
    }
}

fn shape3(shape: &[usize]) -> Result<[usize; 3]> {
    <[usize; 3]>::try_from(shape).map_err(|_| ModelError::Mismatch {
        op: "text_encoder".into(),
        message: format!("hidden states must be [B, L, D], are {shape:?}"),
    })
}

/// A text encoder component (`text_encoder`, `text_encoder_2`) onto the GPU.
fn load_text_encoder(
    ctx: &Arc<GpuContext>,
    source: &ModelSource,
    component: &str,
    config: &CLIPTextConfig,
    matrices: DType,
) -> Result<CLIPTextModel> {
    let weights = source.weights(component)?;
    CLIPTextModel::load(
        config,
        &WeightLoader {
            ctx,
            scope: weights.root(),
            matrices,
        },
    )
}
