//! The delivery worker. Each step claims one webhook with due deliveries (`SKIP LOCKED`, so
//! instances sharing a database never work on one webhook at once), sends one message — a
//! single event, or a digest when the robot's rate budget is short — records the attempt and
//! commits. One message per transaction: a crash repeats at most that message, under the same
//! ids.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_postgres::Transaction;

use super::clock::Clock;
use super::config::{Format, NotifyConfig};
use super::message::{self, Context, Outgoing, Target};
use super::netguard::{GuardedResolver, refuse_literal};
use super::outbox::cancel_pending;
use super::policy::{backoff, error_chain, parse_retry_after, robot_error, robot_throttle, secs};
use crate::domain::AlertEvent;

pub struct Worker {
    pool: Pool,
    cfg: NotifyConfig,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    ctx: Context,
}

struct Hook {
    id: i64,
    name: String,
    url: String,
    secret: Option<String>,
    format: Format,
    rate_per_minute: Option<i32>,
}

struct Due {
    id: i64,
    attempts: i32,
    first_attempt_at: Option<DateTime<Utc>>,
    event: Result<AlertEvent, String>,
}

/// What a receiver's answer means for the deliveries it covered.
#[derive(Debug, PartialEq)]
enum Outcome {
    Delivered,
    Gone,
    /// Try again no sooner than this, and leave the whole endpoint alone until then.
    Later(chrono::Duration),
    Failed,
}

impl Worker {
    pub fn new(pool: Pool, cfg: NotifyConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(cfg.http_timeout())
            .connect_timeout(cfg.http_timeout())
            // A redirect could lead into a private network past the URL check.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hyfleet/", env!("CARGO_PKG_VERSION")));
        let http = if cfg.allow_private_networks {
            http
        } else {
            http.dns_resolver(GuardedResolver::shared())
        };
        Ok(Self {
            ctx: Context {
                source: cfg.source.clone(),
                dashboard_url: cfg.dashboard_url.clone(),
            },
            http: http.build().context("building the webhook HTTP client")?,
            pool,
            cfg,
            clock,
        })
    }

