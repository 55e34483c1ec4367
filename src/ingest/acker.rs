//! Acknowledge committed messages to the broker in the order they arrived (MQTT 3.1.1 §4.6):
//! writers commit side by side, so a message waits here until every earlier one committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use rumqttc::AsyncClient;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

pub async fn run(
    client: AsyncClient,
    metrics: Arc<Metrics>,
    mut done: mpsc::UnboundedReceiver<Vec<(u64, rumqttc::Publish)>>,
    drained: oneshot::Sender<()>,
) {
    let mut next = 1u64;
    let mut waiting: BTreeMap<u64, rumqttc::Publish> = BTreeMap::new();
    while let Some(acks) = done.recv().await {
        waiting.extend(acks);
        let mut sent = 0i64;
        while let Some(p) = waiting.remove(&next) {
            // The request channel holds the whole window, so this never waits on the event
            // loop; an error means the client is gone and the broker will redeliver.
            if let Err(e) = client.try_ack(&p) {
                tracing::warn!(error = %e, "cannot queue an acknowledgement");
            }
            sent += 1;
            next += 1;
        }
        metrics.unacked.fetch_sub(sent, Relaxed);
    }
    let _ = drained.send(());
}
