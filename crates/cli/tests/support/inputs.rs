//! The img2img and inpainting scenarios every surface is tested with: the fixtures' red 7 on
//! blue as the input, a square mask over the digit, and how far the border moved.

use std::path::PathBuf;

use super::judge::read_png_rgb;
use sd_test_support::fixtures;

/// The input picture of diffusers' img2img and inpainting references: a red 7 on blue, 64x64.
pub fn input_png() -> PathBuf {
    fixtures().join("tiny-sd-digits-refs/more_refs_png/img2img_input.png")
}

/// The input picture's RGB bytes.
pub fn input_rgb() -> Vec<u8> {
    read_png_rgb(&input_png()).0
}

/// The sides of the square mask: pixels `MASK_FROM..MASK_TO` both ways are repainted.
pub const MASK_FROM: u32 = 8;
/// See [`MASK_FROM`].
pub const MASK_TO: u32 = 56;

/// A 64x64 greyscale PNG, white over the digit (pixels 8..56 both ways), black elsewhere.
pub fn square_mask_png() -> Vec<u8> {
    let mut pixels = vec![0u8; 64 * 64];
    for y in MASK_FROM..MASK_TO {
        for x in MASK_FROM..MASK_TO {
            pixels[(y * 64 + x) as usize] = 255;
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 64, 64);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("PNG header");
    writer.write_image_data(&pixels).expect("PNG data");
    writer.finish().expect("PNG end");
    out
}

/// The mean absolute difference (0..1) between two 64x64 RGB pictures over the pixels at
/// most `width` pixels from the image's edge: far from the mask, they must stay the input's.
pub fn border_difference(a: &[u8], b: &[u8], width: usize) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for y in 0..64 {
        for x in 0..64 {
            let edge = x.min(y).min(63 - x).min(63 - y);
            if edge < width {
                for c in 0..3 {
                    let i = (y * 64 + x) * 3 + c;
                    sum += (f64::from(a[i]) - f64::from(b[i])).abs() / 255.0;
                    n += 1;
                }
            }
        }
    }
    sum / n as f64
}
