//! A generation request from JavaScript (JSON, camelCase keys, `guidanceScale`) into
//! [`GenerationParams`], through `sd-core`'s shared request parser.

use sd_core::params::{GenerationParams, ModelDefaults, ParamsError};
use sd_core::request::{Dialect, RequestError, parse_params, request_object};

use crate::errors::{ErrorCode, WebError};

fn invalid(error: RequestError) -> WebError {
    WebError::new(ErrorCode::InvalidRequest, error.to_string())
}

/// Parses a request. Missing keys take the model's defaults (size, steps, guidance, sampler),
/// one image, and `random_seed()` for the seed. The result is validated.
pub fn parse_request(
    json: &str,
    model: &ModelDefaults,
    random_seed: impl FnOnce() -> u64,
) -> Result<GenerationParams, WebError> {
    let obj = request_object(json, &Dialect::WEB).map_err(invalid)?;
    parse_params(&obj, &Dialect::WEB, model, random_seed).map_err(invalid)
}

/// A validation error under the request's (camelCase) name of the field.
pub fn params_error(error: &ParamsError) -> WebError {
    invalid(sd_core::request::params_error(error, &Dialect::WEB))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_invalid_request_naming_the_field() {
        let e = parse_request(
            r#"{"prompt": "x", "width": 30}"#,
            &ModelDefaults::sized(64, 64),
            || 1,
        )
        .expect_err("width 30");
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(
            e.message.starts_with("width: 30 is not allowed"),
            "{}",
            e.message
        );
        let p = parse_request(r#"{"prompt": "x"}"#, &ModelDefaults::sized(96, 64), || 5)
            .expect("valid");
        assert_eq!((p.width, p.height, p.seed), (96, 64, 5));
    }
}
