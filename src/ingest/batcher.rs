//! Decode messages as they arrive and cut them into batches, one open batch per writer: each
//! vehicle's messages always go to the same writer, so writers never wait on each other's
//! vehicle locks and commit side by side. A batch closes at its size limit, or once it is old
//! enough, its writer is free to take it, and it is not outgrown by what is already queued
//! behind it (a backlog fills batches instead of splitting into small ones).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::budget::{Budget, Verdict};
use super::{Ack, Incoming};
use crate::config::IngestConfig;
use crate::decode::{Decoded, Decoder};
use crate::domain::RejectReason;
use crate::metrics::Metrics;

/// A batch on its way to a writer. Each acknowledgement carries its message's arrival
/// number, so that the acker can send them in arrival order.
pub struct Job {
    pub decoded: Decoded,
    pub acks: Vec<(u64, Ack)>,
    pub first_received: chrono::DateTime<chrono::Utc>,
}

/// The writer a message belongs to: by the vehicle id in its topic
/// (`{root}/{kind}/{id}/{channel}`), so that one vehicle's messages keep one writer.
fn shard(topic: &str, shards: usize) -> usize {
    let id = topic.rsplit('/').nth(1).unwrap_or("");
    // FNV-1a: stable, fast, and spreads fleet ids that differ in their last digits.
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % shards as u64) as usize
}

pub async fn run(
    decoder: Decoder,
    config: IngestConfig,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Incoming>,
    writers: Vec<mpsc::Sender<Job>>,
) -> anyhow::Result<()> {
    let max_age = config.batch_max_age();
    // A batch also closes on message count, so a stream of rejects or statuses cannot grow
    // one without bound.
    let max_messages = config.batch_max_rows;
    let mut arrival = 0u64;
    let mut budget = Budget::new(&config);
    let mut open: Vec<Option<(Job, Instant)>> = writers.iter().map(|_| None).collect();
    loop {
        // A batch past its age goes as soon as its writer can take it, and keeps growing until
        // then: an idle writer gets each batch at once (latency), a busy one gets bigger
        // batches, and so fewer statements per reading (throughput). Under a backlog (a burst,
        // a catch-up) a batch also waits while more is queued for its writer than it holds:
        // those messages have waited already, and taking them into this batch costs them
        // nothing while it halves the batches, whose statements grow with their vehicles.
        let now = Instant::now();
        let queued = rx.len() / open.len();
        let due: Vec<usize> = (0..open.len())
            .filter(|&i| {
                open[i]
                    .as_ref()
                    .is_some_and(|(job, at)| *at + max_age <= now && queued < job.acks.len())
            })
            .collect();
        let next_due = open
            .iter()
            .filter_map(|b| b.as_ref().map(|(_, at)| *at + max_age))
            .filter(|d| *d > now)
            .min();
        let writers = &writers;
        let slot = async {
            if due.is_empty() {
                return std::future::pending().await;
            }
            let waits = due
                .iter()
                .map(|&i| Box::pin(async move { (i, writers[i].reserve().await) }));
            futures_util::future::select_all(waits).await.0
        };
        let msg = tokio::select! {
            biased;
            (i, permit) = slot => {
                let permit = permit.map_err(|_| anyhow::anyhow!("the writers stopped"))?;
                if let Some((job, _)) = open[i].take() {
                    permit.send(handed_over(job, &metrics));
                }
                continue;
            }
            m = rx.recv() => m,
            _ = sleep_until_opt(next_due) => continue,
        };
        let Some(msg) = msg else {
            for (batch, tx) in open.iter_mut().zip(writers) {
                flush(batch, tx, &metrics).await?;
            }
            return Ok(());
        };
        arrival += 1;
        let i = shard(&msg.topic, writers.len());
        let (job, _) = open[i].get_or_insert_with(|| {
            (
                Job {
                    decoded: Decoded::default(),
                    acks: Vec::new(),
                    first_received: msg.received,
                },
                Instant::now(),
            )
        });
        let before = job.decoded.readings.len();
        // Charged before decoding: a device over budget costs no more than this look-up.
        match budget.check(&msg.topic, &msg.payload, msg.received, || {
            decoder.vehicle_of(&msg.topic)
        }) {
            Verdict::Pass => {
                if !(msg.retain
                    && decoder.refuse_retained(
                        &msg.topic,
                        &msg.payload,
                        msg.received,
                        &mut job.decoded,
                    ))
                {
                    decoder.decode(&msg.topic, &msg.payload, msg.received, &mut job.decoded);
                }
            }
            // Counted with the batch's other rejects when it leaves.
            Verdict::Record(r) => job.decoded.rejects.push(r),
            Verdict::Drop => metrics.reject(RejectReason::RateLimited),
        }
        metrics
            .readings_received
            .inc_by((job.decoded.readings.len() - before) as u64);
        job.acks.push((arrival, msg.ack));
        if job.decoded.readings.len() >= config.batch_max_rows || job.acks.len() >= max_messages {
            flush(&mut open[i], &writers[i], &metrics).await?;
        }
    }
}

