//! A GPU tensor: a pooled buffer plus the shape (NCHW or token-major, as diffusers) and the
//! element type it holds.

use std::sync::Arc;

use crate::pool::PooledBuffer;

/// Element type of a tensor's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit float: every activation, and weights when f32 is selected (parity tests).
    F32,
    /// 16-bit float, two per 32-bit word: weight matrices by default.
    F16,
    /// 32-bit unsigned integer: token ids.
    U32,
}

impl DType {
    /// Bytes a buffer needs to hold `len` elements; f16 is padded to whole 4-byte words.
    pub fn storage_bytes(self, len: usize) -> u64 {
        let len = len as u64;
        match self {
            DType::F32 | DType::U32 => len * 4,
            DType::F16 => (len * 2).div_ceil(4) * 4,
        }
    }
}

/// A tensor on the GPU. Cloning shares the buffer; the buffer returns to the pool when the last
/// clone is dropped.
#[derive(Clone, Debug)]
pub struct Tensor {
    buffer: Arc<PooledBuffer>,
    shape: Vec<usize>,
    dtype: DType,
}

impl Tensor {
    pub(crate) fn new(buffer: Arc<PooledBuffer>, shape: &[usize], dtype: DType) -> Self {
        Self {
            buffer,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of storage the elements occupy (the pooled buffer may be larger).
    pub fn byte_len(&self) -> u64 {
        self.dtype.storage_bytes(self.len())
    }

    /// The same storage seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> crate::Result<Tensor> {
        let len: usize = shape.iter().product();
        if len != self.len() {
            return Err(crate::KernelError::shape(
                "reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            ));
        }
        Ok(Self::new(Arc::clone(&self.buffer), shape, self.dtype))
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.buffer()
    }
}
