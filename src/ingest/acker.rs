//! Acknowledge committed messages to their source in the order they arrived: writers commit
//! side by side, so a message waits here until every earlier one committed. MQTT requires the
//! order (MQTT 3.1.1 §4.6); JetStream does not, and loses nothing by it.

use std::collections::BTreeMap;
use std::sync::Arc;

use rumqttc::AsyncClient;
use tokio::sync::{mpsc, oneshot, watch};

use super::Ack;
use crate::metrics::Metrics;

/// Where acknowledgements go.
pub enum Source {
    Mqtt(AsyncClient),
    Nats(async_nats::Client),
}

impl Source {
    /// Queue one acknowledgement. A full queue is waited out, never skipped: an
    /// acknowledgement dropped here leaves its message with the broker, which hands it out
    /// again. Fails only when the client is gone; then the broker redelivers anyway.
    async fn ack(&self, ack: Ack) -> Result<(), String> {
        match (self, ack) {
            (Source::Mqtt(client), Ack::Mqtt(p)) => client.ack(&p).await.map_err(|e| e.to_string()),
            // An empty message to the reply subject is JetStream's `+ACK`.
            (Source::Nats(client), Ack::Nats(reply)) => client
                .publish(reply, bytes::Bytes::new())
                .await
                .map_err(|e| e.to_string()),
            _ => Err("an acknowledgement for another source".into()),
        }
    }
}

/// `acked` counts the acknowledgements queued so far: once it equals the messages taken,
/// every one of them is committed and its acknowledgement is ahead of any later request.
pub async fn run(
    source: Source,
    metrics: Arc<Metrics>,
    mut done: mpsc::UnboundedReceiver<Vec<(u64, Ack)>>,
    acked: watch::Sender<u64>,
    drained: oneshot::Sender<()>,
) {
    let mut next = 1u64;
    let mut waiting: BTreeMap<u64, Ack> = BTreeMap::new();
    let mut client_gone = false;
    while let Some(acks) = done.recv().await {
        waiting.extend(acks);
        let mut sent = 0i64;
        while let Some(a) = waiting.remove(&next) {
            if !client_gone && let Err(error) = source.ack(a).await {
                client_gone = true;
                tracing::warn!(
                    %error,
                    "the broker client is gone: the acknowledgements still to send are left to \
                     the broker, which delivers their messages again"
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
