//! Input images for img2img and inpainting, prepared as diffusers' `VaeImageProcessor` does:
//! resized to the generation's size (Lanczos, as its default `resample="lanczos"`), RGB scaled
//! to [-1, 1] for the VAE encoder; masks as luma in [0, 1] (white = repaint), read on the latent
//! grid by nearest neighbour (`F.interpolate(mask, size=(h/8, w/8))`, whose default mode is
//! `nearest`: latent cell `(i, j)` takes pixel `(8i, 8j)`).
//!
//! diffusers binarizes masks at 0.5. We keep grey values where they act on latents (a soft
//! mask blends the known region back partially), and binarize where diffusers' inpainting UNets
//! need a hard cut: the masked image given to a 9-channel UNet keeps only pixels with mask
//! < 0.5. A black-and-white mask gives exactly diffusers' numbers either way.

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use sd_core::params::VAE_SCALE;

/// `image` at `width` x `height` (unchanged when it already is that size).
pub fn resized_rgb(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.dimensions() == (width, height) {
        image.clone()
    } else {
        imageops::resize(image, width, height, FilterType::Lanczos3)
    }
}

/// `mask` at `width` x `height` (unchanged when it already is that size).
pub fn resized_mask(mask: &GrayImage, width: u32, height: u32) -> GrayImage {
    if mask.dimensions() == (width, height) {
        mask.clone()
    } else {
        imageops::resize(mask, width, height, FilterType::Lanczos3)
    }
}

/// The image as the VAE encoder takes it: `[3, H, W]` planes in [-1, 1] (`2 * x / 255 - 1`).
pub fn to_nchw(image: &RgbImage) -> Vec<f32> {
    let plane = (image.width() * image.height()) as usize;
    let mut out = vec![0.0; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = f32::from(pixel[c]) / 255.0 * 2.0 - 1.0;
        }
    }
    out
}

/// diffusers' `masked_image = image * (mask < 0.5)` on `[3, H, W]` planes in [-1, 1]: the
/// region to repaint becomes 0 (grey).
pub fn masked_nchw(image: &[f32], mask: &GrayImage) -> Vec<f32> {
    let plane = (mask.width() * mask.height()) as usize;
    let mut out = image.to_vec();
    for (i, m) in mask.pixels().enumerate() {
        if f32::from(m[0]) / 255.0 >= 0.5 {
            for c in 0..3 {
                out[c * plane + i] = 0.0;
            }
        }
    }
    out
}

/// The mask on the latent grid, `[h/8, w/8]` values in [0, 1] (nearest neighbour: pixel
/// `(8i, 8j)`); `binarize` rounds them at 0.5 as the 9-channel UNets were trained with.
pub fn latent_mask(mask: &GrayImage, binarize: bool) -> Vec<f32> {
    let (w, h) = (mask.width() / VAE_SCALE, mask.height() / VAE_SCALE);
    let mut out = Vec::with_capacity((w * h) as usize);
    for i in 0..h {
        for j in 0..w {
            let m = f32::from(mask.get_pixel(j * VAE_SCALE, i * VAE_SCALE)[0]) / 255.0;
            out.push(if binarize { f32::from(m >= 0.5) } else { m });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_latent_mask_reads_the_top_left_pixel_of_each_cell() {
        let mask = GrayImage::from_fn(16, 8, |x, _| image::Luma([if x >= 8 { 200 } else { 0 }]));
        assert_eq!(latent_mask(&mask, false), vec![0.0, 200.0 / 255.0]);
        assert_eq!(latent_mask(&mask, true), vec![0.0, 1.0]);
    }

    #[test]
    fn masked_image_is_grey_where_repainted() {
        let image = RgbImage::from_pixel(8, 8, image::Rgb([255, 0, 255]));
        let mask = GrayImage::from_fn(8, 8, |x, _| image::Luma([if x < 4 { 255 } else { 0 }]));
        let masked = masked_nchw(&to_nchw(&image), &mask);
        assert_eq!(masked[0], 0.0); // repainted: grey
        assert_eq!(masked[4], 1.0); // kept: red channel at 255
        assert_eq!(masked[64 + 4], -1.0); // kept: green channel at 0
    }
}
