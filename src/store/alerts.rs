//! The alerts repository: the one row mapper for `alerts`, and the lifecycle its rows go
//! through (open, change severity, acknowledge, resolve), each change recorded as a transition
//! in `alert_transitions` and returned as the [`AlertEvent`] that webhooks and the live feed
//! carry. Used by ingest (what the rules decided), the offline sweep and the operator API.
//!
//! At most one alert per `(vehicle, rule, zone)` is in progress: a unique partial index says
//! so, and every change here locks the row it changes.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Transaction};
use uuid::Uuid;

use super::jsonb::JsonText;
use crate::domain::{
    Alert, AlertAction, AlertChange, AlertEvent, AlertEventType, AlertState, Severity, VehicleKind,
};

/// Who the rules' own transitions are attributed to.
const RULES_ACTOR: &str = "rules";

/// The columns [`from_row`] reads, from `alerts a JOIN vehicles v`.
pub const COLUMNS: &str = "a.id, a.rule, a.zone, a.state, a.severity, a.opened_at, \
    a.acknowledged_at, a.resolved_at, a.lat, a.lon, a.details, v.code, v.kind";

/// An alert from a row of [`COLUMNS`]. The database's checks allow only the states,
/// severities and kinds the enums name; anything else is an error, never a default.
pub fn from_row(row: &Row) -> anyhow::Result<Alert> {
    fn named<T>(row: &Row, i: usize, parse: fn(&str) -> Option<T>) -> anyhow::Result<T> {
        let text: &str = row.try_get(i)?;
        parse(text).with_context(|| format!("alerts: unknown value `{text}` in column {i}"))
    }
    let mut details: Value = row.try_get(10)?;
    // Alerts stored before numbers were tidied at the source print as sent, too.
    crate::domain::tidy_numbers(&mut details);
    Ok(Alert {
        id: row.try_get(0)?,
        vehicle_id: row.try_get(11)?,
        vehicle_kind: named(row, 12, VehicleKind::parse)?,
        rule: row.try_get(1)?,
        zone: row.try_get(2)?,
        state: named(row, 3, AlertState::parse)?,
        severity: named(row, 4, Severity::parse)?,
        opened_at: row.try_get(5)?,
        acknowledged_at: row.try_get(6)?,
        resolved_at: row.try_get(7)?,
        lat: row.try_get(8)?,
        lon: row.try_get(9)?,
        details,
    })
}

/// Apply what the rules decided for vehicle `vehicle_id`. Returns the transition, or nothing
/// when the stored alert already is where the change would take it (a redelivery, another
/// instance, an operator's resolve).
pub async fn apply(
    tx: &Transaction<'_>,
    vehicle_id: i32,
    c: &AlertChange,
) -> anyhow::Result<Option<AlertEvent>> {
    match c.action {
        AlertAction::Open(sev) => match open(tx, vehicle_id, c, sev).await? {
            Some(alert) => Ok(Some(
                record(tx, alert, AlertEventType::Opened, c.at, RULES_ACTOR, None).await?,
            )),
            // Already in progress: the same incident, at most made more severe.
            None => change_severity(tx, vehicle_id, c, sev, AlertEventType::Escalated).await,
        },
        AlertAction::Escalate(sev) => {
            change_severity(tx, vehicle_id, c, sev, AlertEventType::Escalated).await
        }
        AlertAction::Deescalate(sev) => {
            change_severity(tx, vehicle_id, c, sev, AlertEventType::Deescalated).await
        }
        AlertAction::Resolve => {
            let Some(alert) = in_progress(tx, vehicle_id, &c.rule, c.zone.as_deref()).await? else {
                return Ok(None);
            };
            // A reading measured before an operator's acknowledgement may arrive after it:
            // the alert still never resolves before it was opened or acknowledged.
            let at = not_before(c.at, &alert);
            let alert = set_resolved(tx, alert.id, at).await?;
            Ok(Some(
                record(tx, alert, AlertEventType::Resolved, at, RULES_ACTOR, None).await?,
            ))
        }
    }
}

/// Why an operator's action on an alert was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("there is no alert {0}")]
    NotFound(i64),
    #[error("alert {0} is already resolved")]
    AlreadyResolved(i64),
    #[error("alert {0} is already acknowledged")]
    AlreadyAcknowledged(i64),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// An operator takes charge of an alert: `open` → `acknowledged`.
