//! `/alerts`: the list, one alert with its history, and the operator's acknowledge and resolve.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use super::auth::Caller;
use super::extract::{B, P, Q};
use super::vehicles::{Page, page_limit};
use super::{AppState, Problem};
use crate::domain::{Alert, AlertState, Severity, VehicleKind};
use crate::live::LiveEvent;
use crate::rules::store::{AlertActionError, acknowledge, resolve};

const COLS: &str = "a.id, a.rule, a.zone, a.state, a.severity, a.opened_at, a.acknowledged_at, \
    a.resolved_at, a.lat, a.lon, a.details, v.code, v.kind";

fn alert(row: &Row) -> Alert {
    let state = match row.get::<_, &str>(3) {
        "acknowledged" => AlertState::Acknowledged,
        "resolved" => AlertState::Resolved,
        _ => AlertState::Open,
    };
    let severity = match row.get::<_, &str>(4) {
        "critical" => Severity::Critical,
        "info" => Severity::Info,
        _ => Severity::Warning,
    };
    Alert {
        id: row.get(0),
        vehicle_id: row.get(11),
        vehicle_kind: VehicleKind::parse(row.get(12)).unwrap_or(VehicleKind::Bike),
        rule: row.get(1),
        zone: row.get(2),
        state,
        severity,
        opened_at: row.get(5),
        acknowledged_at: row.get(6),
        resolved_at: row.get(7),
        lat: row.get(8),
        lon: row.get(9),
        details: row.get(10),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    /// `open`, `acknowledged`, `resolved`, or `active` (open or acknowledged).
    state: Option<String>,
    rule: Option<String>,
    vehicle: Option<String>,
    severity: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// Newest first by id, so that alerts opened while a client pages land before its first page
/// and never shift the pages it has yet to read.
pub(super) async fn list(
    State(s): State<AppState>,
    Q(p): Q<ListParams>,
) -> Result<impl IntoResponse, Problem> {
    let states: Option<Vec<&str>> = match p.state.as_deref() {
        None => None,
        Some("active") => Some(vec!["open", "acknowledged"]),
        Some(st @ ("open" | "acknowledged" | "resolved")) => Some(vec![st]),
        Some(o) => {
            return Err(Problem::bad_request(format!(
                "state `{o}` is not open, acknowledged, resolved or active"
            )));
        }
    };
    if let Some(sev) = p.severity.as_deref()
        && !matches!(sev, "info" | "warning" | "critical")
    {
        return Err(Problem::bad_request(format!(
            "severity `{sev}` is not info, warning or critical"
        )));
    }
    let limit = page_limit(p.limit, 100)?;
    let sql = format!(
        "SELECT {COLS} FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id
         WHERE ($1::text[] IS NULL OR a.state = ANY($1)) AND ($2::text IS NULL OR a.rule = $2)
           AND ($3::text IS NULL OR v.code = $3) AND ($4::text IS NULL OR a.severity = $4)
           AND ($5::int8 IS NULL OR a.id < $5)
         ORDER BY a.id DESC LIMIT $6"
    );
    let client = s.pool.get().await?;
    let rows = client
        .query(
            &sql,
            &[&states, &p.rule, &p.vehicle, &p.severity, &p.before, &limit],
        )
        .await?;
    let items: Vec<Alert> = rows.iter().map(alert).collect();
    Ok(Json(Page::new(items, limit, |a| a.id)))
}

#[derive(Serialize)]
pub struct Transition {
    pub id: uuid::Uuid,
    pub event_type: String,
    pub at: DateTime<Utc>,
    pub severity: String,
    pub actor: String,
    pub note: Option<String>,
}

#[derive(Serialize)]
pub struct AlertDetail {
    #[serde(flatten)]
    pub alert: Alert,
    pub transitions: Vec<Transition>,
}

fn alert_id(raw: &str) -> Result<i64, Problem> {
    raw.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Problem::bad_request(format!("`{raw}` is not an alert id")))
}

pub(super) async fn one(
    State(s): State<AppState>,
    P(raw): P<String>,
) -> Result<impl IntoResponse, Problem> {
    let id = alert_id(&raw)?;
    let client = s.pool.get().await?;
    let sql = format!(
        "SELECT {COLS} FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id WHERE a.id = $1"
    );
    let row = client
        .query_opt(&sql, &[&id])
        .await?
        .ok_or_else(|| Problem::not_found(format!("there is no alert {id}")))?;
    let transitions = client
        .query(
            "SELECT id, event_type, at, severity, actor, note FROM alert_transitions
             WHERE alert_id = $1 ORDER BY at, event_type",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| Transition {
            id: r.get(0),
            event_type: r.get(1),
            at: r.get(2),
            severity: r.get(3),
            actor: r.get(4),
            note: r.get(5),
        })
        .collect();
    Ok(Json(AlertDetail {
        alert: alert(&row),
        transitions,
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    note: Option<String>,
}

#[derive(Clone, Copy)]
enum Action {
    Acknowledge,
    Resolve,
}

/// An empty body or `null` is fine; a body must be `{"note": "..."}`.
fn action_body(body: &Bytes) -> Result<ActionBody, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ActionBody::default());
    }
    let b: Option<ActionBody> = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body must be {{\"note\": \"…\"}}: {e}")))?;
    let b = b.unwrap_or_default();
    if b.note.as_ref().is_some_and(|n| n.contains('\0')) {
        return Err(Problem::bad_request(super::extract::NUL_IN_BODY));
    }
    if b.note.as_ref().is_some_and(|n| n.len() > 2000) {
        return Err(Problem::bad_request("the note is longer than 2000 bytes"));
    }
    Ok(b)
}

async fn act(
    s: AppState,
    caller: Caller,
    raw: String,
    body: Bytes,
    what: Action,
) -> Result<Json<crate::domain::AlertEvent>, Problem> {
    let id = alert_id(&raw)?;
    let body = action_body(&body)?;
    let mut client = s.pool.get().await?;
    let tx = client.transaction().await?;
    let note = body.note.as_deref();
    let result = match what {
        Action::Acknowledge => acknowledge(&tx, id, &caller.name, note).await,
        Action::Resolve => resolve(&tx, id, &caller.name, note).await,
    };
    let event = result.map_err(|e| match e {
        AlertActionError::NotFound(_) => Problem::not_found(e.to_string()),
        AlertActionError::AlreadyResolved(_) | AlertActionError::AlreadyAcknowledged(_) => {
            Problem::conflict(e.to_string())
        }
        AlertActionError::Unexpected(e) => Problem::from(e),
    })?;
    crate::notify::enqueue(&tx, std::slice::from_ref(&event)).await?;
    tx.commit().await?;
    s.hooks.outbox_wake.notify_one();
    tracing::info!(alert = id, actor = %caller.name, event = event.event_type.as_str(), "alert changed by an operator");
    s.hooks.live.publish(LiveEvent::Alert(event.clone()));
    Ok(Json(event))
}

pub(super) async fn ack(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    P(raw): P<String>,
    B(body): B,
) -> Result<impl IntoResponse, Problem> {
    act(s, caller, raw, body, Action::Acknowledge).await
}

pub(super) async fn close(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    P(raw): P<String>,
    B(body): B,
) -> Result<impl IntoResponse, Problem> {
    act(s, caller, raw, body, Action::Resolve).await
}
