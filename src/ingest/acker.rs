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
    let mut client_gone = false;
    while let Some(acks) = done.recv().await {
        waiting.extend(acks);
        let mut sent = 0i64;
        while let Some(p) = waiting.remove(&next) {
            // A full request channel is waited out, never skipped: an acknowledgement dropped
            // here leaves its message in flight at the broker, which sends it again after the
            // next reconnect. Only a client that is gone (the session ended) fails, and then
            // the broker redelivers anyway.
            if !client_gone && client.ack(&p).await.is_err() {
                client_gone = true;
                tracing::warn!(
                    "the MQTT client is gone: the acknowledgements still to send are left to the \
                     broker, which delivers their messages again"
                );
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
