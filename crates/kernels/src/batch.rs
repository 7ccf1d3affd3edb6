//! A batch of dispatches: one uniform arena (every dispatch's parameters at aligned offsets of a
//! single buffer), one command encoder, one compute pass, one submission.

use crate::kernel::{Kernel, Uniform};
use crate::pipeline::PipelineKey;
use crate::{GpuContext, KernelError, Result, Tensor};

/// Largest workgroup count per dimension WebGPU guarantees.
pub(crate) const MAX_WORKGROUPS_PER_DIM: u32 = 65535;

/// A buffer-to-buffer copy between dispatches (re-splitting channel chunks).
#[derive(Debug, Clone)]
pub(crate) struct Copy {
    src: wgpu::Buffer,
    src_offset: u64,
    dst: wgpu::Buffer,
    dst_offset: u64,
    bytes: u64,
}

/// What a batch records, in order.
#[derive(Debug)]
enum Command {
    Dispatch(Dispatch),
    Copy(Copy),
    /// A recorded batch's commands, encoded as they were built ([`Batch::replay`]).
    Replay(std::sync::Arc<crate::recorded::RecordedCommands>),
}

#[derive(Debug)]
struct Dispatch {
    key: PipelineKey,
    source: &'static str,
    uniform_offset: u64,
    uniform_size: u64,
    bindings: Vec<(wgpu::Buffer, u64)>,
    workgroups: [u32; 3],
}

/// Dispatches recorded for one submission. Record with the launchers in [`crate::ops`], then
/// [`Batch::submit`].
///
/// A batch holds its context's recording lock until it is submitted or dropped: buffers that
/// go back to the pool while a batch records may be reused by that batch only, never by
/// another thread's batch that could be submitted first and overwrite them.
#[derive(Debug)]
pub struct Batch<'c> {
    ctx: &'c GpuContext,
    arena: Vec<u8>,
    commands: Vec<Command>,
    _recording: std::sync::MutexGuard<'c, ()>,
}

impl Drop for Batch<'_> {
    /// Submitted, kept or abandoned: the buffers given back while it recorded are free for
    /// anyone now (before the recording lock is released).
    fn drop(&mut self) {
        self.ctx.pool.end_recording();
    }
}

impl<'c> Batch<'c> {
    pub(crate) fn new(ctx: &'c GpuContext) -> Self {
        // A poisoned lock only means another batch panicked; the pool is still consistent.
        let recording = ctx
            .recording
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ctx.pool.begin_recording();
        Self {
            ctx,
            arena: Vec::new(),
            commands: Vec::new(),
            _recording: recording,
        }
    }

