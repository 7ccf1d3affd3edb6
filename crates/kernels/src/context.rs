//! The GPU context: adapter choice, device creation with the limits the model needs, error and
//! device-loss capture, the pipeline cache, the buffer pool, uploads and the readback path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::pipeline::PipelineCache;
use crate::pool::BufferPool;
use crate::tensor::{DType, Tensor};
use crate::{KernelError, Result};

/// WebGPU's default `maxStorageBufferBindingSize` (128 MiB): what a browser gives, and the budget
/// `sd cost` and the plan tests plan in (natively the adapter's own is asked for).
pub const DEFAULT_MAX_BINDING: u64 = 128 << 20;
/// WebGPU's default `maxBufferSize` (256 MiB).
pub const DEFAULT_MAX_BUFFER: u64 = 256 << 20;

/// How f16 weights are read by the shaders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum F16Mode {
    /// Native `f16` (`enable f16;`) when the adapter has `shader-f16`, packed otherwise.
    #[default]
    Auto,
    /// Always the packed path: pairs of f16 in a `u32`, read with `unpack2x16float`. This is what
    /// browsers without `shader-f16` run; tests force it to prove that path on any adapter.
    ForcePacked,
}

/// Buffer sizes the caller needs beyond WebGPU's defaults (from the memory planner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeededLimits {
    /// Largest storage binding, in bytes.
    pub storage_binding: u64,
    /// Largest buffer, in bytes.
    pub buffer: u64,
}

impl Default for NeededLimits {
    fn default() -> Self {
        Self {
            storage_binding: DEFAULT_MAX_BINDING,
            buffer: DEFAULT_MAX_BUFFER,
        }
    }
}

/// How to pick the adapter and create the device.
#[derive(Clone, Debug)]
pub struct ContextOptions {
    /// High performance (a discrete GPU) first, by default.
    pub power_preference: wgpu::PowerPreference,
    /// Pick the first adapter whose name contains this (case-insensitive), for machines with
    /// several GPUs. Native only.
    pub adapter_name: Option<String>,
    /// Backends to consider; `None` means all that this build enabled.
    pub backends: Option<wgpu::Backends>,
    /// Fail unless the adapter runs on this backend (wgpu may otherwise fall back silently).
    pub expect_backend: Option<wgpu::Backend>,
    /// Sizes beyond the WebGPU defaults that the model needs.
    pub needed: NeededLimits,
    /// How f16 weights are read.
    pub f16: F16Mode,
    /// Split tensors as if bindings were at most this large (tests exercise the chunked paths
    /// of the models on small inputs with it); `None`: the device's limit.
    pub chunk_budget: Option<u64>,
    /// Ask for the adapter's largest storage binding and buffer instead of WebGPU's defaults
    /// (128 and 256 MiB), so that the memory plan splits fewer tensors (none of SD 1.5's at
    /// 512x512 on a desktop GPU). [`ContextOptions::from_env`] turns it on natively; the
    /// browser keeps the defaults every adapter has.
    pub adapter_limits: bool,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            power_preference: wgpu::PowerPreference::HighPerformance,
            adapter_name: None,
            backends: None,
            expect_backend: None,
            needed: NeededLimits::default(),
            f16: F16Mode::Auto,
            chunk_budget: None,
            adapter_limits: false,
        }
    }
}

