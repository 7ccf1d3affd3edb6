//! The JSON request parsers of every dialect: the first byte picks it (genai-electron's
//! `/v1/images/generations`, the SD worker's `/v1/jobs`, the diffusers task handler's
//! `/task`), the rest is the body. What reads, goes through the shared parameter parser and
//! the base64 image decoder, as the server does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::params::ModelDefaults;
use sd_core::request::{Dialect, parse_params, request_object, text};
use sd_core::sampler::SamplerKind;
use sd_server::dialects::{SNAKE_CASE, jobs_api, task_api};
use sd_server::inputs::decode_base64;

fuzz_target!(|data: &[u8]| {
    let [kind, body @ ..] = data else {
        return;
    };
    let defaults = ModelDefaults {
        width: 64,
        height: 64,
        steps: 20,
        guidance_scale: 7.5,
        sampler: SamplerKind::ALL[0],
    };
    let rng = || 7u64;
    let images = |image: Option<String>, mask: Option<String>| {
        for (field, text) in [("initImage", image), ("mask", mask)] {
            if let Some(text) = text {
                let _ = decode_base64(field, &text);
            }
        }
    };
    match kind % 3 {
        0 => {
            let Ok(json) = std::str::from_utf8(body) else {
                return;
            };
            let Ok(mut obj) = request_object(json, &Dialect::HTTP) else {
                return;
            };
            let image = text(&obj, "initImage").ok().flatten();
            let mask = text(&obj, "mask").ok().flatten();
            obj.remove("initImage");
            obj.remove("mask");
            images(image, mask);
            let _ = parse_params(&obj, &Dialect::HTTP, &defaults, rng);
        }
        1 => {
            if let Ok(operation) = jobs_api::read_operation(body) {
                images(operation.image, operation.mask);
                let _ = parse_params(&operation.obj, &SNAKE_CASE, &defaults, rng);
            }
        }
        _ => {
            if let Ok(params) = task_api::read_task(body, "digits") {
                let _ = parse_params(&params, &SNAKE_CASE, &defaults, rng);
            }
        }
    }
});
