//! The default model, built into the binary: the digits model of the test fixtures, converted
//! to f16 (`sd convert`), so `sd generate` works on a fresh machine with no download.

use std::collections::BTreeMap;
use std::sync::Arc;

use sd_models::ModelSource;

/// The model's name in reports and PNG parameters.
pub const NAME: &str = "tiny-sd-digits (embedded)";

macro_rules! files {
    ($($path:literal),* $(,)?) => {
        [$(($path, include_bytes!(concat!("../model/", $path)) as &[u8])),*]
    };
}

const FILES: [(&str, &[u8]); 10] = files![
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
];

/// The embedded model as a model source.
pub fn source() -> ModelSource {
    let files: BTreeMap<String, Arc<[u8]>> = FILES
        .iter()
        .map(|(path, bytes)| ((*path).to_string(), Arc::from(*bytes)))
        .collect();
    ModelSource::Memory(files)
}
