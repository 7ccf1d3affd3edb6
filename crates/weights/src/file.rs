//! One safetensors file held in memory: its tensor names, element types and shapes, and the
//! conversions of a tensor's bytes to `f32`, `f16` and `i64`.
//!
//! The format (<https://github.com/huggingface/safetensors>): an 8-byte little-endian header
//! length, a JSON header mapping each name to `dtype`, `shape` and `data_offsets`, then the data.
//! The header is parsed by the `safetensors` crate; tensor data is read byte by byte
//! (little-endian), so nothing requires the data to be aligned, which it often is not.
//!
//! Parsing works on bytes only (`from_vec`, `from_arc`), so the browser can hand over what it
//! fetched; [`SafetensorsFile::read`] is the native convenience that reads a path first.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use half::{bf16, f16};
use safetensors::Dtype;
use safetensors::tensor::Metadata;

use crate::error::{Result, WeightError};

/// Length of the little-endian `u64` that opens every safetensors file.
const LEN_BYTES: usize = 8;
/// The largest header read: the `safetensors` crate's own cap. SD checkpoints' headers are
/// 0.1 to 1 MB.
pub const MAX_HEADER_BYTES: u64 = 100 << 20;
/// The most tensors a file may list (SDXL single files hold about 2,500), counted before the
/// header is parsed: a header of empty tensors costs far more memory parsed than on disk.
pub const MAX_TENSORS: usize = 65_536;

/// The bytes of a file, shared between clones without copying.
#[derive(Clone, Debug)]
enum Buffer {
    Vec(Arc<Vec<u8>>),
    Slice(Arc<[u8]>),
}

impl Buffer {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Vec(v) => v,
            Self::Slice(s) => s,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the whole file (header included).
    start: usize,
    end: usize,
}

/// A parsed safetensors file: the bytes plus an index of its tensors. Cheap to clone (the bytes
/// are shared).
#[derive(Clone, Debug)]
pub struct SafetensorsFile {
    label: String,
    bytes: Buffer,
    /// Sorted by name.
    entries: Vec<Entry>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Parses a file's bytes, taking ownership without copying. `label` names the file in
    /// errors (a path, or e.g. `unet/diffusion_pytorch_model.safetensors` for fetched bytes).
    pub fn from_vec(label: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(label.into(), Buffer::Vec(Arc::new(bytes)))
    }

    /// Parses a file's bytes that are already shared.
    pub fn from_arc(label: impl Into<String>, bytes: Arc<[u8]>) -> Result<Self> {
        Self::parse(label.into(), Buffer::Slice(bytes))
    }

