//! The HTTP face: health, metrics and the operator API under `/api/v1`.

mod problem;
mod vehicles;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

pub use problem::Problem;

use crate::health::Health;
use crate::metrics::Metrics;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub pool: deadpool_postgres::Pool,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub live: crate::live::Hub,
    pub config: Arc<crate::config::Config>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", vehicles::routes())
        .merge(crate::gbfs::routes())
        .merge(crate::web::routes())
        .fallback(|| async { Problem::not_found("no such endpoint") })
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when subscribed to the broker and the store takes writes; 503 with the reason
/// otherwise, so that a load balancer and the person on call see the same truth.
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let db = match tokio::time::timeout(std::time::Duration::from_secs(2), s.pool.get()).await {
        Ok(Ok(c)) => c.simple_query("SELECT 1").await.is_ok(),
        _ => false,
    };
    let body = serde_json::json!({
        "mqtt": s.health.mqtt(),
        "database": db,
        "ingest_writing": s.health.store(),
    });
    let ready = s.health.mqtt() && db && s.health.store();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
