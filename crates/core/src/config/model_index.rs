//! `model_index.json`: the table of contents of a diffusers pipeline folder
//! (`diffusers/pipelines/pipeline_utils.py`, `DiffusionPipeline.save_pretrained`).
//!
//! Besides `_class_name` and `_diffusers_version`, each key names a component folder and maps
//! to `[library, class]` (e.g. `"unet": ["diffusers", "UNet2DConditionModel"]`), or to
//! `[null, null]` for a component the pipeline has none of (a removed safety checker). Keys
//! whose value is not such a pair are pipeline options (`requires_safety_checker`,
//! `force_zeros_for_empty_prompt`).

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};

use serde_json::Value;

use super::{ConfigError, json};

/// The library and class of one component: `["diffusers", "UNet2DConditionModel"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSpec {
    /// The library that defines the class (`diffusers` or `transformers`).
    pub library: String,
    /// The class name, e.g. `CLIPTextModel`, `AutoencoderKL`, `EulerDiscreteScheduler`.
    pub class: String,
}

/// A parsed `model_index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIndex {
    /// `_class_name`: the pipeline class, e.g. `StableDiffusionPipeline`,
    /// `StableDiffusionXLPipeline`, `StableDiffusionInpaintPipeline`.
    pub class_name: String,
    /// `_diffusers_version`: the diffusers version that saved the folder, if recorded.
    pub diffusers_version: Option<String>,
    /// Every `[library, class]` entry by folder name; `None` for `[null, null]`.
    pub components: BTreeMap<String, Option<ComponentSpec>>,
    /// `requires_safety_checker`, if present.
    pub requires_safety_checker: Option<bool>,
    /// `force_zeros_for_empty_prompt` (SDXL: an empty negative prompt means zero embeddings),
    /// if present.
    pub force_zeros_for_empty_prompt: Option<bool>,
}

impl ModelIndex {
    /// Parses `model_index.json`; `file` labels the file in errors.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for bad JSON, a missing `_class_name`, or a key whose value has
    /// the wrong type (a component that is not a pair of strings or nulls, an option that is
    /// not a boolean).
    pub fn from_json(file: &str, json: &str) -> Result<Self, ConfigError> {
        let object = json::parse_object(file, json)?;
        let wrong = |key: &str, expected: &str, value: &Value| ConfigError::Parse {
            file: file.into(),
            key: Some(key.into()),
            message: alloc::format!("expected {expected}, found {}", json::kind(value)),
        };
        let mut index = Self {
            class_name: String::new(),
            diffusers_version: None,
            components: BTreeMap::new(),
            requires_safety_checker: None,
            force_zeros_for_empty_prompt: None,
        };
        let mut class_name = None;
        for (key, value) in &object {
            match key.as_str() {
                "_class_name" => match value {
                    Value::String(name) => class_name = Some(name.clone()),
                    other => return Err(wrong(key, "a string", other)),
                },
                "_diffusers_version" => match value {
                    Value::String(version) => index.diffusers_version = Some(version.clone()),
                    Value::Null => {}
                    other => return Err(wrong(key, "a string", other)),
                },
                "requires_safety_checker" | "force_zeros_for_empty_prompt" => {
                    let flag = match value {
                        Value::Bool(flag) => Some(*flag),
                        Value::Null => None,
                        other => return Err(wrong(key, "a boolean", other)),
                    };
                    if key == "requires_safety_checker" {
                        index.requires_safety_checker = flag;
                    } else {
                        index.force_zeros_for_empty_prompt = flag;
                    }
                }
                _ => {
                    if let Value::Array(pair) = value {
                        let component = match pair.as_slice() {
                            [Value::String(library), Value::String(class)] => Some(ComponentSpec {
                                library: library.clone(),
                                class: class.clone(),
                            }),
                            [Value::Null, Value::Null] => None,
                            _ => {
                                return Err(wrong(
                                    key,
                                    "a [library, class] pair of strings (or [null, null])",
                                    value,
                                ));
                            }
                        };
                        index.components.insert(key.to_string(), component);
                    }
                    // Other keys are pipeline options we do not use.
                }
            }
        }
        index.class_name = class_name.ok_or_else(|| ConfigError::Parse {
            file: file.into(),
            key: Some("_class_name".into()),
            message: "required key is missing".into(),
        })?;
        Ok(index)
    }

    /// The component in folder `name`, if the pipeline has one (`None` for absent keys and for
    /// `[null, null]`).
    pub fn component(&self, name: &str) -> Option<&ComponentSpec> {
        self.components.get(name).and_then(Option::as_ref)
    }
}
