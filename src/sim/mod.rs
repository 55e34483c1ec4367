//! The fleet simulator (`hyfleet simulate`): a realistic Xiaoyi fleet publishing over MQTT per
//! the contract of docs/mqtt.md, with faults and incidents on demand, and the load generator of the
//! benchmarks (`--rate-per-sec`).
//!
//! [`fleet::Fleet`] is the model: pure, seeded, stepped by an explicit clock. [`run`] drives it
//! with the wall clock and publishes what it produces through [`publish::Publisher`]. The
//! report it returns counts every good reading once, so a benchmark can check for zero loss.
//! Incidents and the vehicles that carry them are listed in [`incidents`].

pub mod bike;
pub mod bus;
pub mod data;
pub mod fleet;
pub mod geom;
pub mod incidents;
pub mod prng;
pub mod publish;
pub mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use rumqttc::{LastWill, QoS};
use serde::Serialize;

use data::MapData;
use fleet::{Counts, Faults, Fleet, FleetConfig};
use publish::{PublishStats, Publisher};

/// Up to this many vehicles, each gets its own connection with its own last will, as real
/// firmware would; beyond, vehicles share a few connections.
const OWN_CONNECTION_UP_TO: usize = 1_000;
const SHARED_CONNECTIONS: usize = 4;

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct SimArgs {
    /// Broker to publish to: `mqtt://[user[:password]@]host[:port]`.
    #[arg(long, env = "MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    pub mqtt_url: String,
    #[arg(long, env = "HYFLEET_TOPIC_ROOT", default_value = "hyfleet/v1")]
    pub topic_root: String,
    #[arg(long, default_value_t = 500)]
    pub bikes: u32,
    #[arg(long, default_value_t = 5)]
    pub buses: u32,
    /// Total vehicles (overrides `--bikes`: bikes = vehicles − buses), up to 100,000.
    #[arg(long)]
    pub vehicles: Option<u32>,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Seed of every random choice: the same seed gives the same fleet (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Report interval while riding (bikes) and in service (buses).
    #[arg(long, default_value_t = 1.0)]
    pub report_every_secs: f64,
    /// Report interval of a parked bike (±5 % jitter).
    #[arg(long, default_value_t = 60.0)]
    pub parked_every_secs: f64,
    /// Mean time a bike stays parked between rides.
    #[arg(long, default_value_t = 1800.0)]
    pub mean_idle_secs: f64,
    /// Share of readings accompanied by a message that is not JSON.
    #[arg(long, default_value_t = 0.0)]
    pub malformed_share: f64,
    /// Share of readings accompanied by an out-of-range reading (which takes no seq).
    #[arg(long, default_value_t = 0.0)]
    pub out_of_range_share: f64,
    /// Share of readings published twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_share: f64,
    /// Share of readings that start a dead zone, after which the vehicle sends a backlog array.
    #[arg(long, default_value_t = 0.0)]
    pub backlog_share: f64,
    #[arg(long, default_value_t = 30.0)]
    pub dead_zone_secs: f64,
    /// Scripted incidents in the first minute (see the `incidents` module for which vehicle).
    #[arg(long)]
    pub incidents: bool,
    /// Load generation: publish about this many readings per second in all, every vehicle at
    /// the same interval (vehicles ÷ rate), with real timestamps.
    #[arg(long)]
    pub rate_per_sec: Option<f64>,
    /// MQTT connections in parallel (default: one per vehicle up to 1,000 vehicles, else 4).
    #[arg(long)]
    pub connections: Option<usize>,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Run the simulated clock this many times faster than the wall clock (not with
    /// `--rate-per-sec`). With a duration, the run is placed so that it ends now.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Zones GeoJSON to use instead of the embedded Xiaoyi sample.
    #[arg(long)]
    pub zones: Option<PathBuf>,
    /// Bus route GeoJSON to use instead of the embedded sample.
    #[arg(long)]
    pub bus_route: Option<PathBuf>,
    /// Profiles TOML (`[profiles.bike]`, `[profiles.bus]`) instead of the embedded sample.
    #[arg(long)]
    pub profiles: Option<PathBuf>,
}

impl Default for SimArgs {
    fn default() -> Self {
        SimArgs {
            mqtt_url: "mqtt://127.0.0.1:1883".into(),
            topic_root: "hyfleet/v1".into(),
            bikes: 500,
            buses: 5,
            vehicles: None,
            duration_secs: None,
            seed: None,
            report_every_secs: 1.0,
            parked_every_secs: 60.0,
            mean_idle_secs: 1800.0,
            malformed_share: 0.0,
            out_of_range_share: 0.0,
            duplicate_share: 0.0,
            backlog_share: 0.0,
            dead_zone_secs: 30.0,
            incidents: false,
            rate_per_sec: None,
            connections: None,
            qos: 1,
            time_scale: 1.0,
            zones: None,
            bus_route: None,
            profiles: None,
        }
    }
}

impl SimArgs {
    /// What `hyfleet demo` runs: the Xiaoyi fleet with its incidents and a trickle of bad input,
    /// so that alerts and rejects show up within a minute.
    pub fn demo(mqtt_url: impl Into<String>, topic_root: impl Into<String>) -> Self {
        SimArgs {
            mqtt_url: mqtt_url.into(),
            topic_root: topic_root.into(),
            incidents: true,
            malformed_share: 0.0005,
            out_of_range_share: 0.0005,
            duplicate_share: 0.001,
            backlog_share: 0.0002,
            ..Default::default()
        }
    }

    /// The fleet these arguments describe, and the map it runs on.
    pub fn fleet_config(&self, seed: u64) -> anyhow::Result<(FleetConfig, MapData)> {
        for (name, v) in [
            ("--malformed-share", self.malformed_share),
            ("--out-of-range-share", self.out_of_range_share),
            ("--duplicate-share", self.duplicate_share),
            ("--backlog-share", self.backlog_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be between 0 and 1, not {v}");
            }
        }
        let positive = [
            ("--report-every-secs", self.report_every_secs),
            ("--parked-every-secs", self.parked_every_secs),
            ("--mean-idle-secs", self.mean_idle_secs),
            ("--time-scale", self.time_scale),
            ("--dead-zone-secs", self.dead_zone_secs),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} must be a positive number, not {v}");
            }
        }
        let bikes = match self.vehicles {
            Some(n) if n > 100_000 => bail!("--vehicles is limited to 100,000"),
            Some(n) => n.saturating_sub(self.buses),
            None => self.bikes,
        };
        if bikes + self.buses == 0 {
            bail!("there are no vehicles to simulate");
        }
        let (mut riding, mut parked) = (self.report_every_secs, self.parked_every_secs);
        if let Some(rate) = self.rate_per_sec {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate-per-sec must be positive");
            }
            riding = f64::from(bikes + self.buses) / rate;
            parked = riding;
        }
        let map = self.map_data()?;
        let cfg = FleetConfig {
            topic_root: self.topic_root.trim_end_matches('/').to_owned(),
            bikes,
            buses: self.buses,
            seed,
            riding_every_ms: ((riding * 1000.0).round() as i64).max(1),
            parked_every_ms: ((parked * 1000.0).round() as i64).max(1),
            mean_idle_secs: self.mean_idle_secs,
            faults: Faults {
                malformed: self.malformed_share,
                out_of_range: self.out_of_range_share,
                duplicate: self.duplicate_share,
                backlog: self.backlog_share,
                dead_zone_ms: (self.dead_zone_secs * 1000.0) as i64,
            },
            incidents: self.incidents,
        };
        Ok((cfg, map))
    }

    fn map_data(&self) -> anyhow::Result<MapData> {
        let read = |p: &Option<PathBuf>, embedded: &'static str| -> anyhow::Result<String> {
            match p {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display())),
                None => Ok(embedded.to_owned()),
            }
        };
        MapData::parse(
            &read(&self.zones, crate::sample::ZONES_GEOJSON)?,
            &read(&self.bus_route, crate::sample::BUS_ROUTE_GEOJSON)?,
            &read(&self.profiles, crate::sample::PROFILES_TOML)?,
        )
    }
}

