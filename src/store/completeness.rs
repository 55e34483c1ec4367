//! `telemetry_completeness`: per vehicle and hour, the stretches of readings that arrived and
//! how many are missing (what they mean is `rules::completeness`'s; here they are rows).

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};

/// One vehicle's hour, as stored.
#[derive(Debug, Clone)]
pub struct HourRow {
    pub vehicle: i32,
    pub hour: DateTime<Utc>,
    pub stretches: Value,
    pub received: i32,
    pub missing: i64,
}

const READ: &str = "SELECT w.vehicle, c.hour, c.stretches, c.received, c.missing
    FROM unnest($1::int4[], $2::timestamptz[], $3::timestamptz[]) AS w(vehicle, lo, hi)
    CROSS JOIN LATERAL (
        (SELECT hour, stretches, received, missing FROM telemetry_completeness
          WHERE vehicle = w.vehicle AND hour < w.lo ORDER BY hour DESC LIMIT 1)
        UNION ALL
        (SELECT hour, stretches, received, missing FROM telemetry_completeness
          WHERE vehicle = w.vehicle AND hour >= w.lo AND hour <= w.hi)
        UNION ALL
        (SELECT hour, stretches, received, missing FROM telemetry_completeness
          WHERE vehicle = w.vehicle AND hour > w.hi ORDER BY hour LIMIT 1)
    ) c
    ORDER BY w.vehicle, c.hour";

const WRITE: &str =
    "INSERT INTO telemetry_completeness (vehicle, hour, stretches, received, missing)
    SELECT * FROM unnest($1::int4[], $2::timestamptz[], $3::jsonb[], $4::int4[], $5::int8[])
    ON CONFLICT (vehicle, hour) DO UPDATE SET stretches = EXCLUDED.stretches,
        received = EXCLUDED.received, missing = EXCLUDED.missing";

/// The stored hours of each `(vehicle, lo, hi)`: every one in `[lo, hi]` and the nearest one
/// on either side, by vehicle then hour. One round trip.
pub async fn read(
    tx: &Transaction<'_>,
    windows: &[(i32, DateTime<Utc>, DateTime<Utc>)],
) -> anyhow::Result<Vec<HourRow>> {
    let ids: Vec<i32> = windows.iter().map(|w| w.0).collect();
    let los: Vec<DateTime<Utc>> = windows.iter().map(|w| w.1).collect();
    let his: Vec<DateTime<Utc>> = windows.iter().map(|w| w.2).collect();
    // Typed: no separate prepare.
    let rows = tx
        .query_typed(
            READ,
            &[
                (&ids, Type::INT4_ARRAY),
                (&los, Type::TIMESTAMPTZ_ARRAY),
                (&his, Type::TIMESTAMPTZ_ARRAY),
            ],
        )
        .await
        .context("reading completeness")?;
    Ok(rows
        .iter()
        .map(|r| HourRow {
            vehicle: r.get(0),
            hour: r.get(1),
            stretches: r.get(2),
            received: r.get(3),
            missing: r.get(4),
        })
        .collect())
}

/// Insert or replace `rows`. One round trip.
pub async fn write(tx: &Transaction<'_>, rows: &[HourRow]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let id: Vec<i32> = rows.iter().map(|r| r.vehicle).collect();
    let hour: Vec<DateTime<Utc>> = rows.iter().map(|r| r.hour).collect();
    let stretches: Vec<&Value> = rows.iter().map(|r| &r.stretches).collect();
    let received: Vec<i32> = rows.iter().map(|r| r.received).collect();
    let missing: Vec<i64> = rows.iter().map(|r| r.missing).collect();
    tx.execute_typed(
        WRITE,
        &[
            (&id, Type::INT4_ARRAY),
            (&hour, Type::TIMESTAMPTZ_ARRAY),
            (&stretches, Type::JSONB_ARRAY),
            (&received, Type::INT4_ARRAY),
            (&missing, Type::INT8_ARRAY),
        ],
    )
    .await
    .context("storing completeness")?;
    Ok(())
}

/// Hours older than the raw readings' retention go with them.
pub async fn expire(
    client: &Client,
    retention_days: u32,
    now: DateTime<Utc>,
) -> anyhow::Result<u64> {
    let cutoff = now - Duration::days(i64::from(retention_days));
    client
        .execute(
            "DELETE FROM telemetry_completeness WHERE hour < $1",
            &[&cutoff],
        )
        .await
        .context("expiring completeness")
}
