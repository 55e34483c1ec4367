//! The operator API (DESIGN §9) against a real database and broker: every role boundary taken
//! from the OpenAPI document, problem details, stable pagination, commands over MQTT, SSE.

use std::time::Duration;

use hyfleet::api::{Role, TokenConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

const VIEWER: &str = "viewer-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

fn token(name: &str, role: Role, t: &str) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        role,
        token: Some(t.into()),
        token_sha256: None,
    }
}

struct Api {
    svc: InProcess,
    db: TestDb,
    http: reqwest::Client,
    root: String,
}

impl Api {
    async fn start() -> Api {
        Api::start_with(|_| {}).await
    }

    /// As `start`, with `tweak` applied to the configuration.
    async fn start_with(tweak: impl FnOnce(&mut hyfleet::config::Config)) -> Api {
        let db = TestDb::new().await;
        let mut c = config(&db, &BROKER);
        tweak(&mut c);
        c.api.tokens = vec![
            token("watcher", Role::Viewer, VIEWER),
            token("dispatcher", Role::Operator, OPERATOR),
            token("root", Role::Admin, ADMIN),
        ];
        c.notify.allow_private_networks = true;
        let root = c.mqtt.topic_root.clone();
        let svc = InProcess::start(c).await;
        Api {
            svc,
            db,
            http: reqwest::Client::new(),
            root,
        }
    }

    fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        tok: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = self.http.request(method, self.svc.url(path));
        match tok {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn get(&self, path: &str, tok: &str) -> (StatusCode, Value) {
        let r = self
            .req(reqwest::Method::GET, path, Some(tok))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        tok: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let r = self
            .req(method, path, Some(tok))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

#[allow(clippy::too_many_arguments)] // one row of test data, field by field
async fn add_vehicle(
    db: &tokio_postgres::Client,
    code: &str,
    kind: &str,
    h2: f32,
    lat: f64,
    lon: f64,
    online: bool,
    locked: bool,
) -> i32 {
    let tank: f32 = if kind == "bike" { 50.0 } else { 25_000.0 };
    db.query_one(
        "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g, h2_g, lat, lon, online, locked, last_ts, speed_kmh)
         VALUES ($1, $2, $3, 23, 1.2, $4, $5, $6, $7, $8, now(), 0) RETURNING id",
        &[&code, &kind, &tank, &(h2 * tank / 50.0), &lat, &lon, &online, &locked],
    )
    .await
    .unwrap()
    .get(0)
}

async fn add_alert(
    db: &tokio_postgres::Client,
    vehicle: i32,
    rule: &str,
    zone: Option<&str>,
) -> i64 {
    db.query_one(
        "INSERT INTO alerts (vehicle_id, rule, zone, state, severity, opened_at, details)
         VALUES ($1, $2, $3, 'open', 'warning', now(), '{}') RETURNING id",
        &[&vehicle, &rule, &zone],
    )
    .await
    .unwrap()
    .get(0)
}

fn assert_problem(status: StatusCode, body: &Value, want: StatusCode, what: &str) {
    assert_eq!(status, want, "{what}: {body}");
    assert_eq!(body["status"], want.as_u16(), "{what}: {body}");
    assert!(
        body["title"].is_string() && body["type"].is_string(),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn openapi_document_is_the_committed_one() {
    let doc = serde_json::to_string_pretty(&hyfleet::api::openapi::document()).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &doc).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == doc,
        "schemas/openapi.json differs from the code's document: run UPDATE_OPENAPI=1 cargo test --test it api::openapi"
    );
}

/// Every operation the document marks as secured refuses no token, a wrong token and a token
/// one role too weak; the right role gets past the gate.
#[tokio::test]
async fn every_protected_operation_enforces_its_role() {
    let api = Api::start().await;
    let doc: Value = reqwest::get(api.svc.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let url = path.replace("{id}", "1");
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let what = format!("{method} {path}");
            let Some(role) = op["x-role"].as_str() else {
                assert!(op.get("security").is_none(), "{what}");
                let r = api.req(m, &url, None).send().await.unwrap();
                assert!(r.status() != StatusCode::UNAUTHORIZED, "{what} is public");
                continue;
            };
            assert_eq!(op["security"], json!([{"bearer": []}]), "{what}");
            for tok in [None, Some("not-a-real-token-at-all")] {
                let r = api.req(m.clone(), &url, tok).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what} with {tok:?}");
                assert!(
                    r.headers()["www-authenticate"]
                        .to_str()
                        .unwrap()
                        .starts_with("Bearer")
                );
                assert_eq!(r.headers()["content-type"], "application/problem+json");
            }
            let (weaker, right) = match role {
                "viewer" => (None, VIEWER),
                "operator" => (Some(VIEWER), OPERATOR),
                "admin" => (Some(OPERATOR), ADMIN),
                other => panic!("{what}: unknown role {other}"),
            };
            if let Some(w) = weaker {
                let r = api.req(m.clone(), &url, Some(w)).send().await.unwrap();
                assert_eq!(
                    r.status(),
                    StatusCode::FORBIDDEN,
                    "{what} with a weaker role"
                );
            }
            if !path.ends_with("/stream") {
                let r = api.req(m, &url, Some(right)).send().await.unwrap();
                assert!(
                    ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&r.status()),
                    "{what} with its role: {}",
                    r.status()
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 25,
        "only {checked} protected operations in the document"
    );
    api.svc.stop().await;
}

#[tokio::test]
async fn vehicles_filter_and_history_read_back() {
    let api = Api::start().await;
    let db = api.db.client().await;
    let low = add_vehicle(&db, "XY-B0001", "bike", 6.0, 37.145, 111.781, true, false).await;
    add_vehicle(&db, "XY-B0002", "bike", 40.0, 37.20, 111.90, false, true).await;
    add_vehicle(&db, "XY-H0001", "bus", 30.0, 37.03, 111.91, true, true).await;
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, all) = api.get("/api/v1/vehicles", VIEWER).await;
    assert_eq!(ids(&all), ["XY-B0001", "XY-B0002", "XY-H0001"]);
    let (_, v) = api.get("/api/v1/vehicles?kind=bus", VIEWER).await;
    assert_eq!(ids(&v), ["XY-H0001"]);
    let (_, v) = api.get("/api/v1/vehicles?status=offline", VIEWER).await;
    assert_eq!(ids(&v), ["XY-B0002"]);
    let (_, v) = api.get("/api/v1/vehicles?low_h2=true", VIEWER).await;
    assert_eq!(ids(&v), ["XY-B0001"]);
    let (_, v) = api
        .get("/api/v1/vehicles?bbox=111.7,37.1,111.85,37.16", VIEWER)
        .await;
    assert_eq!(ids(&v), ["XY-B0001"]);
    for bad in [
        "kind=car",
        "status=maybe",
        "bbox=1,2,3",
        "low_h2=perhaps",
        "limit=0",
        "colour=red",
    ] {
        let (s, b) = api.get(&format!("/api/v1/vehicles?{bad}"), VIEWER).await;
        assert_problem(s, &b, StatusCode::BAD_REQUEST, bad);
    }
    let (s, b) = api.get("/api/v1/vehicles/XY-B9999", VIEWER).await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "unknown vehicle");

    // Ten readings 12 s apart, in two one-minute buckets of five, published as firmware does:
    // the bucketed series comes from the rollups that ingest keeps up.
    let t0 = chrono::Utc::now().duration_trunc_min() - chrono::Duration::minutes(10);
    // As if it had never reported: the first of them has nothing to move from.
    db.execute("UPDATE vehicles SET last_ts = NULL WHERE id = $1", &[&low])
        .await
        .unwrap();
    let mut fw = Publisher::connect(&BROKER).await;
    for i in 0..10i64 {
        let ts = t0 + chrono::Duration::seconds(i * 12);
        fw.publish(
            &format!("{}/bike/XY-B0001/telemetry", api.root),
            json!({"ts": ts.to_rfc3339(), "seq": i, "lat": 37.145 + i as f64 * 1e-4, "lon": 111.781,
                   "speed_kmh": i as f32, "h2_g": 20.0 - i as f32 * 0.1, "odo_km": 100.0 + i as f64 * 0.05,
                   "locked": false})
            .to_string(),
        )
        .await;
    }
    fw.flush().await;
    eventually(20, "ten readings stored", || async {
        (count(
            &db,
            &format!("SELECT count(*) FROM telemetry WHERE vehicle = {low}"),
        )
        .await
            == 10)
            .then_some(())
    })
    .await;
    let from = urlencode(&t0.to_rfc3339());
    let base = format!("/api/v1/vehicles/XY-B0001/telemetry?from={from}");
    // Raw pages of 4 join up to all ten, in order, once each.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(a) => format!("{base}&limit=4&after={}", urlencode(a)),
            None => format!("{base}&limit=4"),
        };
        let (s, page) = api.get(&url, VIEWER).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["seq"].as_i64().unwrap()),
        );
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    let (_, b) = api.get(&format!("{base}&every=1m"), VIEWER).await;
    let buckets = b["items"].as_array().unwrap();
    assert_eq!(buckets.len(), 2, "{b}");
    assert_eq!(buckets[0]["readings"], 5);
    assert_eq!(buckets[0]["speed_min"], 0.0);
    assert_eq!(buckets[0]["speed_max"], 4.0);
    assert_eq!(buckets[0]["speed_avg"], 2.0);
    assert!(
        (buckets[1]["lat"].as_f64().unwrap() - (37.145 + 9e-4)).abs() < 1e-9,
        "last position"
    );
    // The first reading has no earlier one to move from; each of the other nine moved 50 m on
    // the odometer and used 0.1 g.
    assert!(
        (buckets[0]["distance_km"].as_f64().unwrap() - 0.2).abs() < 1e-6,
        "{b}"
    );
    assert!(
        (buckets[1]["distance_km"].as_f64().unwrap() - 0.25).abs() < 1e-6,
        "{b}"
    );
    assert!(
        (buckets[1]["h2_used_g"].as_f64().unwrap() - 0.5).abs() < 1e-4,
        "{b}"
    );
    let (_, day) = api.get(&format!("{base}&every=1d"), VIEWER).await;
    assert_eq!(day["items"][0]["readings"], 10, "{day}");
    assert!(
        (day["items"][0]["h2_used_g"].as_f64().unwrap() - 0.9).abs() < 1e-4,
        "{day}"
    );
    // Buckets shorter than a minute are grouped from the raw rows.
    let (_, b30) = api.get(&format!("{base}&every=30s"), VIEWER).await;
    let b30 = b30["items"].as_array().unwrap();
    assert_eq!(
        b30.iter()
            .map(|b| b["readings"].as_i64().unwrap())
            .sum::<i64>(),
        10
    );
    assert!(b30[0].get("distance_km").is_none());
    let csv = api
        .req(
            reqwest::Method::GET,
            &format!("{base}&every=1m&format=csv"),
            Some(VIEWER),
        )
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().await.unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.starts_with("ts,readings,speed_min"));
    for bad in [
        "every=5x",
        "every=2d",
        "format=xml",
        "from=yesterday",
        "from=2000-01-02T00:00:00Z&to=2000-01-01T00:00:00Z",
    ] {
        let (s, b) = api
            .get(
                &format!("/api/v1/vehicles/XY-B0001/telemetry?{bad}"),
                VIEWER,
            )
            .await;
        assert_problem(s, &b, StatusCode::BAD_REQUEST, bad);
    }

    let (_, track) = api
        .get(
            &format!("/api/v1/vehicles/XY-B0001/track?from={from}"),
            VIEWER,
        )
        .await;
    assert_eq!(track["type"], "Feature");
    assert_eq!(track["geometry"]["type"], "LineString");
    let coords = track["geometry"]["coordinates"].as_array().unwrap();
    assert_eq!(coords.len(), 10);
    assert_eq!(coords[0], json!([111.781, 37.145]), "[lon, lat] order");

    for n in 0..3i64 {
        let start = t0 + chrono::Duration::minutes(n);
        db.execute(
            "INSERT INTO rides (vehicle_id, started_at, ended_at, distance_km, h2_used_g, ended_in_parking)
             VALUES ($1, $2, $3, 1.5, 1.25, true)",
            &[&low, &start, &(start + chrono::Duration::seconds(30))],
        )
        .await
        .unwrap();
    }
    let (_, rides) = api
        .get("/api/v1/vehicles/XY-B0001/rides?limit=2", VIEWER)
        .await;
    assert_eq!(rides["items"].as_array().unwrap().len(), 2);
    let (_, more) = api
        .get(
            &format!(
                "/api/v1/vehicles/XY-B0001/rides?limit=2&before={}",
                rides["next"]
            ),
            VIEWER,
        )
        .await;
    assert_eq!(more["items"].as_array().unwrap().len(), 1);
    assert!(more.get("next").is_none());
    api.svc.stop().await;
}

