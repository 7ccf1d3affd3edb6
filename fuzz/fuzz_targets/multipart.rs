//! A `POST /v1/images/edits` body (boundary `fuzz-boundary`) through axum's multipart reader
//! and the server's form reader, then the files through the image decoder.
#![no_main]

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use libfuzzer_sys::fuzz_target;
use sd_server::inputs::decode;
use sd_server::routes::read_edit_form;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
}

fuzz_target!(|data: &[u8]| {
    let request = Request::builder()
        .method("POST")
        .uri("/v1/images/edits")
        .header(
            "content-type",
            "multipart/form-data; boundary=fuzz-boundary",
        )
        .body(Body::from(data.to_vec()))
        .expect("a request");
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let Ok(mut multipart) = Multipart::from_request(request, &()).await else {
                return;
            };
            if let Ok(form) = read_edit_form(&mut multipart, 64 << 10).await {
                let _ = decode(form.image, form.mask);
            }
        });
    });
});
