//! The `config.json` files of a diffusers pipeline folder, deserialised with serde.
//!
//! One file per model part: [`unet`] (`unet/config.json`), [`vae`] (`vae/config.json`),
//! [`clip`] (`text_encoder/config.json`, written by transformers), [`scheduler`]
//! (`scheduler/scheduler_config.json`) and [`model_index`] (`model_index.json`). Field names are
//! the JSON keys, so a field's doc comment is also the key's documentation.
//!
//! Rules shared by all of them:
//!
//! - Unknown keys are ignored: configs carry many keys we do not use (dropout, initialiser
//!   ranges, versions), and newer library versions add more.
//! - Keys that define the architecture and that every published checkpoint carries (the
//!   original SD 1.x configs included) are required. Keys that the libraries added later, or
//!   that they write only when they differ from the default, default to the value the library
//!   itself would use (each such field says so).
//! - A missing required key, or a key whose value has the wrong type, is a
//!   [`ConfigError::Parse`] naming the file and the key; a config whose keys disagree with each
//!   other (four `block_out_channels` but three `down_block_types`) is a
//!   [`ConfigError::Invalid`].
//!
//! Callers read the file and pass its text with a label for messages, typically the path
//! inside the model folder:
//!
//! ```
//! use sd_core::config::UNet2DConditionConfig;
//!
//! let json = r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [32, 64],
//!     "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
//!     "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
//!     "layers_per_block": 1, "cross_attention_dim": 64, "attention_head_dim": [2, 4]}"#;
//! let unet = UNet2DConditionConfig::from_json("unet/config.json", json)?;
//! assert_eq!(unet.heads_per_block(), vec![2, 4]);
//! # Ok::<(), sd_core::config::ConfigError>(())
//! ```

use alloc::string::String;
use alloc::vec::Vec;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

pub mod clip;
mod json;
pub mod model_index;
pub mod scheduler;
pub mod unet;
pub mod vae;

pub use clip::{CLIPTextConfig, HiddenAct};
pub use model_index::{ComponentSpec, ModelIndex};
pub use scheduler::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
pub use unet::UNet2DConditionConfig;
pub use vae::AutoencoderKLConfig;

/// A config file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not JSON, not an object, lacks a required key, or a key has the wrong type.
    #[error("{file}: {}{message}", key_prefix(.key.as_deref()))]
    Parse {
        /// The label the caller gave for the file, e.g. `unet/config.json`.
        file: String,
        /// The key concerned, where the error concerns one.
        key: Option<String>,
        /// What is wrong (from serde_json for type and syntax errors).
        message: String,
    },
    /// The keys parse but contradict each other or describe an impossible model.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The label the caller gave for the file.
        file: String,
        /// The key whose value is not allowed.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn key_prefix(key: Option<&str>) -> String {
    key.map_or_else(String::new, |key| alloc::format!("key `{key}`: "))
}

/// A value that diffusers accepts either once for all blocks or once per block, such as
/// `attention_head_dim: 8` or `attention_head_dim: [5, 10, 20, 20]`.
///
/// Deserialised like an untagged enum (a JSON array is [`OneOrMany::Many`], anything else
/// [`OneOrMany::One`]), but a wrong value says what was expected instead of serde's "did not
/// match any variant".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneOrMany<T> {
    /// One value, used for every block.
    One(T),
    /// One value per block.
    Many(Vec<T>),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let result = if value.is_array() {
            Vec::<T>::deserialize(value).map(Self::Many)
        } else {
            T::deserialize(value).map(Self::One)
        };
        result.map_err(|e| {
            D::Error::custom(alloc::format!(
                "{e} (a single value, or a list with one value per block)"
            ))
        })
    }
}

impl<T: Clone> OneOrMany<T> {
    /// The value for each of `blocks` blocks: [`OneOrMany::One`] is repeated, and
    /// [`OneOrMany::Many`] is returned as it is when it has exactly `blocks` entries (`None`
    /// otherwise).
    pub fn per_block(&self, blocks: usize) -> Option<Vec<T>> {
        match self {
            Self::One(value) => Some(alloc::vec![value.clone(); blocks]),
            Self::Many(values) => (values.len() == blocks).then(|| values.clone()),
        }
    }

    /// The number of values given per block, or `None` for [`OneOrMany::One`].
    pub fn len_if_many(&self) -> Option<usize> {
        match self {
            Self::One(_) => None,
            Self::Many(values) => Some(values.len()),
        }
    }
}

/// Checks that a per-block list has one entry per block; used by the `validate` steps.
fn check_per_block<T: Clone>(
    file: &str,
    key: &str,
    value: &OneOrMany<T>,
    blocks: usize,
) -> Result<(), ConfigError> {
    match value.len_if_many() {
        Some(len) if len != blocks => Err(invalid(
            file,
            key,
            alloc::format!(
                "has {len} entries but the model has {blocks} blocks (one per block, or a single value)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Builds a [`ConfigError::Invalid`].
fn invalid(file: &str, key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        file: file.into(),
        key: key.into(),
        message,
    }
}
