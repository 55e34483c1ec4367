//! The broker side: one persistent session, polled by one task that never awaits anything but
//! the event loop and the hand-off to the batcher (rumqttc deadlocks when the polling task
//! awaits its own request channel).
//!
//! A session ends in one of two ways. A **stop** (for a restart) keeps it: the broker queues
//! for it until the instance is back under the same client id. **Leaving** (for good) empties
//! and deletes it, because a shared subscription's broker (Mosquitto 2.0 at least) keeps
//! handing an offline member its share of the messages, which would wait for an instance that
//! never returns:
//! 1. UNSUBSCRIBE: the broker routes nothing new to the session. What it had already queued
//!    for it is still delivered (seen on Mosquitto 2.0.11), so taking goes on.
//! 2. Once every message taken is committed and its PUBACK queued, another UNSUBSCRIBE goes out
//!    behind those PUBACKs as a barrier. The broker handles a client's packets in order, and
//!    each PUBACK frees a slot in the window that it refills at once from the queue; so an
//!    UNSUBACK with no PUBLISH ahead of it proves the queue empty. Otherwise: repeat.
//! 3. DISCONNECT, then CONNECT again with clean session (MQTT 3.1.1): the broker deletes the
//!    session, and the clean one ends with its own DISCONNECT.
//!
//! Leaving that cannot finish (the broker or the database gone, or no progress for
//! `LEAVE_STALL`) keeps the session, unsubscribed, for `hyfleet mqtt drain-session`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::Incoming;
use super::batcher::sleep_until_opt;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::{IngestEvent, Metrics};
use crate::shutdown::Shutdown;

/// Largest packet accepted from the broker. Larger payloads are refused by the shipped broker
/// configuration; payloads between `ingest.max_payload_bytes` and this are rejected as
/// `too_large` by the decoder, so they are acknowledged and recorded rather than redelivered.
const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;

/// A stop for a restart waits this long for the batches in flight; what is not acknowledged
/// by then stays with the session, which the broker delivers again when the instance is back.
const STOP_DRAIN: Duration = Duration::from_secs(10);

/// Leaving gives up after this long without progress (nothing taken, nothing committed).
const LEAVE_STALL: Duration = Duration::from_secs(30);

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

/// The broker session to poll.
pub struct Session {
    pub client: AsyncClient,
    pub eventloop: EventLoop,
    /// `{root}/#`, or `$share/{group}/{root}/#`.
    pub filter: String,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Leave on every stop, not only on a retirement (`mqtt.retire_on_shutdown`).
    pub retire_on_shutdown: bool,
}

/// The ingest pipeline behind the poller.
pub struct Pipeline {
    pub tx: mpsc::Sender<Incoming>,
    /// Acknowledgements queued so far (see `acker`).
    pub acked: watch::Receiver<u64>,
    /// Fires once every batch taken is committed and acknowledged, after `tx` is dropped.
    pub drained: oneshot::Receiver<()>,
}

/// What the poller does first.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Subscribe and take messages until a stop.
    Subscribe,
    /// Leave at once: drain a session left behind by an instance that is gone.
    Leave,
}

/// How polling ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ended {
    /// Messages handed to the pipeline.
    pub taken: u64,
    /// Every message taken is committed and acknowledged.
    pub drained: bool,
    /// Leaving was asked for.
    pub leaving: bool,
    /// The session left the subscription, was emptied, and is deleted.
    pub left: bool,
    /// The broker had a session for this client id when it (last) connected.
    pub session_present: bool,
}

enum Phase {
    Running,
    /// Stopping to come back: no more taking, the batches in flight get until the deadline.
    Stopping(Instant),
    Leaving(Leaving),
}

struct Leaving {
    /// The UNSUBSCRIBE awaiting its UNSUBACK: messages taken when it was queued, and whether
    /// every one of them was acknowledged by then (its PUBACK queued ahead of it).
    barrier: Option<(u64, bool)>,
    unsubscribed: bool,
    /// Proven: the broker holds nothing more for this session.
    empty: bool,
    stall_at: Instant,
    seen: (u64, u64),
}

