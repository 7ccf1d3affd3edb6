//! [`WasmModel`]: a web model on WebGPU, and [`parse_manifest`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Array, Function, Map, Object, Promise, Reflect, Uint8Array, Uint8ClampedArray};
use sd_core::params::{GenerationParams, ParamLimits, size_for_input_image};
use sd_models::ModelSource;
use sd_weights::web::WebManifest;
use sd_wgsl::{ImageFormat, Model, Options, Progress, SamplerKind, Stage};
use wasm_bindgen::prelude::*;
use web_sys::AbortSignal;

use crate::errors::{ErrorCode, WebError};
use crate::inputs::read_inputs;
use crate::request::{params_error, parse_request};

/// Sets `key` on a plain object (cannot fail on a fresh `Object`).
fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(obj, &key.into(), &value.into());
}

/// Calls a JavaScript callback, ignoring what it throws: a broken progress handler must not
/// abort the work it watches.
fn notify(callback: Option<&Function>, arg: &JsValue) {
    if let Some(f) = callback {
        let _ = f.call1(&JsValue::NULL, arg);
    }
}

/// Checks a `manifest.json` and returns what the downloader needs: `{name, version, shards:
/// [{file, component, size, sha256}], totalBytes}`. Throws `MODEL_INVALID`.
#[wasm_bindgen(js_name = parseManifest)]
pub fn parse_manifest(json: &str) -> Result<Object, JsValue> {
    let manifest = WebManifest::from_json("manifest.json", json.as_bytes())
        .map_err(|e| WebError::new(ErrorCode::ModelInvalid, e.to_string()))?;
    let shards = Array::new();
    for shard in &manifest.shards {
        let s = Object::new();
        set(&s, "file", shard.file.as_str());
        set(&s, "component", shard.component.as_str());
        set(&s, "size", shard.size as f64);
        set(&s, "sha256", shard.sha256.as_str());
        shards.push(&s);
    }
    let out = Object::new();
    set(&out, "name", manifest.name.as_str());
    set(&out, "version", manifest.version);
    set(&out, "shards", shards);
    set(&out, "totalBytes", manifest.total_bytes() as f64);
    Ok(out)
}

/// The WebGPU module: the model onto the GPU the browser gives.
#[cfg(not(feature = "cpu"))]
async fn load_model(
    source: &ModelSource,
    name: String,
    on_component: &mut dyn FnMut(&str),
) -> Result<Model, WebError> {
    use sd_kernels::{ContextOptions, GpuContext};
    use sd_wgsl::LoadOptions;
    let ctx = GpuContext::new(ContextOptions::default())
        .await
        .map_err(|e| WebError::from_model(&sd_models::ModelError::from(e), true))?;
    Model::from_source_with_progress(
        Arc::new(ctx),
        source,
        name,
        &LoadOptions::new(),
        on_component,
    )
    .map_err(|e| WebError::from_front_door(&e))
}

/// The CPU module: candle's networks under the same pipeline, no WebGPU needed.
#[cfg(feature = "cpu")]
async fn load_model(
    source: &ModelSource,
    name: String,
    on_component: &mut dyn FnMut(&str),
) -> Result<Model, WebError> {
    let sd = sd_models::StableDiffusion::load_on(source, |files| {
        Ok(Box::new(sd_cpu::CpuNetworks::load(
            source,
            files.configs(),
            on_component,
        )?))
    })
    .map_err(|e| WebError::from_model(&e, false))?;
    Ok(Model::from_pipeline(sd, name))
}

/// `webgpu` or `cpu`: which module this is.
const DEVICE: &str = if cfg!(feature = "cpu") {
    "cpu"
} else {
    "webgpu"
};

/// What a loaded model holds.
#[derive(Debug)]
struct Loaded {
    model: Model,
}

/// A model on the GPU. One generation at a time (the JavaScript side queues them).
#[wasm_bindgen]
#[derive(Debug)]
pub struct WasmModel {
    /// `None` once disposed; an `Rc` so a running generation keeps what it uses.
    loaded: RefCell<Option<Rc<Loaded>>>,
}