/// Send the open batch to its writer now, waiting for room (a full batch: backpressure).
async fn flush(
    batch: &mut Option<(Job, Instant)>,
    tx: &mpsc::Sender<Job>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    if let Some((job, _)) = batch.take() {
        tx.send(handed_over(job, metrics))
            .await
            .map_err(|_| anyhow::anyhow!("the writers stopped"))?;
    }
    Ok(())
}

/// Count and log a batch's rejects as it leaves the batcher.
fn handed_over(job: Job, metrics: &Metrics) -> Job {
    for r in &job.decoded.rejects {
        metrics.reject(r.reason);
        tracing::debug!(topic = %r.topic, reason = %r.reason, detail = %r.detail, "rejected");
    }
    job
}

/// Sleeps until `deadline`, or forever without one: a `select!` branch for an optional timer.
pub(super) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::{Ack, Incoming, Job, run, shard};
    use crate::config::Config;
    use crate::decode::Decoder;
    use crate::metrics::Metrics;

    fn message(n: u32) -> Incoming {
        let topic = format!("hyfleet/v1/bike/XY-B{:04}/telemetry", n % 50);
        let payload = bytes::Bytes::from_static(b"{}");
        Incoming {
            ack: Ack::Mqtt(rumqttc::Publish::new(
                &topic,
                rumqttc::QoS::AtLeastOnce,
                payload.clone(),
            )),
            topic,
            payload,
            received: chrono::Utc::now(),
            retain: false,
        }
    }

    /// The batcher with one writer whose every batch is due at once (age 0), so that only the
    /// backlog rule can hold one back; returns the batches as the writer receives them.
    fn batcher(
        rx: mpsc::Receiver<Incoming>,
    ) -> (
        mpsc::Receiver<Job>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let mut config = Config::default();
        config.ingest.batch_max_age_ms = 0;
        config.ingest.writers = 1;
        let (jobs, taken) = mpsc::channel(1);
        let task = tokio::spawn(run(
            Decoder::new(&config),
            config.ingest.clone(),
            Arc::new(Metrics::default()),
            rx,
            vec![jobs],
        ));
        (taken, task)
    }

    #[tokio::test]
    async fn a_backlog_fills_one_batch_instead_of_many_small_ones() {
        let (tx, rx) = mpsc::channel(5000);
        for n in 0..4000 {
            tx.send(message(n)).await.unwrap();
        }
        let (mut taken, task) = batcher(rx);
        let first = taken.recv().await.unwrap();
        // It goes once it holds more than is still queued behind it: over half of 4,000.
        assert!(first.acks.len() > 2000, "first batch {}", first.acks.len());
        drop(tx);
        let mut total = first.acks.len();
        while let Some(job) = taken.recv().await {
            total += job.acks.len();
        }
        assert_eq!(total, 4000);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn without_a_backlog_a_due_batch_goes_at_once() {
        let (tx, rx) = mpsc::channel(5000);
        let (mut taken, task) = batcher(rx);
        tx.send(message(1)).await.unwrap();
        // The sender stays open: the batch goes because it is due, not because input ended.
        let job = tokio::time::timeout(Duration::from_secs(30), taken.recv())
            .await
            .expect("a lone due message was held back")
            .unwrap();
        assert_eq!(job.acks.len(), 1);
        drop(tx);
        task.await.unwrap().unwrap();
    }

    #[test]
    fn a_vehicle_keeps_its_writer_and_a_fleet_spreads_over_them() {
        let t = |id: &str, ch: &str| format!("hyfleet/v1/bike/{id}/{ch}");
        assert_eq!(
            shard(&t("XY-B0042", "telemetry"), 4),
            shard(&t("XY-B0042", "event"), 4)
        );
        let mut per = [0usize; 4];
        for n in 1..=500 {
            per[shard(&t(&format!("XY-B{n:04}"), "telemetry"), 4)] += 1;
        }
        assert!(per.iter().all(|&c| (90..=160).contains(&c)), "{per:?}");
        assert!(shard("", 3) < 3 && shard("no-slashes", 3) < 3);
    }
}