    /// Reads and parses the file at `path` (labelled with the path).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_vec(path.display().to_string(), bytes)
    }

    fn parse(label: String, bytes: Buffer) -> Result<Self> {
        let buf = bytes.as_slice();
        let format = |reason: String| WeightError::Format {
            file: label.clone(),
            reason,
        };
        let Some(len_bytes) = buf.first_chunk::<LEN_BYTES>() else {
            return Err(format(format!(
                "{} bytes, shorter than the 8-byte header length",
                buf.len()
            )));
        };
        let header_len = u64::from_le_bytes(*len_bytes);
        if header_len > MAX_HEADER_BYTES {
            return Err(format(format!(
                "a {header_len}-byte header is larger than the {MAX_HEADER_BYTES} bytes read"
            )));
        }
        let header_end = usize::try_from(header_len)
            .ok()
            .and_then(|n| n.checked_add(LEN_BYTES))
            .ok_or_else(|| format(format!("header length {header_len} is impossible")))?;
        let Some(header) = buf.get(LEN_BYTES..header_end) else {
            return Err(WeightError::Truncated {
                file: label,
                expected: header_len.saturating_add(LEN_BYTES as u64),
                got: buf.len() as u64,
            });
        };
        // Every tensor has its `data_offsets`: counting them bounds what parsing allocates.
        let tensors = header
            .windows(b"data_offsets".len())
            .filter(|w| *w == b"data_offsets")
            .count();
        if tensors > MAX_TENSORS {
            return Err(format(format!(
                "the header lists {tensors} tensors, more than the {MAX_TENSORS} read"
            )));
        }
        // `Metadata`'s deserialiser checks that the offsets are contiguous and match each
        // tensor's dtype and shape.
        let meta: Metadata =
            serde_json::from_slice(header).map_err(|e| format(format!("header: {e}")))?;
        let expected = header_end as u64 + meta.data_len() as u64;
        let got = buf.len() as u64;
        if got < expected {
            return Err(WeightError::Truncated {
                file: label,
                expected,
                got,
            });
        }
        if got > expected {
            return Err(WeightError::TrailingBytes {
                file: label,
                expected,
                got,
            });
        }
        let mut entries = Vec::new();
        for name in meta.offset_keys() {
            let Some(info) = meta.info(&name) else {
                return Err(format(format!("tensor `{name}` listed without its info")));
            };
            let (start, end) = info.data_offsets;
            entries.push(Entry {
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: header_end + start,
                end: header_end + end,
                name,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let metadata = meta
            .metadata()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Self {
            label,
            bytes,
            entries,
            metadata,
        })
    }

    /// The name this file goes by in errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// How many tensors the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The header's free-form `__metadata__` (e.g. `format: pt`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The tensor called `name`, if the file has it.
    pub fn tensor(&self, name: &str) -> Option<TensorData<'_>> {
        let i = self
            .entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()?;
        self.entries.get(i).map(|e| self.view(e))
    }

    /// Where the tensor called `name` lies in the file's bytes (header included).
    pub fn byte_range(&self, name: &str) -> Option<std::ops::Range<usize>> {
        let i = self
            .entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()?;
        self.entries.get(i).map(|e| e.start..e.end)
    }

    /// Every tensor, sorted by name.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorData<'_>> {
        self.entries.iter().map(|e| self.view(e))
    }

    fn view<'a>(&'a self, e: &'a Entry) -> TensorData<'a> {
        TensorData {
            file: &self.label,
            name: &e.name,
            dtype: e.dtype,
            shape: &e.shape,
            // In range: `parse` checked that the header's offsets fit the buffer exactly.
            bytes: self
                .bytes
                .as_slice()
                .get(e.start..e.end)
                .unwrap_or_default(),
        }
    }
}

/// One tensor of a [`SafetensorsFile`]: its name, element type, shape and raw little-endian
/// bytes (not necessarily aligned).
#[derive(Clone, Copy, Debug)]
pub struct TensorData<'a> {
    file: &'a str,
    name: &'a str,
    dtype: Dtype,
    shape: &'a [usize],
    bytes: &'a [u8],
}

