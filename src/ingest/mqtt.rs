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

use super::batcher::sleep_until_opt;
use super::{Ack, Incoming, Pipeline};
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
        .set_max_packet_size(MAX_INCOMING_PACKET, 1024 * 1024);
    if let Some((user, pass)) = ep.credentials {
        opts.set_credentials(user, pass);
    }
    // The request channel (its capacity is this argument; `set_request_channel_capacity` is
    // not read by `AsyncClient::new`) has room for the acknowledgements of the window. A broker
    // may hand over more than its own in-flight limit, as Mosquitto did under a flood: then
    // the acker waits for room, it never drops one.
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
pub async fn poll(session: Session, pipeline: Pipeline, shutdown: Shutdown, start: Start) -> Ended {
    let mut p = Poller {
        phase: match start {
            Start::Subscribe => Phase::Running,
            Start::Leave => Phase::Leaving(Leaving::new()),
        },
        s: session,
        tx: Some(pipeline.tx),
        acked: pipeline.acked,
        drained: pipeline.drained,
        shutdown,
        ended: Ended::default(),
        connected: false,
        acker_gone: false,
        late: false,
        backoff: Duration::from_millis(200),
    };
    loop {
        if p.leave_step() == Flow::Break {
            break;
        }
        let event = match p.next_event().await {
            Next::Event(e) => e,
            Next::Again => continue,
            Next::Stop => break,
        };
        let flow = match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => p.on_publish(publish).await,
            Ok(Event::Incoming(Packet::ConnAck(ack))) => p.on_connack(ack.session_present),
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                IngestEvent::Subscribed.record(&p.s.metrics, &p.s.health);
                Flow::Continue
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => p.on_unsuback(),
            Ok(_) => Flow::Continue,
            Err(e) => p.on_error(e).await,
        };
        if flow == Flow::Break {
            break;
        }
    }
    p.finish(start).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Break,
}

enum Next {
    Event(Result<Event, rumqttc::ConnectionError>),
    /// Something other than the broker woke the poller; look again.
    Again,
    Stop,
}

/// The poller's state between events.
struct Poller {
    s: Session,
    phase: Phase,
    /// Where messages go; dropped when the poller takes no more.
    tx: Option<mpsc::Sender<Incoming>>,
    acked: watch::Receiver<u64>,
    drained: oneshot::Receiver<()>,
    shutdown: Shutdown,
    ended: Ended,
    connected: bool,
    acker_gone: bool,
    /// A message arrived after the session was proven empty.
    late: bool,
    backoff: Duration,
}

impl Poller {
    /// While leaving: unsubscribe, and once everything taken is acknowledged, send the second
    /// UNSUBSCRIBE whose UNSUBACK proves the queue empty.
    fn leave_step(&mut self) -> Flow {
        if let Phase::Leaving(l) = &mut self.phase
            && self.connected
            && !l.empty
            && l.barrier.is_none()
        {
            let all_acked = *self.acked.borrow() == self.ended.taken;
            if !l.unsubscribed || all_acked {
                if let Err(e) = self.s.client.try_unsubscribe(self.s.filter.clone()) {
                    tracing::error!(error = %e, "cannot queue the unsubscription");
                    return Flow::Break;
                }
                l.barrier = Some((self.ended.taken, all_acked));
                l.unsubscribed = true;
            }
        }
        Flow::Continue
    }

    /// Stop taking messages, to come back (keep the session) or to retire (leave it).
    fn begin_stop(&mut self) {
        let retire = self.s.retire_on_shutdown || self.shutdown.is_retiring();
        self.phase = begin_stop(retire, &self.s.filter);
        if matches!(self.phase, Phase::Stopping(_)) {
            // Keep polling so that the acknowledgements of what was taken go out.
            self.tx = None;
        }
    }

