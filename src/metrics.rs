//! What `/metrics` reports, kept in a `prometheus-client` registry and rendered by it in the
//! OpenMetrics text format (which Prometheus scrapes). Each figure is named once here, so logs,
//! tests and dashboards agree on it; what an event does to them is said where the event is
//! defined ([`IngestEvent`]).

use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::RejectReason;
use crate::health::Health;

const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0];
const SECONDS_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub messages_received: Counter,
    pub readings_received: Counter,
    pub readings_stored: Counter,
    pub readings_duplicate: Counter,
    pub events_stored: Counter,
    /// Readings found missing between consecutive `seq`, and missing ones that came late.
    pub readings_missing: Counter,
    pub readings_gap_filled: Counter,
    rejects: Family<ReasonLabel, Counter>,
    pub batch_rows: Histogram,
    pub commit_seconds: Histogram,
    pub write_errors: Counter,
    /// How long the oldest message of the last committed batch waited in hyfleet.
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// Age of the newest reading of the last committed batch (device clock to commit).
    pub reading_age_seconds: Gauge<f64, AtomicU64>,
    /// Messages taken from the broker and not yet acknowledged.
    pub unacked: Gauge,
    mqtt_connected: Gauge,
    mqtt_reconnects: Counter,
    pub alert_events: Counter,
    /// Time spent in each step of the batch transaction, summed.
    write_phase: Family<PhaseLabel, Counter<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            messages_received: Counter::default(),
            readings_received: Counter::default(),
            readings_stored: Counter::default(),
            readings_duplicate: Counter::default(),
            events_stored: Counter::default(),
            readings_missing: Counter::default(),
            readings_gap_filled: Counter::default(),
            rejects: Family::default(),
            batch_rows: Histogram::new(SIZE_BUCKETS),
            commit_seconds: Histogram::new(SECONDS_BUCKETS),
            write_errors: Counter::default(),
            lag_seconds: Gauge::default(),
            reading_age_seconds: Gauge::default(),
            unacked: Gauge::default(),
            mqtt_connected: Gauge::default(),
            mqtt_reconnects: Counter::default(),
            alert_events: Counter::default(),
            write_phase: Family::default(),
        };
        // Every reason and phase is listed from the start, at 0, so a dashboard's rate() sees
        // the first one happen.
        for r in RejectReason::ALL {
            let _ = m.rejects.get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        for p in WritePhase::ALL {
            let _ = m
                .write_phase
                .get_or_create(&PhaseLabel { phase: p.as_str() });
        }
        let r = &mut m.registry;
        // Counters are registered without `_total`: the encoder adds it.
        r.register(
            "hyfleet_mqtt_messages",
            "MQTT messages taken from the broker",
            m.messages_received.clone(),
        );
        r.register(
            "hyfleet_readings_received",
            "Telemetry readings decoded and valid",
            m.readings_received.clone(),
        );
        r.register(
            "hyfleet_readings_stored",
            "Readings committed to the store",
            m.readings_stored.clone(),
        );
        r.register(
            "hyfleet_readings_duplicate",
            "Readings already stored (redeliveries, retries)",
            m.readings_duplicate.clone(),
        );
        r.register(
            "hyfleet_events_stored",
            "Vehicle events committed",
            m.events_stored.clone(),
        );
        r.register(
            "hyfleet_readings_missing",
            "Readings found missing between consecutive seq of a vehicle (a fall of seq is a restart, not a gap)",
            m.readings_missing.clone(),
        );
        r.register(
            "hyfleet_readings_gap_filled",
            "Missing readings that arrived late (a backlog) and filled their gap",
            m.readings_gap_filled.clone(),
        );
        r.register(
            "hyfleet_rejects",
            "Messages or backlog records refused, by reason",
            m.rejects.clone(),
        );
        r.register(
            "hyfleet_batch_rows",
            "Readings per committed batch",
            m.batch_rows.clone(),
        );
        r.register(
            "hyfleet_commit_seconds",
            "Time to write and commit one batch",
            m.commit_seconds.clone(),
        );
        r.register(
            "hyfleet_write_phase_seconds",
            "Time in each step of the batch transactions",
            m.write_phase.clone(),
        );
        r.register(
            "hyfleet_write_errors",
            "Batch writes that failed and were retried",
            m.write_errors.clone(),
        );
        r.register(
            "hyfleet_ingest_lag_seconds",
            "How long the oldest message of the last batch waited in hyfleet before its commit",
            m.lag_seconds.clone(),
        );
        r.register(
            "hyfleet_reading_age_seconds",
            "Age of the newest reading of the last batch at commit (device clock)",
            m.reading_age_seconds.clone(),
        );
        r.register(
            "hyfleet_unacked_messages",
            "Messages taken from the broker, not yet acknowledged",
            m.unacked.clone(),
        );
        r.register(
            "hyfleet_mqtt_connected",
            "1 when connected and subscribed to the broker",
            m.mqtt_connected.clone(),
        );
        r.register(
            "hyfleet_mqtt_reconnects",
            "Connections to the broker lost",
            m.mqtt_reconnects.clone(),
        );
        r.register(
            "hyfleet_alert_events",
            "Alert transitions emitted",
            m.alert_events.clone(),
        );
        r.register_collector(Box::new(WebhookPanics));
        m
    }
}

