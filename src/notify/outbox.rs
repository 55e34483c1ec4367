//! The outbox and the webhook registry in PostgreSQL: what producers, start-up and the API call.

use std::collections::HashSet;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, Row, Transaction};

use super::config::{Format, NotifyConfig, WebhookConfig, validate_webhook};
use super::netguard::{UrlRefused, check_url};
use crate::domain::{AlertEvent, AlertEventType};

/// Writes `events` to the outbox, with one delivery per subscribed, enabled webhook, inside the
/// producer's transaction: a change that rolls back sends nothing, one that commits is sent
/// even if hyfleet stops right after. Give the events of one alert in the order they happened.
pub async fn enqueue(tx: &Transaction<'_>, events: &[AlertEvent]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let alerts: Vec<i64> = events.iter().map(|e| e.alert.id).collect();
    let ats: Vec<DateTime<Utc>> = events.iter().map(|e| e.at).collect();
    let payloads = events
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    tx.execute(
        "INSERT INTO webhook_events (id, event_type, alert_id, at, payload)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[], $5::jsonb[])
         ON CONFLICT (id) DO NOTHING",
        &[&ids, &types, &alerts, &ats, &payloads],
    )
    .await
    .context("writing alert events to the outbox")?;
    // Serial ids follow insertion order, which is what orders deliveries per alert.
    tx.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, alert_id)
         SELECT w.id, e.id, e.alert_id
         FROM UNNEST($1::uuid[], $2::text[], $3::int8[]) WITH ORDINALITY AS e(id, event_type, alert_id, ord)
         JOIN webhooks w ON w.enabled AND e.event_type = ANY (w.events)
         ORDER BY e.ord, w.id
         ON CONFLICT (webhook_id, event_id) DO NOTHING",
        &[&ids, &types, &alerts],
    )
    .await
    .context("fanning alert events out to webhooks")?;
    Ok(())
}

/// A webhook as the API shows it: never its secret, and its URL with tokens masked.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub has_secret: bool,
    pub events: Vec<String>,
    pub format: Format,
    pub rate_per_minute: Option<i32>,
    pub source: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub paused_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Webhook {
    fn from_row(r: &Row) -> anyhow::Result<Self> {
        let format: String = r.get("format");
        let format = Format::parse(&format).context("unknown webhook format in the database")?;
        Ok(Self {
            id: r.get("id"),
            name: r.get("name"),
            url: redact_url(r.get("url"), format),
            has_secret: r.get::<_, Option<String>>("secret").is_some(),
            events: r.get("events"),
            format,
            rate_per_minute: r.get("rate_per_minute"),
            source: r.get("source"),
            enabled: r.get("enabled"),
            disabled_reason: r.get("disabled_reason"),
            paused_until: r.get("paused_until"),
            created_at: r.get("created_at"),
        })
    }
}

/// The URL with query values masked, and the last path segment too for robots that carry
/// their token there (Feishu, Slack).
pub fn redact_url(url: &str, format: Format) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return "<invalid url>".into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, _)| (k.into_owned(), "***".to_owned()))
        .collect();
    if pairs.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if matches!(format, Format::Feishu | Format::Slack)
        && let Ok(mut segs) = u.path_segments_mut()
    {
        segs.pop().push("***");
    }
    u.into()
}

/// What went wrong with a webhook an operator asked for.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{field} {message}")]
    Invalid { field: String, message: String },
    #[error("a webhook named {0} exists")]
    Conflict(String),
    #[error("webhook {0} is declared in the configuration: change it there")]
    ConfigOwned(i64),
    #[error("no webhook {0}")]
    NotFound(i64),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

fn invalid_url(e: UrlRefused) -> WebhookError {
    WebhookError::Invalid {
        field: "url".into(),
        message: e.to_string(),
    }
}

