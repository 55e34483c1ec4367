//! The rules' side of the store: run the engine inside the ingest transaction and persist
//! what it decides (alerts, their transitions, rides, the vehicles' rule state), plus the
//! operator actions on alerts and zone import.
//!
//! Callers hold the batch's vehicle rows locked (`FOR UPDATE`, in id order) for the whole
//! transaction, so a vehicle's rule state is read and written by one writer at a time, on
//! whichever instance took the batch.

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::{Client, Row, Transaction};
use uuid::Uuid;

use super::engine::{AlertAction, AlertChange, Engine, Output, Ride, VehicleInfo};
use super::state::VehicleRuleState;
use crate::domain::{
    Alert, AlertEvent, AlertEventType, AlertState, Event, Reading, Severity, VehicleId, VehicleKind,
};
use crate::geo::{Crs, ZoneIndex, parse_feature, parse_zones};

/// A vehicle of the batch, as the ingest store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleRow {
    pub id: i32,
    pub code: VehicleId,
    pub kind: VehicleKind,
}

/// Who the engine's own transitions are attributed to.
const ENGINE_ACTOR: &str = "rules";

const ALERT_COLS: &str = "a.id, a.rule, a.zone, a.state, a.severity, a.opened_at, \
    a.acknowledged_at, a.resolved_at, a.lat, a.lon, a.details, v.code, v.kind";

enum Item<'a> {
    Reading(&'a Reading),
    Event(&'a Event),
}

impl Item<'_> {
    fn ts(&self) -> DateTime<Utc> {
        match self {
            Item::Reading(r) => r.ts,
            Item::Event(e) => e.ts,
        }
    }
}

/// Run the rules over a batch: `readings` are those newly stored (not duplicates), sorted by
/// time per vehicle. Returns one event per alert transition, for the webhook outbox.
pub async fn apply_batch(
    tx: &Transaction<'_>,
    engine: &Engine,
    vehicles: &[VehicleRow],
    readings: &[&Reading],
    events: &[Event],
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<AlertEvent>> {
    let ids: Vec<i32> = vehicles.iter().map(|v| v.id).collect();
    let loaded = load_states(tx, &ids).await?;
    let (emitted, saved) =
        apply_batch_loaded(tx, engine, vehicles, &loaded, readings, events, now).await?;
    save_states(tx, &saved).await?;
    Ok(emitted)
}

/// What the rules remember of a vehicle after a batch, for the caller to save with the rest of
/// the vehicle's row.
#[derive(Debug)]
pub struct SavedState {
    pub id: i32,
    pub state: Value,
    /// The consumption learned so far, once there is enough to learn from.
    pub km_per_g: Option<f32>,
}

/// [`apply_batch`] for a caller that has read the vehicles' rule state itself (with their row
/// lock) and saves it itself: the states come back instead of being written.
pub async fn apply_batch_loaded(
    tx: &Transaction<'_>,
    engine: &Engine,
    vehicles: &[VehicleRow],
    loaded: &Loaded,
    readings: &[&Reading],
    events: &[Event],
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<AlertEvent>, Vec<SavedState>)> {
    let mut items: HashMap<&VehicleId, Vec<Item<'_>>> = HashMap::new();
    for &r in readings {
        items.entry(&r.vehicle).or_default().push(Item::Reading(r));
    }
    for e in events {
        items.entry(&e.vehicle).or_default().push(Item::Event(e));
    }
    let mut emitted = Vec::new();
    let mut saved = Vec::new();
    for v in vehicles {
        let Some(mut list) = items.remove(&v.code) else {
            continue;
        };
        let Some((mut state, info)) = loaded.get(&v.id).cloned().map(|(s, t, k)| {
            let info = VehicleInfo {
                kind: v.kind,
                tank_g: t.unwrap_or_else(|| engine.profiles.get(v.kind).tank_g),
                km_per_g: k,
            };
            (s, info)
        }) else {
            continue;
        };
        // Stable: readings keep their order, an event lands among them by its time.
        list.sort_by_key(Item::ts);
        let mut outputs = engine.on_seen(&mut state, now);
        for item in list {
            outputs.extend(match item {
                Item::Reading(r) => engine.on_reading(&mut state, r, &info),
                Item::Event(e) => engine.on_event(&mut state, e, &info),
            });
        }
        emitted.extend(persist_outputs(tx, v, outputs).await?);
        saved.push(SavedState {
            id: v.id,
            km_per_g: state.learned_km_per_g(),
            state: serde_json::to_value(&state).context("serializing rule state")?,
        });
    }
    Ok((emitted, saved))
}

/// A rule state as stored; one this version cannot read starts afresh rather than stop
/// ingest: the cost is at most one hold time of delay on open alerts.
pub fn parse_rule_state(id: i32, raw: Value) -> VehicleRuleState {
    serde_json::from_value(raw).unwrap_or_else(|e| {
        tracing::warn!(vehicle = id, error = %e, "unreadable rule state, starting afresh");
        VehicleRuleState::default()
    })
}

/// Per vehicle id: its rule state, tank size and consumption as stored.
pub type Loaded = HashMap<i32, (VehicleRuleState, Option<f32>, Option<f32>)>;

async fn load_states(tx: &Transaction<'_>, ids: &[i32]) -> anyhow::Result<Loaded> {
    let rows = tx
        .query(
            "SELECT id, rule_state, tank_g, km_per_g FROM vehicles WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .context("loading rule state")?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let id: i32 = row.get(0);
            (
                id,
                (parse_rule_state(id, row.get(1)), row.get(2), row.get(3)),
            )
        })
        .collect())
}

