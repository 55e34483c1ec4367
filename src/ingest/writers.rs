//! Writer tasks: each owns a database connection and commits whole batches, retrying a batch
//! until it commits (or the service stops) so that nothing taken from the broker is dropped.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::IngestDeps;
use super::batcher::Job;
use crate::config::Config;
use crate::store::BatchWriter;

pub type Done = mpsc::UnboundedSender<Vec<(u64, rumqttc::Publish)>>;

/// One task per writer, each taking the batches of its own share of the fleet; returns their
/// handles and the senders the batcher feeds them through (one batch queued per writer).
pub async fn spawn(
    config: &Config,
    deps: &IngestDeps,
    done: Done,
) -> anyhow::Result<(Vec<JoinHandle<()>>, Vec<mpsc::Sender<Job>>)> {
    let mut handles = Vec::new();
    let mut senders = Vec::new();
    for n in 0..config.ingest.writers {
        let (tx, jobs) = mpsc::channel(1);
        senders.push(tx);
        let w = Writer {
            n,
            url: config.database.url.clone(),
            config: config.clone(),
            deps: deps.clone(),
            conn: None,
        };
        handles.push(tokio::spawn(w.run(jobs, done.clone())));
    }
    Ok((handles, senders))
}

struct Writer {
    n: usize,
    url: String,
    config: Config,
    deps: IngestDeps,
    conn: Option<BatchWriter>,
}

impl Writer {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>, done: Done) {
        while let Some(mut job) = jobs.recv().await {
            self.commit(&mut job).await;
            let _ = done.send(std::mem::take(&mut job.acks));
        }
    }

    /// Write until committed. Backpressure comes from here: while this loops, the batch
    /// channel fills and ingest stops taking from the broker.
    async fn commit(&mut self, job: &mut Job) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_commit(job).await {
                Ok(()) => {
                    self.deps.health.set_store(true);
                    return;
                }
                Err(e) => {
                    self.deps.metrics.write_errors.fetch_add(1, Relaxed);
                    self.deps.health.set_store(false);
                    tracing::error!(writer = self.n, error = format!("{e:#}"), retry_in = ?backoff, "batch write failed; retrying");
                    if self.conn.as_ref().is_some_and(BatchWriter::is_closed) {
                        self.conn = None;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn try_commit(&mut self, job: &mut Job) -> anyhow::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(
                BatchWriter::connect(
                    &self.url,
                    self.deps.registry.clone(),
                    self.config.profiles.clone(),
                    self.config.ingest.auto_register,
                    self.deps.hooks.clone(),
                )
                .await?,
            );
        }
        let conn = self.conn.as_mut().expect("connected above");
        let started = std::time::Instant::now();
        let now = chrono::Utc::now();
        let unknown_before = job.decoded.rejects.len();
        let outcome = match conn.write(&mut job.decoded, now).await {
            Ok(o) => o,
            Err(e) => {
                // A broken connection is not retried in place.
                if conn.is_closed() {
                    self.conn = None;
                }
                return Err(e);
            }
        };
        let m = &self.deps.metrics;
        m.commit_seconds.observe(started.elapsed().as_secs_f64());
        m.add_phases(&outcome.phases);
        m.batch_rows.observe(job.decoded.readings.len() as f64);
        m.readings_stored.fetch_add(outcome.stored as u64, Relaxed);
        m.readings_duplicate
            .fetch_add(outcome.duplicates as u64, Relaxed);
        m.events_stored.fetch_add(outcome.events as u64, Relaxed);
        m.alert_events
            .fetch_add(outcome.alert_events as u64, Relaxed);
        for r in &job.decoded.rejects[unknown_before.min(job.decoded.rejects.len())..] {
            m.reject(r.reason);
        }
        let committed = chrono::Utc::now();
        m.lag_ms
            .store((committed - job.first_received).num_milliseconds(), Relaxed);
        if let Some(ts) = outcome.newest_ts {
            m.reading_age_ms
                .store((committed - ts).num_milliseconds(), Relaxed);
        }
        Ok(())
    }
}
