//! One batch, one transaction: readings through binary COPY into a staging table, then into
//! `telemetry` with duplicates skipped, the minute and day rollups, the vehicles' latest state,
//! events, statuses, rejects, rule state and alerts. Ingest acknowledges a batch's messages only after this commits.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures_util::SinkExt;

use super::copy::CopyBuf;
use super::registry::{Registry, VehicleRef};
use super::{partitions, rollup};
use crate::config::Profiles;
use crate::decode::Decoded;
use crate::domain::{AlertEvent, Event, Reading, Reject, RejectReason, VehicleId, VehicleKind};
use crate::live::{Hub, LiveEvent, Position};
use crate::metrics::{PhaseTimes, WritePhase};
use crate::rules::Engine;
use crate::rules::store::VehicleRow;

const STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS telemetry_in
    (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DELETE ROWS";

const COPY_IN: &str =
    "COPY telemetry_in (ts, seq, lat, lon, odo_km, vehicle, speed_kmh, h2_g, hdop,
    heading_deg, h2_pressure_bar, tank_temp_c, fc_power_w, fc_temp_c, batt_v, locked, faults, extra)
    FROM STDIN BINARY";
const COLUMNS: i16 = 18;

/// A reading older than `$1` ([`partitions::unpacked_from`]) may be in a pack already, where
/// the unique constraint cannot see it: it is looked for there first.
const MOVE_IN: &str = "INSERT INTO telemetry SELECT * FROM telemetry_in t
    WHERE t.ts >= $1 OR NOT EXISTS (
        SELECT 1 FROM telemetry_packed p, unnest(p.ts, p.seq) AS u(ts, seq)
        WHERE p.vehicle = t.vehicle
          AND p.hour = date_bin('1 hour', t.ts, timestamptz '2000-01-01T00:00:00Z')
          AND u.ts = t.ts AND u.seq IS NOT DISTINCT FROM t.seq)
    ON CONFLICT ON CONSTRAINT telemetry_reading DO NOTHING
    RETURNING vehicle, ts, seq";

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WriteOutcome {
    pub stored: usize,
    pub alert_events: usize,
    pub duplicates: usize,
    pub events: usize,
    pub rejects: usize,
    /// Readings newly stored, newest `ts` first per vehicle is not guaranteed.
    pub newest_ts: Option<DateTime<Utc>>,
    /// Where the batch's time went.
    pub phases: PhaseTimes,
    /// Readings newly found missing between consecutive `seq` (net, per vehicle)...
    pub readings_missing: u64,
    /// ...and missing ones that arrived late and filled their gap.
    pub gap_filled: u64,
}

/// What else happens inside a batch's transaction: rules turn the new readings into alert
/// transitions, and the webhook outbox takes them, so that all of it commits or none does.
/// After the commit, positions and transitions go to the live feed.
pub struct Hooks {
    engine: RwLock<Arc<Engine>>,
    pub live: Hub,
    /// Wakes the webhook worker when a batch committed alert events.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    /// Asks for the zones to be reloaded from the table (the API changed them).
    pub zones_changed: tokio::sync::Notify,
}

impl Hooks {
    pub fn new(engine: Engine, live: Hub) -> Self {
        Hooks {
            engine: RwLock::new(Arc::new(engine)),
            live,
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
            zones_changed: tokio::sync::Notify::new(),
        }
    }

    pub fn engine(&self) -> Arc<Engine> {
        self.engine.read().expect("engine lock").clone()
    }

    /// Swap the zone index the rules use (after zones change through the API or an import).
    pub fn set_zones(&self, zones: Arc<crate::geo::ZoneIndex>) {
        let mut e = self.engine.write().expect("engine lock");
        *e = Arc::new(e.with_zones(zones));
    }
}

/// A writer owns one connection; ingest runs several to overlap commits.
pub struct BatchWriter {
    client: tokio_postgres::Client,
    registry: Arc<Registry>,
    profiles: Profiles,
    auto_register: bool,
    hooks: Arc<Hooks>,
}

