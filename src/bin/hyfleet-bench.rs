//! Helpers of the benchmark harness (`bench/run.py`), kept out of the main CLI:
//!
//! - `sim`: the fleet simulator as `hyfleet simulate` runs it, printing its report as JSON
//!   (with each vehicle's last seq, which the zero-loss check needs) and the wall-clock times
//!   publishing started and ended;
//! - `count`: the broker ceiling probe, a QoS 1 subscriber with manual acks that does nothing
//!   but count (`mosquitto_sub` prints every message and caps far below the broker); with
//!   `--nats-url`, the same over NATS JetStream: a work-queue stream and a durable pull
//!   consumer as hyfleet's `[nats]` source makes them, each message counted and acknowledged;
//! - `rules`: the rules engine alone on one core, over the Xiaoyi zones: what each reading
//!   costs before any database work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hyfleet::{config::parse_mqtt_url, sim};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Parser)]
#[command(about = "Helpers of the hyfleet benchmark harness (bench/run.py)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the simulator and print its report as one JSON line.
    Sim(Box<sim::SimArgs>),
    /// Count telemetry messages under a topic root until none arrives for `--idle-secs`.
    Count(CountArgs),
    /// Time the rules engine alone (every built-in rule, the sample zones) and print JSON.
    Rules(RulesArgs),
}

#[derive(clap::Args)]
struct RulesArgs {
    #[arg(long, default_value_t = 1000)]
    vehicles: usize,
    /// Readings per vehicle: bikes riding at 1 Hz through the city, a ride ending every 300.
    #[arg(long, default_value_t = 300)]
    readings: usize,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

#[derive(clap::Args)]
struct CountArgs {
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt_url: String,
    #[arg(long)]
    topic_root: String,
    /// Stop once messages have stopped arriving for this long (after the first one).
    #[arg(long, default_value_t = 3.0)]
    idle_secs: f64,
    /// Give up if nothing arrives at all within this long.
    #[arg(long, default_value_t = 120.0)]
    first_within_secs: f64,
    /// Messages the broker may have in flight to this subscriber (rumqttc's window).
    #[arg(long, default_value_t = 20_000)]
    inflight: u16,
    /// Count from NATS JetStream instead (`nats://host:port`, several separated by commas):
    /// the stream `--stream` capturing `{topic root with '/' as '.'}.>` and the durable pull
    /// consumer `--consumer`, created if missing as hyfleet's `[nats]` source creates them.
    #[arg(long)]
    nats_url: Option<String>,
    #[arg(long, default_value = "BENCH_COUNT")]
    stream: String,
    #[arg(long, default_value = "bench-count")]
    consumer: String,
    /// The stream's copies of each message.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Messages asked for per pull (hyfleet pulls its batch size, clamped to 100..=1,000).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// The consumer's cap on messages delivered and not acknowledged (hyfleet's default).
    #[arg(long, default_value_t = 120_000)]
    max_ack_pending: i64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Sim(args) => run_sim(*args).await,
            Command::Count(args) => count(args).await,
            Command::Rules(args) => rules(args),
        }
    })
}

async fn run_sim(args: sim::SimArgs) -> anyhow::Result<()> {
    let started = now_ms();
    let report = sim::run(args, std::future::pending()).await?;
    let mut v = serde_json::to_value(&report)?;
    v["started_unix_ms"] = started.into();
    v["finished_unix_ms"] = now_ms().into();
    println!("{}", serde_json::to_string(&v)?);
    Ok(())
}

/// Messages counted so far and the wall-clock times of the first and the last.
#[derive(Default)]
struct Tally {
    count: AtomicU64,
    first: AtomicI64,
    last: AtomicI64,
}