trait TruncMin {
    fn duration_trunc_min(self) -> Self;
}

impl TruncMin for chrono::DateTime<chrono::Utc> {
    fn duration_trunc_min(self) -> Self {
        use chrono::DurationRound;
        self.duration_trunc(chrono::Duration::minutes(1)).unwrap()
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn alert_pages_are_stable_while_alerts_arrive() {
    let api = Api::start().await;
    let db = api.db.client().await;
    let v = add_vehicle(&db, "XY-B0001", "bike", 30.0, 37.145, 111.781, true, true).await;
    let mut first = Vec::new();
    for n in 0..5 {
        first.push(add_alert(&db, v, "custom_rule", Some(&format!("Z{n}"))).await);
    }
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let url = match before {
            Some(b) => format!("/api/v1/alerts?limit=2&before={b}"),
            None => "/api/v1/alerts?limit=2".to_owned(),
        };
        let (_, page) = api.get(&url, VIEWER).await;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].as_i64().unwrap()),
        );
        // New alerts open between every two pages.
        add_alert(&db, v, "another_rule", Some(&format!("N{}", seen.len()))).await;
        match page["next"].as_i64() {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    first.reverse();
    assert_eq!(
        seen, first,
        "each alert that existed at the start, once, newest first"
    );
    let (_, f) = api
        .get(
            "/api/v1/alerts?rule=custom_rule&state=open&vehicle=XY-B0001",
            VIEWER,
        )
        .await;
    assert_eq!(f["items"].as_array().unwrap().len(), 5);
    let (s, b) = api.get("/api/v1/alerts?state=sleeping", VIEWER).await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad state");
    api.svc.stop().await;
}

