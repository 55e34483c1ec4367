//! The naive pipeline: the least work that keeps hyfleet's delivery promise (nothing the broker
//! accepted is lost: a message is acknowledged only after what it carried is committed).
//!
//! rumqttc with manual acks, QoS 1, a persistent session → serde into a typed struct →
//! tokio-postgres binary COPY of up to `--batch` rows into a table whose primary key is
//! (vehicle, ts, seq) → commit → ack each message of the batch. One batch at a time; no
//! validation, no rules, no state. A batch that is not full is written once no message has
//! arrived for `--idle-ms`, so that the tail of a burst is committed.
//!
//! With `--count-only N` it is the burst's ceiling instead: a consumer that does no work at
//! all, acknowledging each message as it arrives and printing `done` once it has N. What it
//! reaches is what the broker and the publishers leave of the machine to any consumer.
//!
//! Prints `ready` on stdout once subscribed. Usage:
//!
//! ```text
//! hyfleet-naive-peer --mqtt 127.0.0.1:1883 --topic 'root/+/+/telemetry' --client-id naive-1 \
//!     --dsn 'host=127.0.0.1 user=postgres dbname=x' [--table naive_telemetry] [--batch 5000] [--idle-ms 50]
//! hyfleet-naive-peer --mqtt 127.0.0.1:1883 --topic 'root/+/+/telemetry' --client-id count-1 --count-only 100000
//! ```

use std::pin::pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

/// One reading as firmware sends it (docs/mqtt.md); fields not named here are ignored.
#[derive(Deserialize)]
struct Reading {
    ts: DateTime<Utc>,
    seq: i64,
    lat: f64,
    lon: f64,
    hdop: Option<f32>,
    speed_kmh: f32,
    heading_deg: Option<f32>,
    h2_g: f32,
    h2_pressure_bar: Option<f32>,
    tank_temp_c: Option<f32>,
    fc_power_w: Option<f32>,
    fc_temp_c: Option<f32>,
    batt_v: Option<f32>,
    odo_km: Option<f64>,
    locked: Option<bool>,
    faults: Option<Vec<String>>,
}

const COLUMNS: &str = "vehicle, ts, seq, lat, lon, hdop, speed_kmh, heading_deg, h2_g, h2_pressure_bar, \
                       tank_temp_c, fc_power_w, fc_temp_c, batt_v, odo_km, locked, faults";
const TYPES: [Type; 17] = [
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::BOOL,
    Type::TEXT_ARRAY,
];

