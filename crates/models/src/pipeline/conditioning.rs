//! What an input image and a mask contribute to a generation (img2img, inpainting with a
//! 4- or 9-channel UNet), encoded once for all its images.

use image::GrayImage;
use sd_core::params::{GenerationParams, VAE_SCALE};

use super::{Inputs, StableDiffusion};
use crate::Result;
use crate::image_input;

impl StableDiffusion {
    /// Encodes what the input image and mask contribute, once for all images.
    pub(super) async fn conditioning(
        &self,
        params: &GenerationParams,
        inputs: &Inputs<'_>,
    ) -> Result<Conditioning> {
        let (width, height) = (params.width, params.height);
        let (h, w) = ((height / VAE_SCALE) as usize, (width / VAE_SCALE) as usize);
        // `nets::unet::check_supported` allowed 4 or 9 input channels at load.
        let inpainting_unet = self.unet_config().in_channels == INPAINT_UNET_CHANNELS;
        let image = inputs
            .init_image
            .map(|image| image_input::to_nchw(&image_input::resized_rgb(image, width, height)));
        // A 9-channel UNet always takes a mask: without one it repaints everything.
        let mask = match (inputs.mask, inpainting_unet) {
            (Some(mask), _) => Some(image_input::resized_mask(mask, width, height)),
            (None, true) => Some(GrayImage::from_pixel(width, height, image::Luma([255]))),
            (None, false) => None,
        };
        let image_latents = match &image {
            Some(pixels) if !params.sample_init_latents => Some(
                self.image_latents(pixels, height as usize, width as usize, None)
                    .await?,
            ),
            _ => None,
        };
        let unet_extra = match (&mask, inpainting_unet) {
            (Some(mask), true) => {
                let grey = vec![0.0; 3 * (width * height) as usize];
                let masked = image_input::masked_nchw(image.as_deref().unwrap_or(&grey), mask);
                let masked_latents = self
                    .image_latents(&masked, height as usize, width as usize, None)
                    .await?;
                let mut extra = image_input::latent_mask(mask, true);
                extra.extend(masked_latents);
                Some(extra)
            }
            _ => None,
        };
        let blend_mask = match (&mask, inpainting_unet) {
            (Some(mask), false) => Some(image_input::latent_mask(mask, false)),
            _ => None,
        };
        debug_assert!(blend_mask.as_ref().is_none_or(|m| m.len() == h * w));
        Ok(Conditioning {
            image,
            image_latents,
            unet_extra,
            blend_mask,
            inpainting: mask.is_some(),
        })
    }
}

/// `in_channels` of diffusers' inpainting UNets: latents, mask, masked-image latents.
pub(super) const INPAINT_UNET_CHANNELS: usize = 9;

/// What the input image and mask contribute to every image of a generation.
pub(super) struct Conditioning {
    /// The resized input image `[3, H, W]` in [-1, 1] (img2img and inpainting).
    pub(super) image: Option<Vec<f32>>,
    /// Its latents (mean times the scaling factor), unless each image samples its own.
    pub(super) image_latents: Option<Vec<f32>>,
    /// A 9-channel UNet's extra input: the mask `[1, h, w]` and the masked image's latents
    /// `[4, h, w]`, the same at every step.
    pub(super) unet_extra: Option<Vec<f32>>,
    /// A 4-channel UNet's inpainting: the latent mask `[h, w]` (1 = repaint) blended with.
    pub(super) blend_mask: Option<Vec<f32>>,
    /// Whether this is inpainting (decides what strength 1 starts from).
    pub(super) inpainting: bool,
}
