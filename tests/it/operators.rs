//! Operators against each other and against the rest of the service: no request can stall
//! ingest, alerts or webhooks, blind another reader, or reach what it may not. Each test drives
//! the real service, database and broker.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// A webhook receiver that keeps every body it gets, with when it came.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<(Instant, Value)>>>);

async fn receiver() -> (String, Inbox) {
    let inbox = Inbox::default();
    let kept = inbox.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                kept.0.lock().unwrap().push((Instant::now(), v));
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

/// Readings that open `tank_fault` (pressure far out of band, a fault code) for `vehicle`.
async fn publish_tank_fault(fw: &mut Publisher, root: &str, vehicle: &str) {
    let now = chrono::Utc::now();
    for n in 0..40i64 {
        let ts = now - chrono::Duration::seconds(40 - n);
        fw.publish(
            &format!("{root}/bike/{vehicle}/telemetry"),
            json!({"ts": ts.timestamp_millis(), "seq": n, "lat": 37.145, "lon": 111.781,
                   "speed_kmh": 0.0, "h2_g": 30.0, "h2_pressure_bar": 900.0,
                   "faults": ["TANK_OVERPRESSURE"], "locked": true})
            .to_string(),
        )
        .await;
    }
    fw.flush().await;
}

async fn problem(r: reqwest::Response) -> (StatusCode, Option<String>, Value) {
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, ct, r.json().await.unwrap_or(Value::Null))
}

/// Status, time taken, Retry-After and body of one API answer.
type Answer = (StatusCode, Duration, Option<String>, Value);

/// The field case of the API pool: operators' requests that run long (here: held by a lock,
/// so that they run long however fast the machine is) fill every API connection, and keep
/// coming. Ingest keeps committing, an alert's webhook is delivered as promptly as when idle,
/// and each of the stuck requests is answered (503 with Retry-After) instead of hanging.
#[tokio::test]
async fn slow_api_queries_stall_neither_ingest_nor_webhooks() {
    let (url, inbox) = receiver().await;
    let db = TestDb::new().await;
    let mut c = config(&db, BROKER);
    c.database.pool_size = 2;
    c.database.pool_wait_ms = 500;
    c.database.statement_timeout_ms = 2000;
    c.notify.allow_private_networks = true;
    c.webhooks.push(webhook(&url));
    let root = c.mqtt.topic_root.clone();
    let svc = InProcess::start(c).await;

    // Every API request that lists tokens now waits on this lock; nothing else needs it.
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, answers, u) = (stop.clone(), answers.clone(), svc.url("/api/v1/tokens"));
        load.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(30),
                    http.get(&u).bearer_auth(TOKEN).send(),
                )
                .await
                .expect("an API request is answered within 30 s, not left hanging")
                .unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                let (status, _, body) = problem(r).await;
                answers
                    .lock()
                    .unwrap()
                    .push((status, t.elapsed(), retry, body));
            }
        }));
    }
    // Let the load take every API connection first.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut fw = Publisher::connect(BROKER).await;
    let published = Instant::now();
    publish_tank_fault(&mut fw, &root, "XY-B0001").await;
    let client = db.client().await;
    eventually(20, "ingest commits while the API is saturated", || async {
        (count(&client, "SELECT count(*) FROM telemetry").await == 40).then_some(())
    })
    .await;
    let delivered = eventually(
        20,
        "the alert's webhook while the API is saturated",
        || async {
            inbox
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|(_, e)| e["type"] == "hyfleet.alert.opened")
                .map(|(at, _)| *at)
        },
    )
    .await;
    let latency = delivered - published;
    // Keep the API saturated a while longer, so every loop has been answered several times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    assert!(answers.len() >= 8, "{} answers", answers.len());
    for (status, took, retry, body) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["status"], 503, "{body}");
        assert!(retry.is_some(), "a 503 says when to retry: {body}");
        assert!(*took < Duration::from_secs(15), "answered after {took:?}");
    }
    let details: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.3["detail"].as_str())
        .collect();
    assert!(
        details.iter().any(|d| d.contains("statement_timeout_ms")),
        "a statement past the timeout is cancelled: {details:?}"
    );
    assert!(
        details.iter().any(|d| d.contains("pool_size")),
        "a request that finds every connection busy is refused: {details:?}"
    );

    // The lock gone, the same request succeeds.
    drop(tx);
    let r = get(&svc.url("/api/v1/tokens")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    println!("alert webhook delivered {latency:?} after publishing, with the API pool saturated");
    svc.stop().await;
}

/// A range or a bucket count past the limits is a 400 that names the limit, before any query:
/// `every=1s` over 30 days no longer groups a vehicle's whole history.
#[tokio::test]
async fn long_ranges_and_too_many_buckets_are_refused_naming_the_limit() {
    let db = TestDb::new().await;
    let svc = InProcess::start(config(&db, BROKER)).await;
    db.client()
        .await
        .execute(
            "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g) \
             VALUES ('XY-B0001', 'bike', 50, 23, 1.2)",
            &[],
        )
        .await
        .unwrap();
    let to = chrono::Utc::now();
    let from = |days: i64| (to - chrono::Duration::days(days)).to_rfc3339();
    let to = to.to_rfc3339();
    let enc = |s: &str| s.replace('+', "%2B");
    let v = "/api/v1/vehicles/XY-B0001";
    for (path, limit) in [
        (
            format!(
                "{v}/telemetry?from={}&to={}&every=1s",
                enc(&from(30)),
                enc(&to)
            ),
            "api.max_buckets",
        ),
        (
            format!("{v}/telemetry?from={}&to={}", enc(&from(30)), enc(&to)),
            "api.max_raw_range_hours",
        ),
        (
            format!(
                "{v}/telemetry?from={}&to={}&every=30s",
                enc(&from(3)),
                enc(&to)
            ),
            "api.max_raw_range_hours",
        ),
        (
            format!("{v}/track?from={}&to={}", enc(&from(30)), enc(&to)),
            "api.max_raw_range_hours",
        ),
    ] {
        let (status, ct, body) = problem(get(&svc.url(&path)).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"), "{path}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(limit), "{path}: {detail}");
    }
    // Within the limits: days of minute or daily buckets, a day of raw readings.
    for path in [
        format!(
            "{v}/telemetry?from={}&to={}&every=1d",
            enc(&from(30)),
            enc(&to)
        ),
        format!(
            "{v}/telemetry?from={}&to={}&every=1m",
            enc(&from(6)),
            enc(&to)
        ),
        format!("{v}/telemetry?from={}&to={}", enc(&from(1)), enc(&to)),
        format!("{v}/track?from={}&to={}", enc(&from(1)), enc(&to)),
    ] {
        let r = get(&svc.url(&path)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    svc.stop().await;
}
