//! The HTTP face: health, metrics and the operator API under `/api/v1` (docs/api.md). Every
//! endpoint is declared once in [`routes::OPS`], which the router and `/openapi.json` are both
//! built from.

mod alerts;
mod auth;
mod commands;
mod extract;
mod fleet;
mod history;
pub mod openapi;
mod problem;
pub mod routes;
mod stream;
mod tokens;
mod vehicles;
mod webhooks;
mod zones;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;

pub use auth::{ApiConfig, Caller, Role, TokenConfig, sha256};
pub use commands::Command;
pub use fleet::local_day_start;
pub use problem::Problem;

use crate::health::Health;
use crate::metrics::Metrics;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    /// The API's own connections (bounded wait, statement timeout), apart from ingest's and
    /// the background tasks'.
    pub pool: deadpool_postgres::Pool,
    /// The public GBFS feeds' own connections (same limits), so that anonymous readers cannot
    /// take the operators'.
    pub public_pool: deadpool_postgres::Pool,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub config: Arc<crate::config::Config>,
    /// The rules engine ingest runs (zone changes are checked against it).
    pub rules: Arc<crate::rules::SharedEngine>,
    /// How operators' alert changes reach the webhook outbox and the live feed.
    pub alerts: crate::notify::AlertPublisher,
    /// What just committed, for the event stream.
    pub live: crate::live::Hub,
    /// Tells the zone reload that this instance changed the zones.
    pub zones_changed: Arc<tokio::sync::Notify>,
    /// Ends open event streams so that a graceful shutdown does not wait on them.
    pub shutdown: crate::shutdown::Shutdown,
}

/// The router's own state: what handlers share, plus what the API alone holds.
#[derive(Clone)]
pub(crate) struct Api {
    pub app: AppState,
    pub tokens: Arc<auth::Tokens>,
    pub commands: Arc<commands::Publisher>,
    /// Ids of database tokens deleted by this instance: their open event streams end.
    pub revoked: tokio::sync::broadcast::Sender<i64>,
    /// Event streams open now, in all and per token.
    pub streams: Arc<stream::Streams>,
}

impl FromRef<Api> for AppState {
    fn from_ref(api: &Api) -> AppState {
        api.app.clone()
    }
}

/// The operator API, beside `public`: routes anyone may read (the open-data feeds, the
/// dashboard's files), which get their own connection pool.
pub fn router(state: AppState, public: Router<AppState>) -> Router {
    let body_limit = DefaultBodyLimit::max(state.config.http.max_body_bytes);
    let public = public.with_state(AppState {
        pool: state.public_pool.clone(),
        ..state.clone()
    });
    let api = Api {
        tokens: Arc::new(auth::Tokens::from_config(&state.config.api)),
        commands: Arc::default(),
        revoked: tokio::sync::broadcast::channel(64).0,
        streams: Arc::default(),
        app: state,
    };
    let mut router = Router::new();
    for op in routes::OPS {
        let mut handler = (op.handler)(op.method.filter());
        handler = match op.role {
            None => handler,
            Some(Role::Viewer) => {
                handler.route_layer(from_fn_with_state(api.clone(), auth::viewer))
            }
            Some(Role::Operator) => {
                handler.route_layer(from_fn_with_state(api.clone(), auth::operator))
            }
            Some(Role::Admin) => handler.route_layer(from_fn_with_state(api.clone(), auth::admin)),
        };
        router = router.route(op.path, handler);
    }
    router
        .fallback(|| async { Problem::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "this endpoint does not take that method",
            )
        })
        .with_state(api)
        .merge(public)
        .layer(body_limit)
        .layer(axum::middleware::from_fn(
            extract::refuse_control_characters,
        ))
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi::document())
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
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