impl Tally {
    fn hit(&self) {
        let t = now_ms();
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            self.first.store(t, Ordering::Relaxed);
        }
        self.last.store(t, Ordering::Relaxed);
    }

    /// Prints `ready`, waits until messages stopped arriving for `--idle-secs` (or none came
    /// within `--first-within-secs`), then prints the count as JSON.
    async fn report(&self, args: &CountArgs) {
        // The harness starts publishing only after this line.
        println!("ready");
        let started = now_ms();
        let idle_ms = (args.idle_secs * 1000.0) as i64;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = self.count.load(Ordering::Relaxed);
            let t = now_ms();
            if n == 0 {
                if (t - started) as f64 > args.first_within_secs * 1000.0 {
                    break;
                }
            } else if t - self.last.load(Ordering::Relaxed) > idle_ms {
                break;
            }
        }
        let out = serde_json::json!({
            "messages": self.count.load(Ordering::Relaxed),
            "first_unix_ms": self.first.load(Ordering::Relaxed),
            "last_unix_ms": self.last.load(Ordering::Relaxed),
        });
        println!("{out}");
    }
}

/// The NATS counting consumer: pulls from a durable consumer of a work-queue stream, counts
/// the telemetry messages and acknowledges every message as it arrives.
async fn count_nats(args: CountArgs, url: &str) -> anyhow::Result<()> {
    use async_nats::jetstream::{self, consumer, stream};
    use futures_util::StreamExt as _;

    let servers: Vec<String> = url.split(',').map(|s| s.trim().to_owned()).collect();
    let client = async_nats::ConnectOptions::new()
        .name("hyfleet-bench count")
        .retry_on_initial_connect()
        .connect(servers.as_slice())
        .await
        .context("connecting to NATS")?;
    let js = jetstream::new(client.clone());
    let root = args.topic_root.trim_end_matches('/').replace('/', ".");
    let wanted = stream::Config {
        name: args.stream.clone(),
        subjects: vec![format!("{root}.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: args.replicas,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    // JetStream may still be electing its leaders: retried, as hyfleet retries.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let consumer = loop {
        let attempt = async {
            let stream = js.get_or_create_stream(wanted.clone()).await?;
            let consumer: consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &args.consumer,
                    consumer::pull::Config {
                        durable_name: Some(args.consumer.clone()),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(30),
                        max_ack_pending: args.max_ack_pending,
                        max_deliver: -1,
                        ..Default::default()
                    },
                )
                .await?;
            anyhow::Ok(consumer)
        };
        match attempt.await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "JetStream not ready");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e.context("the stream and its consumer")),
        }
    };
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(args.batch)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("pull: {e}"))?;
    let tally = Arc::new(Tally::default());
    let t = tally.clone();
    let pull = tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "JetStream pull");
                    continue;
                }
            };
            if m.message.subject.ends_with(".telemetry") {
                t.hit();
            }
            if let Some(reply) = m.message.reply.clone()
                && client.publish(reply, bytes::Bytes::new()).await.is_err()
            {
                break;
            }
        }
    });
    tally.report(&args).await;
    pull.abort();
    Ok(())
}