/// The webhook worker counts the deliveries that panicked on its own (it runs without these
/// metrics); read at each scrape.
#[derive(Debug)]
struct WebhookPanics;

impl Collector for WebhookPanics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = ConstCounter::new(crate::notify::delivery_panics());
        let m = encoder.encode_descriptor(
            "hyfleet_webhook_panics",
            "Webhook deliveries that panicked inside hyfleet: marked failed, their loop went on",
            None,
            c.metric_type(),
        )?;
        c.encode(m)
    }
}

/// What happens to ingest's broker connection, each with everything it means in one place:
/// the health `/readyz` reports, the metrics, the log line.
pub enum IngestEvent<'a> {
    /// Subscribed: messages flow.
    Subscribed,
    /// The connection failed or was lost; ingest retries after `retry_in`.
    ConnectionLost {
        error: &'a dyn std::fmt::Display,
        retry_in: std::time::Duration,
    },
    /// Ingest stopped talking to the broker (shutdown, or a retirement that lost it).
    Disconnected,
}

impl IngestEvent<'_> {
    pub fn record(self, metrics: &Metrics, health: &Health) {
        match self {
            IngestEvent::Subscribed => {
                health.set_mqtt(true);
                metrics.mqtt_connected.set(1);
            }
            IngestEvent::ConnectionLost { error, retry_in } => {
                if health.mqtt() {
                    metrics.mqtt_reconnects.inc();
                }
                health.set_mqtt(false);
                metrics.mqtt_connected.set(0);
                tracing::warn!(%error, ?retry_in, "MQTT connection failed");
            }
            IngestEvent::Disconnected => {
                health.set_mqtt(false);
                metrics.mqtt_connected.set(0);
            }
        }
    }
}

/// The steps of a batch's unit of work (`ingest::commit`), timed one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePhase {
    /// Vehicle ids resolved (registered on first sight) and the batch's vehicles locked.
    Lock,
    /// Readings staged by binary COPY: only a batch holding a reading stored before.
    Copy,
    /// Readings into `telemetry`: by binary COPY when all are new, else from the staging
    /// table with duplicates skipped.
    Insert,
    /// Minute and day rollups, events, statuses and rejects.
    Records,
    /// Telemetry completeness (gaps in `seq`) and its rule.
    Completeness,
    /// The rules run over the new readings and events; their alerts and rides stored.
    Rules,
    /// Each vehicle's latest state and rule state saved; the webhook outbox filled.
    State,
    Commit,
}

impl WritePhase {
    pub const ALL: [WritePhase; 8] = [
        WritePhase::Lock,
        WritePhase::Copy,
        WritePhase::Insert,
        WritePhase::Records,
        WritePhase::Completeness,
        WritePhase::Rules,
        WritePhase::State,
        WritePhase::Commit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WritePhase::Lock => "lock",
            WritePhase::Copy => "copy",
            WritePhase::Insert => "insert",
            WritePhase::Records => "records",
            WritePhase::Completeness => "completeness",
            WritePhase::Rules => "rules",
            WritePhase::State => "state",
            WritePhase::Commit => "commit",
        }
    }
}

/// Times the phases of one batch: each `lap` books the time since the previous one.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseTimes {
    last: std::time::Instant,
    pub micros: [u64; WritePhase::ALL.len()],
}

impl Default for PhaseTimes {
    fn default() -> Self {
        PhaseTimes {
            last: std::time::Instant::now(),
            micros: [0; WritePhase::ALL.len()],
        }
    }
}

impl PhaseTimes {
    pub fn lap(&mut self, phase: WritePhase) {
        let now = std::time::Instant::now();
        self.micros[phase as usize] += (now - self.last).as_micros() as u64;
        self.last = now;
    }
}

impl Metrics {
    pub fn reject(&self, reason: RejectReason) {
        self.rejects
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn add_phases(&self, t: &PhaseTimes) {
        for p in WritePhase::ALL {
            self.write_phase
                .get_or_create(&PhaseLabel { phase: p.as_str() })
                .inc_by(t.micros[p as usize] as f64 / 1e6);
        }
    }

    /// The OpenMetrics text of every figure.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}
