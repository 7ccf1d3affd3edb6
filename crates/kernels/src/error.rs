//! The one error type of the kernel layer.

/// Everything that can go wrong between the caller and the GPU, as a typed value.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No adapter matched the request.
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),

    /// An environment variable has a value we cannot use.
    #[error("environment variable {var}={value:?} is not valid: {allowed}")]
    Env {
        var: &'static str,
        value: String,
        allowed: &'static str,
    },

    /// The adapter cannot give what the model needs.
    #[error("the GPU's limit {name} is {max} bytes, but {needed} bytes are needed")]
    Limit {
        name: &'static str,
        needed: u64,
        max: u64,
    },

    /// The adapter refused to create a device.
    #[error("could not create the GPU device: {0}")]
    RequestDevice(String),

    /// The GPU reported a validation error (a bug in a kernel or launcher).
    #[error("GPU validation error: {0}")]
    Validation(String),

    /// The GPU ran out of memory.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),

    /// The device was lost (driver reset, GPU removed, browser tab backgrounded for too long).
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    /// A launcher was given tensors whose shapes do not fit together.
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    /// A launch would exceed a hard dispatch limit.
    #[error("{op}: {detail}")]
    Dispatch { op: &'static str, detail: String },

    /// Reading a buffer back to the CPU failed.
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
}

impl KernelError {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Self::Shape {
            op,
            detail: detail.into(),
        }
    }
}