    /// Sends everything due now (as far as rate limits allow); returns the messages sent.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let mut sent = 0;
        while self.step().await? {
            sent += 1;
        }
        Ok(sent)
    }

    /// One message to one webhook; `false` when no webhook has anything due.
    pub async fn step(&self) -> anyhow::Result<bool> {
        let mut conn = self.pool.get().await.context("webhook worker connection")?;
        let tx = conn.transaction().await?;
        let now = self.clock.now();
        let Some(hook) = claim(&tx, now).await? else {
            return Ok(false);
        };
        let due = due_deliveries(&tx, hook.id, now, self.cfg.batch_size).await?;
        if due.is_empty() {
            return Ok(false); // raced with another worker between the two queries
        }
        let budget = match hook.rate_per_minute {
            None => usize::MAX,
            Some(rate) => {
                let (used, oldest) = recent_attempts(&tx, hook.id, now).await?;
                let left = (rate as i64 - used).max(0) as usize;
                if left == 0 {
                    // Come back when the oldest request of the window ages out.
                    let until = oldest.unwrap_or(now) + chrono::Duration::seconds(60);
                    pause(&tx, hook.id, until).await?;
                    tx.commit().await?;
                    return Ok(true);
                }
                left
            }
        };
        let (covered, digest) = if hook.format.is_chat() && due.len() > budget {
            let events: Vec<AlertEvent> = due
                .iter()
                .map_while(|d| d.event.as_ref().ok().cloned())
                .collect();
            let n = message::digest_chunks(hook.format, &events)
                .first()
                .copied()
                .unwrap_or(1);
            (&due[..n], n > 1)
        } else {
            (&due[..1], false)
        };
        let (outcome, status, error, took) = self.send(&hook, covered, digest, now).await;
        let ok = outcome == Outcome::Delivered;
        match &outcome {
            Outcome::Delivered => {}
            Outcome::Gone => {
                tracing::warn!(webhook = %hook.name, "receiver answered 410 Gone: webhook disabled")
            }
            _ => {
                tracing::debug!(webhook = %hook.name, ?status, error = error.as_deref(), "delivery attempt failed")
            }
        }
        let event_ids: Vec<uuid::Uuid> = covered
            .iter()
            .filter_map(|d| d.event.as_ref().ok().map(|e| e.id))
            .collect();
        tx.execute(
            "INSERT INTO webhook_attempts
                 (webhook_id, at, event_ids, digest, status_code, error, duration_ms, ok)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &hook.id,
                &now,
                &event_ids,
                &digest,
                &status,
                &error,
                &(took.as_millis().min(i32::MAX as u128) as i32),
                &ok,
            ],
        )
        .await?;
        for d in covered {
            self.settle(&tx, d, &outcome, status, error.as_deref(), now)
                .await?;
        }
        match outcome {
            Outcome::Gone => {
                tx.execute(
                    "UPDATE webhooks SET enabled = false, updated_at = now(),
                         disabled_reason = 'receiver answered 410 Gone'
                     WHERE id = $1",
                    &[&hook.id],
                )
                .await?;
                cancel_pending(&tx, &[hook.id], "webhook disabled: 410 Gone").await?;
            }
            Outcome::Later(wait) => pause(&tx, hook.id, now + wait).await?,
            // An endpoint that is down is tried once per initial retry interval, whatever the
            // number of its deliveries, rather than once per delivery in a burst.
            Outcome::Failed if status.is_none_or(|s| s >= 500) => {
                let until = now + secs(self.cfg.retry_initial_secs);
                pause(&tx, hook.id, until).await?;
            }
            _ => {}
        }
        tx.commit().await.context("committing a delivery attempt")?;
        Ok(true)
    }

    async fn send(
        &self,
        hook: &Hook,
        covered: &[Due],
        digest: bool,
        now: DateTime<Utc>,
    ) -> (Outcome, Option<i32>, Option<String>, Duration) {
        let started = Instant::now();
        let request = match self.build(hook, covered, digest, now) {
            Ok(r) => r,
            Err(e) => {
                return (
                    Outcome::Failed,
                    None,
                    Some(format!("{e:#}")),
                    started.elapsed(),
                );
            }
        };
        let mut req = self.http.post(&request.url).body(request.body);
        for (k, v) in request.headers {
            req = req.header(k, v);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return (
                    Outcome::Failed,
                    None,
                    Some(error_chain(e)),
                    started.elapsed(),
                );
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now));
        let body = resp.bytes().await.unwrap_or_default();
        let code = Some(status.as_u16() as i32);
        let took = started.elapsed();
        if status == reqwest::StatusCode::GONE {
            return (Outcome::Gone, code, Some("410 Gone".into()), took);
        }
        if !status.is_success() {
            let err = Some(format!("HTTP {status}"));
            return match retry_after {
                Some(wait) if status.as_u16() == 429 || status.is_server_error() => {
                    (Outcome::Later(wait), code, err, took)
                }
                _ if status.as_u16() == 429 => (Outcome::Later(robot_throttle()), code, err, took),
                _ => (Outcome::Failed, code, err, took),
            };
        }
        match robot_error(hook.format, &body) {
            None => (Outcome::Delivered, code, None, took),
            Some((msg, true)) => (Outcome::Later(robot_throttle()), code, Some(msg), took),
            Some((msg, false)) => (Outcome::Failed, code, Some(msg), took),
        }
    }

    fn build(
        &self,
        hook: &Hook,
        covered: &[Due],
        digest: bool,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Outgoing> {
        let url = reqwest::Url::parse(&hook.url).context("webhook URL")?;
        refuse_literal(&url, self.cfg.allow_private_networks)?;
        let target = Target {
            url: &hook.url,
            secret: hook.secret.as_deref(),
            format: hook.format,
        };
        if digest {
            let events: Vec<AlertEvent> = covered
                .iter()
                .filter_map(|d| d.event.clone().ok())
                .collect();
            return message::digest(target, &events, &self.ctx, now);
        }
        let event = covered[0]
            .event
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        message::single(target, event, &self.ctx, now)
    }

    /// Records what an attempt means for one delivery: delivered, retried later, or given up.
    async fn settle(
        &self,
        tx: &Transaction<'_>,
        d: &Due,
        outcome: &Outcome,
        status: Option<i32>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let first = d.first_attempt_at.unwrap_or(now);
        let (state, next) = match outcome {
            Outcome::Delivered => ("delivered", None),
            Outcome::Gone => ("cancelled", None),
            Outcome::Later(_) | Outcome::Failed => {
                let deadline = first + chrono::Duration::hours(self.cfg.max_retry_hours.into());
                if now >= deadline || d.event.is_err() {
                    ("failed", None)
                } else {
                    let mut wait = backoff(&self.cfg, d.attempts + 1);
                    if let Outcome::Later(at_least) = outcome {
                        wait = wait.max(*at_least);
                    }
                    // The last try happens at the deadline, not never.
                    ("pending", Some((now + wait).min(deadline)))
                }
            }
        };
        tx.execute(
            "UPDATE webhook_deliveries SET state = $2, attempts = attempts + 1,
                 first_attempt_at = COALESCE(first_attempt_at, $3), next_attempt_at = $4,
                 delivered_at = CASE WHEN $2 = 'delivered' THEN $3 END,
                 last_status = $5, last_error = $6
             WHERE id = $1",
            &[&d.id, &state, &now, &next, &status, &error],
        )
        .await?;
        Ok(())
    }
}

