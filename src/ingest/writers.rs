//! Writer tasks: each owns a database connection and commits whole batches, retrying a batch
//! until it commits (or the service stops) so that nothing taken from the broker is dropped.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::IngestDeps;
use super::batcher::Job;
use super::commit::Committer;
use crate::config::Config;
use crate::decode::Decoded;
use crate::domain::{Reject, RejectReason};

pub type Done = mpsc::UnboundedSender<Vec<(u64, super::Ack)>>;

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
    conn: Option<Committer>,
}

impl Writer {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>, done: Done) {
        while let Some(mut job) = jobs.recv().await {
            self.commit(&mut job).await;
            let _ = done.send(std::mem::take(&mut job.acks));
        }
    }

    /// Write until committed. Backpressure comes from here: while this loops, the batch
    /// channel fills and ingest stops taking from the broker. A batch the store refuses for
    /// its data would fail the same way on every retry and stall ingest: it is committed in
    /// halves, and halves of halves, until what the store refuses stands alone; that becomes
    /// a reject (`schema`, with the database's reason) and everything else is stored.
    async fn commit(&mut self, job: &mut Job) {
        let mut todo = vec![std::mem::take(&mut job.decoded)];
        while let Some(mut part) = todo.pop() {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.try_commit(&mut part, job.first_received).await {
                    Ok(()) => {
                        self.deps.health.set_store(true);
                        break;
                    }
                    Err(e) if refused_as_data(&e) => {
                        tracing::warn!(
                            writer = self.n,
                            error = format!("{e:#}"),
                            "the store refused part of a batch; isolating it"
                        );
                        match split(part) {
                            Ok((a, b)) => todo.extend([b, a]),
                            Err(alone) => todo.extend(refusal(alone, &e)),
                        }
                        break;
                    }
                    Err(e) => {
                        self.deps.metrics.write_errors.inc();
                        self.deps.health.set_store(false);
                        tracing::error!(writer = self.n, error = format!("{e:#}"), retry_in = ?backoff, "batch write failed; retrying");
                        if self.conn.as_ref().is_some_and(Committer::is_closed) {
                            self.conn = None;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    async fn try_commit(
        &mut self,
        batch: &mut Decoded,
        first_received: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(
                Committer::connect(
                    &self.url,
                    self.config.profiles.clone(),
                    self.config.ingest.auto_register,
                    self.deps.services.clone(),
                )
                .await?,
            );
        }
        let conn = self.conn.as_mut().expect("connected above");
        let started = std::time::Instant::now();
        let now = chrono::Utc::now();
        let unknown_before = batch.rejects.len();
        let outcome = match conn.commit(batch, now).await {
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
        m.batch_rows.observe(batch.readings.len() as f64);
        m.readings_stored.inc_by(outcome.stored as u64);
        m.readings_duplicate.inc_by(outcome.duplicates as u64);
        m.events_stored.inc_by(outcome.events as u64);
        m.readings_missing.inc_by(outcome.readings_missing);
        m.readings_gap_filled.inc_by(outcome.gap_filled);
        m.alert_events.inc_by(outcome.alert_events as u64);
        for r in &batch.rejects[unknown_before.min(batch.rejects.len())..] {
            m.reject(r.reason);
        }
        let committed = chrono::Utc::now();
        let seconds = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        m.lag_seconds.set(seconds(committed - first_received));
        if let Some(ts) = outcome.newest_ts {
            m.reading_age_seconds.set(seconds(committed - ts));
        }
        Ok(())
    }
}

/// A database error that the same data would meet again: a data exception (class 22) or an
/// integrity violation (class 23). Anything else (connection lost, disk full, a timeout)
/// passes and the batch is tried again whole.
fn refused_as_data(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .filter_map(tokio_postgres::Error::code)
        .any(|code| matches!(&code.code()[..2], "22" | "23"))
}

/// Two non-empty parts of a batch, or the batch itself when it holds one record: its longest
/// list is cut in half (a list of one goes whole, leaving the others behind).
fn split(mut d: Decoded) -> Result<(Decoded, Decoded), Decoded> {
    let lens = [
        d.readings.len(),
        d.events.len(),
        d.statuses.len(),
        d.rejects.len(),
    ];
    if lens.iter().sum::<usize>() <= 1 {
        return Err(d);
    }
    let (longest, len) = (0..4)
        .map(|i| (i, lens[i]))
        .max_by_key(|&(_, n)| n)
        .unwrap_or((0, 0));
    let mut b = Decoded::default();
    let at = len / 2;
    match longest {
        0 => b.readings = d.readings.split_off(at),
        1 => b.events = d.events.split_off(at),
        2 => b.statuses = d.statuses.split_off(at),
        _ => b.rejects = d.rejects.split_off(at),
    }
    Ok((d, b))
}

/// The reject that stands for one record the store refused; nothing when the record was
/// itself a reject (its text is storable by construction, so this does not happen).
fn refusal(alone: Decoded, e: &anyhow::Error) -> Option<Decoded> {
    let now = chrono::Utc::now();
    let detail = format!("the store refused it: {}", error_text(e));
    let (kind, vehicle, channel, body) = if let Some(r) = alone.readings.first() {
        let body = serde_json::to_vec(r).unwrap_or_default();
        (r.kind, &r.vehicle, "telemetry", body)
    } else if let Some(ev) = alone.events.first() {
        let body = serde_json::to_vec(&ev.body).unwrap_or_default();
        (ev.kind, &ev.vehicle, "event", body)
    } else if let Some(s) = alone.statuses.first() {
        (s.kind, &s.vehicle, "status", Vec::new())
    } else {
        tracing::error!(
            error = format!("{e:#}"),
            "the store refused a reject; dropped"
        );
        return None;
    };
    let topic = format!("{kind}/{vehicle}/{channel}");
    let reject = Reject::new(
        now,
        &topic,
        Some(vehicle.as_str()),
        RejectReason::Schema,
        &detail,
        &body,
    );
    tracing::warn!(topic = %reject.topic, %detail, "record refused by the store; recorded as a reject");
    Some(Decoded {
        rejects: vec![reject],
        ..Decoded::default()
    })
}

fn error_text(e: &anyhow::Error) -> String {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .find_map(|pg| pg.as_db_error().map(|d| d.message().to_owned()))
        .unwrap_or_else(|| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Reading;

    fn readings(n: usize) -> Vec<Reading> {
        let ts = chrono::Utc::now();
        (0..n)
            .map(|_| Reading::bare("XY-B0001", ts, 37.1, 111.7, 20.0))
            .collect()
    }

    #[test]
    fn a_batch_splits_into_two_non_empty_parts_down_to_one_record() {
        let count = |d: &Decoded| d.readings.len() + d.rejects.len();
        let (a, b) = split(Decoded {
            readings: readings(5),
            ..Decoded::default()
        })
        .unwrap();
        assert_eq!((count(&a), count(&b)), (2, 3));
        // Two lists of one each: one goes whole.
        let reject = Reject::new(
            chrono::Utc::now(),
            "t",
            None,
            RejectReason::Schema,
            "x",
            b"",
        );
        let (a, b) = split(Decoded {
            readings: readings(1),
            rejects: vec![reject],
            ..Decoded::default()
        })
        .unwrap();
        assert_eq!((count(&a), count(&b)), (1, 1));
        assert!(
            split(Decoded {
                readings: readings(1),
                ..Decoded::default()
            })
            .is_err()
        );
    }
}
