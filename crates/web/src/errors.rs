//! Errors as JavaScript sees them: an `Error` named `SdError` with a stable `code`.

use sd_kernels::KernelError;
use sd_models::ModelError;
use wasm_bindgen::JsValue;

/// The stable error codes of the package (see `crates/web/js/index.d.ts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    NoWebGpu,
    ModelInvalid,
    InvalidRequest,
    DeviceLost,
    OutOfMemory,
    Aborted,
    Disposed,
    Internal,
}

impl ErrorCode {
    /// The code's string, as in `error.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoWebGpu => "NO_WEBGPU",
            Self::ModelInvalid => "MODEL_INVALID",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::DeviceLost => "DEVICE_LOST",
            Self::OutOfMemory => "OUT_OF_MEMORY",
            Self::Aborted => "ABORTED",
            Self::Disposed => "DISPOSED",
            Self::Internal => "INTERNAL",
        }
    }
}

/// An error on its way to JavaScript.
#[derive(Clone, Debug, PartialEq)]
pub struct WebError {
    pub code: ErrorCode,
    pub message: String,
}

impl WebError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Classifies a model error. `loading`: while loading a model, file and weight errors
    /// mean the model is broken; while generating they cannot come from the request.
    pub fn from_model(error: &ModelError, loading: bool) -> Self {
        let code = match error {
            ModelError::Cancelled => ErrorCode::Aborted,
            ModelError::Params(_) | ModelError::Sampler(_) | ModelError::Input { .. } => {
                ErrorCode::InvalidRequest
            }
            ModelError::Kernel(k) => kernel_code(k),
            ModelError::Plan(_) => ErrorCode::OutOfMemory,
            ModelError::Weights(_)
            | ModelError::Config(_)
            | ModelError::File { .. }
            | ModelError::Tokenizer(_)
            | ModelError::Unsupported { .. }
                if loading =>
            {
                ErrorCode::ModelInvalid
            }
            _ => ErrorCode::Internal,
        };
        Self::new(code, error.to_string())
    }

    /// An error of the front door (`sd-wgsl`): option errors under the request's camelCase
    /// field names, the rest as [`WebError::from_model`].
    pub fn from_front_door(error: &sd_wgsl::Error) -> Self {
        match error {
            sd_wgsl::Error::InvalidOption { option, message } => {
                let field = match *option {
                    "init_image" => "initImage",
                    "guidance_scale" => "guidanceScale",
                    "latents" => "initialLatents",
                    other => other,
                };
                Self::new(ErrorCode::InvalidRequest, format!("{field}: {message}"))
            }
            sd_wgsl::Error::Cancelled => Self::new(ErrorCode::Aborted, error.to_string()),
            sd_wgsl::Error::Load { source, .. } => Self::from_model(source, true),
            sd_wgsl::Error::Generation(source) => Self::from_model(source, false),
            _ => Self::new(ErrorCode::Internal, error.to_string()),
        }
    }

    /// The `Error` object handed to JavaScript.
    pub fn to_js(&self) -> JsValue {
        let error = js_sys::Error::new(&self.message);
        error.set_name("SdError");
        // Setting a plain property on a fresh Error object cannot fail.
        let _ = js_sys::Reflect::set(&error, &"code".into(), &self.code.as_str().into());
        error.into()
    }
}

fn kernel_code(error: &KernelError) -> ErrorCode {
    match error {
        KernelError::NoAdapter(_) | KernelError::RequestDevice(_) => ErrorCode::NoWebGpu,
        KernelError::DeviceLost(_) => ErrorCode::DeviceLost,
        KernelError::OutOfMemory(_) | KernelError::Limit { .. } => ErrorCode::OutOfMemory,
        _ => ErrorCode::Internal,
    }
}

impl From<WebError> for JsValue {
    fn from(error: WebError) -> Self {
        error.to_js()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sd_core::params::{ParamField, ParamsError};

    #[test]
    fn model_errors_get_their_codes() {
        let params = ModelError::Params(ParamsError {
            field: ParamField::Width,
            message: "30 is not allowed".into(),
        });
        let lost = ModelError::Kernel(KernelError::DeviceLost("gone".into()));
        let file = ModelError::File {
            path: "unet/config.json".into(),
            reason: "not in the model".into(),
        };
        for (error, loading, code) in [
            (ModelError::Cancelled, false, ErrorCode::Aborted),
            (params, false, ErrorCode::InvalidRequest),
            (lost, false, ErrorCode::DeviceLost),
            (file, true, ErrorCode::ModelInvalid),
        ] {
            assert_eq!(WebError::from_model(&error, loading).code, code, "{error}");
        }
        let file = ModelError::File {
            path: "x".into(),
            reason: "y".into(),
        };
        assert_eq!(
            WebError::from_model(&file, false).code,
            ErrorCode::Internal,
            "a file error while generating is ours, not the model's"
        );
    }
}
