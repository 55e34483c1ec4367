//! Telemetry completeness: readings missing between consecutive `seq` are counted in
//! `/metrics`, shown as `completeness_24h` on the vehicle and raised as `telemetry_gap`; a
//! late backlog fills its gap; a restart is no gap; a redelivery counts once; and the field
//! case: a broker with Debian's default limits drops readings while hyfleet is away.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::support::*;

fn reading(seq: u32, ts: DateTime<Utc>) -> Value {
    json!({"ts": ts.timestamp_millis(), "seq": seq, "lat": 37.146617, "lon": 111.781676,
           "speed_kmh": 0.0, "h2_g": 40.0, "locked": true})
}

/// Readings `seqs`, one a second, seq `s` measured at `base + s` seconds.
fn readings(seqs: impl IntoIterator<Item = u32>, base: DateTime<Utc>) -> Vec<Value> {
    seqs.into_iter()
        .map(|s| reading(s, base + chrono::Duration::seconds(i64::from(s))))
        .collect()
}

/// A webhook receiver that keeps every event delivered to it.
async fn inbox() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock()
                    .unwrap()
                    .push(serde_json::from_slice::<Value>(&body).unwrap());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

struct Fleet {
    svc: InProcess,
    db: TestDb,
    root: String,
    fw: Publisher,
    hooks: Arc<Mutex<Vec<Value>>>,
}

impl Fleet {
    async fn start(broker: &str) -> Fleet {
        Fleet::start_with_hold(broker, HOLD_SECS).await
    }

    async fn start_with_hold(broker: &str, hold_secs: u32) -> Fleet {
        let (url, hooks) = inbox().await;
        let db = TestDb::new().await;
        let mut config = config(&db, broker);
        config.notify.allow_private_networks = true;
        config.webhooks.push(hyfleet::notify::WebhookConfig {
            name: "ops".into(),
            url,
            secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            events: hyfleet::domain::AlertEventType::ALL.to_vec(),
            format: hyfleet::notify::Format::Generic,
            rate_per_minute: None,
        });
        // The loss must last this long on hyfleet's clock (300 s by default) before it opens.
        config.rules.telemetry_gap.hold_secs = hold_secs;
        let root = config.mqtt.topic_root.clone();
        let svc = InProcess::start(config).await;
        let fw = Publisher::connect(broker).await;
        Fleet {
            svc,
            db,
            root,
            fw,
            hooks,
        }
    }

    /// Publish `batch` as one backlog array, or each reading as its own message.
    async fn send(&mut self, id: &str, batch: &[Value], as_array: bool) {
        let topic = format!("{}/bike/{id}/telemetry", self.root);
        if as_array {
            for chunk in batch.chunks(500) {
                self.fw
                    .publish(&topic, Value::from(chunk.to_vec()).to_string())
                    .await;
            }
        } else {
            for r in batch {
                self.fw.publish(&topic, r.to_string()).await;
            }
        }
        self.fw.flush().await;
    }

    /// Wait until `n` readings of `id` are stored.
    async fn stored(&self, id: &str, n: i64) {
        let client = self.db.client().await;
        let sql = format!(
            "SELECT count(*) FROM telemetry t JOIN vehicles v ON v.id = t.vehicle WHERE v.code = '{id}'"
        );
        eventually(60, &format!("{n} readings of {id} stored"), || async {
            (count(&client, &sql).await >= n).then_some(())
        })
        .await;
    }

