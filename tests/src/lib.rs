//! Helpers shared by the cross-checks against candle-transformers (`tests/`) and the pipeline
//! benchmark (`examples/`): seeded random weights written as an in-memory safetensors file under
//! diffusers' names, seeded random inputs, and the error report of a comparison. Also the
//! browser tests' parts: the static file server ([`static_server`]) and the paths, web model and
//! Node driver they share with the web benchmark ([`web`]).
//!
//! The random weights are scaled like a real initialisation, so activations stay O(1) through
//! SD 1.5's depth and a relative error means something: weight matrices and kernels are uniform
//! with variance `1 / fan_in` (the variance of `normal / sqrt(fan_in)`), norm scales are
//! `1 + small noise`, biases and norm shifts are small, embeddings have unit variance.

use std::fmt;

pub mod static_server;
pub mod web;

/// A small, fast, seeded generator (SplitMix64): the values depend only on the seed, so the
/// same weights can be made again anywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for `seed` and a name (FNV-1a of the name mixed into the seed), so each
    /// tensor's values do not depend on the order tensors are made in.
    pub fn for_name(seed: u64, name: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self(seed ^ h.rotate_left(17))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Two uniform values in [-1, 1) from one draw (24 bits each).
    fn pair(&mut self) -> [f32; 2] {
        const SCALE: f32 = 1.0 / (1u32 << 23) as f32;
        let r = self.next_u64();
        let a = ((r >> 40) as u32) as f32 * SCALE - 1.0;
        let b = (((r >> 8) & 0x00ff_ffff) as u32) as f32 * SCALE - 1.0;
        [a, b]
    }

    /// Fills `out` with uniform values of mean `mean` and standard deviation `std`.
    pub fn fill_uniform(&mut self, out: &mut [f32], mean: f32, std: f32) {
        // Uniform on [-1, 1) has variance 1/3.
        let amplitude = std * 3f32.sqrt();
        let mut pairs = out.chunks_exact_mut(2);
        for p in &mut pairs {
            let [a, b] = self.pair();
            p[0] = mean + amplitude * a;
            p[1] = mean + amplitude * b;
        }
        for v in pairs.into_remainder() {
            *v = mean + amplitude * self.pair()[0];
        }
    }

    /// `n` uniform values of mean 0 and standard deviation `std`.
    pub fn uniform(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut out = vec![0.0; n];
        self.fill_uniform(&mut out, 0.0, std);
        out
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// How a tensor is initialised, from its name and shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Init {
    pub mean: f32,
    pub std: f32,
}

impl Init {
    /// The rule for a diffusers / transformers tensor:
    /// - `*embedding*` tables: unit variance;
    /// - other tensors of rank >= 2 (linear weights `[out, in]`, conv kernels
    ///   `[out, in, kh, kw]`): variance `1 / fan_in`, `fan_in` = the product of all but the
    ///   first dimension;
    /// - 1-D `*norm*.weight`: `1 + 0.1 * noise`;
    /// - other 1-D tensors (biases, norm shifts): `0.05 * noise`.
    pub fn for_tensor(name: &str, shape: &[usize]) -> Self {
        let base = name.rsplit('.').nth(1).unwrap_or("");
        if name.contains("embedding") && shape.len() >= 2 {
            Self {
                mean: 0.0,
                std: 1.0,
            }
        } else if shape.len() >= 2 {
            let fan_in: usize = shape[1..].iter().product();
            Self {
                mean: 0.0,
                std: 1.0 / (fan_in.max(1) as f32).sqrt(),
            }
        } else if name.ends_with(".weight") && base.contains("norm") {
            Self {
                mean: 1.0,
                std: 0.1,
            }
        } else {
            Self {
                mean: 0.0,
                std: 0.05,
            }
        }
    }
}

/// The tensors of a random model, by name and shape.
pub type TensorList = Vec<(String, Vec<usize>)>;

/// Which values [`random_safetensors`] may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// Any f32.
    F32,
    /// f32 values that f16 represents exactly (rounded to nearest), so a model storing its
    /// weights as f16 computes with exactly the weights an f32 oracle uses.
    F16Exact,
}

/// Writes a safetensors file (f32, little-endian) holding every tensor of `tensors` with random
/// values: tensor `name` gets [`Init::for_tensor`] drawn from [`Rng::for_name`]`(seed, name)`,
/// so the same list and seed always give the same bytes. The data is written in place: the
/// file is the only copy of the weights.
pub fn random_safetensors(tensors: &[(String, Vec<usize>)], seed: u64, values: Values) -> Vec<u8> {
    write_random(tensors, seed, ("F32", 4), |v, dst| {
        let v = if values == Values::F16Exact {
            half::f16::from_f32(v).to_f32()
        } else {
            v
        };
        dst.copy_from_slice(&v.to_le_bytes());
    })
}

/// [`random_safetensors`] stored as f16, as SD checkpoints ship (half the bytes: SD 1.5's
/// UNet is 1.7 GB so).
pub fn random_safetensors_f16(tensors: &[(String, Vec<usize>)], seed: u64) -> Vec<u8> {
    write_random(tensors, seed, ("F16", 2), |v, dst| {
        dst.copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
    })
}

