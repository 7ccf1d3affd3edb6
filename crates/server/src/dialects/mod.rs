//! Other HTTP APIs our users already speak, as thin adapters onto the one job queue: each
//! reads its own request shape into the shared parser's common keys ([`crate::submit`]),
//! answers in its own shapes and words errors as its clients expect them.
//!
//! - [`jobs_api`]: the SD worker's job API (`POST /v1/jobs`, SSE at `/v1/jobs/{id}/stream`).
//! - [`task_api`]: the diffusers task handler's API (`POST /task`, `GET /task/{task_id}`).

pub mod jobs_api;
pub mod task_api;

use sd_core::request::Dialect;

/// How the shared parser reads both dialects' parameters once their keys are translated
/// ([`to_common`]): the guidance scale is `guidance_scale`, one image per job.
pub const SNAKE_CASE: Dialect = Dialect {
    guidance_key: "guidance_scale",
    extra_keys: &[],
    max_count: 1,
};

/// Snake_case keys whose common (camelCase) name differs.
const RENAMED: [(&str, &str); 2] = [
    ("negative_prompt", "negativePrompt"),
    ("image", "initImage"),
];

/// A snake_case request key under its name in the shared parser.
pub fn to_common(key: &str) -> &str {
    RENAMED
        .iter()
        .find(|(snake, _)| *snake == key)
        .map_or(key, |(_, common)| common)
}

/// A field the shared parser or the worker named, in snake_case.
pub fn to_snake(field: &str) -> &str {
    RENAMED
        .iter()
        .find(|(_, common)| *common == field)
        .map_or(field, |(snake, _)| snake)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_translate_both_ways() {
        for key in [
            "negative_prompt",
            "image",
            "steps",
            "guidance_scale",
            "seed",
        ] {
            assert_eq!(to_snake(to_common(key)), key);
        }
        assert_eq!(to_common("negative_prompt"), "negativePrompt");
        assert_eq!(to_snake("initImage"), "image");
    }

    /// Any JSON value, a few levels deep, with the dialects' own keys among the object keys.
    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            "\\PC{0,8}".prop_map(Value::from),
            prop_oneof![
                Just("SDGenerate"),
                Just("ImageTransform"),
                Just("text-to-image"),
                Just("diffusers"),
                Just("digits"),
            ]
            .prop_map(Value::from),
        ];
        let key = prop_oneof![
            Just("operation"),
            Just("type"),
            Just("prompt"),
            Just("image"),
            Just("mask"),
            Just("steps"),
            Just("task_type"),
            Just("params"),
            Just("provider"),
            Just("model_id"),
            Just("guidance_scale"),
            Just("x"),
        ];
        leaf.prop_recursive(3, 24, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map(key.clone(), inner, 0..5).prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest::proptest! {
        // A fixed seed: CI runs the same cases every time.
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5d_2026),
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// The job and task APIs' readers refuse or read any JSON, and what they read goes
        /// through the shared parser into valid parameters or a refusal naming a field.
        #[test]
        fn the_dialect_readers_refuse_or_read_any_json(value in any_json()) {
            let body = value.to_string();
            let defaults = sd_core::params::ModelDefaults {
                width: 64,
                height: 64,
                steps: 20,
                guidance_scale: 7.5,
                sampler: sd_core::sampler::SamplerKind::ALL[0],
            };
            let operation = jobs_api::read_operation(body.as_bytes());
            if let Ok(params) = operation.and_then(|op| {
                sd_core::request::parse_params(&op.obj, &SNAKE_CASE, &defaults, || 1)
                    .map_err(crate::routes::ApiError::invalid)
            }) {
                proptest::prop_assert!(params.validate().is_ok(), "{params:?}");
            }
            if let Ok(params) = task_api::read_task(body.as_bytes(), "digits")
                && let Err(e) = sd_core::request::parse_params(&params, &SNAKE_CASE, &defaults, || 1)
            {
                proptest::prop_assert!(params.contains_key(&e.field) || e.field == "prompt", "{e}");
            }
        }
    }
}
