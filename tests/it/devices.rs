//! Hostile devices against the running service: a bike that claims to be a bus (the shipped
//! ACL stops it at the broker; this is hyfleet's own check, for brokers whose ACL does not), and
//! tables that a device could otherwise fill for ever. The flood and the retained reading need
//! the shipped broker configuration: they are in `deploy/broker.rs`.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use crate::support::*;

fn reading(seq: u32, h2_g: f64) -> String {
    json!({
        "ts": (Utc::now() - chrono::Duration::seconds(600 - i64::from(seq % 600))).timestamp_millis()
            + i64::from(seq / 600),
        "seq": seq, "lat": 37.145, "lon": 111.781, "speed_kmh": 12.0, "h2_g": h2_g,
        "locked": false
    })
    .to_string()
}

async fn metric(svc: &InProcess, line_start: &str) -> i64 {
    let text = reqwest::get(svc.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line_start} in /metrics"))
}

#[tokio::test]
async fn a_bike_publishing_under_bus_is_refused_as_kind_mismatch() {
    let db = TestDb::new().await;
    let config = config(&db, &BROKER);
    let root = config.mqtt.topic_root.clone();
    let svc = InProcess::start(config).await;
    let client = db.client().await;
    let mut fw = Publisher::connect(&BROKER).await;
    let bike = format!("{root}/bike/XY-B0001");
    let bus = format!("{root}/bus/XY-B0001");

    fw.publish(&format!("{bike}/telemetry"), reading(1, 30.0))
        .await;
    fw.flush().await;
    eventually(30, "the bike registered", || async {
        (count(&client, "SELECT count(*) FROM telemetry").await == 1).then_some(())
    })
    .await;

    // The field case: under `bus/` a bike's 20 kg of hydrogen is within the bus tank's range.
    fw.publish(&format!("{bike}/telemetry"), reading(2, 29.0))
        .await;
    fw.publish(&format!("{bus}/telemetry"), reading(3, 20_000.0))
        .await;
    let event = json!({"ts": Utc::now().timestamp_millis(), "type": "refuel",
        "h2_g_before": 100.0, "h2_g_after": 20_000.0, "station_id": "S1"});
    fw.publish(&format!("{bus}/event"), event.to_string()).await;
    fw.publish(&format!("{bus}/status"), "offline").await;
    fw.publish(&format!("{bike}/telemetry"), reading(4, 28.0))
        .await;
    fw.flush().await;

    eventually(30, "three rejects and three readings", || async {
        let rejects = count(
            &client,
            "SELECT count(*) FROM rejects WHERE reason = 'kind_mismatch'",
        )
        .await;
        let stored = count(&client, "SELECT count(*) FROM telemetry").await;
        (rejects >= 3 && stored >= 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seqs: Vec<i64> = client
        .query("SELECT seq FROM telemetry ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seqs,
        [1, 2, 4],
        "the bike's good readings around the forged one"
    );
    assert_eq!(count(&client, "SELECT count(*) FROM events").await, 0);
    let row = client
        .query_one(
            "SELECT kind, h2_g, online FROM vehicles WHERE code = 'XY-B0001'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "bike");
    assert_eq!(row.get::<_, Option<f32>>(1), Some(28.0));
    assert_eq!(row.get::<_, Option<bool>>(2), None, "the forged status");
    let rejects = client
        .query(
            "SELECT topic, vehicle, detail FROM rejects ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rejects.len(), 3, "nothing else refused");
    for r in &rejects {
        assert!(r.get::<_, String>(0).starts_with("bus/XY-B0001/"));
        assert_eq!(r.get::<_, Option<String>>(1).as_deref(), Some("XY-B0001"));
        let detail: String = r.get(2);
        assert!(detail.contains("registered as a bike"), "{detail}");
    }
    assert_eq!(
        metric(&svc, "hyfleet_rejects_total{reason=\"kind_mismatch\"}").await,
        3
    );
    svc.stop().await;
}

#[tokio::test]
async fn events_and_rejects_past_retention_or_over_the_cap_are_deleted() {
    let db = TestDb::new().await;
    hyfleet::store::prepare_database(&db.url()).await.unwrap();
    let client = db.client().await;
    let id: i32 = client
        .query_one(
            "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g)
             VALUES ('XY-B0001', 'bike', 50, 23, 1.2) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let now = Utc::now();
    for (age_days, n) in [(400, 3), (10, 2)] {
        for i in 0..n {
            let ts = now - chrono::Duration::days(age_days) + chrono::Duration::seconds(i);
            client
                .execute(
                    "INSERT INTO events (vehicle, ts, type, body) VALUES ($1, $2, 'fault', '{}')",
                    &[&id, &ts],
                )
                .await
                .unwrap();
        }
    }
    // Old rejects of anyone, and a device with more recent ones than the cap.
    let reject = "INSERT INTO rejects (received_at, topic, vehicle, reason, detail, payload)
                  VALUES ($1, 't', $2, 'schema', 'd', '')";
    for i in 0..5 {
        let at = now - chrono::Duration::days(20) + chrono::Duration::seconds(i);
        client
            .execute(reject, &[&at, &Some("XY-B0002")])
            .await
            .unwrap();
    }
    for i in 0..30 {
        let at = now - chrono::Duration::minutes(60 - i);
        client
            .execute(reject, &[&at, &Some("XY-B0003")])
            .await
            .unwrap();
        client
            .execute(reject, &[&at, &None::<String>])
            .await
            .unwrap();
    }
    client
        .execute(reject, &[&now, &Some("XY-B0004")])
        .await
        .unwrap();

    let mut config = config(&db, &BROKER);
    config.store.event_retention_days = 365;
    config.store.reject_retention_days = 14;
    config.store.rejects_max_per_vehicle = 10;
    let svc = InProcess::start(config).await;
    assert_eq!(count(&client, "SELECT count(*) FROM events").await, 2);
    let per: Vec<(Option<String>, i64)> = client
        .query(
            "SELECT vehicle, count(*) FROM rejects GROUP BY vehicle ORDER BY vehicle",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        per,
        [
            (Some("XY-B0003".to_owned()), 10),
            (Some("XY-B0004".to_owned()), 1),
            (None, 10)
        ]
    );
    // The newest ten are the ones kept: 40 to 31 minutes old.
    let oldest_kept: chrono::DateTime<Utc> = client
        .query_one(
            "SELECT min(received_at) FROM rejects WHERE vehicle = 'XY-B0003'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let age = now - oldest_kept;
    assert!(
        (39 * 60..=40 * 60).contains(&age.num_seconds()),
        "oldest kept is {age} old"
    );
    svc.stop().await;
}
