//! `/vehicles`, one vehicle, and `/rejects`.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use super::extract::{P, Q};
use super::{AppState, Problem};
use crate::domain::VehicleKind;
use crate::store::queries::{self, VEHICLE_COLUMNS, VehicleView};

/// A page of a list; `next` is the cursor of the following page, absent on the last one.
#[derive(Serialize)]
pub struct Page<T: Serialize, C: Serialize> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<C>,
}

impl<T: Serialize, C: Serialize> Page<T, C> {
    /// A full page may have a successor: its cursor is taken from the last item.
    pub fn new(items: Vec<T>, limit: i64, cursor: impl FnOnce(&T) -> C) -> Self {
        let next = (items.len() as i64 == limit)
            .then(|| items.last().map(cursor))
            .flatten();
        Page { items, next }
    }
}

pub const MAX_PAGE: i64 = 1000;

pub fn page_limit(limit: Option<i64>, default: i64) -> Result<i64, Problem> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(Problem::bad_request(format!(
            "limit {n} is not in 1..={MAX_PAGE}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    kind: Option<String>,
    status: Option<String>,
    low_h2: Option<bool>,
    bbox: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

/// `minLon,minLat,maxLon,maxLat`, as GeoJSON and OGC APIs write it.
fn parse_bbox(s: &str) -> Result<[f64; 4], Problem> {
    let bad = || {
        Problem::bad_request(format!(
            "bbox `{s}` is not minLon,minLat,maxLon,maxLat in degrees"
        ))
    };
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let [x0, y0, x1, y1]: [f64; 4] = v.try_into().map_err(|_| bad())?;
    let ok = [x0, x1].iter().all(|x| (-180.0..=180.0).contains(x))
        && [y0, y1].iter().all(|y| (-90.0..=90.0).contains(y))
        && x0 <= x1
        && y0 <= y1;
    if !ok {
        return Err(bad());
    }
    Ok([x0, y0, x1, y1])
}

/// The low-hydrogen warning share of each kind, in percent: (bike, bus).
pub(super) fn low_h2_pcts(s: &AppState) -> (f32, f32) {
    let r = &s.config.rules;
    (
        r.thresholds(VehicleKind::Bike).low_h2_warning_pct,
        r.thresholds(VehicleKind::Bus).low_h2_warning_pct,
    )
}

/// The nominal consumption of each kind's profile, km per gram: (bike, bus).
pub(super) fn nominal_km_per_g(s: &AppState) -> (f32, f32) {
    let p = &s.config.profiles;
    (p.bike.km_per_g(), p.bus.km_per_g())
}

/// SQL that is true for a vehicle the low-hydrogen rule measures below warning: the tank share
/// or the share of nominal range left (with the learned, else configured, consumption) below
/// it. `$n`, `$n+1` are the warning shares (bike, bus), `$n+2`, `$n+3` the nominal ratios.
pub(super) fn low_h2_sql(n: usize) -> String {
    let (wb, ws, kb, ks) = (n, n + 1, n + 2, n + 3);
    format!(
        "(h2_g IS NOT NULL AND (h2_g * 100 < tank_g * CASE kind WHEN 'bike' THEN ${wb}::real ELSE ${ws}::real END
          OR h2_g * COALESCE(learned_km_per_g, km_per_g) * 100 < tank_g *
             CASE kind WHEN 'bike' THEN ${wb}::real * ${kb}::real ELSE ${ws}::real * ${ks}::real END))"
    )
}

pub(super) async fn list(
    State(s): State<AppState>,
    Q(p): Q<ListParams>,
) -> Result<impl IntoResponse, Problem> {
    if let Some(k) = &p.kind
        && VehicleKind::parse(k).is_none()
    {
        return Err(Problem::bad_request(format!(
            "kind `{k}` is not bike or bus"
        )));
    }
    let online = match p.status.as_deref() {
        None => None,
        Some("online") => Some(true),
        Some("offline") => Some(false),
        Some(o) => {
            return Err(Problem::bad_request(format!(
                "status `{o}` is not online or offline"
            )));
        }
    };
    let bbox = p.bbox.as_deref().map(parse_bbox).transpose()?;
    let (x0, y0, x1, y1) = match bbox {
        Some([a, b, c, d]) => (Some(a), Some(b), Some(c), Some(d)),
        None => (None, None, None, None),
    };
    let limit = page_limit(p.limit, MAX_PAGE)?;
    let (bike_pct, bus_pct) = low_h2_pcts(&s);
    let (bike_kpg, bus_kpg) = nominal_km_per_g(&s);
    let low = low_h2_sql(5);
    let sql = format!(
        "SELECT {VEHICLE_COLUMNS} FROM vehicles
         WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR code > $2)
           AND ($3::bool IS NULL OR COALESCE(online, false) = $3)
           AND ($4::bool IS NULL OR $4 = {low})
           AND ($9::float8 IS NULL OR (lon BETWEEN $9 AND $11 AND lat BETWEEN $10 AND $12))
         ORDER BY code LIMIT $13"
    );
    let client = s.pool.get().await?;
    let rows = client
        .query(
            &sql,
            &[
                &p.kind, &p.after, &online, &p.low_h2, &bike_pct, &bus_pct, &bike_kpg, &bus_kpg,
                &x0, &y0, &x1, &y1, &limit,
            ],
        )
        .await?;
    let items: Vec<VehicleView> = rows.iter().map(queries::vehicle).collect();
    Ok(Json(Page::new(items, limit, |v| v.id.clone())))
}

pub(super) async fn one(
    State(s): State<AppState>,
    P(id): P<String>,
) -> Result<impl IntoResponse, Problem> {
    let client = s.pool.get().await?;
    match queries::vehicle_by_code(&client, &id).await? {
        Some(v) => Ok(Json(v)),
        None => Err(Problem::not_found(format!("no vehicle `{id}`"))),
    }
}

/// The internal id of a vehicle, or 404.
pub(super) async fn vehicle_key(
    client: &tokio_postgres::Client,
    code: &str,
) -> Result<(i32, VehicleKind), Problem> {
    let row = client
        .query_opt("SELECT id, kind FROM vehicles WHERE code = $1", &[&code])
        .await?
        .ok_or_else(|| Problem::not_found(format!("no vehicle `{code}`")))?;
    let kind = VehicleKind::parse(row.get(1)).unwrap_or(VehicleKind::Bike);
    Ok((row.get(0), kind))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RejectParams {
    reason: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

pub(super) async fn rejects(
    State(s): State<AppState>,
    Q(p): Q<RejectParams>,
) -> Result<impl IntoResponse, Problem> {
    let limit = page_limit(p.limit, 100)?;
    let client = s.pool.get().await?;
    let items = queries::rejects(&client, p.reason.as_deref(), p.before, limit).await?;
    Ok(Json(Page::new(items, limit, |r| r.id)))
}

#[cfg(test)]
mod tests {
    use super::parse_bbox;

    #[test]
    fn bbox_is_lon_lat_ordered_and_checked() {
        assert_eq!(
            parse_bbox("111.7,37.1,111.9,37.2").unwrap(),
            [111.7, 37.1, 111.9, 37.2]
        );
        for bad in ["1,2,3", "a,b,c,d", "111.9,37.1,111.7,37.2", "0,95,1,96"] {
            assert!(parse_bbox(bad).is_err(), "{bad}");
        }
    }
}