impl Leaving {
    fn new() -> Leaving {
        Leaving {
            barrier: None,
            unsubscribed: false,
            empty: false,
            stall_at: Instant::now() + LEAVE_STALL,
            seen: (0, 0),
        }
    }

    /// Whether anything was taken or committed since the last look; pushes the stall back if so.
    fn progressed(&mut self, taken: u64, acked: u64) -> bool {
        let moved = (taken, acked) != self.seen;
        self.seen = (taken, acked);
        if moved {
            self.stall_at = Instant::now() + LEAVE_STALL;
        }
        moved
    }
}

/// Poll the session until the stop is complete: see the module's comment for the two ways.
pub async fn poll(
    session: Session,
    pipeline: Pipeline,
    mut shutdown: Shutdown,
    start: Start,
) -> Ended {
    let Session {
        client,
        mut eventloop,
        filter,
        metrics,
        health,
        retire_on_shutdown,
    } = session;
    let Pipeline {
        tx,
        mut acked,
        mut drained,
    } = pipeline;
    let mut tx = Some(tx);
    let mut phase = match start {
        Start::Subscribe => Phase::Running,
        Start::Leave => Phase::Leaving(Leaving::new()),
    };
    let mut ended = Ended::default();
    let mut connected = false;
    let mut acker_gone = false;
    let mut late = false;
    let mut backoff = Duration::from_millis(200);
    'poll: loop {
        if let Phase::Leaving(l) = &mut phase
            && connected
            && !l.empty
            && l.barrier.is_none()
        {
            let all_acked = *acked.borrow() == ended.taken;
            if !l.unsubscribed || all_acked {
                if let Err(e) = client.try_unsubscribe(filter.clone()) {
                    tracing::error!(error = %e, "cannot queue the unsubscription");
                    break 'poll;
                }
                l.barrier = Some((ended.taken, all_acked));
                l.unsubscribed = true;
            }
        }
        let stop_at = match &phase {
            Phase::Stopping(at) => Some(*at),
            _ => None,
        };
        let stall_at = match &phase {
            Phase::Leaving(l) => Some(l.stall_at),
            _ => None,
        };
        let leaving = matches!(phase, Phase::Leaving(_));
        let event = tokio::select! {
            biased;
            _ = shutdown.wait(), if matches!(phase, Phase::Running) => {
                phase = begin_stop(retire_on_shutdown || shutdown.is_retiring(), &filter);
                if matches!(phase, Phase::Stopping(_)) {
                    tx = None; // keep polling so that the acknowledgements of what was taken go out
                }
                continue;
            }
            _ = &mut drained, if tx.is_none() => {
                ended.drained = true;
                break;
            }
            _ = sleep_until_opt(stop_at) => {
                tracing::warn!("gave up waiting for in-flight batches; the broker will redeliver them");
                break;
            }
            _ = sleep_until_opt(stall_at) => {
                if let Phase::Leaving(l) = &mut phase && l.progressed(ended.taken, *acked.borrow()) {
                    continue;
                }
                tracing::error!(stall = ?LEAVE_STALL, "leaving made no progress; the session is kept");
                break;
            }
            r = acked.changed(), if leaving && !acker_gone => {
                acker_gone = r.is_err();
                continue;
            }
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(sender) = tx.clone() else {
                    if matches!(&phase, Phase::Leaving(l) if l.empty) {
                        // Against the proof of an empty queue: keep the session rather than
                        // delete what it holds.
                        tracing::error!(topic = %p.topic, "a message arrived after the session was drained; the session is kept");
                        late = true;
                    }
                    continue; // stopping: not acknowledged, so the broker keeps it
                };
                let mut ack = rumqttc::Publish::new("", p.qos, Vec::new());
                ack.pkid = p.pkid;
                let mut msg = Some(Incoming {
                    topic: p.topic,
                    payload: p.payload,
                    ack,
                    received: chrono::Utc::now(),
                    retain: p.retain,
                });
                // Wait while the pipeline is full (backpressure). A stop for a restart drops
                // the message unacknowledged; leaving never drops one.
                while let Some(m) = msg.take() {
                    let stall_at = match &phase {
                        Phase::Leaving(l) => Some(l.stall_at),
                        _ => None,
                    };
                    tokio::select! {
                        biased;
                        permit = sender.reserve() => match permit {
                            Ok(permit) => {
                                permit.send(m);
                                ended.taken += 1;
                                metrics.messages_received.inc();
                                metrics.unacked.inc();
                            }
                            Err(_) => break 'poll, // the pipeline stopped
                        },
                        _ = shutdown.wait(), if matches!(phase, Phase::Running) => {
                            phase = begin_stop(retire_on_shutdown || shutdown.is_retiring(), &filter);
                            if matches!(phase, Phase::Stopping(_)) {
                                tx = None;
                            } else {
                                msg = Some(m);
                            }
                        }
                        _ = sleep_until_opt(stall_at) => {
                            if let Phase::Leaving(l) = &mut phase && l.progressed(ended.taken, *acked.borrow()) {
                                msg = Some(m);
                                continue;
                            }
                            tracing::error!(stall = ?LEAVE_STALL, "leaving made no progress; the session is kept");
                            break 'poll;
                        }
                    }
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(200);
                connected = true;
                ended.session_present = ack.session_present;
                if let Phase::Leaving(l) = &mut phase {
                    tracing::info!(session_present = ack.session_present, %filter, "connected to drain and end this session");
                    l.stall_at = Instant::now() + LEAVE_STALL;
                } else {
                    tracing::info!(session_present = ack.session_present, %filter, "connected to the MQTT broker");
                    if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "cannot queue the subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                IngestEvent::Subscribed.record(&metrics, &health);
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                if let Phase::Leaving(l) = &mut phase
                    && let Some((taken, all_acked)) = l.barrier.take()
                    && all_acked
                    && taken == ended.taken
                {
                    tracing::info!(
                        taken = ended.taken,
                        "the broker holds nothing more for this session"
                    );
                    l.empty = true;
                    tx = None; // the pipeline finishes: every acknowledgement is already out
                }
            }
            Ok(_) => {}
            Err(e) => {
                connected = false;
                match phase {
                    Phase::Stopping(_) => {
                        // The broker is gone: nothing more to send.
                        IngestEvent::Disconnected.record(&metrics, &health);
                        break;
                    }
                    Phase::Leaving(_) => {
                        IngestEvent::Disconnected.record(&metrics, &health);
                        // What was taken on this connection and not acknowledged is delivered
                        // again to the session, which only a new leave can take.
                        tracing::error!(error = %e, "lost the broker while leaving; the session is kept");
                        break;
                    }
                    Phase::Running => {}
                }
                IngestEvent::ConnectionLost {
                    error: &e,
                    retry_in: backoff,
                }
                .record(&metrics, &health);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => {
                        phase = begin_stop(retire_on_shutdown || shutdown.is_retiring(), &filter);
                        if matches!(phase, Phase::Stopping(_)) {
                            tx = None;
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    ended.leaving = matches!(phase, Phase::Leaving(_)) || start == Start::Leave;
    let emptied = matches!(&phase, Phase::Leaving(l) if l.empty) && ended.drained && !late;
    IngestEvent::Disconnected.record(&metrics, &health);
    let _ = client.try_disconnect();
    // Let the disconnect (and any acknowledgement queued before it) go out.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    if emptied {
        match end_session(&eventloop.mqtt_options).await {
            Ok(()) => ended.left = true,
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "the session is drained but could not be deleted; it holds nothing"
            ),
        }
    }
    ended
}

fn begin_stop(retire: bool, filter: &str) -> Phase {
    if retire {
        tracing::info!(%filter, "retiring: leaving the subscription, draining this session, then ending it");
        Phase::Leaving(Leaving::new())
    } else {
        Phase::Stopping(Instant::now() + STOP_DRAIN)
    }
}

/// A CONNECT with clean session discards the stored session, and a clean session is not kept
/// past its DISCONNECT (MQTT 3.1.1 §3.1.2.4).
async fn end_session(opts: &MqttOptions) -> anyhow::Result<()> {
    let mut opts = opts.clone();
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await? {
                Event::Incoming(Packet::ConnAck(_)) => client.try_disconnect()?,
                Event::Outgoing(Outgoing::Disconnect) => return anyhow::Ok(()),
                _ => {}
            }
        }
    })
    .await
    .context("the broker did not answer within 10 s")?
}
