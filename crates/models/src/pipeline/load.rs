//! Loading a pipeline: its configs and tokenizers ([`PipelineFiles`]), then the networks on
//! the chosen backend.

use std::sync::Arc;

use sd_core::config::{ModelIndex, SchedulerConfig};
use sd_kernels::{DType, GpuContext};
use sd_weights::ClipTokenizer;

use super::StableDiffusion;
use crate::Result;
use crate::backend::{NetworkConfigFiles, NetworkConfigs, Networks};
use crate::gpu::GpuNetworks;
use crate::source::ModelSource;

/// A model's configs and tokenizers: what a pipeline reads before any network is built.
#[derive(Debug, Clone)]
pub struct PipelineFiles {
    /// The text encoder(s), UNet and VAE configs.
    pub networks: NetworkConfigFiles,
    pub scheduler: SchedulerConfig,
    tokenizer: ClipTokenizer,
    tokenizer_2: Option<ClipTokenizer>,
    index: Option<ModelIndex>,
}

impl PipelineFiles {
    /// Reads the configs, `model_index.json` and the tokenizer(s) of `source`.
    pub fn read(source: &ModelSource) -> Result<Self> {
        let networks = NetworkConfigFiles::read(source)?;
        Ok(Self {
            tokenizer_2: match networks.text_encoder_2 {
                Some(_) => Some(load_tokenizer(source, "tokenizer_2")?),
                None => None,
            },
            networks,
            scheduler: SchedulerConfig::from_json(
                "scheduler/scheduler_config.json",
                &source.read_text("scheduler/scheduler_config.json")?,
            )?,
            tokenizer: load_tokenizer(source, "tokenizer")?,
            index: if source.has("model_index.json") {
                Some(ModelIndex::from_json(
                    "model_index.json",
                    &source.read_text("model_index.json")?,
                )?)
            } else {
                None
            },
        })
    }

    /// The network configs, for a backend to build the networks from.
    pub fn configs(&self) -> NetworkConfigs<'_> {
        self.networks.configs()
    }
}

impl StableDiffusion {
    /// Loads every part of the model from `source` onto the GPU `ctx`, weight matrices stored
    /// as `matrices` (f16 normally; f32 for parity tests).
    pub fn load(ctx: Arc<GpuContext>, source: &ModelSource, matrices: DType) -> Result<Self> {
        Self::load_with_progress(ctx, source, matrices, &mut |_| {})
    }

    /// [`Self::load`], telling `on_component` which component (`text_encoder`, `unet`, `vae`)
    /// is about to be uploaded.
    pub fn load_with_progress(
        ctx: Arc<GpuContext>,
        source: &ModelSource,
        matrices: DType,
        on_component: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        Self::load_on(source, |files| {
            Ok(Box::new(GpuNetworks::load(
                ctx,
                source,
                files.configs(),
                matrices,
                on_component,
            )?))
        })
    }

    /// Loads the model in `source` with networks that `networks` builds from its files: the
    /// way a backend other than the GPU (the `sd-cpu` crate) plugs in.
    pub fn load_on(
        source: &ModelSource,
        networks: impl FnOnce(&PipelineFiles) -> Result<Box<dyn Networks>>,
    ) -> Result<Self> {
        let files = PipelineFiles::read(source)?;
        crate::nets::check_supported(&files.configs())?;
        let networks = networks(&files)?;
        // diffusers' `StableDiffusionXLPipeline` defaults `force_zeros_for_empty_prompt` to true.
        let force_zeros_for_empty_prompt = files
            .index
            .and_then(|index| index.force_zeros_for_empty_prompt)
            .unwrap_or(files.tokenizer_2.is_some());
        Ok(Self {
            networks,
            tokenizer: files.tokenizer,
            tokenizer_2: files.tokenizer_2,
            force_zeros_for_empty_prompt,
            scheduler_config: files.scheduler,
        })
    }
}

/// A pipeline's tokenizer from its folder (`tokenizer`, `tokenizer_2`): `tokenizer.json`, and
/// `tokenizer_config.json` for the pad token when present.
fn load_tokenizer(source: &ModelSource, folder: &str) -> Result<ClipTokenizer> {
    let config_file = format!("{folder}/tokenizer_config.json");
    let config = if source.has(&config_file) {
        Some(source.read(&config_file)?)
    } else {
        None
    };
    Ok(ClipTokenizer::from_pipeline_files(
        &tokenizer_json(source, folder)?,
        config.as_deref(),
    )?)
}

/// `<folder>/tokenizer.json`; natively, for a folder with only the slow tokenizer's
/// `vocab.json` + `merges.txt` (the hub's SD repositories), the built-in CLIP `tokenizer.json`
/// once those are checked to be CLIP's. (Not in the wasm build: web models carry
/// `tokenizer.json`, which the converter adds the same way, and the browser download stays
/// 3.6 MB smaller.)
fn tokenizer_json(source: &ModelSource, folder: &str) -> Result<Vec<u8>> {
    let file = format!("{folder}/tokenizer.json");
    #[cfg(not(target_arch = "wasm32"))]
    if !source.has(&file) && source.has(&format!("{folder}/vocab.json")) {
        let vocab = source.read(&format!("{folder}/vocab.json"))?;
        let merges = source.read(&format!("{folder}/merges.txt"))?;
        return Ok(sd_weights::tokenizer::clip_tokenizer_json_for(&vocab, &merges)?.to_vec());
    }
    source.read(&file)
}
