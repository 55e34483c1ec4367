//! The delivery worker. Each step claims one webhook with due deliveries (`SKIP LOCKED`, so
//! instances sharing a database never work on one webhook at once), sends one message — a
//! single event, or a digest when the robot's rate budget is short — records the attempt and
//! commits. One message per transaction: a crash repeats at most that message, under the same
//! ids.
//!
//! No receiver can hold the others back: each request, its answer included, ends within
//! `notify.http_timeout_secs` and reads at most [`MAX_ANSWER_BYTES`]; a webhook is worked on by
//! one loop at a time, the least recently served first; and some loops serve only webhooks whose
//! last attempt succeeded, so receivers that fail or hang share the rest. A panic while sending
//! is caught: the delivery is marked failed with the reason, counted, and the loop goes on.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::FutureExt as _;
use tokio::task::JoinHandle;
use tokio_postgres::Transaction;

use super::clock::Clock;
use super::config::{Format, NotifyConfig};
use super::message::{self, Context, Outgoing, Target};
use super::netguard::{GuardedResolver, refuse_literal};
use super::outbox::cancel_pending;
use super::policy::{backoff, error_chain, later, parse_retry_after, robot_error, robot_throttle};
use crate::domain::AlertEvent;
use crate::shutdown::Shutdown;

/// Most bytes of a receiver's answer that are read: enough for a chat robot's error code.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024;

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Deliveries that panicked inside hyfleet since start (`hyfleet_webhook_panics_total`).
pub fn delivery_panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Which webhooks a delivery loop may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Any,
    /// Only webhooks whose last attempt succeeded (or that have none yet).
    Healthy,
}

/// The deliveries a step holds, so that the loop can settle them if the step panics.
#[derive(Debug, Default)]
struct InHand(Mutex<Option<Claimed>>);

#[derive(Debug)]
struct Claimed {
    webhook_id: i64,
    deliveries: Vec<i64>,
    events: Vec<uuid::Uuid>,
}

impl InHand {
    fn set(&self, c: Option<Claimed>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }

