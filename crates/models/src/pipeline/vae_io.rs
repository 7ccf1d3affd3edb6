//! The VAE at the pipeline's edges: latents to pixels in [0, 1], and an input image to its
//! latent distribution (mean, or a seeded sample, times the scaling factor).

use sd_core::params::VAE_SCALE;
use sd_core::rng::NoiseRng;

use super::StableDiffusion;
use crate::Result;

impl StableDiffusion {
    /// Decodes latents `[4, h, w]` (as the sampler leaves them) to an NHWC image in [0, 1].
    pub async fn decode(&self, latents: &[f32], h: usize, w: usize) -> Result<Vec<f32>> {
        let scale = self.networks.configs().vae.scaling_factor as f32;
        let scaled: Vec<f32> = latents.iter().map(|v| v / scale).collect();
        let nchw = self.networks.decode(&scaled, h, w).await?;
        let (height, width) = (h * VAE_SCALE as usize, w * VAE_SCALE as usize);
        let plane = height * width;
        let mut nhwc = vec![0.0; 3 * plane];
        for (i, pixel) in nhwc.chunks_mut(3).enumerate() {
            for (c, v) in pixel.iter_mut().enumerate() {
                *v = (nchw[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            }
        }
        Ok(nhwc)
    }

    /// Encodes an image `[3, H, W]` in [-1, 1] with the VAE encoder; returns the latent
    /// distribution's mean and log-variance (clamped to [-30, 20] as diffusers'
    /// `DiagonalGaussianDistribution`), each `[4, H/8, W/8]`, before the scaling factor.
    pub async fn encode_image(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut moments = self.networks.encode_image(image, height, width).await?;
        let half = moments.len() / 2;
        let logvar = moments.split_off(half);
        Ok((
            moments,
            logvar.iter().map(|v| v.clamp(-30.0, 20.0)).collect(),
        ))
    }

    /// The input image's latents, times the VAE's scaling factor: the distribution's mean, or
    /// a sample `mean + exp(logvar / 2) * noise` with `noise` drawn from `rng`.
    pub(super) async fn image_latents(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        rng: Option<&mut NoiseRng>,
    ) -> Result<Vec<f32>> {
        let (mean, logvar) = self.encode_image(image, height, width).await?;
        let scale = self.networks.configs().vae.scaling_factor as f32;
        Ok(match rng {
            None => mean.iter().map(|m| m * scale).collect(),
            Some(rng) => {
                let noise = rng.normals(mean.len());
                mean.iter()
                    .zip(&logvar)
                    .zip(&noise)
                    .map(|((m, lv), n)| (m + (0.5 * lv).exp() * n) * scale)
                    .collect()
            }
        })
    }
}
