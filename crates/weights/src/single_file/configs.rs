//! The published configs of each architecture, and what the tensors' shapes say of them.

use super::*;

macro_rules! configs {
    ($dir:literal: $($file:literal),* $(,)?) => {
        [$(($file, include_str!(concat!("../../builtin_configs/", $dir, "/", $file)))),*]
    };
}

pub(super) const SD15: [(&str, &str); 6] = configs!("sd15":
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "vae/config.json",
);

pub(super) const SD21: [(&str, &str); 6] = configs!("sd21":
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "vae/config.json",
);

pub(super) const SDXL: [(&str, &str); 8] = configs!("sdxl":
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer_2/tokenizer_config.json",
    "unet/config.json",
    "vae/config.json",
);

/// One text encoder of a single file.
/// Shape lookups over a component's tensors.
pub(super) type Shapes<'a> = BTreeMap<&'a str, &'a [usize]>;

pub(super) fn dim(shapes: &Shapes<'_>, name: &str, i: usize) -> Option<usize> {
    shapes.get(name).and_then(|s| s.get(i)).copied()
}

pub(super) fn count(shapes: &Shapes<'_>, prefix: &str) -> usize {
    count_indexed(shapes.keys().copied(), prefix)
}

pub(super) fn has_prefix(shapes: &Shapes<'_>, prefix: &str) -> bool {
    shapes.keys().any(|n| n.starts_with(prefix))
}

/// The UNet config values the tensors determine.
pub(super) fn unet_patch(s: &Shapes<'_>, pooled: Option<usize>) -> Value {
    let blocks = count(s, "down_blocks.");
    let mut patch = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        patch.insert(k.to_owned(), v);
    };
    if let Some(n) = dim(s, "conv_in.weight", 1) {
        put("in_channels", json!(n));
    }
    if let Some(n) = dim(s, "conv_out.weight", 0) {
        put("out_channels", json!(n));
    }
    let channels: Vec<usize> = (0..blocks)
        .filter_map(|b| dim(s, &format!("down_blocks.{b}.resnets.0.conv1.weight"), 0))
        .collect();
    if channels.len() == blocks && blocks > 0 {
        put("block_out_channels", json!(channels));
    }
    put(
        "layers_per_block",
        json!(count(s, "down_blocks.0.resnets.")),
    );
    let attn = |side: &str, b: usize| has_prefix(s, &format!("{side}.{b}.attentions."));
    put(
        "down_block_types",
        json!(
            (0..blocks)
                .map(|b| if attn("down_blocks", b) {
                    "CrossAttnDownBlock2D"
                } else {
                    "DownBlock2D"
                })
                .collect::<Vec<_>>()
        ),
    );
    let ups = count(s, "up_blocks.");
    put(
        "up_block_types",
        json!(
            (0..ups)
                .map(|b| if attn("up_blocks", b) {
                    "CrossAttnUpBlock2D"
                } else {
                    "UpBlock2D"
                })
                .collect::<Vec<_>>()
        ),
    );
    let first_attention = s
        .keys()
        .find(|n| n.ends_with("attn2.to_k.weight"))
        .and_then(|n| s.get(n));
    if let Some(shape) = first_attention {
        put("cross_attention_dim", json!(shape.get(1)));
    }
    if let Some(shape) = s
        .iter()
        .find(|(n, _)| n.ends_with("proj_in.weight"))
        .map(|(_, v)| v)
    {
        put("use_linear_projection", json!(shape.len() == 2));
    }
    let depths: Vec<usize> = (0..blocks)
        .map(|b| {
            count(
                s,
                &format!("down_blocks.{b}.attentions.0.transformer_blocks."),
            )
            .max(1)
        })
        .collect();
    if depths.iter().all(|&d| d == 1) {
        put("transformer_layers_per_block", json!(1));
    } else {
        put("transformer_layers_per_block", json!(depths));
    }
    match dim(s, "add_embedding.linear_1.weight", 1) {
        Some(input) => {
            put("addition_embed_type", json!("text_time"));
            put("projection_class_embeddings_input_dim", json!(input));
            // The input is the pooled text embedding and 6 sinusoidal time-id embeddings.
            if let Some(p) = pooled.filter(|&p| input > p && (input - p) % 6 == 0) {
                put("addition_time_embed_dim", json!((input - p) / 6));
            }
        }
        None => put("addition_embed_type", Value::Null),
    }
    Value::Object(patch)
}

/// The VAE config values the tensors determine.
pub(super) fn vae_patch(s: &Shapes<'_>) -> Value {
    let blocks = count(s, "encoder.down_blocks.");
    let mut patch = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        patch.insert(k.to_owned(), v);
    };
    if let Some(n) = dim(s, "encoder.conv_in.weight", 1) {
        put("in_channels", json!(n));
    }
    if let Some(n) = dim(s, "decoder.conv_out.weight", 0) {
        put("out_channels", json!(n));
    }
    if let Some(n) = dim(s, "decoder.conv_in.weight", 1) {
        put("latent_channels", json!(n));
    }
    let channels: Vec<usize> = (0..blocks)
        .filter_map(|b| {
            dim(
                s,
                &format!("encoder.down_blocks.{b}.resnets.0.conv1.weight"),
                0,
            )
        })
        .collect();
    if channels.len() == blocks && blocks > 0 {
        put("block_out_channels", json!(channels));
    }
    put(
        "layers_per_block",
        json!(count(s, "encoder.down_blocks.0.resnets.")),
    );
    put(
        "down_block_types",
        json!(vec!["DownEncoderBlock2D"; blocks]),
    );
    put("up_block_types", json!(vec!["UpDecoderBlock2D"; blocks]));
    Value::Object(patch)
}

/// The text encoder config values the tensors determine.
pub(super) fn text_patch(s: &Shapes<'_>) -> Value {
    let mut patch = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        patch.insert(k.to_owned(), v);
    };
    let token = "text_model.embeddings.token_embedding.weight";
    if let (Some(vocab), Some(hidden)) = (dim(s, token, 0), dim(s, token, 1)) {
        put("vocab_size", json!(vocab));
        put("hidden_size", json!(hidden));
        // CLIP ViT-L, OpenCLIP ViT-H and bigG all use 64-wide heads.
        if hidden % 64 == 0 {
            put("num_attention_heads", json!(hidden / 64));
        }
    }
    if let Some(n) = dim(s, "text_model.embeddings.position_embedding.weight", 0) {
        put("max_position_embeddings", json!(n));
    }
    if let Some(n) = dim(s, "text_model.encoder.layers.0.mlp.fc1.weight", 0) {
        put("intermediate_size", json!(n));
    }
    put(
        "num_hidden_layers",
        json!(count(s, "text_model.encoder.layers.")),
    );
    if let Some(n) = dim(s, "text_projection.weight", 0) {
        put("projection_dim", json!(n));
    }
    Value::Object(patch)
}