#[tokio::test]
async fn operators_acknowledge_and_resolve_alerts_once() {
    let api = Api::start().await;
    let db = api.db.client().await;
    let v = add_vehicle(&db, "XY-B0001", "bike", 30.0, 37.145, 111.781, true, true).await;
    let id = add_alert(&db, v, "tank_fault", None).await;
    let mut sse = Sse::open(&api, "/api/v1/stream?events=alert").await;

    let post = |path: String, body: Value| {
        let api = &api;
        async move { api.send(reqwest::Method::POST, &path, OPERATOR, body).await }
    };
    let (s, e) = post(
        format!("/api/v1/alerts/{id}/ack"),
        json!({"note": "on my way"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["event_type"], "alert.acknowledged");
    assert_eq!(e["alert"]["state"], "acknowledged");
    let (s, b) = post(format!("/api/v1/alerts/{id}/ack"), json!({})).await;
    assert_problem(s, &b, StatusCode::CONFLICT, "second ack");
    let (s, e) = post(format!("/api/v1/alerts/{id}/resolve"), Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["alert"]["state"], "resolved");
    let (s, b) = post(format!("/api/v1/alerts/{id}/resolve"), json!({})).await;
    assert_problem(s, &b, StatusCode::CONFLICT, "second resolve");
    let (s, b) = post("/api/v1/alerts/999999/ack".into(), json!({})).await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "unknown alert");
    let (s, b) = post("/api/v1/alerts/abc/ack".into(), json!({})).await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad id");
    let (s, b) = post(format!("/api/v1/alerts/{id}/ack"), json!({"colour": 1})).await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad body");

    let (_, detail) = api.get(&format!("/api/v1/alerts/{id}"), VIEWER).await;
    let t: Vec<&str> = detail["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(t, ["alert.acknowledged", "alert.resolved"]);
    assert_eq!(detail["transitions"][0]["actor"], "dispatcher");
    assert_eq!(detail["transitions"][0]["note"], "on my way");
    // Both transitions went to the webhook outbox in their transaction.
    assert_eq!(count(&db, "SELECT count(*) FROM webhook_events").await, 2);

    let first = sse.next_event().await;
    assert_eq!(first.0, "alert");
    assert_eq!(first.1["alert"]["id"], id);
    assert_eq!(first.1["event_type"], "alert.acknowledged");
    assert_eq!(sse.next_event().await.1["event_type"], "alert.resolved");
    api.svc.stop().await;
}

/// A minimal SSE reader over a streaming response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(api: &Api, path: &str) -> Sse {
        let sep = if path.contains('?') { '&' } else { '?' };
        // EventSource cannot set headers: the token travels in the query.
        let resp = api
            .http
            .get(api.svc.url(&format!("{path}{sep}access_token={VIEWER}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Sse {
            resp,
            buf: String::new(),
        }
    }

    async fn next_event(&mut self) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let mut name = String::new();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(n) = line.strip_prefix("event:") {
                            name = n.trim().to_owned();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim_start());
                        }
                    }
                    if !data.is_empty() {
                        return (name, serde_json::from_str(&data).unwrap());
                    }
                    continue;
                }
                let chunk = self.resp.chunk().await.unwrap().expect("stream open");
                self.buf.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .expect("an SSE event within 30 s")
    }
}

