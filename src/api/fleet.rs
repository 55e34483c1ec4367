//! `/fleet/summary` and `/refuel-plan`: what a dispatcher looks at first.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use chrono::{DateTime, FixedOffset, NaiveTime, Utc};
use serde::Serialize;

use super::vehicles::{low_h2_pcts, low_h2_sql, nominal_km_per_g};
use super::{AppState, Problem};
use crate::domain::VehicleKind;
use crate::geo::{Zone, ZoneIndex, ZoneKind};
use crate::rules::hydrogen_level;

/// Xiaoyi's local time (Asia/Shanghai, UTC+8 all year: China has no daylight saving).
fn local_offset() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset")
}

/// The start of the local day that `now` falls in, in UTC.
pub fn local_day_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let local = now.with_timezone(&local_offset());
    local
        .date_naive()
        .and_time(NaiveTime::MIN)
        .and_local_timezone(local_offset())
        .single()
        .expect("a fixed offset maps every local time once")
        .with_timezone(&Utc)
}

#[derive(Serialize, Default)]
pub struct KindSummary {
    pub vehicles: i64,
    pub online: i64,
    /// Online and unlocked (bikes), or online and moving (buses, which have no lock).
    pub riding: i64,
    /// Below the low-hydrogen warning level, measured as the rule measures it (the lower of
    /// the tank share and the share of nominal range left).
    pub low_hydrogen: i64,
}

#[derive(Serialize)]
pub struct Today {
    /// Start of the local (Asia/Shanghai) day, in UTC.
    pub since: DateTime<Utc>,
    /// Rides that ended since then: their distance and hydrogen (a ride in progress counts
    /// once it ends).
    pub rides: i64,
    pub km: f64,
    pub h2_used_g: f64,
}

#[derive(Serialize)]
pub struct Summary {
    pub at: DateTime<Utc>,
    pub total: KindSummary,
    pub by_kind: BTreeMap<&'static str, KindSummary>,
    /// Alerts open or acknowledged, per rule.
    pub open_alerts: BTreeMap<String, i64>,
    pub today: Today,
}