    /// The context the batch records for.
    pub fn context(&self) -> &'c GpuContext {
        self.ctx
    }

    /// Number of commands (dispatches and copies) recorded so far.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Records a copy of `len` f32 elements from `src[src_start..]` to `dst[dst_start..]`.
    pub fn copy_f32(
        &mut self,
        src: &Tensor,
        src_start: usize,
        dst: &Tensor,
        dst_start: usize,
        len: usize,
    ) -> Result<()> {
        let fits =
            |t: &Tensor, start: usize| t.dtype() == crate::DType::F32 && start + len <= t.len();
        if !fits(src, src_start) || !fits(dst, dst_start) {
            return Err(KernelError::shape(
                "copy_f32",
                format!(
                    "{len} elements from {:?}[{src_start}..] to {:?}[{dst_start}..] do not fit",
                    src.shape(),
                    dst.shape()
                ),
            ));
        }
        self.commands.push(Command::Copy(Copy {
            src: src.buffer().clone(),
            src_offset: src_start as u64 * 4,
            dst: dst.buffer().clone(),
            dst_offset: dst_start as u64 * 4,
            bytes: len as u64 * 4,
        }));
        Ok(())
    }

    /// Records one dispatch of `kernel`: `params` at binding 0 (uniform), `tensors` at bindings
    /// 1.. (storage, in the order of [`Kernel::bindings`]). The call is checked against the
    /// kernel's table first.
    pub(crate) fn dispatch<P: Uniform>(
        &mut self,
        kernel: &'static Kernel,
        key: PipelineKey,
        params: &P,
        tensors: &[&Tensor],
        workgroups: [u32; 3],
    ) -> Result<()> {
        kernel
            .check::<P>(key.entry, key.variant, tensors.len())
            .map_err(|detail| KernelError::Dispatch {
                op: key.entry,
                detail,
            })?;
        if let Some(&n) = workgroups.iter().find(|&&n| n > MAX_WORKGROUPS_PER_DIM) {
            return Err(KernelError::Dispatch {
                op: key.entry,
                detail: format!(
                    "{n} workgroups in one dimension (at most {MAX_WORKGROUPS_PER_DIM})"
                ),
            });
        }
        let mut bindings = Vec::with_capacity(tensors.len());
        for tensor in tensors {
            self.ctx.check_binding_size(tensor.byte_len())?;
            bindings.push((tensor.buffer().clone(), tensor.byte_len()));
        }
        let align = u64::from(self.ctx.limits().min_uniform_buffer_offset_alignment);
        let uniform_offset = (self.arena.len() as u64).div_ceil(align) * align;
        let bytes = bytemuck::bytes_of(params);
        self.arena.resize(uniform_offset as usize, 0);
        self.arena.extend_from_slice(bytes);
        self.commands.push(Command::Dispatch(Dispatch {
            key,
            source: kernel.source,
            uniform_offset,
            uniform_size: bytes.len() as u64,
            bindings,
            workgroups,
        }));
        Ok(())
    }

    /// Compiles any pipeline not yet cached, encodes every dispatch into one compute pass and
    /// submits it. GPU errors come back as typed errors.
    pub async fn submit(self) -> Result<()> {
        let ctx = self.ctx;
        ctx.check_health()?;
        if self.commands.is_empty() {
            return Ok(());
        }
        let pipelines = self.pipelines().await?;
        let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out_of_memory = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let arena = self.upload_arena();
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("batch"),
            });
        // Consecutive dispatches share one compute pass; a copy ends it.
        let mut pipelines = pipelines.iter();
        let mut pass: Option<wgpu::ComputePass<'static>> = None;
        for command in &self.commands {
            match command {
                Command::Copy(c) => {
                    pass = None;
                    c.encode(&mut encoder);
                }
                Command::Dispatch(d) => {
                    let pipeline = pipelines.next().ok_or_else(|| {
                        KernelError::Validation("a dispatch has no pipeline".into())
                    })?;
                    let pass = pass.get_or_insert_with(|| begin_pass(&mut encoder));
                    let bind_group = bind_group(ctx, &arena, d, pipeline);
                    dispatch(pass, pipeline, &bind_group, d.workgroups);
                }
                Command::Replay(recorded) => {
                    pass = None;
                    recorded.encode(&mut encoder);
                }
            }
        }
        drop(pass);
        ctx.queue.submit([encoder.finish()]);
        ctx.counters.submitted(1, self.dispatches());
        pop_errors(out_of_memory, validation).await?;
        ctx.check_health()
    }

    fn dispatches(&self) -> u64 {
        self.commands
            .iter()
            .map(|c| match c {
                Command::Dispatch(_) => 1,
                Command::Copy(_) => 0,
                Command::Replay(recorded) => recorded.dispatches(),
            })
            .sum()
    }

    /// Records the commands of `recorded` (built once by [`Batch::finish_recording`]) as the
    /// next ones of this batch: no pipelines, uniforms or bind groups are made again.
    pub fn replay(&mut self, recorded: &crate::Recorded) {
        self.commands
            .push(Command::Replay(recorded.commands().clone()));
    }

    /// Compiles the pipelines, uploads the uniforms and builds the bind groups of this batch
    /// without submitting it, for [`Batch::replay`] as often as wanted (a denoising loop's UNet
    /// call, every step). The pool's idle buffers it uses are kept out of the pool while the
    /// [`crate::Recorded`] lives; the tensors it reads and writes (inputs, outputs, weights)
    /// must be kept alive by the caller for as long as it is replayed.
    ///
    /// # Errors
    ///
    /// Compilation and validation errors, as [`Batch::submit`].
    pub async fn finish_recording(self) -> Result<crate::Recorded> {
        let ctx = self.ctx;
        ctx.check_health()?;
        if self
            .commands
            .iter()
            .any(|c| matches!(c, Command::Replay(_)))
        {
            return Err(KernelError::Dispatch {
                op: "finish_recording",
                detail: "a batch that replays another cannot be recorded itself".into(),
            });
        }
        let pipelines = self.pipelines().await?;
        let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let arena = self.upload_arena();
        let mut pipelines = pipelines.into_iter();
        let mut commands = Vec::with_capacity(self.commands.len());
        for command in &self.commands {
            commands.push(match command {
                Command::Copy(c) => crate::recorded::Encoded::Copy(c.clone()),
                Command::Dispatch(d) => {
                    let pipeline = pipelines.next().ok_or_else(|| {
                        KernelError::Validation("a dispatch has no pipeline".into())
                    })?;
                    let bind_group = bind_group(ctx, &arena, d, &pipeline);
                    crate::recorded::Encoded::Dispatch {
                        pipeline,
                        bind_group,
                        workgroups: d.workgroups,
                        buffers: d.bindings.iter().map(|(b, _)| b.clone()).collect(),
                    }
                }
                Command::Replay(_) => continue, // refused above
            });
        }
        if let Some(error) = validation.pop().await {
            return Err(KernelError::Validation(error.to_string()));
        }
        Ok(crate::Recorded::new(ctx, arena, commands))
    }

    /// Submits the batch and measures how long each command took on the GPU: with timestamp
    /// queries where the device has them (each dispatch in its own compute pass, copies not
    /// timed), otherwise as the wall time of one submission per command, waited for. Pipelines
    /// are compiled before any timing starts. For benchmarks: the per-command passes and waits
    /// make the whole slower than [`Batch::submit`].
    pub async fn submit_profiled(self) -> Result<Profile> {
        let ctx = self.ctx;
        ctx.check_health()?;
        if self
            .commands
            .iter()
            .any(|c| matches!(c, Command::Replay(_)))
        {
            return Err(KernelError::Dispatch {
                op: "submit_profiled",
                detail: "a batch that replays a recorded one is not profiled".into(),
            });
        }
        let pipelines = self.pipelines().await?;
        let arena = self.upload_arena();
        // Timestamps need a dispatch to write them: a batch of copies only is timed by the clock.
        if !pipelines.is_empty()
            && ctx
                .device
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            self.time_with_timestamps(&arena, &pipelines).await
        } else {
            self.time_with_submissions(&arena, &pipelines).await
        }
    }

    async fn time_with_timestamps(
        &self,
        arena: &wgpu::Buffer,
        pipelines: &[wgpu::ComputePipeline],
    ) -> Result<Profile> {
        let ctx = self.ctx;
        let dispatches = pipelines.len();
        let queries = (2 * dispatches).max(2);
        let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out_of_memory = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let sets: Vec<wgpu::QuerySet> = (0..queries.div_ceil(QUERIES_PER_SET))
            .map(|i| {
                let count = (queries - i * QUERIES_PER_SET).min(QUERIES_PER_SET);
                ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: count as u32,
                })
            })
            .collect();
        let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: queries as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("profiled batch"),
            });
        let mut pipelines = pipelines.iter();
        let mut query = 0usize;
        for command in &self.commands {
            match command {
                Command::Copy(c) => c.encode(&mut encoder),
                Command::Dispatch(d) => {
                    let set = &sets[query / QUERIES_PER_SET];
                    let first = (query % QUERIES_PER_SET) as u32;
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(d.key.entry),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(first),
                            end_of_pass_write_index: Some(first + 1),
                        }),
                    });
                    let pipeline = pipelines.next().ok_or_else(|| {
                        KernelError::Validation("a dispatch has no pipeline".into())
                    })?;
                    dispatch(
                        &mut pass,
                        pipeline,
                        &bind_group(ctx, arena, d, pipeline),
                        d.workgroups,
                    );
                    query += 2;
                }
                Command::Replay(_) => {}
            }
        }
        for (i, set) in sets.iter().enumerate() {
            let count = (queries - i * QUERIES_PER_SET).min(QUERIES_PER_SET) as u32;
            encoder.resolve_query_set(set, 0..count, &resolved, (i * QUERIES_PER_SET * 8) as u64);
        }
        ctx.queue.submit([encoder.finish()]);
        ctx.counters.submitted(1, self.dispatches());
        pop_errors(out_of_memory, validation).await?;
        let ticks: Vec<u64> =
            bytemuck::pod_collect_to_vec(&ctx.read_buffer(&resolved, queries as u64 * 8).await?);
        let period = f64::from(ctx.queue.get_timestamp_period()) * 1e-9;
        let mut ticks = ticks.chunks_exact(2);
        let seconds = self
            .commands
            .iter()
            .map(|command| match command {
                Command::Copy(_) | Command::Replay(_) => 0.0,
                Command::Dispatch(_) => ticks
                    .next()
                    .map_or(0.0, |t| t[1].saturating_sub(t[0]) as f64 * period),
            })
            .collect();
        Ok(Profile {
            seconds,
            timing: Timing::Timestamps,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    async fn time_with_submissions(
        &self,
        arena: &wgpu::Buffer,
        pipelines: &[wgpu::ComputePipeline],
    ) -> Result<Profile> {
        let ctx = self.ctx;
        ctx.finish().await?;
        let mut pipelines = pipelines.iter();
        let mut seconds = Vec::with_capacity(self.commands.len());
        for command in &self.commands {
            let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let out_of_memory = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("profiled command"),
                });
            match command {
                Command::Copy(c) => c.encode(&mut encoder),
                Command::Dispatch(d) => {
                    let pipeline = pipelines.next().ok_or_else(|| {
                        KernelError::Validation("a dispatch has no pipeline".into())
                    })?;
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(d.key.entry),
                        timestamp_writes: None,
                    });
                    dispatch(
                        &mut pass,
                        pipeline,
                        &bind_group(ctx, arena, d, pipeline),
                        d.workgroups,
                    );
                }
                Command::Replay(_) => {}
            }
            let start = std::time::Instant::now();
            ctx.queue.submit([encoder.finish()]);
            ctx.counters
                .submitted(1, u64::from(matches!(command, Command::Dispatch(_))));
            ctx.finish().await?;
            seconds.push(start.elapsed().as_secs_f64());
            pop_errors(out_of_memory, validation).await?;
        }
        Ok(Profile {
            seconds,
            timing: Timing::SeparateSubmissions,
        })
    }

    /// The browser has no monotonic clock here: profiling needs timestamp queries.
    #[cfg(target_arch = "wasm32")]
    async fn time_with_submissions(
        &self,
        _: &wgpu::Buffer,
        _: &[wgpu::ComputePipeline],
    ) -> Result<Profile> {
        Err(KernelError::Dispatch {
            op: "submit_profiled",
            detail: "the adapter has no timestamp queries".into(),
        })
    }

    /// Each dispatch's pipeline, in order, compiling those not cached yet.
    async fn pipelines(&self) -> Result<Vec<wgpu::ComputePipeline>> {
        let ctx = self.ctx;
        let mut pipelines = Vec::with_capacity(self.commands.len());
        for command in &self.commands {
            if let Command::Dispatch(d) = command {
                let pipeline = match ctx.pipelines.get(&d.key) {
                    Some(p) => p,
                    None => ctx.pipelines.compile(&ctx.device, &d.key, d.source).await?,
                };
                pipelines.push(pipeline);
            }
        }
        Ok(pipelines)
    }

    /// The uniform arena on the GPU.
    fn upload_arena(&self) -> wgpu::Buffer {
        let arena = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("uniform arena"),
            size: (self.arena.len().div_ceil(4) as u64 * 4).max(4),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        crate::pool::write_padded(&self.ctx.queue, &arena, &self.arena);
        arena
    }
}