impl BatchWriter {
    pub async fn connect(
        url: &str,
        registry: Arc<Registry>,
        profiles: Profiles,
        auto_register: bool,
        hooks: Arc<Hooks>,
    ) -> anyhow::Result<Self> {
        let client = super::connect(url).await?;
        client
            .batch_execute(STAGING)
            .await
            .context("cannot create the staging table")?;
        Ok(BatchWriter {
            client,
            registry,
            profiles,
            auto_register,
            hooks,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Write `batch` in one transaction. On error nothing is committed and the caller may try
    /// the same batch again: every statement is idempotent across retries.
    pub async fn write(
        &mut self,
        batch: &mut Decoded,
        now: DateTime<Utc>,
    ) -> anyhow::Result<WriteOutcome> {
        let mut clock = PhaseTimes::default();
        let refs = self.resolve(batch).await?;
        refuse_unknown(batch, &refs, now);
        super::registry::refuse_other_kind(batch, &refs, now);

        let mut ids: Vec<i32> = refs.values().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();

        let tx = self.client.transaction().await?;
        // Old readings are checked against the packs, which no packer may change meanwhile;
        // taken before any row lock, so a packer waiting for it holds nothing a writer needs.
        let unpacked_from = partitions::unpacked_from(now);
        if batch.readings.iter().any(|r| r.ts < unpacked_from) {
            tx.execute(
                "SELECT pg_advisory_xact_lock_shared($1)",
                &[&partitions::PACK_LOCK_KEY],
            )
            .await?;
        }
        // Lock the batch's vehicles in id order: another writer (or instance) with readings of
        // the same vehicles waits here instead of deadlocking later.
        // With the lock: each vehicle's newest reading so far (where the rollups' first steps
        // start from and what a fresh reading must not be older than to become the latest
        // state) and what the rules remember of it.
        let locked = tx
            .query(
                "SELECT id, last_ts, lat, lon, h2_g, odo_km, rule_state, tank_g, km_per_g
                 FROM vehicles WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&ids],
            )
            .await?;
        let mut prior: HashMap<i32, rollup::Prior> = HashMap::with_capacity(locked.len());
        let mut rule_states = crate::rules::store::Loaded::with_capacity(locked.len());
        for r in locked {
            let id: i32 = r.get(0);
            let p = (|| {
                Some(rollup::Prior {
                    ts: r.get::<_, Option<DateTime<Utc>>>(1)?,
                    lat: r.get::<_, Option<f64>>(2)?,
                    lon: r.get::<_, Option<f64>>(3)?,
                    h2_g: r.get::<_, Option<f32>>(4)?,
                    odo_km: r.get(5),
                })
            })();
            if let Some(p) = p {
                prior.insert(id, p);
            }
            let state = crate::rules::store::parse_rule_state(id, r.get(6));
            rule_states.insert(id, (state, r.get(7), r.get(8)));
        }
        clock.lap(WritePhase::Lock);
        let mut outcome = WriteOutcome::default();
        let mut fresh: Vec<&Reading> = Vec::new();
        let engine = self.hooks.engine();
        if !batch.readings.is_empty() {
            let sink = tx.copy_in::<_, bytes::Bytes>(COPY_IN).await?;
            let data = encode_readings(&batch.readings, &refs);
            futures_util::pin_mut!(sink);
            sink.send(data).await?;
            sink.finish().await?;
            clock.lap(WritePhase::Copy);
            let inserted = tx.query(MOVE_IN, &[&unpacked_from]).await?;
            clock.lap(WritePhase::Insert);
            outcome.stored = inserted.len();
            outcome.duplicates = batch.readings.len() - inserted.len();
            outcome.newest_ts = inserted.iter().map(|r| r.get::<_, DateTime<Utc>>(1)).max();
            // Rules see each reading once: a redelivered or resent one was inserted before.
            let new: HashSet<(i32, DateTime<Utc>, Option<i64>)> = inserted
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            fresh = batch
                .readings
                .iter()
                .filter(|r| new.contains(&(refs[&r.vehicle].id, r.ts, r.seq.map(i64::from))))
                .collect();
            fresh.sort_by(|a, b| a.vehicle.cmp(&b.vehicle).then(a.ts.cmp(&b.ts)));
            let (minutes, days) = rollup::accumulate_with(
                &fresh,
                |r| refs[&r.vehicle].id,
                &prior,
                |r| engine.has_fix(r),
            );
            rollup::upsert(&tx, rollup::Table::Minute, &minutes).await?;
            rollup::upsert(&tx, rollup::Table::Day, &days).await?;
        }
        let new_events = write_events(&tx, batch, &refs).await?;
        outcome.events = new_events.len();
        write_statuses(&tx, batch, &refs).await?;
        outcome.rejects = write_rejects(&tx, &batch.rejects).await?;

        let rows: Vec<VehicleRow> = refs
            .iter()
            .map(|(code, r)| VehicleRow {
                id: r.id,
                code: code.clone(),
                kind: r.kind,
            })
            .collect();
        clock.lap(WritePhase::State);
        let gaps =
            crate::rules::completeness::apply(&tx, &engine, &rows, &mut rule_states, &fresh, now)
                .await
                .context("telemetry completeness")?;
        outcome.readings_missing = gaps.missing;
        outcome.gap_filled = gaps.filled;
        clock.lap(WritePhase::Completeness);
        let (mut alerts, saved) = crate::rules::store::apply_batch_loaded(
            &tx,
            &engine,
            &rows,
            &rule_states,
            &fresh,
            &new_events,
            now,
        )
        .await
        .context("rules")?;
        alerts.extend(gaps.events);
        let fixes = latest_fixes(&fresh, &refs, |r| engine.has_fix(r));
        let newest = latest(&fresh, &refs, &prior);
        save_vehicles(&tx, &ids, now, &newest, &fixes, &saved).await?;
        crate::notify::enqueue(&tx, &alerts)
            .await
            .context("webhook outbox")?;
        clock.lap(WritePhase::Rules);
        tx.commit().await?;
        clock.lap(WritePhase::Commit);
        outcome.phases = clock;

        outcome.alert_events = alerts.len();
        if !alerts.is_empty() {
            self.hooks.outbox_wake.notify_one();
        }
        // The live map shows where vehicles are: a reading without a usable fix moves nothing.
        let placed: Vec<&Reading> = if self.hooks.live.has_listeners() {
            fresh
                .iter()
                .copied()
                .filter(|r| engine.has_fix(r))
                .collect()
        } else {
            Vec::new()
        };
        self.publish_live(&placed, alerts);
        Ok(outcome)
    }

    /// After the commit: the newest position of each vehicle, and every transition.
    fn publish_live(&self, fresh: &[&Reading], alerts: Vec<AlertEvent>) {
        let live = &self.hooks.live;
        for a in alerts {
            live.publish(LiveEvent::Alert(a));
        }
        if !live.has_listeners() {
            return;
        }
        // `fresh` is sorted by vehicle then time: the last of each run is the newest.
        for (i, r) in fresh.iter().enumerate() {
            if fresh.get(i + 1).is_some_and(|n| n.vehicle == r.vehicle) {
                continue;
            }
            live.publish(LiveEvent::Position(Position {
                vehicle_id: r.vehicle.to_string(),
                kind: r.kind,
                ts: r.ts,
                lat: r.lat,
                lon: r.lon,
                speed_kmh: r.speed_kmh,
                h2_g: r.h2_g,
                locked: r.locked,
            }));
        }
    }

    async fn resolve(&self, batch: &Decoded) -> anyhow::Result<HashMap<VehicleId, VehicleRef>> {
        let mut wanted: Vec<(VehicleId, VehicleKind)> = Vec::new();
        let mut seen: HashSet<&VehicleId> = HashSet::new();
        let all = batch
            .readings
            .iter()
            .map(|r| (&r.vehicle, r.kind))
            .chain(batch.events.iter().map(|e| (&e.vehicle, e.kind)))
            .chain(batch.statuses.iter().map(|s| (&s.vehicle, s.kind)));
        for (v, k) in all {
            if seen.insert(v) {
                wanted.push((v.clone(), k));
            }
        }
        self.registry
            .resolve(&self.client, &wanted, self.auto_register, &self.profiles)
            .await
            .context("cannot resolve vehicle ids")
    }
}

/// Each vehicle's newest fresh reading, when it is not older than what the store has: the
/// vehicle's latest state. `fresh` is sorted by vehicle then time.
fn latest<'a>(
    fresh: &[&'a Reading],
    refs: &HashMap<VehicleId, VehicleRef>,
    prior: &HashMap<i32, rollup::Prior>,
) -> HashMap<i32, &'a Reading> {
    let mut out = HashMap::new();
    for (i, r) in fresh.iter().enumerate() {
        if fresh.get(i + 1).is_some_and(|n| n.vehicle == r.vehicle) {
            continue;
        }
        let id = refs[&r.vehicle].id;
        if prior.get(&id).is_none_or(|p| p.ts <= r.ts) {
            out.insert(id, *r);
        }
    }
    out
}

/// Each vehicle's newest fresh reading with a usable fix: where it is. Whether that is newer
/// than the stored position is decided in SQL (`vehicles.last_fix`).
fn latest_fixes<'a>(
    fresh: &[&'a Reading],
    refs: &HashMap<VehicleId, VehicleRef>,
    has_fix: impl Fn(&Reading) -> bool,
) -> HashMap<i32, &'a Reading> {
    let mut out = HashMap::new();
    for r in fresh.iter().filter(|r| has_fix(r)) {
        // `fresh` is sorted by vehicle then time: the last one kept is the newest.
        out.insert(refs[&r.vehicle].id, *r);
    }
    out
}

