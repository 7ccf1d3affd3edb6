//! The images of an img2img or inpainting request from JavaScript: `{initImage?, mask?}`, each
//! `{width, height, data}` with `data` the RGBA bytes (so an `ImageData` works as it is).

use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};

use crate::errors::{ErrorCode, WebError};

/// The largest side of an input image: larger ones are refused before any copy.
const MAX_SIDE: u32 = 4096;

/// The input image and mask of a request.
#[derive(Debug, Default)]
pub struct ImageInputs {
    /// `initImage`, as RGB (alpha dropped).
    pub init_image: Option<RgbImage>,
    /// `mask`, as luma (white = repaint).
    pub mask: Option<GrayImage>,
}

fn invalid(field: &str, message: impl std::fmt::Display) -> WebError {
    WebError::new(ErrorCode::InvalidRequest, format!("{field}: {message}"))
}

/// Reads `{initImage?, mask?}` (`undefined` or `null`: neither).
pub fn read_inputs(inputs: &JsValue) -> Result<ImageInputs, WebError> {
    if inputs.is_undefined() || inputs.is_null() {
        return Ok(ImageInputs::default());
    }
    if !inputs.is_object() {
        return Err(invalid("inputs", "must be an object {initImage?, mask?}"));
    }
    let init_image = read_rgba(inputs, "initImage")?.map(|i| DynamicImage::from(i).to_rgb8());
    let mask = read_rgba(inputs, "mask")?.map(|i| DynamicImage::from(i).to_luma8());
    if mask.is_some() && init_image.is_none() {
        return Err(invalid(
            "mask",
            "needs initImage: the mask says which part of that image to repaint",
        ));
    }
    Ok(ImageInputs { init_image, mask })
}

/// One `{width, height, data}` image of `inputs[field]`, if present.
fn read_rgba(inputs: &JsValue, field: &str) -> Result<Option<RgbaImage>, WebError> {
    let image = Reflect::get(inputs, &field.into()).unwrap_or(JsValue::UNDEFINED);
    if image.is_undefined() || image.is_null() {
        return Ok(None);
    }
    let side = |key: &str| -> Result<u32, WebError> {
        Reflect::get(&image, &key.into())
            .ok()
            .and_then(|v| v.as_f64())
            .filter(|v| v.fract() == 0.0 && (1.0..=f64::from(MAX_SIDE)).contains(v))
            .map(|v| v as u32)
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("`{key}` must be a whole number from 1 to {MAX_SIDE}"),
                )
            })
    };
    let (width, height) = (side("width")?, side("height")?);
    let data = Reflect::get(&image, &"data".into()).unwrap_or(JsValue::UNDEFINED);
    if !(data.is_instance_of::<js_sys::Uint8ClampedArray>() || data.is_instance_of::<Uint8Array>())
    {
        return Err(invalid(
            field,
            "`data` must be a Uint8ClampedArray or Uint8Array of RGBA bytes (an ImageData works)",
        ));
    }
    let bytes = Uint8Array::new(&data).to_vec();
    let needed = width as usize * height as usize * 4;
    if bytes.len() != needed {
        return Err(invalid(
            field,
            format!(
                "`data` has {} bytes; {width} x {height} RGBA needs {needed}",
                bytes.len()
            ),
        ));
    }
    Ok(RgbaImage::from_raw(width, height, bytes))
}
