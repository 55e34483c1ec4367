//! The simulator's model does what it claims with a fixed seed, and a real run against the local
//! Mosquitto delivers every message it reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use hyfleet::sim::data::MapData;
use hyfleet::sim::fleet::{Faults, Fleet, FleetConfig, Outgoing};
use hyfleet::sim::geom::LatLon;
use hyfleet::sim::{SimArgs, run};
use serde_json::Value;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 4, 29, 8, 0, 0).unwrap()
}

fn config(bikes: u32, buses: u32, seed: u64) -> FleetConfig {
    let (mut cfg, _) = SimArgs {
        bikes,
        buses,
        ..Default::default()
    }
    .fleet_config(seed)
    .unwrap();
    cfg.topic_root = "t".into();
    cfg
}

/// Runs the model for `secs` simulated seconds in steps of `step_ms`, then finishes it.
fn simulate(cfg: FleetConfig, secs: i64, step_ms: i64) -> (Vec<Outgoing>, Fleet) {
    let mut fleet = Fleet::new(cfg, Arc::new(MapData::xiaoyi()), start());
    let mut out = vec![];
    let mut t = 0;
    while t < secs * 1000 {
        t = (t + step_ms).min(secs * 1000);
        out.extend(fleet.step(start() + chrono::Duration::milliseconds(t)));
    }
    out.extend(fleet.finish());
    (out, fleet)
}

/// A good reading as published, with the vehicle id from its topic.
#[derive(Debug, Clone)]
struct Rec {
    vehicle: String,
    v: Value,
}

