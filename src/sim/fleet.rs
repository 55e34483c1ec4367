//! The whole fleet as a pure, deterministic model: the caller moves an explicit clock forward
//! and gets the MQTT messages that fall due. Each vehicle has its own random streams, so its
//! messages depend only on the seed, its index and the clock, never on how time is sliced.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::bike::{Bike, Ctx};
use super::bus::{Bus, Line};
use super::data::MapData;
use super::incidents;
use super::prng::Rng;
use super::wire::{self, Telemetry};
use crate::domain::VehicleKind;

/// Shares (0–1) of readings that come with an injected fault.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// An extra message that is not JSON, beside the good reading.
    pub malformed: f64,
    /// An extra reading, without seq, with one value out of range.
    pub out_of_range: f64,
    /// The good reading published twice.
    pub duplicate: f64,
    /// The reading starts a dead zone: the vehicle holds its readings for `dead_zone_ms`, then
    /// publishes them as one JSON array.
    pub backlog: f64,
    pub dead_zone_ms: i64,
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub topic_root: String,
    pub bikes: u32,
    pub buses: u32,
    pub seed: u64,
    /// Report interval while riding (and for buses), ms.
    pub riding_every_ms: i64,
    /// Report interval of a parked bike, ms (±5 % jitter from 10 s up).
    pub parked_every_ms: i64,
    /// Mean time a bike stays parked between rides, s.
    pub mean_idle_secs: f64,
    pub faults: Faults,
    pub incidents: bool,
}

/// What has been published so far. `readings` counts each good reading once (duplicates
/// excluded, backlog records included): with `last_seq` it is what a zero-loss check needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub messages: u64,
    pub readings: u64,
    pub events: u64,
    pub statuses: u64,
    pub malformed: u64,
    pub out_of_range: u64,
    pub duplicates: u64,
    pub backlogs: u64,
    pub backlog_readings: u64,
}

/// One MQTT publish. `vehicle` is the index of the vehicle it speaks for (connections are
/// chosen by it, which keeps each vehicle's messages in order).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub vehicle: usize,
}

enum Body {
    Bike(Bike),
    Bus(Bus),
}

struct Vehicle {
    id: String,
    kind: VehicleKind,
    base: String,
    rng: Rng,
    /// Faults draw from their own stream, so turning them on does not change the rides.
    fault_rng: Rng,
    seq: u32,
    last_ms: i64,
    body: Body,
    dead_until: Option<i64>,
    backlog: Vec<Telemetry>,
    held_events: Vec<Vec<u8>>,
    silent: Option<(i64, i64)>,
}

pub struct Fleet {
    cfg: FleetConfig,
    map: Arc<MapData>,
    line: Line,
    vehicles: Vec<Vehicle>,
    queue: BinaryHeap<Reverse<(i64, usize)>>,
    counts: Counts,
    start_ms: i64,
    started: bool,
}

const FAULT_SALT: u64 = 0xFA17_5EED;

