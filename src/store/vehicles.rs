//! The vehicles repository: each vehicle's row holds its latest state (position, hydrogen,
//! when it was last heard from), its status, and what the rules remember of it (`rule_state`,
//! stored as the rules wrote it: this module never reads inside it).
//!
//! A batch locks its vehicles' rows in id order ([`lock`]) and updates each once ([`save`]),
//! however many readings it brought; the operator API and the offline sweep take the same
//! locks, so a vehicle's rule state has one writer at a time on any instance.

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

use super::jsonb::JsonText;
use super::rollup::Prior;
use crate::domain::{Reading, Status, VehicleId, VehicleKind};

/// A vehicle's row as a batch finds it, locked.
#[derive(Debug)]
pub struct Locked {
    pub id: i32,
    /// Its newest reading so far, where rollups continue from; none before its first.
    pub prior: Option<Prior>,
    /// What the rules remember, as stored.
    pub rule_state: JsonText,
    /// Its own tank size and operator-set consumption, where they differ from its profile's.
    pub tank_g: Option<f32>,
    pub km_per_g: Option<f32>,
}

/// Lock the rows of `ids` (sorted) in id order, so that two writers with vehicles in common
/// wait here rather than deadlock later, and read what a batch starts from.
pub async fn lock(tx: &Transaction<'_>, ids: &[i32]) -> Result<Vec<Locked>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT id, last_ts, lat, lon, h2_g, odo_km, rule_state, tank_g, km_per_g
             FROM vehicles WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Locked {
            id: r.get(0),
            prior: (|| {
                Some(Prior {
                    ts: r.get::<_, Option<DateTime<Utc>>>(1)?,
                    lat: r.get::<_, Option<f64>>(2)?,
                    lon: r.get::<_, Option<f64>>(3)?,
                    h2_g: r.get::<_, Option<f32>>(4)?,
                    odo_km: r.get(5),
                })
            })(),
            rule_state: r.get(6),
            tank_g: r.get(7),
            km_per_g: r.get(8),
        })
        .collect())
}

/// What the rules remember of a vehicle after a batch.
#[derive(Debug, Clone)]
pub struct Memory {
    pub state: JsonText,
    /// The consumption learned so far, once there is enough to learn from.
    pub learned_km_per_g: Option<f32>,
}

/// What one batch changes in a vehicle's row.
#[derive(Debug, Default)]
pub struct Update<'a> {
    /// Its newest reading of the batch, when not older than the stored latest state.
    pub latest: Option<&'a Reading>,
    /// Its newest reading of the batch with a usable fix: where it is, if newer than the
    /// stored position (decided here, against `vehicles.last_fix`).
    pub fix: Option<&'a Reading>,
    pub memory: Option<Memory>,
}

/// One update of every vehicle in `ids` (as locked): when it was last heard from (`now`), and
/// what `updates` says. One row version per vehicle and batch.
pub async fn save(
    tx: &Transaction<'_>,
    ids: &[i32],
    now: DateTime<Utc>,
    updates: &HashMap<i32, Update<'_>>,
) -> Result<(), tokio_postgres::Error> {
    let n = ids.len();
    let mut c = Columns::with_capacity(n);
    for id in ids {
        let u = updates.get(id);
        let r = u.and_then(|u| u.latest);
        let f = u.and_then(|u| u.fix);
        let m = u.and_then(|u| u.memory.as_ref());
        c.ts.push(r.map(|r| r.ts));
        c.fix_ts.push(f.map(|f| f.ts));
        c.lat.push(f.map(|f| f.lat));
        c.lon.push(f.map(|f| f.lon));
        c.speed.push(r.map(|r| r.speed_kmh));
        c.heading.push(r.and_then(|r| r.heading_deg));
        c.h2.push(r.map(|r| r.h2_g));
        c.locked.push(r.and_then(|r| r.locked));
        c.odo.push(r.and_then(|r| r.odo_km));
        c.state.push(m.map(|m| &m.state));
        c.kpg.push(m.and_then(|m| m.learned_km_per_g));
    }
    tx.execute(
        "UPDATE vehicles v SET
            last_seen = $2,
            last_ts = coalesce(u.ts, v.last_ts),
            lat = CASE WHEN u.fix_ts >= coalesce(v.last_fix, '-infinity') THEN u.lat
                  ELSE v.lat END,
            lon = CASE WHEN u.fix_ts >= coalesce(v.last_fix, '-infinity') THEN u.lon
                  ELSE v.lon END,
            last_fix = greatest(v.last_fix, u.fix_ts),
            speed_kmh = CASE WHEN u.ts IS NULL THEN v.speed_kmh ELSE u.speed END,
            heading_deg = CASE WHEN u.ts IS NULL THEN v.heading_deg ELSE u.heading END,
            h2_g = CASE WHEN u.ts IS NULL THEN v.h2_g ELSE u.h2 END,
            range_km = CASE WHEN u.ts IS NULL THEN v.range_km
                       ELSE u.h2 * coalesce(u.kpg, v.learned_km_per_g, v.km_per_g) END,
            locked = coalesce(u.locked, v.locked),
            odo_km = coalesce(u.odo, v.odo_km),
            rule_state = coalesce(u.state, v.rule_state),
            learned_km_per_g = coalesce(u.kpg, v.learned_km_per_g)
         FROM unnest($1::int4[], $3::timestamptz[], $4::float8[], $5::float8[], $6::float4[],
                     $7::float4[], $8::float4[], $9::bool[], $10::float8[], $11::jsonb[],
                     $12::float4[], $13::timestamptz[])
              AS u(id, ts, lat, lon, speed, heading, h2, locked, odo, state, kpg, fix_ts)
         WHERE v.id = u.id",
        &[
            &ids, &now, &c.ts, &c.lat, &c.lon, &c.speed, &c.heading, &c.h2, &c.locked, &c.odo,
            &c.state, &c.kpg, &c.fix_ts,
        ],
    )
    .await?;
    Ok(())
}

