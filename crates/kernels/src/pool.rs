//! The buffer pool: activations are taken from it and go back to it when their last handle is
//! dropped, so a UNet step reuses the same few buffers instead of allocating new ones.
//!
//! Reuse inside one unsubmitted batch is safe: dispatches run in recording order, and WebGPU
//! orders a write after an earlier read of the same buffer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Buffers are pooled by size rounded up to this many bytes.
const SIZE_QUANTUM: u64 = 256;

#[derive(Debug)]
pub(crate) struct BufferPool {
    device: wgpu::Device,
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
}

/// A buffer lent by the pool.
#[derive(Debug)]
pub(crate) struct PooledBuffer {
    buffer: wgpu::Buffer,
    pool: Weak<BufferPool>,
}

impl PooledBuffer {
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(self.buffer.clone());
        }
    }
}

/// What the pool holds, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers waiting to be reused.
    pub free_buffers: usize,
    /// Their total size in bytes.
    pub free_bytes: u64,
}

impl BufferPool {
    pub(crate) fn new(device: wgpu::Device) -> Self {
        Self {
            device,
            free: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn acquire(self: &Arc<Self>, bytes: u64) -> Arc<PooledBuffer> {
        let size = bytes.max(1).div_ceil(SIZE_QUANTUM) * SIZE_QUANTUM;
        let reused = self
            .free
            .lock()
            .ok()
            .and_then(|mut free| free.get_mut(&size).and_then(Vec::pop));
        let buffer = reused.unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pooled"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        Arc::new(PooledBuffer {
            buffer,
            pool: Arc::downgrade(self),
        })
    }

    /// A buffer filled with `contents` that never returns to the pool. Uploads use these: a
    /// pooled buffer could still be read by a dispatch recorded but not yet submitted, and
    /// `queue.write_buffer` would overwrite it before that dispatch runs.
    pub(crate) fn upload(&self, queue: &wgpu::Queue, contents: &[u8]) -> Arc<PooledBuffer> {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("upload"),
            size: (contents.len() as u64).max(1).div_ceil(4) * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        write_padded(queue, &buffer, contents);
        Arc::new(PooledBuffer {
            buffer,
            pool: Weak::new(),
        })
    }

    /// Takes the idle buffers among `wanted` out of the pool (a recorded batch keeps them).
    // wgpu::Buffer hashes and compares by its id, which its interior mutability never changes.
    #[allow(clippy::mutable_key_type)]
    pub(crate) fn reserve(
        &self,
        wanted: &std::collections::HashSet<wgpu::Buffer>,
    ) -> Vec<wgpu::Buffer> {
        let mut taken = Vec::new();
        if let Ok(mut free) = self.free.lock() {
            for buffers in free.values_mut() {
                buffers.retain(|b| match wanted.contains(b) {
                    true => {
                        taken.push(b.clone());
                        false
                    }
                    false => true,
                });
            }
        }
        taken
    }

    /// Gives reserved buffers back.
    pub(crate) fn give_back_all(&self, buffers: Vec<wgpu::Buffer>) {
        for buffer in buffers {
            self.give_back(buffer);
        }
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        if let Ok(mut free) = self.free.lock() {
            free.entry(buffer.size()).or_default().push(buffer);
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let Ok(free) = self.free.lock() else {
            return PoolStats::default();
        };
        let buffers = free.values().flatten();
        PoolStats {
            free_buffers: buffers.clone().count(),
            free_bytes: buffers.map(wgpu::Buffer::size).sum(),
        }
    }

    /// Frees every idle buffer.
    pub(crate) fn trim(&self) {
        if let Ok(mut free) = self.free.lock() {
            free.clear();
        }
    }
}

/// `queue.write_buffer` of `contents`, zero-padded to the 4-byte multiple it requires. (Not
/// `create_buffer_init`: its mapping panics on a lost device, where this reports an error.)
pub(crate) fn write_padded(queue: &wgpu::Queue, buffer: &wgpu::Buffer, contents: &[u8]) {
    if contents.len().is_multiple_of(4) {
        queue.write_buffer(buffer, 0, contents);
    } else {
        let mut padded = contents.to_vec();
        padded.resize(contents.len().div_ceil(4) * 4, 0);
        queue.write_buffer(buffer, 0, &padded);
    }
}
