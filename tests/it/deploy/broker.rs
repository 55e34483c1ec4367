//! The shipped Mosquitto configuration, run for real on a free port: only the listener and the
//! paths are changed, so what is tested is what `docker compose` runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::repo;
use crate::support::{InProcess, TestDb, count, eventually, temp_dir, unique};

const BACKEND: &str = "hyfleet.backend";
const ROOT: &str = "hyfleet/v1";

/// Credentials made by the shipped `make-passwords.sh` in a directory of the test's own.
struct Credentials {
    dir: PathBuf,
    passwords: HashMap<String, String>,
}

impl Credentials {
    fn make(bikes: u32, buses: u32) -> Credentials {
        let dir = temp_dir();
        let status = Command::new(repo("deploy/mosquitto/make-passwords.sh"))
            .args([bikes.to_string(), buses.to_string()])
            .env("OUT_DIR", &dir)
            .env("ENV_FILE", dir.join(".env"))
            .stderr(Stdio::null())
            .status()
            .expect("run make-passwords.sh");
        assert!(status.success(), "make-passwords.sh failed");
        let mut passwords = HashMap::new();
        let csv = std::fs::read_to_string(dir.join("devices.csv")).unwrap();
        for line in csv.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 4, "devices.csv line {line}");
            passwords.insert(f[2].to_owned(), f[3].to_owned());
        }
        assert_eq!(passwords.len() as u32, bikes + buses);
        let env = std::fs::read_to_string(dir.join(".env")).unwrap();
        let backend = env
            .lines()
            .find_map(|l| l.strip_prefix("HYFLEET_MQTT_PASSWORD="))
            .expect("the backend's password in .env");
        passwords.insert(BACKEND.to_owned(), backend.to_owned());
        Credentials { dir, passwords }
    }

    fn of<'a>(&'a self, user: &'a str) -> (&'a str, &'a str) {
        (user, &self.passwords[user])
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `deploy/mosquitto/mosquitto.conf` with the listener on a free port and the paths moved into
/// `dir`. Every line that is rewritten must exist, so that the test cannot drift from the file.
pub fn shipped_config(port: u16, dir: &Path, password_file: &Path) -> String {
    let text = std::fs::read_to_string(repo("deploy/mosquitto/mosquitto.conf")).unwrap();
    let mut replaced = [false; 4];
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            let key = line.split_whitespace().next().unwrap_or("");
            let (i, new) = match key {
                "listener" => (0, format!("listener {port} 127.0.0.1")),
                "persistence_location" => (1, format!("persistence_location {}/", dir.display())),
                "password_file" => (2, format!("password_file {}", password_file.display())),
                "acl_file" => (
                    3,
                    format!("acl_file {}", repo("deploy/mosquitto/acl").display()),
                ),
                _ => return line.to_owned(),
            };
            assert!(!replaced[i], "`{key}` appears twice in mosquitto.conf");
            replaced[i] = true;
            new
        })
        .collect();
    assert_eq!(
        replaced, [true; 4],
        "mosquitto.conf sets listener, persistence_location, password_file and acl_file"
    );
    out.join("\n") + "\n"
}