/// The arrays of [`save`]'s statement, one element per vehicle.
struct Columns<'a> {
    ts: Vec<Option<DateTime<Utc>>>,
    fix_ts: Vec<Option<DateTime<Utc>>>,
    lat: Vec<Option<f64>>,
    lon: Vec<Option<f64>>,
    speed: Vec<Option<f32>>,
    heading: Vec<Option<f32>>,
    h2: Vec<Option<f32>>,
    locked: Vec<Option<bool>>,
    odo: Vec<Option<f64>>,
    state: Vec<Option<&'a JsonText>>,
    kpg: Vec<Option<f32>>,
}

impl Columns<'_> {
    fn with_capacity(n: usize) -> Self {
        Columns {
            ts: Vec::with_capacity(n),
            fix_ts: Vec::with_capacity(n),
            lat: Vec::with_capacity(n),
            lon: Vec::with_capacity(n),
            speed: Vec::with_capacity(n),
            heading: Vec::with_capacity(n),
            h2: Vec::with_capacity(n),
            locked: Vec::with_capacity(n),
            odo: Vec::with_capacity(n),
            state: Vec::with_capacity(n),
            kpg: Vec::with_capacity(n),
        }
    }
}

/// The online/offline status each vehicle last sent (the last of the batch wins).
pub async fn save_statuses(
    tx: &Transaction<'_>,
    statuses: &[Status],
    id_of: impl Fn(&VehicleId) -> i32,
) -> Result<(), tokio_postgres::Error> {
    let mut last: HashMap<i32, (bool, DateTime<Utc>)> = HashMap::new();
    for s in statuses {
        last.insert(id_of(&s.vehicle), (s.online, s.received_at));
    }
    if last.is_empty() {
        return Ok(());
    }
    let ids: Vec<i32> = last.keys().copied().collect();
    let online: Vec<bool> = ids.iter().map(|i| last[i].0).collect();
    let at: Vec<DateTime<Utc>> = ids.iter().map(|i| last[i].1).collect();
    tx.execute(
        "UPDATE vehicles v SET online = s.online, status_at = s.at
         FROM unnest($1::int[], $2::bool[], $3::timestamptz[]) AS s(id, online, at)
         WHERE v.id = s.id",
        &[&ids, &online, &at],
    )
    .await?;
    Ok(())
}

/// A vehicle that has not been heard from since `cutoff` and has no `offline` alert yet.
#[derive(Debug)]
pub struct Quiet {
    pub id: i32,
    pub kind: VehicleKind,
    pub rule_state: JsonText,
    pub tank_g: Option<f32>,
    pub km_per_g: Option<f32>,
}

/// The quiet vehicles, locked; those being written right now are skipped (they are not
/// quiet).
pub async fn lock_quiet(tx: &Transaction<'_>, cutoff: DateTime<Utc>) -> anyhow::Result<Vec<Quiet>> {
    let rows = tx
        .query(
            "SELECT id, kind, rule_state, tank_g, km_per_g FROM vehicles \
             WHERE (rule_state->>'seen_at')::timestamptz <= $1 \
               AND NOT COALESCE(rule_state->'alerts' ? 'offline', false) \
             ORDER BY id FOR UPDATE SKIP LOCKED",
            &[&cutoff],
        )
        .await
        .context("finding quiet vehicles")?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(kind) = VehicleKind::parse(row.get(1)) else {
            tracing::warn!(
                vehicle = row.get::<_, i32>(0),
                "unreadable vehicle row; skipped"
            );
            continue;
        };
        out.push(Quiet {
            id: row.get(0),
            kind,
            rule_state: row.get(2),
            tank_g: row.get(3),
            km_per_g: row.get(4),
        });
    }
    Ok(out)
}

/// Store what the rules remember of each vehicle (outside a batch: the offline sweep).
pub async fn save_memories(tx: &Transaction<'_>, saved: &[(i32, Memory)]) -> anyhow::Result<()> {
    if saved.is_empty() {
        return Ok(());
    }
    let ids: Vec<i32> = saved.iter().map(|s| s.0).collect();
    let states: Vec<&JsonText> = saved.iter().map(|s| &s.1.state).collect();
    let kpg: Vec<Option<f32>> = saved.iter().map(|s| s.1.learned_km_per_g).collect();
    tx.execute(
        "UPDATE vehicles v SET rule_state = u.s, learned_km_per_g = COALESCE(u.k, v.learned_km_per_g) \
         FROM unnest($1::int4[], $2::jsonb[], $3::float4[]) AS u(id, s, k) WHERE v.id = u.id",
        &[&ids, &states, &kpg],
    )
    .await
    .context("saving rule state")?;
    Ok(())
}

/// Lock one vehicle's row and read its rule state.
pub async fn lock_rule_state(tx: &Transaction<'_>, id: i32) -> anyhow::Result<JsonText> {
    Ok(tx
        .query_one(
            "SELECT rule_state FROM vehicles WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .context("locking a vehicle")?
        .get(0))
}

pub async fn set_rule_state(tx: &Transaction<'_>, id: i32, state: &JsonText) -> anyhow::Result<()> {
    tx.execute(
        "UPDATE vehicles SET rule_state = $2 WHERE id = $1",
        &[&id, state],
    )
    .await
    .context("saving rule state")?;
    Ok(())
}