/// A bike subscribed to its `cmd` topic on the broker; what it receives comes on the channel,
/// once the subscription is answered.
async fn commanded_bike(topic: &str) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let ep = hyfleet::config::parse_mqtt_url(&BROKER).unwrap();
    let (client, mut events) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new(unique("bike"), ep.host, ep.port),
        100,
    );
    client
        .subscribe(topic, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subacked, mut subacks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = subacked.send(());
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send(serde_json::from_slice(&p.payload).unwrap());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subacks.recv())
        .await
        .expect("subscribed");
    rx
}

/// Commands the API accepted (202) while its link to the broker was breaking, handed to the
/// broker and not acknowledged, still reach the vehicle once the link is back: the publisher's
/// next connection is a new session, for which the MQTT client drops what it kept, so hyfleet
/// sends them again itself.
#[tokio::test]
async fn commands_accepted_while_the_link_to_the_broker_breaks_reach_the_vehicle() {
    let ep = hyfleet::config::parse_mqtt_url(&BROKER).unwrap();
    let upstream = tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let link = Proxy::start(upstream).await;
    let port = link.port;
    let api = Api::start_with(|c| {
        c.mqtt.commands_url = Some(format!("mqtt://127.0.0.1:{port}"));
    })
    .await;
    let db = api.db.client().await;
    add_vehicle(&db, "XY-B0001", "bike", 30.0, 37.145, 111.781, true, true).await;
    let mut bike = commanded_bike(&format!("{}/bike/XY-B0001/cmd", api.root)).await;
    let command = |t: &'static str| {
        let api = &api;
        async move {
            let (s, cmd) = api
                .send(
                    reqwest::Method::POST,
                    "/api/v1/vehicles/XY-B0001/commands",
                    OPERATOR,
                    json!({"type": t}),
                )
                .await;
            assert_eq!(s, StatusCode::ACCEPTED, "{cmd}");
            cmd["id"].as_str().unwrap().to_owned()
        }
    };
    // The link works: the publisher is connected.
    let first = command("locate").await;
    let got = tokio::time::timeout(Duration::from_secs(15), bike.recv())
        .await
        .expect("the first command")
        .unwrap();
    assert_eq!(got["id"], first.as_str());

    // The link slows to a crawl, the API accepts three commands, and the link breaks before
    // they reach the broker; it comes back a moment later.
    link.set_delay(Duration::from_secs(30));
    let mut sent = Vec::new();
    for t in ["lock", "unlock", "lock"] {
        sent.push(command(t).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.cut();
    link.set_delay(Duration::ZERO);
    link.restore();

    let mut got = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < sent.len() {
        match tokio::time::timeout_at(deadline, bike.recv()).await {
            Ok(Some(cmd)) => {
                got.insert(cmd["id"].as_str().unwrap().to_owned());
            }
            _ => break,
        }
    }
    let missing: Vec<_> = sent.iter().filter(|id| !got.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "accepted and never sent: {missing:?} of {sent:?}"
    );
}

#[tokio::test]
async fn commands_reach_the_vehicle_cmd_topic() {
    let api = Api::start().await;
    let db = api.db.client().await;
    add_vehicle(&db, "XY-B0001", "bike", 30.0, 37.145, 111.781, true, true).await;
    let ep = hyfleet::config::parse_mqtt_url(&BROKER).unwrap();
    let (client, mut events) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new(unique("bike"), ep.host, ep.port),
        100,
    );
    let topic = format!("{}/bike/XY-B0001/cmd", api.root);
    client
        .subscribe(&topic, rumqttc::QoS::AtLeastOnce)
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
                    let _ = tx.send(Some((p.topic.clone(), p.payload.to_vec()))).await;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    assert!(rx.recv().await.unwrap().is_none(), "subscribed");
    let (s, cmd) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/vehicles/XY-B0001/commands",
            OPERATOR,
            json!({"type": "set_speed_cap", "args": {"speed_cap_kmh": 15}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{cmd}");
    let (t, payload) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("command within 15 s")
        .unwrap()
        .unwrap();
    assert_eq!(t, topic);
    let got: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        got, cmd,
        "the published command is the one the API answered"
    );
    assert_eq!(got["args"]["speed_cap_kmh"], 15);
    for (body, want) in [
        (json!({"type": "explode"}), StatusCode::BAD_REQUEST),
        (
            json!({"type": "set_speed_cap", "args": {"speed_cap_kmh": 99}}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"args": {}}), StatusCode::BAD_REQUEST),
    ] {
        let (s, b) = api
            .send(
                reqwest::Method::POST,
                "/api/v1/vehicles/XY-B0001/commands",
                OPERATOR,
                body.clone(),
            )
            .await;
        assert_problem(s, &b, want, &body.to_string());
    }
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/vehicles/XY-B0404/commands",
            OPERATOR,
            json!({"type": "lock"}),
        )
        .await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "unknown vehicle");
    api.svc.stop().await;
}