struct Args {
    mqtt: String,
    topic: String,
    client_id: String,
    dsn: String,
    table: String,
    batch: usize,
    idle: Duration,
    count_only: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        mqtt: "127.0.0.1:1883".into(),
        topic: "hyfleet/v1/+/+/telemetry".into(),
        client_id: "hyfleet-naive-peer".into(),
        dsn: "host=127.0.0.1 user=postgres".into(),
        table: "naive_telemetry".into(),
        batch: 5000,
        idle: Duration::from_millis(50),
        count_only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--mqtt" => a.mqtt = v,
            "--topic" => a.topic = v,
            "--client-id" => a.client_id = v,
            "--dsn" => a.dsn = v,
            "--table" => a.table = v,
            "--batch" => a.batch = v.parse().expect("--batch"),
            "--idle-ms" => a.idle = Duration::from_millis(v.parse().expect("--idle-ms")),
            "--count-only" => a.count_only = Some(v.parse().expect("--count-only")),
            _ => panic!("unknown option {k}"),
        }
    }
    a
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args();
    if let Some(n) = a.count_only {
        return count_only(&a, n).await;
    }
    let (db, conn) = tokio_postgres::connect(&a.dsn, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("postgres connection: {e}");
            std::process::exit(1);
        }
    });
    let mut db = db;
    db.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (vehicle text NOT NULL, ts timestamptz NOT NULL, seq bigint NOT NULL, \
         lat double precision NOT NULL, lon double precision NOT NULL, hdop real, speed_kmh real NOT NULL, \
         heading_deg real, h2_g real NOT NULL, h2_pressure_bar real, tank_temp_c real, fc_power_w real, \
         fc_temp_c real, batt_v real, odo_km double precision, locked boolean, faults text[], \
         PRIMARY KEY (vehicle, ts, seq))",
        t = a.table
    ))
    .await?;
    let copy = format!("COPY {} ({COLUMNS}) FROM STDIN (FORMAT binary)", a.table);

    let (host, port) = a.mqtt.rsplit_once(':').expect("--mqtt host:port");
    let mut opts = MqttOptions::new(&a.client_id, host, port.parse()?);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        // Every ack of a batch may be queued at once without waiting on the poll loop.
        .set_request_channel_capacity(4 * a.batch);
    let (client, mut eventloop) = AsyncClient::new(opts, 4 * a.batch);
    client.subscribe(&a.topic, QoS::AtLeastOnce).await?;

    // The poll loop runs on its own and hands each publish to the writer.
    let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
    tokio::spawn(async move {
        let mut ready = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) if !ready => {
                    ready = true;
                    println!("ready");
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("mqtt: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });

    let mut batch: Vec<Publish> = Vec::with_capacity(a.batch);
    loop {
        // Wait for a first message, then fill until full or idle.
        match rx.recv().await {
            Some(p) => batch.push(p),
            None => return Ok(()),
        }
        while batch.len() < a.batch {
            match tokio::time::timeout(a.idle, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        let mut rows = Vec::with_capacity(batch.len());
        for p in &batch {
            let vehicle = p.topic.rsplit('/').nth(1).unwrap_or_default().to_owned();
            match serde_json::from_slice::<Reading>(&p.payload) {
                Ok(r) => rows.push((vehicle, r)),
                Err(e) => eprintln!("skipped a message of {vehicle}: {e}"),
            }
        }
        // Retried until it commits: the messages stay unacknowledged meanwhile.
        loop {
            match write(&mut db, &copy, &rows).await {
                Ok(()) => break,
                Err(e) => {
                    eprintln!("batch of {} rows: {e}", rows.len());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        for p in batch.drain(..) {
            client.ack(&p).await?;
        }
    }
}

async fn write(db: &mut tokio_postgres::Client, copy: &str, rows: &[(String, Reading)]) -> Result<(), tokio_postgres::Error> {
    let tx = db.transaction().await?;
    let sink = tx.copy_in(copy).await?;
    let mut w = pin!(BinaryCopyInWriter::new(sink, &TYPES));
    for (v, r) in rows {
        let values: [&(dyn ToSql + Sync); 17] = [
            v,
            &r.ts,
            &r.seq,
            &r.lat,
            &r.lon,
            &r.hdop,
            &r.speed_kmh,
            &r.heading_deg,
            &r.h2_g,
            &r.h2_pressure_bar,
            &r.tank_temp_c,
            &r.fc_power_w,
            &r.fc_temp_c,
            &r.batt_v,
            &r.odo_km,
            &r.locked,
            &r.faults,
        ];
        w.as_mut().write(&values).await?;
    }
    w.as_mut().finish().await?;
    tx.commit().await
}

/// The ceiling: acknowledge every message as it arrives, print `done` at the `n`th.
async fn count_only(a: &Args, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let (host, port) = a.mqtt.rsplit_once(':').expect("--mqtt host:port");
    let mut opts = MqttOptions::new(&a.client_id, host, port.parse()?);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_request_channel_capacity(20_000);
    let (client, mut eventloop) = AsyncClient::new(opts, 20_000);
    client.subscribe(&a.topic, QoS::AtLeastOnce).await?;
    let mut seen = 0usize;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                client.ack(&p).await?;
                seen += 1;
                if seen == n {
                    println!("done");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => println!("ready"),
            Ok(_) => {}
            Err(e) => {
                eprintln!("mqtt: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