impl Fleet {
    pub fn new(cfg: FleetConfig, map: Arc<MapData>, start: DateTime<Utc>) -> Self {
        let start_ms = start.timestamp_millis();
        let line = Line::new(&map.route, &map.stops);
        let ctx = Ctx {
            map: &map,
            riding_ms: cfg.riding_every_ms,
            parked_ms: cfg.parked_every_ms,
            mean_idle_s: cfg.mean_idle_secs,
        };
        let mut vehicles = Vec::with_capacity((cfg.bikes + cfg.buses) as usize);
        let mut queue = BinaryHeap::new();
        for i in 0..cfg.bikes as usize {
            let mut rng = Rng::stream(cfg.seed, i as u64);
            let script = cfg.incidents.then(|| incidents::bike(i, &map)).flatten();
            let (area, script, first) = match script {
                Some((area, s)) => (area, s, start_ms + 100 * i as i64),
                None => {
                    let area = rng.below(map.parking.len());
                    let phase = rng.below(cfg.parked_every_ms.max(1) as usize) as i64;
                    (area, Default::default(), start_ms + phase)
                }
            };
            let id = format!("XY-B{:04}", i + 1);
            let bike = Bike::new(id.clone(), area, start_ms, &ctx, script, &mut rng);
            let silent = (cfg.incidents && i == incidents::SILENT.0).then(|| {
                (
                    start_ms + incidents::SILENT.1,
                    start_ms + incidents::SILENT.2,
                )
            });
            queue.push(Reverse((first, vehicles.len())));
            vehicles.push(Vehicle::new(
                id,
                VehicleKind::Bike,
                &cfg,
                i,
                rng,
                first,
                Body::Bike(bike),
                silent,
            ));
        }
        for j in 0..cfg.buses as usize {
            let index = (1 << 32) | j as u64;
            let mut rng = Rng::stream(cfg.seed, index);
            let id = format!("XY-H{:04}", j + 1);
            let low = cfg.incidents && j == incidents::LOW_BUS.0;
            let leaking = cfg.incidents && j == incidents::LEAKING_BUS.0;
            let (s, towards_jiexiu, h2) = if low {
                (line.len(), false, Some(incidents::LOW_BUS.1))
            } else if leaking {
                (0.0, true, None)
            } else {
                (line.len() * j as f64 / cfg.buses as f64, j % 2 == 0, None)
            };
            let mut bus = Bus::new(id.clone(), s, towards_jiexiu, h2, &ctx, &mut rng);
            bus.dwell_until(start_ms + if low { 30_000 } else { 20_000 * j as i64 });
            if leaking {
                bus.park_leaking(incidents::LEAKING_BUS.1);
            }
            let first = start_ms + rng.below(cfg.riding_every_ms.max(1) as usize) as i64;
            queue.push(Reverse((first, vehicles.len())));
            vehicles.push(Vehicle::new(
                id,
                VehicleKind::Bus,
                &cfg,
                index as usize,
                rng,
                first,
                Body::Bus(bus),
                None,
            ));
        }
        Fleet {
            cfg,
            map,
            line,
            vehicles,
            queue,
            counts: Counts::default(),
            start_ms,
            started: false,
        }
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    pub fn len(&self) -> usize {
        self.vehicles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vehicles.is_empty()
    }

    pub fn vehicle_id(&self, index: usize) -> &str {
        &self.vehicles[index].id
    }

    /// Topic of the retained status of a vehicle (for a connection's last will).
    pub fn status_topic(&self, index: usize) -> String {
        format!("{}/status", self.vehicles[index].base)
    }

    /// Bikes riding or refuelling now.
    pub fn riding(&self) -> usize {
        self.vehicles
            .iter()
            .filter(|v| matches!(&v.body, Body::Bike(b) if b.is_riding()))
            .count()
    }

    /// The seq of the last reading each vehicle has published (vehicles that published none
    /// are left out). Seqs start at 1 and have no gaps.
    pub fn last_seq(&self) -> BTreeMap<String, u32> {
        self.vehicles
            .iter()
            .map(|v| (v.id.clone(), v.seq - v.backlog.len() as u32))
            .filter(|(_, s)| *s > 0)
            .collect()
    }

    /// Everything due up to and including `now`, oldest first; statuses `online` first of all.
    pub fn step(&mut self, now: DateTime<Utc>) -> Vec<Outgoing> {
        let now_ms = now.timestamp_millis();
        let mut out = vec![];
        if !self.started {
            self.started = true;
            for i in 0..self.vehicles.len() {
                self.status(i, "online", &mut out);
            }
        }
        while let Some(&Reverse((at, i))) = self.queue.peek() {
            if at > now_ms {
                break;
            }
            self.queue.pop();
            let next = self.tick(i, at, &mut out);
            self.queue.push(Reverse((next, i)));
        }
        out
    }

    /// Ends the run: held backlogs go out, then every vehicle says `offline`.
    pub fn finish(&mut self) -> Vec<Outgoing> {
        let mut out = vec![];
        for i in 0..self.vehicles.len() {
            self.flush_backlog(i, &mut out);
            self.status(i, "offline", &mut out);
        }
        out
    }

    fn status(&mut self, i: usize, text: &str, out: &mut Vec<Outgoing>) {
        let topic = format!("{}/status", self.vehicles[i].base);
        self.counts.statuses += 1;
        self.push(out, topic, text.as_bytes().to_vec(), true, i);
    }

    fn push(
        &mut self,
        out: &mut Vec<Outgoing>,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        vehicle: usize,
    ) {
        self.counts.messages += 1;
        out.push(Outgoing {
            topic,
            payload,
            retain,
            vehicle,
        });
    }

    /// One report of vehicle `i` at `at`; returns when its next one is due.
    fn tick(&mut self, i: usize, at: i64, out: &mut Vec<Outgoing>) -> i64 {
        let ctx = Ctx {
            map: &self.map,
            riding_ms: self.cfg.riding_every_ms,
            parked_ms: self.cfg.parked_every_ms,
            mean_idle_s: self.cfg.mean_idle_secs,
        };
        let v = &mut self.vehicles[i];
        let dt = (at - v.last_ms).max(0) as f64 / 1000.0;
        v.last_ms = at;
        let tick = match &mut v.body {
            Body::Bike(b) => b.tick(at, dt, &ctx, &mut v.rng),
            Body::Bus(b) => b.tick(at, dt, &self.line, &ctx, &mut v.rng),
        };
        if let Some((from, until)) = v.silent
            && (from..until).contains(&at)
        {
            // Silent firmware sends nothing and numbers nothing.
            return tick.next_ms.max(until);
        }
        let mut t = tick.telemetry;
        v.seq += 1;
        t.seq = Some(v.seq);
        let events: Vec<Vec<u8>> = tick.events.iter().map(wire::to_json).collect();
        let faults = self.cfg.faults;
        match v.dead_until {
            Some(until) if at < until => {
                v.backlog.push(t);
                v.held_events.extend(events);
                return tick.next_ms;
            }
            Some(_) => self.flush_backlog(i, out),
            None if v.fault_rng.chance(faults.backlog) => {
                v.dead_until = Some(at + faults.dead_zone_ms);
                v.backlog.push(t);
                v.held_events.extend(events);
                return tick.next_ms;
            }
            None => {}
        }
        let v = &mut self.vehicles[i];
        let topic = format!("{}/telemetry", v.base);
        let good = wire::to_json(&t);
        let tank = f64::from(self.map.profiles.get(v.kind).tank_g);
        let bad = v
            .fault_rng
            .chance(faults.malformed)
            .then(|| wire::malformed(&good, &mut v.fault_rng));
        let oor = v
            .fault_rng
            .chance(faults.out_of_range)
            .then(|| wire::to_json(&wire::out_of_range(&t, tank, &mut v.fault_rng)));
        let dup = v.fault_rng.chance(faults.duplicate);
        let event_topic = format!("{}/event", v.base);
        if let Some(bad) = bad {
            self.counts.malformed += 1;
            self.push(out, topic.clone(), bad, false, i);
        }
        if let Some(oor) = oor {
            self.counts.out_of_range += 1;
            self.push(out, topic.clone(), oor, false, i);
        }
        self.counts.readings += 1;
        if dup {
            self.counts.duplicates += 1;
            self.push(out, topic.clone(), good.clone(), false, i);
        }
        self.push(out, topic, good, false, i);
        for e in events {
            self.counts.events += 1;
            self.push(out, event_topic.clone(), e, false, i);
        }
        tick.next_ms
    }

    fn flush_backlog(&mut self, i: usize, out: &mut Vec<Outgoing>) {
        let v = &mut self.vehicles[i];
        v.dead_until = None;
        if v.backlog.is_empty() {
            return;
        }
        let records = std::mem::take(&mut v.backlog);
        let events = std::mem::take(&mut v.held_events);
        let topic = format!("{}/telemetry", v.base);
        let event_topic = format!("{}/event", v.base);
        let n = records.len() as u64;
        self.counts.backlogs += 1;
        self.counts.backlog_readings += n;
        self.counts.readings += n;
        self.push(out, topic, wire::to_json(&records), false, i);
        for e in events {
            self.counts.events += 1;
            self.push(out, event_topic.clone(), e, false, i);
        }
    }

    /// Milliseconds since the start of the simulated clock.
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }
}

impl Vehicle {
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: String,
        kind: VehicleKind,
        cfg: &FleetConfig,
        index: usize,
        rng: Rng,
        first: i64,
        body: Body,
        silent: Option<(i64, i64)>,
    ) -> Self {
        Vehicle {
            base: format!("{}/{}/{}", cfg.topic_root, kind.as_str(), id),
            id,
            kind,
            rng,
            fault_rng: Rng::stream(cfg.seed ^ FAULT_SALT, index as u64),
            seq: 0,
            last_ms: first,
            body,
            dead_until: None,
            backlog: vec![],
            held_events: vec![],
            silent,
        }
    }
}