    fn stall_at(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Leaving(l) => Some(l.stall_at),
            _ => None,
        }
    }

    /// Whether leaving still moves; logs when it has stalled for good.
    fn leaving_progressed(&mut self) -> bool {
        let acked = *self.acked.borrow();
        if let Phase::Leaving(l) = &mut self.phase
            && l.progressed(self.ended.taken, acked)
        {
            return true;
        }
        tracing::error!(stall = ?LEAVE_STALL, "leaving made no progress; the session is kept");
        false
    }

    async fn next_event(&mut self) -> Next {
        let stop_at = match &self.phase {
            Phase::Stopping(at) => Some(*at),
            _ => None,
        };
        let stall_at = self.stall_at();
        let running = matches!(self.phase, Phase::Running);
        let leaving = matches!(self.phase, Phase::Leaving(_));
        tokio::select! {
            biased;
            _ = self.shutdown.wait(), if running => {
                self.begin_stop();
                Next::Again
            }
            _ = &mut self.drained, if self.tx.is_none() => {
                self.ended.drained = true;
                Next::Stop
            }
            _ = sleep_until_opt(stop_at) => {
                tracing::warn!("gave up waiting for in-flight batches; the broker will redeliver them");
                Next::Stop
            }
            _ = sleep_until_opt(stall_at) => {
                if self.leaving_progressed() { Next::Again } else { Next::Stop }
            }
            r = self.acked.changed(), if leaving && !self.acker_gone => {
                self.acker_gone = r.is_err();
                Next::Again
            }
            ev = self.s.eventloop.poll() => Next::Event(ev),
        }
    }

    /// Hand a message to the pipeline, waiting while it is full (backpressure). A stop for a
    /// restart drops the message unacknowledged; leaving never drops one.
    async fn on_publish(&mut self, p: rumqttc::Publish) -> Flow {
        let Some(sender) = self.tx.clone() else {
            if matches!(&self.phase, Phase::Leaving(l) if l.empty) {
                // Against the proof of an empty queue: keep the session rather than delete
                // what it holds.
                tracing::error!(topic = %p.topic, "a message arrived after the session was drained; the session is kept");
                self.late = true;
            }
            return Flow::Continue; // stopping: not acknowledged, so the broker keeps it
        };
        let mut ack = rumqttc::Publish::new("", p.qos, Vec::new());
        ack.pkid = p.pkid;
        let mut msg = Some(Incoming {
            topic: p.topic,
            payload: p.payload,
            ack: Ack::Mqtt(ack),
            received: chrono::Utc::now(),
            retain: p.retain,
        });
        while let Some(m) = msg.take() {
            let stall_at = self.stall_at();
            let running = matches!(self.phase, Phase::Running);
            tokio::select! {
                biased;
                permit = sender.reserve() => match permit {
                    Ok(permit) => {
                        permit.send(m);
                        self.ended.taken += 1;
                        self.s.metrics.messages_received.inc();
                        self.s.metrics.unacked.inc();
                    }
                    Err(_) => return Flow::Break, // the pipeline stopped
                },
                _ = self.shutdown.wait(), if running => {
                    self.begin_stop();
                    if !matches!(self.phase, Phase::Stopping(_)) {
                        msg = Some(m);
                    }
                }
                _ = sleep_until_opt(stall_at) => {
                    if !self.leaving_progressed() {
                        return Flow::Break;
                    }
                    msg = Some(m);
                }
            }
        }
        Flow::Continue
    }

    fn on_connack(&mut self, session_present: bool) -> Flow {
        self.backoff = Duration::from_millis(200);
        self.connected = true;
        self.ended.session_present = session_present;
        let filter = &self.s.filter;
        if let Phase::Leaving(l) = &mut self.phase {
            tracing::info!(session_present, %filter, "connected to drain and end this session");
            l.stall_at = Instant::now() + LEAVE_STALL;
        } else {
            tracing::info!(session_present, %filter, "connected to the MQTT broker");
            if let Err(e) = self
                .s
                .client
                .try_subscribe(filter.clone(), QoS::AtLeastOnce)
            {
                tracing::error!(error = %e, "cannot queue the subscription");
            }
        }
        Flow::Continue
    }

    /// The UNSUBACK of the UNSUBSCRIBE sent behind the last acknowledgement proves the queue
    /// empty: the pipeline finishes, every acknowledgement already out.
    fn on_unsuback(&mut self) -> Flow {
        if let Phase::Leaving(l) = &mut self.phase
            && let Some((taken, all_acked)) = l.barrier.take()
            && all_acked
            && taken == self.ended.taken
        {
            tracing::info!(
                taken = self.ended.taken,
                "the broker holds nothing more for this session"
            );
            l.empty = true;
            self.tx = None;
        }
        Flow::Continue
    }

    async fn on_error(&mut self, e: rumqttc::ConnectionError) -> Flow {
        self.connected = false;
        match self.phase {
            Phase::Stopping(_) => {
                // The broker is gone: nothing more to send.
                IngestEvent::Disconnected.record(&self.s.metrics, &self.s.health);
                return Flow::Break;
            }
            Phase::Leaving(_) => {
                IngestEvent::Disconnected.record(&self.s.metrics, &self.s.health);
                // What was taken on this connection and not acknowledged is delivered again to
                // the session, which only a new leave can take.
                tracing::error!(error = %e, "lost the broker while leaving; the session is kept");
                return Flow::Break;
            }
            Phase::Running => {}
        }
        IngestEvent::ConnectionLost {
            error: &e,
            retry_in: self.backoff,
        }
        .record(&self.s.metrics, &self.s.health);
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = self.shutdown.wait() => self.begin_stop(),
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        Flow::Continue
    }

    /// Disconnect, letting what is queued go out; end the session if it was proven empty.
    async fn finish(mut self, start: Start) -> Ended {
        let mut ended = self.ended;
        ended.leaving = matches!(self.phase, Phase::Leaving(_)) || start == Start::Leave;
        let emptied =
            matches!(&self.phase, Phase::Leaving(l) if l.empty) && ended.drained && !self.late;
        IngestEvent::Disconnected.record(&self.s.metrics, &self.s.health);
        let _ = self.s.client.try_disconnect();
        // Let the disconnect (and any acknowledgement queued before it) go out.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(ev) = self.s.eventloop.poll().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
        if emptied {
            match end_session(&self.s.eventloop.mqtt_options).await {
                Ok(()) => ended.left = true,
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "the session is drained but could not be deleted; it holds nothing"
                ),
            }
        }
        ended
    }
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
