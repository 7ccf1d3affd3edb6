//! A generation request from JavaScript (JSON, camelCase keys) into [`GenerationParams`], with
//! errors that name the field and say what is allowed.

use sd_core::params::{GenerationParams, ParamsError};
use sd_core::sampler::SamplerKind;
use serde_json::{Map, Value};

use crate::errors::{ErrorCode, WebError};

/// The keys a request may have.
const KEYS: [&str; 9] = [
    "prompt",
    "negativePrompt",
    "steps",
    "guidanceScale",
    "seed",
    "sampler",
    "width",
    "height",
    "count",
];

/// The largest seed JavaScript numbers hold exactly (`Number.MAX_SAFE_INTEGER`).
pub const MAX_SEED: u64 = (1 << 53) - 1;

fn invalid(field: &str, message: impl std::fmt::Display) -> WebError {
    WebError::new(ErrorCode::InvalidRequest, format!("{field}: {message}"))
}

fn whole(obj: &Map<String, Value>, field: &str, max: u64) -> Result<Option<u64>, WebError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .filter(|n| *n <= max)
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("must be a whole number from 0 to {max}, got {v}"),
                )
            }),
    }
}

fn text(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, WebError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(field, format!("must be a string, got {v}"))),
    }
}

/// Parses a request. Missing keys take the defaults: `native` size, 20 steps, guidance 7.5,
/// `euler_a`, one image, and `random_seed()` for the seed. The result is validated.
pub fn parse_request(
    json: &str,
    native: (u32, u32),
    random_seed: impl FnOnce() -> u64,
) -> Result<GenerationParams, WebError> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| WebError::new(ErrorCode::InvalidRequest, format!("request: not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(invalid("request", "must be an object"));
    };
    if let Some(key) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(invalid(
            key,
            format!("unknown option; the options are {}", KEYS.join(", ")),
        ));
    }
    let defaults = GenerationParams::default();
    let prompt = text(&obj, "prompt")?.ok_or_else(|| invalid("prompt", "is required"))?;
    let sampler = match text(&obj, "sampler")? {
        None => defaults.sampler,
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
    let guidance_scale = match obj.get("guidanceScale") {
        None | Some(Value::Null) => defaults.guidance_scale,
        Some(v) => v
            .as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| invalid("guidanceScale", format!("must be a number, got {v}")))?,
    };
    let size = |field, default: u32| -> Result<u32, WebError> {
        Ok(whole(&obj, field, u64::from(u32::MAX))?.map_or(default, |n| n as u32))
    };
    let params = GenerationParams {
        prompt,
        negative_prompt: text(&obj, "negativePrompt")?.unwrap_or_default(),
        steps: whole(&obj, "steps", u64::from(u32::MAX))?.map_or(defaults.steps, |n| n as usize),
        guidance_scale,
        seed: match whole(&obj, "seed", MAX_SEED)? {
            Some(seed) => seed,
            None => random_seed() & MAX_SEED,
        },
        sampler,
        width: size("width", native.0)?,
        height: size("height", native.1)?,
        count: size("count", defaults.count)?,
        latents_len: None,
    };
    params.validate().map_err(|e| params_error(&e))?;
    Ok(params)
}

/// A validation error under the request's (camelCase) name of the field.
pub fn params_error(error: &ParamsError) -> WebError {
    let field = match error.field.name() {
        "guidance_scale" => "guidanceScale",
        "latents" | "initial_latents" => "initialLatents",
        other => other,
    };
    invalid(field, &error.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<GenerationParams, WebError> {
        parse_request(json, (64, 64), || 42)
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let p = parse(r#"{"prompt": "a red digit seven"}"#).expect("valid");
        assert_eq!((p.width, p.height, p.steps, p.seed), (64, 64, 20, 42));
        assert_eq!(p.sampler, SamplerKind::EulerAncestral);
        let p = parse(
            r#"{"prompt": "x", "negativePrompt": "y", "steps": 3, "guidanceScale": 1.5,
                "seed": 9007199254740991, "sampler": "ddim", "width": 96, "height": 64, "count": 2}"#,
        )
        .expect("valid");
        assert_eq!(p.seed, MAX_SEED);
        assert_eq!(
            (p.steps, p.count, p.width, p.sampler),
            (3, 2, 96, SamplerKind::Ddim)
        );
    }

    #[test]
    fn bad_fields_are_named() {
        for (json, field) in [
            (r#"{"prompt": "x", "width": 30}"#, "width"),
            (r#"{"prompt": "x", "steps": 0}"#, "steps"),
            (r#"{"prompt": "x", "steps": 2.5}"#, "steps"),
            (r#"{"prompt": "x", "sampler": "unknown"}"#, "sampler"),
            (r#"{"prompt": "x", "seed": -1}"#, "seed"),
            (
                r#"{"prompt": "x", "guidanceScale": "high"}"#,
                "guidanceScale",
            ),
            (r#"{"prompt": "x", "stepz": 3}"#, "stepz"),
            (r#"{"prompt": 7}"#, "prompt"),
            (r#"{}"#, "prompt"),
            ("[1]", "request"),
        ] {
            let e = parse(json).expect_err(json);
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{json}");
            assert!(
                e.message.starts_with(&format!("{field}:")),
                "{json}: {}",
                e.message
            );
        }
    }
}
