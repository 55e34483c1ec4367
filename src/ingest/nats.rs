//! The JetStream side: every instance pulls from one durable consumer of one stream, and
//! acknowledges each message once its batch committed.
//!
//! nats-server's MQTT listener turns a device's `hyfleet/v1/bike/XY-B0001/telemetry` into the
//! subject `hyfleet.v1.bike.XY-B0001.telemetry`, and the stream captures `hyfleet.v1.>`. The
//! consumer hands each message to one instance at a time; one not acknowledged within
//! `nats.ack_wait_secs` (its instance died, or its batch is still failing) goes out again, to
//! any instance, and the store skips what it already has. A stop is the same for a restart and
//! for good: nothing is held for an instance once it is gone, so scaling down needs no
//! draining. A stop takes no more, gives back what was delivered but not taken, and lets the
//! batches in flight commit and acknowledge.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::{FutureExt as _, StreamExt as _};

use super::{Ack, Incoming, IngestDeps, Pipeline, Stages, acker};
use crate::config::Config;
use crate::config::nats::NatsConfig;
use crate::metrics::IngestEvent;
use crate::shutdown::Shutdown;

/// A stop waits this long for the batches in flight; what is not acknowledged by then is handed
/// out again after `ack_wait`.
const STOP_DRAIN: Duration = Duration::from_secs(10);

/// The subject a topic root maps to: `hyfleet/v1` → `hyfleet.v1`.
pub fn subject_root(topic_root: &str) -> String {
    topic_root.replace('/', ".")
}

/// The MQTT topic a subject came from, as nats-server maps it: a topic's `/` is a subject's
/// `.`, and a topic's `.` is a subject's `//`.
fn topic_of(subject: &str) -> String {
    if !subject.contains("//") {
        // Every message of a fleet whose ids have no `.`: one allocation.
        return subject.replace('.', "/");
    }
    subject
        .split("//")
        .map(|part| part.replace('.', "/"))
        .collect::<Vec<_>>()
        .join(".")
}

/// A client of the cluster `nats.url` names, logged in as it says. With `keep_trying`, it
/// returns at once and connects in the background (ingest waits for the cluster); without,
/// an unreachable cluster is an error (`hyfleet doctor`).
pub async fn connect(
    nats: &NatsConfig,
    name: String,
    keep_trying: bool,
) -> anyhow::Result<async_nats::Client> {
    let (servers, login) = nats
        .servers()
        .map_err(anyhow::Error::msg)
        .context("nats.url")?;
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5));
    if keep_trying {
        options = options.retry_on_initial_connect();
    }
    if let Some((user, password)) = login {
        options = options.user_and_password(user, password);
    }
    let client = options.connect(servers.as_slice()).await?;
    Ok(client)
}

pub async fn run(config: &Config, deps: IngestDeps, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let name = format!("hyfleet {}", config.mqtt.client_id);
    let client = connect(&config.nats, name, true)
        .await
        .context("connecting to NATS")?;
    let Some(consumer) = consumer_of(config, &client, &deps, &mut shutdown).await else {
        return Ok(()); // stopped before JetStream answered: nothing was taken
    };
    let (stages, pipeline) =
        Stages::spawn(config, &deps, acker::Source::Nats(client.clone())).await?;
    let batch = config.ingest.batch_max_rows.clamp(100, 1_000);
    let drained = pull(&consumer, batch, pipeline, &deps, shutdown).await;
    // Let the acknowledgements already queued reach the server.
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    IngestEvent::Disconnected.record(&deps.metrics, &deps.health);
    stages.finish(drained).await
}