    async fn vehicle(&self, id: &str) -> Value {
        get(&self.svc.url(&format!("/api/v1/vehicles/{id}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The transitions of `id`'s telemetry_gap alerts, oldest first.
    async fn gap_transitions(&self, id: &str) -> Vec<String> {
        let client = self.db.client().await;
        client
            .query(
                "SELECT t.event_type FROM alert_transitions t JOIN alerts a ON a.id = t.alert_id
                 JOIN vehicles v ON v.id = a.vehicle_id
                 WHERE v.code = $1 AND a.rule = 'telemetry_gap' ORDER BY t.at, t.event_type",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn wait_gap_transitions(&self, id: &str, want: &[&str]) {
        eventually(
            60,
            &format!("telemetry_gap transitions {want:?}"),
            || async { (self.gap_transitions(id).await == want).then_some(()) },
        )
        .await;
    }

    /// A vehicle reporting live, a reading every 300 ms from `seq` on, until its gap alert is
    /// open; returns the next seq.
    async fn report_until_gap_alert(&mut self, id: &str, base: DateTime<Utc>, mut seq: u32) -> u32 {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self
            .gap_transitions(id)
            .await
            .contains(&"alert.opened".to_owned())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no telemetry_gap alert in 60 s"
            );
            self.send(id, &readings([seq], base), false).await;
            seq += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        seq
    }

    /// The telemetry_gap webhooks delivered, as CloudEvents types.
    async fn wait_hooks(&self, want: &[&str]) -> Vec<Value> {
        eventually(60, &format!("webhooks {want:?}"), || async {
            let got: Vec<Value> = self
                .hooks
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e["data"]["rule"] == "telemetry_gap")
                .cloned()
                .collect();
            let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
            (types == want).then_some(got.clone())
        })
        .await
    }
}

async fn metric(svc: &InProcess, name: &str) -> u64 {
    let text = reqwest::get(svc.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

async fn wait_metric(svc: &InProcess, name: &str, want: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = metric(svc, name).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} is {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const HOLD_SECS: u32 = 2;

/// Ten minutes ago: readings one a second from here stay in the past.
fn base() -> DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(700)
}

/// seq 1..=100, then 201..=210 (100 missing), then 211..=600 and on, live, until the hold time
/// has passed and the alert is open; returns the last seq sent.
async fn lose_a_hundred(f: &mut Fleet, id: &str, base: DateTime<Utc>) -> u32 {
    f.send(id, &readings((1..=100).chain(201..=210), base), false)
        .await;
    f.stored(id, 110).await;
    wait_metric(&f.svc, "hyfleet_readings_missing_total", 100).await;
    f.send(id, &readings(211..=600, base), true).await;
    f.stored(id, 500).await;
    let next = f.report_until_gap_alert(id, base, 601).await;
    f.stored(id, i64::from(next - 1) - 100).await;
    next - 1
}

/// `completeness_24h` as the API rounds it: percent, one decimal.
fn pct(received: u32, of: u32) -> f64 {
    (1000.0 * f64::from(received) / f64::from(of)).round() / 10.0
}

fn assert_close(got: &Value, want: f64) {
    let g = got.as_f64().unwrap_or(f64::NAN);
    assert!((g - want).abs() < 0.051, "completeness_24h {got} vs {want}");
}

#[tokio::test]
async fn missing_readings_are_counted_shown_and_raise_a_gap_alert_with_its_webhook() {
    let mut f = Fleet::start(&BROKER).await;
    let id = "XY-B0201";
    let last = lose_a_hundred(&mut f, id, base()).await;
    f.wait_gap_transitions(id, &["alert.opened"]).await;
    let hooks = f.wait_hooks(&["hyfleet.alert.opened"]).await;
    assert_eq!(hooks[0]["subject"], id);
    let details = &hooks[0]["data"]["details"];
    assert!(
        details["missing"].as_i64().unwrap() == 100,
        "the alert says what is missing: {details}"
    );
    assert_eq!(metric(&f.svc, "hyfleet_readings_missing_total").await, 100);
    // All but 100 of the numbered readings arrived.
    let v = f.vehicle(id).await;
    assert_close(&v["completeness_24h"], pct(last - 100, last));
    let list: Value = get(&f.svc.url("/api/v1/vehicles"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap();
    assert_close(&listed["completeness_24h"], pct(last - 100, last));
    f.svc.stop().await;
}

#[tokio::test]
async fn a_late_backlog_fills_the_gap_and_the_alert_clears() {
    let mut f = Fleet::start(&BROKER).await;
    let id = "XY-B0202";
    let base = base();
    let last = lose_a_hundred(&mut f, id, base).await;
    f.wait_gap_transitions(id, &["alert.opened"]).await;
    // The dead zone's backlog arrives at last, newest first, as firmware resends it.
    let mut backlog = readings(101..=200, base);
    backlog.reverse();
    f.send(id, &backlog, true).await;
    f.stored(id, i64::from(last)).await;
    wait_metric(&f.svc, "hyfleet_readings_gap_filled_total", 100).await;
    f.wait_gap_transitions(id, &["alert.opened", "alert.resolved"])
        .await;
    f.wait_hooks(&["hyfleet.alert.opened", "hyfleet.alert.resolved"])
        .await;
    assert_eq!(f.vehicle(id).await["completeness_24h"], json!(100.0));
    // Resolved now, not at the backlog's time: never before it opened.
    let client = f.db.client().await;
    let row = client
        .query_one(
            "SELECT opened_at <= resolved_at FROM alerts WHERE rule = 'telemetry_gap'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    f.svc.stop().await;
}

/// A queue drained after an outage, or a backlog, spans many minutes of the vehicle's time
/// and arrives within seconds: with the default hold, a gap it fills raises nothing.
#[tokio::test]
async fn a_gap_filled_within_the_hold_time_raises_nothing() {
    let hold = hyfleet::rules::completeness::TelemetryGapConfig::default().hold_secs;
    let mut f = Fleet::start_with_hold(&BROKER, hold).await;
    let id = "XY-B0206";
    let base = base();
    f.send(id, &readings((1..=100).chain(201..=210), base), false)
        .await;
    f.stored(id, 110).await;
    f.send(id, &readings(211..=600, base), true).await;
    f.stored(id, 500).await;
    f.send(id, &readings(101..=200, base), true).await;
    f.stored(id, 600).await;
    wait_metric(&f.svc, "hyfleet_readings_gap_filled_total", 100).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(f.gap_transitions(id).await, Vec::<String>::new());
    assert_eq!(f.vehicle(id).await["completeness_24h"], json!(100.0));
    f.svc.stop().await;
}

#[tokio::test]
async fn a_firmware_restart_is_not_a_gap() {
    let mut f = Fleet::start(&BROKER).await;
    let id = "XY-B0203";
    let base = base();
    // seq runs 1..=300, the firmware restarts and counts 1..=300 again.
    let mut rs = readings(1..=300, base);
    rs.extend(readings(1..=300, base + chrono::Duration::seconds(300)));
    f.send(id, &rs[..310], false).await;
    f.send(id, &rs[310..], true).await;
    f.stored(id, 600).await;
    eventually(30, "completeness shown", || async {
        let v = f.vehicle(id).await;
        (!v["completeness_24h"].is_null()).then_some(())
    })
    .await;
    assert_eq!(f.vehicle(id).await["completeness_24h"], json!(100.0));
    assert_eq!(metric(&f.svc, "hyfleet_readings_missing_total").await, 0);
    assert!(f.gap_transitions(id).await.is_empty());
    f.svc.stop().await;
}

#[tokio::test]
async fn redelivered_readings_do_not_count_twice() {
    let mut f = Fleet::start(&BROKER).await;
    let id = "XY-B0204";
    let base = base();
    // 90 of 100 readings (seq 51..=60 lost), the first 40 of them sent twice in one backlog
    // array (so twice in one batch); then all of them again, twice (a firmware retry and a
    // broker redelivery), in arrays and one by one.
    let rs = readings((1..=50).chain(61..=100), base);
    let mut first: Vec<Value> = rs[..40]
        .iter()
        .flat_map(|r| [r.clone(), r.clone()])
        .collect();
    first.extend_from_slice(&rs[40..]);
    f.send(id, &first, true).await;
    f.stored(id, 90).await;
    wait_metric(&f.svc, "hyfleet_readings_duplicate_total", 40).await;
    wait_metric(&f.svc, "hyfleet_readings_missing_total", 10).await;
    f.send(id, &rs, true).await;
    f.send(id, &rs, false).await;
    wait_metric(&f.svc, "hyfleet_readings_duplicate_total", 220).await;
    assert_eq!(metric(&f.svc, "hyfleet_readings_missing_total").await, 10);
    assert_eq!(metric(&f.svc, "hyfleet_readings_gap_filled_total").await, 0);
    assert_eq!(f.vehicle(id).await["completeness_24h"], json!(90.0));
    f.svc.stop().await;
}

/// The field case. Mosquitto with Debian's default limits (`max_queued_messages 1000`: the
/// config is a listener, anonymous access and persistence, as Debian ships it) keeps at most
/// 1000 messages for hyfleet's session while hyfleet is away and silently drops the rest.
/// Nothing in hyfleet showed it; now the gap is counted and the alert raised.
#[tokio::test]
async fn a_debian_default_broker_dropping_readings_raises_the_gap_alert() {
    let broker = PrivateBroker::start("").await;
    let (url, hooks) = inbox().await;
    let db = TestDb::new().await;
    let mut config = config(&db, &broker.url());
    config.notify.allow_private_networks = true;
    config.webhooks.push(hyfleet::notify::WebhookConfig {
        name: "ops".into(),
        url,
        secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        events: hyfleet::domain::AlertEventType::ALL.to_vec(),
        format: hyfleet::notify::Format::Generic,
        rate_per_minute: None,
    });
    config.rules.telemetry_gap.hold_secs = HOLD_SECS;
    let root = config.mqtt.topic_root.clone();
    // hyfleet's persistent session exists (it ran once), then hyfleet is down.
    InProcess::start(config.clone()).await.stop().await;

    let id = "XY-B0205";
    let topic = format!("{root}/bike/{id}/telemetry");
    let base = Utc::now() - chrono::Duration::seconds(2000);
    let mut fw = Publisher::connect(&broker.url()).await;
    for r in readings(1..=1500, base) {
        fw.publish(&topic, r.to_string()).await;
    }
    fw.flush().await;

    let svc = InProcess::start(config).await;
    let client = db.client().await;
    let stored_sql = "SELECT count(*) FROM telemetry";
    // What the broker kept arrives; then the vehicle goes on reporting live.
    eventually(60, "the broker's queue drained", || async {
        let n = count(&client, stored_sql).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        (n > 0 && count(&client, stored_sql).await == n).then_some(())
    })
    .await;
    let kept = count(&client, stored_sql).await;
    assert!(kept < 1500, "the broker dropped nothing: {kept} kept");
    for r in readings(1501..=1510, base) {
        fw.publish(&topic, r.to_string()).await;
    }
    fw.flush().await;
    eventually(60, "live readings stored", || async {
        (count(&client, stored_sql).await == kept + 10).then_some(())
    })
    .await;
    let (lo, hi): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT min(seq), max(seq) FROM telemetry WHERE seq <= 1500",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((lo, hi), (1, kept), "the broker kept the first readings");
    // Every reading the broker dropped is counted, at once.
    let dropped = 1500 - kept as u64;
    wait_metric(&svc, "hyfleet_readings_missing_total", dropped).await;
    // The vehicle goes on reporting; once the hold time has passed the operator has an alert
    // and its webhook.
    let opened =
        || {
            hooks.lock().unwrap().iter().any(|e| {
                e["type"] == "hyfleet.alert.opened" && e["data"]["rule"] == "telemetry_gap"
            })
        };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seq = 1511;
    while !opened() {
        assert!(
            std::time::Instant::now() < deadline,
            "no telemetry_gap webhook in 60 s"
        );
        for r in readings([seq], base) {
            fw.publish(&topic, r.to_string()).await;
        }
        fw.flush().await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let last = seq - 1;
    eventually(60, "live readings stored", || async {
        let n = count(&client, stored_sql).await;
        (n == kept + i64::from(last - 1500)).then_some(())
    })
    .await;
    let alerts: Value = get(&svc.url("/api/v1/alerts?rule=telemetry_gap"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = alerts["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{alerts}");
    assert_eq!(items[0]["vehicle_id"], id);
    assert_eq!(
        metric(&svc, "hyfleet_readings_missing_total").await,
        dropped
    );
    let v: Value = get(&svc.url(&format!("/api/v1/vehicles/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_close(&v["completeness_24h"], pct(last - dropped as u32, last));
    svc.stop().await;
}

/// Two instances share the subscription, so one vehicle's readings reach both, in either
/// order: the counts stay exact because they live in the database, under the vehicle's lock.
#[tokio::test]
async fn two_instances_sharing_the_vehicles_count_exactly() {
    let db = TestDb::new().await;
    let mut config = config(&db, &BROKER);
    config.mqtt.shared_group = Some("hyfleet".into());
    let root = config.mqtt.topic_root.clone();
    let mut second = config.clone();
    second.mqtt.client_id = unique("hyfleet");
    let a = InProcess::start(config).await;
    let b = InProcess::start(second).await;
    let mut fw = Publisher::connect(&BROKER).await;
    let base = base();
    // Four bikes, 400 readings each, every tenth lost: 40 missing of 400 each.
    let ids = ["XY-B0211", "XY-B0212", "XY-B0213", "XY-B0214"];
    for s in (1..=400u32).filter(|s| s % 10 != 5) {
        for id in ids {
            let r = reading(s, base + chrono::Duration::seconds(i64::from(s)));
            fw.publish(&format!("{root}/bike/{id}/telemetry"), r.to_string())
                .await;
        }
    }
    fw.flush().await;
    let client = db.client().await;
    eventually(60, "every reading stored", || async {
        (count(&client, "SELECT count(*) FROM telemetry").await == 4 * 360).then_some(())
    })
    .await;
    // Both took a share; what each counted adds up to what is missing, exactly.
    for svc in [&a, &b] {
        assert!(metric(svc, "hyfleet_readings_stored_total").await > 0);
    }
    let mut net = 0;
    for _ in 0..100 {
        net = 0i64;
        for svc in [&a, &b] {
            net += metric(svc, "hyfleet_readings_missing_total").await as i64;
            net -= metric(svc, "hyfleet_readings_gap_filled_total").await as i64;
        }
        if net == 4 * 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(net, 4 * 40);
    for id in ids {
        let v: Value = get(&a.url(&format!("/api/v1/vehicles/{id}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["completeness_24h"], json!(90.0), "{v}");
    }
    a.stop().await;
    b.stop().await;
}
