//! `/zones`: GeoJSON in, GeoJSON out. Input is drawn in `geo.zones_crs` (WGS-84 or GCJ-02)
//! and stored in WGS-84; output is always WGS-84. Each change asks the running rules engine to
//! reload the zones from the table (other instances notice within seconds, see `app.rs`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::Row;

use super::extract::{J, P, Q};
use super::{AppState, Problem};
use crate::geo::{Zone, ZoneKind, parse_feature, parse_zones};

fn feature(row: &Row) -> Value {
    let id: String = row.get(0);
    let mut props: Value = row.get(3);
    if let Some(p) = props.as_object_mut() {
        p.insert("id".into(), Value::String(id.clone()));
        p.insert("name".into(), Value::String(row.get(1)));
        p.insert("kind".into(), Value::String(row.get(2)));
    }
    json!({
        "type": "Feature",
        "id": id,
        "properties": props,
        "geometry": row.get::<_, Value>(4),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    kind: Option<String>,
}

pub(super) async fn list(
    State(s): State<AppState>,
    Q(p): Q<ListParams>,
) -> Result<impl IntoResponse, Problem> {
    if let Some(k) = &p.kind
        && ZoneKind::parse(k).is_none()
    {
        return Err(Problem::bad_request(format!(
            "kind `{k}` is not parking, no_parking, service_area, slow or station"
        )));
    }
    let client = s.pool.get().await?;
    let rows = client
        .query(
            "SELECT id, name, kind, properties, geometry FROM zones
             WHERE ($1::text IS NULL OR kind = $1) ORDER BY id",
            &[&p.kind],
        )
        .await?;
    let features: Vec<Value> = rows.iter().map(feature).collect();
    Ok(Json(
        json!({"type": "FeatureCollection", "features": features}),
    ))
}

pub(super) async fn one(
    State(s): State<AppState>,
    P(id): P<String>,
) -> Result<impl IntoResponse, Problem> {
    let client = s.pool.get().await?;
    let row = client
        .query_opt(
            "SELECT id, name, kind, properties, geometry FROM zones WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| Problem::not_found(format!("no zone `{id}`")))?;
    Ok(Json(feature(&row)))
}

fn columns(z: &Zone) -> (String, String, &'static str, Value, Value) {
    (
        z.id.clone(),
        z.name.clone(),
        z.kind.as_str(),
        Value::Object(z.properties.clone()),
        z.geometry_geojson(),
    )
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
    let zones = parse_zones(&body.to_string(), s.config.geo.zones_crs()).map_err(zone_problem)?;
    if zones.is_empty() {
        return Err(Problem::bad_request("the FeatureCollection has no feature"));
    }
    let warnings = checked(&s, &zones)?;
    let mut client = s.pool.get().await?;
    let tx = client.transaction().await?;
    for z in &zones {
        let (id, name, kind, props, geom) = columns(z);
        let n = tx
            .execute(
                "INSERT INTO zones (id, name, kind, properties, geometry)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[&id, &name, &kind, &props, &geom],
            )
            .await?;
        if n == 0 {
            return Err(Problem::conflict(format!(
                "zone `{id}` exists; PUT /api/v1/zones/{id} replaces it"
            )));
        }
    }
    tx.commit().await?;
    s.zones_changed.notify_one();
    let features: Vec<Value> = zones.iter().map(Zone::to_feature).collect();
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
    let (id, name, kind, props, geom) = columns(&zone);
    let client = s.pool.get().await?;
    let created: bool = client
        .query_one(
            "INSERT INTO zones (id, name, kind, properties, geometry) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,
                 properties = EXCLUDED.properties, geometry = EXCLUDED.geometry, updated_at = now()
             RETURNING (xmax = 0)",
            &[&id, &name, &kind, &props, &geom],
        )
        .await?
        .get(0);
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
    let n = client
        .execute("DELETE FROM zones WHERE id = $1", &[&id])
        .await?;
    if n == 0 {
        return Err(Problem::not_found(format!("no zone `{id}`")));
    }
    s.zones_changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