/// The stream and the durable consumer, created as configured if missing; retried until
/// JetStream answers (a cluster still electing its leaders, a node down).
async fn consumer_of(
    config: &Config,
    client: &async_nats::Client,
    deps: &IngestDeps,
    shutdown: &mut Shutdown,
) -> Option<consumer::PullConsumer> {
    let js = jetstream::new(client.clone());
    let mut backoff = Duration::from_millis(200);
    loop {
        match ensure(config, &js).await {
            Ok(consumer) => return Some(consumer),
            Err(e) => IngestEvent::ConnectionLost {
                error: &format!("{e:#}"),
                retry_in: backoff,
            }
            .record(&deps.metrics, &deps.health),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn ensure(
    config: &Config,
    js: &jetstream::Context,
) -> anyhow::Result<consumer::PullConsumer> {
    let nats = &config.nats;
    let subjects = vec![format!("{}.>", subject_root(&config.mqtt.topic_root))];
    let wanted = stream::Config {
        name: nats.stream.clone(),
        subjects: subjects.clone(),
        // A queue: a message is gone once hyfleet acknowledged it.
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: nats.replicas,
        max_age: nats.max_age(),
        max_bytes: nats.max_bytes,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(wanted)
        .await
        .with_context(|| format!("the stream {}", nats.stream))?;
    let found = &stream.info().await?.config;
    if found.subjects != subjects || found.num_replicas != nats.replicas {
        tracing::warn!(
            stream = %nats.stream,
            subjects = ?found.subjects,
            replicas = found.num_replicas,
            "the stream exists with other settings than nats.replicas and mqtt.topic_root ask for; \
             it is used as it is"
        );
    }
    let consumer = stream
        .get_or_create_consumer(
            &nats.consumer,
            consumer::pull::Config {
                durable_name: Some(nats.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: nats.ack_wait(),
                max_ack_pending: nats.max_ack_pending,
                // Never give up on a message: a reading is stored or the stream's limits drop it.
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("the consumer {}", nats.consumer))?;
    Ok(consumer)
}

/// Pull and hand messages to the pipeline until a stop; whether every message taken was
/// committed and acknowledged by the end.
async fn pull(
    consumer: &consumer::PullConsumer,
    batch: usize,
    pipeline: Pipeline,
    deps: &IngestDeps,
    mut shutdown: Shutdown,
) -> bool {
    let Pipeline {
        tx,
        acked: _,
        mut drained,
    } = pipeline;
    let metrics = &deps.metrics;
    let mut backoff = Duration::from_millis(200);
    'connect: loop {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(m) => {
                IngestEvent::Subscribed.record(metrics, &deps.health);
                backoff = Duration::from_millis(200);
                m
            }
            Err(e) => {
                IngestEvent::ConnectionLost {
                    error: &e,
                    retry_in: backoff,
                }
                .record(metrics, &deps.health);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => break 'connect,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let m = tokio::select! {
                biased;
                _ = shutdown.wait() => {
                    give_back(&mut messages).await;
                    break 'connect;
                }
                m = messages.next() => m,
            };
            let m = match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // Missed heartbeats, a leader changing: the pull goes on, or ends (`None`).
                    tracing::warn!(error = %e, "JetStream pull");
                    continue;
                }
                None => continue 'connect,
            };
            let Some(reply) = m.message.reply.clone() else {
                continue; // not a JetStream delivery: nothing to acknowledge, nothing to store
            };
            let incoming = Incoming {
                topic: topic_of(&m.message.subject),
                payload: m.message.payload.clone(),
                ack: Ack::Nats(reply),
                received: chrono::Utc::now(),
                retain: false,
            };
            tokio::select! {
                biased;
                sent = tx.send(incoming) => {
                    if sent.is_err() {
                        return false; // the pipeline stopped
                    }
                    metrics.messages_received.inc();
                    metrics.unacked.inc();
                }
                _ = shutdown.wait() => {
                    // Not taken: handed out again at once.
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                    give_back(&mut messages).await;
                    break 'connect;
                }
            }
        }
    }
    drop(tx);
    tokio::select! {
        r = &mut drained => r.is_ok(),
        _ = tokio::time::sleep(STOP_DRAIN) => {
            tracing::warn!("gave up waiting for in-flight batches; JetStream hands them out again after nats.ack_wait_secs");
            false
        }
    }
}

/// Give back the messages delivered to this instance and not taken, so that another instance
/// gets them at once rather than after `ack_wait`.
async fn give_back(messages: &mut consumer::pull::Stream) {
    let mut n = 0u32;
    while let Some(Some(Ok(m))) = messages.next().now_or_never() {
        let _ = m.ack_with(AckKind::Nak(None)).await;
        n += 1;
    }
    if n > 0 {
        tracing::info!(
            messages = n,
            "gave back the messages delivered and not taken"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{subject_root, topic_of};

    #[test]
    fn subjects_map_back_to_the_topics_devices_published() {
        assert_eq!(subject_root("hyfleet/v1"), "hyfleet.v1");
        assert_eq!(
            topic_of("hyfleet.v1.bike.XY-B0001.telemetry"),
            "hyfleet/v1/bike/XY-B0001/telemetry"
        );
        // A `.` in a topic travels as `//`.
        assert_eq!(
            topic_of("hyfleet.v1.bike.XY//B1.event"),
            "hyfleet/v1/bike/XY.B1/event"
        );
    }
}