impl Rec {
    fn f(&self, k: &str) -> f64 {
        self.v[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {}", self.v))
    }
    fn ts(&self) -> DateTime<Utc> {
        self.v["ts"].as_str().unwrap().parse().unwrap()
    }
}

#[derive(Default)]
struct Parsed {
    readings: Vec<Rec>,
    events: Vec<Rec>,
    not_json: u64,
    no_seq: u64,
    arrays: u64,
    repeats: u64,
}

fn parse(out: &[Outgoing]) -> Parsed {
    let mut p = Parsed::default();
    let mut last: HashMap<&str, &[u8]> = HashMap::new();
    for m in out {
        let parts: Vec<&str> = m.topic.split('/').collect();
        let vehicle = parts[2].to_owned();
        match parts[3] {
            "telemetry" => {
                if last.insert(&m.topic, &m.payload) == Some(&m.payload[..]) {
                    p.repeats += 1;
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                    p.not_json += 1;
                    continue;
                };
                let recs = match v {
                    Value::Array(a) => {
                        p.arrays += 1;
                        a
                    }
                    v => vec![v],
                };
                for v in recs {
                    if v.get("seq").is_none() {
                        p.no_seq += 1;
                    } else {
                        p.readings.push(Rec {
                            vehicle: vehicle.clone(),
                            v,
                        });
                    }
                }
            }
            "event" => p.events.push(Rec {
                vehicle,
                v: serde_json::from_slice(&m.payload).unwrap(),
            }),
            "status" => assert!(m.retain && (m.payload == b"online" || m.payload == b"offline")),
            other => panic!("unexpected topic kind {other}"),
        }
    }
    p
}

fn by_vehicle(recs: &[Rec]) -> BTreeMap<String, Vec<Rec>> {
    let mut m: BTreeMap<String, Vec<Rec>> = BTreeMap::new();
    for r in recs {
        m.entry(r.vehicle.clone()).or_default().push(r.clone());
    }
    for v in m.values_mut() {
        v.sort_by_key(|r| r.v["seq"].as_u64());
    }
    m
}

#[test]
fn a_fleet_reports_as_the_contract_says_with_contiguous_seqs_and_capped_speeds() {
    let (out, fleet) = simulate(config(500, 5, 42), 600, 1000);
    let c = fleet.counts().clone();
    let p = parse(&out);
    assert_eq!(
        c.statuses,
        2 * 505,
        "online at the start, offline at the end"
    );
    assert_eq!(c.messages as usize, out.len());
    assert_eq!(p.readings.len() as u64, c.readings);
    assert_eq!(p.events.len() as u64, c.events);
    let per = by_vehicle(&p.readings);
    assert_eq!(per.len(), 505, "every vehicle reported");
    assert!(per.contains_key("XY-B0500") && per.contains_key("XY-H0005"));
    let last_seq = fleet.last_seq();
    for (id, recs) in &per {
        let seqs: Vec<u64> = recs.iter().map(|r| r.v["seq"].as_u64().unwrap()).collect();
        let want: Vec<u64> = (1..=recs.len() as u64).collect();
        assert_eq!(seqs, want, "{id}: seqs must run from 1 without gaps");
        assert_eq!(u64::from(last_seq[id]), recs.len() as u64);
        assert!(
            recs.windows(2).all(|w| w[0].ts() < w[1].ts()),
            "{id}: time goes forward"
        );
        let cap = if id.starts_with("XY-B") { 23.0 } else { 80.0 };
        for r in recs {
            assert!((0.0..=cap).contains(&r.f("speed_kmh")), "{id}: {}", r.v);
            assert_eq!(r.v["vehicle_id"], id.as_str());
            assert!(r.v["ts"].as_str().unwrap().ends_with('Z'));
        }
    }
    // Buses report every second; a parked bike about once a minute, a riding one every second.
    for j in 1..=5 {
        let n = per[&format!("XY-H{j:04}")].len();
        assert!((599..=601).contains(&n), "bus reported {n} times in 600 s");
    }
    let parked_only = per.values().filter(|r| r.len() <= 11).count();
    assert!(
        parked_only > 300,
        "most bikes stay parked for ten minutes ({parked_only})"
    );
    assert!(
        per.values().all(|r| r.len() >= 9),
        "a parked bike reports every ~60 s"
    );
    // Rides end inside a parking area with a ride_end event.
    let map = MapData::xiaoyi();
    let ends: Vec<&Rec> = p
        .events
        .iter()
        .filter(|e| e.v["type"] == "ride_end")
        .collect();
    assert!(ends.len() >= 10, "{} rides ended", ends.len());
    for e in ends {
        let at = LatLon::new(e.f("lat"), e.f("lon"));
        assert!(map.in_parking(at), "ride ended outside parking: {}", e.v);
    }
}

#[test]
fn hydrogen_falls_with_distance_and_rises_at_stations() {
    let mut cfg = config(60, 2, 7);
    cfg.incidents = true;
    cfg.mean_idle_secs = 120.0;
    let (out, _) = simulate(cfg, 3 * 3600, 5000);
    let p = parse(&out);
    let (mut grams, mut km) = (0.0, 0.0);
    let (mut bus_g, mut bus_km) = (0.0, 0.0);
    // The scripted leak loses hydrogen standing still: it is an incident, not consumption.
    let leaking = format!("XY-H{:04}", hyfleet::sim::incidents::LEAKING_BUS.0 + 1);
    for (id, recs) in by_vehicle(&p.readings) {
        if id == leaking {
            continue;
        }
        for w in recs.windows(2) {
            let d_km = w[1].f("odo_km") - w[0].f("odo_km");
            let d_g = w[0].f("h2_g") - w[1].f("h2_g");
            assert!(d_km >= 0.0, "{id}: the odometer never goes back");
            if d_g < -1.0 {
                continue; // refuelled
            }
            if id.starts_with("XY-B") {
                (grams, km) = (grams + d_g, km + d_km);
            } else {
                (bus_g, bus_km) = (bus_g + d_g, bus_km + d_km);
            }
        }
    }
    assert!(km > 100.0, "bikes rode {km} km");
    let ratio = grams / km;
    assert!((0.80..=0.87).contains(&ratio), "bikes used {ratio} g/km");
    let bus_ratio = bus_g / bus_km;
    assert!(
        (68.0..=80.0).contains(&bus_ratio),
        "buses used {bus_ratio} g/km (71.4 nominal + idling)"
    );
    let refuels: Vec<&Rec> = p
        .events
        .iter()
        .filter(|e| e.v["type"] == "refuel")
        .collect();
    assert!(!refuels.is_empty(), "someone refuelled in three hours");
    for r in &refuels {
        assert!(r.v["station_id"].as_str().unwrap().starts_with("ST"));
        assert!(r.f("h2_g_after") > r.f("h2_g_before"));
        if r.vehicle.starts_with("XY-B") {
            assert!(
                r.f("h2_g_before") < 15.0 && r.f("h2_g_after") >= 49.0,
                "{}",
                r.v
            );
            // The next reading carries the new level.
            let next = p
                .readings
                .iter()
                .find(|x| x.vehicle == r.vehicle && x.ts() >= r.ts())
                .unwrap();
            assert!(next.f("h2_g") >= 49.0);
        }
    }
    assert!(
        refuels.iter().any(|r| r.vehicle == "XY-B0003"),
        "the nearly dry bike refuels"
    );
}

#[test]
fn injected_faults_honour_their_shares_and_never_take_a_seq() {
    let mut cfg = config(40, 1, 3);
    cfg.parked_every_ms = 1000;
    cfg.faults = Faults {
        malformed: 0.05,
        out_of_range: 0.03,
        duplicate: 0.04,
        backlog: 0.002,
        dead_zone_ms: 20_000,
    };
    let (out, fleet) = simulate(cfg, 900, 1000);
    let c = fleet.counts().clone();
    let p = parse(&out);
    let n = c.readings as f64;
    assert!(n > 30_000.0, "{n}");
    for (name, got, share) in [
        ("malformed", c.malformed, 0.05),
        ("out of range", c.out_of_range, 0.03),
        ("duplicates", c.duplicates, 0.04),
    ] {
        let s = got as f64 / n;
        assert!((s - share).abs() < share * 0.2, "{name}: {s} for {share}");
    }
    assert!(
        c.backlogs > 20 && c.backlog_readings > c.backlogs * 5,
        "{c:?}"
    );
    // What was published is what the counts say.
    assert_eq!(p.not_json, c.malformed);
    assert_eq!(p.no_seq, c.out_of_range);
    assert_eq!(p.repeats, c.duplicates);
    assert_eq!(p.arrays, c.backlogs);
    assert_eq!(p.readings.len() as u64, c.readings);
    for (id, recs) in by_vehicle(&p.readings) {
        let seqs: Vec<u64> = recs.iter().map(|r| r.v["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=recs.len() as u64).collect::<Vec<_>>(), "{id}");
    }
}

#[test]
fn the_same_seed_gives_the_same_messages_however_time_is_sliced() {
    let mut cfg = config(50, 2, 99);
    cfg.incidents = true;
    cfg.faults = Faults {
        malformed: 0.01,
        out_of_range: 0.01,
        duplicate: 0.01,
        backlog: 0.01,
        dead_zone_ms: 10_000,
    };
    let (a, _) = simulate(cfg.clone(), 900, 1000);
    let (b, _) = simulate(cfg.clone(), 900, 7_300);
    assert_eq!(a, b);
    cfg.seed = 100;
    let (c, _) = simulate(cfg, 900, 1000);
    assert_ne!(a, c);
    // Faults draw from their own streams: the rides are the same with and without them.
    let mut clean = config(50, 2, 99);
    clean.incidents = true;
    let (d, _) = simulate(clean, 900, 1000);
    let key = |o: &[Outgoing]| -> Vec<(String, u64, f64)> {
        let mut v: Vec<_> = parse(o)
            .readings
            .iter()
            .map(|r| (r.vehicle.clone(), r.v["seq"].as_u64().unwrap(), r.f("lat")))
            .collect();
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v
    };
    assert_eq!(key(&a), key(&d));
}

#[test]
fn incidents_happen_within_the_first_minute() {
    let mut cfg = config(20, 2, 5);
    cfg.incidents = true;
    let (out, _) = simulate(cfg, 60, 1000);
    let p = parse(&out);
    let map = MapData::xiaoyi();
    let per = by_vehicle(&p.readings);
    let ride_end = |id: &str| {
        let e = p
            .events
            .iter()
            .find(|e| e.vehicle == id && e.v["type"] == "ride_end")
            .unwrap_or_else(|| panic!("{id} ended no ride"));
        LatLon::new(e.f("lat"), e.f("lon"))
    };
    let far = ride_end("XY-B0001");
    let nearest = map
        .parking
        .iter()
        .map(|a| a.centre.distance_m(far))
        .fold(f64::MAX, f64::min);
    assert!(
        !map.in_parking(far) && nearest > 140.0,
        "B0001 ends {nearest} m away"
    );
    let near = ride_end("XY-B0002");
    let nearest = map
        .parking
        .iter()
        .map(|a| a.centre.distance_m(near))
        .fold(f64::MAX, f64::min);
    assert!(
        !map.in_parking(near) && nearest < 80.0,
        "B0002 ends just outside ({nearest} m)"
    );
    assert!(
        per["XY-B0003"].iter().all(|r| r.f("h2_g") < 5.0),
        "B0003 is nearly dry"
    );
    assert!(
        per["XY-B0004"].iter().any(|r| r.f("speed_kmh") > 28.0),
        "B0004 overspeeds"
    );
    let leak = &per["XY-B0005"];
    assert!(
        leak.len() >= 5
            && leak
                .iter()
                .all(|r| r.v["locked"] == true && r.f("speed_kmh") == 0.0)
    );
    assert!(
        leak.last().unwrap().f("h2_g") < leak[0].f("h2_g") - 0.35,
        "B0005 leaks while parked"
    );
    let silent = &per["XY-B0006"];
    assert!(!silent.is_empty());
    let cut = start() + chrono::Duration::seconds(20);
    assert!(
        silent.iter().all(|r| r.ts() < cut),
        "B0006 is silent after 20 s"
    );
    let np = ride_end("XY-B0007");
    assert!(
        map.in_no_parking(np) && map.in_parking(np),
        "B0007 ends in a no-parking zone"
    );
    let bus = &per["XY-H0001"];
    assert!(bus.iter().all(|r| r.f("h2_g") < 2_500.0));
    let at = LatLon::new(bus[0].f("lat"), bus[0].f("lon"));
    let to_station = map
        .stations
        .iter()
        .map(|s| s.at.distance_m(at))
        .fold(f64::MAX, f64::min);
    assert!(
        to_station > 10_000.0,
        "the low bus is {to_station} m from a station"
    );
}

/// Runs the real simulator against the local Mosquitto and counts what a subscriber receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_mosquitto_delivers_what_it_reports() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let root = format!("simtest/{}", uuid::Uuid::new_v4().simple());
    // The tests' broker: the system's, or the throwaway one `tests/services.sh` started.
    let url = std::env::var("HYFLEET_TEST_MQTT").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into());
    let ep = hyfleet::config::parse_mqtt_url(&url).unwrap();
    let mut o = MqttOptions::new(
        format!("simtest-sub-{}", uuid::Uuid::new_v4().simple()),
        ep.host,
        ep.port,
    );
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (sub, mut el) = AsyncClient::new(o, 100);
    sub.subscribe(format!("{root}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => tx.send(None).unwrap(),
                Ok(Event::Incoming(Packet::Publish(p))) => tx.send(Some(p)).unwrap(),
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    });
    assert!(matches!(rx.recv().await, Some(None)), "subscribed");
    let args = SimArgs {
        mqtt_url: url.clone(),
        topic_root: root.clone(),
        bikes: 20,
        buses: 1,
        parked_every_secs: 1.0,
        duration_secs: Some(3.0),
        seed: Some(11),
        duplicate_share: 0.1,
        malformed_share: 0.05,
        connections: Some(3),
        ..Default::default()
    };
    let report = run(args, std::future::pending()).await.unwrap();
    assert_eq!(report.publish.handed, report.counts.messages);
    assert_eq!(
        report.publish.confirmed, report.publish.handed,
        "the broker acknowledged all"
    );
    assert!(report.counts.readings >= 21 * 2, "{report}");
    let mut got = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while (got.len() as u64) < report.counts.messages {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Some(p))) => got.push(p),
            _ => break,
        }
    }
    poller.abort();
    assert_eq!(got.len() as u64, report.counts.messages, "{report}");
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for p in got.iter().filter(|p| p.topic.ends_with("/telemetry")) {
        if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
            let id = p.topic.split('/').nth(3).unwrap().to_owned();
            seqs.entry(id).or_default().push(v["seq"].as_u64().unwrap());
        }
    }
    let distinct: u64 = seqs
        .values_mut()
        .map(|s| {
            s.dedup();
            s.len() as u64
        })
        .sum();
    assert_eq!(distinct, report.counts.readings);
    for (id, last) in &report.last_seq {
        assert_eq!(
            seqs[id],
            (1..=u64::from(*last)).collect::<Vec<_>>(),
            "{id} in order, no gaps"
        );
    }
}
