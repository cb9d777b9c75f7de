//! The console's stylesheet and script, compiled into the binary (no CDN, no web
//! font: the console works on a network with no way out).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// Where pages link them; the version busts caches across upgrades.
pub const CSS_PATH: &str = concat!("/console/assets/console.css?v=", env!("CARGO_PKG_VERSION"));
pub const JS_PATH: &str = concat!("/console/assets/console.js?v=", env!("CARGO_PKG_VERSION"));

pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}