#[tokio::test]
async fn zones_fleet_summary_and_refuel_plan() {
    let api = Api::start().await;
    let db = api.db.client().await;
    // The service filled its empty zone table with the sample city; this test draws its own.
    db.execute("DELETE FROM zones", &[]).await.unwrap();
    let station = |id: &str, lon: f64, lat: f64| {
        json!({"type": "Feature",
        "properties": {"id": id, "kind": "station", "name": format!("Energy island {id}"), "radius_m": 30},
        "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    };
    let (s, b) = api.send(reqwest::Method::POST, "/api/v1/zones", ADMIN,
        json!({"type": "FeatureCollection", "features": [station("S1", 111.781, 37.145), station("S2", 111.90, 37.20)]})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/zones",
            ADMIN,
            station("S1", 111.0, 37.0),
        )
        .await;
    assert_problem(s, &b, StatusCode::CONFLICT, "zone exists");
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/zones",
            ADMIN,
            json!({"type": "Feature", "properties": {"id": "X", "kind": "lake"}, "geometry": null}),
        )
        .await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad kind");
    let park = json!({"type": "Feature", "properties": {"kind": "parking"},
        "geometry": {"type": "Polygon", "coordinates": [[[111.78, 37.14], [111.79, 37.14], [111.79, 37.15], [111.78, 37.14]]]}});
    let (s, b) = api
        .send(
            reqwest::Method::PUT,
            "/api/v1/zones/P1",
            ADMIN,
            park.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = api
        .send(reqwest::Method::PUT, "/api/v1/zones/P1", ADMIN, park)
        .await;
    assert_eq!(s, StatusCode::OK, "replaced");
    let (_, fc) = api.get("/api/v1/zones?kind=station", VIEWER).await;
    assert_eq!(fc["type"], "FeatureCollection");
    assert_eq!(fc["features"].as_array().unwrap().len(), 2);
    let (_, z) = api.get("/api/v1/zones/P1", VIEWER).await;
    assert_eq!(z["geometry"]["type"], "Polygon");
    let (s, _) = api
        .req(reqwest::Method::DELETE, "/api/v1/zones/P1", Some(ADMIN))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = api.get("/api/v1/zones/P1", VIEWER).await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "deleted zone");

    // 4 g (8 %): critical, near S2; 8 g (16 %): warning, at S1; 6 g: critical, at S1.
    add_vehicle(&db, "XY-B0001", "bike", 4.0, 37.201, 111.90, true, true).await;
    add_vehicle(&db, "XY-B0002", "bike", 8.0, 37.145, 111.781, true, false).await;
    let v3 = add_vehicle(&db, "XY-B0003", "bike", 4.5, 37.1451, 111.7811, false, true).await;
    add_vehicle(&db, "XY-B0004", "bike", 45.0, 37.145, 111.781, true, true).await;
    let (_, plan) = api.get("/api/v1/refuel-plan", VIEWER).await;
    let order: Vec<(&str, &str, &str)> = plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["vehicle_id"].as_str().unwrap(),
                i["urgency"].as_str().unwrap(),
                i["station_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("XY-B0003", "critical", "S1"),
            ("XY-B0001", "critical", "S2"),
            ("XY-B0002", "warning", "S1")
        ]
    );
    assert_eq!(
        plan["items"][0]["distance_m"], 0.0,
        "inside the station's radius"
    );
    assert!(plan["items"][1]["distance_m"].as_f64().unwrap() > 50.0);

    add_alert(&db, v3, "low_hydrogen", None).await;
    db.execute(
        "INSERT INTO rides (vehicle_id, started_at, ended_at, distance_km, h2_used_g, ended_in_parking)
         VALUES ($1, now() - interval '10 min', now() - interval '1 min', 2.5, 2.0, true)",
        &[&v3],
    ).await.unwrap();
    let (_, sum) = api.get("/api/v1/fleet/summary", VIEWER).await;
    assert_eq!(sum["total"]["vehicles"], 4);
    assert_eq!(sum["total"]["online"], 3);
    assert_eq!(sum["total"]["riding"], 1);
    assert_eq!(sum["total"]["low_hydrogen"], 3);
    assert_eq!(sum["open_alerts"]["low_hydrogen"], 1);
    assert_eq!(sum["today"]["km"], 2.5);
    assert_eq!(sum["today"]["rides"], 1);
    api.svc.stop().await;
}

#[tokio::test]
async fn webhooks_and_tokens_never_show_their_secrets() {
    let api = Api::start().await;
    let secret = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LWZvci10ZXN0cw==";
    let (s, hook) = api.send(reqwest::Method::POST, "/api/v1/webhooks", ADMIN,
        json!({"name": "ops", "url": "http://127.0.0.1:9/hook", "secret": secret, "events": ["alert.opened"]})).await;
    assert_eq!(s, StatusCode::CREATED, "{hook}");
    assert!(!hook.to_string().contains("whsec_"), "{hook}");
    assert_eq!(hook["has_secret"], true);
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            ADMIN,
            json!({"name": "ops", "url": "http://127.0.0.1:9/hook", "secret": secret}),
        )
        .await;
    assert_problem(s, &b, StatusCode::CONFLICT, "same name");
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            ADMIN,
            json!({"name": "x", "url": "ftp://a"}),
        )
        .await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad url");
    let (_, list) = api.get("/api/v1/webhooks", ADMIN).await;
    assert!(!list.to_string().contains("whsec_"));
    let id = hook["id"].as_i64().unwrap();
    let (s, d) = api
        .get(&format!("/api/v1/webhooks/{id}/deliveries"), ADMIN)
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["items"], json!([]));
    let del = api
        .req(
            reqwest::Method::DELETE,
            &format!("/api/v1/webhooks/{id}"),
            Some(ADMIN),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let (s, b) = api
        .get(&format!("/api/v1/webhooks/{id}/deliveries"), ADMIN)
        .await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "deleted webhook");

    let (s, created) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            ADMIN,
            json!({"name": "grafana", "role": "viewer"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let tok = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["created_by"], "root");
    let (s, _) = api.get("/api/v1/vehicles", &tok).await;
    assert_eq!(s, StatusCode::OK, "a created token works");
    let (s, _) = api.get("/api/v1/tokens", &tok).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "with its role only");
    let (_, list) = api.get("/api/v1/tokens", ADMIN).await;
    let text = list.to_string();
    assert!(!text.contains(&tok) && !text.contains(ADMIN), "{text}");
    assert_eq!(list["items"].as_array().unwrap().len(), 4);
    let db = api.db.client().await;
    let stored: Vec<u8> = db
        .query_one("SELECT token_sha256 FROM api_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        hyfleet::api::sha256(&tok).to_vec(),
        "stored as its digest only"
    );
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            ADMIN,
            json!({"name": "grafana", "role": "admin"}),
        )
        .await;
    assert_problem(s, &b, StatusCode::CONFLICT, "same name");
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/tokens",
            ADMIN,
            json!({"name": "x", "role": "god"}),
        )
        .await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad role");
    let del = api
        .req(
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{}", created["id"]),
            Some(ADMIN),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let (s, _) = api.get("/api/v1/vehicles", &tok).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a deleted token is refused at once"
    );
    api.svc.stop().await;
}

