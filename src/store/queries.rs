//! Reads for the API, each one statement with parameters.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;

/// A vehicle and its latest state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VehicleView {
    pub id: String,
    pub kind: String,
    pub registered_at: DateTime<Utc>,
    pub online: Option<bool>,
    pub last_seen: Option<DateTime<Utc>>,
    pub last_ts: Option<DateTime<Utc>>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub speed_kmh: Option<f32>,
    pub heading_deg: Option<f32>,
    pub h2_g: Option<f32>,
    pub h2_percent: Option<f32>,
    pub range_km: Option<f32>,
    pub locked: Option<bool>,
    pub odo_km: Option<f64>,
    pub tank_g: f32,
    /// Configured: the profile's at registration, or what an operator set.
    pub km_per_g: f32,
    /// When `lat`/`lon` were measured: older than `last_ts` when the newest readings had no
    /// usable fix.
    pub last_fix: Option<DateTime<Utc>>,
    /// Learned between refuels, once there is enough distance to trust it.
    pub learned_km_per_g: Option<f32>,
    /// Percent of the last 24 h's numbered readings that arrived (`telemetry_gap`); null
    /// when none carried a `seq`.
    pub completeness_24h: Option<f64>,
}

pub const VEHICLE_COLUMNS: &str = "code, kind, registered_at, online, last_seen, last_ts, lat, lon,
    speed_kmh, heading_deg, h2_g, range_km, locked, odo_km, tank_g, km_per_g, last_fix,
    learned_km_per_g,
    (SELECT round(100.0 * sum(c.received) / nullif(sum(c.received) + sum(c.missing), 0), 1)::float8
       FROM telemetry_completeness c
      WHERE c.vehicle = vehicles.id AND c.hour > now() - interval '24 hours')";

pub fn vehicle(row: &Row) -> VehicleView {
    let h2_g: Option<f32> = row.get(10);
    let tank_g: f32 = row.get(14);
    VehicleView {
        id: row.get(0),
        kind: row.get(1),
        registered_at: row.get(2),
        online: row.get(3),
        last_seen: row.get(4),
        last_ts: row.get(5),
        lat: row.get(6),
        lon: row.get(7),
        speed_kmh: row.get(8),
        heading_deg: row.get(9),
        h2_g,
        h2_percent: h2_g.map(|g| (g / tank_g * 1000.0).round() / 10.0),
        range_km: row.get(11),
        locked: row.get(12),
        odo_km: row.get(13),
        tank_g,
        km_per_g: row.get(15),
        last_fix: row.get(16),
        learned_km_per_g: row.get(17),
        completeness_24h: row.get(18),
    }
}

pub async fn vehicle_by_code(
    client: &tokio_postgres::Client,
    code: &str,
) -> Result<Option<VehicleView>, tokio_postgres::Error> {
    let sql = format!("SELECT {VEHICLE_COLUMNS} FROM vehicles WHERE code = $1");
    Ok(client
        .query_opt(&sql, &[&code])
        .await?
        .as_ref()
        .map(vehicle))
}

/// One stored reading as the API returns it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TelemetryPoint {
    pub ts: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f32,
    pub h2_g: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hdop: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heading_deg: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_pressure_bar: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tank_temp_c: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fc_power_w: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fc_temp_c: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batt_v: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub odo_km: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

/// The columns [`telemetry_point`] reads, in its order.
pub const TELEMETRY_COLUMNS: &str = "ts, seq, lat, lon, speed_kmh, h2_g, hdop, heading_deg, \
     h2_pressure_bar, tank_temp_c, fc_power_w, fc_temp_c, batt_v, odo_km, locked, faults, extra";

/// A row of `SELECT {TELEMETRY_COLUMNS} FROM telemetry`.
pub fn telemetry_point(r: &Row) -> TelemetryPoint {
    TelemetryPoint {
        ts: r.get(0),
        seq: r.get(1),
        lat: r.get(2),
        lon: r.get(3),
        speed_kmh: r.get(4),
        h2_g: r.get(5),
        hdop: r.get(6),
        heading_deg: r.get(7),
        h2_pressure_bar: r.get(8),
        tank_temp_c: r.get(9),
        fc_power_w: r.get(10),
        fc_temp_c: r.get(11),
        batt_v: r.get(12),
        odo_km: r.get(13),
        locked: r.get(14),
        faults: r.get::<_, Option<Vec<String>>>(15).unwrap_or_default(),
        extra: r.get(16),
    }
}

/// A stored reject as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RejectView {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub topic: String,
    pub vehicle: Option<String>,
    pub reason: String,
    pub detail: String,
    /// The kept payload as text when it is UTF-8, otherwise base64.
    pub payload: String,
    pub payload_encoding: &'static str,
}

pub async fn rejects(
    client: &tokio_postgres::Client,
    reason: Option<&str>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<RejectView>, tokio_postgres::Error> {
    use base64::Engine as _;
    let rows = client
        .query(
            "SELECT id, received_at, topic, vehicle, reason, detail, payload FROM rejects
             WHERE ($1::text IS NULL OR reason = $1) AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
            &[&reason, &before_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let payload: Vec<u8> = r.get(6);
            let (payload, payload_encoding) = match String::from_utf8(payload) {
                Ok(s) => (s, "utf-8"),
                Err(e) => (
                    base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                    "base64",
                ),
            };
            RejectView {
                id: r.get(0),
                received_at: r.get(1),
                topic: r.get(2),
                vehicle: r.get(3),
                reason: r.get(4),
                detail: r.get(5),
                payload,
                payload_encoding,
            }
        })
        .collect())
}