async fn save_states(tx: &Transaction<'_>, saved: &[SavedState]) -> anyhow::Result<()> {
    if saved.is_empty() {
        return Ok(());
    }
    let ids: Vec<i32> = saved.iter().map(|s| s.id).collect();
    let states: Vec<&Value> = saved.iter().map(|s| &s.state).collect();
    let km_per_g: Vec<Option<f32>> = saved.iter().map(|s| s.km_per_g).collect();
    tx.execute(
        "UPDATE vehicles v SET rule_state = u.s, learned_km_per_g = COALESCE(u.k, v.learned_km_per_g) \
         FROM unnest($1::int4[], $2::jsonb[], $3::float4[]) AS u(id, s, k) WHERE v.id = u.id",
        &[&ids, &states, &km_per_g],
    )
    .await
    .context("saving rule state")?;
    Ok(())
}

pub(crate) async fn persist_outputs(
    tx: &Transaction<'_>,
    v: &VehicleRow,
    outputs: Vec<Output>,
) -> anyhow::Result<Vec<AlertEvent>> {
    let mut events = Vec::new();
    for o in outputs {
        match o {
            Output::Alert(change) => {
                if let Some(e) = apply_change(tx, v, &change).await? {
                    events.push(e);
                }
            }
            Output::Ride(ride) => insert_ride(tx, v.id, &ride).await?,
        }
    }
    Ok(events)
}

fn severity_str(s: Severity) -> &'static str {
    s.as_str()
}

fn parse_severity(s: &str) -> Severity {
    match s {
        "critical" => Severity::Critical,
        "info" => Severity::Info,
        _ => Severity::Warning,
    }
}

fn parse_state(s: &str) -> AlertState {
    match s {
        "acknowledged" => AlertState::Acknowledged,
        "resolved" => AlertState::Resolved,
        _ => AlertState::Open,
    }
}

fn alert_from_row(row: &Row) -> Alert {
    let code: String = row.get(11);
    let kind: String = row.get(12);
    Alert {
        id: row.get(0),
        vehicle_id: code,
        vehicle_kind: VehicleKind::parse(&kind).unwrap_or(VehicleKind::Bike),
        rule: row.get(1),
        zone: row.get(2),
        state: parse_state(row.get(3)),
        severity: parse_severity(row.get(4)),
        opened_at: row.get(5),
        acknowledged_at: row.get(6),
        resolved_at: row.get(7),
        lat: row.get(8),
        lon: row.get(9),
        // Alerts stored before numbers were tidied at the source print as sent, too.
        details: {
            let mut d: Value = row.get(10);
            crate::domain::tidy_numbers(&mut d);
            d
        },
    }
}

/// The alert of `(vehicle, rule, zone)` in progress, locked.
async fn active_alert(
    tx: &Transaction<'_>,
    vehicle_id: i32,
    rule: &str,
    zone: Option<&str>,
) -> anyhow::Result<Option<Alert>> {
    let sql = format!(
        "SELECT {ALERT_COLS} FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id \
         WHERE a.vehicle_id = $1 AND a.rule = $2 AND COALESCE(a.zone, '') = COALESCE($3, '') \
         AND a.state <> 'resolved' FOR UPDATE OF a"
    );
    let row = tx
        .query_opt(&sql, &[&vehicle_id, &rule, &zone])
        .await
        .context("reading the active alert")?;
    Ok(row.as_ref().map(alert_from_row))
}