/// The safetensors layout of [`random_safetensors`], each value stored by `store`.
fn write_random(
    tensors: &[(String, Vec<usize>)],
    seed: u64,
    (dtype, width): (&str, usize),
    store: impl Fn(f32, &mut [u8]),
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * width;
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))
        .expect("a JSON map always serialises");
    // Pad the header with spaces so the data starts 8-byte aligned, as safetensors writes it.
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let data_start = 8 + header.len();
    let mut out = vec![0u8; data_start + offset];
    out[..8].copy_from_slice(&(header.len() as u64).to_le_bytes());
    out[8..data_start].copy_from_slice(&header);

    let mut rest = &mut out[data_start..];
    let mut scratch = Vec::new();
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let (bytes, tail) = rest.split_at_mut(n * width);
        rest = tail;
        let init = Init::for_tensor(name, shape);
        scratch.resize(n, 0.0);
        Rng::for_name(seed, name).fill_uniform(&mut scratch, init.mean, init.std);
        for (dst, &v) in bytes.chunks_exact_mut(width).zip(&scratch) {
            store(v, dst);
        }
    }
    out
}

/// How far `got` is from `want`: the largest absolute difference, where it is, and the largest
/// reference magnitude, so the error can be read relative to the output's scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// Elements compared.
    pub len: usize,
    /// `max |got - want|` (infinite when either side has a NaN or an infinity).
    pub max_abs: f32,
    /// Index of that element.
    pub worst: usize,
    /// `max |want|`.
    pub max_ref: f32,
    /// Elements that are not finite on either side.
    pub non_finite: usize,
}

impl Comparison {
    /// Compares two outputs of the same length.
    pub fn new(got: &[f32], want: &[f32]) -> Self {
        assert_eq!(got.len(), want.len(), "outputs of different lengths");
        let mut c = Self {
            len: got.len(),
            max_abs: 0.0,
            worst: 0,
            max_ref: 0.0,
            non_finite: 0,
        };
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let d = if g.is_finite() && w.is_finite() {
                (g - w).abs()
            } else {
                c.non_finite += 1;
                f32::INFINITY
            };
            if d > c.max_abs {
                c.max_abs = d;
                c.worst = i;
            }
            if w.is_finite() {
                c.max_ref = c.max_ref.max(w.abs());
            }
        }
        c
    }

    /// `max |got - want| / max |want|`: the error relative to the output's scale.
    pub fn relative(&self) -> f32 {
        if self.max_ref > 0.0 {
            self.max_abs / self.max_ref
        } else {
            self.max_abs
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max abs {:.3e} (at {} of {}), max |ref| {:.3e}, relative {:.3e}, non-finite {}",
            self.max_abs,
            self.worst,
            self.len,
            self.max_ref,
            self.relative(),
            self.non_finite
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_has_the_asked_moments() {
        let v = Rng::new(1).uniform(100_000, 0.5);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "std {}", var.sqrt());
    }

    #[test]
    fn init_rules() {
        let conv = Init::for_tensor("conv_in.weight", &[320, 4, 3, 3]);
        assert!((conv.std - 1.0 / 6.0).abs() < 1e-6);
        let norm = Init::for_tensor("down_blocks.0.resnets.0.norm1.weight", &[320]);
        assert_eq!(norm.mean, 1.0);
        let bias = Init::for_tensor("down_blocks.0.resnets.0.norm1.bias", &[320]);
        assert_eq!(bias.mean, 0.0);
        let ln = Init::for_tensor("text_model.final_layer_norm.weight", &[768]);
        assert_eq!(ln.mean, 1.0);
        let emb = Init::for_tensor("embeddings.token_embedding.weight", &[10, 4]);
        assert_eq!(emb.std, 1.0);
    }

    #[test]
    fn safetensors_layout() {
        let list = vec![
            ("a.weight".to_string(), vec![3, 2]),
            ("a.bias".to_string(), vec![3]),
        ];
        let bytes = random_safetensors(&list, 7, Values::F32);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        assert_eq!(header_len % 8, 0);
        assert_eq!(bytes.len(), 8 + header_len + 9 * 4);
        assert_eq!(
            bytes,
            random_safetensors(&list, 7, Values::F32),
            "deterministic"
        );
        let exact = random_safetensors(&list, 7, Values::F16Exact);
        for word in exact[8 + header_len..].chunks_exact(4) {
            let v = f32::from_le_bytes(word.try_into().expect("4 bytes"));
            assert_eq!(half::f16::from_f32(v).to_f32(), v);
        }
        // The f16 file holds the same values, rounded, in half the bytes.
        let f16 = random_safetensors_f16(&list, 7);
        let f16_header = u64::from_le_bytes(f16[..8].try_into().expect("8 bytes")) as usize;
        assert_eq!(f16.len(), 8 + f16_header + 9 * 2);
        let halves = f16[8 + f16_header..].chunks_exact(2);
        for (half, word) in halves.zip(exact[8 + header_len..].chunks_exact(4)) {
            let h = half::f16::from_le_bytes(half.try_into().expect("2 bytes"));
            assert_eq!(
                h.to_f32(),
                f32::from_le_bytes(word.try_into().expect("4 bytes"))
            );
        }
    }
}
