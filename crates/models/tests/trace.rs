//! The trace test: for the digits model and every tiny-architecture fixture, the commands the
//! GPU recorder issues per op (recorded into a batch, not submitted) are the ops and dispatch
//! counts the cost model (and so the planner, `cost.rs`) counts, path by path.

use sd_test_support::fixtures;
use std::path::Path;

use sd_core::config::AutoencoderKLConfig;
use sd_kernels::{DType, GpuContext, Tensor};
use sd_models::cost::{CostRecorder, OpCost};
use sd_models::gpu::{GpuRecorder, Issued, Weights};
use sd_models::nets::clip::{TextOutput, TextRequest, clip_text_model};
use sd_models::nets::unet::{
    UNetSize, context_projections, unet_2d_condition_model, unet_context_projections,
};
use sd_models::nets::vae;
use sd_models::plan::PlanError;
use sd_models::{
    CLIPTextModel, ModelSource, PipelineFiles, UNet2DConditionModel, VaeDecoder, VaeEncoder,
    WeightLoader,
};

fn ctx() -> &'static GpuContext {
    sd_test_support::gpu_context()
}

fn zeros(shape: &[usize]) -> Tensor {
    let len = shape.iter().product();
    ctx().upload_f32(&vec![0.0; len], shape).expect("upload")
}

/// Checks that the GPU recorder issued, op by op, the commands the cost model counts.
fn same_trace(label: &str, issued: &[Issued], cost: &CostRecorder) {
    let issued: Vec<(&str, usize)> = issued
        .iter()
        .map(|Issued { path, commands }| (path.as_str(), *commands))
        .collect();
    let counted: Vec<(&str, usize)> = cost
        .ops()
        .iter()
        .map(
            |OpCost {
                 path, dispatches, ..
             }| (path.as_str(), *dispatches),
        )
        .collect();
    assert!(!issued.is_empty(), "{label}: nothing issued");
    assert_eq!(issued, counted, "{label}");
    println!("{label}: {} ops", issued.len());
}

