//! The input images of img2img and inpainting: base64 text (the JSON route) or uploaded bytes
//! (the multipart route) decoded, checked and converted for the pipeline, with errors that name
//! the request field.

use std::io::Cursor;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use image::{DynamicImage, GrayImage, ImageFormat, ImageReader, Limits, RgbImage};
use sd_core::request::RequestError;

/// The widest and tallest input image decoded (a guard against decompression bombs: a few
/// kilobytes of PNG can claim gigapixels).
pub const MAX_IMAGE_SIDE: u32 = 4096;

/// Output sizes the server defaults to from an input image: its size rounded down to a
/// multiple of 8 within these bounds.
pub const SIZE_RANGE: (u32, u32) = (64, 2048);

/// An encoded image as a request gave it, under the name of its field.
#[derive(Debug)]
pub struct Given {
    /// The field as the client spelled it: `initImage`, `mask` or `image`.
    pub field: &'static str,
    pub data: Encoded,
}

/// How the image came.
#[derive(Debug)]
pub enum Encoded {
    /// Base64, maybe as a `data:image/...;base64,` URL.
    Base64(String),
    /// The file's bytes.
    Bytes(axum::body::Bytes),
}

/// The decoded inputs of one job.
#[derive(Debug, Default)]
pub struct Decoded {
    pub init_image: Option<RgbImage>,
    /// White = repaint.
    pub mask: Option<GrayImage>,
}

fn invalid(field: &str, message: impl Into<String>) -> RequestError {
    RequestError {
        field: field.into(),
        message: message.into(),
    }
}

/// The side an output defaults to for an input image's side.
pub fn default_side(side: u32) -> u32 {
    (side / 8 * 8).clamp(SIZE_RANGE.0, SIZE_RANGE.1)
}

/// Base64 (standard or URL-safe alphabet, padded or not, line breaks allowed) or a
/// `data:...;base64,` URL, to bytes.
pub fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, RequestError> {
    let text = text.trim();
    let payload = match text.strip_prefix("data:") {
        Some(url) => {
            let (_, payload) = url.split_once(";base64,").ok_or_else(|| {
                invalid(
                    field,
                    "a data URL must be base64 (`data:image/png;base64,...`)",
                )
            })?;
            payload
        }
        None => text,
    };
    let compact;
    let payload = if payload.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = payload
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect::<String>();
        compact.as_str()
    } else {
        payload
    };
    if payload.is_empty() {
        return Err(invalid(
            field,
            "is empty; expected a base64 PNG, JPEG or WebP image",
        ));
    }
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let url_safe = payload.contains(['-', '_']);
    let engine = GeneralPurpose::new(
        if url_safe {
            &alphabet::URL_SAFE
        } else {
            &alphabet::STANDARD
        },
        config,
    );
    engine
        .decode(payload)
        .map_err(|e| invalid(field, format!("not valid base64 ({e})")))
}

/// PNG, JPEG or WebP bytes to an image, refusing other formats and images over
/// [`MAX_IMAGE_SIDE`] before decoding them.
pub fn decode_image(field: &str, bytes: &[u8]) -> Result<DynamicImage, RequestError> {
    let not_image =
        |detail: String| invalid(field, format!("not a PNG, JPEG or WebP image: {detail}"));
    if bytes.is_empty() {
        return Err(not_image("the file is empty".into()));
    }
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| not_image(e.to_string()))
    };
    match reader()?.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        Some(other) => {
            return Err(not_image(format!(
                "it is {}",
                other
                    .extensions_str()
                    .first()
                    .map_or_else(|| format!("{other:?}"), |ext| format!("a .{ext} file"))
            )));
        }
        None => return Err(not_image("unknown file format".into())),
    }
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| not_image(e.to_string()))?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(invalid(
            field,
            format!(
                "the image is {width}x{height} pixels; the largest allowed is \
                 {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}"
            ),
        ));
    }
    if width == 0 || height == 0 {
        return Err(invalid(
            field,
            format!("the image is {width}x{height} pixels"),
        ));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    // The widest decoder output at the largest size: 16-bit RGBA.
    limits.max_alloc = Some(u64::from(MAX_IMAGE_SIDE).pow(2) * 8);
    let mut reader = reader()?;
    reader.limits(limits);
    reader.decode().map_err(|e| not_image(e.to_string()))
}

/// The encoded file: base64 decoded (the text is dropped first), an upload as it came.
fn bytes_of(given: Given) -> Result<(&'static str, axum::body::Bytes), RequestError> {
    let bytes = match given.data {
        Encoded::Base64(text) => decode_base64(given.field, &text)?.into(),
        Encoded::Bytes(bytes) => bytes,
    };
    Ok((given.field, bytes))
}

/// Decodes a job's input image (to RGB; alpha is dropped) and mask (to luma). CPU work
/// (tens of milliseconds for a large image): run it off the async threads.
pub fn decode(image: Option<Given>, mask: Option<Given>) -> Result<Decoded, RequestError> {
    let init_image = match image {
        None => None,
        Some(given) => {
            let (field, bytes) = bytes_of(given)?;
            Some(decode_image(field, &bytes)?.into_rgb8())
        }
    };
    let mask = match mask {
        None => None,
        Some(given) => {
            let (field, bytes) = bytes_of(given)?;
            Some(decode_image(field, &bytes)?.into_luma8())
        }
    };
    Ok(Decoded { init_image, mask })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        RgbImage::new(width, height)
            .write_to(&mut out, ImageFormat::Png)
            .expect("encode");
        out.into_inner()
    }

    #[test]
    fn base64_in_its_spellings() {
        let bytes = png(8, 8);
        let standard = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        let wrapped: String = standard
            .as_bytes()
            .chunks(20)
            .map(|c| format!("{}\n", std::str::from_utf8(c).expect("ascii")))
            .collect();
        for text in [
            standard.clone(),
            url_safe,
            wrapped,
            format!("data:image/png;base64,{standard}"),
        ] {
            assert_eq!(decode_base64("initImage", &text).expect(&text), bytes);
        }
        for bad in ["not base64!", "", "data:image/png,abc"] {
            let e = decode_base64("initImage", bad).expect_err(bad);
            assert_eq!(e.field, "initImage");
        }
    }

    #[test]
    fn images_are_checked_before_decoding() {
        let image = decode_image("image", &png(20, 12)).expect("a PNG");
        assert_eq!((image.width(), image.height()), (20, 12));
        for format in [ImageFormat::Jpeg, ImageFormat::WebP] {
            let mut out = Cursor::new(Vec::new());
            RgbImage::new(16, 24)
                .write_to(&mut out, format)
                .expect("encode");
            let image = decode_image("image", out.get_ref()).expect("JPEG and WebP decode");
            assert_eq!((image.width(), image.height()), (16, 24), "{format:?}");
        }
        let e = decode_image("image", b"GIF89a....").expect_err("gif");
        assert!(
            e.message.starts_with("not a PNG, JPEG or WebP image"),
            "{e}"
        );
        let e = decode_image("mask", b"hello").expect_err("text");
        assert_eq!(e.field, "mask");
        let e = decode_image("image", &png(MAX_IMAGE_SIDE + 8, 8)).expect_err("too wide");
        assert!(e.message.contains("4096x4096"), "{e}");
        let mut truncated = png(64, 64);
        truncated.truncate(truncated.len() / 2);
        decode_image("image", &truncated).expect_err("truncated");
    }

    #[test]
    fn default_sizes() {
        assert_eq!(default_side(64), 64);
        assert_eq!(default_side(517), 512);
        assert_eq!(default_side(30), 64);
        assert_eq!(default_side(4096), 2048);
    }
}
