//! Buses and vehicles without a lock, alerts that go back down, the refuel plan, and numbers as
//! people read them: each through the real service, its MQTT ingest, PostgreSQL and HTTP.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::support::*;

/// A webhook receiver that keeps every body it is sent.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<Value>>>);

impl Inbox {
    fn all(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }
}

async fn receiver() -> (String, Inbox) {
    let inbox = Inbox::default();
    let kept = inbox.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap();
                kept.0.lock().unwrap().push(v);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, inbox)
}

fn webhook(url: &str) -> hyfleet::notify::WebhookConfig {
    hyfleet::notify::WebhookConfig {
        name: "ops".into(),
        url: url.into(),
        secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        events: hyfleet::domain::AlertEventType::ALL.to_vec(),
        format: hyfleet::notify::Format::Generic,
        rate_per_minute: None,
    }
}

/// The service with a webhook to a receiver of its own, and a firmware publisher.
struct Fleet {
    db: TestDb,
    svc: InProcess,
    fw: Publisher,
    root: String,
    inbox: Inbox,
}

impl Fleet {
    async fn start() -> Fleet {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut hyfleet::config::Config)) -> Fleet {
        let (url, inbox) = receiver().await;
        let db = TestDb::new().await;
        let mut config = config(&db, &BROKER);
        config.notify.allow_private_networks = true;
        config.webhooks.push(webhook(&url));
        adjust(&mut config);
        let root = config.mqtt.topic_root.clone();
        let svc = InProcess::start(config).await;
        let fw = Publisher::connect(&BROKER).await;
        Fleet {
            db,
            svc,
            fw,
            root,
            inbox,
        }
    }

    /// Publish readings of one vehicle as backlog arrays of at most 200 (under 64 KiB), in order.
    async fn send(&mut self, kind: &str, id: &str, readings: &[Value]) {
        let topic = format!("{}/{kind}/{id}/telemetry", self.root);
        for chunk in readings.chunks(200) {
            self.fw.publish(&topic, json!(chunk).to_string()).await;
        }
        self.fw.flush().await;
    }

    async fn event(&mut self, kind: &str, id: &str, event: Value) {
        let topic = format!("{}/{kind}/{id}/event", self.root);
        self.fw.publish(&topic, event.to_string()).await;
        self.fw.flush().await;
    }

    /// Wait until `n` readings of `id` are stored (and so seen by the rules).
    async fn stored(&self, id: &str, n: i64) {
        let client = self.db.client().await;
        eventually(60, "readings stored", || async {
            let got: i64 = client
                .query_one(
                    "SELECT count(*) FROM telemetry t JOIN vehicles v ON v.id = t.vehicle \
                     WHERE v.code = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get(0);
            (got >= n).then_some(())
        })
        .await;
    }

    async fn get(&self, path: &str) -> Value {
        let r = get(&self.svc.url(path)).await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn alerts(&self, id: &str) -> Vec<Value> {
        let v = self.get(&format!("/api/v1/alerts?vehicle={id}")).await;
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

fn at(start: DateTime<Utc>, secs: i64) -> String {
    (start + chrono::Duration::seconds(secs)).to_rfc3339()
}

/// Xiaoyi's bus depot, in the sample city's service area.
const DEPOT: (f64, f64) = (37.1402, 111.7741);

fn bus_reading(start: DateTime<Utc>, secs: i64, h2: f64) -> Value {
    json!({"ts": at(start, secs), "lat": DEPOT.0, "lon": DEPOT.1, "speed_kmh": 0.0,
           "h2_g": h2, "fc_power_w": 0.0, "h2_pressure_bar": 300.0, "tank_temp_c": 20.0})
}

#[tokio::test]
async fn a_bus_parked_for_hours_losing_hydrogen_raises_a_leak() {
    let mut f = Fleet::start().await;
    let start = Utc::now() - chrono::Duration::hours(3);
    // Two hours at the depot with the stack off, a reading a minute, 15 g lost each minute.
    let night: Vec<Value> = (0..120)
        .map(|i| bus_reading(start, i * 60, 20_000.0 - 15.0 * i as f64))
        .collect();
    f.send("bus", "XY-H0001", &night).await;
    f.stored("XY-H0001", 120).await;
    let leak = eventually(30, "a leak alert", || async {
        f.alerts("XY-H0001")
            .await
            .into_iter()
            .find(|a| a["rule"] == "h2_leak_suspected")
    })
    .await;
    assert_eq!(leak["severity"], "critical");
    assert_eq!(leak["state"], "open");
    assert!(
        leak["details"]["drop_g"].as_f64().unwrap() > 200.0,
        "{leak}"
    );
    let delivered = eventually(30, "the leak delivered", || async {
        f.inbox.all().into_iter().find(|e| {
            e["type"] == "hyfleet.alert.opened" && e["data"]["rule"] == "h2_leak_suspected"
        })
    })
    .await;
    assert_eq!(delivered["subject"], "XY-H0001");
    f.svc.stop().await;
}

#[tokio::test]
async fn a_hot_full_bus_tank_is_no_tank_fault() {
    let mut f = Fleet::start().await;
    let start = Utc::now() - chrono::Duration::hours(1);
    // A full 350 bar tank in the afternoon sun: about 410 bar at 60 °C, for ten minutes.
    let hot = |i: i64, bar: f64| {
        let mut r = bus_reading(start, i * 10, 24_500.0);
        r["h2_pressure_bar"] = json!(bar);
        r["tank_temp_c"] = json!(60.0);
        r
    };
    let afternoon: Vec<Value> = (0..60).map(|i| hot(i, 410.0)).collect();
    f.send("bus", "XY-H0002", &afternoon).await;
    f.stored("XY-H0002", 60).await;
    // Past the maximum operating pressure (1.25 × 350 = 437.5 bar) it is a fault: the rule
    // is watching, and the band it reports is the standard's.
    let over: Vec<Value> = (60..70).map(|i| hot(i, 445.0)).collect();
    f.send("bus", "XY-H0002", &over).await;
    f.stored("XY-H0002", 70).await;
    let fault = eventually(30, "the over-pressure fault", || async {
        f.alerts("XY-H0002")
            .await
            .into_iter()
            .find(|a| a["rule"] == "tank_fault")
    })
    .await;
    assert_eq!(fault["details"]["pressure_band_bar"], json!([0.0, 437.5]));
    assert_eq!(fault["details"]["h2_pressure_bar"], json!(445.0));
    let client = f.db.client().await;
    let opened_at: DateTime<Utc> = client
        .query_one(
            "SELECT min(opened_at) FROM alerts WHERE rule = 'tank_fault'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        opened_at >= start + chrono::Duration::seconds(600),
        "no fault while the hot tank was within its band (opened {opened_at})"
    );
    f.svc.stop().await;
}

/// A bus on the Xiaoyi–Jiexiu road, `legs` times: 200 km at 60 km/h and 80 g/km from a
/// 24 kg tank, then a refuel at the energy island that fills it a kilogram a minute (so one
/// refuel spans many readings). A reading a minute, from `start`.
fn bus_legs(start: DateTime<Utc>, legs: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut secs = 0;
    let mut odo = 30_000.0;
    let mut h2 = 24_000.0;
    let fill = |out: &mut Vec<Value>, secs: &mut i64, odo: f64, from: f64| {
        let mut g = from;
        while g < 24_000.0 {
            g = (g + 1000.0).min(24_000.0);
            let mut r = bus_reading(start, *secs, g);
            r["odo_km"] = json!(odo);
            out.push(r);
            *secs += 60;
        }
    };
    fill(&mut out, &mut secs, odo, 23_000.0);
    for _ in 0..legs {
        for _ in 0..200 {
            let mut r = bus_reading(start, secs, h2);
            r["speed_kmh"] = json!(60.0);
            r["fc_power_w"] = json!(40_000.0);
            r["odo_km"] = json!(odo);
            out.push(r);
            secs += 60;
            odo += 1.0;
            h2 -= 80.0;
        }
        fill(&mut out, &mut secs, odo, h2);
        h2 = 24_000.0;
    }
    out
}

#[tokio::test]
async fn a_bus_learns_its_consumption_over_three_refuels() {
    let mut f = Fleet::start().await;
    let start = Utc::now() - chrono::Duration::hours(20);
    let readings = bus_legs(start, 3);
    let n = readings.len() as i64;
    f.send("bus", "XY-H0003", &readings).await;
    f.stored("XY-H0003", n).await;
    let v = eventually(30, "a learned consumption", || async {
        let v = f.get("/api/v1/vehicles/XY-H0003").await;
        v["learned_km_per_g"].as_f64().map(|_| v)
    })
    .await;
    let learned = v["learned_km_per_g"].as_f64().unwrap();
    assert!((learned - 0.0125).abs() < 0.0003, "{v}");
    // The configured figure is the profile's (350 km on 25 kg) and stays so.
    assert_eq!(v["km_per_g"], json!(0.014));
    // Range is predicted from what was learned: 24 kg at 12.5 km/kg.
    let range = v["range_km"].as_f64().unwrap();
    assert!((range - 300.0).abs() < 8.0, "{v}");
    f.svc.stop().await;
}

#[tokio::test]
async fn an_operator_set_consumption_survives_learning() {
    let mut f = Fleet::start().await;
    let start = Utc::now() - chrono::Duration::hours(20);
    let readings = bus_legs(start, 2);
    // The first reading registers the bus; then an operator sets its consumption.
    f.send("bus", "XY-H0004", &readings[..1]).await;
    f.stored("XY-H0004", 1).await;
    let client = f.db.client().await;
    client
        .execute(
            "UPDATE vehicles SET km_per_g = 0.011 WHERE code = 'XY-H0004'",
            &[],
        )
        .await
        .unwrap();
    f.send("bus", "XY-H0004", &readings[1..]).await;
    f.stored("XY-H0004", readings.len() as i64).await;
    let v = eventually(30, "a learned consumption", || async {
        let v = f.get("/api/v1/vehicles/XY-H0004").await;
        v["learned_km_per_g"].as_f64().map(|_| v)
    })
    .await;
    assert_eq!(
        v["km_per_g"],
        json!(0.011),
        "the operator's figure is kept: {v}"
    );
    let learned = v["learned_km_per_g"].as_f64().unwrap();
    assert!((learned - 0.0125).abs() < 0.0003, "{v}");
    f.svc.stop().await;
}

fn bike_reading(start: DateTime<Utc>, i: i64, h2: f64) -> Value {
    // Riding in small circles around parking area P01 of the sample data, below the cap.
    let a = i as f64 / 5.0;
    json!({"ts": at(start, i * 20), "seq": i, "speed_kmh": 12.0, "h2_g": h2, "locked": false,
           "lat": ((37.146617 + 0.0004 * a.sin()) * 1e6).round() / 1e6,
           "lon": ((111.781676 + 0.0005 * a.cos()) * 1e6).round() / 1e6})
}

#[tokio::test]
async fn a_partial_refuel_takes_a_critical_alert_back_to_warning_for_the_webhook() {
    let mut f = Fleet::start().await;
    let start = Utc::now() - chrono::Duration::minutes(30);
    // Four minutes at 4 g (8 %): critical. Then the rider buys 4 g at an island: 8 g (16 %),
    // above critical but below the clear level (25 %), for two minutes.
    let mut readings: Vec<Value> = (0..12).map(|i| bike_reading(start, i, 4.0)).collect();
    readings.extend((12..18).map(|i| bike_reading(start, i, 8.0)));
    f.send("bike", "XY-B0200", &readings).await;
    f.stored("XY-B0200", 18).await;
    let got = eventually(30, "opened and de-escalated delivered", || async {
        let v: Vec<(String, String)> = f
            .inbox
            .all()
            .iter()
            .filter(|e| e["data"]["rule"] == "low_hydrogen")
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["data"]["severity"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (v.len() >= 2).then_some(v)
    })
    .await;
    assert_eq!(
        got,
        [
            ("hyfleet.alert.opened".to_owned(), "critical".to_owned()),
            ("hyfleet.alert.deescalated".to_owned(), "warning".to_owned()),
        ]
    );
    let alerts = f.alerts("XY-B0200").await;
    let low = alerts.iter().find(|a| a["rule"] == "low_hydrogen").unwrap();
    assert_eq!(
        (low["state"].as_str(), low["severity"].as_str()),
        (Some("open"), Some("warning"))
    );
    let client = f.db.client().await;
    let kinds: Vec<String> = client
        .query(
            "SELECT event_type FROM alert_transitions t JOIN alerts a ON a.id = t.alert_id \
             WHERE a.rule = 'low_hydrogen' ORDER BY t.at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds, ["alert.opened", "alert.deescalated"]);
    f.svc.stop().await;
}

#[allow(clippy::too_many_arguments)]
async fn add_vehicle(
    db: &tokio_postgres::Client,
    code: &str,
    kind: &str,
    tank_g: f32,
    km_per_g: f32,
    h2_g: f32,
    lat: f64,
    lon: f64,
) {
    db.execute(
        "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g, h2_g, lat, lon, \
         online, last_ts, speed_kmh) VALUES ($1, $2, $3, 23, $4, $5, $6, $7, true, now(), 0)",
        &[&code, &kind, &tank_g, &km_per_g, &h2_g, &lat, &lon],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_refuel_plan_measures_as_the_rule_does_and_sends_each_kind_to_its_own_station() {
    let f = Fleet::start().await;
    let db = f.db.client().await;
    db.execute("DELETE FROM zones", &[]).await.unwrap();
    let station = |id: &str, lat: f64, lon: f64, kinds: Value| {
        let mut props = json!({"id": id, "kind": "station", "name": id, "radius_m": 30});
        if !kinds.is_null() {
            props["kinds"] = kinds;
        }
        json!({"type": "Feature", "properties": props,
               "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    };
    // A bike island next to both vehicles, a bus island 20 km away.
    let zones = json!({"type": "FeatureCollection", "features": [
        station("BIKES", 37.1450, 111.7810, json!(["bike"])),
        station("BUSES", 37.0270, 111.9130, json!(["bus"])),
    ]});
    let r = reqwest::Client::new()
        .post(f.svc.url("/api/v1/zones"))
        .bearer_auth(TOKEN)
        .json(&zones)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // The bike: 8 g of 50 (16 %) at the nominal 1.2 km/g: warning, 9.6 km of range.
    add_vehicle(&db, "XY-B0300", "bike", 50.0, 1.2, 8.0, 37.1452, 111.7812).await;
    // The bus: 30 % of its tank, but it does only 4 km/kg: 30 km of 350 (8.6 %), critical.
    add_vehicle(
        &db, "XY-H0300", "bus", 25_000.0, 0.004, 7_500.0, 37.1452, 111.7812,
    )
    .await;
    // A bus with a fuller tank and the nominal consumption is not in the plan.
    add_vehicle(
        &db, "XY-H0301", "bus", 25_000.0, 0.014, 20_000.0, 37.1452, 111.7812,
    )
    .await;
    let plan = f.get("/api/v1/refuel-plan").await;
    let items = plan["items"].as_array().unwrap();
    let ids: Vec<&str> = items
        .iter()
        .map(|i| i["vehicle_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["XY-H0300", "XY-B0300"], "{plan:#}");
    let (bus, bike) = (&items[0], &items[1]);
    assert_eq!(bus["urgency"], "critical");
    assert_eq!(bus["station_id"], "BUSES", "not the bike island next to it");
    assert_eq!(
        bus["reaches_station"], true,
        "30 km of range, about 18 km to go: {bus}"
    );
    assert_eq!(bike["urgency"], "warning");
    assert_eq!(bike["station_id"], "BIKES");
    assert_eq!(bike["reaches_station"], true);
    // The fleet summary and the vehicle filter count low hydrogen the same way.
    let summary = f.get("/api/v1/fleet/summary").await;
    assert_eq!(summary["by_kind"]["bus"]["low_hydrogen"], 1, "{summary}");
    assert_eq!(summary["by_kind"]["bike"]["low_hydrogen"], 1, "{summary}");
    let low = f.get("/api/v1/vehicles?low_h2=true").await;
    let low: Vec<&str> = low["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(low, ["XY-B0300", "XY-H0300"]);
    // Drained to 1 km/kg, the bus no longer reaches its island.
    db.execute(
        "UPDATE vehicles SET km_per_g = 0.001 WHERE code = 'XY-H0300'",
        &[],
    )
    .await
    .unwrap();
    let plan = f.get("/api/v1/refuel-plan").await;
    let bus = plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["vehicle_id"] == "XY-H0300")
        .cloned()
        .unwrap();
    assert_eq!(bus["reaches_station"], false, "{bus}");
    assert!(bus["distance_m"].as_f64().unwrap() > 15_000.0);
    f.svc.stop().await;
}

/// Every number in `v` that is an `f32` widened to `f64` bit for bit (and so prints longer
/// than the value that was sent), with where it is.
fn widened(v: &Value, path: &str, found: &mut Vec<String>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64().filter(|_| n.is_f64()) {
                let narrow = x as f32;
                if f64::from(narrow) == x && x.to_string() != narrow.to_string() {
                    found.push(format!("{path} = {x} (sent as {narrow})"));
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                widened(item, &format!("{path}[{i}]"), found);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                widened(item, &format!("{path}.{k}"), found);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_json_the_service_emits_prints_numbers_as_they_were_sent() {
    let mut f = Fleet::start_with(|c| {
        // A speed cap that is not a whole number reaches the overspeed details.
        c.profiles.bike.speed_cap_kmh = 23.3;
    })
    .await;
    let start = Utc::now() - chrono::Duration::minutes(20);
    // An over-pressured canister (45.3 bar) at 21.7 °C, 1.2 g left, going 12.3 km/h.
    let readings: Vec<Value> = (0..15)
        .map(|i| {
            let mut r = bike_reading(start, i, 1.2);
            r["h2_pressure_bar"] = json!(45.3);
            r["tank_temp_c"] = json!(21.7);
            r["speed_kmh"] = json!(12.3);
            r["hdop"] = json!(1.3);
            r["odo_km"] = json!(1234.5 + 0.1 * i as f64);
            r
        })
        .collect();
    // Then 26.1 km/h against the cap of 23.3 (+ 2 tolerance): the overspeed details carry both.
    let fast: Vec<Value> = (15..18)
        .map(|i| {
            let mut r = readings[0].clone();
            r["ts"] = json!(at(start, i * 20));
            r["seq"] = json!(i);
            r["speed_kmh"] = json!(26.1);
            r
        })
        .collect();
    let readings: Vec<Value> = readings.into_iter().chain(fast).collect();
    f.send("bike", "XY-B0400", &readings).await;
    f.stored("XY-B0400", 18).await;
    f.event(
        "bike",
        "XY-B0400",
        json!({"ts": at(start, 400), "type": "ride_end", "lat": 37.146617, "lon": 111.781676}),
    )
    .await;
    let fault = eventually(
        30,
        "tank fault, low hydrogen and overspeed delivered",
        || async {
            let all = f.inbox.all();
            let rules: Vec<&str> = all
                .iter()
                .filter_map(|e| e["data"]["rule"].as_str())
                .collect();
            let want = ["tank_fault", "low_hydrogen", "overspeed"];
            want.iter().all(|w| rules.contains(w)).then_some(all)
        },
    )
    .await;
    let tank = fault
        .iter()
        .find(|e| e["data"]["rule"] == "tank_fault")
        .unwrap();
    assert_eq!(
        tank["data"]["details"]["h2_pressure_bar"],
        json!(45.3),
        "{tank}"
    );
    assert_eq!(
        tank["data"]["details"]["tank_temp_c"],
        json!(21.7),
        "{tank}"
    );
    let client = f.db.client().await;
    eventually(30, "the ride stored", || async {
        (count(&client, "SELECT count(*) FROM rides").await > 0).then_some(())
    })
    .await;
    let mut outputs: Vec<(String, Value)> = f
        .inbox
        .all()
        .into_iter()
        .map(|e| ("webhook".to_owned(), e))
        .collect();
    let from = (start - chrono::Duration::minutes(1)).to_rfc3339();
    let to = (start + chrono::Duration::minutes(10)).to_rfc3339();
    let paths = [
        "/api/v1/vehicles".to_owned(),
        "/api/v1/vehicles/XY-B0400".to_owned(),
        "/api/v1/alerts".to_owned(),
        format!("/api/v1/vehicles/XY-B0400/telemetry?from={from}&to={to}"),
        format!("/api/v1/vehicles/XY-B0400/telemetry?from={from}&to={to}&every=1m"),
        format!("/api/v1/vehicles/XY-B0400/track?from={from}&to={to}"),
        "/api/v1/vehicles/XY-B0400/rides".to_owned(),
        "/api/v1/fleet/summary".to_owned(),
        "/api/v1/refuel-plan".to_owned(),
        "/api/v1/zones".to_owned(),
        "/api/v1/rejects".to_owned(),
        "/api/v1/webhooks".to_owned(),
    ];
    for p in paths {
        let p = p.replace('+', "%2B");
        outputs.push((p.clone(), f.get(&p).await));
    }
    let gbfs = f.get("/gbfs/gbfs.json").await;
    let feeds: Vec<String> = gbfs["data"]["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|feed| feed["url"].as_str().unwrap().to_owned())
        .collect();
    for url in feeds {
        let v: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        outputs.push((url, v));
    }
    let mut found = Vec::new();
    for (source, v) in &outputs {
        widened(v, source, &mut found);
    }
    assert!(
        found.is_empty(),
        "numbers printed wider than sent:\n{}",
        found.join("\n")
    );
    // The scan saw the values that matter.
    let text: String = outputs.iter().map(|(_, v)| v.to_string()).collect();
    for sent in ["45.3", "21.7", "12.3", "26.1", "23.3"] {
        assert!(text.contains(sent), "{sent} appears in some output");
    }
    f.svc.stop().await;
}