/// Mosquitto running the shipped configuration.
struct ShippedBroker {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl ShippedBroker {
    async fn start(credentials: &Credentials) -> ShippedBroker {
        let dir = temp_dir();
        // Started as root (as in CI), Mosquitto drops to its own user, which must write here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            shipped_config(port, &dir, &credentials.dir.join("passwords")),
        )
        .unwrap();
        std::fs::set_permissions(&credentials.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("mosquitto")
            .args(["-c", conf.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        let broker = ShippedBroker { port, child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start with the shipped configuration: {}",
                std::fs::read_to_string(broker.dir.join("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        broker
    }
}

impl Drop for ShippedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An MQTT client that records what it receives and how many of its publishes were acked.
struct Client {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<Publish>,
    subacks: mpsc::UnboundedReceiver<Vec<SubscribeReasonCode>>,
    acked: watch::Receiver<u64>,
    sent: u64,
}

impl Client {
    async fn connect(
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> Result<Client, ConnectionError> {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(1000);
        if let Some((user, pass)) = login {
            opts.set_credentials(user, pass);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
                .await
                .expect("the broker answers CONNECT within 10 s")?
            {
                Event::Incoming(Packet::ConnAck(_)) => break,
                _ => continue,
            }
        }
        let (pub_tx, received) = mpsc::unbounded_channel();
        let (sub_tx, subacks) = mpsc::unbounded_channel();
        let (ack_tx, acked) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = pub_tx.send(p);
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = sub_tx.send(s.return_codes);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        n += 1;
                        let _ = ack_tx.send(n);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(Client {
            client,
            received,
            subacks,
            acked,
            sent: 0,
        })
    }

    async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.subacks.recv())
            .await
            .expect("SUBACK within 10 s")
            .unwrap()
    }

    async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
        self.sent += 1;
    }

    /// Wait until the broker acknowledged every publish so far.
    async fn flush(&mut self) {
        let sent = self.sent;
        tokio::time::timeout(Duration::from_secs(60), self.acked.wait_for(|n| *n >= sent))
            .await
            .expect("the broker acknowledges within 60 s")
            .unwrap();
    }

    /// The payloads received until (and including) `last`.
    async fn received_until(&mut self, last: &str) -> Vec<(String, String)> {
        let mut got = Vec::new();
        loop {
            let p = tokio::time::timeout(Duration::from_secs(10), self.received.recv())
                .await
                .unwrap_or_else(|_| panic!("`{last}` not received in 10 s; got {got:?}"))
                .unwrap();
            let payload = String::from_utf8(p.payload.to_vec()).unwrap();
            let done = payload == last;
            got.push((p.topic, payload));
            if done {
                return got;
            }
        }
    }
}

fn topic(kind: &str, id: &str, channel: &str) -> String {
    format!("{ROOT}/{kind}/{id}/{channel}")
}

#[tokio::test]
async fn each_device_publishes_and_reads_only_under_its_own_id() {
    let creds = Credentials::make(2, 1);
    let broker = ShippedBroker::start(&creds).await;
    let port = broker.port;

    let refused = Client::connect(port, &unique("anon"), None).await;
    assert!(
        matches!(refused, Err(ConnectionError::ConnectionRefused(_))),
        "anonymous connection must be refused"
    );
    let refused =
        Client::connect(port, &unique("bad"), Some(("XY-B0001", "not-its-password"))).await;
    assert!(
        matches!(refused, Err(ConnectionError::ConnectionRefused(_))),
        "a wrong password must be refused"
    );

    let mut backend = Client::connect(port, &unique("backend"), Some(creds.of(BACKEND)))
        .await
        .expect("the backend connects");
    let granted = backend.subscribe(&format!("{ROOT}/#")).await;
    assert_eq!(
        granted,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let mut a = Client::connect(port, "XY-B0001", Some(creds.of("XY-B0001")))
        .await
        .expect("device A connects");
    a.subscribe(&topic("bike", "XY-B0001", "cmd")).await;
    // Mosquitto 2.0.11 grants this subscription and applies the ACL to each message it would
    // deliver: what matters is that none of B's commands reach A (checked below).
    a.subscribe(&topic("bike", "XY-B0002", "cmd")).await;

    // Device A publishes on its own topics, forges B's telemetry and its own command, then
    // sends a marker: one publisher to one subscriber at QoS 1 keeps order, so whatever was
    // delivered arrives before the marker.
    a.publish(&topic("bike", "XY-B0001", "telemetry"), "a-own")
        .await;
    a.publish(&topic("bike", "XY-B0001", "event"), "a-event")
        .await;
    a.publish(&topic("bike", "XY-B0002", "telemetry"), "a-forged-b")
        .await;
    a.publish(&topic("bike", "XY-B0001", "cmd"), "a-forged-cmd")
        .await;
    a.publish(&format!("{ROOT}/other"), "a-outside").await;
    a.publish(&topic("bike", "XY-B0001", "status"), "marker-a")
        .await;
    a.flush().await;
    let got = backend.received_until("marker-a").await;
    let payloads: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(payloads, ["a-own", "a-event", "marker-a"], "{got:?}");

    // The backend sends commands to B then A: A receives only its own.
    let mut b = Client::connect(port, "XY-B0002", Some(creds.of("XY-B0002")))
        .await
        .expect("device B connects");
    b.subscribe(&topic("bike", "XY-B0002", "cmd")).await;
    backend
        .publish(&topic("bike", "XY-B0002", "cmd"), "cmd-for-b")
        .await;
    backend
        .publish(&topic("bike", "XY-B0001", "cmd"), "cmd-for-a")
        .await;
    backend.flush().await;
    let got = a.received_until("cmd-for-a").await;
    assert_eq!(
        got,
        [(topic("bike", "XY-B0001", "cmd"), "cmd-for-a".into())]
    );
    let got = b.received_until("cmd-for-b").await;
    assert_eq!(got.len(), 1, "{got:?}");

    // The bus user is kept to its own id too, under either kind segment.
    let mut bus = Client::connect(port, "XY-H0001", Some(creds.of("XY-H0001")))
        .await
        .expect("the bus connects");
    bus.publish(&topic("bus", "XY-B0001", "telemetry"), "bus-forged-a")
        .await;
    bus.publish(&topic("bus", "XY-H0001", "telemetry"), "marker-bus")
        .await;
    bus.flush().await;
    // The backend also reads the commands it sent; the forged reading is not among them.
    let got = backend.received_until("marker-bus").await;
    let payloads: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        payloads,
        ["cmd-for-b", "cmd-for-a", "marker-bus"],
        "{got:?}"
    );
}

/// hyfleet's delivery promise with the shipped broker configuration: 20,000 readings published
/// while hyfleet is down are all stored once it is back. Its persistent session exists (it ran
/// once and stopped), so the broker queues for it; with Debian's default configuration
/// (`max_queued_messages 1000`) the broker would keep only the first 1000 and silently drop the
/// other ~19,000.
#[tokio::test]
async fn readings_published_while_hyfleet_is_down_are_all_stored() {
    const DEVICES: u32 = 4;
    const PER_DEVICE: u32 = 5_000;
    let creds = Credentials::make(DEVICES, 0);
    let broker = ShippedBroker::start(&creds).await;
    let db = TestDb::new().await;
    let (user, pass) = creds.of(BACKEND);
    let mut config = crate::support::config(
        &db,
        &format!("mqtt://{user}:{pass}@127.0.0.1:{}", broker.port),
    );
    config.mqtt.topic_root = ROOT.into();

    // Create the session (fixed client id, no clean start), then go away.
    InProcess::start(config.clone()).await.stop().await;

    let now = chrono::Utc::now();
    for d in 1..=DEVICES {
        let id = format!("XY-B{d:04}");
        let mut fw = Client::connect(broker.port, &id, Some(creds.of(&id)))
            .await
            .expect("device connects");
        for seq in 0..PER_DEVICE {
            let ts = now - chrono::Duration::milliseconds(i64::from(PER_DEVICE - seq) * 10);
            let reading = json!({
                "ts": ts.timestamp_millis(), "seq": seq, "lat": 37.145, "lon": 111.781,
                "speed_kmh": 12.0, "h2_g": 30.0, "locked": false
            });
            fw.publish(&topic("bike", &id, "telemetry"), reading.to_string())
                .await;
        }
        fw.flush().await;
    }

    let svc = InProcess::start(config).await;
    let client = db.client().await;
    let total = i64::from(DEVICES * PER_DEVICE);
    eventually(120, "every reading stored", || async {
        (count(&client, "SELECT count(*) FROM telemetry").await >= total).then_some(())
    })
    .await;
    // Nothing beyond them (no duplicates, no rejects) and every device's sequence complete.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM telemetry").await,
        total
    );
    assert_eq!(count(&client, "SELECT count(*) FROM rejects").await, 0);
    let full = count(
        &client,
        &format!(
            "SELECT count(*) FROM (SELECT vehicle FROM telemetry GROUP BY vehicle \
             HAVING count(DISTINCT seq) = {PER_DEVICE}) v"
        ),
    )
    .await;
    assert_eq!(full, i64::from(DEVICES));
    svc.stop().await;
}
