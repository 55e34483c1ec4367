//! Decode messages as they arrive and cut them into batches, one open batch per writer: each
//! vehicle's messages always go to the same writer, so writers never wait on each other's
//! vehicle locks and commit side by side. A batch closes at its size limit, or once it is old
//! enough and its writer is free to take it.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Incoming;
use super::budget::{Budget, Verdict};
use crate::config::IngestConfig;
use crate::decode::{Decoded, Decoder};
use crate::domain::RejectReason;
use crate::metrics::Metrics;

/// A batch on its way to a writer. Each acknowledgement carries its message's arrival
/// number, so that the acker can send them in arrival order.
pub struct Job {
    pub decoded: Decoded,
    pub acks: Vec<(u64, rumqttc::Publish)>,
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
        // batches, and so fewer statements per reading (throughput).
        let now = Instant::now();
        let due: Vec<usize> = (0..open.len())
            .filter(|&i| open[i].as_ref().is_some_and(|(_, at)| *at + max_age <= now))
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
    use super::shard;

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