/// One update of every vehicle in the batch: when it was last heard from, its latest state
/// where a fresh reading is newer, and what the rules remember. One row version per vehicle
/// and batch, however many readings it sent.
async fn save_vehicles(
    tx: &tokio_postgres::Transaction<'_>,
    ids: &[i32],
    now: DateTime<Utc>,
    latest: &HashMap<i32, &Reading>,
    fixes: &HashMap<i32, &Reading>,
    saved: &[crate::rules::store::SavedState],
) -> Result<(), tokio_postgres::Error> {
    let rules: HashMap<i32, &crate::rules::store::SavedState> =
        saved.iter().map(|s| (s.id, s)).collect();
    let n = ids.len();
    let (mut ts, mut lat, mut lon, mut fix_ts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut speed, mut heading, mut h2) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut locked, mut odo) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut state, mut kpg) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for id in ids {
        let r = latest.get(id);
        ts.push(r.map(|r| r.ts));
        let f = fixes.get(id);
        fix_ts.push(f.map(|f| f.ts));
        lat.push(f.map(|f| f.lat));
        lon.push(f.map(|f| f.lon));
        speed.push(r.map(|r| r.speed_kmh));
        heading.push(r.and_then(|r| r.heading_deg));
        h2.push(r.map(|r| r.h2_g));
        locked.push(r.and_then(|r| r.locked));
        odo.push(r.and_then(|r| r.odo_km));
        let s = rules.get(id);
        state.push(s.map(|s| &s.state));
        kpg.push(s.and_then(|s| s.km_per_g));
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
            &ids, &now, &ts, &lat, &lon, &speed, &heading, &h2, &locked, &odo, &state, &kpg,
            &fix_ts,
        ],
    )
    .await?;
    Ok(())
}