/// What a run published.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub seed: u64,
    pub vehicles: usize,
    pub elapsed_secs: f64,
    pub counts: Counts,
    pub publish: PublishStats,
    /// Good readings per second of wall time.
    pub readings_per_sec: f64,
    /// Last seq published per vehicle; each vehicle's seqs run 1..=last without gaps.
    pub last_seq: BTreeMap<String, u32>,
}

impl std::fmt::Display for SimReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "seed {}, {} vehicles, {:.1} s",
            self.seed, self.vehicles, self.elapsed_secs
        )?;
        writeln!(
            f,
            "readings {} ({:.0}/s; {} in {} backlogs), events {}, statuses {}",
            c.readings, self.readings_per_sec, c.backlog_readings, c.backlogs, c.events, c.statuses
        )?;
        writeln!(
            f,
            "faults: malformed {}, out of range {}, duplicates {}",
            c.malformed, c.out_of_range, c.duplicates
        )?;
        write!(
            f,
            "messages {} handed to {} connections, {} confirmed by the broker",
            self.publish.handed, self.publish.connections, self.publish.confirmed
        )
    }
}

/// Runs the fleet against the broker until `shutdown` resolves or the duration is over.
pub async fn run(args: SimArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<SimReport> {
    let seed = args
        .seed
        .unwrap_or_else(|| Utc::now().timestamp_micros() as u64);
    let (cfg, map) = args.fleet_config(seed)?;
    let endpoint = crate::config::parse_mqtt_url(&args.mqtt_url)
        .map_err(|e| anyhow::anyhow!("--mqtt-url: {e}"))?;
    let scale = if args.rate_per_sec.is_some() {
        1.0
    } else {
        args.time_scale
    };
    let wall_start = Instant::now();
    let now = Utc::now();
    // With a faster clock and a known duration, end at the wall clock rather than in the future
    // (where the backend would reject readings as clock skew).
    let sim_start = match args.duration_secs {
        Some(d) if scale > 1.0 => {
            now - chrono::Duration::milliseconds((d * (scale - 1.0) * 1000.0) as i64)
        }
        _ => now,
    };
    let mut fleet = Fleet::new(cfg, Arc::new(map), sim_start);
    let n = fleet.len();
    let conns = args
        .connections
        .unwrap_or(
            if args.rate_per_sec.is_none() && n <= OWN_CONNECTION_UP_TO {
                n
            } else {
                SHARED_CONNECTIONS
            },
        )
        .clamp(1, n.max(1));
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let prefix = format!("hyfleet-sim-{}-{}", std::process::id(), seed % 1_000_000);
    let wills: Vec<Option<LastWill>> = (0..conns)
        .map(|i| {
            (conns == n)
                .then(|| LastWill::new(fleet.status_topic(i), "offline", QoS::AtLeastOnce, true))
        })
        .collect();
    let mut publisher =
        Publisher::connect(&endpoint, &prefix, conns, qos, |i| wills[i].clone()).await?;
    tracing::info!(
        vehicles = n,
        connections = conns,
        seed,
        "simulator publishing to {}",
        args.mqtt_url
    );

    let end = args.duration_secs.map(Duration::from_secs_f64);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_log = Duration::from_secs(10);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let elapsed = wall_start.elapsed();
        let last = end.is_some_and(|e| elapsed >= e);
        let sim_elapsed = end.filter(|_| last).unwrap_or(elapsed).mul_f64(scale);
        let sim_now = sim_start + chrono::Duration::from_std(sim_elapsed).unwrap_or_default();
        for m in fleet.step(sim_now) {
            publisher.send(m).await?;
        }
        if elapsed >= next_log {
            next_log += Duration::from_secs(10);
            let c = fleet.counts();
            tracing::info!(
                readings = c.readings,
                messages = c.messages,
                riding = fleet.riding(),
                "simulator running"
            );
        }
        if last {
            break;
        }
    }
    for m in fleet.finish() {
        publisher.send(m).await?;
    }
    let publish = publisher.close(Duration::from_secs(30)).await;
    let elapsed = wall_start.elapsed().as_secs_f64();
    let counts = fleet.counts().clone();
    Ok(SimReport {
        seed,
        vehicles: n,
        elapsed_secs: elapsed,
        readings_per_sec: counts.readings as f64 / elapsed.max(1e-9),
        counts,
        publish,
        last_seq: fleet.last_seq(),
    })
}
