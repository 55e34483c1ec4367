//! Helpers of the benchmark harness (`bench/run.py`), kept out of the main CLI:
//!
//! - `sim`: the fleet simulator as `hyfleet simulate` runs it, printing its report as JSON
//!   (with each vehicle's last seq, which the zero-loss check needs) and the wall-clock times
//!   publishing started and ended;
//! - `count`: the broker ceiling probe, a QoS 1 subscriber with manual acks that does nothing
//!   but count (`mosquitto_sub` prints every message and caps far below the broker).

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

async fn count(args: CountArgs) -> anyhow::Result<()> {
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

    let count = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicI64::new(0));
    let last = Arc::new(AtomicI64::new(0));
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
    let (c, f, l, s) = (
        count.clone(),
        first.clone(),
        last.clone(),
        subscribed.clone(),
    );
    let poll = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let t = now_ms();
                    if c.fetch_add(1, Ordering::Relaxed) == 0 {
                        f.store(t, Ordering::Relaxed);
                    }
                    l.store(t, Ordering::Relaxed);
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
    // The harness starts publishing only after this line.
    println!("ready");
    let started = now_ms();
    let idle_ms = (args.idle_secs * 1000.0) as i64;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = count.load(Ordering::Relaxed);
        let t = now_ms();
        if n == 0 {
            if (t - started) as f64 > args.first_within_secs * 1000.0 {
                break;
            }
        } else if t - last.load(Ordering::Relaxed) > idle_ms {
            break;
        }
    }
    poll.abort();
    let out = serde_json::json!({
        "messages": count.load(Ordering::Relaxed),
        "first_unix_ms": first.load(Ordering::Relaxed),
        "last_unix_ms": last.load(Ordering::Relaxed),
    });
    println!("{out}");
    Ok(())
}