/// Records of vehicles that are not registered (with `auto_register` off) become rejects.
fn refuse_unknown(batch: &mut Decoded, refs: &HashMap<VehicleId, VehicleRef>, now: DateTime<Utc>) {
    let unknown = |v: &VehicleId| !refs.contains_key(v);
    let reject = |v: &VehicleId, kind: VehicleKind, channel: &str, payload: Vec<u8>| {
        Reject::new(
            now,
            &format!("{kind}/{v}/{channel}"),
            Some(v.as_str()),
            RejectReason::UnknownVehicle,
            &format!("vehicle `{v}` is not registered and ingest.auto_register is off"),
            &payload,
        )
    };
    let mut rejects = Vec::new();
    batch.readings.retain(|r| {
        let keep = !unknown(&r.vehicle);
        if !keep {
            let payload = serde_json::to_vec(r).unwrap_or_default();
            rejects.push(reject(&r.vehicle, r.kind, "telemetry", payload));
        }
        keep
    });
    batch.events.retain(|e| {
        let keep = !unknown(&e.vehicle);
        if !keep {
            let payload = serde_json::to_vec(&e.body).unwrap_or_default();
            rejects.push(reject(&e.vehicle, e.kind, "event", payload));
        }
        keep
    });
    batch.statuses.retain(|s| !unknown(&s.vehicle));
    batch.rejects.extend(rejects);
}

fn encode_readings(readings: &[Reading], refs: &HashMap<VehicleId, VehicleRef>) -> bytes::Bytes {
    let mut buf = CopyBuf::with_capacity(readings.len() * 140);
    for r in readings {
        let id = refs[&r.vehicle].id;
        buf.row(COLUMNS);
        buf.timestamptz(r.ts);
        match r.seq {
            Some(s) => buf.i64(i64::from(s)),
            None => buf.null(),
        }
        buf.f64(r.lat);
        buf.f64(r.lon);
        buf.opt_f64(r.odo_km);
        buf.i32(id);
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

/// Insert the batch's events; returns those not stored before, for the rules.
async fn write_events(
    tx: &tokio_postgres::Transaction<'_>,
    batch: &Decoded,
    refs: &HashMap<VehicleId, VehicleRef>,
) -> Result<Vec<Event>, tokio_postgres::Error> {
    if batch.events.is_empty() {
        return Ok(Vec::new());
    }
    let vehicle: Vec<i32> = batch.events.iter().map(|e| refs[&e.vehicle].id).collect();
    let ts: Vec<DateTime<Utc>> = batch.events.iter().map(|e| e.ts).collect();
    let kind: Vec<&str> = batch.events.iter().map(|e| e.event_type.as_str()).collect();
    let body: Vec<&serde_json::Value> = batch.events.iter().map(|e| &e.body).collect();
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
    let mut events: Vec<Event> = batch
        .events
        .iter()
        .filter(|e| new.contains(&(refs[&e.vehicle].id, e.ts, e.event_type.as_str().to_owned())))
        .cloned()
        .collect();
    events.sort_by(|a, b| a.vehicle.cmp(&b.vehicle).then(a.ts.cmp(&b.ts)));
    Ok(events)
}

async fn write_statuses(
    tx: &tokio_postgres::Transaction<'_>,
    batch: &Decoded,
    refs: &HashMap<VehicleId, VehicleRef>,
) -> Result<(), tokio_postgres::Error> {
    // The last status of each vehicle in the batch wins.
    let mut last: HashMap<i32, (bool, DateTime<Utc>)> = HashMap::new();
    for s in &batch.statuses {
        last.insert(refs[&s.vehicle].id, (s.online, s.received_at));
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

async fn write_rejects(
    tx: &tokio_postgres::Transaction<'_>,
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
