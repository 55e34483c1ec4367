//! The built-in dashboard: one page, its script, style, language catalogue and the vendored
//! Leaflet, compiled into the binary so that `hyfleet` serves it with no other files and no
//! CDN. The only outside requests the page makes are map tiles, from the one tile host the
//! configuration names (`[dashboard]`); without them the fleet still draws on a plain
//! background. The page holds no data of its own; it asks for an API token and reads the
//! operator API like any other client.

pub use crate::config::dashboard::{DashboardConfig, TileCrs, TileLayer, Tiles};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::AppState;

const INDEX_HTML: &str = include_str!("static/index.html");
const DASHBOARD_JS: &str = include_str!("static/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("static/dashboard.css");
const I18N_JS: &str = include_str!("static/i18n.js");
const GCJ02_JS: &str = include_str!("static/gcj02.js");
const LEAFLET_JS: &str = include_str!("static/vendor/leaflet/leaflet.js");
const LEAFLET_CSS: &str = include_str!("static/vendor/leaflet/leaflet.css");

/// Text assets: path, content type, body.
const TEXT: &[(&str, &str, &str)] = &[
    (
        "/dashboard/dashboard.js",
        "text/javascript; charset=utf-8",
        DASHBOARD_JS,
    ),
    (
        "/dashboard/dashboard.css",
        "text/css; charset=utf-8",
        DASHBOARD_CSS,
    ),
    (
        "/dashboard/i18n.js",
        "text/javascript; charset=utf-8",
        I18N_JS,
    ),
    (
        "/dashboard/gcj02.js",
        "text/javascript; charset=utf-8",
        GCJ02_JS,
    ),
    (
        "/dashboard/vendor/leaflet/leaflet.js",
        "text/javascript; charset=utf-8",
        LEAFLET_JS,
    ),
    (
        "/dashboard/vendor/leaflet/leaflet.css",
        "text/css; charset=utf-8",
        LEAFLET_CSS,
    ),
];

/// Leaflet's own images, referred to by its stylesheet.
const IMAGES: &[(&str, &[u8])] = &[
    (
        "/dashboard/vendor/leaflet/images/layers.png",
        include_bytes!("static/vendor/leaflet/images/layers.png"),
    ),
    (
        "/dashboard/vendor/leaflet/images/layers-2x.png",
        include_bytes!("static/vendor/leaflet/images/layers-2x.png"),
    ),
    (
        "/dashboard/vendor/leaflet/images/marker-icon.png",
        include_bytes!("static/vendor/leaflet/images/marker-icon.png"),
    ),
    (
        "/dashboard/vendor/leaflet/images/marker-icon-2x.png",
        include_bytes!("static/vendor/leaflet/images/marker-icon-2x.png"),
    ),
    (
        "/dashboard/vendor/leaflet/images/marker-shadow.png",
        include_bytes!("static/vendor/leaflet/images/marker-shadow.png"),
    ),
];

/// Only this origin, and images from the configured tile host: a page that loads nothing
/// from elsewhere cannot leak the token there. Leaflet positions its panes through the style
/// object (allowed), never through inline `style` attributes.
fn csp(cfg: &DashboardConfig) -> String {
    let tiles = cfg
        .tile_origin()
        .map(|o| format!(" {o}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:{tiles}; \
         connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

pub fn routes() -> Router<AppState> {
    let mut r = Router::new()
        .route(
            "/",
            get(|State(s): State<AppState>| async move {
                asset(&s, "text/html; charset=utf-8", INDEX_HTML)
            }),
        )
        .route(
            "/dashboard/config.json",
            get(|State(s): State<AppState>| async move {
                let body = s.config.dashboard.page_config().to_string();
                asset(&s, "application/json", body)
            }),
        );
    for &(path, content_type, body) in TEXT {
        r = r.route(
            path,
            get(move |State(s): State<AppState>| async move { asset(&s, content_type, body) }),
        );
    }
    for &(path, body) in IMAGES {
        r = r.route(
            path,
            get(move |State(s): State<AppState>| async move { asset(&s, "image/png", body) }),
        );
    }
    r
}

fn asset(s: &AppState, content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&csp(&s.config.dashboard)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The tile host learns that a map is open, not from which page.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
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
        for (path, _, _) in TEXT {
            assert!(INDEX_HTML.contains(path), "{path}");
        }
        for text in [INDEX_HTML, DASHBOARD_JS, DASHBOARD_CSS, I18N_JS, GCJ02_JS] {
            for remote in ["http://", "https://", "//cdn", "@import"] {
                let hits: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(remote) && !l.contains("www.w3.org/2000/svg"))
                    .collect();
                assert!(hits.is_empty(), "remote reference {remote}: {hits:?}");
            }
        }
        // Leaflet's stylesheet loads its images from beside itself.
        for url in LEAFLET_CSS.split("url(").skip(1) {
            let url = url.split(')').next().unwrap();
            assert!(
                url.starts_with("images/") || url.starts_with("#default"),
                "{url}"
            );
            if let Some(name) = url.strip_prefix("images/") {
                assert!(
                    IMAGES.iter().any(|(p, _)| p.ends_with(name)),
                    "{name} not served"
                );
            }
        }
        // The CSP forbids inline style attributes; the page must not need them.
        assert!(!INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("<script>"));
    }

    #[test]
    fn images_are_allowed_from_the_tile_host_alone() {
        let mut c = DashboardConfig::default();
        assert!(csp(&c).contains("img-src 'self' data: https://tile.openstreetmap.org;"));
        c.tiles = Tiles::None;
        assert!(csp(&c).contains("img-src 'self' data:;"));
    }
}