pub async fn acknowledge(
    tx: &Transaction<'_>,
    alert_id: i64,
    actor: &str,
    note: Option<&str>,
) -> Result<AlertEvent, ActionError> {
    let alert = locked(tx, alert_id).await?;
    if alert.state == AlertState::Acknowledged {
        return Err(ActionError::AlreadyAcknowledged(alert_id));
    }
    let at = Utc::now().max(alert.opened_at);
    let alert = written(
        tx,
        "UPDATE alerts SET state = 'acknowledged', acknowledged_at = $2 WHERE id = $1",
        &[&alert_id, &at],
    )
    .await
    .context("acknowledging an alert")?
    .context("the locked alert is gone")?;
    Ok(record(tx, alert, AlertEventType::Acknowledged, at, actor, note).await?)
}

/// An operator closes an alert. `forget` is given the alert and its vehicle's stored rule
/// state and returns the state to store instead: the rules forget the incident, so that a
/// condition that still holds (or comes back) is a new one after its hold time.
pub async fn resolve(
    tx: &Transaction<'_>,
    alert_id: i64,
    actor: &str,
    note: Option<&str>,
    forget: impl FnOnce(&Alert, JsonText) -> anyhow::Result<JsonText>,
) -> Result<AlertEvent, ActionError> {
    // The vehicle's row first, then the alert's: the order ingest takes them in.
    let vehicle_id: i32 = tx
        .query_opt("SELECT vehicle_id FROM alerts WHERE id = $1", &[&alert_id])
        .await
        .context("finding an alert's vehicle")?
        .ok_or(ActionError::NotFound(alert_id))?
        .get(0);
    let state = super::vehicles::lock_rule_state(tx, vehicle_id).await?;
    let alert = locked(tx, alert_id).await?;
    let state = forget(&alert, state)?;
    super::vehicles::set_rule_state(tx, vehicle_id, &state).await?;
    let at = not_before(Utc::now(), &alert);
    let alert = set_resolved(tx, alert_id, at).await?;
    Ok(record(tx, alert, AlertEventType::Resolved, at, actor, note).await?)
}

/// One alert, if there is one.
pub async fn get(client: &Client, alert_id: i64) -> anyhow::Result<Option<Alert>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id WHERE a.id = $1"
    );
    let row = client
        .query_opt(&sql, &[&alert_id])
        .await
        .context("reading an alert")?;
    row.as_ref().map(from_row).transpose()
}

/// Which alerts [`list`] returns: every condition given must hold.
#[derive(Debug, Default)]
pub struct Filter {
    pub states: Option<Vec<AlertState>>,
    pub rule: Option<String>,
    pub vehicle: Option<String>,
    pub severity: Option<Severity>,
    /// Only alerts with a smaller id (the page cursor).
    pub before: Option<i64>,
    pub limit: i64,
}

/// Newest first by id, so that alerts opened while a client pages land before its first page
/// and never shift the pages it has yet to read.
pub async fn list(client: &Client, f: &Filter) -> anyhow::Result<Vec<Alert>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id
         WHERE ($1::text[] IS NULL OR a.state = ANY($1)) AND ($2::text IS NULL OR a.rule = $2)
           AND ($3::text IS NULL OR v.code = $3) AND ($4::text IS NULL OR a.severity = $4)
           AND ($5::int8 IS NULL OR a.id < $5)
         ORDER BY a.id DESC LIMIT $6"
    );
    let states: Option<Vec<&str>> = f
        .states
        .as_ref()
        .map(|s| s.iter().map(|s| s.as_str()).collect());
    let severity = f.severity.map(Severity::as_str);
    let rows = client
        .query(
            &sql,
            &[&states, &f.rule, &f.vehicle, &severity, &f.before, &f.limit],
        )
        .await
        .context("listing alerts")?;
    rows.iter().map(from_row).collect()
}

/// One transition of an alert, as its history shows it.
#[derive(Debug, Serialize)]
pub struct Transition {
    pub id: Uuid,
    pub event_type: AlertEventType,
    pub at: DateTime<Utc>,
    pub severity: Severity,
    pub actor: String,
    pub note: Option<String>,
}

/// An alert's transitions, oldest first.
pub async fn transitions(client: &Client, alert_id: i64) -> anyhow::Result<Vec<Transition>> {
    let rows = client
        .query(
            "SELECT id, event_type, at, severity, actor, note FROM alert_transitions
             WHERE alert_id = $1 ORDER BY at, event_type",
            &[&alert_id],
        )
        .await
        .context("reading an alert's transitions")?;
    rows.iter()
        .map(|r| {
            let event: &str = r.try_get(1)?;
            let severity: &str = r.try_get(3)?;
            Ok(Transition {
                id: r.try_get(0)?,
                event_type: AlertEventType::parse(event)
                    .with_context(|| format!("alert_transitions: unknown event `{event}`"))?,
                at: r.try_get(2)?,
                severity: Severity::parse(severity)
                    .with_context(|| format!("alert_transitions: unknown severity `{severity}`"))?,
                actor: r.try_get(4)?,
                note: r.try_get(5)?,
            })
        })
        .collect()
}

