//! `/zones`: GeoJSON in, GeoJSON out. Input is drawn in `geo.zones_crs` (WGS-84 or GCJ-02)
//! and stored in WGS-84; output is always WGS-84. Each change asks the running rules engine to
//! reload the zones from the table (other instances notice within seconds, see `app.rs`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{J, P, Q};
use super::{AppState, Problem};
use crate::geo::{Zone, ZoneKind, parse_feature, parse_zones};
use crate::store::zones::{self, StoredZone};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    kind: Option<ZoneKind>,
}

pub(super) async fn list(
    State(s): State<AppState>,
    Q(p): Q<ListParams>,
) -> Result<impl IntoResponse, Problem> {
    let client = s.pool.get().await?;
    let features: Vec<Value> = zones::all(&client, p.kind)
        .await?
        .iter()
        .map(StoredZone::feature)
        .collect();
    Ok(Json(
        json!({"type": "FeatureCollection", "features": features}),
    ))
}

pub(super) async fn one(
    State(s): State<AppState>,
    P(id): P<String>,
) -> Result<impl IntoResponse, Problem> {
    let client = s.pool.get().await?;
    let zone = zones::get(&client, &id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no zone `{id}`")))?;
    Ok(Json(zone.feature()))
}

fn zone_problem(e: crate::geo::ZoneError) -> Problem {
    Problem::bad_request(format!("not a valid zone: {e}"))
}

/// What the import checks say about new zones: narrow zones, and zones outside the service
/// areas (by about a GCJ-02 offset, or farther), are warnings returned with the result (a
/// GeoJSON foreign member `warnings`) and logged. Unlike `hyfleet zones import`, the API
/// refuses nothing for its place: an operator drawing a new district zone by zone may add
/// its service area last.
fn checked(s: &AppState, zones: &[Zone]) -> Result<Vec<String>, Problem> {
    let known = s.rules.current();
    let mut warnings = match crate::geo::check_place(zones, known.zones().zones(), &s.config.geo) {
        Ok(placed) => placed.warnings,
        Err(far) => vec![far],
    };
    warnings.extend(crate::geo::narrow_zones(
        zones,
        s.config.rules.gps_tolerance_m,
    ));
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(warnings)
}

fn with_warnings(mut body: Value, warnings: Vec<String>) -> Value {
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    body
}

/// A Feature creates one zone, a FeatureCollection several, all or none; an id that exists
/// already is a conflict (replace with PUT).
pub(super) async fn create(
    State(s): State<AppState>,
    J(body): J<Value>,
) -> Result<impl IntoResponse, Problem> {
    let new = parse_zones(&body.to_string(), s.config.geo.zones_crs()).map_err(zone_problem)?;
    if new.is_empty() {
        return Err(Problem::bad_request("the FeatureCollection has no feature"));
    }
    let warnings = checked(&s, &new)?;
    let mut client = s.pool.get().await?;
    let tx = client.transaction().await?;
    if let Err(id) = zones::insert_new(&tx, &new).await? {
        return Err(Problem::conflict(format!(
            "zone `{id}` exists; PUT /api/v1/zones/{id} replaces it"
        )));
    }
    tx.commit().await?;
    s.zones_changed.notify_one();
    let features: Vec<Value> = new.iter().map(Zone::to_feature).collect();
    let out = if features.len() == 1 && body.get("type") == Some(&json!("Feature")) {
        features.into_iter().next().unwrap_or_default()
    } else {
        json!({"type": "FeatureCollection", "features": features})
    };
    Ok((StatusCode::CREATED, Json(with_warnings(out, warnings))))
}

/// Creates or replaces the zone `id`; the feature's own id, if any, must agree.
pub(super) async fn put(
    State(s): State<AppState>,
    P(id): P<String>,
    J(mut body): J<Value>,
) -> Result<impl IntoResponse, Problem> {
    if body.get("type") != Some(&json!("Feature")) {
        return Err(Problem::bad_request("the body must be a GeoJSON Feature"));
    }
    let props = body
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Problem::bad_request("properties: must be an object"))?;
    match props.get("id") {
        None => {
            props.insert("id".into(), Value::String(id.clone()));
        }
        Some(Value::String(own)) if *own == id => {}
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "properties.id {other} differs from the path's `{id}`"
            )));
        }
    }
    let zone = parse_feature(&body, s.config.geo.zones_crs()).map_err(zone_problem)?;
    let warnings = checked(&s, std::slice::from_ref(&zone))?;
    let client = s.pool.get().await?;
    let created = zones::put(&client, &zone).await?;
    s.zones_changed.notify_one();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(with_warnings(zone.to_feature(), warnings))))
}

pub(super) async fn delete(
    State(s): State<AppState>,
    P(id): P<String>,
) -> Result<impl IntoResponse, Problem> {
    let client = s.pool.get().await?;
    if !zones::delete(&client, &id).await? {
        return Err(Problem::not_found(format!("no zone `{id}`")));
    }
    s.zones_changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
