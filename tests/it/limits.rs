//! The HTTP server against hostile clients: bodies over `http.max_body_bytes`, JSON nested
//! past serde_json's depth limit, and clients that trickle their headers (slowloris).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn post(url: String, body: String) -> (StatusCode, Option<String>, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, ct, r.json().await.unwrap_or(Value::Null))
}

fn assert_problem(got: (StatusCode, Option<String>, Value), want: StatusCode, what: &str) {
    let (status, ct, body) = got;
    assert_eq!(status, want, "{what}: {body}");
    assert_eq!(
        ct.as_deref(),
        Some("application/problem+json"),
        "{what}: {body}"
    );
    assert_eq!(body["status"], want.as_u16(), "{what}: {body}");
}

/// A parking zone with `extra` among its properties.
fn zone(id: &str, extra: Value) -> String {
    json!({
        "type": "Feature",
        "properties": {"id": id, "kind": "parking", "name": id, "extra": extra},
        "geometry": {"type": "Polygon", "coordinates": [[
            [111.78, 37.14], [111.79, 37.14], [111.79, 37.15], [111.78, 37.14]
        ]]},
    })
    .to_string()
}

/// A zone padded to `len` bytes of JSON.
fn padded_zone(id: &str, len: usize) -> String {
    let bare = zone(id, json!("")).len();
    zone(id, json!("x".repeat(len - bare)))
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413_on_every_kind_of_route() {
    let db = TestDb::new().await;
    let mut c = config(&db, &BROKER);
    c.http.max_body_bytes = 64 * 1024;
    let svc = InProcess::start(c).await;

    // Just under the limit: parsed and taken (the zone is valid).
    let under = padded_zone("under", 64 * 1024 - 16);
    let (status, _, body) = post(svc.url("/api/v1/zones"), under).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let over = padded_zone("over", 64 * 1024 + 16);
    // A JSON body, a raw body parsed by its handler, and a route outside the API.
    assert_problem(
        post(svc.url("/api/v1/zones"), over.clone()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "zones",
    );
    assert_problem(
        post(svc.url("/api/v1/alerts/1/ack"), over.clone()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "alert ack",
    );
    assert_problem(
        post(svc.url("/api/v1/webhooks"), "x".repeat(10 * 1024 * 1024)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "ten megabytes",
    );
    assert_eq!(get(&svc.url("/healthz")).await.unwrap().status(), 200);
    svc.stop().await;
}

#[tokio::test]
async fn json_nested_past_the_depth_limit_is_a_400_problem_not_a_crash() {
    let db = TestDb::new().await;
    let svc = InProcess::start(config(&db, &BROKER)).await;
    let depth = 100_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let command = format!(r#"{{"type":"lock","args":{{"x":{objects}}}}}"#);
    // Where the body is parsed into JSON values, the depth limit is what refuses it.
    for (path, body) in [
        ("/api/v1/zones", &arrays),
        ("/api/v1/zones", &objects),
        ("/api/v1/vehicles/XY-B0001/commands", &command),
    ] {
        let got = post(svc.url(path), body.clone()).await;
        assert!(
            got.2["detail"]
                .as_str()
                .is_some_and(|d| d.contains("recursion limit")),
            "{path}: {}",
            got.2
        );
        assert_problem(got, StatusCode::BAD_REQUEST, path);
    }
    // Into typed bodies, a deep value is the wrong type at its first bracket.
    for (path, body) in [
        ("/api/v1/webhooks", &objects),
        ("/api/v1/tokens", &arrays),
        ("/api/v1/alerts/1/ack", &arrays),
        ("/api/v1/alerts/1/resolve", &objects),
    ] {
        assert_problem(
            post(svc.url(path), body.clone()).await,
            StatusCode::BAD_REQUEST,
            path,
        );
    }
    // Within the limit, nesting is only data: stored and served back.
    let nested: Value =
        serde_json::from_str(&format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100))).unwrap();
    let (status, _, body) = post(svc.url("/api/v1/zones"), zone("deep", nested.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let back: Value = get(&svc.url("/api/v1/zones/deep"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(back["properties"]["extra"], nested);
    assert_eq!(get(&svc.url("/healthz")).await.unwrap().status(), 200);
    svc.stop().await;
}

/// Sends a request's headers one byte a second and never finishes them; returns how long the
/// server kept the connection open.
async fn slowloris(addr: std::net::SocketAddr, started: tokio::sync::mpsc::Sender<()>) -> Duration {
    let t0 = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: hyfleet\r\nX-Slow: ")
        .await
        .unwrap();
    let _ = started.send(()).await;
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    // The server's answer, if any (a 408), then the end of the connection.
    let mut sink = Vec::new();
    let _ = rd.read_to_end(&mut sink).await;
    trickle.abort();
    t0.elapsed()
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let db = TestDb::new().await;
    let mut c = config(&db, &BROKER);
    c.http.header_read_timeout_secs = 2;
    let svc = InProcess::start(c).await;

    let (started_tx, mut started) = tokio::sync::mpsc::channel(16);
    let slow: Vec<_> = (0..8)
        .map(|_| tokio::spawn(slowloris(svc.addr, started_tx.clone())))
        .collect();
    // A connection that never says anything is held no longer.
    let silent = tokio::spawn({
        let addr = svc.addr;
        async move {
            let t0 = Instant::now();
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
            t0.elapsed()
        }
    });
    for _ in 0..slow.len() {
        started.recv().await.unwrap();
    }

    // While they trickle, a normal client gets its answers.
    let r = get(&svc.url("/api/v1/vehicles")).await.unwrap();
    assert_eq!(r.status(), 200);

    for h in slow.into_iter().chain([silent]) {
        let held = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("a slow client is cut off within 30 s")
            .unwrap();
        assert!(
            held >= Duration::from_secs(2),
            "cut off only after the header-read timeout, not {held:?}"
        );
    }
    assert_eq!(get(&svc.url("/healthz")).await.unwrap().status(), 200);

    // A graceful stop does not wait on an open event stream nor on a slow client.
    let sse = reqwest::Client::new()
        .get(svc.url("/api/v1/stream"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let (started_tx, mut started) = tokio::sync::mpsc::channel(1);
    let late = tokio::spawn(slowloris(svc.addr, started_tx));
    started.recv().await.unwrap();
    svc.stop().await;
    tokio::time::timeout(Duration::from_secs(30), late)
        .await
        .expect("the slow client's connection ends with the service")
        .unwrap();
    drop(sse);
}
