//! Image encoding for results: PNG (with the A1111 `parameters` chunk, as the CLI writes it),
//! JPEG or lossless WebP.

use std::io::Cursor;

use image::{ExtendedColorType, ImageEncoder};

/// The image formats a client may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Png,
    Jpeg,
    Webp,
}

impl Format {
    /// The names clients use.
    pub const NAMES: [&'static str; 3] = ["png", "jpeg", "webp"];

    /// Parses `png`, `jpeg` (or `jpg`), `webp`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "png" => Some(Self::Png),
            "jpeg" | "jpg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }

    /// The name in results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }
}

/// Encodes 8-bit RGB `pixels`.
pub fn encode(
    format: Format,
    width: u32,
    height: u32,
    pixels: &[u8],
    parameters: &str,
) -> Result<Vec<u8>, String> {
    let mut out = Cursor::new(Vec::new());
    match format {
        Format::Png => return sd_models::png::encode_png(width, height, pixels, parameters),
        Format::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
            .write_image(pixels, width, height, ExtendedColorType::Rgb8),
        Format::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(
            pixels,
            width,
            height,
            ExtendedColorType::Rgb8,
        ),
    }
    .map_err(|e| format!("cannot encode {}: {e}", format.name()))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_has_its_magic_bytes() {
        let pixels = [200u8; 8 * 8 * 3];
        let magic: [(Format, &[u8]); 3] = [
            (Format::Png, b"\x89PNG"),
            (Format::Jpeg, b"\xff\xd8\xff"),
            (Format::Webp, b"RIFF"),
        ];
        for (format, magic) in magic {
            let bytes = encode(format, 8, 8, &pixels, "p").expect("encode");
            assert!(bytes.starts_with(magic), "{format:?}");
        }
        assert_eq!(Format::parse("gif"), None);
    }
}
