//! The console's static files, embedded in the binary (assets/README.md says where each comes
//! from). Pages load scripts with Subresource Integrity: the SHA-384 of the bytes served.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// htmx, as published on npm (`htmx.org`), unmodified.
pub const HTMX: &str = "htmx-2.0.11.min.js";

const FILES: &[(&str, &str, &[u8])] = &[
    (
        HTMX,
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/htmx-2.0.11.min.js"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/console.css"),
    ),
];

fn file(name: &str) -> Option<&'static (&'static str, &'static str, &'static [u8])> {
    FILES.iter().find(|(n, _, _)| *n == name)
}

/// `sha384-…` of an embedded file, for its `integrity` attribute.
pub fn integrity(name: &str) -> String {
    static CACHE: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        FILES
            .iter()
            .map(|(n, _, bytes)| {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, bytes);
                (
                    *n,
                    format!(
                        "sha384-{}",
                        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
                    ),
                )
            })
            .collect()
    });
    all.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, i)| i.clone())
        .unwrap_or_default()
}

pub async fn serve(Path(name): Path<String>) -> Response {
    match file(&name) {
        Some((_, content_type, bytes)) => {
            let mut resp = (StatusCode::OK, *bytes).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            // The names of the files change with their content (htmx's carries its version);
            // the console's own are small.
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            resp
        }
        None => super::pages::not_found().await,
    }
}
