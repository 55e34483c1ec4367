//! Rides, as the rules close them: one row per ride, stored once however often the readings
//! that ended it are redelivered.

use anyhow::Context as _;
use tokio_postgres::Transaction;

use crate::domain::Ride;

pub async fn insert(tx: &Transaction<'_>, vehicle_id: i32, r: &Ride) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO rides (vehicle_id, started_at, ended_at, start_lat, start_lon, end_lat, \
         end_lon, distance_km, h2_used_g, ended_in_parking, parking_zone) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (vehicle_id, started_at) DO NOTHING",
        &[
            &vehicle_id,
            &r.started_at,
            &r.ended_at,
            &r.start.map(|p| p.0),
            &r.start.map(|p| p.1),
            &r.end.map(|p| p.0),
            &r.end.map(|p| p.1),
            &r.distance_km,
            &r.h2_used_g,
            &r.ended_in_parking,
            &r.parking_zone,
        ],
    )
    .await
    .context("storing a ride")?;
    Ok(())
}
