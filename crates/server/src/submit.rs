//! What every creating route shares, whatever its dialect: the input images decoded (off the
//! async threads), the size defaulted to the input image's, the parameters checked by the
//! shared parser (`sd-core::request`) and the job queued. Each dialect reads its own request
//! into the common keys first and words the [`Refused`] in its own error shape.

use sd_core::request::{Dialect, RequestError, parse_params};
use serde_json::{Map, Value};

use std::sync::Arc;

use axum::body::Body;

use crate::api::JobState;
use crate::inputs::{self, Decoded, Given};
use crate::jobs::{Place, Rejected};
use crate::routes::{AppState, discard_body};
use sd_wgsl::ImageFormat as Format;

/// A job as a dialect read it.
#[derive(Debug)]
pub struct Intake {
    /// The request in the common keys (`prompt`, `negativePrompt`, `steps`, the dialect's
    /// guidance key, `seed`, `sampler`, `width`, `height`, `count`, `strength`).
    pub obj: Map<String, Value>,
    pub dialect: Dialect,
    /// The name of the input image's field in the dialect (for "mask requires ...").
    pub image_field: &'static str,
    /// The input image (img2img, inpainting), under its field's name in the dialect.
    pub image: Option<Given>,
    /// The inpainting mask (needs `image`).
    pub mask: Option<Given>,
    pub format: Format,
    /// The job's id, when the dialect makes its own (else `gen_...`).
    pub id: Option<String>,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The client's mistake, naming the field as [`Intake`] had it.
    Invalid(RequestError),
    /// The queue is full.
    Busy,
    /// The server is shutting down.
    Closed,
    /// The worker cannot run jobs now (it died or lost the GPU and is being re-created): why.
    Unavailable(String),
    /// Our mistake (a decoding thread that panicked).
    Internal(String),
}

/// What a busy or closing server tells every dialect's client.
pub const BUSY_MESSAGE: &str = "the queue is full: try again in a few seconds";
pub const CLOSED_MESSAGE: &str = "the server is shutting down";

/// Input images decoded at once, at most (each decode holds up to a few hundred MB while it
/// runs; the rest wait).
pub const CONCURRENT_DECODES: usize = 2;

impl From<Rejected> for Refused {
    fn from(rejected: Rejected) -> Self {
        match rejected {
            Rejected::Busy => Self::Busy,
            Rejected::Closed => Self::Closed,
            Rejected::Down(reason) => Self::Unavailable(reason),
        }
    }
}

/// Takes a place in the queue for a creating request before its body is read, so that a full
/// queue costs no memory: refused, the body is read on and dropped (as for one over the
/// limit) so that the client reads the answer.
pub async fn reserve(app: &AppState, body: Body) -> Result<(Place, Body), Refused> {
    match app.jobs.reserve() {
        Ok(place) => Ok((place, body)),
        Err(rejected) => {
            discard_body(body, app.max_image_body_bytes).await;
            Err(rejected.into())
        }
    }
}

impl From<RequestError> for Refused {
    fn from(e: RequestError) -> Self {
        Self::Invalid(e)
    }
}

/// Checks and queues a job in its place; its first state.
pub async fn submit(app: &AppState, place: Place, intake: Intake) -> Result<JobState, Refused> {
    let Intake {
        mut obj,
        dialect,
        image_field,
        image,
        mask,
        format,
        id,
    } = intake;
    if let (Some(mask), None) = (&mask, &image) {
        return Err(Refused::Invalid(RequestError {
            field: mask.field.into(),
            message: format!("requires {image_field} (the image to inpaint)"),
        }));
    }
    let (decoded, place) = if image.is_some() {
        let permit = Arc::clone(&app.decodes)
            .acquire_owned()
            .await
            .map_err(|e| Refused::Internal(e.to_string()))?;
        // The permit and the place go with the decode: if the client leaves (the handler is
        // dropped), the decode still runs to its end, and holds both until then.
        let (decoded, place) = tokio::task::spawn_blocking(move || {
            let decoded = inputs::decode(image, mask);
            drop(permit);
            (decoded, place)
        })
        .await
        .map_err(|e| Refused::Internal(e.to_string()))?;
        (decoded?, place)
    } else {
        (Decoded::default(), place)
    };
    // Without a size in the request, an input image gives its own (rounded down to a multiple
    // of 8).
    if let Some(init) = &decoded.init_image {
        for (key, side) in [("width", init.width()), ("height", init.height())] {
            if obj.get(key).is_none_or(Value::is_null) {
                obj.insert(key.into(), Value::from(inputs::default_side(side)));
            }
        }
    }
    let params = parse_params(&obj, &dialect, &app.defaults, rand::random)?;
    let queued = match id {
        Some(id) => app.jobs.submit_as(place, id, params, format, decoded),
        None => app.jobs.submit(place, params, format, decoded),
    };
    queued.map_err(Refused::from)
}