    fn take(&self) -> Option<Claimed> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

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
        // No client timeout: `send` puts one deadline over the whole exchange, body included.
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.http_timeout())
            // Proxies from the environment (HTTP_PROXY, ...) would resolve webhook hosts
            // themselves, past the resolver below that keeps private networks out.
            .no_proxy()
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
                language: cfg.language,
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
        self.step_in(Lane::Any, &InHand::default()).await
    }

    /// [`Worker::step`] as a delivery loop runs it: a panic inside is caught, logged, counted,
    /// and the deliveries it held are marked failed with the reason.
    async fn supervised_step(&self, lane: Lane) -> anyhow::Result<bool> {
        let in_hand = InHand::default();
        match AssertUnwindSafe(self.step_in(lane, &in_hand))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                PANICS.fetch_add(1, Ordering::Relaxed);
                let claimed = in_hand.take();
                tracing::error!(
                    panic = %what,
                    webhook = claimed.as_ref().map(|c| c.webhook_id),
                    "webhook delivery panicked: its deliveries are marked failed"
                );
                if let Some(c) = claimed {
                    // Recording reads the same clock and database: a fault there must not
                    // take the loop down either.
                    match AssertUnwindSafe(self.fail_after_panic(&c, &what))
                        .catch_unwind()
                        .await
                    {
                        Ok(r) => r.context("recording a delivery that panicked")?,
                        Err(_) => anyhow::bail!("recording a delivery that panicked panicked too"),
                    }
                }
                // Like an error: the loop rests a poll interval rather than spin.
                Ok(false)
            }
        }
    }

    /// The step's transaction rolled back with the panic; this records the attempt and gives
    /// the deliveries up, so that they cannot take the next loop down with them.
    async fn fail_after_panic(&self, c: &Claimed, what: &str) -> anyhow::Result<()> {
        let error = format!("hyfleet failed while sending (panic: {what})");
        let mut conn = self.pool.get().await.context("webhook worker connection")?;
        let tx = conn.transaction().await?;
        let now = self.clock.now();
        tx.execute(
            "INSERT INTO webhook_attempts
                 (webhook_id, at, event_ids, digest, status_code, error, duration_ms, ok)
             VALUES ($1, $2, $3, $4, NULL, $5, 0, false)",
            &[
                &c.webhook_id,
                &now,
                &c.events,
                &(c.events.len() > 1),
                &error,
            ],
        )
        .await?;
        tx.execute(
            "UPDATE webhook_deliveries SET state = 'failed', attempts = attempts + 1,
                 first_attempt_at = COALESCE(first_attempt_at, $2), next_attempt_at = NULL,
                 last_status = NULL, last_error = $3
             WHERE id = ANY ($1) AND state = 'pending'",
            &[&c.deliveries, &now, &error],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn step_in(&self, lane: Lane, in_hand: &InHand) -> anyhow::Result<bool> {
        let mut conn = self.pool.get().await.context("webhook worker connection")?;
        let tx = conn.transaction().await?;
        let now = self.clock.now();
        let Some(hook) = claim(&tx, now, lane).await? else {
            return Ok(false);
        };
        let due = due_deliveries(&tx, hook.id, now, self.cfg.batch_size).await?;
        if due.is_empty() {
            return Ok(false); // raced with another worker between the two queries
        }
        let Some(budget) = requests_left(&tx, &hook, now).await? else {
            tx.commit().await?;
            return Ok(true); // paused until the rate allows
        };
        let (covered, digest) = cover(&hook, &due, budget);
        let event_ids: Vec<uuid::Uuid> = covered
            .iter()
            .filter_map(|d| d.event.as_ref().ok().map(|e| e.id))
            .collect();
        in_hand.set(Some(Claimed {
            webhook_id: hook.id,
            deliveries: covered.iter().map(|d| d.id).collect(),
            events: event_ids.clone(),
        }));
        let (outcome, status, error, took) = self.send(&hook, covered, digest, now).await;
        // Waits count from the answer: a slow one must not shorten them.
        let answered = self.clock.now().max(now);
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
        let attempt = Attempted {
            webhook_id: hook.id,
            at: now,
            event_ids: &event_ids,
            digest,
            status,
            error: error.as_deref(),
            took,
            ok,
        };
        attempt.record(&tx).await?;
        for d in covered {
            self.settle(&tx, d, &outcome, status, error.as_deref(), now, answered)
                .await?;
        }
        after_answer(&tx, hook.id, &outcome, answered).await?;
        tx.commit().await.context("committing a delivery attempt")?;
        in_hand.set(None);
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
        // One deadline over resolving, connecting, sending and the whole answer: a receiver
        // that trickles its body cannot hold the loop past it.
        let limit = self.cfg.http_timeout();
        match tokio::time::timeout(limit, self.exchange(req, hook.format, now)).await {
            Ok((outcome, status, error)) => (outcome, status, error, started.elapsed()),
            Err(_) => (
                Outcome::Failed,
                None,
                Some(format!(
                    "no complete answer within {} s",
                    self.cfg.http_timeout_secs
                )),
                started.elapsed(),
            ),
        }
    }

    /// Sends the request and reads what the answer means.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        format: Format,
        now: DateTime<Utc>,
    ) -> (Outcome, Option<i32>, Option<String>) {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return (Outcome::Failed, None, Some(error_chain(e))),
        };
        let status = resp.status();
        let code = Some(status.as_u16() as i32);
        if status == reqwest::StatusCode::GONE {
            return (Outcome::Gone, code, Some("410 Gone".into()));
        }
        if !status.is_success() {
            let err = Some(format!("HTTP {status}"));
            // Only these two answers ask for a pause (RFC 9110 §10.2.3); elsewhere the header
            // means nothing and is not read.
            let retry_after = match status.as_u16() {
                429 | 503 => resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, now)),
                _ => None,
            };
            return match retry_after {
                Some(wait) => (Outcome::Later(wait), code, err),
                None if status.as_u16() == 429 => (Outcome::Later(robot_throttle()), code, err),
                None => (Outcome::Failed, code, err),
            };
        }
        // Only chat robots put a verdict in the body; nobody else's is read at all.
        if !format.is_chat() {
            return (Outcome::Delivered, code, None);
        }
        let body = match read_capped(resp, MAX_ANSWER_BYTES).await {
            Ok(b) => b,
            Err(e) => return (Outcome::Failed, code, Some(error_chain(e))),
        };
        match robot_error(format, &body) {
            None => (Outcome::Delivered, code, None),
            Some((msg, true)) => (Outcome::Later(robot_throttle()), code, Some(msg)),
            Some((msg, false)) => (Outcome::Failed, code, Some(msg)),
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

    /// Records what an attempt that started at `now` and was answered at `answered` means for
    /// one delivery: delivered, retried later, or given up.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        tx: &Transaction<'_>,
        d: &Due,
        outcome: &Outcome,
        status: Option<i32>,
        error: Option<&str>,
        now: DateTime<Utc>,
        answered: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let first = d.first_attempt_at.unwrap_or(now);
        let (state, next) = match outcome {
            Outcome::Delivered => ("delivered", None),
            Outcome::Gone => ("cancelled", None),
            Outcome::Later(_) | Outcome::Failed => {
                let deadline = later(
                    first,
                    chrono::Duration::hours(self.cfg.max_retry_hours.into()),
                );
                if now >= deadline || d.event.is_err() {
                    ("failed", None)
                } else {
                    // Full jitter per delivery: deliveries that failed together come back apart.
                    let mut wait = backoff(&self.cfg, d.attempts.saturating_add(1));
                    if let Outcome::Later(at_least) = outcome {
                        wait = wait.max(*at_least);
                    }
                    // The last try happens at the deadline, not never.
                    ("pending", Some(later(answered, wait).min(deadline)))
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

async fn claim(
    tx: &Transaction<'_>,
    now: DateTime<Utc>,
    lane: Lane,
) -> anyhow::Result<Option<Hook>> {
    // The same "due and not waiting behind an earlier delivery of its alert" test as
    // `due_deliveries`, or a webhook whose due rows are all blocked would be claimed forever.
    // The least recently tried webhook first: one with a long queue, or a slow receiver, takes
    // its turn and no more. NO KEY UPDATE: producers' foreign-key checks (KEY SHARE) on this
    // row must not wait for a slow receiver.
    let row = tx
        .query_opt(
            "SELECT w.id, w.name, w.url, w.secret, w.format, w.rate_per_minute
             FROM webhooks w
             LEFT JOIN LATERAL (SELECT a.at, a.ok FROM webhook_attempts a
                                WHERE a.webhook_id = w.id
                                ORDER BY a.at DESC, a.id DESC LIMIT 1) last ON true
             WHERE w.enabled AND (w.paused_until IS NULL OR w.paused_until <= $1)
               AND (NOT $2 OR COALESCE(last.ok, true))
               AND EXISTS (SELECT 1 FROM webhook_deliveries d
                           WHERE d.webhook_id = w.id AND d.state = 'pending'
                             AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= $1)
                             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                                 WHERE p.webhook_id = d.webhook_id AND p.alert_id = d.alert_id
                                   AND p.state = 'pending' AND p.id < d.id
                                   AND p.next_attempt_at > $1))
             ORDER BY last.at NULLS FIRST, w.id
             LIMIT 1
             FOR NO KEY UPDATE OF w SKIP LOCKED",
            &[&now, &(lane == Lane::Healthy)],
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

/// At most `cap` bytes of the body; the rest is never read (dropping the response closes the
/// connection).
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == cap {
            break;
        }
    }
    Ok(body)
}

async fn pause(tx: &Transaction<'_>, webhook_id: i64, until: DateTime<Utc>) -> anyhow::Result<()> {
    tx.execute(
        "UPDATE webhooks SET paused_until = $2 WHERE id = $1",
        &[&webhook_id, &until],
    )
    .await?;
    Ok(())
}

/// Runs `cfg.concurrency` delivery loops until `shutdown` fires; each finishes the message
/// it is sending before it stops. With two or more, half of them (rounded down) serve only
/// webhooks whose last attempt succeeded: receivers that fail or hang cannot take every loop.
pub fn spawn_worker(
    pool: Pool,
    cfg: NotifyConfig,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
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
    shutdown: Shutdown,
) -> anyhow::Result<JoinHandle<()>> {
    let loops = cfg.concurrency;
    let poll = cfg.poll_interval();
    let worker = Arc::new(Worker::new(pool, cfg, clock)?);
    let handles: Vec<_> = (0..loops)
        .map(|n| {
            let lane = if n < loops - loops / 2 {
                Lane::Any
            } else {
                Lane::Healthy
            };
            let worker = worker.clone();
            let wake = wake.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                while !stop.is_triggered() {
                    let idle = match worker.supervised_step(lane).await {
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
                            _ = stop.wait() => return,
                        }
                    }
                }
            })
        })
        .collect();
    Ok(tokio::spawn(async move {
        for h in handles {
            let _ = h.await;
        }
    }))
}
/// How many more requests `hook`'s rate allows now (`usize::MAX` without a rate); `None` when
/// none: the webhook is then paused until the oldest request of the window ages out.
async fn requests_left(
    tx: &Transaction<'_>,
    hook: &Hook,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<usize>> {
    let Some(rate) = hook.rate_per_minute else {
        return Ok(Some(usize::MAX));
    };
    let (used, oldest) = recent_attempts(tx, hook.id, now).await?;
    let left = (rate as i64 - used).max(0) as usize;
    if left == 0 {
        let until = later(oldest.unwrap_or(now), chrono::Duration::seconds(60));
        pause(tx, hook.id, until).await?;
        return Ok(None);
    }
    Ok(Some(left))
}

/// The deliveries one request carries: one, or for a chat robot with more due than its rate
/// allows, a digest of as many as one message holds. Whether it is a digest.
fn cover<'d>(hook: &Hook, due: &'d [Due], budget: usize) -> (&'d [Due], bool) {
    if !(hook.format.is_chat() && due.len() > budget) {
        return (&due[..1], false);
    }
    let events: Vec<AlertEvent> = due
        .iter()
        .map_while(|d| d.event.as_ref().ok().cloned())
        .collect();
    let n = message::digest_chunks(hook.format, &events)
        .first()
        .copied()
        .unwrap_or(1);
    (&due[..n], n > 1)
}

