//! The one pipeline cache, keyed by kernel, entry point, weight variant and template constants.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::shader::{ShaderVariant, compose_shader};
use crate::{KernelError, Result};

/// Everything that makes two compute pipelines different.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PipelineKey {
    /// The kernel's `.wgsl` file name.
    pub shader: &'static str,
    /// The entry point.
    pub entry: &'static str,
    /// How the kernel reads weights.
    pub variant: ShaderVariant,
    /// Values of the source's `{{NAME}}` placeholders.
    pub consts: BTreeMap<&'static str, u32>,
}

impl PipelineKey {
    /// A key without template constants.
    pub fn new(shader: &'static str, entry: &'static str, variant: ShaderVariant) -> Self {
        Self {
            shader,
            entry,
            variant,
            consts: BTreeMap::new(),
        }
    }

    /// Adds a template constant.
    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.consts.insert(name, value);
        self
    }
}

#[derive(Debug, Default)]
pub(crate) struct PipelineCache {
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
}

impl PipelineCache {
    pub(crate) fn get(&self, key: &PipelineKey) -> Option<wgpu::ComputePipeline> {
        self.pipelines.lock().ok()?.get(key).cloned()
    }

    /// Compiles a pipeline inside an error scope, so a shader error becomes a typed error naming
    /// the kernel, and caches it.
    pub(crate) async fn compile(
        &self,
        device: &wgpu::Device,
        key: &PipelineKey,
        source: &str,
    ) -> Result<wgpu::ComputePipeline> {
        let label = format!("{}::{}", key.shader, key.entry);
        let code = compose_shader(source, key.variant, &key.consts)
            .map_err(|e| KernelError::Validation(format!("{label}: {e}")))?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(code.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(error) = scope.pop().await {
            return Err(KernelError::Validation(format!("{label}: {error}")));
        }
        if let Ok(mut pipelines) = self.pipelines.lock() {
            pipelines.insert(key.clone(), pipeline.clone());
        }
        Ok(pipeline)
    }

    pub(crate) fn len(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ContextOptions, GpuContext};

    #[test]
    fn a_broken_shader_is_a_validation_error_naming_the_kernel() {
        let ctx = pollster::block_on(GpuContext::new(ContextOptions::default())).expect("adapter");
        let key = PipelineKey::new("broken.wgsl", "main", ShaderVariant::NoWeights);
        let source = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }";
        match pollster::block_on(ctx.pipelines.compile(&ctx.device, &key, source)) {
            Err(KernelError::Validation(message)) => {
                assert!(message.contains("broken.wgsl::main"), "{message}");
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
        assert_eq!(ctx.pipelines.len(), 0, "nothing broken is cached");
    }
}
