//! Which device runs a model: the WGSL kernels on a GPU, or candle on the CPU, and how `auto`
//! chooses between them.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Where a model runs (`--device`, [`crate::LoadOptions::device`], `sd serve --device`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Device {
    /// A hardware GPU when wgpu finds one; otherwise the CPU backend, also when the only
    /// adapter is a software one (lavapipe, SwiftShader, WARP), which the CPU backend outruns
    /// (`cargo xtask bench`: about 10x on the digits model).
    #[default]
    Auto,
    /// The WGSL kernels on whatever adapter wgpu finds, software ones included; no adapter at
    /// all is an error ([`Error::NoGpu`]).
    Gpu,
    /// candle-transformers on the CPU; wgpu is never touched.
    Cpu,
}

impl Device {
    /// Every value, as the option spells them.
    pub const NAMES: [&'static str; 3] = ["auto", "gpu", "cpu"];

    /// The name the option takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Gpu => "gpu",
            Self::Cpu => "cpu",
        }
    }

    /// `SD_DEVICE` when set (the default of `--device` and of [`crate::LoadOptions`]), else
    /// [`Device::Auto`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] naming `SD_DEVICE` for a value other than `auto`, `gpu`, `cpu`.
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var("SD_DEVICE") {
            Ok(value) if !value.trim().is_empty() => value.parse().map_err(|e: Error| match e {
                Error::InvalidOption { message, .. } => Error::InvalidOption {
                    option: "SD_DEVICE",
                    message,
                },
                other => other,
            }),
            _ => Ok(Self::Auto),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "gpu" | "webgpu" | "wgpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(Error::InvalidOption {
                option: "device",
                message: format!("`{other}` is not a device; use auto, gpu or cpu"),
            }),
        }
    }
}

/// What to do to get the GPU path on this system, for the messages that say it is missing.
pub fn gpu_remedy() -> &'static str {
    if cfg!(target_os = "linux") {
        "install a Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`; with an \
         NVIDIA GPU, its proprietary driver)"
    } else if cfg!(target_os = "macos") {
        "Metal comes with macOS 10.13 and later; check that the machine has a GPU"
    } else if cfg!(target_os = "windows") {
        "install or update the GPU vendor's driver (DirectX 12 or Vulkan)"
    } else {
        "install the GPU vendor's driver with Vulkan support"
    }
}