/// One request to a webhook, as `webhook_attempts` keeps it.
struct Attempted<'a> {
    webhook_id: i64,
    at: DateTime<Utc>,
    event_ids: &'a [uuid::Uuid],
    digest: bool,
    status: Option<i32>,
    error: Option<&'a str>,
    took: std::time::Duration,
    ok: bool,
}

impl Attempted<'_> {
    async fn record(&self, tx: &Transaction<'_>) -> anyhow::Result<()> {
        tx.execute(
            "INSERT INTO webhook_attempts
                 (webhook_id, at, event_ids, digest, status_code, error, duration_ms, ok)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &self.webhook_id,
                &self.at,
                &self.event_ids,
                &self.digest,
                &self.status,
                &self.error,
                &(self.took.as_millis().min(i32::MAX as u128) as i32),
                &self.ok,
            ],
        )
        .await?;
        Ok(())
    }
}

/// What an answer does to the whole webhook: 410 disables it, a requested wait pauses it. A
/// plain failure pauses nothing but its own deliveries, each on its own jittered schedule.
async fn after_answer(
    tx: &Transaction<'_>,
    webhook_id: i64,
    outcome: &Outcome,
    answered: DateTime<Utc>,
) -> anyhow::Result<()> {
    match outcome {
        Outcome::Gone => {
            tx.execute(
                "UPDATE webhooks SET enabled = false, updated_at = now(),
                     disabled_reason = 'receiver answered 410 Gone'
                 WHERE id = $1",
                &[&webhook_id],
            )
            .await?;
            cancel_pending(tx, &[webhook_id], "webhook disabled: 410 Gone").await?;
        }
        Outcome::Later(wait) => pause(tx, webhook_id, later(answered, *wait)).await?,
        Outcome::Delivered | Outcome::Failed => {}
    }
    Ok(())
}
