//! Counters and histograms behind `/metrics`, rendered in the Prometheus text format. Each
//! figure is named once here, so logs, tests and dashboards agree on it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::domain::RejectReason;

/// A histogram with fixed buckets; `observe` is lock-free.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6).max(0.0) as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

const SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0];
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

pub struct Metrics {
    pub messages_received: AtomicU64,
    pub readings_received: AtomicU64,
    pub readings_stored: AtomicU64,
    pub readings_duplicate: AtomicU64,
    pub events_stored: AtomicU64,
    /// Readings found missing between consecutive `seq`, and missing ones that came late.
    pub readings_missing: AtomicU64,
    pub readings_gap_filled: AtomicU64,
    rejects: [AtomicU64; RejectReason::ALL.len()],
    pub batch_rows: Histogram,
    pub commit_seconds: Histogram,
    pub write_errors: AtomicU64,
    /// How long the oldest message of the last committed batch waited in hyfleet, in ms.
    pub lag_ms: AtomicI64,
    /// Age of the newest reading of the last committed batch (device clock to commit), in ms.
    pub reading_age_ms: AtomicI64,
    /// Messages taken from the broker and not yet acknowledged.
    pub unacked: AtomicI64,
    pub mqtt_connected: AtomicI64,
    pub mqtt_reconnects: AtomicU64,
    pub alert_events: AtomicU64,
    /// Time spent in each step of the batch transaction, summed.
    write_phase_micros: [AtomicU64; WritePhase::ALL.len()],
}

/// The steps of a batch's unit of work (`ingest::commit`), timed one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePhase {
    /// Vehicle ids resolved (registered on first sight) and the batch's vehicles locked.
    Lock,
    /// Readings sent by binary COPY into the staging table.
    Copy,
    /// Staged readings moved into `telemetry`, duplicates skipped.
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

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            messages_received: AtomicU64::new(0),
            readings_received: AtomicU64::new(0),
            readings_stored: AtomicU64::new(0),
            readings_duplicate: AtomicU64::new(0),
            events_stored: AtomicU64::new(0),
            readings_missing: AtomicU64::new(0),
            readings_gap_filled: AtomicU64::new(0),
            rejects: Default::default(),
            batch_rows: Histogram::new(SIZE_BUCKETS),
            commit_seconds: Histogram::new(SECONDS_BUCKETS),
            write_errors: AtomicU64::new(0),
            lag_ms: AtomicI64::new(0),
            reading_age_ms: AtomicI64::new(0),
            unacked: AtomicI64::new(0),
            mqtt_connected: AtomicI64::new(0),
            mqtt_reconnects: AtomicU64::new(0),
            alert_events: AtomicU64::new(0),
            write_phase_micros: Default::default(),
        }
    }
}

impl Metrics {
    pub fn reject(&self, reason: RejectReason) {
        self.rejects[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn rejects(&self, reason: RejectReason) -> u64 {
        self.rejects[reason.index()].load(Relaxed)
    }

    pub fn add_phases(&self, t: &PhaseTimes) {
        for (total, v) in self.write_phase_micros.iter().zip(t.micros) {
            total.fetch_add(v, Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "hyfleet_mqtt_messages_total",
            "MQTT messages taken from the broker.",
            self.messages_received.load(Relaxed),
        );
        counter(
            &mut out,
            "hyfleet_readings_received_total",
            "Telemetry readings decoded and valid.",
            self.readings_received.load(Relaxed),
        );
        counter(
            &mut out,
            "hyfleet_readings_stored_total",
            "Readings committed to the store.",
            self.readings_stored.load(Relaxed),
        );
        counter(
            &mut out,
            "hyfleet_readings_duplicate_total",
            "Readings already stored (redeliveries, retries).",
            self.readings_duplicate.load(Relaxed),
        );
        counter(
            &mut out,
            "hyfleet_events_stored_total",
            "Vehicle events committed.",
            self.events_stored.load(Relaxed),
        );
        counter(
            &mut out,
            "hyfleet_readings_missing_total",
            "Readings found missing between consecutive seq of a vehicle (a fall of seq is a restart, not a gap).",
            self.readings_missing.load(Relaxed),
        );
        counter(
            &mut out,
            "hyfleet_readings_gap_filled_total",
            "Missing readings that arrived late (a backlog) and filled their gap.",
            self.readings_gap_filled.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP hyfleet_rejects_total Messages or backlog records refused, by reason.\n# TYPE hyfleet_rejects_total counter"
        );
        for r in RejectReason::ALL {
            let _ = writeln!(
                out,
                "hyfleet_rejects_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.rejects(r)
            );
        }
        self.batch_rows.render(
            &mut out,
            "hyfleet_batch_rows",
            "Readings per committed batch.",
        );
        self.commit_seconds.render(
            &mut out,
            "hyfleet_commit_seconds",
            "Time to write and commit one batch.",
        );
        let _ = writeln!(
            out,
            "# HELP hyfleet_write_phase_seconds_total Time in each step of the batch transactions.\n# TYPE hyfleet_write_phase_seconds_total counter"
        );
        for p in WritePhase::ALL {
            let _ = writeln!(
                out,
                "hyfleet_write_phase_seconds_total{{phase=\"{}\"}} {}",
                p.as_str(),
                self.write_phase_micros[p as usize].load(Relaxed) as f64 / 1e6
            );
        }
        counter(
            &mut out,
            "hyfleet_write_errors_total",
            "Batch writes that failed and were retried.",
            self.write_errors.load(Relaxed),
        );
        gauge(
            &mut out,
            "hyfleet_ingest_lag_seconds",
            "How long the oldest message of the last batch waited in hyfleet before its commit.",
            self.lag_ms.load(Relaxed) as f64 / 1e3,
        );
        gauge(
            &mut out,
            "hyfleet_reading_age_seconds",
            "Age of the newest reading of the last batch at commit (device clock).",
            self.reading_age_ms.load(Relaxed) as f64 / 1e3,
        );
        gauge(
            &mut out,
            "hyfleet_unacked_messages",
            "Messages taken from the broker, not yet acknowledged.",
            self.unacked.load(Relaxed) as f64,
        );
        gauge(
            &mut out,
            "hyfleet_mqtt_connected",
            "1 when connected and subscribed to the broker.",
            self.mqtt_connected.load(Relaxed) as f64,
        );
        counter(
            &mut out,
            "hyfleet_mqtt_reconnects_total",
            "Connections to the broker lost.",
            self.mqtt_reconnects.load(Relaxed),
        );
        counter(
            &mut out,
            "hyfleet_alert_events_total",
            "Alert transitions emitted.",
            self.alert_events.load(Relaxed),
        );
        counter(
            &mut out,
            "hyfleet_webhook_panics_total",
            "Webhook deliveries that panicked inside hyfleet: marked failed, their loop went on.",
            crate::notify::delivery_panics(),
        );
        out
    }
}
