//! Public GBFS v3.0 feeds under `/gbfs/`, without a token (docs/api.md): the fleet as open
//! data for journey planners and the city, with vehicle ids rotated after every ride.

pub mod feeds;
mod rotate;
mod source;
pub mod stations;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;

pub use crate::config::gbfs::GbfsConfig;
pub use rotate::IdRotation;

use crate::api::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new().route("/gbfs/{file}", get(feed))
}

/// The `[gbfs]` settings in force.
fn settings(config: &crate::config::Config) -> &GbfsConfig {
    &config.gbfs
}

/// One rotation for the life of the process: ids must not change between two requests.
fn rotation(c: &GbfsConfig) -> Arc<IdRotation> {
    static RANDOM: OnceLock<Arc<IdRotation>> = OnceLock::new();
    match &c.id_secret {
        Some(s) => Arc::new(IdRotation::new(s.as_bytes())),
        None => RANDOM
            .get_or_init(|| Arc::new(IdRotation::random()))
            .clone(),
    }
}

async fn feed(
    State(s): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let c = settings(&s.config);
    let name = file.strip_suffix(".json").unwrap_or(&file);
    let lang = c.language.as_str();
    let (data, ttl) = match name {
        "gbfs" => (feeds::discovery(&base_url(c, &headers)), 300),
        "system_information" => (feeds::system_information(c), 3600),
        "vehicle_types" => (feeds::vehicle_types(&s.config.profiles, lang), 3600),
        "vehicle_status" | "station_status" => {
            let client = s.pool.get().await?;
            let vehicles = source::vehicles(&client).await.map_err(Problem::internal)?;
            let zones = source::zones(&client).await.map_err(Problem::internal)?;
            let stations = stations::stations(&zones);
            let data = if name == "vehicle_status" {
                feeds::vehicle_status(&vehicles, &stations, &rotation(c))
            } else {
                stations::station_status(&stations, &vehicles, Utc::now())
            };
            (data, 15)
        }
        "station_information" | "geofencing_zones" => {
            let client = s.pool.get().await?;
            let zones = source::zones(&client).await.map_err(Problem::internal)?;
            let data = if name == "station_information" {
                feeds::station_information(&stations::stations(&zones), lang)
            } else {
                feeds::geofencing_zones(&zones, &s.config.profiles, lang)
            };
            (data, 300)
        }
        _ => return Err(Problem::not_found(format!("no GBFS feed `{file}`"))),
    };
    let mut resp = axum::Json(feeds::envelope(data, ttl, Utc::now())).into_response();
    let h = resp.headers_mut();
    // Open data: any web page may read it.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={ttl}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    Ok(resp)
}

/// Where the feeds are, as clients outside see it, ending with `/`.
fn base_url(c: &GbfsConfig, headers: &HeaderMap) -> String {
    if let Some(u) = &c.public_url {
        return format!("{}/", u.trim_end_matches('/'));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ']))
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}/gbfs/")
}
