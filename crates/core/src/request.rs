//! Generation requests as JSON objects (the browser package's and the HTTP API's), checked
//! field by field into [`GenerationParams`], with errors that name the field as the client
//! spelled it and say what is allowed.
//!
//! The two clients spell one field differently (`guidanceScale` in the npm package,
//! `cfgScale` in the HTTP API, as the clients it serves already send it) and allow different
//! extra keys and batch sizes: a [`Dialect`] says which.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde_json::{Map, Value};

use crate::params::{GenerationParams, ModelDefaults, ParamLimits, ParamsError};
use crate::sampler::SamplerKind;

/// The largest seed JavaScript numbers hold exactly (`Number.MAX_SAFE_INTEGER`).
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// How one client spells a request.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    /// The key of the guidance scale.
    pub guidance_key: &'static str,
    /// Keys this client may send besides the common ones (read by the caller).
    pub extra_keys: &'static [&'static str],
    /// The most images one request may ask for.
    pub max_count: u32,
}

impl Dialect {
    /// The npm package: `guidanceScale`.
    pub const WEB: Self = Self {
        guidance_key: "guidanceScale",
        extra_keys: &[],
        max_count: 16,
    };
    /// The HTTP API (`/v1/images/generations`): `cfgScale`, `format`, `initImage`, `mask`,
    /// 1 to 5 images.
    pub const HTTP: Self = Self {
        guidance_key: "cfgScale",
        extra_keys: &["format", "initImage", "mask"],
        max_count: 5,
    };
}

/// A request that cannot be run: the field (as the client spelled it) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The field, or `request` for the body as a whole.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn invalid(field: &str, message: impl fmt::Display) -> RequestError {
    RequestError {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// A whole number in `0..=max`, if present.
pub fn whole(obj: &Map<String, Value>, field: &str, max: u64) -> Result<Option<u64>, RequestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| libm::trunc(*f) == *f && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .filter(|n| *n <= max)
            .map(Some)
            .ok_or_else(|| {
                if v.is_number() {
                    invalid(
                        field,
                        format!("must be a whole number from 0 to {max}, got {v}"),
                    )
                } else {
                    invalid(field, format!("must be a whole number, got {v}"))
                }
            }),
    }
}

/// A string, if present.
pub fn text(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, RequestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(field, format!("must be a string, got {v}"))),
    }
}

/// A string, if present, moved out of the object (no copy: request images are large).
pub fn take_text(
    obj: &mut Map<String, Value>,
    field: &str,
) -> Result<Option<String>, RequestError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(field, format!("must be a string, got {v}"))),
    }
}

/// The common keys, in the order error messages list them.
fn common_keys(dialect: &Dialect) -> [&'static str; 10] {
    [
        "prompt",
        "negativePrompt",
        "steps",
        dialect.guidance_key,
        "seed",
        "sampler",
        "width",
        "height",
        "count",
        "strength",
    ]
}

/// Parses a request body into its object, refusing anything that is not a JSON object or has
/// keys the dialect does not know.
pub fn request_object(json: &str, dialect: &Dialect) -> Result<Map<String, Value>, RequestError> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| invalid("request", format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(invalid("request", "must be a JSON object"));
    };
    let common = common_keys(dialect);
    let known = |k: &str| common.contains(&k) || dialect.extra_keys.contains(&k);
    if let Some(key) = obj.keys().find(|k| !known(k)) {
        let mut all: Vec<&str> = common.to_vec();
        all.extend(dialect.extra_keys);
        return Err(invalid(
            key,
            format!("unknown option; the options are {}", all.join(", ")),
        ));
    }
    Ok(obj)
}

