//! [`Model`]: a loaded model and its generations.

use std::sync::Arc;

use image::RgbImage;
use sd_core::params::{ModelDefaults, VAE_SCALE};
use sd_kernels::{DType, GpuContext};
use sd_models::{Inputs, ModelSource, StableDiffusion};

#[cfg(not(target_arch = "wasm32"))]
use crate::device::Device;
use crate::error::{Error, Result};
use crate::options::{Options, random_seed};
use crate::output::Images;
#[cfg(not(target_arch = "wasm32"))]
use crate::progress::CancelToken;
use crate::progress::{Progress, Tracker};

/// How to load a model.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Keep weight matrices in f32 on the GPU instead of f16: twice the memory, for comparisons
    /// with f32 references.
    pub f32_weights: bool,
    /// For a single-file `.safetensors` checkpoint: a folder of diffusers configs
    /// (`unet/config.json`, `scheduler/scheduler_config.json`, ...) used instead of the
    /// built-in published configs of its architecture (diffusers' `from_single_file(config=)`);
    /// for models whose head counts or sizes differ from the published ones. Other models
    /// ignore it.
    pub model_config: Option<std::path::PathBuf>,
    /// Where the model runs (native loads by name or source): [`Device::Auto`] unless set, or
    /// `SD_DEVICE` through [`LoadOptions::from_env`].
    #[cfg(not(target_arch = "wasm32"))]
    pub device: Device,
}

impl LoadOptions {
    /// f16 weight matrices (the default).
    pub fn new() -> Self {
        Self::default()
    }

    /// f32 weight matrices instead.
    pub fn f32_weights(mut self, f32_weights: bool) -> Self {
        self.f32_weights = f32_weights;
        self
    }

    /// [`LoadOptions::new`] with the device `SD_DEVICE` names (auto when unset).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming `SD_DEVICE` for a value other than auto, gpu, cpu.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_env() -> Result<Self> {
        Ok(Self::new().device(Device::from_env()?))
    }

    /// Where the model runs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// The config folder for a single-file checkpoint (see [`LoadOptions::model_config`]).
    pub fn model_config(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.model_config = Some(dir.into());
        self
    }
}

/// A model on the GPU, ready to generate. `Send + Sync`: share it in an `Arc`; generations on
/// one model run one at a time (each holds the GPU context while it records).
#[derive(Debug)]
pub struct Model {
    sd: StableDiffusion,
    name: String,
    defaults: ModelDefaults,
    /// Why `auto` chose the CPU, for the caller to show once.
    device_note: Option<String>,
}