#[wasm_bindgen]
impl WasmModel {
    /// Uploads a web model: `manifest_json` is the text of `manifest.json`, `shards` maps each
    /// shard's file name to its bytes (already verified by SHA-256), `on_upload(component,
    /// index, total)` hears each component before it goes to the GPU.
    pub async fn load(
        manifest_json: String,
        shards: Map,
        on_upload: Option<Function>,
    ) -> Result<WasmModel, JsValue> {
        let manifest = WebManifest::from_json("manifest.json", manifest_json.as_bytes())
            .map_err(|e| WebError::new(ErrorCode::ModelInvalid, e.to_string()))?;
        let mut bytes: BTreeMap<String, Arc<[u8]>> = BTreeMap::new();
        for (i, shard) in manifest.shards.iter().enumerate() {
            let data = shards.get(&shard.file.as_str().into());
            let data = data.dyn_into::<Uint8Array>().map_err(|_| {
                WebError::new(
                    ErrorCode::ModelInvalid,
                    format!("shard {i} ({}) was not given as a Uint8Array", shard.file),
                )
            })?;
            if u64::from(data.length()) != shard.size {
                return Err(WebError::new(
                    ErrorCode::ModelInvalid,
                    format!(
                        "shard {} is {} bytes, the manifest says {}",
                        shard.file,
                        data.length(),
                        shard.size
                    ),
                )
                .into());
            }
            bytes.insert(shard.file.clone(), Arc::from(data.to_vec()));
        }
        let name = manifest.name.clone();
        let files = manifest
            .into_files(&bytes)
            .map_err(|e| WebError::new(ErrorCode::ModelInvalid, e.to_string()))?;
        drop(bytes);
        let source = ModelSource::Memory(files);

        let components = ["text_encoder", "unet", "vae"];
        let mut on_component = |component: &str| {
            let index = components.iter().position(|c| *c == component).unwrap_or(0);
            if let Some(f) = &on_upload {
                let _ = f.call3(
                    &JsValue::NULL,
                    &component.into(),
                    &(index as u32).into(),
                    &(components.len() as u32).into(),
                );
            }
        };
        let model = load_model(&source, name, &mut on_component).await?;
        Ok(WasmModel {
            loaded: RefCell::new(Some(Rc::new(Loaded { model }))),
        })
    }

    fn current(&self) -> Result<Rc<Loaded>, WebError> {
        self.loaded.borrow().clone().ok_or_else(|| {
            WebError::new(
                ErrorCode::Disposed,
                "the model was disposed: load it again to generate",
            )
        })
    }

    /// The model's name, native size, the adapter, whether shader-f16 is used, the samplers and
    /// the request defaults.
    pub fn info(&self) -> Result<Object, JsValue> {
        let loaded = self.current()?;
        let (width, height) = loaded.model.native_size();
        let out = Object::new();
        set(&out, "name", loaded.model.name());
        set(&out, "nativeWidth", width);
        set(&out, "nativeHeight", height);
        set(&out, "adapter", loaded.model.device_description());
        // The CPU module has no GPU context: its f32 networks use no f16 at all.
        let native_f16 = loaded
            .model
            .pipeline()
            .context()
            .is_some_and(|c| c.native_f16());
        set(&out, "shaderF16", native_f16);
        set(&out, "device", DEVICE);
        let samplers: Array = SamplerKind::ALL
            .iter()
            .map(|k| JsValue::from(k.name()))
            .collect();
        set(&out, "samplers", samplers);
        let d = loaded.model.defaults();
        let defaults = Object::new();
        set(&defaults, "steps", d.steps as u32);
        set(&defaults, "guidanceScale", d.guidance_scale);
        set(&defaults, "sampler", d.sampler.name());
        set(&defaults, "width", width);
        set(&defaults, "height", height);
        set(&defaults, "count", GenerationParams::default().count);
        set(&out, "defaults", defaults);
        Ok(out)
    }

    /// Runs a request (JSON, see `parse_request`), optionally from `initial_latents` (unit
    /// noise, `count x 4 x h/8 x w/8`) and `inputs` `{initImage?, mask?}` (img2img and
    /// inpainting; each `{width, height, data}` with RGBA bytes, e.g. an `ImageData`),
    /// stopping with `ABORTED` when `signal` fires, and telling `on_progress` each stage and
    /// step with a latent preview. Resolves to `{images: [{width, height, rgba, png, seed}],
    /// params, warnings}`.
    pub fn generate(
        &self,
        params_json: String,
        initial_latents: Option<js_sys::Float32Array>,
        inputs: JsValue,
        signal: Option<AbortSignal>,
        on_progress: Option<Function>,
    ) -> Promise {
        let loaded = self.current();
        wasm_bindgen_futures::future_to_promise(async move {
            let loaded = loaded?;
            run(
                &loaded,
                &params_json,
                initial_latents,
                &inputs,
                signal,
                on_progress,
            )
            .await
            .map_err(JsValue::from)
        })
    }