fn params(source: &ModelSource, component: &str, f: impl FnOnce(&WeightLoader<'_>)) {
    let weights = source.weights(component).expect("weights");
    f(&WeightLoader {
        ctx: ctx(),
        scope: weights.root(),
        matrices: DType::F16,
    });
}

fn trace_model(name: &str, folder: &Path) {
    let source = ModelSource::folder(folder);
    let files = PipelineFiles::read(&source).expect("configs");
    let (batch_size, latent) = (2, 8);

    // Text encoder(s): the last hidden state, and the pooled output where there is one.
    for (component, config) in [
        ("text_encoder", Some(&files.networks.text_encoder)),
        ("text_encoder_2", files.networks.text_encoder_2.as_ref()),
    ] {
        let Some(config) = config else { continue };
        params(&source, component, |p| {
            let model = CLIPTextModel::load(config, p).expect("load");
            let len = config.max_position_embeddings;
            let ids = vec![1u32; batch_size * len];
            let ids_gpu = ctx().upload_u32(&ids, &[batch_size, len]).expect("upload");
            let pooled = p.scope.contains("text_projection.weight");
            let eos = vec![len - 1; batch_size];
            let request = TextRequest {
                prompts: batch_size,
                output: TextOutput::Last,
                pooled_at: pooled.then_some(eos.as_slice()),
            };
            let mut batch = ctx().batch();
            let r = GpuRecorder::new(&mut batch, model.weights(), "text_encoder", 0)
                .with_input("input_ids", ids_gpu)
                .with_host_ids(&ids);
            compare(
                &format!("{name} {component}"),
                r,
                |r| clip_text_model(r, config, &request),
                |r| clip_text_model(r, config, &request),
            );
        });
    }

    // One UNet call with every conditioning its config asks for.
    params(&source, "unet", |p| {
        let config = &files.networks.unet;
        let model = UNet2DConditionModel::load(config, p).expect("load");
        let text_len = files.networks.text_encoder.max_position_embeddings;
        let cross = config.cross_attention_dim_per_block()[0];
        let inputs = UNetSize {
            batch: batch_size,
            height: latent,
            width: latent,
            text_len,
        };
        // The text's keys and values, projected once per generation.
        let projections = context_projections(config, &inputs).expect("walk");
        {
            let mut batch = ctx().batch();
            let r = GpuRecorder::new(&mut batch, model.weights(), "unet", 0).with_input(
                "encoder_hidden_states",
                zeros(&[batch_size, text_len, cross]),
            );
            compare(
                &format!("{name} unet text K/V"),
                r,
                |r| unet_context_projections(r, config, &inputs, &projections),
                |r| unet_context_projections(r, config, &inputs, &projections),
            );
        }

        let mut batch = ctx().batch();
        let groups = config.norm_num_groups.unwrap_or(0);
        let mut r = GpuRecorder::new(&mut batch, model.weights(), "unet", groups)
            .with_input(
                "sample",
                zeros(&[batch_size, config.in_channels, latent, latent]),
            )
            .with_input("timestep", zeros(&[batch_size]));
        for p in &projections {
            r = r.with_input(p.name(), zeros(&[batch_size, text_len, 2 * p.inner]));
        }
        if let Some(dim) = config.time_cond_proj_dim {
            r = r.with_input("timestep_cond", zeros(&[batch_size, dim]));
        }
        if let (Some(total), Some(dim)) = (
            config.projection_class_embeddings_input_dim,
            config.addition_time_embed_dim,
        ) {
            r = r
                .with_input("text_embeds", zeros(&[batch_size, total - 6 * dim]))
                .with_input("time_ids", zeros(&[batch_size, 6]));
        }
        compare(
            &format!("{name} unet"),
            r,
            |r| unet_2d_condition_model(r, config, &inputs).map(drop),
            |r| unet_2d_condition_model(r, config, &inputs).map(drop),
        );
    });

    // The VAE both ways.
    params(&source, "vae", |p| {
        let config = &files.networks.vae;
        let decoder = VaeDecoder::load(config, p).expect("load");
        let latents = zeros(&[1, config.latent_channels, latent, latent]);
        let size = (latent, latent);
        trace_vae(
            &format!("{name} vae decoder"),
            (decoder.weights(), config, ("latents", latents)),
            |r| vae::decoder(r, config, size),
            |r| vae::decoder(r, config, size),
        );
        let encoder = VaeEncoder::load(config, p).expect("load");
        let side = latent * config.scale_factor();
        let image = zeros(&[1, config.in_channels, side, side]);
        trace_vae(
            &format!("{name} vae encoder"),
            (encoder.weights(), config, ("sample", image)),
            |r| vae::encoder(r, config, (side, side)),
            |r| vae::encoder(r, config, (side, side)),
        );
    });
}

/// One VAE half, both ways.
fn trace_vae(
    label: &str,
    (weights, config, (input, t)): (&Weights, &AutoencoderKLConfig, (&'static str, Tensor)),
    gpu_walk: impl FnOnce(&mut GpuRecorder<'_, '_>) -> sd_models::Result<()>,
    cost_walk: impl FnOnce(&mut CostRecorder) -> Result<(), PlanError>,
) {
    let mut batch = ctx().batch();
    let r =
        GpuRecorder::new(&mut batch, weights, "vae", config.norm_num_groups).with_input(input, t);
    compare(label, r, gpu_walk, cost_walk);
}

/// Runs a walk with the GPU recorder `r` (its batch never submitted) and with the cost
/// recorder, and compares what each op issued with what the cost model counts.
fn compare(
    label: &str,
    mut r: GpuRecorder<'_, '_>,
    gpu_walk: impl FnOnce(&mut GpuRecorder<'_, '_>) -> sd_models::Result<()>,
    cost_walk: impl FnOnce(&mut CostRecorder) -> Result<(), PlanError>,
) {
    gpu_walk(&mut r).unwrap_or_else(|e| panic!("{label}: {e}"));
    let mut cost = CostRecorder::default();
    cost_walk(&mut cost).unwrap_or_else(|e| panic!("{label}: {e}"));
    same_trace(label, r.issued(), &cost);
}

#[test]
fn the_gpu_recorder_issues_what_the_cost_model_counts() {
    trace_model("digits", &fixtures().join("tiny-sd-digits"));
    for tiny in ["sd2-v", "turbo", "sdxl", "lcm", "inpaint9"] {
        trace_model(tiny, &fixtures().join("tiny-arch").join(tiny));
    }
}