impl<'a> TensorData<'a> {
    /// The label of the file it comes from.
    pub fn file(&self) -> &'a str {
        self.file
    }

    /// Its name in the file (before any renaming).
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Its element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Its shape (row-major, like PyTorch).
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }

    /// Its number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Its raw bytes, little-endian, as stored.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn dtype_error(&self, expected: &'static str) -> WeightError {
        WeightError::Dtype {
            file: self.file.to_owned(),
            tensor: self.name.to_owned(),
            dtype: self.dtype.to_string(),
            expected,
        }
    }

    /// The values as `f32`: F32 as stored, F16 and BF16 widened exactly. Other element types
    /// are a [`WeightError::Dtype`].
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        Ok(match self.dtype {
            Dtype::F32 => le_words::<4>(self.bytes).map(f32::from_le_bytes).collect(),
            Dtype::F16 => le_words::<2>(self.bytes)
                .map(|b| f16::from_bits(u16::from_le_bytes(b)).to_f32())
                .collect(),
            Dtype::BF16 => le_words::<2>(self.bytes)
                .map(|b| bf16::from_bits(u16::from_le_bytes(b)).to_f32())
                .collect(),
            _ => return Err(self.dtype_error("F32, F16 or BF16")),
        })
    }

    /// The values as `f16`: F16 as stored; F32 rounded to nearest (ties to even), as
    /// `half::f16::from_f32` does, so values beyond ±65504 become infinite; BF16 widened to
    /// `f32` exactly, then rounded once. Other element types are a [`WeightError::Dtype`].
    pub fn to_f16(&self) -> Result<Vec<f16>> {
        Ok(match self.dtype {
            Dtype::F16 => le_words::<2>(self.bytes)
                .map(|b| f16::from_bits(u16::from_le_bytes(b)))
                .collect(),
            Dtype::F32 => le_words::<4>(self.bytes)
                .map(|b| f16::from_f32(f32::from_le_bytes(b)))
                .collect(),
            Dtype::BF16 => le_words::<2>(self.bytes)
                .map(|b| f16::from_f32(bf16::from_bits(u16::from_le_bytes(b)).to_f32()))
                .collect(),
            _ => return Err(self.dtype_error("F32, F16 or BF16")),
        })
    }

    /// The values as `i64` (for integer tensors such as token ids): I64 as stored, I32 and U8
    /// widened. Other element types are a [`WeightError::Dtype`].
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        Ok(match self.dtype {
            Dtype::I64 => le_words::<8>(self.bytes).map(i64::from_le_bytes).collect(),
            Dtype::I32 => le_words::<4>(self.bytes)
                .map(|b| i64::from(i32::from_le_bytes(b)))
                .collect(),
            Dtype::U8 => self.bytes.iter().map(|&b| i64::from(b)).collect(),
            _ => return Err(self.dtype_error("I64, I32 or U8")),
        })
    }
}

