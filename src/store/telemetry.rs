//! The telemetry repository: each reading is stored once, and only the new ones go on to the
//! rules. Most batches hold only new readings: they go by binary COPY straight into
//! `telemetry` ([`copy_new`]). A batch with a reading stored before (a redelivery, a resent
//! backlog, the same reading twice) goes the careful way: binary COPY into a per-connection
//! staging table ([`copy`]), then into `telemetry` with duplicates skipped ([`move_in`]).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures_util::SinkExt as _;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use super::copy::CopyBuf;
use crate::domain::Reading;

/// Created once per connection; emptied by every commit.
const STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS telemetry_in
    (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DELETE ROWS";

const COPY_IN: &str =
    "COPY telemetry_in (ts, seq, lat, lon, odo_km, vehicle, speed_kmh, h2_g, hdop,
    heading_deg, h2_pressure_bar, tank_temp_c, fc_power_w, fc_temp_c, batt_v, locked, faults, extra)
    FROM STDIN BINARY";

const COPY_DIRECT: &str =
    "COPY telemetry (ts, seq, lat, lon, odo_km, vehicle, speed_kmh, h2_g, hdop,
    heading_deg, h2_pressure_bar, tank_temp_c, fc_power_w, fc_temp_c, batt_v, locked, faults, extra)
    FROM STDIN BINARY";
const COLUMNS: i16 = 18;

/// A reading older than `$1` (`partitions::unpacked_from`) may be in a pack already, where
/// the unique constraint cannot see it: it is looked for there first.
const MOVE_IN: &str = "INSERT INTO telemetry SELECT * FROM telemetry_in t
    WHERE t.ts >= $1 OR NOT EXISTS (
        SELECT 1 FROM telemetry_packed p, unnest(p.ts, p.seq) AS u(ts, seq)
        WHERE p.vehicle = t.vehicle
          AND p.hour = date_bin('1 hour', t.ts, timestamptz '2000-01-01T00:00:00Z')
          AND u.ts = t.ts AND u.seq IS NOT DISTINCT FROM t.seq)
    ON CONFLICT ON CONSTRAINT telemetry_reading DO NOTHING
    RETURNING vehicle, ts, seq";

/// What identifies a stored reading: vehicle (database id), time, sequence number.
pub type Key = (i32, DateTime<Utc>, Option<i64>);

/// Make `client` ready to insert readings.
pub async fn prepare(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(STAGING).await
}

/// Store `readings` straight into `telemetry` when every one is new: true when they are all
/// stored. False when one was stored before (the unique constraint refused the copy, which a
/// savepoint undoes) or when one is old enough to be in a pack, where the constraint cannot
/// see it: then the batch must go through [`copy`] and [`move_in`].
pub async fn copy_new(
    tx: &Transaction<'_>,
    readings: &[Reading],
    id_of: impl Fn(&Reading) -> i32,
    unpacked_from: DateTime<Utc>,
) -> Result<bool, tokio_postgres::Error> {
    if readings.iter().any(|r| r.ts < unpacked_from) {
        return Ok(false);
    }
    tx.batch_execute("SAVEPOINT readings").await?;
    match copy_into(tx, COPY_DIRECT, readings, &id_of).await {
        Ok(()) => {
            tx.batch_execute("RELEASE SAVEPOINT readings").await?;
            Ok(true)
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT readings").await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Stage `readings` for [`move_in`] (binary COPY, one round trip).
pub async fn copy(
    tx: &Transaction<'_>,
    readings: &[Reading],
    id_of: impl Fn(&Reading) -> i32,
) -> Result<(), tokio_postgres::Error> {
    copy_into(tx, COPY_IN, readings, &id_of).await
}

async fn copy_into(
    tx: &Transaction<'_>,
    statement: &str,
    readings: &[Reading],
    id_of: &impl Fn(&Reading) -> i32,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in::<_, bytes::Bytes>(statement).await?;
    futures_util::pin_mut!(sink);
    sink.send(encode(readings, id_of)).await?;
    sink.finish().await?;
    Ok(())
}

/// Move the staged readings into `telemetry`; returns the keys of those not stored before.
/// `unpacked_from`: readings older than this are looked for in the packs too.
pub async fn move_in(
    tx: &Transaction<'_>,
    unpacked_from: DateTime<Utc>,
) -> Result<HashSet<Key>, tokio_postgres::Error> {
    let inserted = tx.query(MOVE_IN, &[&unpacked_from]).await?;
    Ok(inserted
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The key `r` is stored under.
pub fn key(r: &Reading, id: i32) -> Key {
    (id, r.ts, r.seq.map(i64::from))
}

fn encode(readings: &[Reading], id_of: &impl Fn(&Reading) -> i32) -> bytes::Bytes {
    let mut buf = CopyBuf::with_capacity(readings.len() * 140);
    for r in readings {
        buf.row(COLUMNS);
        buf.timestamptz(r.ts);
        match r.seq {
            Some(s) => buf.i64(i64::from(s)),
            None => buf.null(),
        }
        buf.f64(r.lat);
        buf.f64(r.lon);
        buf.opt_f64(r.odo_km);
        buf.i32(id_of(r));
        buf.f32(r.speed_kmh);
        buf.f32(r.h2_g);
        buf.opt_f32(r.hdop);
        buf.opt_f32(r.heading_deg);
        buf.opt_f32(r.h2_pressure_bar);
        buf.opt_f32(r.tank_temp_c);
        buf.opt_f32(r.fc_power_w);
        buf.opt_f32(r.fc_temp_c);
        buf.opt_f32(r.batt_v);
        buf.opt_bool(r.locked);
        buf.text_array(&r.faults);
        match &r.extra {
            Some(extra) => buf.jsonb(&serde_json::to_vec(extra).expect("a JSON map serialises")),
            None => buf.null(),
        }
    }
    buf.finish()
}
