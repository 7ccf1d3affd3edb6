//! The CPU backend: candle-transformers' CLIP text transformer, `UNet2DConditionModel` and
//! `AutoEncoderKL`, built from the same diffusers configs and safetensors as the GPU path, in
//! f32, behind [`sd_models::backend::Networks`]. The pipeline (tokenizer, samplers,
//! img2img/inpainting, batching, progress, cancellation) is the GPU path's, unchanged.
//!
//! What candle lacks is refused with [`ModelError::Unsupported`] naming the feature: SDXL's
//! `text_time` conditioning and second text encoder, LCM's guidance embedding, `gelu` text
//! encoders other than SD 2.1's. Known differences from diffusers: candle's GEGLU (UNet
//! feed-forward) and SD 2.1's text GELU use the tanh approximation where diffusers uses erf
//! (1e-4 on the fixture's UNet output; see `tests/parity.rs`).

mod config;
pub mod memory;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::stable_diffusion::clip::ClipTextTransformer as SdClipTransformer;
use candle_transformers::models::stable_diffusion::{unet_2d, vae};
use sd_core::config::{AutoencoderKLConfig, CLIPTextConfig, UNet2DConditionConfig};
use sd_models::backend::{
    BoxFuture, DeviceKind, NetworkConfigs, Networks, NoisePredictor, PromptEmbeddings, RunSize,
    TokenIds, UNetInputs,
};
use sd_models::{ModelError, ModelSource, Result};
use sd_weights::WeightSource;

use crate::config::TextEncoderConfig;

fn candle_error(e: candle_core::Error) -> ModelError {
    ModelError::Backend {
        backend: "cpu",
        message: e.to_string(),
    }
}

/// A model's networks on the CPU.
#[derive(Debug)]
pub struct CpuNetworks {
    text_encoder: TextEncoder,
    unet: unet_2d::UNet2DConditionModel,
    vae: vae::AutoEncoderKL,
    /// Encoders whose `quant_conv` was rewritten to return the mean, and the log-variance,
    /// as their "sample" (see [`moment_encoder`]).
    vae_mean: vae::AutoEncoderKL,
    vae_logvar: vae::AutoEncoderKL,
    text_config: CLIPTextConfig,
    unet_config: UNet2DConditionConfig,
    vae_config: AutoencoderKLConfig,
    /// Bytes the activations may take.
    budget: u64,
}

#[derive(Debug)]
enum TextEncoder {
    QuickGelu(ClipTextTransformer),
    Sd21(SdClipTransformer),
}

impl CpuNetworks {
    /// Builds the networks of `source` from `configs`, telling `on_component` which component
    /// is next. Everything candle does not implement is refused before any weight is read.
    pub fn load(
        source: &ModelSource,
        configs: NetworkConfigs<'_>,
        on_component: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        let (unet_cfg, in_channels, out_channels) = config::unet(configs.unet)?;
        let vae_cfg = config::vae(configs.vae)?;
        let text_cfg = config::text_encoder(configs.text_encoder)?;
        if configs.text_encoder_2.is_some() {
            return Err(ModelError::Unsupported {
                part: "text_encoder_2",
                what: "a second text encoder (SDXL) on the CPU backend (use --device gpu)".into(),
            });
        }
        let device = Device::Cpu;

        on_component("text_encoder");
        let weights = source.weights("text_encoder")?;
        let text_encoder = match &text_cfg {
            // The weight source strips `text_model.`; `clip::text_model` takes the rest as is.
            TextEncoderConfig::QuickGelu(cfg) => {
                let vb = var_builder(&weights, "")?;
                TextEncoder::QuickGelu(ClipTextTransformer::new(vb, cfg).map_err(candle_error)?)
            }
            // `stable_diffusion::clip` adds `text_model.` itself.
            TextEncoderConfig::Sd21(cfg) => {
                let vb = var_builder(&weights, "text_model.")?;
                TextEncoder::Sd21(SdClipTransformer::new(vb, cfg).map_err(candle_error)?)
            }
        };
        drop(weights);

        on_component("unet");
        let weights = source.weights("unet")?;
        let vb = var_builder(&weights, "")?;
        let unet =
            unet_2d::UNet2DConditionModel::new(vb, in_channels, out_channels, false, unet_cfg)
                .map_err(candle_error)?;
        drop(weights);

        on_component("vae");
        let weights = source.weights("vae")?;
        let tensors = tensors(&weights, "")?;
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &device);
        let (vae_in, vae_out) = (configs.vae.in_channels, configs.vae.out_channels);
        let vae =
            vae::AutoEncoderKL::new(vb, vae_in, vae_out, vae_cfg.clone()).map_err(candle_error)?;
        let latent = configs.vae.latent_channels;
        let moment = |which| -> Result<vae::AutoEncoderKL> {
            let vb = VarBuilder::from_tensors(
                moment_encoder(&tensors, latent, which)?,
                DType::F32,
                &device,
            );
            let cfg = vae::AutoEncoderKLConfig {
                use_quant_conv: true,
                ..vae_cfg.clone()
            };
            vae::AutoEncoderKL::new(vb, vae_in, vae_out, cfg).map_err(candle_error)
        };
        let vae_mean = moment(Moment::Mean)?;
        let vae_logvar = moment(Moment::LogVar)?;
        Ok(Self {
            text_encoder,
            unet,
            vae,
            vae_mean,
            vae_logvar,
            text_config: configs.text_encoder.clone(),
            unet_config: configs.unet.clone(),
            vae_config: configs.vae.clone(),
            budget: memory::budget(),
        })
    }

    /// The same networks with activations limited to `bytes` (instead of
    /// [`memory::budget`]'s).
    pub fn with_budget(mut self, bytes: u64) -> Self {
        self.budget = bytes;
        self
    }

    fn encode_text_now(&self, first: TokenIds<'_>) -> Result<PromptEmbeddings> {
        let ids = Tensor::from_slice(first.ids, (first.prompts, first.len), &Device::Cpu)
            .map_err(candle_error)?;
        let hidden = match &self.text_encoder {
            TextEncoder::QuickGelu(model) => model.forward_with_mask(&ids, usize::MAX),
            TextEncoder::Sd21(model) => model.forward_with_mask(&ids, usize::MAX),
        }
        .map_err(candle_error)?;
        let dim = hidden.dim(2).map_err(candle_error)?;
        Ok(PromptEmbeddings {
            hidden: to_vec(&hidden)?,
            shape: [first.prompts, first.len, dim],
            pooled: None,
        })
    }
}

