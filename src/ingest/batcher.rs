//! Decode messages as they arrive and cut them into batches: by size or by age, whichever
//! comes first.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Incoming;
use crate::config::IngestConfig;
use crate::decode::{Decoded, Decoder};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// A batch on its way to a writer, numbered so that acknowledgements keep arrival order.
pub struct Job {
    pub seq: u64,
    pub decoded: Decoded,
    pub acks: Vec<rumqttc::Publish>,
    pub first_received: chrono::DateTime<chrono::Utc>,
}

pub async fn run(
    decoder: Decoder,
    config: IngestConfig,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Incoming>,
    tx: mpsc::Sender<Job>,
    _shutdown: Shutdown,
) -> anyhow::Result<()> {
    let max_age = config.batch_max_age();
    // A batch also closes on message count, so a stream of rejects or statuses cannot grow
    // one without bound.
    let max_messages = config.batch_max_rows;
    let mut seq = 0u64;
    let mut current: Option<(Job, Instant)> = None;
    loop {
        let deadline = current.as_ref().map(|(_, opened)| *opened + max_age);
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = sleep_until_opt(deadline) => {
                flush(&mut current, &tx, &metrics).await?;
                continue;
            }
        };
        let Some(msg) = msg else {
            flush(&mut current, &tx, &metrics).await?;
            return Ok(());
        };
        let (job, _) = current.get_or_insert_with(|| {
            seq += 1;
            (
                Job {
                    seq,
                    decoded: Decoded::default(),
                    acks: Vec::new(),
                    first_received: msg.received,
                },
                Instant::now(),
            )
        });
        let before = job.decoded.readings.len();
        decoder.decode(&msg.topic, &msg.payload, msg.received, &mut job.decoded);
        metrics
            .readings_received
            .fetch_add((job.decoded.readings.len() - before) as u64, Relaxed);
        job.acks.push(msg.ack);
        if job.decoded.readings.len() >= config.batch_max_rows || job.acks.len() >= max_messages {
            flush(&mut current, &tx, &metrics).await?;
        }
    }
}

async fn flush(
    current: &mut Option<(Job, Instant)>,
    tx: &mpsc::Sender<Job>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    if let Some((job, _)) = current.take() {
        for r in &job.decoded.rejects {
            metrics.reject(r.reason);
            tracing::debug!(topic = %r.topic, reason = %r.reason, detail = %r.detail, "rejected");
        }
        tx.send(job)
            .await
            .map_err(|_| anyhow::anyhow!("the writers stopped"))?;
    }
    Ok(())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