/// Timestamp queries per query set (wgpu allows at most 4096).
const QUERIES_PER_SET: usize = 4096;

/// GPU time per command of a batch, from [`Batch::submit_profiled`].
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Seconds per recorded command, in recording order (a copy is 0 with timestamps).
    pub seconds: Vec<f64>,
    /// How the times were measured.
    pub timing: Timing,
}

/// How a [`Profile`] was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// GPU timestamp queries around each dispatch.
    Timestamps,
    /// Wall time from submitting each command alone until the GPU reports it done.
    SeparateSubmissions,
}

impl Copy {
    /// The buffers it reads and writes.
    pub(crate) fn buffers(&self) -> [&wgpu::Buffer; 2] {
        [&self.src, &self.dst]
    }

    pub(crate) fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_buffer_to_buffer(
            &self.src,
            self.src_offset,
            &self.dst,
            self.dst_offset,
            self.bytes,
        );
    }
}

/// Pops the two error scopes pushed before a submission: out of memory first, then validation.
async fn pop_errors(
    out_of_memory: wgpu::ErrorScopeGuard,
    validation: wgpu::ErrorScopeGuard,
) -> Result<()> {
    if let Some(error) = out_of_memory.pop().await {
        return Err(KernelError::OutOfMemory(error.to_string()));
    }
    if let Some(error) = validation.pop().await {
        return Err(KernelError::Validation(error.to_string()));
    }
    Ok(())
}

