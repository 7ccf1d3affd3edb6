//! The seeded noise source: the same standard normal `f32`s for a seed on every target.
//!
//! Plays the part of diffusers' `randn_tensor` (`diffusers/utils/torch_utils.py`) with a
//! `torch.Generator`, but it is not torch's generator, so a seed gives other pictures than in
//! diffusers. What it guarantees instead is portability: uniforms from ChaCha8 (`rand_chacha`,
//! a fixed, documented stream for a `u64` seed) and normals by the Box–Muller transform with
//! `libm`'s pure-Rust `log`, `sqrt`, `sin` and `cos` in `f64`, so native builds and
//! `wasm32-unknown-unknown` produce bit-identical noise, and with it identical images.

use alloc::vec::Vec;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// A seeded generator of standard normal values.
///
/// The values form one stream: each Box–Muller pair gives two normals, and a second one left
/// over from a call is the first of the next, so `normals(3)` then `normals(5)` is the same as
/// `normals(8)`.
#[derive(Debug, Clone)]
pub struct NoiseRng {
    chacha: ChaCha8Rng,
    spare: Option<f32>,
}

impl NoiseRng {
    /// The generator for `seed` (ChaCha8 seeded with `seed_from_u64`, stream 0).
    pub fn new(seed: u64) -> Self {
        Self {
            chacha: ChaCha8Rng::seed_from_u64(seed),
            spare: None,
        }
    }

    /// The generator for `seed` on ChaCha stream `stream`: independent streams from one seed
    /// (e.g. one per image of a batch, so image `i` is the same whatever the batch size).
    pub fn with_stream(seed: u64, stream: u64) -> Self {
        let mut chacha = ChaCha8Rng::seed_from_u64(seed);
        chacha.set_stream(stream);
        Self {
            chacha,
            spare: None,
        }
    }

    /// A uniform value in `(0, 1]` with 53 random bits.
    fn uniform_open0(&mut self) -> f64 {
        // (x >> 11) * 2^-53 is in [0, 1); one minus it is in (0, 1], safe for log.
        1.0 - (self.chacha.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// The next standard normal value.
    pub fn next_normal(&mut self) -> f32 {
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        let u1 = self.uniform_open0();
        let u2 = self.uniform_open0();
        let radius = libm::sqrt(-2.0 * libm::log(u1));
        let angle = 2.0 * core::f64::consts::PI * u2;
        self.spare = Some((radius * libm::sin(angle)) as f32);
        (radius * libm::cos(angle)) as f32
    }

    /// `n` standard normal values.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_normal()).collect()
    }

    /// Fills `out` with standard normal values.
    pub fn fill_normals(&mut self, out: &mut [f32]) {
        for x in out {
            *x = self.next_normal();
        }
    }
}