    /// Frees the model's GPU memory now. Later calls fail with `DISPOSED`.
    pub fn dispose(&self) {
        // The CPU module has no GPU memory: dropping the model frees it.
        if let Some(loaded) = self.loaded.borrow_mut().take()
            && let Some(ctx) = loaded.model.pipeline().context()
        {
            ctx.dispose();
        }
    }
}

/// The progress event JavaScript sees: `{stage, image, count, step, total, percent,
/// preview?: {width, height, rgba}}`.
fn progress_event(progress: &Progress) -> Object {
    let (step, total) = match progress.stage {
        Stage::Diffusion { step, total } => (step, total),
        _ => (0, 0),
    };
    let out = Object::new();
    set(&out, "stage", progress.stage.name());
    set(&out, "image", progress.image);
    set(&out, "count", progress.count);
    set(&out, "step", step as u32);
    set(&out, "total", total as u32);
    set(&out, "percent", progress.percent);
    if let Some(preview) = &progress.preview {
        let rgba: Vec<u8> = preview
            .pixels()
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        let p = Object::new();
        set(&p, "width", preview.width());
        set(&p, "height", preview.height());
        set(&p, "rgba", Uint8ClampedArray::from(rgba.as_slice()));
        set(&out, "preview", p);
    }
    out
}

async fn run(
    loaded: &Loaded,
    params_json: &str,
    initial_latents: Option<js_sys::Float32Array>,
    inputs: &JsValue,
    signal: Option<AbortSignal>,
    on_progress: Option<Function>,
) -> Result<JsValue, WebError> {
    let images_in = read_inputs(inputs)?;
    // Without a size in the request, an input image sets it.
    let mut defaults = loaded.model.defaults();
    if let Some(image) = &images_in.init_image {
        (defaults.width, defaults.height) =
            size_for_input_image(image.width(), image.height(), &ParamLimits::default());
    }
    let mut params = parse_request(params_json, &defaults, || {
        (js_sys::Math::random() * 4_294_967_296.0) as u64
    })?;
    let latents = initial_latents.map(|l| l.to_vec());
    params.latents_len = latents.as_ref().map(Vec::len);
    params.validate().map_err(|e| params_error(&e))?;

    let from_image = images_in.init_image.is_some();
    let mut options = Options::from_params(&params);
    if let Some(latents) = latents {
        options = options.initial_latents(latents);
    }
    if let Some(image) = images_in.init_image {
        options = options.init_image(image);
    }
    if let Some(mask) = images_in.mask {
        options = options.mask(mask);
    }
    let mut on_progress = |progress: &Progress| {
        notify(on_progress.as_ref(), &progress_event(progress).into());
    };
    let cancelled = || signal.as_ref().is_some_and(AbortSignal::aborted);
    let generated = loaded
        .model
        .generate_async(&params.prompt, &options, &mut on_progress, &cancelled)
        .await
        .map_err(|e| WebError::from_front_door(&e))?;

    let images = Array::new();
    for (index, (picture, &seed)) in generated.images().iter().zip(generated.seeds()).enumerate() {
        let png = generated
            .encode(index, ImageFormat::Png)
            .map_err(|e| WebError::new(ErrorCode::Internal, e.to_string()))?;
        let rgba: Vec<u8> = picture
            .pixels()
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        let image = Object::new();
        set(&image, "width", picture.width());
        set(&image, "height", picture.height());
        set(&image, "rgba", Uint8ClampedArray::from(rgba.as_slice()));
        set(&image, "png", Uint8Array::from(png.as_slice()));
        set(&image, "seed", seed as f64);
        images.push(&image);
    }
    let p = Object::new();
    set(&p, "prompt", params.prompt.as_str());
    set(&p, "negativePrompt", params.negative_prompt.as_str());
    set(&p, "steps", params.steps as u32);
    set(&p, "guidanceScale", params.guidance_scale);
    set(&p, "seed", params.seed as f64);
    set(&p, "sampler", params.sampler.name());
    set(&p, "width", params.width);
    set(&p, "height", params.height);
    set(&p, "count", params.count);
    if from_image {
        set(&p, "strength", params.strength);
    }
    let warnings: Array = generated
        .warnings()
        .iter()
        .map(|w| JsValue::from(w.as_str()))
        .collect();
    let out = Object::new();
    set(&out, "images", images);
    set(&out, "params", p);
    set(&out, "warnings", warnings);
    Ok(out.into())
}
