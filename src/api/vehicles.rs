//! `/vehicles` and a vehicle's telemetry.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, response::IntoResponse};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::{AppState, Problem};
use serde::Serialize;

/// A page of a list; `next` is the cursor of the following page, absent on the last one.
#[derive(Serialize)]
pub struct Page<T: Serialize, C: Serialize> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<C>,
}
use crate::store::queries::{self, VehicleFilter};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/vehicles", get(list))
        .route("/vehicles/{id}", get(one))
        .route("/vehicles/{id}/telemetry", get(telemetry))
        .route("/rejects", get(rejects))
}

const MAX_PAGE: i64 = 1000;

#[derive(Deserialize)]
struct ListParams {
    kind: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

fn page_limit(limit: Option<i64>, default: i64) -> Result<i64, Problem> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(Problem::bad_request(format!(
            "limit {n} is not in 1..={MAX_PAGE}"
        ))),
    }
}

async fn list(
    State(s): State<AppState>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    let Query(p) = params.map_err(|e| Problem::bad_request(e.body_text()))?;
    if let Some(k) = &p.kind
        && crate::domain::VehicleKind::parse(k).is_none()
    {
        return Err(Problem::bad_request(format!(
            "kind `{k}` is not bike or bus"
        )));
    }
    let limit = page_limit(p.limit, MAX_PAGE)?;
    let client = s.pool.get().await?;
    let items = queries::vehicles(
        &client,
        &VehicleFilter {
            kind: p.kind,
            after: p.after,
            limit,
        },
    )
    .await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|v| v.id.clone()))
        .flatten();
    Ok(Json(Page { items, next }))
}

async fn one(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    let client = s.pool.get().await?;
    match queries::vehicle_by_code(&client, &id).await? {
        Some(v) => Ok(Json(v)),
        None => Err(Problem::not_found(format!("no vehicle `{id}`"))),
    }
}

#[derive(Deserialize)]
struct RangeParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
}

fn time_param(
    name: &str,
    v: Option<&str>,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, Problem> {
    match v {
        None => Ok(default),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                Problem::bad_request(format!("`{name}`: `{s}` is not an RFC 3339 time ({e})"))
            }),
    }
}

async fn telemetry(
    State(s): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<RangeParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    let Query(p) = params.map_err(|e| Problem::bad_request(e.body_text()))?;
    let now = Utc::now();
    let to = time_param("to", p.to.as_deref(), now + Duration::minutes(5))?;
    let from = time_param("from", p.from.as_deref(), to - Duration::hours(1))?;
    if from >= to {
        return Err(Problem::bad_request("`from` must be before `to`"));
    }
    let limit = page_limit(p.limit, MAX_PAGE)?;
    let client = s.pool.get().await?;
    if queries::vehicle_by_code(&client, &id).await?.is_none() {
        return Err(Problem::not_found(format!("no vehicle `{id}`")));
    }
    let items = queries::telemetry(&client, &id, from, to, limit).await?;
    // The next page starts just after the last reading of this one.
    let next = (items.len() as i64 == limit)
        .then(|| {
            items
                .last()
                .map(|p| p.ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        })
        .flatten();
    Ok(Json(Page { items, next }))
}

#[derive(Deserialize)]
struct RejectParams {
    reason: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

async fn rejects(
    State(s): State<AppState>,
    params: Result<Query<RejectParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    let Query(p) = params.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = page_limit(p.limit, 100)?;
    let client = s.pool.get().await?;
    let items = queries::rejects(&client, p.reason.as_deref(), p.before, limit).await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|r| r.id))
        .flatten();
    Ok(Json(Page { items, next }))
}