/// `bytes` as consecutive `N`-byte words (copied out, so alignment does not matter). The header
/// check guarantees the length is a multiple of `N` for the matching dtype.
fn le_words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .filter_map(|c| c.first_chunk::<N>().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file written by hand, with a header of odd length so that the data starts
    /// at an unaligned offset.
    fn handmade(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
        let mut header = String::from("{");
        let mut offset = 0;
        for (i, (name, dtype, shape, data)) in tensors.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&format!(
                "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
                offset + data.len()
            ));
            offset += data.len();
        }
        header.push('}');
        if header.len() % 2 == 0 {
            header.push(' ');
        }
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        for (_, _, _, data) in tensors {
            out.extend_from_slice(data);
        }
        out
    }

    /// Issue 18's header bombs: a header length past the cap is refused before anything is
    /// read, and a header listing more tensors than the cap before it is parsed.
    #[test]
    fn oversized_headers_are_refused_before_parsing() {
        let mut huge = (200u64 << 20).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let err = SafetensorsFile::from_vec("huge", huge).expect_err("refused");
        assert!(err.to_string().contains("header is larger"), "{err}");

        let empty: Vec<(String, Vec<u8>)> = (0..MAX_TENSORS + 1)
            .map(|i| (format!("t{i}"), Vec::new()))
            .collect();
        let listed: Vec<(&str, &str, &[usize], Vec<u8>)> = empty
            .iter()
            .map(|(name, data)| (name.as_str(), "F32", &[0usize][..], data.clone()))
            .collect();
        let start = std::time::Instant::now();
        let err = SafetensorsFile::from_vec("many", handmade(&listed)).expect_err("refused");
        assert!(err.to_string().contains("65537 tensors"), "{err}");
        assert!(
            start.elapsed().as_secs_f64() < 1.0,
            "took {:?}",
            start.elapsed()
        );
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_unaligned_f32_f16_bf16() -> Result<()> {
        let a = [1.5f32, -2.25, 3.0e-8, 65520.0];
        let h = [f16::from_f32(0.1), f16::from_f32(-7.0)];
        let b = [bf16::from_f32(1.0e20), bf16::from_f32(-0.3)];
        let bytes = handmade(&[
            ("a", "F32", &[2, 2], f32_bytes(&a)),
            (
                "h",
                "F16",
                &[2],
                h.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            (
                "b",
                "BF16",
                &[1, 2],
                b.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            ("i", "I64", &[1], 7i64.to_le_bytes().to_vec()),
        ]);
        // The data section starts at an odd offset.
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        assert_eq!((8 + header_len) % 2, 1);
        for file in [
            SafetensorsFile::from_vec("hand", bytes.clone())?,
            SafetensorsFile::from_arc("hand", Arc::from(bytes))?,
        ] {
            assert_eq!(file.names().collect::<Vec<_>>(), ["a", "b", "h", "i"]);
            let ta = file.tensor("a").expect("a is present");
            assert_eq!(ta.shape(), &[2, 2]);
            assert_eq!(ta.to_f32()?, a);
            // f32 -> f16: round to nearest even; 65520 is the first value that overflows.
            let expected: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
            assert_eq!(ta.to_f16()?, expected);
            assert!(ta.to_f16()?[3].is_infinite());
            let th = file.tensor("h").expect("h is present");
            assert_eq!(th.to_f16()?, h);
            assert_eq!(th.to_f32()?, [h[0].to_f32(), h[1].to_f32()]);
            // bf16 -> f32 is exact: the bits shifted up.
            let tb = file.tensor("b").expect("b is present");
            let widened = tb.to_f32()?;
            for (w, x) in widened.iter().zip(b) {
                assert_eq!(w.to_bits(), u32::from(x.to_bits()) << 16);
            }
            assert_eq!(tb.to_f16()?[1], f16::from_f32(b[1].to_f32()));
            let ti = file.tensor("i").expect("i is present");
            assert_eq!(ti.to_i64()?, [7]);
            let err = ti.to_f32().expect_err("I64 is not a float");
            let msg = err.to_string();
            assert!(msg.contains("`i`") && msg.contains("I64"), "{msg}");
            assert!(file.tensor("zz").is_none());
        }
        Ok(())
    }

    #[test]
    fn rounds_ties_to_even() -> Result<()> {
        // 1 + 2^-11 is halfway between f16's 1 and 1 + 2^-10: ties go to the even one (1.0);
        // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9: it goes up.
        let v = [1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)];
        let file = SafetensorsFile::from_vec("t", handmade(&[("x", "F32", &[2], f32_bytes(&v))]))?;
        let got = file.tensor("x").expect("x").to_f16()?;
        assert_eq!(
            got,
            [f16::from_f32(1.0), f16::from_f32(1.0 + 2f32.powi(-9))]
        );
        Ok(())
    }

    #[test]
    fn bad_files_are_errors() {
        let good = handmade(&[("x", "F32", &[2], f32_bytes(&[1.0, 2.0]))]);
        let short = SafetensorsFile::from_vec("f", good[..good.len() - 1].to_vec());
        assert!(matches!(
            short,
            Err(WeightError::Truncated { expected, got, .. }) if expected == got + 1
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            SafetensorsFile::from_vec("f", long),
            Err(WeightError::TrailingBytes { .. })
        ));
        assert!(matches!(
            SafetensorsFile::from_vec("f", good[..20].to_vec()),
            Err(WeightError::Truncated { .. })
        ));
        assert!(matches!(
            SafetensorsFile::from_vec("f", vec![1, 2, 3]),
            Err(WeightError::Format { .. })
        ));
        let mut huge = good;
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(SafetensorsFile::from_vec("f", huge).is_err());
        // Offsets that do not match the shape.
        let wrong = handmade(&[("x", "F32", &[3], f32_bytes(&[1.0, 2.0]))]);
        let err = SafetensorsFile::from_vec("wrong.safetensors", wrong).expect_err("bad offsets");
        assert!(err.to_string().contains("wrong.safetensors"), "{err}");
    }
}
