//! Two instances behind one MQTT shared subscription, one database: the same guarantees as
//! one instance, also when one is killed mid-stream and comes back.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

async fn counting_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let kept = ids.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let kept = kept.clone();
            async move {
                let id = headers["webhook-id"].to_str().unwrap().to_owned();
                kept.lock().unwrap().push(id);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, ids)
}

fn instance_toml(db: &TestDb, broker: &str, root: &str, client_id: &str, hook: &str) -> String {
    format!(
        r#"[database]
url = "{}"
pool_size = 2
[mqtt]
url = "{broker}"
topic_root = "{root}"
client_id = "{client_id}"
shared_group = "hyfleet"
[ingest]
batch_max_age_ms = 20
batch_max_rows = 200
[notify]
allow_private_networks = true
poll_interval_ms = 100
[[webhooks]]
name = "ops"
url = "{hook}"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#,
        db.url()
    )
}

#[tokio::test]
async fn two_instances_share_the_load_and_keep_every_guarantee() {
    let broker = PrivateBroker::start(&shipped_limits()).await;
    let db = TestDb::new().await;
    let (hook, deliveries) = counting_receiver().await;
    let root = format!("test/{}", unique("scale"));
    let (dir_a, dir_b) = (temp_dir(), temp_dir());
    let id_b = unique("b");
    let _a = ChildService::start(
        &instance_toml(&db, &broker.url(), &root, &unique("a"), &hook),
        &dir_a,
    )
    .await;
    let toml_b = instance_toml(&db, &broker.url(), &root, &id_b, &hook);
    let mut b = ChildService::start(&toml_b, &dir_b).await;

    // 20 bikes riding inside the service area, each draining from 14 g to 6 g: exactly one
    // low_hydrogen alert each (warning below 10 g, never critical below 5 g).
    const BIKES: u32 = 20;
    const READINGS: u32 = 120;
    let start = chrono::Utc::now() - chrono::Duration::minutes(45);
    let mut fw = Publisher::connect(&broker.url()).await;
    let client = db.client().await;
    for seq in 1..=READINGS {
        for bike in 1..=BIKES {
            let a = f64::from(seq) / 8.0 + f64::from(bike);
            let r = json!({
                "ts": (start + chrono::Duration::seconds(i64::from(seq) * 10)).to_rfc3339(),
                "seq": seq, "lat": 37.1466 + 0.0004 * a.sin(), "lon": 111.7817 + 0.0005 * a.cos(),
                "speed_kmh": 12.0, "h2_g": 14.0 - 8.0 * seq as f32 / READINGS as f32, "locked": false
            });
            fw.publish(
                &format!("{root}/bike/XY-B{bike:04}/telemetry"),
                r.to_string(),
            )
            .await;
        }
        if seq == READINGS / 2 {
            fw.flush().await;
            eventually(30, "both instances storing", || async {
                (count(&client, "SELECT count(*) FROM telemetry").await > 200).then_some(())
            })
            .await;
            b.kill();
        }
    }
    fw.flush().await;
    // B comes back under the same client id: its session's unacknowledged messages are
    // delivered to it again.
    let _b = ChildService::start(&toml_b, &dir_b).await;
    let total = i64::from(BIKES * READINGS);
    eventually(90, "every reading stored", || async {
        (count(&client, "SELECT count(*) FROM telemetry").await == total).then_some(())
    })
    .await;
    assert_eq!(
        count(
            &client,
            "SELECT count(DISTINCT (vehicle, seq)) FROM telemetry"
        )
        .await,
        total,
        "no reading stored twice"
    );
    let alerts = eventually(30, "one alert per bike", || async {
        let n = count(
            &client,
            "SELECT count(*) FROM alerts WHERE rule = 'low_hydrogen'",
        )
        .await;
        (n == i64::from(BIKES)).then_some(n)
    })
    .await;
    assert_eq!(alerts, i64::from(BIKES));
    assert_eq!(
        count(
            &client,
            "SELECT count(DISTINCT vehicle_id) FROM alerts WHERE rule = 'low_hydrogen'"
        )
        .await,
        i64::from(BIKES)
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM alert_transitions").await,
        i64::from(BIKES)
    );
    let ids = eventually(30, "one delivery per transition", || async {
        let v = deliveries.lock().unwrap().clone();
        (v.len() >= BIKES as usize).then_some(v)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let unique_ids: HashSet<_> = ids.iter().collect();
    assert_eq!(unique_ids.len(), BIKES as usize);
    assert_eq!(
        deliveries.lock().unwrap().len(),
        BIKES as usize,
        "no delivery twice"
    );
    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
}