#[tokio::test]
async fn without_configured_tokens_the_api_is_closed() {
    let db = TestDb::new().await;
    let svc = InProcess::start(config(&db, &BROKER)).await;
    let r = reqwest::get(svc.url("/api/v1/vehicles")).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = reqwest::get(svc.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    svc.stop().await;
}

/// A reading published over MQTT that opens an alert reaches an SSE listener.
#[tokio::test]
async fn sse_delivers_an_alert_opened_by_an_mqtt_reading() {
    let api = Api::start().await;
    let mut sse = Sse::open(&api, "/api/v1/stream?events=alert&vehicle=XY-B0001").await;
    let mut fw = Publisher::connect(&BROKER).await;
    let now = chrono::Utc::now();
    // A tank pressure far out of band with a fault code: `tank_fault` opens.
    for n in 0..40i64 {
        let ts = now - chrono::Duration::seconds(40 - n);
        fw.publish(
            &format!("{}/bike/XY-B0001/telemetry", api.root),
            json!({"ts": ts.timestamp_millis(), "seq": n, "lat": 37.145, "lon": 111.781, "speed_kmh": 0.0,
                   "h2_g": 30.0, "h2_pressure_bar": 900.0, "faults": ["TANK_OVERPRESSURE"], "locked": true}).to_string(),
        )
        .await;
    }
    fw.flush().await;
    let (name, ev) = sse.next_event().await;
    assert_eq!(name, "alert");
    assert_eq!(ev["event_type"], "alert.opened");
    assert_eq!(ev["alert"]["vehicle_id"], "XY-B0001");
    api.svc.stop().await;
}

/// A zone drawn through the API reaches the rules of the running service: a bike riding at
/// 18 km/h (under its 23 km/h cap) is over the limit once a 10 km/h slow zone covers it.
#[tokio::test]
async fn a_zone_drawn_through_the_api_reaches_the_running_rules() {
    let api = Api::start().await;
    let db = api.db.client().await;
    let mut fw = Publisher::connect(&BROKER).await;
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(120);
    let topic = format!("{}/bike/XY-B0001/telemetry", api.root);
    let ride = |from: i64, to: i64| {
        (from..to).map(move |n| {
            json!({"ts": (t0 + chrono::Duration::seconds(n)).to_rfc3339(), "seq": n,
                   "lat": 37.14 + n as f64 * 4e-5, "lon": 111.785, "speed_kmh": 18.0,
                   "h2_g": 30.0, "locked": false})
            .to_string()
        })
    };
    for r in ride(0, 30) {
        fw.publish(&topic, r).await;
    }
    fw.flush().await;
    let overspeed = "SELECT count(*) FROM alerts WHERE rule = 'overspeed'";
    eventually(20, "the first half-minute stored", || async {
        (count(&db, "SELECT count(*) FROM telemetry").await == 30).then_some(())
    })
    .await;
    assert_eq!(count(&db, overspeed).await, 0, "18 km/h is within the cap");

    let slow = json!({"type": "Feature", "properties": {"kind": "slow", "max_speed_kmh": 10},
        "geometry": {"type": "Polygon", "coordinates": [[[111.77, 37.13], [111.80, 37.13],
            [111.80, 37.16], [111.77, 37.16], [111.77, 37.13]]]}});
    let (s, b) = api
        .send(reqwest::Method::PUT, "/api/v1/zones/SLOW1", ADMIN, slow)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    for r in ride(30, 60) {
        fw.publish(&topic, r).await;
    }
    fw.flush().await;
    let zone: String = eventually(20, "an overspeed alert in the new zone", || async {
        db.query_opt(
            "SELECT details->>'slow_zone' FROM alerts WHERE rule = 'overspeed'",
            &[],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
    })
    .await;
    assert_eq!(zone, "SLOW1");
    api.svc.stop().await;
}
