//! The buffer pool: activations are taken from it and go back to it when their last handle is
//! dropped, so a UNet step reuses the same few buffers instead of allocating new ones.
//!
//! Reuse inside one unsubmitted batch is safe: dispatches run in recording order, and WebGPU
//! orders a write after an earlier read of the same buffer. Two rules keep reuse safe across
//! batches, threads and replays:
//! - A buffer given back while a batch records goes into quarantine: only the recording
//!   thread may take it until that batch ends (another thread could otherwise hold it while a
//!   recorded batch, replayed later, still writes it).
//! - A buffer bound by a live recorded batch ([`crate::Recorded`]) is pinned: given back, it
//!   waits until the last recording that binds it is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

#[cfg(not(target_arch = "wasm32"))]
type ThreadKey = std::thread::ThreadId;
#[cfg(not(target_arch = "wasm32"))]
fn this_thread() -> ThreadKey {
    std::thread::current().id()
}
/// The browser runs one thread.
#[cfg(target_arch = "wasm32")]
type ThreadKey = ();
#[cfg(target_arch = "wasm32")]
fn this_thread() -> ThreadKey {}

/// The pool's idle buffers, by size.
#[derive(Debug, Default)]
struct Idle {
    /// Anyone may take these.
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    /// Given back while `recorder` records: only it may take these until its batch ends.
    quarantine: HashMap<u64, Vec<wgpu::Buffer>>,
    /// The thread recording a batch, if one is.
    recorder: Option<ThreadKey>,
    /// Buffers bound by live recorded batches, with how many bind each.
    pinned: HashMap<wgpu::Buffer, usize>,
    /// Pinned buffers given back: idle, but lent to no one until unpinned.
    held: HashSet<wgpu::Buffer>,
}

impl Idle {
    fn put(&mut self, buffer: wgpu::Buffer) {
        if self.pinned.contains_key(&buffer) {
            self.held.insert(buffer);
        } else if self.recorder.is_some() {
            self.quarantine
                .entry(buffer.size())
                .or_default()
                .push(buffer);
        } else {
            self.free.entry(buffer.size()).or_default().push(buffer);
        }
    }
}

/// Buffers are pooled by size rounded up to this many bytes.
const SIZE_QUANTUM: u64 = 256;

#[derive(Debug)]
pub(crate) struct BufferPool {
    device: wgpu::Device,
    idle: Mutex<Idle>,
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
            idle: Mutex::new(Idle::default()),
        }
    }

    pub(crate) fn acquire(self: &Arc<Self>, bytes: u64) -> Arc<PooledBuffer> {
        let size = bytes.max(1).div_ceil(SIZE_QUANTUM) * SIZE_QUANTUM;
        let reused = self.idle.lock().ok().and_then(|mut idle| {
            let mine = idle.recorder == Some(this_thread());
            let quarantined = match mine {
                true => idle.quarantine.get_mut(&size).and_then(Vec::pop),
                false => None,
            };
            quarantined.or_else(|| idle.free.get_mut(&size).and_then(Vec::pop))
        });
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

    /// A batch starts recording on this thread (the context's recording lock is held).
    pub(crate) fn begin_recording(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.recorder = Some(this_thread());
        }
    }

    /// The recording batch was submitted, kept or dropped: its quarantine is free for anyone.
    pub(crate) fn end_recording(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.recorder = None;
            for buffer in std::mem::take(&mut idle.quarantine).into_values().flatten() {
                idle.put(buffer);
            }
        }
    }

    /// Pins the buffers a recorded batch binds (see the module's rules).
    // wgpu::Buffer hashes and compares by its id, which its interior mutability never changes.
    #[allow(clippy::mutable_key_type)]
    pub(crate) fn pin(&self, buffers: &HashSet<wgpu::Buffer>) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        for buffer in buffers {
            *idle.pinned.entry(buffer.clone()).or_insert(0) += 1;
        }
        let Idle {
            free,
            quarantine,
            held,
            ..
        } = &mut *idle;
        for list in free.values_mut().chain(quarantine.values_mut()) {
            list.retain(|b| match buffers.contains(b) {
                true => {
                    held.insert(b.clone());
                    false
                }
                false => true,
            });
        }
    }

    /// Unpins what [`BufferPool::pin`] pinned; the idle ones go back into the pool.
    pub(crate) fn unpin(&self, buffers: impl IntoIterator<Item = wgpu::Buffer>) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        for buffer in buffers {
            let Some(count) = idle.pinned.get_mut(&buffer) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                idle.pinned.remove(&buffer);
                if idle.held.remove(&buffer) {
                    idle.put(buffer);
                }
            }
        }
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.put(buffer);
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let Ok(idle) = self.idle.lock() else {
            return PoolStats::default();
        };
        let buffers = idle.free.values().chain(idle.quarantine.values()).flatten();
        PoolStats {
            free_buffers: buffers.clone().count(),
            free_bytes: buffers.map(wgpu::Buffer::size).sum(),
        }
    }

    /// Frees every idle buffer.
    pub(crate) fn trim(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.free.clear();
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