async fn claim(tx: &Transaction<'_>, now: DateTime<Utc>) -> anyhow::Result<Option<Hook>> {
    // The same "due and not waiting behind an earlier delivery of its alert" test as
    // `due_deliveries`, or a webhook whose due rows are all blocked would be claimed forever.
    // NO KEY UPDATE: producers' foreign-key checks (KEY SHARE) on this row must not wait
    // for a slow receiver.
    let row = tx
        .query_opt(
            "SELECT w.id, w.name, w.url, w.secret, w.format, w.rate_per_minute
             FROM webhooks w
             WHERE w.enabled AND (w.paused_until IS NULL OR w.paused_until <= $1)
               AND EXISTS (SELECT 1 FROM webhook_deliveries d
                           WHERE d.webhook_id = w.id AND d.state = 'pending'
                             AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= $1)
                             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                                 WHERE p.webhook_id = d.webhook_id AND p.alert_id = d.alert_id
                                   AND p.state = 'pending' AND p.id < d.id
                                   AND p.next_attempt_at > $1))
             ORDER BY w.id
             LIMIT 1
             FOR NO KEY UPDATE OF w SKIP LOCKED",
            &[&now],
        )
        .await
        .context("claiming a webhook")?;
    let Some(r) = row else { return Ok(None) };
    let format: String = r.get("format");
    Ok(Some(Hook {
        id: r.get("id"),
        name: r.get("name"),
        url: r.get("url"),
        secret: r.get("secret"),
        format: Format::parse(&format).context("unknown webhook format")?,
        rate_per_minute: r.get("rate_per_minute"),
    }))
}

/// Due deliveries in id order, leaving out any whose alert has an earlier delivery still
/// waiting for its retry: a later transition never overtakes an earlier one.
async fn due_deliveries(
    tx: &Transaction<'_>,
    webhook_id: i64,
    now: DateTime<Utc>,
    limit: usize,
) -> anyhow::Result<Vec<Due>> {
    let rows = tx
        .query(
            "SELECT d.id, d.attempts, d.first_attempt_at, e.payload
             FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
             WHERE d.webhook_id = $1 AND d.state = 'pending'
               AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= $2)
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                               WHERE p.webhook_id = d.webhook_id AND p.alert_id = d.alert_id
                                 AND p.state = 'pending' AND p.id < d.id
                                 AND p.next_attempt_at > $2)
             ORDER BY d.id
             LIMIT $3",
            &[&webhook_id, &now, &(limit as i64)],
        )
        .await
        .context("reading due deliveries")?;
    Ok(rows
        .iter()
        .map(|r| Due {
            id: r.get("id"),
            attempts: r.get("attempts"),
            first_attempt_at: r.get("first_attempt_at"),
            event: serde_json::from_value(r.get("payload"))
                .map_err(|e| format!("unreadable outbox payload: {e}")),
        })
        .collect())
}

/// Requests made to a webhook in the minute before `now`, and the time of the oldest.
async fn recent_attempts(
    tx: &Transaction<'_>,
    webhook_id: i64,
    now: DateTime<Utc>,
) -> anyhow::Result<(i64, Option<DateTime<Utc>>)> {
    let r = tx
        .query_one(
            "SELECT count(*), min(at) FROM webhook_attempts
             WHERE webhook_id = $1 AND at > $2::timestamptz - interval '60 seconds' AND at <= $2",
            &[&webhook_id, &now],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

async fn pause(tx: &Transaction<'_>, webhook_id: i64, until: DateTime<Utc>) -> anyhow::Result<()> {
    tx.execute(
        "UPDATE webhooks SET paused_until = $2 WHERE id = $1",
        &[&webhook_id, &until],
    )
    .await?;
    Ok(())
}

/// Runs `cfg.concurrency` delivery loops until `shutdown` completes; each finishes the message
/// it is sending before it stops.
pub fn spawn_worker(
    pool: Pool,
    cfg: NotifyConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    spawn_worker_with_wake(
        pool,
        cfg,
        clock,
        Arc::new(tokio::sync::Notify::new()),
        shutdown,
    )
}

/// As [`spawn_worker`], and an idle loop also wakes when `wake` is notified: producers in this
/// process notify it after committing events, so a delivery starts at once rather than at the
/// next poll (the poll still finds what other instances enqueued).
pub fn spawn_worker_with_wake(
    pool: Pool,
    cfg: NotifyConfig,
    clock: Arc<dyn Clock>,
    wake: Arc<tokio::sync::Notify>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    let loops = cfg.concurrency;
    let poll = cfg.poll_interval();
    let worker = Arc::new(Worker::new(pool, cfg, clock)?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let handles: Vec<_> = (0..loops)
        .map(|_| {
            let worker = worker.clone();
            let wake = wake.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                while !*stop.borrow() {
                    let idle = match worker.step().await {
                        Ok(true) => false,
                        Ok(false) => true,
                        Err(e) => {
                            tracing::error!(
                                error = format!("{e:#}"),
                                "webhook delivery step failed"
                            );
                            true
                        }
                    };
                    if idle {
                        tokio::select! {
                            _ = tokio::time::sleep(poll) => {}
                            _ = wake.notified() => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
            })
        })
        .collect();
    Ok(tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        for h in handles {
            let _ = h.await;
        }
    }))
}
