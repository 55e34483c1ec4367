//! MQTT side of the simulator: several connections in parallel, each with its event loop polled
//! in its own task (rumqttc issue #1025: awaiting a publish from the polling task deadlocks once
//! the request channel fills), so publishing never waits on the loop that drains it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use super::fleet::Outgoing;
use crate::config::MqttEndpoint;

/// Room for a burst between the generator and each socket.
const REQUEST_CAPACITY: usize = 2_000;

#[derive(Default)]
struct Stats {
    connected: AtomicBool,
    /// Publishes written to the socket (QoS 0) and acknowledged by the broker (QoS 1).
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    stopping: AtomicBool,
}

struct Conn {
    client: AsyncClient,
    stats: Arc<Stats>,
    handed: u64,
    poll: JoinHandle<()>,
}

pub struct Publisher {
    conns: Vec<Conn>,
    qos: QoS,
}

/// Per-run publishing figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PublishStats {
    pub connections: usize,
    /// Messages handed to the MQTT clients.
    pub handed: u64,
    /// Of those, confirmed: acknowledged (QoS 1) or written (QoS 0).
    pub confirmed: u64,
    pub connection_errors: u64,
}

impl Publisher {
    /// Opens `n` connections; `will(i)` gives connection `i` its last will, if it has one.
    pub async fn connect(
        ep: &MqttEndpoint,
        client_prefix: &str,
        n: usize,
        qos: QoS,
        will: impl Fn(usize) -> Option<LastWill>,
    ) -> anyhow::Result<Self> {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let mut o = MqttOptions::new(format!("{client_prefix}-{i}"), ep.host.clone(), ep.port);
            o.set_keep_alive(Duration::from_secs(30))
                .set_clean_session(true)
                .set_inflight(1_000)
                .set_request_channel_capacity(REQUEST_CAPACITY)
                .set_max_packet_size(1 << 20, 1 << 20);
            if let Some((user, pass)) = &ep.credentials {
                o.set_credentials(user.clone(), pass.clone());
            }
            if let Some(w) = will(i) {
                o.set_last_will(w);
            }
            let (client, mut eventloop) = AsyncClient::new(o, REQUEST_CAPACITY);
            let stats = Arc::new(Stats::default());
            let s = stats.clone();
            let poll = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            s.connected.store(true, Ordering::Release)
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            s.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => {
                            s.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(e) => {
                            if s.stopping.load(Ordering::Acquire) {
                                break;
                            }
                            s.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "simulator connection lost; reconnecting");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
            conns.push(Conn {
                client,
                stats,
                handed: 0,
                poll,
            });
        }
        let p = Publisher { conns, qos };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !p
            .conns
            .iter()
            .all(|c| c.stats.connected.load(Ordering::Acquire))
        {
            if tokio::time::Instant::now() > deadline {
                p.abort();
                bail!(
                    "cannot connect to the MQTT broker at {}:{} within 10 s",
                    ep.host,
                    ep.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(p)
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Hands one message to its vehicle's connection; waits only when that connection is full.
    pub async fn send(&mut self, m: Outgoing) -> anyhow::Result<()> {
        let n = self.conns.len();
        let c = &mut self.conns[m.vehicle % n];
        c.client
            .publish(m.topic, self.qos, m.retain, m.payload)
            .await
            .context("the MQTT client stopped")?;
        c.handed += 1;
        Ok(())
    }

    /// Confirmed messages so far, over all connections.
    pub fn confirmed(&self) -> u64 {
        self.conns.iter().map(|c| self.confirmed_on(c)).sum()
    }

    fn confirmed_on(&self, c: &Conn) -> u64 {
        match self.qos {
            QoS::AtMostOnce => c.stats.sent.load(Ordering::Relaxed),
            _ => c.stats.acked.load(Ordering::Relaxed),
        }
    }

    /// Waits (up to `wait`) until everything handed over is confirmed, then disconnects cleanly
    /// (so no last will fires).
    pub async fn close(self, wait: Duration) -> PublishStats {
        let handed: u64 = self.conns.iter().map(|c| c.handed).sum();
        let deadline = tokio::time::Instant::now() + wait;
        while self.confirmed() < handed && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stats = PublishStats {
            connections: self.conns.len(),
            handed,
            confirmed: self.confirmed(),
            connection_errors: self
                .conns
                .iter()
                .map(|c| c.stats.errors.load(Ordering::Relaxed))
                .sum(),
        };
        for c in &self.conns {
            c.stats.stopping.store(true, Ordering::Release);
            let _ = c.client.disconnect().await;
        }
        for c in self.conns {
            let mut poll = c.poll;
            if tokio::time::timeout(Duration::from_secs(2), &mut poll)
                .await
                .is_err()
            {
                poll.abort();
            }
        }
        stats
    }

    fn abort(&self) {
        for c in &self.conns {
            c.poll.abort();
        }
    }
}