async fn record(
    tx: &Transaction<'_>,
    alert: Alert,
    event_type: AlertEventType,
    at: DateTime<Utc>,
    actor: &str,
    note: Option<&str>,
) -> anyhow::Result<AlertEvent> {
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO alert_transitions (id, alert_id, event_type, at, severity, actor, note, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &id,
            &alert.id,
            &event_type.as_str(),
            &at,
            &severity_str(alert.severity),
            &actor,
            &note,
            &alert.details,
        ],
    )
    .await
    .context("recording an alert transition")?;
    Ok(AlertEvent {
        id,
        event_type,
        at,
        alert,
    })
}

async fn apply_change(
    tx: &Transaction<'_>,
    v: &VehicleRow,
    c: &AlertChange,
) -> anyhow::Result<Option<AlertEvent>> {
    let zone = c.zone.as_deref();
    match c.action {
        AlertAction::Open(sev) => {
            let sql = format!(
                "WITH a AS (INSERT INTO alerts (vehicle_id, rule, zone, state, severity, opened_at, lat, lon, details) \
                 VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8) \
                 ON CONFLICT (vehicle_id, rule, (COALESCE(zone, ''))) WHERE state <> 'resolved' DO NOTHING \
                 RETURNING *) SELECT {ALERT_COLS} FROM a JOIN vehicles v ON v.id = a.vehicle_id"
            );
            let row = tx
                .query_opt(
                    &sql,
                    &[
                        &v.id,
                        &c.rule,
                        &zone,
                        &severity_str(sev),
                        &c.at,
                        &c.lat,
                        &c.lon,
                        &c.details,
                    ],
                )
                .await
                .context("opening an alert")?;
            match row {
                Some(row) => {
                    let alert = alert_from_row(&row);
                    Ok(Some(
                        record(tx, alert, AlertEventType::Opened, c.at, ENGINE_ACTOR, None).await?,
                    ))
                }
                // Already in progress: the same incident, at most made more severe.
                None => escalate(tx, v, c, sev).await,
            }
        }
        AlertAction::Escalate(sev) => escalate(tx, v, c, sev).await,
        AlertAction::Deescalate(sev) => deescalate(tx, v, c, sev).await,
        AlertAction::Resolve => {
            let Some(alert) = active_alert(tx, v.id, &c.rule, zone).await? else {
                return Ok(None);
            };
            // A reading measured before an operator's acknowledgement may arrive after it:
            // the alert still never resolves before it was opened or acknowledged.
            let at = [Some(c.at), Some(alert.opened_at), alert.acknowledged_at]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(c.at);
            let alert = resolve_row(tx, alert.id, at).await?;
            Ok(Some(
                record(tx, alert, AlertEventType::Resolved, at, ENGINE_ACTOR, None).await?,
            ))
        }
    }
}

async fn escalate(
    tx: &Transaction<'_>,
    v: &VehicleRow,
    c: &AlertChange,
    sev: Severity,
) -> anyhow::Result<Option<AlertEvent>> {
    change_severity(tx, v, c, sev, AlertEventType::Escalated).await
}

async fn deescalate(
    tx: &Transaction<'_>,
    v: &VehicleRow,
    c: &AlertChange,
    sev: Severity,
) -> anyhow::Result<Option<AlertEvent>> {
    change_severity(tx, v, c, sev, AlertEventType::Deescalated).await
}

/// Move the alert in progress to `sev`, only in the direction the event says: a change the
/// stored alert has already made (a redelivery, another instance) records nothing.
async fn change_severity(
    tx: &Transaction<'_>,
    v: &VehicleRow,
    c: &AlertChange,
    sev: Severity,
    event: AlertEventType,
) -> anyhow::Result<Option<AlertEvent>> {
    let Some(alert) = active_alert(tx, v.id, &c.rule, c.zone.as_deref()).await? else {
        return Ok(None);
    };
    let moves = match event {
        AlertEventType::Deescalated => sev < alert.severity,
        _ => sev > alert.severity,
    };
    if !moves {
        return Ok(None);
    }
    let sql = format!(
        "WITH a AS (UPDATE alerts SET severity = $2, details = $3, lat = COALESCE($4, lat), \
         lon = COALESCE($5, lon) WHERE id = $1 RETURNING *) \
         SELECT {ALERT_COLS} FROM a JOIN vehicles v ON v.id = a.vehicle_id"
    );
    let row = tx
        .query_one(
            &sql,
            &[&alert.id, &severity_str(sev), &c.details, &c.lat, &c.lon],
        )
        .await
        .context("changing an alert's severity")?;
    let alert = alert_from_row(&row);
    Ok(Some(
        record(tx, alert, event, c.at, ENGINE_ACTOR, None).await?,
    ))
}