/// Reads the common fields of a request object. Missing keys take the model's defaults (size,
/// steps, guidance, sampler), one image, strength 0.8 and `random_seed()` for the seed. The
/// result is validated (sizes, steps, count up to the dialect's maximum).
pub fn parse_params(
    obj: &Map<String, Value>,
    dialect: &Dialect,
    model: &ModelDefaults,
    random_seed: impl FnOnce() -> u64,
) -> Result<GenerationParams, RequestError> {
    let defaults = GenerationParams::default();
    let prompt = text(obj, "prompt")?.ok_or_else(|| invalid("prompt", "is required"))?;
    let sampler = match text(obj, "sampler")? {
        None => model.sampler,
        Some(name) => SamplerKind::parse(&name).map_err(|_| {
            let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
            invalid(
                "sampler",
                format!(
                    "unknown sampler `{name}`; the samplers are {}",
                    names.join(", ")
                ),
            )
        })?,
    };
    let guidance_scale = match obj.get(dialect.guidance_key) {
        None | Some(Value::Null) => model.guidance_scale,
        Some(v) => v
            .as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| invalid(dialect.guidance_key, format!("must be a number, got {v}")))?,
    };
    let size = |field, default: u32| -> Result<u32, RequestError> {
        Ok(whole(obj, field, u64::from(u32::MAX))?.map_or(default, |n| n as u32))
    };
    let params = GenerationParams {
        prompt,
        negative_prompt: text(obj, "negativePrompt")?.unwrap_or_default(),
        steps: whole(obj, "steps", u64::from(u32::MAX))?.map_or(model.steps, |n| n as usize),
        guidance_scale,
        seed: match whole(obj, "seed", MAX_SEED)? {
            Some(seed) => seed,
            None => random_seed() & MAX_SEED,
        },
        sampler,
        width: size("width", model.width)?,
        height: size("height", model.height)?,
        count: size("count", defaults.count)?,
        strength: match obj.get("strength") {
            None | Some(Value::Null) => defaults.strength,
            Some(v) => v
                .as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| invalid("strength", format!("must be a number, got {v}")))?,
        },
        sample_init_latents: false,
        latents_len: None,
    };
    let limits = ParamLimits {
        max_count: dialect.max_count,
        ..ParamLimits::default()
    };
    params
        .validate_with(&limits)
        .map_err(|e| params_error(&e, dialect))?;
    Ok(params)
}

/// A validation error under the client's name of the field.
pub fn params_error(error: &ParamsError, dialect: &Dialect) -> RequestError {
    let field = match error.field.name() {
        "guidance_scale" => dialect.guidance_key,
        "latents" => "initialLatents",
        other => other,
    };
    invalid(field, &error.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str, dialect: &Dialect) -> Result<GenerationParams, RequestError> {
        let obj = request_object(json, dialect)?;
        parse_params(&obj, dialect, &ModelDefaults::sized(64, 64), || 42)
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let p = parse(r#"{"prompt": "a red digit seven"}"#, &Dialect::WEB).expect("valid");
        assert_eq!((p.width, p.height, p.steps, p.seed), (64, 64, 20, 42));
        assert_eq!(p.sampler, SamplerKind::EULER_A);
        let p = parse(
            r#"{"prompt": "x", "negativePrompt": "y", "steps": 3, "guidanceScale": 1.5,
                "seed": 9007199254740991, "sampler": "ddim", "width": 96, "height": 64, "count": 2}"#,
            &Dialect::WEB,
        )
        .expect("valid");
        assert_eq!(p.seed, MAX_SEED);
        assert_eq!(
            (p.steps, p.count, p.width, p.sampler),
            (3, 2, 96, SamplerKind::DDIM)
        );
        let p = parse(
            r#"{"prompt": "x", "cfgScale": 3, "format": "jpeg"}"#,
            &Dialect::HTTP,
        )
        .expect("valid");
        assert_eq!(p.guidance_scale, 3.0);
    }

    #[test]
    fn bad_fields_are_named_as_the_client_spells_them() {
        for (json, dialect, field) in [
            (r#"{"prompt": "x", "width": 30}"#, Dialect::WEB, "width"),
            (r#"{"prompt": "x", "steps": 0}"#, Dialect::WEB, "steps"),
            (r#"{"prompt": "x", "steps": 2.5}"#, Dialect::WEB, "steps"),
            (
                r#"{"prompt": "x", "sampler": "unknown"}"#,
                Dialect::WEB,
                "sampler",
            ),
            (r#"{"prompt": "x", "seed": -1}"#, Dialect::WEB, "seed"),
            (
                r#"{"prompt": "x", "guidanceScale": "high"}"#,
                Dialect::WEB,
                "guidanceScale",
            ),
            (
                r#"{"prompt": "x", "guidanceScale": -1}"#,
                Dialect::WEB,
                "guidanceScale",
            ),
            (
                r#"{"prompt": "x", "cfgScale": -1}"#,
                Dialect::HTTP,
                "cfgScale",
            ),
            (
                r#"{"prompt": "x", "cfgScale": 2}"#,
                Dialect::WEB,
                "cfgScale",
            ),
            (r#"{"prompt": "x", "count": 6}"#, Dialect::HTTP, "count"),
            (
                r#"{"prompt": "x", "strength": 1.5}"#,
                Dialect::HTTP,
                "strength",
            ),
            (
                r#"{"prompt": "x", "strength": "a"}"#,
                Dialect::WEB,
                "strength",
            ),
            (r#"{"prompt": "x", "stepz": 3}"#, Dialect::WEB, "stepz"),
            (r#"{"prompt": 7}"#, Dialect::WEB, "prompt"),
            (r#"{}"#, Dialect::HTTP, "prompt"),
            ("[1]", Dialect::WEB, "request"),
            ("{", Dialect::HTTP, "request"),
        ] {
            let e = parse(json, &dialect).expect_err(json);
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }
}
