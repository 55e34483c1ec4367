//! Acknowledge committed messages to the broker in the order they arrived (MQTT 3.1.1 §4.6):
//! writers commit side by side, so a message waits here until every earlier one committed.

use std::collections::BTreeMap;
use std::sync::Arc;

use rumqttc::AsyncClient;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;

/// `acked` counts the acknowledgements queued so far: once it equals the messages taken,
/// every one of them is committed and its acknowledgement is ahead of any later request.
pub async fn run(
    client: AsyncClient,
    metrics: Arc<Metrics>,
    mut done: mpsc::UnboundedReceiver<Vec<(u64, rumqttc::Publish)>>,
    acked: watch::Sender<u64>,
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
        metrics.unacked.dec_by(sent);
        if sent > 0 {
            acked.send_replace(next - 1);
        }
    }
    let _ = drained.send(());
}
