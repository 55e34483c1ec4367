//! Webhook delivery against real PostgreSQL (every migration) and real HTTP receivers that check
//! every signature with the shared secret. Time is simulated with an [`OffsetClock`], so hours
//! of receiver downtime take a second.
//!
//! Each test starts from a [`Rig`]: its database, the webhooks registered as the configuration
//! would, and a worker the test steps by hand (`rig.worker.run_once()`), or delivery loops run
//! as the service runs them (`rig.spawn_loops`).

mod delivery;
mod hostile;
mod registry;
mod robots;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use deadpool_postgres::Pool;
use serde_json::json;

use hyfleet::domain::{Alert, AlertEvent, AlertEventType, AlertState, Severity, VehicleKind};
use hyfleet::notify::{self, Clock, Format, NotifyConfig, OffsetClock, WebhookConfig, Worker};
use hyfleet::shutdown::Trigger;

use crate::support::TestDb;
use crate::support::receiver::{GENERIC_SECRET, Receiver};

/// Time that stands still until the test moves it, for schedules checked to the millisecond:
/// on an [`OffsetClock`] a retry whose jitter drew less than the test's own running time comes
/// due while the test is still looking.
pub struct StillClock(std::sync::Mutex<chrono::DateTime<Utc>>);

impl StillClock {
    pub fn new() -> Self {
        StillClock(std::sync::Mutex::new(Utc::now()))
    }

    pub fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for StillClock {
    fn now(&self) -> chrono::DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// A database with every migration and some webhooks registered, and a worker on a simulated
/// clock.
pub struct Rig {
    pub pool: Pool,
    /// The registered webhooks' ids, in the order given.
    pub ids: Vec<i64>,
    pub cfg: NotifyConfig,
    pub clock: Arc<OffsetClock>,
    /// Stepped by the test, on `clock`.
    pub worker: Worker,
    _db: TestDb,
}

impl Rig {
    /// `hooks` registered with `cfg`, as `[[webhooks]]` of the configuration are at start.
    pub async fn new(cfg: NotifyConfig, hooks: &[WebhookConfig]) -> Rig {
        let db = TestDb::new().await;
        let pool = hyfleet::store::pool(&db.url(), 3).unwrap();
        let ids = {
            let mut conn = pool.get().await.unwrap();
            notify::sync_config_webhooks(&mut conn, hooks, &cfg)
                .await
                .unwrap();
            notify::list_webhooks(&conn)
                .await
                .unwrap()
                .iter()
                .map(|w| w.id)
                .collect()
        };
        let clock = Arc::new(OffsetClock::new());
        let worker = Worker::new(pool.clone(), cfg.clone(), clock.clone()).unwrap();
        Rig {
            pool,
            ids,
            cfg,
            clock,
            worker,
            _db: db,
        }
    }

    /// The common case: a receiver, and a CloudEvents webhook `main` to it.
    pub async fn generic(cfg: NotifyConfig) -> (Rig, Receiver) {
        let rx = Receiver::start().await;
        let rig = Rig::new(cfg, &[hook("main", &rx.url("/generic"), Format::Generic)]).await;
        (rig, rx)
    }

    /// Another worker on the same database, as another instance or a restart would run.
    pub fn worker(&self, clock: Arc<dyn Clock>) -> Worker {
        Worker::new(self.pool.clone(), self.cfg.clone(), clock).unwrap()
    }

    /// The delivery loops as the service runs them, on `clock`, until stopped.
    pub fn spawn_loops(&self, clock: Arc<dyn Clock>) -> Loops {
        let (trigger, shutdown) = hyfleet::shutdown::channel();
        let handle =
            notify::spawn_worker(self.pool.clone(), self.cfg.clone(), clock, shutdown).unwrap();
        Loops { trigger, handle }
    }

    /// Commits `events` to the outbox, as a change to alerts does.
    pub async fn enqueue(&self, events: &[AlertEvent]) {
        let mut conn = self.pool.get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        notify::outbox::enqueue(&tx, events).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// How many of a webhook's deliveries are in each state.
    pub async fn states(&self, webhook_id: i64) -> HashMap<String, usize> {
        let conn = self.pool.get().await.unwrap();
        let mut m = HashMap::new();
        for d in notify::deliveries(&conn, webhook_id, 10_000, None)
            .await
            .unwrap()
        {
            *m.entry(d.state).or_default() += 1;
        }
        m
    }

    /// How many of a webhook's deliveries are in `state`.
    pub async fn count(&self, webhook_id: i64, state: &str) -> usize {
        self.states(webhook_id)
            .await
            .get(state)
            .copied()
            .unwrap_or(0)
    }
}

/// Running delivery loops.
pub struct Loops {
    trigger: Trigger,
    handle: tokio::task::JoinHandle<()>,
}

impl Loops {
    /// Stops them as the service does: each finishes the message it is sending.
    pub async fn stop(self) {
        self.trigger.fire();
        self.handle.await.unwrap();
    }
}

/// A test's notify configuration: receivers on loopback allowed, a 5 s timeout.
pub fn notify_config() -> NotifyConfig {
    NotifyConfig {
        allow_private_networks: true,
        http_timeout_secs: 5,
        ..NotifyConfig::default()
    }
}

/// A webhook for every event; the generic format gets the receiver's secret.
pub fn hook(name: &str, url: &str, format: Format) -> WebhookConfig {
    WebhookConfig {
        name: name.into(),
        url: url.into(),
        secret: (format == Format::Generic).then(|| GENERIC_SECRET.into()),
        events: AlertEventType::ALL.to_vec(),
        format,
        rate_per_minute: None,
    }
}

/// An event of a parking violation alert of bike `XY-B{alert_id}`.
pub fn event(alert_id: i64, event_type: AlertEventType) -> AlertEvent {
    let now = Utc::now();
    AlertEvent {
        id: uuid::Uuid::new_v4(),
        event_type,
        at: now,
        alert: Alert {
            id: alert_id,
            vehicle_id: format!("XY-B{alert_id:04}"),
            vehicle_kind: VehicleKind::Bike,
            rule: "parking_violation".into(),
            zone: None,
            state: match event_type {
                AlertEventType::Acknowledged => AlertState::Acknowledged,
                AlertEventType::Resolved => AlertState::Resolved,
                _ => AlertState::Open,
            },
            severity: Severity::Warning,
            opened_at: now,
            acknowledged_at: None,
            resolved_at: None,
            lat: Some(37.1465),
            lon: Some(111.7739),
            details: json!({"nearest_zone": "P-03", "distance_m": 41.2}),
        },
    }
}
