//! Messages in from a source, committed batches out, acknowledgements after commit.
//!
//! ```text
//! source ─▶ batcher (decode, by vehicle) ─▶ writers ×N (one transaction per batch)
//!                                         ─▶ acker ─▶ source
//! ```
//! The source is an MQTT session (`mqtt`) or a JetStream durable consumer (`nats`); the
//! stages behind it are the same. Every stage is joined to the next by a bounded channel, so
//! when PostgreSQL is slow or down the writers stop taking batches, the batcher stops taking
//! messages, the source stops reading and the broker keeps what it has not delivered: memory
//! stays bounded (at most `batch_max_rows × (3 × writers + 1)` messages: per writer the batch
//! it writes, one queued and one filling, plus the channel in front of the batcher) and
//! nothing is lost. Each vehicle's messages go to one writer, so writers do not wait on each
//! other's row locks. Acknowledgements go out in the order messages arrived, only once they
//! committed; a crash therefore leaves every unacknowledged message with the broker, which
//! delivers it again, and the store skips what it already has.

mod acker;
mod batcher;
mod budget;
pub mod commit;
mod mqtt;
mod nats;
pub mod sweep;
mod writers;

use std::sync::Arc;

use crate::config::Config;
use crate::decode::Decoder;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

pub use commit::Services;
pub use nats::{connect as connect_nats, subject_root};

/// What ingest shares with the rest of the service.
#[derive(Clone)]
pub struct IngestDeps {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// What each batch's unit of work reaches beyond the database.
    pub services: Services,
}

/// A message taken from the source: what to decode and how to acknowledge it.
struct Incoming {
    topic: String,
    payload: bytes::Bytes,
    ack: Ack,
    received: chrono::DateTime<chrono::Utc>,
    /// Set by the broker on a retained message it replays because hyfleet (re)subscribed.
    retain: bool,
}

/// How a message is acknowledged to its source once its batch committed.
enum Ack {
    /// The PUBACK of this packet id.
    Mqtt(rumqttc::Publish),
    /// An acknowledgement to the delivery's reply subject (`$JS.ACK.…`).
    Nats(async_nats::Subject),
}

/// Run ingest until `shutdown` fires, then drain: commit what was taken, acknowledge it,
/// disconnect. A stop keeps the broker session for a restart; a retirement
/// (`Trigger::retire`, or any stop with `mqtt.retire_on_shutdown`) leaves the subscription
/// and ends the session, and fails if it cannot.
pub async fn run(config: &Config, deps: IngestDeps, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.nats.url.is_some() {
        return nats::run(config, deps, shutdown).await;
    }
    let ended = pipeline(config, deps, shutdown, mqtt::Start::Subscribe).await?;
    if ended.leaving && !ended.left {
        anyhow::bail!(
            "could not drain and end the MQTT session `{}`: it is kept at the broker; \
             run `hyfleet mqtt drain-session --client-id {}` once the broker and the database are reachable",
            config.mqtt.client_id,
            config.mqtt.client_id
        );
    }
    Ok(())
}

/// Take what the broker holds for the session `mqtt.client_id` of an instance that is gone,
/// through the whole pipeline (decode, dedup, rules, store), then end the session. Returns
/// the number of messages taken. Only for a client id that no running instance uses: the
/// broker would hand the session back and forth between the two.
pub async fn drain_session(config: &Config, deps: IngestDeps) -> anyhow::Result<u64> {
    let ended = pipeline(config, deps, Shutdown::never(), mqtt::Start::Leave).await?;
    if !ended.left {
        anyhow::bail!(
            "the session `{}` is not drained ({} messages taken and {}); nothing was lost: \
             run the command again",
            config.mqtt.client_id,
            ended.taken,
            if ended.drained {
                "committed"
            } else {
                "not all committed"
            }
        );
    }
    if !ended.session_present {
        tracing::warn!(client_id = %config.mqtt.client_id, "the broker had no session for this client id");
    }
    Ok(ended.taken)
}

async fn pipeline(
    config: &Config,
    deps: IngestDeps,
    shutdown: Shutdown,
    start: mqtt::Start,
) -> anyhow::Result<mqtt::Ended> {
    let (client, eventloop) = mqtt::client(config, Stages::window(config))?;
    let (stages, pipeline) =
        Stages::spawn(config, &deps, acker::Source::Mqtt(client.clone())).await?;
    let filter = match &config.mqtt.shared_group {
        Some(group) => format!("$share/{group}/{}", stages.decoder.subscription()),
        None => stages.decoder.subscription(),
    };
    let session = mqtt::Session {
        client,
        eventloop,
        filter,
        metrics: deps.metrics.clone(),
        health: deps.health.clone(),
        retire_on_shutdown: config.mqtt.retire_on_shutdown,
    };
    let ended = mqtt::poll(session, pipeline, shutdown, start).await;
    stages.finish(ended.drained).await?;
    Ok(ended)
}

/// What a source hands messages to, and hears back from.
struct Pipeline {
    tx: tokio::sync::mpsc::Sender<Incoming>,
    /// Acknowledgements sent so far (see `acker`).
    acked: tokio::sync::watch::Receiver<u64>,
    /// Fires once every message taken is committed and acknowledged, after `tx` is dropped.
    drained: tokio::sync::oneshot::Receiver<()>,
}

/// The stages behind a source: the batcher, the writers and the acker.
struct Stages {
    decoder: Decoder,
    batcher: tokio::task::JoinHandle<anyhow::Result<()>>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    acker: tokio::task::JoinHandle<()>,
}

impl Stages {
    /// The messages one instance may hold unacknowledged: the batches of every writer (the one
    /// it writes, one queued, one filling) and two more for the channel in front of the batcher.
    fn window(config: &Config) -> usize {
        config.ingest.batch_max_rows * (3 * config.ingest.writers + 2)
    }

    async fn spawn(
        config: &Config,
        deps: &IngestDeps,
        source: acker::Source,
    ) -> anyhow::Result<(Stages, Pipeline)> {
        let decoder = Decoder::new(config);
        let (msg_tx, msg_rx) = tokio::sync::mpsc::channel(config.ingest.batch_max_rows.min(10_000));
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
        let (acked_tx, acked_rx) = tokio::sync::watch::channel(0u64);
        let (writers, jobs) = writers::spawn(config, deps, done_tx).await?;
        let batcher = tokio::spawn(batcher::run(
            decoder.clone(),
            config.ingest.clone(),
            deps.metrics.clone(),
            msg_rx,
            jobs,
        ));
        let acker = tokio::spawn(acker::run(
            source,
            deps.metrics.clone(),
            done_rx,
            acked_tx,
            drained_tx,
        ));
        let stages = Stages {
            decoder,
            batcher,
            writers,
            acker,
        };
        let pipeline = Pipeline {
            tx: msg_tx,
            acked: acked_rx,
            drained: drained_rx,
        };
        Ok((stages, pipeline))
    }

    /// Wait for the stages once the source `drained` them; otherwise stop them: what is not
    /// acknowledged stays with the broker. Writers retry a batch until it commits, so with the
    /// database down waiting for them would never end.
    async fn finish(self, drained: bool) -> anyhow::Result<()> {
        if drained {
            self.batcher.await??;
            for w in self.writers {
                w.await?;
            }
            self.acker.await?;
        } else {
            self.batcher.abort();
            for w in &self.writers {
                w.abort();
            }
            self.acker.abort();
        }
        Ok(())
    }
}
