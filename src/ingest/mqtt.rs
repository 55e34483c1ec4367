//! The broker side: one persistent session, polled by one task that never awaits anything but
//! the event loop and the hand-off to the batcher (rumqttc deadlocks when the polling task
//! awaits its own request channel).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

use super::Incoming;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Largest packet accepted from the broker. Larger payloads are refused by the shipped broker
/// configuration; payloads between `ingest.max_payload_bytes` and this are rejected as
/// `too_large` by the decoder, so they are acknowledged and recorded rather than redelivered.
const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;

pub fn client(config: &Config, window: usize) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let ep = config
        .mqtt
        .endpoint()
        .map_err(anyhow::Error::msg)
        .context("mqtt.url")?;
    let mut opts = MqttOptions::new(&config.mqtt.client_id, ep.host, ep.port);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(config.mqtt.keep_alive_secs.max(5)))
        .set_max_packet_size(MAX_INCOMING_PACKET, 1024 * 1024)
        // Every acknowledgement of the window may be queued at once: never let `ack` wait.
        .set_request_channel_capacity(window.max(1024) * 2);
    if let Some((user, pass)) = ep.credentials {
        opts.set_credentials(user, pass);
    }
    Ok(AsyncClient::new(opts, window.max(1024)))
}

#[allow(clippy::too_many_arguments)]
pub async fn poll(
    client: AsyncClient,
    mut eventloop: EventLoop,
    filter: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    tx: mpsc::Sender<Incoming>,
    mut shutdown: Shutdown,
    mut drained: oneshot::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut tx = Some(tx);
    let mut drain_deadline = None;
    loop {
        let event = tokio::select! {
            biased;
            _ = shutdown.wait(), if tx.is_some() => {
                // Stop taking messages; keep polling so that the acknowledgements of what was
                // taken reach the broker.
                tx = None;
                drain_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(10));
                continue;
            }
            _ = &mut drained, if tx.is_none() => break,
            _ = sleep_until_opt(drain_deadline) => {
                tracing::warn!("gave up waiting for in-flight batches; the broker will redeliver them");
                break;
            }
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(sender) = &tx else {
                    continue; // draining: not acknowledged, so the broker keeps it
                };
                metrics.messages_received.fetch_add(1, Relaxed);
                metrics.unacked.fetch_add(1, Relaxed);
                let topic = p.topic;
                let mut ack = rumqttc::Publish::new("", p.qos, Vec::new());
                ack.pkid = p.pkid;
                let msg = Incoming {
                    topic,
                    payload: p.payload,
                    ack,
                    received: chrono::Utc::now(),
                    retain: p.retain,
                };
                tokio::select! {
                    r = sender.send(msg) => if r.is_err() { break },
                    _ = shutdown.wait() => { tx = None; }
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(200);
                tracing::info!(session_present = ack.session_present, %filter, "connected to the MQTT broker");
                if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "cannot queue the subscription");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                health.set_mqtt(true);
                metrics.mqtt_connected.store(1, Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                if health.mqtt() {
                    metrics.mqtt_reconnects.fetch_add(1, Relaxed);
                }
                health.set_mqtt(false);
                metrics.mqtt_connected.store(0, Relaxed);
                if tx.is_none() {
                    break; // draining and the broker is gone: nothing more to send
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => { tx = None; }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    health.set_mqtt(false);
    metrics.mqtt_connected.store(0, Relaxed);
    let _ = client.try_disconnect();
    // Let the disconnect (and any acknowledgement queued before it) go out.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