async fn count(args: CountArgs) -> anyhow::Result<()> {
    if let Some(url) = args.nats_url.clone() {
        return count_nats(args, &url).await;
    }
    let ep = parse_mqtt_url(&args.mqtt_url).map_err(|e| anyhow::anyhow!("--mqtt-url: {e}"))?;
    let mut o = MqttOptions::new(
        format!("hyfleet-bench-count-{}", std::process::id()),
        ep.host.clone(),
        ep.port,
    );
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_manual_acks(true)
        .set_inflight(args.inflight)
        .set_request_channel_capacity(100_000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 100_000);
    let filter = format!("{}/+/+/telemetry", args.topic_root.trim_end_matches('/'));

    let tally = Arc::new(Tally::default());
    let subscribed = Arc::new(AtomicBool::new(false));
    // Acks go through their own task: awaiting the client from the polling task deadlocks once
    // its request channel fills (rumqttc #1025).
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
    let acker = client.clone();
    tokio::spawn(async move {
        while let Some(p) = ack_rx.recv().await {
            if acker.ack(&p).await.is_err() {
                break;
            }
        }
    });
    let (t, s) = (tally.clone(), subscribed.clone());
    let poll = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    t.hit();
                    if ack_tx.send(p).is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => s.store(true, Ordering::Release),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "counting subscriber lost its connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    client
        .subscribe(&filter, QoS::AtLeastOnce)
        .await
        .context("subscribe")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !subscribed.load(Ordering::Acquire) {
        if tokio::time::Instant::now() > deadline {
            bail!("no SUBACK from the broker within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tally.report(&args).await;
    poll.abort();
    Ok(())
}

/// Readings of `vehicles` bikes riding through the sample city, one second apart, each ride
/// ending (locked) every 300 readings: every rule runs, parking checks included.
fn rules(args: RulesArgs) -> anyhow::Result<()> {
    use chrono::{Duration as Span, TimeZone as _, Utc};
    use hyfleet::domain::{Reading, VehicleId, VehicleKind};
    use hyfleet::rules::{Engine, VehicleInfo, VehicleRuleState};

    let config = hyfleet::config::Config::default();
    let zones =
        hyfleet::geo::parse_zones(hyfleet::sample::ZONES_GEOJSON, hyfleet::geo::Crs::Wgs84)?;
    let zones = Arc::new(hyfleet::geo::ZoneIndex::new(zones));
    let engine = Engine::new(&config.rules, &config.profiles, config.geo.crs, zones)?;
    let info = VehicleInfo {
        kind: VehicleKind::Bike,
        tank_g: 50.0,
        km_per_g: None,
    };
    let t0 = Utc.with_ymd_and_hms(2026, 11, 29, 8, 0, 0).unwrap();
    let mut rng = 0x6879_666c_6565_7421u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let fleet: Vec<Vec<Reading>> = (0..args.vehicles)
        .map(|v| {
            let (mut lat, mut lon) = (37.12 + 0.05 * next(), 111.75 + 0.06 * next());
            let mut h2 = 50.0f32;
            (0..args.readings)
                .map(|i| {
                    lat += (next() - 0.5) * 1e-4;
                    lon += (next() - 0.5) * 1e-4;
                    h2 = (h2 - 0.01).max(0.0);
                    Reading {
                        vehicle: VehicleId::parse(&format!("XY-B{v:05}")).expect("a valid id"),
                        kind: VehicleKind::Bike,
                        ts: t0 + Span::seconds(i as i64),
                        seq: Some(i as u32),
                        lat,
                        lon,
                        hdop: Some(0.9),
                        speed_kmh: 15.0 + 10.0 * next() as f32,
                        heading_deg: Some(90.0),
                        h2_g: h2,
                        h2_pressure_bar: None,
                        tank_temp_c: Some(20.0),
                        fc_power_w: Some(180.0),
                        fc_temp_c: Some(45.0),
                        batt_v: Some(12.6),
                        odo_km: Some(i as f64 * 0.005),
                        locked: Some(i % 300 == 299),
                        faults: Vec::new(),
                        extra: None,
                    }
                })
                .collect()
        })
        .collect();
    let total = args.vehicles * args.readings;
    let mut per_reading_ns = Vec::new();
    let mut outputs = 0usize;
    for _ in 0..args.repeats.max(1) {
        let mut states: Vec<VehicleRuleState> = vec![VehicleRuleState::default(); args.vehicles];
        let started = std::time::Instant::now();
        for (readings, state) in fleet.iter().zip(&mut states) {
            for r in readings {
                outputs += engine.on_reading(state, r, &info).len();
            }
            // What the batch writer stores per vehicle and batch.
            std::hint::black_box(serde_json::to_value(&*state)?);
        }
        per_reading_ns.push(started.elapsed().as_nanos() as f64 / total as f64);
    }
    per_reading_ns.sort_by(f64::total_cmp);
    let median = per_reading_ns[per_reading_ns.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "vehicles": args.vehicles, "readings": total, "repeats": args.repeats,
            "ns_per_reading_median": median, "readings_per_core_sec": 1e9 / median,
            "ns_per_reading_all": per_reading_ns, "outputs": outputs,
        })
    );
    Ok(())
}
