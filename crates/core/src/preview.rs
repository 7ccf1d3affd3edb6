//! A cheap preview of latents as a picture, for progress UIs: each pixel is a fixed linear mix
//! of the four latent channels, no VAE. The factors are the ones the community fitted for SD 1.x
//! (AUTOMATIC1111's and ComfyUI's `latent_rgb_factors`); on other VAEs the colours are only
//! roughly right, which is all a preview needs.

use alloc::vec::Vec;

use crate::params::LATENT_CHANNELS;

/// RGB contribution of each latent channel.
const LATENT_RGB_FACTORS: [[f32; 3]; LATENT_CHANNELS] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// Latents `[4, height, width]` (one image) as RGBA bytes, `height x width`, row-major, opaque.
/// Returns an empty vector if `latents` is not that long.
pub fn latents_to_rgba(latents: &[f32], height: usize, width: usize) -> Vec<u8> {
    let plane = height * width;
    if latents.len() != LATENT_CHANNELS * plane {
        return Vec::new();
    }
    let mut rgba = Vec::with_capacity(4 * plane);
    for i in 0..plane {
        for c in 0..3 {
            let v: f32 = LATENT_RGB_FACTORS
                .iter()
                .enumerate()
                .map(|(k, factors)| latents[k * plane + i] * factors[c])
                .sum();
            // [-1, 1] -> [0, 255]
            rgba.push(((v + 1.0) * 127.5).clamp(0.0, 255.0) as u8);
        }
        rgba.push(255);
    }
    rgba
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pixel_is_the_channel_mix() {
        // 1x2 latents: pixel 0 = channel 0 only, pixel 1 = zeros (mid-grey).
        let latents = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let rgba = latents_to_rgba(&latents, 1, 2);
        assert_eq!(rgba.len(), 8);
        assert_eq!(&rgba[..4], &[172, 156, 168, 255]);
        assert_eq!(&rgba[4..], &[127, 127, 127, 255]);
    }

    #[test]
    fn wrong_length_gives_nothing() {
        assert!(latents_to_rgba(&[0.0; 7], 1, 2).is_empty());
    }
}