pub(super) async fn summary(State(s): State<AppState>) -> Result<impl IntoResponse, Problem> {
    let (bike_pct, bus_pct) = low_h2_pcts(&s);
    let (bike_kpg, bus_kpg) = nominal_km_per_g(&s);
    let now = Utc::now();
    let since = local_day_start(now);
    let client = s.pool.get().await?;
    let sql = format!(
        "SELECT kind, count(*),
                count(*) FILTER (WHERE online),
                count(*) FILTER (WHERE online AND (locked = false
                                 OR (locked IS NULL AND speed_kmh > 1))),
                count(*) FILTER (WHERE {})
         FROM vehicles GROUP BY kind",
        low_h2_sql(1)
    );
    let rows = client
        .query(&sql, &[&bike_pct, &bus_pct, &bike_kpg, &bus_kpg])
        .await?;
    let mut total = KindSummary::default();
    let mut by_kind = BTreeMap::new();
    for k in VehicleKind::ALL {
        by_kind.insert(k.as_str(), KindSummary::default());
    }
    for r in &rows {
        let Some(kind) = VehicleKind::parse(r.get(0)) else {
            continue;
        };
        let k = KindSummary {
            vehicles: r.get(1),
            online: r.get(2),
            riding: r.get(3),
            low_hydrogen: r.get(4),
        };
        total.vehicles += k.vehicles;
        total.online += k.online;
        total.riding += k.riding;
        total.low_hydrogen += k.low_hydrogen;
        by_kind.insert(kind.as_str(), k);
    }
    let open_alerts = client
        .query(
            "SELECT rule, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY rule",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let t = client
        .query_one(
            "SELECT count(*), COALESCE(sum(distance_km), 0)::float8,
                    COALESCE(sum(h2_used_g), 0)::float4
             FROM rides WHERE ended_at >= $1 AND ended_at <= $2",
            &[&since, &now],
        )
        .await?;
    Ok(Json(Summary {
        at: now,
        total,
        by_kind,
        open_alerts,
        today: Today {
            since,
            rides: t.get(0),
            km: t.get(1),
            h2_used_g: crate::domain::as_sent(t.get(2)),
        },
    }))
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Urgency {
    /// Below the critical share: first.
    Critical,
    Warning,
}

#[derive(Serialize, Debug)]
pub struct RefuelStop {
    pub vehicle_id: String,
    pub kind: VehicleKind,
    pub urgency: Urgency,
    pub h2_g: f32,
    pub h2_percent: f32,
    /// Predicted range with the vehicle's consumption (learned, else configured).
    pub range_km: Option<f32>,
    /// The lower of the tank share and the share of nominal range left, percent: what the
    /// low-hydrogen rule compares with its thresholds.
    pub level_percent: f32,
    pub online: Option<bool>,
    pub lat: f64,
    pub lon: f64,
    /// The nearest refuelling station that serves the vehicle's kind, absent when none does.
    pub station_id: Option<String>,
    pub station_name: Option<String>,
    /// Straight-line distance to it, metres (0 inside it).
    pub distance_m: Option<f64>,
    /// Whether the predicted range covers the way there, taken as the straight line times
    /// [`ROAD_FACTOR`]; absent when there is no station.
    pub reaches_station: Option<bool>,
}

/// Roads are longer than the straight line: typical circuity of urban and intercity road
/// networks is 1.2–1.4, and a plan that errs should send a vehicle early, not strand it.
pub const ROAD_FACTOR: f64 = 1.4;

#[derive(Serialize)]
pub struct RefuelPlan {
    pub at: DateTime<Utc>,
    pub items: Vec<RefuelStop>,
}

/// Whether a station zone serves vehicles of `kind`: `properties.kinds` lists them, absent
/// (or empty) meaning every kind.
pub fn serves(zone: &Zone, kind: VehicleKind) -> bool {
    match zone.properties.get("kinds").and_then(|k| k.as_array()) {
        Some(kinds) if !kinds.is_empty() => kinds.iter().any(|k| k.as_str() == Some(kind.as_str())),
        _ => true,
    }
}

/// The nearest station serving `kind`, and the distance to it in metres (0 inside).
pub fn nearest_station_for(
    zones: &ZoneIndex,
    kind: VehicleKind,
    lat: f64,
    lon: f64,
) -> Option<(&Zone, f64)> {
    zones
        .zones()
        .iter()
        .filter(|z| z.kind == ZoneKind::Station && serves(z, kind))
        .map(|z| (z, z.signed_distance_m(lat, lon).max(0.0)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// Vehicles below their kind's low-hydrogen warning level (measured as the rule measures it),
/// the most urgent first and, within one urgency, the nearest to a station first (the
/// quickest to bring back to service).
pub(super) async fn refuel_plan(State(s): State<AppState>) -> Result<impl IntoResponse, Problem> {
    let (bike_pct, bus_pct) = low_h2_pcts(&s);
    let (bike_kpg, bus_kpg) = nominal_km_per_g(&s);
    let nominal = |k: VehicleKind| s.config.profiles.get(k).km_per_g();
    let client = s.pool.get().await?;
    // A first cut in SQL, the exact measure (and the thresholds' own rounding) below.
    let sql = format!(
        "SELECT code, kind, h2_g, tank_g, COALESCE(learned_km_per_g, km_per_g), online, lat, lon
         FROM vehicles
         WHERE lat IS NOT NULL AND lon IS NOT NULL AND tank_g > 0 AND {}",
        low_h2_sql(1)
    );
    let rows = client
        .query(&sql, &[&bike_pct, &bus_pct, &bike_kpg, &bus_kpg])
        .await?;
    let zones = crate::store::zones::load(&client).await?;
    let mut items: Vec<RefuelStop> = rows
        .iter()
        .filter_map(|r| {
            let kind = VehicleKind::parse(r.get(1))?;
            let (h2_g, tank_g, km_per_g): (f32, f32, f32) = (r.get(2), r.get(3), r.get(4));
            let t = s.config.rules.thresholds(kind);
            let level = hydrogen_level(h2_g, tank_g, km_per_g, nominal(kind));
            if level.level >= t.low_h2_warning_pct {
                return None;
            }
            let (lat, lon): (f64, f64) = (r.get(6), r.get(7));
            let station = nearest_station_for(&zones, kind, lat, lon);
            let range_km = f64::from(level.range_km);
            Some(RefuelStop {
                vehicle_id: r.get(0),
                kind,
                urgency: if level.level < t.low_h2_critical_pct {
                    Urgency::Critical
                } else {
                    Urgency::Warning
                },
                h2_g,
                h2_percent: round1(level.pct),
                range_km: Some(round1(level.range_km)),
                level_percent: round1(level.level),
                online: r.get(5),
                lat,
                lon,
                station_id: station.map(|(z, _)| z.id.clone()),
                station_name: station.map(|(z, _)| z.name.clone()),
                distance_m: station.map(|(_, d)| (d * 10.0).round() / 10.0),
                reaches_station: station.map(|(_, d)| range_km * 1000.0 >= d * ROAD_FACTOR),
            })
        })
        .collect();
    items.sort_by(|a, b| {
        a.urgency
            .cmp(&b.urgency)
            .then(
                a.distance_m
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.distance_m.unwrap_or(f64::INFINITY)),
            )
            .then_with(|| a.vehicle_id.cmp(&b.vehicle_id))
    });
    Ok(Json(RefuelPlan {
        at: Utc::now(),
        items,
    }))
}

fn round1(x: f32) -> f32 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_day_starts_at_16_utc() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            local_day_start(t("2025-05-01T15:59:59Z")),
            t("2025-04-30T16:00:00Z")
        );
        assert_eq!(
            local_day_start(t("2025-05-01T16:00:00Z")),
            t("2025-05-01T16:00:00Z")
        );
        assert_eq!(
            local_day_start(t("2025-05-01T03:00:00Z")),
            t("2025-04-30T16:00:00Z")
        );
    }
}
