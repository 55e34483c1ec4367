//! `/webhooks`: receivers of alert events. Secrets go in, never out.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::extract::{J, P, Q};
use super::vehicles::{Page, page_limit};
use super::{AppState, Problem};
use crate::notify::{self, WebhookConfig, WebhookError};

fn problem(e: WebhookError) -> Problem {
    match e {
        WebhookError::Invalid { .. } => Problem::bad_request(e.to_string()),
        WebhookError::Conflict(_) | WebhookError::ConfigOwned(_) => {
            Problem::conflict(e.to_string())
        }
        WebhookError::NotFound(_) => Problem::not_found(e.to_string()),
        WebhookError::Unexpected(e) => Problem::from(e),
    }
}

fn webhook_id(raw: &str) -> Result<i64, Problem> {
    raw.parse()
        .map_err(|_| Problem::bad_request(format!("`{raw}` is not a webhook id")))
}

pub(super) async fn list(State(s): State<AppState>) -> Result<impl IntoResponse, Problem> {
    let client = s.pool.get().await?;
    let items = notify::list_webhooks(&client).await?;
    Ok(Json(serde_json::json!({ "items": items })))
}

pub(super) async fn create(
    State(s): State<AppState>,
    J(body): J<WebhookConfig>,
) -> Result<impl IntoResponse, Problem> {
    let client = s.pool.get().await?;
    let hook = notify::create_webhook(&client, &body, &s.config.notify)
        .await
        .map_err(problem)?;
    tracing::info!(webhook = hook.id, name = %hook.name, url = %hook.url, "webhook created");
    Ok((StatusCode::CREATED, Json(hook)))
}

pub(super) async fn delete(
    State(s): State<AppState>,
    P(raw): P<String>,
) -> Result<impl IntoResponse, Problem> {
    let id = webhook_id(&raw)?;
    let client = s.pool.get().await?;
    notify::delete_webhook(&client, id).await.map_err(problem)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveryParams {
    before: Option<i64>,
    limit: Option<i64>,
}

pub(super) async fn deliveries(
    State(s): State<AppState>,
    P(raw): P<String>,
    Q(p): Q<DeliveryParams>,
) -> Result<impl IntoResponse, Problem> {
    let id = webhook_id(&raw)?;
    let limit = page_limit(p.limit, 100)?;
    let client = s.pool.get().await?;
    if notify::get_webhook(&client, id).await?.is_none() {
        return Err(Problem::not_found(format!("no webhook {id}")));
    }
    let items = notify::deliveries(&client, id, limit, p.before).await?;
    Ok(Json(Page::new(items, limit, |d| d.id)))
}
