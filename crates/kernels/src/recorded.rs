//! A batch built once and replayed: its pipelines, uniform arena and bind groups are made by
//! [`crate::Batch::finish_recording`], and [`crate::Batch::replay`] encodes them again into a
//! later batch (the denoising loop's UNet call, every step, with the same tensors).

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use crate::GpuContext;
use crate::batch::{Copy, begin_pass, dispatch};
use crate::pool::BufferPool;

/// One command of a recorded batch, ready to encode.
#[derive(Debug)]
pub(crate) enum Encoded {
    Copy(Copy),
    Dispatch {
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        workgroups: [u32; 3],
        /// The buffers it binds (to keep the pool's idle ones out of the pool).
        buffers: Vec<wgpu::Buffer>,
    },
}

/// A recorded batch's commands, and the pool buffers it keeps.
#[derive(Debug)]
pub(crate) struct RecordedCommands {
    /// Every dispatch's uniforms (kept alive with the bind groups that point into it).
    _arena: wgpu::Buffer,
    commands: Vec<Encoded>,
    /// The buffers the commands use, pinned in the pool (no one else gets them while this may
    /// be replayed) until this is dropped.
    pinned: Vec<wgpu::Buffer>,
    pool: Weak<BufferPool>,
}

/// A batch built once, for [`crate::Batch::replay`].
#[derive(Debug, Clone)]
pub struct Recorded {
    commands: Arc<RecordedCommands>,
}

impl Recorded {
    // wgpu::Buffer hashes and compares by its id, which its interior mutability never changes.
    #[allow(clippy::mutable_key_type)]
    pub(crate) fn new(ctx: &GpuContext, arena: wgpu::Buffer, commands: Vec<Encoded>) -> Self {
        let mut used: HashSet<wgpu::Buffer> = HashSet::new();
        for command in &commands {
            match command {
                Encoded::Copy(c) => used.extend(c.buffers().into_iter().cloned()),
                Encoded::Dispatch { buffers, .. } => used.extend(buffers.iter().cloned()),
            }
        }
        ctx.pool.pin(&used);
        Self {
            commands: Arc::new(RecordedCommands {
                _arena: arena,
                commands,
                pinned: used.into_iter().collect(),
                pool: Arc::downgrade(&ctx.pool),
            }),
        }
    }

    pub(crate) fn commands(&self) -> &Arc<RecordedCommands> {
        &self.commands
    }

    /// Its dispatches.
    pub fn dispatches(&self) -> u64 {
        self.commands.dispatches()
    }
}

impl RecordedCommands {
    pub(crate) fn dispatches(&self) -> u64 {
        self.commands
            .iter()
            .filter(|c| matches!(c, Encoded::Dispatch { .. }))
            .count() as u64
    }

    /// Encodes the commands: consecutive dispatches in one compute pass, a copy ends it.
    pub(crate) fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = None;
        for command in &self.commands {
            match command {
                Encoded::Copy(c) => {
                    pass = None;
                    c.encode(encoder);
                }
                Encoded::Dispatch {
                    pipeline,
                    bind_group,
                    workgroups,
                    ..
                } => {
                    let pass = pass.get_or_insert_with(|| begin_pass(encoder));
                    dispatch(pass, pipeline, bind_group, *workgroups);
                }
            }
        }
    }
}

impl Drop for RecordedCommands {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.unpin(std::mem::take(&mut self.pinned));
        }
    }
}