/// Which moment an encoder copy returns as its sample.
#[derive(Debug, Clone, Copy)]
enum Moment {
    Mean,
    LogVar,
}

/// The VAE's tensors with `quant_conv` rewritten so that candle's
/// `DiagonalGaussianDistribution::sample()` (`mean + exp(logvar / 2) * noise`, the only thing
/// candle 0.11 exposes) returns one moment exactly: its "mean" half computes the wanted moment
/// with the original `quant_conv` rows (identity without one), and its "log-variance" half is
/// the constant -1e4, so the noise is multiplied by `exp(-5000) = 0`. The encoder's other
/// tensors are shared, not copied (candle tensors are reference-counted).
fn moment_encoder(
    tensors: &HashMap<String, Tensor>,
    latent: usize,
    which: Moment,
) -> Result<HashMap<String, Tensor>> {
    let e = candle_error;
    let channels = 2 * latent;
    let (weight, bias) = match (
        tensors.get("quant_conv.weight"),
        tensors.get("quant_conv.bias"),
    ) {
        (Some(w), Some(b)) => (w.clone(), b.clone()),
        _ => (
            Tensor::eye(channels, DType::F32, &Device::Cpu)
                .and_then(|t| t.reshape((channels, channels, 1, 1)))
                .map_err(e)?,
            Tensor::zeros(channels, DType::F32, &Device::Cpu).map_err(e)?,
        ),
    };
    let rows = match which {
        Moment::Mean => 0,
        Moment::LogVar => latent,
    };
    let weight = Tensor::cat(
        &[
            weight.narrow(0, rows, latent).map_err(e)?,
            Tensor::zeros((latent, channels, 1, 1), DType::F32, &Device::Cpu).map_err(e)?,
        ],
        0,
    )
    .map_err(e)?;
    let bias = Tensor::cat(
        &[
            bias.narrow(0, rows, latent).map_err(e)?,
            Tensor::full(-1e4f32, latent, &Device::Cpu).map_err(e)?,
        ],
        0,
    )
    .map_err(e)?;
    let mut out = tensors.clone();
    out.insert("quant_conv.weight".into(), weight);
    out.insert("quant_conv.bias".into(), bias);
    Ok(out)
}

/// Every tensor of a component as f32 candle tensors, by `prefix` + its diffusers name.
fn tensors(weights: &WeightSource, prefix: &str) -> Result<HashMap<String, Tensor>> {
    let names: Vec<String> = weights.names().map(str::to_owned).collect();
    let mut out = HashMap::with_capacity(names.len());
    for name in names {
        let shape = weights.shape(&name)?.to_vec();
        let values = weights.tensor_f32(&name, &shape)?;
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu).map_err(candle_error)?;
        out.insert(format!("{prefix}{name}"), tensor);
    }
    Ok(out)
}

fn var_builder(weights: &WeightSource, prefix: &str) -> Result<VarBuilder<'static>> {
    Ok(VarBuilder::from_tensors(
        tensors(weights, prefix)?,
        DType::F32,
        &Device::Cpu,
    ))
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(candle_error)
}

