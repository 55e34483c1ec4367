//! `/fleet/summary` and `/refuel-plan`: what a dispatcher looks at first.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use chrono::{DateTime, FixedOffset, NaiveTime, Utc};
use serde::Serialize;

use super::vehicles::low_h2_pcts;
use super::{AppState, Problem};
use crate::domain::VehicleKind;

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
    /// Below the low-hydrogen warning share of the tank.
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
    let now = Utc::now();
    let since = local_day_start(now);
    let client = s.pool.get().await?;
    let rows = client
        .query(
            "SELECT kind, count(*),
                    count(*) FILTER (WHERE online),
                    count(*) FILTER (WHERE online AND (locked = false
                                     OR (locked IS NULL AND speed_kmh > 1))),
                    count(*) FILTER (WHERE h2_g * 100 <
                                     tank_g * CASE kind WHEN 'bike' THEN $1::real ELSE $2::real END)
             FROM vehicles GROUP BY kind",
            &[&bike_pct, &bus_pct],
        )
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
                    COALESCE(sum(h2_used_g), 0)::float8
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
            h2_used_g: t.get(2),
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
    pub range_km: Option<f32>,
    pub online: Option<bool>,
    pub lat: f64,
    pub lon: f64,
    /// The nearest refuelling station, absent when no station zone is defined.
    pub station_id: Option<String>,
    pub station_name: Option<String>,
    /// Straight-line distance to it, metres (0 inside it).
    pub distance_m: Option<f64>,
}

#[derive(Serialize)]
pub struct RefuelPlan {
    pub at: DateTime<Utc>,
    pub items: Vec<RefuelStop>,
}

/// Vehicles below their kind's low-hydrogen warning share, the most urgent first and, within
/// one urgency, the nearest to a station first (the quickest to bring back to service).
pub(super) async fn refuel_plan(State(s): State<AppState>) -> Result<impl IntoResponse, Problem> {
    let (bike_pct, bus_pct) = low_h2_pcts(&s);
    let client = s.pool.get().await?;
    let rows = client
        .query(
            "SELECT code, kind, h2_g, tank_g, range_km, online, lat, lon FROM vehicles
             WHERE h2_g IS NOT NULL AND lat IS NOT NULL AND lon IS NOT NULL
               AND h2_g * 100 < tank_g * CASE kind WHEN 'bike' THEN $1::real ELSE $2::real END",
            &[&bike_pct, &bus_pct],
        )
        .await?;
    let zones = crate::rules::store::load_zones(&client).await?;
    let mut items: Vec<RefuelStop> = rows
        .iter()
        .filter_map(|r| {
            let kind = VehicleKind::parse(r.get(1))?;
            let (h2_g, tank_g): (f32, f32) = (r.get(2), r.get(3));
            let pct = h2_g / tank_g * 100.0;
            let critical = s.config.rules.thresholds(kind).low_h2_critical_pct;
            let (lat, lon): (f64, f64) = (r.get(6), r.get(7));
            let station = zones.nearest_station(lat, lon);
            Some(RefuelStop {
                vehicle_id: r.get(0),
                kind,
                urgency: if pct < critical {
                    Urgency::Critical
                } else {
                    Urgency::Warning
                },
                h2_g,
                h2_percent: (pct * 10.0).round() / 10.0,
                range_km: r.get(4),
                online: r.get(5),
                lat,
                lon,
                station_id: station.map(|(z, _)| z.id.clone()),
                station_name: station.map(|(z, _)| z.name.clone()),
                distance_m: station.map(|(_, d)| (d.max(0.0) * 10.0).round() / 10.0),
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