fn event_names(events: &[AlertEventType]) -> Vec<&'static str> {
    let mut v: Vec<_> = events.iter().map(|e| e.as_str()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Makes the `webhooks` table agree with the configuration: declared webhooks are added or
/// updated, ones no longer declared are disabled (their history stays). Refuses private URLs
/// unless `notify.allow_private_networks`.
pub async fn sync_config_webhooks(
    client: &mut Client,
    hooks: &[WebhookConfig],
    cfg: &NotifyConfig,
) -> Result<(), WebhookError> {
    let mut names = HashSet::new();
    for h in hooks {
        h.validate()
            .map_err(|(field, message)| WebhookError::Invalid { field, message })?;
        if !names.insert(h.name.as_str()) {
            return Err(WebhookError::Conflict(h.name.clone()));
        }
        match check_url(&h.url, cfg.allow_private_networks).await {
            // DNS being down at start must not keep hyfleet down: the client's resolver
            // refuses private answers at sending time anyway.
            Ok(()) | Err(UrlRefused::Unresolved) => {}
            Err(e) => return Err(invalid_url(e)),
        }
    }
    let tx = client.transaction().await.context("starting sync")?;
    for h in hooks {
        let updated = tx
            .query_opt(
                "INSERT INTO webhooks (name, url, secret, events, format, rate_per_minute, source)
                 VALUES ($1, $2, $3, $4, $5, $6, 'config')
                 ON CONFLICT (name) DO UPDATE SET
                     url = EXCLUDED.url, secret = EXCLUDED.secret, events = EXCLUDED.events,
                     format = EXCLUDED.format, rate_per_minute = EXCLUDED.rate_per_minute,
                     updated_at = now(),
                     -- A new URL is a new endpoint: a 410 from the old one no longer holds.
                     enabled = webhooks.enabled OR webhooks.url <> EXCLUDED.url
                         OR webhooks.disabled_reason = 'removed from configuration',
                     disabled_reason = CASE
                         WHEN webhooks.url <> EXCLUDED.url
                           OR webhooks.disabled_reason = 'removed from configuration' THEN NULL
                         ELSE webhooks.disabled_reason END
                 WHERE webhooks.source = 'config'
                 RETURNING id",
                &[
                    &h.name,
                    &h.url,
                    &h.secret.as_deref().filter(|s| !s.is_empty()),
                    &event_names(&h.events),
                    &h.format.as_str(),
                    &h.effective_rate().map(|r| r as i32),
                ],
            )
            .await
            .context("upserting a configured webhook")?;
        if updated.is_none() {
            return Err(WebhookError::Conflict(h.name.clone()));
        }
    }
    let names: Vec<&str> = names.into_iter().collect();
    let removed: Vec<i64> = tx
        .query(
            "UPDATE webhooks SET enabled = false, disabled_reason = 'removed from configuration',
                 updated_at = now()
             WHERE source = 'config' AND enabled AND NOT (name = ANY ($1)) RETURNING id",
            &[&names],
        )
        .await
        .context("disabling webhooks no longer configured")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    cancel_pending(&tx, &removed, "webhook removed from configuration").await?;
    tx.commit().await.context("committing sync")?;
    Ok(())
}

pub(crate) async fn cancel_pending(
    tx: &Transaction<'_>,
    webhook_ids: &[i64],
    why: &str,
) -> anyhow::Result<()> {
    tx.execute(
        "UPDATE webhook_deliveries SET state = 'cancelled', last_error = $2, next_attempt_at = NULL
         WHERE webhook_id = ANY ($1) AND state = 'pending'",
        &[&webhook_ids, &why],
    )
    .await
    .context("cancelling pending deliveries")?;
    Ok(())
}

/// Adds a webhook for the API (`source = 'api'`).
pub async fn create_webhook(
    client: &Client,
    h: &WebhookConfig,
    cfg: &NotifyConfig,
) -> Result<Webhook, WebhookError> {
    validate_webhook(
        &h.name,
        &h.url,
        h.secret.as_deref(),
        &h.events,
        h.format,
        h.rate_per_minute,
    )
    .map_err(|(field, message)| WebhookError::Invalid { field, message })?;
    check_url(&h.url, cfg.allow_private_networks)
        .await
        .map_err(invalid_url)?;
    let row = client
        .query_opt(
            "INSERT INTO webhooks (name, url, secret, events, format, rate_per_minute, source)
             VALUES ($1, $2, $3, $4, $5, $6, 'api')
             ON CONFLICT (name) DO NOTHING
             RETURNING *",
            &[
                &h.name,
                &h.url,
                &h.secret.as_deref().filter(|s| !s.is_empty()),
                &event_names(&h.events),
                &h.format.as_str(),
                &h.effective_rate().map(|r| r as i32),
            ],
        )
        .await
        .context("inserting a webhook")?
        .ok_or_else(|| WebhookError::Conflict(h.name.clone()))?;
    Ok(Webhook::from_row(&row)?)
}

pub async fn list_webhooks(client: &Client) -> anyhow::Result<Vec<Webhook>> {
    client
        .query("SELECT * FROM webhooks ORDER BY id", &[])
        .await
        .context("listing webhooks")?
        .iter()
        .map(Webhook::from_row)
        .collect()
}

pub async fn get_webhook(client: &Client, id: i64) -> anyhow::Result<Option<Webhook>> {
    client
        .query_opt("SELECT * FROM webhooks WHERE id = $1", &[&id])
        .await
        .context("reading a webhook")?
        .as_ref()
        .map(Webhook::from_row)
        .transpose()
}

/// Deletes a webhook added through the API, with its deliveries and attempts.
pub async fn delete_webhook(client: &Client, id: i64) -> Result<(), WebhookError> {
    let row = client
        .query_opt("SELECT source FROM webhooks WHERE id = $1", &[&id])
        .await
        .context("reading a webhook")?
        .ok_or(WebhookError::NotFound(id))?;
    if row.get::<_, &str>(0) == "config" {
        return Err(WebhookError::ConfigOwned(id));
    }
    client
        .execute("DELETE FROM webhooks WHERE id = $1", &[&id])
        .await
        .context("deleting a webhook")?;
    Ok(())
}

/// One event's journey to one webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub alert_id: i64,
    /// `pending`, `delivered`, `failed` (gave up) or `cancelled` (webhook disabled).
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Newest first; `before` (a delivery id) pages back.
pub async fn deliveries(
    client: &Client,
    webhook_id: i64,
    limit: i64,
    before: Option<i64>,
) -> anyhow::Result<Vec<Delivery>> {
    let rows = client
        .query(
            "SELECT d.*, e.event_type FROM webhook_deliveries d
             JOIN webhook_events e ON e.id = d.event_id
             WHERE d.webhook_id = $1 AND ($3::int8 IS NULL OR d.id < $3)
             ORDER BY d.id DESC LIMIT $2",
            &[&webhook_id, &limit, &before],
        )
        .await
        .context("listing deliveries")?;
    Ok(rows
        .iter()
        .map(|r| Delivery {
            id: r.get("id"),
            event_id: r.get("event_id"),
            event_type: r.get("event_type"),
            alert_id: r.get("alert_id"),
            state: r.get("state"),
            attempts: r.get("attempts"),
            next_attempt_at: r.get("next_attempt_at"),
            first_attempt_at: r.get("first_attempt_at"),
            delivered_at: r.get("delivered_at"),
            last_status: r.get("last_status"),
            last_error: r.get("last_error"),
            created_at: r.get("created_at"),
        })
        .collect())
}

/// One request made to a webhook; a digest covers several events.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub event_ids: Vec<uuid::Uuid>,
    pub digest: bool,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub ok: bool,
}

/// Newest first; `before` (an attempt id) pages back.
pub async fn attempts(
    client: &Client,
    webhook_id: i64,
    limit: i64,
    before: Option<i64>,
) -> anyhow::Result<Vec<Attempt>> {
    let rows = client
        .query(
            "SELECT * FROM webhook_attempts
             WHERE webhook_id = $1 AND ($3::int8 IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $2",
            &[&webhook_id, &limit, &before],
        )
        .await
        .context("listing attempts")?;
    Ok(rows
        .iter()
        .map(|r| Attempt {
            id: r.get("id"),
            at: r.get("at"),
            event_ids: r.get("event_ids"),
            digest: r.get("digest"),
            status_code: r.get("status_code"),
            error: r.get("error"),
            duration_ms: r.get("duration_ms"),
            ok: r.get("ok"),
        })
        .collect())
}
