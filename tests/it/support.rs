//! What the integration tests share: a database of their own, a topic root of their own, the
//! service started in-process or as a child process, an MQTT publisher, a TCP proxy, brokers
//! (`broker`) and webhook receivers (`receiver`).

use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyfleet::config::Config;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

pub mod broker;
pub mod nats;
pub mod receiver;

pub use broker::{PrivateBroker, shipped_limits};

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// The PostgreSQL server of the tests, `postgres://postgres@host:port`: the system's, or the
/// throwaway one that `tests/services.sh` (nextest's setup script) started and passed in.
pub static PG: LazyLock<String> = LazyLock::new(|| {
    std::env::var("HYFLEET_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
});
/// The shared MQTT broker of the tests, found or started the same way.
pub static BROKER: LazyLock<String> = LazyLock::new(|| {
    std::env::var("HYFLEET_TEST_MQTT").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
});

/// `PG`'s address, for a proxy in front of it.
pub fn pg_addr() -> std::net::SocketAddr {
    let hostport = PG.rsplit('@').next().expect("a postgres:// URL");
    std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve {hostport}"))
}

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = unique("hyfleet_test");
        hyfleet::store::prepare_database(&format!("{}/{name}", *PG))
            .await
            .expect("prepare test database");
        TestDb { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", *PG, self.name)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        hyfleet::store::connect(&self.url()).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // The tests' server, the system's or the throwaway one: never a fixed address.
        let _ = Command::new("psql")
            .args(["-d", &format!("{}/postgres", *PG), "-q", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A configuration of the service for one test: its own database, topic root and client id.
pub fn config(db: &TestDb, broker: &str) -> Config {
    let mut c = Config::default();
    c.database.url = db.url();
    c.database.pool_size = 2;
    c.mqtt.url = broker.to_owned();
    c.mqtt.topic_root = format!("test/{}", unique("root"));
    c.mqtt.client_id = unique("hyfleet");
    c.http.addr = "127.0.0.1:0".into();
    c.ingest.batch_max_age_ms = 20;
    c.api.tokens.push(hyfleet::api::TokenConfig {
        name: "test-admin".into(),
        role: hyfleet::api::Role::Admin,
        token: Some(TOKEN.into()),
        token_sha256: None,
    });
    c
}

/// The admin token that `config` sets up.
pub const TOKEN: &str = "test-admin-token-0123456789";

/// A GET with the admin token.
pub async fn get(url: &str) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
}

/// The service running in this process.
pub struct InProcess {
    pub addr: std::net::SocketAddr,
    trigger: hyfleet::shutdown::Trigger,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub async fn start(config: Config) -> InProcess {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,rumqttc=error".into()),
            )
            .with_test_writer()
            .try_init();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, stop) = hyfleet::shutdown::channel();
        let task = tokio::spawn(hyfleet::app::serve(config, listener, stop));
        let s = InProcess {
            addr,
            trigger,
            task,
        };
        s.wait_ready().await;
        s
    }

    pub async fn wait_ready(&self) {
        wait_ready(self.addr).await
    }

    pub async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("service stops within 30 s")
            .unwrap()
            .unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

pub async fn wait_ready(addr: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "service not ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `hyfleet` binary as a child process, killed (not stopped) when dropped.
pub struct ChildService {
    pub child: Child,
    pub addr: std::net::SocketAddr,
}

impl ChildService {
    pub async fn start(config_toml: &str, dir: &std::path::Path) -> ChildService {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = dir.join("hyfleet.toml");
        std::fs::write(&path, config_toml).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hyfleet"))
            .args(["--config", path.to_str().unwrap(), "serve"])
            .env("HYFLEET_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("MQTT_URL")
            .env_remove("HYFLEET_TOPIC_ROOT")
            .stdout(Stdio::null())
            .spawn()
            .expect("start hyfleet");
        let addr = ([127, 0, 0, 1], port).into();
        wait_ready(addr).await;
        ChildService { child, addr }
    }

    /// SIGKILL: no graceful shutdown, nothing flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildService {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A firmware-like MQTT client that publishes with QoS 1 and waits for the broker's PUBACKs.
pub struct Publisher {
    client: AsyncClient,
    acked: tokio::sync::watch::Receiver<u64>,
    sent: u64,
}

impl Publisher {
    pub async fn connect(broker: &str) -> Publisher {
        let ep = hyfleet::config::parse_mqtt_url(broker).unwrap();
        let mut opts = MqttOptions::new(unique("fw"), ep.host, ep.port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        opts.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        let (tx, acked) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        n += 1;
                        let _ = tx.send(n);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Publisher {
            client,
            acked,
            sent: 0,
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
        self.sent += 1;
    }

    /// Wait until the broker acknowledged everything published so far.
    pub async fn flush(&mut self) {
        let sent = self.sent;
        tokio::time::timeout(Duration::from_secs(30), self.acked.wait_for(|n| *n >= sent))
            .await
            .expect("broker acknowledges within 30 s")
            .unwrap();
    }
}

/// Poll `f` until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poll `done` until it holds, for at most 30 s.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    eventually(30, what, || std::future::ready(done().then_some(()))).await
}

pub async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// A TCP proxy the test can cut: `cut()` closes every connection and refuses new ones,
/// `restore()` lets them through again.
pub struct Proxy {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Copy one direction, holding each chunk back by the proxy's current delay.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let d = delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::AtomicBool;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(AtomicBool::new(true));
        let (generation, gen_rx) = tokio::sync::watch::channel(0u64);
        let open2 = open.clone();
        let delay_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = delay_ms.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !open2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = gen_rx.clone();
                // Only cuts after this connection was made concern it.
                cut.borrow_and_update();
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (in_r, in_w) = inbound.into_split();
                    let (out_r, out_w) = outbound.into_split();
                    tokio::select! {
                        _ = pump(in_r, out_w, delay.clone()) => {}
                        _ = pump(out_r, in_w, delay) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            open,
            generation,
            delay_ms,
        }
    }

    /// Hold every chunk in each direction back by `d`: a slow database or a long link.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// A directory of its own under the system's temporary directory.
pub fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(unique("hyfleet"));
    std::fs::create_dir_all(&d).unwrap();
    d
}
