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
}
