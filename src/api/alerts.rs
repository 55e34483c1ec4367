//! `/alerts`: the list, one alert with its history, and the operator's acknowledge and resolve.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::extract::{B, P, Q};
use super::vehicles::{Page, page_limit};
use super::{AppState, Problem};
use crate::domain::{Alert, AlertState, Severity};
use crate::rules::forget;
use crate::store::alerts::{self as repo, ActionError};
use crate::store::jsonb::JsonText;

/// Which alerts to list, besides the page.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum StateParam {
    Open,
    Acknowledged,
    Resolved,
    /// Open or acknowledged.
    Active,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    state: Option<StateParam>,
    rule: Option<String>,
    vehicle: Option<String>,
    severity: Option<Severity>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// Newest first (see [`repo::list`]).
pub(super) async fn list(
    State(s): State<AppState>,
    Q(p): Q<ListParams>,
) -> Result<impl IntoResponse, Problem> {
    let states = p.state.map(|st| match st {
        StateParam::Open => vec![AlertState::Open],
        StateParam::Acknowledged => vec![AlertState::Acknowledged],
        StateParam::Resolved => vec![AlertState::Resolved],
        StateParam::Active => vec![AlertState::Open, AlertState::Acknowledged],
    });
    let filter = repo::Filter {
        states,
        rule: p.rule,
        vehicle: p.vehicle,
        severity: p.severity,
        before: p.before,
        limit: page_limit(p.limit, 100)?,
    };
    let client = s.pool.get().await?;
    let items = repo::list(&client, &filter).await?;
    Ok(Json(Page::new(items, filter.limit, |a| a.id)))
}

#[derive(Serialize)]
pub struct AlertDetail {
    #[serde(flatten)]
    pub alert: Alert,
    pub transitions: Vec<repo::Transition>,
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
    let alert = repo::get(&client, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("there is no alert {id}")))?;
    let transitions = repo::transitions(&client, id).await?;
    Ok(Json(AlertDetail { alert, transitions }))
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
        Action::Acknowledge => repo::acknowledge(&tx, id, &caller.name, note).await,
        Action::Resolve => {
            repo::resolve(&tx, id, &caller.name, note, |a, stored| {
                let rule_state = forget(&a.vehicle_id, &stored.0, &a.rule, a.zone.as_deref())?;
                Ok(JsonText(rule_state))
            })
            .await
        }
    };
    let event = result.map_err(|e| match e {
        ActionError::NotFound(_) => Problem::not_found(e.to_string()),
        ActionError::AlreadyResolved(_) | ActionError::AlreadyAcknowledged(_) => {
            Problem::conflict(e.to_string())
        }
        ActionError::Unexpected(e) => Problem::from(e),
    })?;
    tracing::info!(alert = id, actor = %caller.name, event = event.event_type.as_str(), "alert changed by an operator");
    let enqueued = s.alerts.enqueue(&tx, vec![event.clone()]).await?;
    tx.commit().await?;
    s.alerts.announce(enqueued);
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