impl ContextOptions {
    /// The defaults with [`ContextOptions::adapter_limits`] on (off in wasm), overridden by the
    /// environment:
    /// - `SD_ADAPTER` (or wgpu's `WGPU_ADAPTER_NAME`): a substring of the adapter's name;
    /// - `WGPU_BACKEND`: `vulkan`, `metal`, `dx12` (comma-separated list);
    /// - `SD_EXPECT_BACKEND`: fail unless the adapter is on this backend;
    /// - `SD_F16`: `auto` (default) or `packed`;
    /// - `SD_LIMITS`: `adapter` (the native default) or `webgpu` (WebGPU's default limits).
    pub fn from_env() -> Result<Self> {
        let mut options = Self {
            adapter_limits: !cfg!(target_arch = "wasm32"),
            ..Self::default()
        };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        options.adapter_name = var("SD_ADAPTER").or_else(|| var("WGPU_ADAPTER_NAME"));
        if let Some(value) = var("WGPU_BACKEND") {
            let backends = wgpu::Backends::from_comma_list(&value);
            if backends.is_empty() {
                return Err(KernelError::Env {
                    var: "WGPU_BACKEND",
                    value,
                    allowed: "a comma-separated list of vulkan, metal, dx12, webgpu",
                });
            }
            options.backends = Some(backends);
        }
        if let Some(value) = var("SD_EXPECT_BACKEND") {
            options.expect_backend = Some(parse_backend(&value).ok_or(KernelError::Env {
                var: "SD_EXPECT_BACKEND",
                value,
                allowed: "one of vulkan, metal, dx12, webgpu",
            })?);
        }
        if let Some(value) = var("SD_LIMITS") {
            options.adapter_limits = parse_limits(&value).ok_or(KernelError::Env {
                var: "SD_LIMITS",
                value,
                allowed: "adapter (the adapter's largest bindings) or webgpu (WebGPU's defaults, as in a browser)",
            })?;
        }
        if let Some(value) = var("SD_F16") {
            options.f16 = match value.to_ascii_lowercase().as_str() {
                "auto" => F16Mode::Auto,
                "packed" => F16Mode::ForcePacked,
                _ => {
                    return Err(KernelError::Env {
                        var: "SD_F16",
                        value,
                        allowed: "auto or packed",
                    });
                }
            };
        }
        Ok(options)
    }
}

impl ContextOptions {
    /// What test suites use: [`ContextOptions::from_env`], and unless `SD_EXPECT_BACKEND` says
    /// otherwise, the backend this platform must run on (Vulkan on Linux: lavapipe without a
    /// GPU; Metal on macOS), so a missing driver fails the tests instead of passing them on
    /// something else.
    pub fn for_tests() -> Result<Self> {
        let mut options = Self::from_env()?;
        if options.expect_backend.is_none() {
            options.expect_backend = if cfg!(target_os = "linux") {
                Some(wgpu::Backend::Vulkan)
            } else if cfg!(target_os = "macos") {
                Some(wgpu::Backend::Metal)
            } else {
                None
            };
        }
        Ok(options)
    }
}

/// `SD_LIMITS`: whether to ask for the adapter's own limits.
fn parse_limits(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "adapter" => Some(true),
        "webgpu" => Some(false),
        _ => None,
    }
}

fn parse_backend(name: &str) -> Option<wgpu::Backend> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Some(wgpu::Backend::Vulkan),
        "metal" | "mtl" => Some(wgpu::Backend::Metal),
        "dx12" | "d3d12" => Some(wgpu::Backend::Dx12),
        "webgpu" | "browser" => Some(wgpu::Backend::BrowserWebGpu),
        _ => None,
    }
}

/// Errors the device reported outside an error scope, and whether it was lost.
#[derive(Debug, Default)]
struct DeviceHealth {
    lost: Option<String>,
    uncaptured: Vec<String>,
}

/// One GPU device with everything the kernels share: the pipeline cache and the buffer pool.
#[derive(Debug)]
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    native_f16: bool,
    chunk_budget: u64,
    pub(crate) pipelines: PipelineCache,
    pub(crate) pool: Arc<BufferPool>,
    /// Held by the batch being recorded (see [`crate::Batch`]).
    pub(crate) recording: Mutex<()>,
    health: Arc<Mutex<DeviceHealth>>,
    placeholder: Tensor,
    pub(crate) counters: WorkCounters,
}

/// What the context has sent to the GPU and read back, counted since it was created.
#[derive(Debug, Default)]
pub(crate) struct WorkCounters {
    pub(crate) submissions: AtomicU64,
    pub(crate) dispatches: AtomicU64,
    pub(crate) readbacks: AtomicU64,
    pub(crate) bind_groups: AtomicU64,
}

