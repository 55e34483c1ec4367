//! Webhook receivers on port 0: one that checks signatures the way the platforms document them,
//! computed here independently of the code under test, and one on a bare socket that answers as
//! no well-behaved HTTP server would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

/// `whsec_` + base64("generic-secret-key").
pub const GENERIC_SECRET: &str = "whsec_Z2VuZXJpYy1zZWNyZXQta2V5";
const GENERIC_KEY: &[u8] = b"generic-secret-key";
pub const DING_SECRET: &str = "SEC0123456789abcdef";
pub const FEISHU_SECRET: &str = "feishu-test-secret";

#[derive(Debug, Clone)]
pub enum Respond {
    Ok,
    Status(u16),
    RetryAfter(u16, String),
    /// Record the message, then answer 200 after a while.
    Delay(Duration),
}

/// A message that passed its signature check.
#[derive(Debug, Clone)]
pub struct Got {
    pub path: String,
    /// `webhook-id` for the generic format.
    pub id: String,
    /// The sender's timestamp in milliseconds (simulated time).
    pub timestamp: i64,
    pub body: Value,
}

struct Inner {
    respond: Respond,
    got: Vec<Got>,
    requests: usize,
    bad_signatures: usize,
}

#[derive(Clone)]
pub struct Receiver {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            respond: Respond::Ok,
            got: Vec::new(),
            requests: 0,
            bad_signatures: 0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn respond(&self, r: Respond) {
        self.inner.lock().unwrap().respond = r;
    }

    pub fn received(&self) -> Vec<Got> {
        self.inner.lock().unwrap().got.clone()
    }

    pub fn requests(&self) -> usize {
        self.inner.lock().unwrap().requests
    }

    pub fn bad_signatures(&self) -> usize {
        self.inner.lock().unwrap().bad_signatures
    }
}

fn b64_hmac(key: &[u8], msg: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

fn query(uri: &Uri, key: &str) -> Option<String> {
    let u = reqwest::Url::parse(&format!("http://x{uri}")).ok()?;
    u.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Checks the message as its platform would; `Some((id, timestamp_ms))` when it passes.
fn verify(uri: &Uri, headers: &HeaderMap, body: &[u8], json: &Value) -> Option<(String, i64)> {
    let path = uri.path();
    if path.starts_with("/generic") {
        let h = |k: &str| headers.get(k)?.to_str().ok().map(str::to_owned);
        let (id, ts, sig) = (
            h("webhook-id")?,
            h("webhook-timestamp")?,
            h("webhook-signature")?,
        );
        if h("content-type")? != "application/cloudevents+json" {
            return None;
        }
        let mut signed = format!("{id}.{ts}.").into_bytes();
        signed.extend_from_slice(body);
        let want = format!("v1,{}", b64_hmac(GENERIC_KEY, &signed));
        let ts_ms = ts.parse::<i64>().ok()? * 1000;
        return sig.split(' ').any(|s| s == want).then_some((id, ts_ms));
    }
    if path.starts_with("/dingtalk") {
        let ts = query(uri, "timestamp")?;
        let msg = format!("{ts}\n{DING_SECRET}");
        let ok = query(uri, "sign")? == b64_hmac(DING_SECRET.as_bytes(), msg.as_bytes())
            && json["msgtype"] == "markdown";
        return ok.then_some((String::new(), ts.parse().ok()?));
    }
    if path.starts_with("/feishu") {
        let ts = json["timestamp"].as_str()?;
        let key = format!("{ts}\n{FEISHU_SECRET}");
        let ok = json["sign"].as_str()? == b64_hmac(key.as_bytes(), b"");
        return ok.then_some((String::new(), ts.parse::<i64>().ok()? * 1000));
    }
    if path.starts_with("/wecom") {
        let ok = query(uri, "key")? == "K" && json["msgtype"] == "markdown";
        return ok.then(|| (String::new(), Utc::now().timestamp_millis()));
    }
    None
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let verdict = verify(&uri, &headers, &body, &json);
    let respond = {
        let mut s = inner.lock().unwrap();
        s.requests += 1;
        let Some((id, timestamp)) = verdict else {
            s.bad_signatures += 1;
            return StatusCode::UNAUTHORIZED.into_response();
        };
        let respond = s.respond.clone();
        if matches!(respond, Respond::Ok | Respond::Delay(_)) {
            s.got.push(Got {
                path: uri.path().to_owned(),
                id,
                timestamp,
                body: json,
            });
        }
        respond
    };
    let ok = || (StatusCode::OK, r#"{"errcode":0,"errmsg":"ok","code":0}"#).into_response();
    match respond {
        Respond::Ok => ok(),
        Respond::Delay(d) => {
            tokio::time::sleep(d).await;
            ok()
        }
        Respond::Status(c) => StatusCode::from_u16(c).unwrap().into_response(),
        Respond::RetryAfter(c, v) => {
            (StatusCode::from_u16(c).unwrap(), [("retry-after", v)]).into_response()
        }
    }
}

/// What a [`RawReceiver`] does once it has read a request.
#[derive(Debug, Clone, Copy)]
pub enum Raw {
    /// 200 with a `Content-Length` of this many bytes, written as fast as the client reads.
    Huge(usize),
    /// 200 with a long body, one byte a second.
    Trickle,
    /// 200, empty body: stands for any server that answers, such as a proxy.
    Ok,
}

/// A receiver written on a bare socket, to answer in ways a well-behaved HTTP server would not,
/// and to count what it manages to send before the client hangs up.
#[derive(Clone)]
pub struct RawReceiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl RawReceiver {
    pub async fn start(mode: Raw) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rx = RawReceiver {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            sent: Arc::default(),
            open: Arc::default(),
        };
        let r = rx.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let r = r.clone();
                r.open.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                r.open.fetch_sub(1, SeqCst);
                                return;
                            }
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    r.requests
                        .lock()
                        .unwrap()
                        .push(text.lines().next().unwrap_or("").to_owned());
                    let _ = match mode {
                        Raw::Ok => {
                            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await
                        }
                        Raw::Huge(len) => {
                            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                            let mut res = sock.write_all(head.as_bytes()).await;
                            let chunk = vec![b' '; 64 * 1024];
                            let mut left = len;
                            while res.is_ok() && left > 0 {
                                let n = left.min(chunk.len());
                                res = sock.write_all(&chunk[..n]).await;
                                if res.is_ok() {
                                    r.sent.fetch_add(n, SeqCst);
                                    left -= n;
                                }
                            }
                            res
                        }
                        Raw::Trickle => {
                            let mut res = sock
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                                .await;
                            while res.is_ok() {
                                res = sock.write_all(b" ").await;
                                r.sent.fetch_add(1, SeqCst);
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            res
                        }
                    };
                    r.open.fetch_sub(1, SeqCst);
                });
            }
        });
        rx
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The request lines received.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Body bytes the client took before it closed the connection.
    pub fn sent(&self) -> usize {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections not yet closed.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }
}
