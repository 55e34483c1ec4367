//! Acknowledge committed batches to the broker in the order their messages arrived.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use rumqttc::AsyncClient;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

pub async fn run(
    client: AsyncClient,
    metrics: Arc<Metrics>,
    mut done: mpsc::UnboundedReceiver<(u64, Vec<rumqttc::Publish>)>,
    drained: oneshot::Sender<()>,
) {
    let mut next = 1u64;
    let mut waiting: BTreeMap<u64, Vec<rumqttc::Publish>> = BTreeMap::new();
    while let Some((seq, acks)) = done.recv().await {
        waiting.insert(seq, acks);
        while let Some(acks) = waiting.remove(&next) {
            for p in &acks {
                // The request channel holds the whole window, so this never waits on the
                // event loop; an error means the client is gone and the broker will redeliver.
                if let Err(e) = client.try_ack(p) {
                    tracing::warn!(error = %e, "cannot queue an acknowledgement");
                }
            }
            metrics.unacked.fetch_sub(acks.len() as i64, Relaxed);
            next += 1;
        }
    }
    let _ = drained.send(());
}
