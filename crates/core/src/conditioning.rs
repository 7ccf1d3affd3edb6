//! The small extra inputs some UNets take besides the timestep and the text: LCM's guidance
//! embedding and SDXL's size/crop time ids, computed on the CPU as diffusers' pipelines do.

use alloc::vec::Vec;

/// diffusers' `LatentConsistencyModelPipeline.get_guidance_scale_embedding`: sinusoids of
/// `w * 1000` with `dim / 2` frequencies `10000^(-i / (dim/2 - 1))`, sines then cosines (zero
/// padded to an odd `dim`). The pipeline passes `w = guidance_scale - 1`.
pub fn guidance_scale_embedding(w: f32, dim: usize) -> Vec<f32> {
    // In f64: the arguments reach thousands of radians (w * 1000), where diffusers' float32
    // arguments are only good to ~5e-4 rad (one float32 ulp at 7000); f64 is the exact value.
    let half = dim / 2;
    let step = if half > 1 {
        libm::log(10000.0) / (half - 1) as f64
    } else {
        0.0
    };
    let scaled = f64::from(w) * 1000.0;
    let args: Vec<f64> = (0..half)
        .map(|i| scaled * libm::exp(-step * i as f64))
        .collect();
    let mut out: Vec<f32> = args.iter().map(|a| libm::sin(*a) as f32).collect();
    out.extend(args.iter().map(|a| libm::cos(*a) as f32));
    out.resize(dim, 0.0);
    out
}

/// SDXL's `add_time_ids`: original size, crop top-left, target size, each `(height, width)`;
/// the text-to-image pipeline uses the output size for both sizes and no crop.
pub fn sdxl_time_ids(width: u32, height: u32) -> [f32; 6] {
    let (w, h) = (width as f32, height as f32);
    [h, w, 0.0, 0.0, h, w]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_embedding_of_zero_is_zero_sines_and_unit_cosines() {
        let e = guidance_scale_embedding(0.0, 8);
        assert_eq!(e, [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(guidance_scale_embedding(1.0, 5).len(), 5);
        assert_eq!(guidance_scale_embedding(1.0, 5)[4], 0.0);
    }

    #[test]
    fn time_ids_are_height_first() {
        assert_eq!(
            sdxl_time_ids(1024, 768),
            [768.0, 1024.0, 0.0, 0.0, 768.0, 1024.0]
        );
    }
}