async fn resolve_row(tx: &Transaction<'_>, id: i64, at: DateTime<Utc>) -> anyhow::Result<Alert> {
    let sql = format!(
        "WITH a AS (UPDATE alerts SET state = 'resolved', resolved_at = $2 WHERE id = $1 RETURNING *) \
         SELECT {ALERT_COLS} FROM a JOIN vehicles v ON v.id = a.vehicle_id"
    );
    let row = tx
        .query_one(&sql, &[&id, &at])
        .await
        .context("resolving an alert")?;
    Ok(alert_from_row(&row))
}

async fn insert_ride(tx: &Transaction<'_>, vehicle_id: i32, r: &Ride) -> anyhow::Result<()> {
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

/// Why an operator's action on an alert was refused.
#[derive(Debug, thiserror::Error)]
pub enum AlertActionError {
    #[error("there is no alert {0}")]
    NotFound(i64),
    #[error("alert {0} is already resolved")]
    AlreadyResolved(i64),
    #[error("alert {0} is already acknowledged")]
    AlreadyAcknowledged(i64),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

async fn locked_alert(tx: &Transaction<'_>, alert_id: i64) -> Result<Alert, AlertActionError> {
    let sql = format!(
        "SELECT {ALERT_COLS} FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id \
         WHERE a.id = $1 FOR UPDATE OF a"
    );
    let row = tx
        .query_opt(&sql, &[&alert_id])
        .await
        .context("reading an alert")?
        .ok_or(AlertActionError::NotFound(alert_id))?;
    let alert = alert_from_row(&row);
    if alert.state == AlertState::Resolved {
        return Err(AlertActionError::AlreadyResolved(alert_id));
    }
    Ok(alert)
}

/// An operator takes charge of an alert: `open` → `acknowledged`.
pub async fn acknowledge(
    tx: &Transaction<'_>,
    alert_id: i64,
    actor: &str,
    note: Option<&str>,
) -> Result<AlertEvent, AlertActionError> {
    let alert = locked_alert(tx, alert_id).await?;
    if alert.state == AlertState::Acknowledged {
        return Err(AlertActionError::AlreadyAcknowledged(alert_id));
    }
    let at = Utc::now().max(alert.opened_at);
    let sql = format!(
        "WITH a AS (UPDATE alerts SET state = 'acknowledged', acknowledged_at = $2 WHERE id = $1 RETURNING *) \
         SELECT {ALERT_COLS} FROM a JOIN vehicles v ON v.id = a.vehicle_id"
    );
    let row = tx
        .query_one(&sql, &[&alert_id, &at])
        .await
        .context("acknowledging an alert")?;
    let alert = alert_from_row(&row);
    Ok(record(tx, alert, AlertEventType::Acknowledged, at, actor, note).await?)
}

/// An operator closes an alert. The rules forget it, so that a condition that still holds
/// (or comes back) is a new incident after its hold time.
pub async fn resolve(
    tx: &Transaction<'_>,
    alert_id: i64,
    actor: &str,
    note: Option<&str>,
) -> Result<AlertEvent, AlertActionError> {
    // Vehicle row first, then the alert: the order ingest takes them in.
    let vehicle_id: i32 = tx
        .query_opt("SELECT vehicle_id FROM alerts WHERE id = $1", &[&alert_id])
        .await
        .context("finding an alert's vehicle")?
        .ok_or(AlertActionError::NotFound(alert_id))?
        .get(0);
    let raw: Value = tx
        .query_one(
            "SELECT rule_state FROM vehicles WHERE id = $1 FOR UPDATE",
            &[&vehicle_id],
        )
        .await
        .context("locking the alert's vehicle")?
        .get(0);
    let alert = locked_alert(tx, alert_id).await?;
    let mut state: VehicleRuleState = serde_json::from_value(raw).unwrap_or_default();
    state.forget(&alert.rule, alert.zone.as_deref());
    tx.execute(
        "UPDATE vehicles SET rule_state = $2 WHERE id = $1",
        &[
            &vehicle_id,
            &serde_json::to_value(&state).context("serializing rule state")?,
        ],
    )
    .await
    .context("saving rule state")?;
    let at = [
        Some(Utc::now()),
        Some(alert.opened_at),
        alert.acknowledged_at,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or_else(Utc::now);
    let alert = resolve_row(tx, alert_id, at).await?;
    Ok(record(tx, alert, AlertEventType::Resolved, at, actor, note).await?)
}

/// The periodic `offline` check over every vehicle that has gone quiet. Vehicles being
/// written right now are skipped (they are not quiet). The caller commits, after handing
/// the events to the webhook outbox in the same transaction.
pub async fn sweep_offline(
    tx: &Transaction<'_>,
    engine: &Engine,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<AlertEvent>> {
    let shortest = VehicleKind::ALL
        .iter()
        .map(|k| engine.rules.thresholds(*k).offline_after_secs)
        .min()
        .unwrap_or(0);
    let cutoff = now - chrono::Duration::seconds(i64::from(shortest));
    let rows = tx
        .query(
            "SELECT id, code, kind, rule_state, tank_g, km_per_g FROM vehicles \
             WHERE (rule_state->>'seen_at')::timestamptz <= $1 \
               AND NOT COALESCE(rule_state->'alerts' ? 'offline', false) \
             ORDER BY id FOR UPDATE SKIP LOCKED",
            &[&cutoff],
        )
        .await
        .context("finding quiet vehicles")?;
    let mut emitted = Vec::new();
    let mut saved = Vec::new();
    for row in rows {
        let code: String = row.get(1);
        let kind: String = row.get(2);
        let (Some(code), Some(kind)) = (VehicleId::parse(&code), VehicleKind::parse(&kind)) else {
            continue;
        };
        let v = VehicleRow {
            id: row.get(0),
            code,
            kind,
        };
        let Ok(mut state) = serde_json::from_value::<VehicleRuleState>(row.get(3)) else {
            continue;
        };
        let info = VehicleInfo {
            kind,
            tank_g: row
                .get::<_, Option<f32>>(4)
                .unwrap_or_else(|| engine.profiles.get(kind).tank_g),
            km_per_g: row.get(5),
        };
        let outputs = engine.on_tick(&mut state, &info, now);
        if outputs.is_empty() {
            continue;
        }
        emitted.extend(persist_outputs(tx, &v, outputs).await?);
        saved.push(SavedState {
            id: v.id,
            km_per_g: state.learned_km_per_g(),
            state: serde_json::to_value(&state).context("serializing rule state")?,
        });
    }
    save_states(tx, &saved).await?;
    Ok(emitted)
}

/// Import (insert or replace by id) the zones of a GeoJSON FeatureCollection drawn in `crs`.
/// All or nothing: a bad feature refuses the whole file.
pub async fn import_zones(client: &Client, geojson: &str, crs: Crs) -> anyhow::Result<usize> {
    let zones = parse_zones(geojson, crs).context("reading the zone file")?;
    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    let mut props = Vec::new();
    let mut geoms = Vec::new();
    for z in &zones {
        ids.push(z.id.clone());
        names.push(z.name.clone());
        kinds.push(z.kind.as_str().to_owned());
        props.push(Value::Object(z.properties.clone()));
        geoms.push(z.geometry_geojson());
    }
    client
        .execute(
            "INSERT INTO zones (id, name, kind, properties, geometry) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[]) \
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind, \
             properties = EXCLUDED.properties, geometry = EXCLUDED.geometry, updated_at = now()",
            &[&ids, &names, &kinds, &props, &geoms],
        )
        .await
        .context("storing zones")?;
    Ok(zones.len())
}

/// Changes whenever a zone is added, replaced or removed: cheap to ask every few seconds.
pub async fn zones_fingerprint(client: &Client) -> anyhow::Result<String> {
    let row = client
        .query_one(
            "SELECT count(*)::text || ':' || coalesce(md5(string_agg(id || '@' || updated_at::text, ',' ORDER BY id)), '') FROM zones",
            &[],
        )
        .await
        .context("reading the zones' fingerprint")?;
    Ok(row.get(0))
}

/// Every stored zone, indexed.
pub async fn load_zones(client: &Client) -> anyhow::Result<ZoneIndex> {
    let rows = client
        .query(
            "SELECT id, name, kind, properties, geometry FROM zones ORDER BY id",
            &[],
        )
        .await
        .context("loading zones")?;
    let mut zones = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get(0);
        let mut props: Value = row.get(3);
        if let Some(p) = props.as_object_mut() {
            p.insert("id".into(), Value::String(id.clone()));
            p.insert("name".into(), Value::String(row.get(1)));
            p.insert("kind".into(), Value::String(row.get(2)));
        }
        let feature = serde_json::json!({
            "type": "Feature",
            "properties": props,
            "geometry": row.get::<_, Value>(4),
        });
        zones.push(
            parse_feature(&feature, Crs::Wgs84).with_context(|| format!("stored zone `{id}`"))?,
        );
    }
    Ok(ZoneIndex::new(zones))
}