/// A compute pass that outlives the borrow of its encoder (wgpu locks the encoder until the
/// pass is dropped).
pub(crate) fn begin_pass(encoder: &mut wgpu::CommandEncoder) -> wgpu::ComputePass<'static> {
    encoder
        .begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("batch"),
            timestamp_writes: None,
        })
        .forget_lifetime()
}

/// The bind group of one dispatch: its uniforms in the arena, then its tensors.
fn bind_group(
    ctx: &GpuContext,
    arena: &wgpu::Buffer,
    d: &Dispatch,
    pipeline: &wgpu::ComputePipeline,
) -> wgpu::BindGroup {
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: arena,
            offset: d.uniform_offset,
            size: wgpu::BufferSize::new(d.uniform_size),
        }),
    }];
    for (i, (buffer, size)) in d.bindings.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer,
                offset: 0,
                size: wgpu::BufferSize::new(*size),
            }),
        });
    }
    ctx.counters
        .bind_groups
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(d.key.entry),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

pub(crate) fn dispatch(
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    bind_group: &wgpu::BindGroup,
    [x, y, z]: [u32; 3],
) {
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, bind_group, &[]);
    pass.dispatch_workgroups(x, y, z);
}

/// Workgroups for `threads` invocations of a 1-D kernel with `workgroup_size` threads: split over
/// x and y when x alone would exceed the per-dimension limit. Kernels rebuild the linear index
/// from `workgroup_id` and `num_workgroups`.
pub(crate) fn grid_1d(threads: usize, workgroup_size: u32) -> [u32; 3] {
    let groups = (threads as u64).div_ceil(u64::from(workgroup_size)).max(1);
    let max = u64::from(MAX_WORKGROUPS_PER_DIM);
    if groups <= max {
        [groups as u32, 1, 1]
    } else {
        let y = groups.div_ceil(max);
        [groups.div_ceil(y) as u32, y as u32, 1]
    }
}

#[cfg(test)]
mod tests {
    use super::grid_1d;

    #[test]
    fn grid_covers_every_thread_within_limits() {
        for threads in [
            1usize,
            255,
            256,
            257,
            65535 * 256,
            65535 * 256 + 1,
            200_000_000,
        ] {
            let [x, y, z] = grid_1d(threads, 256);
            assert!(x <= 65535 && y <= 65535 && z == 1, "{threads}: {x}x{y}");
            assert!(
                u64::from(x) * u64::from(y) * 256 >= threads as u64,
                "{threads} not covered"
            );
        }
    }
}
