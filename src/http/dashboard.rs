//! The dashboard: static files compiled into the binary (no CDN, no build step). The page talks
//! to the same JSON API and SSE stream as any other client.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

macro_rules! asset {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $path))
    };
}

/// `(url path, content type, bytes)` of every file the page loads.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("/assets/app.js", "text/javascript; charset=utf-8", asset!("app.js")),
    ("/assets/app.css", "text/css; charset=utf-8", asset!("app.css")),
    ("/assets/vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8", asset!("vendor/uPlot.iife.min.js")),
    ("/assets/vendor/uPlot.min.css", "text/css; charset=utf-8", asset!("vendor/uPlot.min.css")),
    ("/assets/vendor/uPlot.LICENSE", "text/plain; charset=utf-8", asset!("vendor/uPlot.LICENSE")),
];

const INDEX: &[u8] = asset!("index.html");

pub fn routes() -> Router<AppState> {
    let mut router = Router::new().route("/", get(get_dashboard));
    for (path, content_type, bytes) in ASSETS {
        router = router.route(path, get(move || async move { file(content_type, bytes) }));
    }
    router
}

/// The page's shell; jobs and datasets are fetched by the script.
pub async fn get_dashboard() -> impl IntoResponse {
    file("text/html; charset=utf-8", INDEX)
}

fn file(content_type: &'static str, bytes: &'static [u8]) -> impl IntoResponse {
    // The files change only with the binary; `no-cache` revalidates so an upgrade is seen.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], bytes)
}
