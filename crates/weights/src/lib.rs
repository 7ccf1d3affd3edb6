//! Weight files: safetensors reading and dtype conversion, the weights of a model component
//! under normalised names with scoped, shape-checked access, the diffusers pipeline folder
//! layout, the f16 converter, and the CLIP tokenizer.
//!
//! Parsing works on bytes (the browser hands over what it fetched); functions that take paths
//! are the native conveniences around it. Every error is a [`WeightError`] naming the file or
//! tensor and what was expected.
//!
//! - [`SafetensorsFile`] holds one file's tensors, [`TensorData`] one tensor (to `f32`, `f16`,
//!   `i64`).
//! - [`WeightSource`] holds one component's tensors, renamed by a [`Renamer`], read through
//!   [`Scope`]s (`source.scope("down_blocks").at(0)...tensor_f32(name, shape)`), with
//!   [`WeightSource::unused`] for the loader's warning.
//! - In [`diffusers`], [`open_component`] finds `unet/diffusion_pytorch_model[.fp16].safetensors`,
//!   `text_encoder/model[.fp16].safetensors` or their sharded forms.
//! - In [`convert`], [`to_f16_safetensors`] and [`convert_folder_f16`] write f16 checkpoints.
//! - In [`single_file`], [`read_single_file`] reads a single-file checkpoint in the original
//!   Stability/A1111 layout (SD 1.x, 2.x, XL) as the files of a diffusers folder;
//!   [`write_single_file`] writes one.
//! - In [`tokenizer`], [`ClipTokenizer`] turns prompts into CLIP token ids.
//! - In [`web`], the web model format (`manifest.json` + fp16 shards named by their SHA-256):
//!   [`web::convert_to_web`], [`web::WebManifest`], [`web::read_web_model`].

pub mod convert;
pub mod diffusers;
pub mod error;
pub mod file;
pub mod single_file;
pub mod source;
pub mod tokenizer;
pub mod web;

pub use convert::{ComponentReport, F16File, FolderReport, convert_folder_f16, to_f16_safetensors};
pub use diffusers::{
    Component, ComponentFiles, ShardIndex, find_component_files, open_component,
    open_component_with, read_component_files,
};
pub use error::{Result, WeightError};
pub use file::{SafetensorsFile, TensorData};
pub use safetensors::Dtype;
pub use single_file::{
    Architecture, SingleFileModel, SingleFileOptions, open_single_file, read_single_file,
    write_single_file,
};
pub use source::{RenameFn, Renamer, Scope, WeightSource};
pub use tokenizer::{ClipTokenizer, Encoded, PadToken, TokenizerError};