impl Model {
    /// Loads a model by preset name (`digits`, built in; hub presets such as `sd15` or
    /// `sdxl-turbo`, see [`crate::PRESETS`], downloaded into the Hugging Face cache on first
    /// use), by path (a diffusers folder or a web model folder), or by a folder name under
    /// `$DIFFUSION_MODELS_PATH`, then `$MODELS_PATH` (see [`crate::resolve`]), on the device
    /// `SD_DEVICE` names (`auto` when unset: a hardware GPU if there is one, else the CPU; see
    /// [`Device`]); the GPU adapter is the one `SD_ADAPTER` / `WGPU_BACKEND` choose (the best
    /// one by default).
    ///
    /// # Errors
    ///
    /// [`Error::ModelNotFound`] naming every place searched, [`Error::ModelName`] for a name
    /// that leaves the models folder, [`Error::Load`] for a missing or damaged file or no GPU,
    /// [`Error::Download`] / [`Error::Offline`] for a hub preset that could not be fetched.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(model: &str) -> Result<Self> {
        Self::load_with(model, &LoadOptions::from_env()?)
    }

    /// [`Model::load`] with options.
    ///
    /// # Errors
    ///
    /// As [`Model::load`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_with(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::load_with_download_progress(model, options, &mut |_| {})
    }

    /// [`Model::load_with`] telling `on_download` the bytes of each file of a hub preset as
    /// they arrive (the first load of a preset downloads it into the hub cache; later loads
    /// read it from there without a request).
    ///
    /// # Errors
    ///
    /// As [`Model::load`], and [`Error::Download`] / [`Error::Offline`] for a preset that
    /// could not be fetched.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_with_download_progress(
        model: &str,
        options: &LoadOptions,
        on_download: &mut dyn FnMut(&crate::DownloadProgress),
    ) -> Result<Self> {
        let location = crate::resolve::resolve(model, &crate::ModelPaths::from_env())?;
        let (source, name) = match (&location, &options.model_config) {
            (crate::ModelLocation::Path(path), Some(config)) if path.is_file() => {
                let single = sd_weights::SingleFileOptions::new().config_dir(config);
                let source =
                    ModelSource::open_with(path, &single).map_err(|source| Error::Load {
                        model: path.display().to_string(),
                        source: Box::new(source),
                    })?;
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                (source, name)
            }
            _ => location.open(on_download)?,
        };
        let mut model = Self::from_source_on(&source, name, options, &mut |_| {})?;
        if let crate::ModelLocation::Preset(crate::Preset {
            distilled: Some(distilled),
            ..
        }) = location
        {
            model.defaults = model.defaults.distilled(
                distilled.steps,
                distilled.guidance_scale,
                distilled.sampler,
            );
        }
        Ok(model)
    }

    /// Loads the model in `source` on the device `options.device` chooses, calling it `name`,
    /// telling `on_component` which component is about to be loaded. With [`Device::Auto`] a
    /// hardware GPU runs it when wgpu finds one, else the CPU backend, and
    /// [`Model::device_note`] says why.
    ///
    /// # Errors
    ///
    /// [`Error::Load`]; [`Error::NoGpu`] for [`Device::Gpu`] without an adapter.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_source_on(
        source: &ModelSource,
        name: impl Into<String>,
        options: &LoadOptions,
        on_component: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        let name = name.into();
        let gpu = || -> Result<Arc<GpuContext>> {
            let context = sd_kernels::ContextOptions::from_env().map_err(|e| Error::Load {
                model: name.clone(),
                source: Box::new(e.into()),
            })?;
            match pollster::block_on(GpuContext::new(context)) {
                Ok(ctx) => Ok(Arc::new(ctx)),
                Err(sd_kernels::KernelError::NoAdapter(reason)) => Err(Error::NoGpu {
                    reason,
                    remedy: crate::device::gpu_remedy(),
                }),
                Err(e) => Err(Error::Load {
                    model: name.clone(),
                    source: Box::new(e.into()),
                }),
            }
        };
        let (ctx, note) = match options.device {
            Device::Gpu => (Some(gpu()?), None),
            Device::Cpu => (None, None),
            Device::Auto => match gpu() {
                Ok(ctx) if ctx.adapter_info().device_type == sd_kernels::wgpu::DeviceType::Cpu => {
                    let note = format!(
                        "running on the CPU: the only GPU adapter is a software one ({}), which \
                         the CPU backend outruns; for the GPU path, {} (--device gpu forces the \
                         software adapter)",
                        ctx.adapter_info().name,
                        crate::device::gpu_remedy()
                    );
                    (None, Some(note))
                }
                Ok(ctx) => (Some(ctx), None),
                Err(Error::NoGpu { .. }) => {
                    let note = format!(
                        "no GPU found: running on the CPU (slow); for the GPU path, {}",
                        crate::device::gpu_remedy()
                    );
                    (None, Some(note))
                }
                Err(e) => return Err(e),
            },
        };
        let mut model = match ctx {
            Some(ctx) => Self::from_source_with_progress(ctx, source, name, options, on_component)?,
            None => {
                let sd = StableDiffusion::load_on(source, |files| {
                    Ok(Box::new(sd_cpu::CpuNetworks::load(
                        source,
                        files.configs(),
                        on_component,
                    )?))
                })
                .map_err(|e| Error::Load {
                    model: name.clone(),
                    source: Box::new(e),
                })?;
                Self::from_pipeline(sd, name)
            }
        };
        model.device_note = note;
        Ok(model)
    }

    /// Loads the model in `source` onto `ctx`, calling it `name` (in PNG parameters and
    /// reports). The browser package loads this way, from downloaded shards.
    ///
    /// # Errors
    ///
    /// [`Error::Load`].
    pub fn from_source(
        ctx: Arc<GpuContext>,
        source: &ModelSource,
        name: impl Into<String>,
        options: &LoadOptions,
    ) -> Result<Self> {
        Self::from_source_with_progress(ctx, source, name, options, &mut |_| {})
    }

    /// [`Model::from_source`] telling `on_component` which component (`text_encoder`, `unet`,
    /// `vae`) is about to go to the GPU.
    ///
    /// # Errors
    ///
    /// [`Error::Load`].
    pub fn from_source_with_progress(
        ctx: Arc<GpuContext>,
        source: &ModelSource,
        name: impl Into<String>,
        options: &LoadOptions,
        on_component: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        let name = name.into();
        let matrices = if options.f32_weights {
            DType::F32
        } else {
            DType::F16
        };
        let sd = StableDiffusion::load_with_progress(ctx, source, matrices, on_component).map_err(
            |source| Error::Load {
                model: name.clone(),
                source: Box::new(source),
            },
        )?;
        let defaults = sd.defaults();
        Ok(Self {
            sd,
            name,
            defaults,
            device_note: None,
        })
    }

    /// A model from a pipeline already loaded on some device (the browser's CPU module builds
    /// the CPU networks itself), calling it `name`.
    pub fn from_pipeline(sd: StableDiffusion, name: impl Into<String>) -> Self {
        let defaults = sd.defaults();
        Self {
            sd,
            name: name.into(),
            defaults,
            device_note: None,
        }
    }

    /// The built-in digits model (64x64 coloured digits; prompts `a <colour> digit <zero..nine>
    /// on a <colour> background`) on `ctx`.
    ///
    /// # Errors
    ///
    /// [`Error::Load`].
    pub fn embedded(ctx: Arc<GpuContext>, options: &LoadOptions) -> Result<Self> {
        Self::from_source(
            ctx,
            &crate::embedded::source(),
            crate::embedded::NAME,
            options,
        )
    }

    /// Which kind of device runs the model (`gpu` or `cpu`).
    pub fn device(&self) -> sd_models::DeviceKind {
        self.sd.device_kind()
    }

    /// One line naming the device: the GPU adapter, or the CPU backend.
    pub fn device_description(&self) -> String {
        self.sd.networks().describe()
    }

    /// When [`Device::Auto`] chose the CPU: why, and how to get the GPU path.
    pub fn device_note(&self) -> Option<&str> {
        self.device_note.as_deref()
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size the model was trained at (width, height), the default output size.
    pub fn native_size(&self) -> (u32, u32) {
        self.sd.native_size()
    }

    /// What options that are not set default to for this model: its native size, and 20
    /// steps at guidance 7.5 with `euler_a`, except for distilled models: an LCM UNet's 4 LCM
    /// steps at guidance 8.5, and the turbo presets' one step without guidance.
    pub fn defaults(&self) -> ModelDefaults {
        self.defaults
    }

    /// The pipeline underneath, for what the front door does not cover.
    pub fn pipeline(&self) -> &StableDiffusion {
        &self.sd
    }

    /// The pipeline and the name, taken apart.
    pub fn into_parts(self) -> (StableDiffusion, String) {
        (self.sd, self.name)
    }

    /// Generates images of `prompt` with `options`, blocking until they are done.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a bad option (before any GPU work), [`Error::Generation`]
    /// for a GPU failure or a size the device cannot hold.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(&self, prompt: &str, options: &Options) -> Result<Images> {
        self.generate_with(prompt, options, |_| {}, &CancelToken::new())
    }

    /// [`Model::generate`] that reports each stage and step to `on_progress` (with a preview
    /// after every step) and stops when `cancel` is cancelled.
    ///
    /// ```
    /// use sd_wgsl::{CancelToken, Error, Model, Options, Stage};
    ///
    /// let model = Model::load("digits")?;
    /// let cancel = CancelToken::new();
    /// let mut steps = 0;
    /// let result = model.generate_with(
    ///     "a yellow digit zero on a green background",
    ///     &Options::new().steps(10),
    ///     |progress| {
    ///         if let Stage::Diffusion { step, .. } = progress.stage {
    ///             steps = step;
    ///             if step == 3 {
    ///                 cancel.cancel(); // e.g. from a UI thread
    ///             }
    ///         }
    ///     },
    ///     &cancel,
    /// );
    /// assert!(matches!(result, Err(Error::Cancelled)));
    /// assert_eq!(steps, 3);
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Model::generate`], and [`Error::Cancelled`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate_with(
        &self,
        prompt: &str,
        options: &Options,
        mut on_progress: impl FnMut(&Progress),
        cancel: &CancelToken,
    ) -> Result<Images> {
        pollster::block_on(
            self.generate_async(prompt, options, &mut on_progress, &|| cancel.is_cancelled()),
        )
    }

    /// The generation as a future: what [`Model::generate_with`] blocks on, and what the
    /// browser awaits. `cancelled` is asked before every step.
    ///
    /// Natively the future waits for the GPU inside `poll`, so under an async runtime run it
    /// on a blocking thread (`tokio::task::spawn_blocking`).
    ///
    /// # Errors
    ///
    /// As [`Model::generate_with`].
    pub async fn generate_async(
        &self,
        prompt: &str,
        options: &Options,
        on_progress: &mut dyn FnMut(&Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Images> {
        let params = options.to_params(prompt, &self.defaults, random_seed)?;
        let latent_size = (
            (params.height / VAE_SCALE) as usize,
            (params.width / VAE_SCALE) as usize,
        );
        let tracker = std::cell::RefCell::new(Tracker::new(params.count, latent_size));
        let on_progress = std::cell::RefCell::new(on_progress);
        let mut on_stage = |stage| {
            if let Some(event) = tracker.borrow_mut().stage(stage) {
                (on_progress.borrow_mut())(&event);
            }
        };
        let mut on_step = |step: usize, latents: &[f32]| {
            let event = tracker.borrow().step(step, latents);
            (on_progress.borrow_mut())(&event);
        };
        let inputs = Inputs {
            initial_latents: options.input_latents(),
            init_image: options.input_image(),
            mask: options.input_mask(),
        };
        let generated = self
            .sd
            .generate_cancellable(
                &params,
                &inputs,
                &mut on_stage,
                Some(&mut on_step),
                cancelled,
            )
            .await
            .map_err(Error::from_generation)?;
        let (width, height) = (generated.width, generated.height);
        let images = generated
            .images
            .into_iter()
            .map(|rgb| {
                RgbImage::from_raw(width, height, rgb).ok_or_else(|| {
                    Error::Generation(Box::new(sd_models::ModelError::Mismatch {
                        op: "vae.decode".into(),
                        message: format!("the image is not {width}x{height} RGB"),
                    }))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Images {
            images,
            seeds: generated.seeds,
            latents: generated.latents,
            params,
            model: self.name.clone(),
            warnings: generated.warnings,
        })
    }
}
