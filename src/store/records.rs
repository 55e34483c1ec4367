//! Events (what firmware reports happening) and rejects (what hyfleet refused, and why):
//! stored as they come, each in its own table.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

use crate::domain::{Event, Reject, VehicleId};

/// Insert `events`; returns those not stored before (a redelivery stores nothing twice),
/// sorted by vehicle then time, for the rules.
pub async fn insert_events(
    tx: &Transaction<'_>,
    events: &[Event],
    id_of: impl Fn(&VehicleId) -> i32,
) -> Result<Vec<Event>, tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let vehicle: Vec<i32> = events.iter().map(|e| id_of(&e.vehicle)).collect();
    let ts: Vec<DateTime<Utc>> = events.iter().map(|e| e.ts).collect();
    let kind: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let body: Vec<&serde_json::Value> = events.iter().map(|e| &e.body).collect();
    let rows = tx
        .query(
            "INSERT INTO events (vehicle, ts, type, body)
             SELECT * FROM unnest($1::int[], $2::timestamptz[], $3::text[], $4::jsonb[])
             ON CONFLICT (vehicle, ts, type) DO NOTHING
             RETURNING vehicle, ts, type",
            &[&vehicle, &ts, &kind, &body],
        )
        .await?;
    let new: HashSet<(i32, DateTime<Utc>, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut fresh: Vec<Event> = events
        .iter()
        .zip(&vehicle)
        .filter(|(e, id)| new.contains(&(**id, e.ts, e.event_type.as_str().to_owned())))
        .map(|(e, _)| e.clone())
        .collect();
    fresh.sort_by(|a, b| a.vehicle.cmp(&b.vehicle).then(a.ts.cmp(&b.ts)));
    Ok(fresh)
}

pub async fn insert_rejects(
    tx: &Transaction<'_>,
    rejects: &[Reject],
) -> Result<usize, tokio_postgres::Error> {
    if rejects.is_empty() {
        return Ok(0);
    }
    let at: Vec<DateTime<Utc>> = rejects.iter().map(|r| r.received_at).collect();
    let topic: Vec<&str> = rejects.iter().map(|r| r.topic.as_str()).collect();
    let vehicle: Vec<Option<&str>> = rejects.iter().map(|r| r.vehicle.as_deref()).collect();
    let reason: Vec<&str> = rejects.iter().map(|r| r.reason.as_str()).collect();
    let detail: Vec<&str> = rejects.iter().map(|r| r.detail.as_str()).collect();
    let payload: Vec<&[u8]> = rejects.iter().map(|r| r.payload.as_slice()).collect();
    tx.execute(
        "INSERT INTO rejects (received_at, topic, vehicle, reason, detail, payload)
         SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])",
        &[&at, &topic, &vehicle, &reason, &detail, &payload],
    )
    .await?;
    Ok(rejects.len())
}