/// `at`, or later if the alert was opened or acknowledged after it.
fn not_before(at: DateTime<Utc>, alert: &Alert) -> DateTime<Utc> {
    [Some(at), Some(alert.opened_at), alert.acknowledged_at]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(at)
}

/// A new alert, unless one of `(vehicle, rule, zone)` is in progress.
async fn open(
    tx: &Transaction<'_>,
    vehicle_id: i32,
    c: &AlertChange,
    sev: Severity,
) -> anyhow::Result<Option<Alert>> {
    written(
        tx,
        "INSERT INTO alerts (vehicle_id, rule, zone, state, severity, opened_at, lat, lon, details) \
         VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8) \
         ON CONFLICT (vehicle_id, rule, (COALESCE(zone, ''))) WHERE state <> 'resolved' DO NOTHING",
        &[
                &vehicle_id,
                &c.rule,
                &c.zone,
                &sev.as_str(),
                &c.at,
                &c.lat,
                &c.lon,
            &c.details,
        ],
    )
    .await
    .context("opening an alert")
}

/// The alert of `(vehicle, rule, zone)` in progress, locked.
async fn in_progress(
    tx: &Transaction<'_>,
    vehicle_id: i32,
    rule: &str,
    zone: Option<&str>,
) -> anyhow::Result<Option<Alert>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id \
         WHERE a.vehicle_id = $1 AND a.rule = $2 AND COALESCE(a.zone, '') = COALESCE($3, '') \
         AND a.state <> 'resolved' FOR UPDATE OF a"
    );
    let row = tx
        .query_opt(&sql, &[&vehicle_id, &rule, &zone])
        .await
        .context("reading the active alert")?;
    row.as_ref().map(from_row).transpose()
}

/// An alert that is not resolved, locked.
async fn locked(tx: &Transaction<'_>, alert_id: i64) -> Result<Alert, ActionError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id \
         WHERE a.id = $1 FOR UPDATE OF a"
    );
    let row = tx
        .query_opt(&sql, &[&alert_id])
        .await
        .context("reading an alert")?
        .ok_or(ActionError::NotFound(alert_id))?;
    let alert = from_row(&row)?;
    if alert.state == AlertState::Resolved {
        return Err(ActionError::AlreadyResolved(alert_id));
    }
    Ok(alert)
}

/// Move the alert in progress to `sev`, only in the direction `event` says: a change the
/// stored alert has already made records nothing.
async fn change_severity(
    tx: &Transaction<'_>,
    vehicle_id: i32,
    c: &AlertChange,
    sev: Severity,
    event: AlertEventType,
) -> anyhow::Result<Option<AlertEvent>> {
    let Some(alert) = in_progress(tx, vehicle_id, &c.rule, c.zone.as_deref()).await? else {
        return Ok(None);
    };
    let moves = match event {
        AlertEventType::Deescalated => sev < alert.severity,
        _ => sev > alert.severity,
    };
    if !moves {
        return Ok(None);
    }
    let alert = written(
        tx,
        "UPDATE alerts SET severity = $2, details = $3, lat = COALESCE($4, lat), \
         lon = COALESCE($5, lon) WHERE id = $1",
        &[&alert.id, &sev.as_str(), &c.details, &c.lat, &c.lon],
    )
    .await
    .context("changing an alert's severity")?
    .context("the locked alert is gone")?;
    Ok(Some(
        record(tx, alert, event, c.at, RULES_ACTOR, None).await?,
    ))
}

async fn set_resolved(tx: &Transaction<'_>, id: i64, at: DateTime<Utc>) -> anyhow::Result<Alert> {
    written(
        tx,
        "UPDATE alerts SET state = 'resolved', resolved_at = $2 WHERE id = $1",
        &[&id, &at],
    )
    .await
    .context("resolving an alert")?
    .context("the locked alert is gone")
}

/// Run `statement`, an INSERT or UPDATE of `alerts` (without RETURNING), and read back the
/// alert it wrote, if it wrote one.
async fn written(
    tx: &Transaction<'_>,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
) -> anyhow::Result<Option<Alert>> {
    let sql = format!(
        "WITH a AS ({statement} RETURNING *) \
         SELECT {COLUMNS} FROM a JOIN vehicles v ON v.id = a.vehicle_id"
    );
    let row = tx.query_opt(&sql, params).await?;
    row.as_ref().map(from_row).transpose()
}

/// Store the transition `alert` just went through; it is what webhooks are sent.
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
            &alert.severity.as_str(),
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
