//! What the feeds read from the store.

use anyhow::Context as _;
use tokio_postgres::Client;

use super::feeds::{VehicleRow, ZoneRow};
use crate::domain::VehicleKind;

/// Rules whose open alert makes a vehicle unfit to ride.
const SAFETY_RULES: [&str; 2] = ["tank_fault", "h2_leak_suspected"];

pub async fn vehicles(client: &Client) -> anyhow::Result<Vec<VehicleRow>> {
    let rules: Vec<String> = SAFETY_RULES.iter().map(|s| s.to_string()).collect();
    let rows = client
        .query(
            "SELECT v.code, v.kind, v.lat, v.lon, v.h2_g, v.tank_g, v.range_km, v.km_per_g, \
                    v.locked, v.online, v.last_ts, \
                    (SELECT max(r.ended_at) FROM rides r WHERE r.vehicle_id = v.id), \
                    EXISTS (SELECT 1 FROM alerts a WHERE a.vehicle_id = v.id \
                            AND a.state <> 'resolved' AND a.rule = ANY($1)) \
             FROM vehicles v WHERE v.lat IS NOT NULL AND v.lon IS NOT NULL ORDER BY v.id",
            &[&rules],
        )
        .await
        .context("reading vehicles for GBFS")?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(VehicleRow {
                code: r.get(0),
                kind: VehicleKind::parse(r.get(1))?,
                lat: r.get(2),
                lon: r.get(3),
                h2_g: r.get(4),
                tank_g: r.get(5),
                range_km: r.get(6),
                km_per_g: r.get(7),
                locked: r.get(8),
                online: r.get(9),
                last_ts: r.get(10),
                last_ride_end: r.get(11),
                safety_alert: r.get(12),
            })
        })
        .collect())
}

pub async fn zones(client: &Client) -> anyhow::Result<Vec<ZoneRow>> {
    crate::store::zones::all(client, None)
        .await
        .context("reading zones for GBFS")
}
