//! [`Images`]: what a generation made, as pictures, encoded bytes or files.

use std::path::{Path, PathBuf};

use image::RgbImage;
use sd_core::params::GenerationParams;
use sd_models::png;

use crate::error::{Error, Result};

/// An image file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ImageFormat {
    /// PNG, with the generation's parameters in an A1111-style `parameters` text chunk.
    #[default]
    Png,
    /// JPEG at quality 92 (needs the `codecs` feature, on by default).
    Jpeg,
    /// Lossless WebP (needs the `codecs` feature, on by default).
    Webp,
}

impl ImageFormat {
    /// Every format, in the order names are listed.
    pub const ALL: [Self; 3] = [Self::Png, Self::Jpeg, Self::Webp];

    /// `png`, `jpeg`, `webp`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    /// The format called `name` (`png`, `jpeg` or `jpg`, `webp`; any case).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "png" => Some(Self::Png),
            "jpeg" | "jpg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }

    /// The format a file name's extension asks for.
    pub fn from_path(path: &Path) -> Option<Self> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Self::parse)
    }
}

/// The images of one generation, with the seeds and parameters that make each again.
#[derive(Debug, Clone)]
pub struct Images {
    pub(crate) images: Vec<RgbImage>,
    pub(crate) seeds: Vec<u64>,
    pub(crate) latents: Vec<Vec<f32>>,
    pub(crate) params: GenerationParams,
    pub(crate) model: String,
    pub(crate) warnings: Vec<String>,
}

impl Images {
    /// The pictures, in order.
    pub fn images(&self) -> &[RgbImage] {
        &self.images
    }

    /// The pictures, taken out.
    pub fn into_images(self) -> Vec<RgbImage> {
        self.images
    }

    /// How many pictures there are.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there is none (never, after a successful generation).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Each picture's seed (`seed + i`): generating with it and count 1 makes that picture again.
    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }

    /// Each picture's final latents, `[4, height/8, width/8]`, before the VAE.
    pub fn latents(&self) -> &[Vec<f32>] {
        &self.latents
    }

    /// The parameters the generation ran with (defaults filled in, the first seed).
    pub fn params(&self) -> &GenerationParams {
        &self.params
    }

    /// Things to know, such as a prompt cut to the text encoder's 77 tokens.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The A1111-style parameters text of picture `index` (prompt, negative prompt, steps,
    /// sampler, guidance, seed, size, model).
    pub fn parameters_text(&self, index: usize) -> String {
        let seed = self.seeds.get(index).copied().unwrap_or(self.params.seed);
        png::parameters_text(
            &GenerationParams {
                seed,
                ..self.params.clone()
            },
            seed,
            &self.model,
        )
    }

    /// Picture `index` encoded as `format`.
    ///
    /// # Errors
    ///
    /// [`Error::Output`] for an index past the end, a format this build lacks, or an encoder
    /// failure.
    pub fn encode(&self, index: usize, format: ImageFormat) -> Result<Vec<u8>> {
        let failed = |message: String| Error::Output {
            path: PathBuf::from(format!("image {index} as {}", format.name())),
            message,
        };
        let image = self
            .images
            .get(index)
            .ok_or_else(|| failed(format!("there are {} images", self.images.len())))?;
        let (width, height) = image.dimensions();
        match format {
            ImageFormat::Png => {
                png::encode_png(width, height, image.as_raw(), &self.parameters_text(index))
                    .map_err(failed)
            }
            #[cfg(feature = "codecs")]
            ImageFormat::Jpeg | ImageFormat::Webp => {
                use image::ImageEncoder;
                let mut out = Vec::new();
                let rgb = image::ExtendedColorType::Rgb8;
                let result =
                    if format == ImageFormat::Jpeg {
                        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
                            .write_image(image.as_raw(), width, height, rgb)
                    } else {
                        image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(
                            image.as_raw(),
                            width,
                            height,
                            rgb,
                        )
                    };
                result.map_err(|e| failed(e.to_string()))?;
                Ok(out)
            }
            #[cfg(not(feature = "codecs"))]
            ImageFormat::Jpeg | ImageFormat::Webp => Err(failed(
                "this build has PNG only (the `codecs` feature is off)".into(),
            )),
        }
    }

    /// Writes every picture: to `path` when there is one, else to `path` with `-1`, `-2`, ...
    /// before the extension. The extension picks the format (`.png`, `.jpg`, `.webp`; PNG when
    /// there is none). Returns the files written.
    ///
    /// # Errors
    ///
    /// [`Error::Output`] naming the file that could not be encoded or written.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, path: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        let path = path.as_ref();
        let format = ImageFormat::from_path(path).unwrap_or_default();
        let mut files = Vec::new();
        for index in 0..self.images.len() {
            let file = numbered_path(path, index, self.images.len());
            let bytes = self.encode(index, format).map_err(|e| match e {
                Error::Output { message, .. } => Error::Output {
                    path: file.clone(),
                    message,
                },
                other => other,
            })?;
            std::fs::write(&file, bytes).map_err(|e| Error::Output {
                path: file.clone(),
                message: format!("cannot write: {e}"),
            })?;
            files.push(file);
        }
        Ok(files)
    }
}

/// `path` itself for a single image, else `stem-<index + 1>.ext`.
#[cfg(not(target_arch = "wasm32"))]
fn numbered_path(path: &Path, index: usize, count: usize) -> PathBuf {
    if count <= 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sd".into());
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    path.with_file_name(format!("{stem}-{}.{ext}", index + 1))
}