/// A snapshot of [`GpuContext::work`]: subtract two to count what happened between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkCount {
    /// Batches submitted (a readback's own copy is counted under `readbacks`).
    pub submissions: u64,
    /// Compute dispatches submitted.
    pub dispatches: u64,
    /// Buffers read back to the CPU (a blocking wait natively, unless started as a
    /// [`crate::PendingRead`]).
    pub readbacks: u64,
    /// Bind groups created (a replayed batch creates none).
    pub bind_groups: u64,
}

impl std::ops::Sub for WorkCount {
    type Output = Self;

    fn sub(self, earlier: Self) -> Self {
        Self {
            submissions: self.submissions - earlier.submissions,
            dispatches: self.dispatches - earlier.dispatches,
            readbacks: self.readbacks - earlier.readbacks,
            bind_groups: self.bind_groups - earlier.bind_groups,
        }
    }
}

impl WorkCounters {
    pub(crate) fn submitted(&self, submissions: u64, dispatches: u64) {
        self.submissions.fetch_add(submissions, Ordering::Relaxed);
        self.dispatches.fetch_add(dispatches, Ordering::Relaxed);
    }
}

impl GpuContext {
    /// Picks an adapter and creates the device as `options` say.
    pub async fn new(options: ContextOptions) -> Result<Self> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        if let Some(backends) = options.backends {
            desc.backends = backends;
        }
        let backends = desc.backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = choose_adapter(&instance, backends, &options).await?;
        let info = adapter.get_info();
        if let Some(expected) = options.expect_backend
            && info.backend != expected
        {
            return Err(KernelError::NoAdapter(format!(
                "expected a {expected:?} adapter but got {:?} on {:?}",
                info.name, info.backend
            )));
        }
        let limits = required_limits(&adapter.limits(), options.needed, options.adapter_limits)?;
        let native_f16 =
            options.f16 == F16Mode::Auto && adapter.features().contains(wgpu::Features::SHADER_F16);
        let mut required_features = if native_f16 {
            wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        };
        // Timestamps cost nothing unless a profiled batch asks for them (benchmarks).
        required_features |= adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("sd-kernels"),
                required_features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| KernelError::RequestDevice(e.to_string()))?;

        let health = Arc::new(Mutex::new(DeviceHealth::default()));
        let lost = Arc::clone(&health);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut h) = lost.lock() {
                h.lost = Some(format!("{reason:?}: {message}"));
            }
        });
        let uncaptured = Arc::clone(&health);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            if let Ok(mut h) = uncaptured.lock() {
                h.uncaptured.push(error.to_string());
            }
        }));

        log::info!(
            "GPU: {} ({:?}, {:?}), shader-f16 {}",
            info.name,
            info.backend,
            info.device_type,
            if native_f16 { "native" } else { "packed" }
        );
        let pool = Arc::new(BufferPool::new(device.clone()));
        let placeholder = Tensor::new(pool.upload(&queue, &[0; 4]), &[1], DType::F32);
        Ok(Self {
            pool,
            recording: Mutex::new(()),
            placeholder,
            pipelines: PipelineCache::default(),
            device,
            queue,
            info,
            chunk_budget: options
                .chunk_budget
                .unwrap_or(limits.max_storage_buffer_binding_size)
                .min(limits.max_storage_buffer_binding_size),
            limits,
            native_f16,
            health,
            counters: WorkCounters::default(),
        })
    }

    /// The adapter's name, backend and driver.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The limits the device was created with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The largest binding the models plan their chunks for: the device's
    /// `max_storage_buffer_binding_size`, or less when [`ContextOptions::chunk_budget`] says so.
    pub fn chunk_budget(&self) -> u64 {
        self.chunk_budget
    }

    /// Whether f16 weights are read as native `f16` (else packed in `u32`).
    pub fn native_f16(&self) -> bool {
        self.native_f16
    }

    /// A one-line description of the adapter, for logs and benchmark reports.
    pub fn describe(&self) -> String {
        // Browsers hide most adapter details; say only what is known.
        let name = if self.info.name.is_empty() {
            "unnamed adapter"
        } else {
            &self.info.name
        };
        let driver = format!("{} {}", self.info.driver, self.info.driver_info);
        let driver = driver.trim();
        format!(
            "{name} ({:?}, {:?}{}), f16 weights {}",
            self.info.backend,
            self.info.device_type,
            if driver.is_empty() {
                String::new()
            } else {
                format!(", driver {driver}")
            },
            if self.native_f16 {
                "native shader-f16"
            } else {
                "packed u32"
            }
        )
    }

    /// Frees the device and everything on it now, instead of when the context is dropped. Every
    /// later call returns [`KernelError::DeviceLost`].
    pub fn dispose(&self) {
        if let Ok(mut health) = self.health.lock() {
            health.lost = Some("the context was disposed".into());
        }
        self.pool.trim();
        self.device.destroy();
    }

    /// What this context has submitted and read back so far (benchmarks count per step with it).
    pub fn work(&self) -> WorkCount {
        let c = &self.counters;
        WorkCount {
            submissions: c.submissions.load(Ordering::Relaxed),
            dispatches: c.dispatches.load(Ordering::Relaxed),
            readbacks: c.readbacks.load(Ordering::Relaxed),
            bind_groups: c.bind_groups.load(Ordering::Relaxed),
        }
    }

    /// Starts recording a batch of dispatches (one uniform arena, one command buffer).
    pub fn batch(&self) -> crate::Batch<'_> {
        crate::Batch::new(self)
    }

    /// Fails with the device loss or an error reported outside an error scope, if any.
    pub(crate) fn check_health(&self) -> Result<()> {
        let mut health = self
            .health
            .lock()
            .map_err(|_| KernelError::DeviceLost("device state poisoned".into()))?;
        if let Some(reason) = &health.lost {
            return Err(KernelError::DeviceLost(reason.clone()));
        }
        if !health.uncaptured.is_empty() {
            let errors = std::mem::take(&mut health.uncaptured).join("; ");
            return Err(KernelError::Validation(errors));
        }
        Ok(())
    }

    /// An uninitialised tensor from the buffer pool.
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = dtype.storage_bytes(shape.iter().product());
        self.check_buffer_size(bytes)?;
        Ok(Tensor::new(self.pool.acquire(bytes), shape, dtype))
    }

    /// Uploads f32 values into a new buffer.
    pub fn upload_f32(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.upload(
            bytemuck::cast_slice(data),
            data.len(),
            shape,
            DType::F32,
            "upload_f32",
        )
    }

    /// Uploads u32 values (token ids) into a new buffer.
    pub fn upload_u32(&self, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        self.upload(
            bytemuck::cast_slice(data),
            data.len(),
            shape,
            DType::U32,
            "upload_u32",
        )
    }

    /// Uploads f16 values (weights) into a new buffer.
    pub fn upload_f16(&self, data: &[half::f16], shape: &[usize]) -> Result<Tensor> {
        self.upload(
            bytemuck::cast_slice(data),
            data.len(),
            shape,
            DType::F16,
            "upload_f16",
        )
    }

    /// Uploads f32 values as a weight of the given storage type (f32 or f16).
    pub fn upload_weight(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        match dtype {
            DType::F32 => self.upload_f32(data, shape),
            DType::F16 => {
                let halves: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
                self.upload_f16(&halves, shape)
            }
            DType::U32 => Err(KernelError::shape(
                "upload_weight",
                "weights are f32 or f16",
            )),
        }
    }

    /// Uploads never reuse pooled buffers (see `BufferPool::upload`).
    fn upload(
        &self,
        bytes: &[u8],
        len: usize,
        shape: &[usize],
        dtype: DType,
        op: &'static str,
    ) -> Result<Tensor> {
        let expected: usize = shape.iter().product();
        if len != expected {
            return Err(KernelError::shape(
                op,
                format!("{len} values given for shape {shape:?} ({expected} values)"),
            ));
        }
        self.check_buffer_size(dtype.storage_bytes(len))?;
        Ok(Tensor::new(
            self.pool.upload(&self.queue, bytes),
            shape,
            dtype,
        ))
    }

    /// A one-element buffer bound where a kernel's optional input (a bias) is absent.
    pub(crate) fn placeholder(&self) -> &Tensor {
        &self.placeholder
    }

    /// Idle buffers in the pool.
    pub fn pool_stats(&self) -> crate::pool::PoolStats {
        self.pool.stats()
    }

    /// Frees the pool's idle buffers (e.g. between models).
    pub fn trim_pool(&self) {
        self.pool.trim();
    }

    /// Number of compiled pipelines.
    pub fn cached_pipelines(&self) -> usize {
        self.pipelines.len()
    }

    /// Overwrites an f32 tensor's contents at once, through the queue (tests poison outputs with
    /// it). Not for tensors that a recorded, unsubmitted batch still uses.
    pub fn fill_f32(&self, tensor: &Tensor, value: f32) -> Result<()> {
        self.write_f32(tensor, &vec![value; tensor.len()])
    }

    /// Overwrites an f32 tensor's contents with `data`, through the queue: in order after the
    /// work submitted so far, before the next submission. Not for tensors that a recorded,
    /// unsubmitted batch still uses (the write would land before it runs).
    pub fn write_f32(&self, tensor: &Tensor, data: &[f32]) -> Result<()> {
        if tensor.dtype() != DType::F32 || data.len() != tensor.len() {
            return Err(KernelError::shape(
                "write_f32",
                format!(
                    "{} values for a {:?} tensor of {} elements",
                    data.len(),
                    tensor.dtype(),
                    tensor.len()
                ),
            ));
        }
        self.queue
            .write_buffer(tensor.buffer(), 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Waits until the GPU has finished all submitted work (benchmarks time with it).
    pub async fn finish(&self) -> Result<()> {
        self.fence().wait(self).await
    }

    /// Reads an f32 tensor back to the CPU: the one readback path, native and wasm alike.
    pub async fn read_f32(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        if tensor.dtype() != DType::F32 {
            return Err(KernelError::shape("read_f32", "tensor is not f32"));
        }
        let bytes = self.read_bytes(tensor).await?;
        Ok(bytemuck::cast_slice(&bytes[..tensor.len() * 4]).to_vec())
    }

    async fn read_bytes(&self, tensor: &Tensor) -> Result<Vec<u8>> {
        self.read_buffer(tensor.buffer(), tensor.byte_len()).await
    }

    /// Reads the first `size` bytes of a `COPY_SRC` buffer back to the CPU.
    pub(crate) async fn read_buffer(&self, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        self.start_read(buffer, size).wait_bytes(self).await
    }

    pub(crate) fn check_buffer_size(&self, bytes: u64) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            return Err(KernelError::Limit {
                name: "max_buffer_size",
                needed: bytes,
                max: self.limits.max_buffer_size,
            });
        }
        Ok(())
    }

    pub(crate) fn check_binding_size(&self, bytes: u64) -> Result<()> {
        let max = self.limits.max_storage_buffer_binding_size;
        if bytes > max {
            return Err(KernelError::Limit {
                name: "max_storage_buffer_binding_size",
                needed: bytes,
                max,
            });
        }
        Ok(())
    }
}

