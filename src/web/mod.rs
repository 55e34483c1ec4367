//! The built-in dashboard: one page and its script and style, compiled into the binary so that
//! `hyfleet` serves it with no other files and no outside assets (no CDN, no map tiles: the map
//! is drawn from the zones). The page holds no data of its own; it asks for an API token and
//! reads the operator API like any other client.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::AppState;

const INDEX_HTML: &str = include_str!("static/index.html");
const DASHBOARD_JS: &str = include_str!("static/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("static/dashboard.css");

/// Only this origin: a page that loads nothing from elsewhere cannot leak the token there.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Small and compiled in: revalidating is cheap, and a new release is seen at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every asset the page refers to is one this module serves, and none is remote.
    #[test]
    fn the_page_refers_only_to_its_own_assets() {
        for needle in ["/dashboard/dashboard.js", "/dashboard/dashboard.css"] {
            assert!(INDEX_HTML.contains(needle), "{needle}");
        }
        for text in [INDEX_HTML, DASHBOARD_JS, DASHBOARD_CSS] {
            for remote in ["http://", "https://", "//cdn", "@import"] {
                let hits: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(remote) && !l.contains("www.w3.org/2000/svg"))
                    .collect();
                assert!(hits.is_empty(), "remote reference {remote}: {hits:?}");
            }
        }
        // The CSP forbids inline style attributes; the page must not need them.
        assert!(!INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("<script>"));
    }
}
