//! From a reading published over MQTT to a signed webhook delivery.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::json;

use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<serde_json::Value>>>);

/// A receiver that verifies each delivery's Standard Webhooks signature with the shared
/// secret and keeps the verified events.
async fn receiver() -> (String, Inbox) {
    use axum::http::{HeaderMap, StatusCode};
    let inbox = Inbox::default();
    let kept = inbox.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let (id, ts, sig) = (
                    h("webhook-id"),
                    h("webhook-timestamp"),
                    h("webhook-signature"),
                );
                let key = base64::engine::general_purpose::STANDARD
                    .decode(SECRET.trim_start_matches("whsec_"))
                    .unwrap();
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
                mac.update(format!("{id}.{ts}.").as_bytes());
                mac.update(&body);
                let expected = format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
                );
                if !sig.split(' ').any(|s| s == expected) {
                    return StatusCode::UNAUTHORIZED;
                }
                let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(event["id"], id, "CloudEvents id is the webhook-id");
                kept.0.lock().unwrap().push(event);
                StatusCode::NO_CONTENT
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
        secret: Some(SECRET.into()),
        events: hyfleet::domain::AlertEventType::ALL.to_vec(),
        format: hyfleet::notify::Format::Generic,
        rate_per_minute: None,
    }
}

fn reading(seq: u32, at: chrono::DateTime<chrono::Utc>, h2: f32) -> serde_json::Value {
    // Riding in circles of ~50 m around parking area P01 of the sample data, inside the
    // service area, below the speed cap: only hydrogen matters.
    let a = f64::from(seq) / 5.0;
    json!({"ts": at.to_rfc3339(), "seq": seq, "lat": 37.146617 + 0.0004 * a.sin(),
           "lon": 111.781676 + 0.0005 * a.cos(), "speed_kmh": 12.0, "h2_g": h2, "locked": false})
}

#[tokio::test]
async fn a_drained_and_refuelled_bike_gives_opened_escalated_resolved_once_each() {
    let (url, inbox) = receiver().await;
    let db = TestDb::new().await;
    let mut config = config(&db, &BROKER);
    config.notify.allow_private_networks = true;
    config.webhooks.push(webhook(&url));
    let root = config.mqtt.topic_root.clone();
    let svc = InProcess::start(config).await;
    let mut fw = Publisher::connect(&BROKER).await;
    let t = format!("{root}/bike/XY-B0100/telemetry");
    let start = chrono::Utc::now() - chrono::Duration::minutes(40);
    // 50 g → 4 g, one reading every 20 s, a few minutes near empty (past the rule's hold
    // time), then a refuel back to 49 g.
    let mut levels: Vec<f32> = (0..=46).map(|i| 50.0 - i as f32).collect();
    levels.extend([4.0, 3.9, 3.9, 3.8, 3.8, 20.0, 35.0, 49.0, 49.0, 49.0, 49.0]);
    let mut last = start;
    for (i, h2) in levels.iter().enumerate() {
        last = start + chrono::Duration::seconds(20 * i as i64);
        fw.publish(&t, reading(i as u32 + 1, last, *h2).to_string())
            .await;
    }
    fw.flush().await;
    let client = db.client().await;
    eventually(30, "three alert transitions stored", || async {
        let n = count(&client, "SELECT count(*) FROM alert_transitions").await;
        (n == 3).then_some(())
    })
    .await;
    let got = eventually(30, "three deliveries", || async {
        let v = inbox.0.lock().unwrap().clone();
        (v.len() >= 3).then_some(v)
    })
    .await;
    // Nothing more arrives: exactly one delivery per transition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_after = inbox.0.lock().unwrap().clone();
    assert_eq!(got_after.len(), 3, "{got_after:#?}");
    let kinds: Vec<(&str, &str)> = got
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["data"]["severity"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("hyfleet.alert.opened", "warning"),
            ("hyfleet.alert.escalated", "critical"),
            ("hyfleet.alert.resolved", "critical")
        ]
    );
    assert!(
        got.iter()
            .all(|e| e["data"]["rule"] == "low_hydrogen" && e["subject"] == "XY-B0100")
    );
    assert_eq!(
        got[0]["data"]["id"], got[2]["data"]["id"],
        "one alert, escalated in place"
    );

    // A backlog of older, low readings arriving now does not reopen the resolved alert.
    let backlog: Vec<_> = (0..10)
        .map(|i| {
            reading(
                1000 + i,
                start + chrono::Duration::seconds(20 * 40 + i64::from(i)),
                3.0,
            )
        })
        .collect();
    fw.publish(&t, json!(backlog).to_string()).await;
    fw.flush().await;
    eventually(20, "backlog stored", || async {
        (count(&client, "SELECT count(*) FROM telemetry WHERE seq >= 1000").await == 10)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(inbox.0.lock().unwrap().len(), 3);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM alerts WHERE state <> 'resolved'"
        )
        .await,
        0
    );
    assert!(last > start);
    svc.stop().await;
}