impl Networks for CpuNetworks {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cpu
    }

    fn describe(&self) -> String {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        format!("CPU: candle-transformers 0.11, f32, {threads} threads")
    }

    fn configs(&self) -> NetworkConfigs<'_> {
        NetworkConfigs {
            text_encoder: &self.text_config,
            text_encoder_2: None,
            unet: &self.unet_config,
            vae: &self.vae_config,
        }
    }

    fn encode_text<'a>(
        &'a self,
        first: TokenIds<'a>,
        second: Option<TokenIds<'a>>,
    ) -> BoxFuture<'a, Result<PromptEmbeddings>> {
        let result = match second {
            Some(_) => Err(ModelError::Unsupported {
                part: "text_encoder_2",
                what: "a second text encoder (SDXL) on the CPU backend".into(),
            }),
            None => self.encode_text_now(first),
        };
        Box::pin(std::future::ready(result))
    }

    fn prepare_unet<'a>(&'a self, inputs: &UNetInputs) -> Result<Box<dyn NoisePredictor + 'a>> {
        if inputs.timestep_cond.is_some() || inputs.text_embeds.is_some() {
            return Err(ModelError::Unsupported {
                part: "unet",
                what: "extra UNet conditioning (LCM, SDXL) on the CPU backend".into(),
            });
        }
        let context =
            Tensor::from_slice(&inputs.context, inputs.context_shape.to_vec(), &Device::Cpu)
                .map_err(candle_error)?;
        Ok(Box::new(CpuUNetCall {
            unet: &self.unet,
            context,
        }))
    }

    fn decode<'a>(
        &'a self,
        latents: &'a [f32],
        h: usize,
        w: usize,
    ) -> BoxFuture<'a, Result<Vec<f32>>> {
        let latent = self.vae_config.latent_channels;
        let result = Tensor::from_slice(latents, (1, latent, h, w), &Device::Cpu)
            .and_then(|z| self.vae.decode(&z))
            .map_err(candle_error)
            .and_then(|image| to_vec(&image));
        Box::pin(std::future::ready(result))
    }

    fn encode_image<'a>(
        &'a self,
        image: &'a [f32],
        height: usize,
        width: usize,
    ) -> BoxFuture<'a, Result<Vec<f32>>> {
        let moment = |model: &vae::AutoEncoderKL| -> Result<Vec<f32>> {
            let x = Tensor::from_slice(image, (1, 3, height, width), &Device::Cpu)
                .map_err(candle_error)?;
            let sample = model
                .encode(&x)
                .and_then(|dist| dist.sample())
                .map_err(candle_error)?;
            to_vec(&sample)
        };
        let result = moment(&self.vae_mean).and_then(|mut mean| {
            mean.extend(moment(&self.vae_logvar)?);
            Ok(mean)
        });
        Box::pin(std::future::ready(result))
    }

    fn check_size(&self, size: RunSize) -> Result<()> {
        let rows = if size.cfg { 2 } else { 1 };
        memory::check(
            format!(
                "cpu: one UNet call at {}x{} (batch {rows})",
                size.width, size.height
            ),
            memory::unet_bytes(&self.unet_config, size.width, size.height, rows),
            self.budget,
        )?;
        memory::check(
            format!("cpu: the VAE at {}x{}", size.width, size.height),
            memory::vae_bytes(&self.vae_config, size.width, size.height),
            self.budget,
        )?;
        Ok(())
    }

    /// Batching brings the CPU little; images share a call only while it stays within half the
    /// budget.
    fn images_per_unet_call(&self, width: u32, height: u32, cfg: bool, count: u32) -> u32 {
        let per_image = if cfg { 2 } else { 1 };
        (2..=count)
            .rev()
            .find(|&images| {
                let rows = u64::from(images) * per_image;
                memory::unet_bytes(&self.unet_config, width, height, rows) <= self.budget / 2
            })
            .unwrap_or(1)
    }
}

/// An image group's UNet conditioning on the CPU.
struct CpuUNetCall<'a> {
    unet: &'a unet_2d::UNet2DConditionModel,
    context: Tensor,
}

impl NoisePredictor for CpuUNetCall<'_> {
    fn predict<'b>(
        &'b self,
        latents: &'b [f32],
        shape: [usize; 4],
        t: f32,
    ) -> BoxFuture<'b, Result<Vec<f32>>> {
        let result = Tensor::from_slice(latents, shape.to_vec(), &Device::Cpu)
            .and_then(|x| self.unet.forward(&x, f64::from(t), &self.context))
            .map_err(candle_error)
            .and_then(|out| to_vec(&out));
        Box::pin(std::future::ready(result))
    }
}