async fn choose_adapter(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
    options: &ContextOptions,
) -> Result<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(wanted) = &options.adapter_name {
        let adapters = instance.enumerate_adapters(backends).await;
        let wanted_lower = wanted.to_lowercase();
        let names: Vec<String> = adapters
            .iter()
            .map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend))
            .collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted_lower))
            .ok_or_else(|| {
                KernelError::NoAdapter(format!(
                    "no adapter name contains {wanted:?}; available: {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            });
    }
    #[cfg(target_arch = "wasm32")]
    let _ = backends;
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: options.power_preference,
            ..Default::default()
        })
        .await
        .map_err(|e| KernelError::NoAdapter(e.to_string()))?;
    #[cfg(target_arch = "wasm32")]
    if let Some(wanted) = &options.adapter_name {
        let name = adapter.get_info().name;
        if !name.to_lowercase().contains(&wanted.to_lowercase()) {
            return Err(KernelError::NoAdapter(format!(
                "the browser gave adapter {name:?}, not one matching {wanted:?}"
            )));
        }
    }
    Ok(adapter)
}

/// WebGPU's defaults, raised where the model needs more, or to the adapter's largest binding
/// and buffer with `adapter_limits`; an error names the limit that the adapter cannot reach.
fn required_limits(
    adapter: &wgpu::Limits,
    needed: NeededLimits,
    adapter_limits: bool,
) -> Result<wgpu::Limits> {
    let mut limits = wgpu::Limits::default();
    if adapter_limits {
        limits.max_buffer_size = limits.max_buffer_size.max(adapter.max_buffer_size);
        limits.max_storage_buffer_binding_size = limits
            .max_storage_buffer_binding_size
            .max(adapter.max_storage_buffer_binding_size);
    }
    if needed.storage_binding > limits.max_storage_buffer_binding_size {
        let max = adapter.max_storage_buffer_binding_size;
        if needed.storage_binding > max {
            return Err(KernelError::Limit {
                name: "max_storage_buffer_binding_size",
                needed: needed.storage_binding,
                max,
            });
        }
        limits.max_storage_buffer_binding_size = adapter.max_storage_buffer_binding_size;
    }
    if needed.buffer > limits.max_buffer_size {
        if needed.buffer > adapter.max_buffer_size {
            return Err(KernelError::Limit {
                name: "max_buffer_size",
                needed: needed.buffer,
                max: adapter.max_buffer_size,
            });
        }
        limits.max_buffer_size = adapter.max_buffer_size;
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_stay_at_webgpu_defaults_unless_needed() -> Result<()> {
        let adapter = wgpu::Limits {
            max_storage_buffer_binding_size: 1 << 30,
            max_buffer_size: 1 << 31,
            ..wgpu::Limits::default()
        };
        let limits = required_limits(&adapter, NeededLimits::default(), false)?;
        assert_eq!(limits.max_storage_buffer_binding_size, DEFAULT_MAX_BINDING);
        assert_eq!(limits.max_buffer_size, DEFAULT_MAX_BUFFER);
        let native = required_limits(&adapter, NeededLimits::default(), true)?;
        assert_eq!(native.max_storage_buffer_binding_size, 1 << 30);
        assert_eq!(native.max_buffer_size, 1 << 31);
        let needed = NeededLimits {
            storage_binding: 300 << 20,
            buffer: 300 << 20,
        };
        let raised = required_limits(&adapter, needed, false)?;
        assert_eq!(raised.max_storage_buffer_binding_size, 1 << 30);
        assert_eq!(raised.max_buffer_size, 1 << 31);
        Ok(())
    }

    #[test]
    fn sd_limits_takes_adapter_or_webgpu() {
        assert_eq!(parse_limits("adapter"), Some(true));
        assert_eq!(parse_limits("WebGPU"), Some(false));
        assert_eq!(parse_limits("max"), None);
    }

    #[test]
    fn too_small_adapter_names_the_limit() {
        let needed = NeededLimits {
            storage_binding: 300 << 20,
            buffer: DEFAULT_MAX_BUFFER,
        };
        match required_limits(&wgpu::Limits::default(), needed, false) {
            Err(KernelError::Limit { name, needed, max }) => {
                assert_eq!(name, "max_storage_buffer_binding_size");
                assert_eq!(needed, 300 << 20);
                assert_eq!(max, DEFAULT_MAX_BINDING);
            }
            other => panic!("expected a limit error, got {other:?}"),
        }
    }
}
