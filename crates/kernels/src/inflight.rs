//! Work the CPU does not wait for at once: readbacks that complete in the background (the
//! denoising loop's previews) and fences that mark how far the GPU has got (the loop keeps at
//! most one step queued behind the one running).

use futures_channel::oneshot;

use crate::{GpuContext, KernelError, Result, Tensor};

/// A readback whose copy is submitted and whose buffer maps in the background.
#[derive(Debug)]
pub struct PendingRead {
    staging: wgpu::Buffer,
    size: u64,
    mapped: oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
    #[cfg(not(target_arch = "wasm32"))]
    submission: wgpu::SubmissionIndex,
}

/// A point in the queue: done once the GPU has finished everything submitted before it.
#[derive(Debug)]
pub struct Fence {
    done: oneshot::Receiver<()>,
    /// Whether [`Fence::is_done`] has seen it passed (the signal is taken then).
    passed: bool,
    #[cfg(not(target_arch = "wasm32"))]
    submission: wgpu::SubmissionIndex,
}

impl GpuContext {
    /// Starts reading the first `size` bytes of a `COPY_SRC` buffer back, without waiting.
    pub(crate) fn start_read(&self, buffer: &wgpu::Buffer, size: u64) -> PendingRead {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        let _submission = self.queue.submit([encoder.finish()]);
        self.counters
            .readbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, mapped) = oneshot::channel();
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |result| {
                // The receiver only disappears if the read was dropped.
                let _ = sender.send(result);
            });
        PendingRead {
            staging,
            size,
            mapped,
            #[cfg(not(target_arch = "wasm32"))]
            submission: _submission,
        }
    }

    /// Starts reading an f32 tensor back without waiting (see [`PendingRead`]).
    ///
    /// # Errors
    ///
    /// A tensor that is not f32.
    pub fn start_read_f32(&self, tensor: &Tensor) -> Result<PendingRead> {
        if tensor.dtype() != crate::DType::F32 {
            return Err(KernelError::shape("start_read_f32", "tensor is not f32"));
        }
        Ok(self.start_read(tensor.buffer(), tensor.len() as u64 * 4))
    }

    /// A fence after everything submitted so far.
    pub fn fence(&self) -> Fence {
        let (sender, done) = oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = sender.send(());
        });
        Fence {
            done,
            passed: false,
            #[cfg(not(target_arch = "wasm32"))]
            submission: self.queue.submit([]),
        }
    }

    /// Natively, lets wgpu run the callbacks of finished work without blocking; in the
    /// browser they run from the event loop.
    fn poll_now(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| KernelError::Readback(e.to_string()))?;
        Ok(())
    }

    /// Natively, blocks until `submission` has finished and its callbacks have run.
    #[cfg(not(target_arch = "wasm32"))]
    fn poll_until(&self, submission: &wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission.clone()),
                timeout: None,
            })
            .map(|_| ())
            .map_err(|e| KernelError::Readback(e.to_string()))
    }
}

impl PendingRead {
    /// The mapped bytes, once the map has completed.
    fn read_mapped(
        &self,
        ctx: &GpuContext,
        mapped: std::result::Result<(), wgpu::BufferAsyncError>,
    ) -> Result<Vec<u8>> {
        mapped.map_err(|e| {
            ctx.check_health()
                .err()
                .unwrap_or_else(|| KernelError::Readback(e.to_string()))
        })?;
        let data = self
            .staging
            .slice(..self.size)
            .get_mapped_range()
            .map_err(|e| KernelError::Readback(e.to_string()))?
            .to_vec();
        self.staging.unmap();
        ctx.check_health()?;
        Ok(data)
    }

    /// The values if the read has completed, without waiting; `Ok(None)` while it has not.
    /// Once it has returned the values (or an error), the read is spent.
    ///
    /// # Errors
    ///
    /// A failed map, a lost device, or a read already spent.
    pub fn try_take(&mut self, ctx: &GpuContext) -> Result<Option<Vec<f32>>> {
        ctx.poll_now()?;
        match self.mapped.try_recv() {
            Ok(None) => Ok(None),
            Ok(Some(mapped)) => Ok(Some(to_f32(&self.read_mapped(ctx, mapped)?))),
            Err(_) => Err(KernelError::Readback("the read was already taken".into())),
        }
    }

    /// Waits for the bytes (natively blocking in `poll`, in the browser awaiting the map).
    pub(crate) async fn wait_bytes(mut self, ctx: &GpuContext) -> Result<Vec<u8>> {
        #[cfg(not(target_arch = "wasm32"))]
        ctx.poll_until(&self.submission)?;
        let mapped = (&mut self.mapped)
            .await
            .map_err(|_| KernelError::Readback("the map callback was dropped".into()))?;
        self.read_mapped(ctx, mapped)
    }

    /// Waits for the values.
    ///
    /// # Errors
    ///
    /// A failed map or a lost device.
    pub async fn wait(self, ctx: &GpuContext) -> Result<Vec<f32>> {
        Ok(to_f32(&self.wait_bytes(ctx).await?))
    }
}

fn to_f32(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(bytes)
}

impl Fence {
    /// Whether the GPU has passed the fence, without waiting.
    ///
    /// # Errors
    ///
    /// A lost device.
    pub fn is_done(&mut self, ctx: &GpuContext) -> Result<bool> {
        if !self.passed {
            ctx.poll_now()?;
            // A dropped callback (a lost device) counts as passed: the wait that follows
            // reports the device's error.
            self.passed = !matches!(self.done.try_recv(), Ok(None));
        }
        Ok(self.passed)
    }

    /// Waits until the GPU has passed the fence.
    ///
    /// # Errors
    ///
    /// A lost device.
    pub async fn wait(mut self, ctx: &GpuContext) -> Result<()> {
        if !self.passed {
            #[cfg(not(target_arch = "wasm32"))]
            ctx.poll_until(&self.submission)?;
            (&mut self.done).await.map_err(|_| {
                KernelError::DeviceLost("the GPU never reported the work done".into())
            })?;
        }
        ctx.check_health()
    }
}
