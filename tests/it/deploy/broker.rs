//! The shipped Mosquitto configuration, run for real on a free port (`support::broker`): only the
//! listener and the paths are changed, so what is tested is what `docker compose` runs.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::support::broker::{BACKEND, COMMANDS, Credentials, ShippedBroker};
use crate::support::{InProcess, TestDb, count, eventually, unique};

const ROOT: &str = "hyfleet/v1";

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
        // The broker's limit is what is tested, not the client's (10 KiB by default).
        opts.set_max_packet_size(1 << 20, 1 << 20);
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

    async fn publish_retained(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.into())
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
    let refused = Client::connect(
        port,
        &unique("bad"),
        Some(("bike/XY-B0001", "not-its-password")),
    )
    .await;
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

    let mut a = Client::connect(port, "XY-B0001", Some(creds.of("bike/XY-B0001")))
        .await
        .expect("device A connects");
    a.subscribe(&topic("bike", "XY-B0001", "cmd")).await;
    // Mosquitto 2.0.11 grants this subscription and applies the ACL to each message it would
    // deliver: what matters is that none of B's commands reach A (checked below).
    a.subscribe(&topic("bike", "XY-B0002", "cmd")).await;

    // Device A publishes on its own topics, forges B's telemetry, its own under the other
    // kind and another leaf, and its own command, then sends a marker: one publisher to one
    // subscriber at QoS 1 keeps order, so whatever was delivered arrives before the marker.
    a.publish(&topic("bike", "XY-B0001", "telemetry"), "a-own")
        .await;
    a.publish(&topic("bike", "XY-B0001", "event"), "a-event")
        .await;
    a.publish(&topic("bike", "XY-B0002", "telemetry"), "a-forged-b")
        .await;
    a.publish(&topic("bus", "XY-B0001", "telemetry"), "a-as-bus")
        .await;
    a.publish(&topic("bike", "XY-B0001", "gps"), "a-other-leaf")
        .await;
    a.publish(&format!("{ROOT}/bike/XY-B0001/telemetry/x"), "a-deeper")
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

    // The command publisher sends commands to B then A: A receives only its own. It can
    // neither forge telemetry nor read anything; ingest's user cannot send commands.
    let mut b = Client::connect(port, "XY-B0002", Some(creds.of("bike/XY-B0002")))
        .await
        .expect("device B connects");
    b.subscribe(&topic("bike", "XY-B0002", "cmd")).await;
    let mut commands = Client::connect(port, &unique("api"), Some(creds.of(COMMANDS)))
        .await
        .expect("the command publisher connects");
    commands.subscribe(&format!("{ROOT}/#")).await;
    backend
        .publish(&topic("bike", "XY-B0001", "cmd"), "cmd-from-ingest")
        .await;
    backend.flush().await;
    commands
        .publish(&topic("bike", "XY-B0001", "telemetry"), "commands-forged")
        .await;
    commands
        .publish(&topic("bike", "XY-B0002", "cmd"), "cmd-for-b")
        .await;
    commands
        .publish(&topic("bike", "XY-B0001", "cmd"), "cmd-for-a")
        .await;
    commands.flush().await;
    let got = a.received_until("cmd-for-a").await;
    assert_eq!(
        got,
        [(topic("bike", "XY-B0001", "cmd"), "cmd-for-a".into())]
    );
    let got = b.received_until("cmd-for-b").await;
    assert_eq!(got.len(), 1, "{got:?}");

    // The bus user is kept to its own id and kind too.
    let mut bus = Client::connect(port, "XY-H0001", Some(creds.of("bus/XY-H0001")))
        .await
        .expect("the bus connects");
    bus.publish(&topic("bus", "XY-B0001", "telemetry"), "bus-forged-a")
        .await;
    bus.publish(&topic("bike", "XY-B0001", "telemetry"), "bus-forged-a-bike")
        .await;
    bus.publish(&topic("bike", "XY-H0001", "telemetry"), "bus-as-bike")
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
    assert!(
        commands.received.try_recv().is_err(),
        "the command publisher reads nothing"
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
    let config = shipped_hyfleet(&db, &creds, broker.port, 1);

    // Create the session (fixed client id, no clean start), then go away.
    InProcess::start(config.clone()).await.stop().await;

    let now = chrono::Utc::now();
    for d in 1..=DEVICES {
        let id = format!("XY-B{d:04}");
        let user = format!("bike/{id}");
        let mut fw = Client::connect(broker.port, &id, Some(creds.of(&user)))
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

/// hyfleet's configuration against the shipped broker as instance `n` (1, 2...): its own
/// ingest and command users, and the client ids of a scale-out (`hyfleet-ingest`, the default
/// everyone can read in the sources, then `hyfleet-ingest-2`...).
fn shipped_hyfleet(db: &TestDb, creds: &Credentials, port: u16, n: u32) -> hyfleet::config::Config {
    let suffix = if n == 1 {
        String::new()
    } else {
        format!("-{n}")
    };
    let url = |user: &str| {
        let (user, pass) = creds.of(user);
        format!("mqtt://{user}:{pass}@127.0.0.1:{port}")
    };
    let mut config = crate::support::config(db, &url(&format!("{BACKEND}{suffix}")));
    config.mqtt.commands_url = Some(url(&format!("{COMMANDS}{suffix}")));
    config.mqtt.topic_root = ROOT.into();
    config.mqtt.client_id = format!("hyfleet-ingest{suffix}");
    config
}

/// The field case: a device login connecting again and again with the backend's client id
/// (`hyfleet-ingest`, clean session) while readings flow. Unpinned, each connection ended
/// hyfleet's session and discarded its queue (five reconnects lost 247 of 2,000 readings);
/// pinned, the device only ever gets its own session, and every reading is stored once. The
/// API's command publisher, a login of its own, displaces nothing either.
#[tokio::test]
async fn a_device_using_the_backends_client_id_cannot_displace_it() {
    const PER_DEVICE: u32 = 1_000;
    let creds = Credentials::make(4, 0);
    let broker = ShippedBroker::start(&creds).await;
    let port = broker.port;
    let db = TestDb::new().await;
    let a = InProcess::start(shipped_hyfleet(&db, &creds, port, 1)).await;
    let client = db.client().await;
    eventually(30, "hyfleet subscribed", || async {
        (metric(&a, "hyfleet_mqtt_connected").await == 1).then_some(())
    })
    .await;

    let (stop_tx, stop) = watch::channel(false);
    let attacker = {
        let login = creds.of("bike/XY-B0003");
        let login = (login.0.to_owned(), login.1.to_owned());
        tokio::spawn(async move {
            let mut connects = 0u32;
            while !*stop.borrow() {
                let c = Client::connect(port, "hyfleet-ingest", Some((&login.0, &login.1)))
                    .await
                    .expect("the device logs in");
                connects += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(c);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            connects
        })
    };

    let now = chrono::Utc::now();
    let mut devices = Vec::new();
    for d in 1..=2u32 {
        let user = format!("bike/XY-B{d:04}");
        let login = creds.of(&user);
        let login = (login.0.to_owned(), login.1.to_owned());
        devices.push(tokio::spawn(async move {
            let id = format!("XY-B{d:04}");
            let mut fw = Client::connect(port, &id, Some((&login.0, &login.1)))
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
                // Spread over a few seconds, so that the attack runs all along.
                if seq % 50 == 0 {
                    fw.flush().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            fw.flush().await;
        }));
    }
    for d in devices {
        d.await.unwrap();
    }
    stop_tx.send(true).unwrap();
    let connects = attacker.await.unwrap();
    assert!(connects >= 5, "the attack connected {connects} times");

    let total = i64::from(2 * PER_DEVICE);
    // Wait for all of them, or until nothing more arrives for 10 s: then what is missing is
    // lost, and the assertion says how many.
    let (mut last, mut since) = (-1, std::time::Instant::now());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let n = count(&client, "SELECT count(*) FROM telemetry").await;
        if n >= total || since.elapsed() > Duration::from_secs(10) {
            break;
        }
        if n != last {
            (last, since) = (n, std::time::Instant::now());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of {total} stored after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM telemetry").await,
        total,
        "readings acknowledged by the broker, stored exactly once"
    );

    // A command through the API's own login, to a device that says it is online (one
    // connection per device: its login is its session); ingest stays connected.
    let mut device = Client::connect(port, "XY-B0004", Some(creds.of("bike/XY-B0004")))
        .await
        .expect("the device connects");
    device.subscribe(&topic("bike", "XY-B0004", "cmd")).await;
    device
        .publish(&topic("bike", "XY-B0004", "status"), "online")
        .await;
    eventually(30, "the device registered", || async {
        (count(
            &client,
            "SELECT count(*) FROM vehicles WHERE code = 'XY-B0004'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    let sent = reqwest::Client::new()
        .post(a.url("/api/v1/vehicles/XY-B0004/commands"))
        .bearer_auth(crate::support::TOKEN)
        .json(&json!({"type": "locate"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202, "{}", sent.text().await.unwrap());
    let cmd = tokio::time::timeout(Duration::from_secs(10), device.received.recv())
        .await
        .expect("the command reaches the vehicle in 10 s")
        .unwrap();
    assert!(String::from_utf8_lossy(&cmd.payload).contains("\"locate\""));

    assert_eq!(metric(&a, "hyfleet_mqtt_reconnects_total").await, 0);
    a.stop().await;
}

/// Scale-out on the shipped broker: two instances share the subscription, each as its own
/// user (client ids are user names), and every reading is stored once between them.
#[tokio::test]
async fn two_instances_share_the_subscription_each_as_its_own_user() {
    const PER_DEVICE: u32 = 500;
    let creds = Credentials::for_instances(2, 0, 2);
    let broker = ShippedBroker::start(&creds).await;
    let port = broker.port;
    let db = TestDb::new().await;
    let mut instances = Vec::new();
    for n in 1..=2 {
        let mut config = shipped_hyfleet(&db, &creds, port, n);
        config.mqtt.shared_group = Some("hyfleet".into());
        config.ingest.writers = 1;
        let svc = InProcess::start(config).await;
        eventually(30, "the instance subscribed", || async {
            (metric(&svc, "hyfleet_mqtt_connected").await == 1).then_some(())
        })
        .await;
        instances.push(svc);
    }
    for d in 1..=2u32 {
        let id = format!("XY-B{d:04}");
        let mut fw = Client::connect(port, &id, Some(creds.of(&format!("bike/{id}"))))
            .await
            .expect("device connects");
        for seq in 0..PER_DEVICE {
            fw.publish(&topic("bike", &id, "telemetry"), reading(seq))
                .await;
        }
        fw.flush().await;
    }
    let client = db.client().await;
    let total = i64::from(2 * PER_DEVICE);
    eventually(60, "every reading stored", || async {
        (count(&client, "SELECT count(*) FROM telemetry").await >= total).then_some(())
    })
    .await;
    for svc in &instances {
        assert!(
            metric(svc, "hyfleet_mqtt_messages_total").await > 0,
            "each instance took its share"
        );
        assert_eq!(metric(svc, "hyfleet_mqtt_reconnects_total").await, 0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM telemetry").await,
        total
    );
    for svc in instances {
        svc.stop().await;
    }
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

fn reading(seq: u32) -> String {
    let ts = chrono::Utc::now() - chrono::Duration::seconds(600)
        + chrono::Duration::milliseconds(i64::from(seq));
    json!({
        "ts": ts.timestamp_millis(), "seq": seq, "lat": 37.145, "lon": 111.781,
        "speed_kmh": 12.0, "h2_g": 30.0, "locked": false
    })
    .to_string()
}

/// One device floods as fast as the broker takes it while three others send at their pace:
/// the flood is held to its budget (refused as `rate_limited`, each counted, recorded once a
/// minute) and every reading of the others is stored.
#[tokio::test]
async fn a_flooding_device_is_rate_limited_and_the_others_are_untouched() {
    const BUDGET: u32 = 60;
    const FLOOD: u32 = 3000;
    const OTHERS: u32 = 3;
    const EACH: u32 = 50;
    let creds = Credentials::make(OTHERS + 1, 0);
    let broker = ShippedBroker::start(&creds).await;
    let port = broker.port;
    let db = TestDb::new().await;
    let mut config = shipped_hyfleet(&db, &creds, port, 1);
    config.ingest.device_messages_per_minute = BUDGET;
    config.ingest.device_burst_minutes = 1;
    let svc = InProcess::start(config).await;
    let client = db.client().await;
    let flooder = format!("XY-B{:04}", OTHERS + 1);

    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for n in 1..=OTHERS + 1 {
        let id = format!("XY-B{n:04}");
        let user = format!("bike/{id}");
        let login = (user.clone(), creds.of(&user).1.to_owned());
        let flooding = n == OTHERS + 1;
        tasks.push(tokio::spawn(async move {
            let mut fw = Client::connect(port, &id, Some((&login.0, &login.1)))
                .await
                .expect("device connects");
            for seq in 0..if flooding { FLOOD } else { EACH } {
                fw.publish(&topic("bike", &id, "telemetry"), reading(seq))
                    .await;
                if !flooding {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            fw.flush().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let flood_stored = format!(
        "SELECT count(*) FROM telemetry t JOIN vehicles v ON v.id = t.vehicle \
         WHERE v.code = '{flooder}'"
    );
    let others_stored = format!(
        "SELECT count(*) FROM telemetry t JOIN vehicles v ON v.id = t.vehicle \
         WHERE v.code <> '{flooder}'"
    );
    // Every message of the flood taken: stored, or refused and counted.
    eventually(120, "the whole flood handled", || async {
        let stored = count(&client, &flood_stored).await;
        let refused = metric(&svc, "hyfleet_rejects_total{reason=\"rate_limited\"}").await;
        (stored + refused >= i64::from(FLOOD)).then_some(())
    })
    .await;
    eventually(60, "every other device's readings", || async {
        (count(&client, &others_stored).await >= i64::from(OTHERS * EACH)).then_some(())
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let stored = count(&client, &flood_stored).await;
    // The budget, plus what refilled (one a second) while the test ran.
    let allowed = f64::from(BUDGET) * (1.0 + elapsed / 60.0) + 1.0;
    assert!(
        stored >= i64::from(BUDGET) && (stored as f64) <= allowed,
        "the flooding device stored {stored} readings in {elapsed:.1} s, budget {BUDGET}/min"
    );
    let refused = metric(&svc, "hyfleet_rejects_total{reason=\"rate_limited\"}").await;
    assert_eq!(stored + refused, i64::from(FLOOD));
    // Recorded once a minute, not once a message.
    let recorded = count(
        &client,
        &format!(
            "SELECT count(*) FROM rejects WHERE reason = 'rate_limited' AND vehicle = '{flooder}'"
        ),
    )
    .await;
    let minutes = (elapsed / 60.0).ceil() as i64;
    assert!(
        (1..=minutes + 1).contains(&recorded),
        "{recorded} rejects recorded for the flood in {elapsed:.1} s"
    );
    assert_eq!(
        count(
            &client,
            &format!("SELECT count(*) FROM rejects WHERE vehicle <> '{flooder}'")
        )
        .await,
        0,
        "nothing of the other devices refused"
    );
    assert_eq!(
        count(&client, &others_stored).await,
        i64::from(OTHERS * EACH)
    );
    svc.stop().await;
}

/// The broker cannot refuse the retain flag per topic, and the ACL lets a device write its own
/// telemetry: a retained reading is kept at the broker and replayed, flagged, at each of
/// hyfleet's subscriptions. hyfleet refuses it (recorded, `schema`) and still takes the
/// retained status, which is the contract.
#[tokio::test]
async fn retained_telemetry_is_refused_and_a_retained_status_still_counts() {
    let creds = Credentials::make(1, 0);
    let broker = ShippedBroker::start(&creds).await;
    let db = TestDb::new().await;
    let mut fw = Client::connect(broker.port, "XY-B0001", Some(creds.of("bike/XY-B0001")))
        .await
        .expect("device connects");
    let telemetry = topic("bike", "XY-B0001", "telemetry");
    fw.publish_retained(&telemetry, reading(1)).await;
    fw.publish_retained(&topic("bike", "XY-B0001", "status"), "online")
        .await;
    fw.flush().await;

    let svc = InProcess::start(shipped_hyfleet(&db, &creds, broker.port, 1)).await;
    let client = db.client().await;
    let online = eventually(30, "the retained messages handled", || async {
        let online: Option<bool> = client
            .query_opt("SELECT online FROM vehicles WHERE code = 'XY-B0001'", &[])
            .await
            .unwrap()
            .and_then(|r| r.get(0));
        let rejects = count(&client, "SELECT count(*) FROM rejects").await;
        (online.is_some() && rejects >= 1).then_some(online)
    })
    .await;
    assert_eq!(online, Some(true), "a retained status is the contract");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM telemetry").await, 0);
    let r = client
        .query_one("SELECT reason, topic, detail FROM rejects", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "schema");
    assert_eq!(r.get::<_, String>(1), telemetry);
    assert!(r.get::<_, String>(2).contains("retain flag"));
    svc.stop().await;
}

/// `max_packet_size` fits firmware's largest message, a backlog of `ingest.max_batch` readings
/// (of the simulator's bus, the widest), and no more than a margin beyond it: a bigger packet
/// disconnects its sender and is delivered to nobody.
#[tokio::test]
async fn the_packet_limit_fits_a_full_backlog_and_refuses_far_larger() {
    let creds = Credentials::make(1, 0);
    let broker = ShippedBroker::start(&creds).await;
    let mut backend = Client::connect(broker.port, &unique("b"), Some(creds.of(BACKEND)))
        .await
        .expect("the backend connects");
    backend.subscribe(&format!("{ROOT}/#")).await;
    let max_batch = hyfleet::config::IngestConfig::default().max_batch;
    let now = chrono::Utc::now().timestamp_millis();
    let backlog: Vec<serde_json::Value> = (0..max_batch as i64)
        .map(|i| {
            json!({"ts": now - 1_000_000 + i * 1000, "seq": i, "lat": 37.145123, "lon": 111.781234,
                "speed_kmh": 54.3, "heading_deg": 182.4, "h2_g": 18234.5, "h2_pressure_bar": 286.4,
                "tank_temp_c": 21.3, "fc_power_w": 48210.0, "fc_temp_c": 63.2, "batt_v": 27.6,
                "odo_km": 48213.482, "locked": false, "faults": []})
        })
        .collect();
    let full = serde_json::to_string(&backlog).unwrap();
    assert!(
        full.len() > 250_000,
        "a realistic backlog: {} B",
        full.len()
    );
    let telemetry = topic("bike", "XY-B0001", "telemetry");
    let mut fw = Client::connect(broker.port, "XY-B0001", Some(creds.of("bike/XY-B0001")))
        .await
        .expect("device connects");
    fw.publish(&telemetry, full.clone()).await;
    fw.publish(&telemetry, "marker").await;
    fw.flush().await;
    let got = backend.received_until("marker").await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1.len(), full.len());

    // Well over the limit: the connection is closed, nothing delivered.
    fw.publish(&telemetry, vec![b' '; 400 * 1024]).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while fw
            .client
            .publish(&telemetry, QoS::AtLeastOnce, false, "after")
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the broker closes the sender of an oversized packet"
    );
    let mut again = Client::connect(broker.port, "XY-B0001", Some(creds.of("bike/XY-B0001")))
        .await
        .expect("device reconnects");
    again.publish(&telemetry, "marker-2").await;
    again.flush().await;
    let got = backend.received_until("marker-2").await;
    assert!(
        got.iter().all(|(_, p)| p.len() < 400 * 1024),
        "the oversized packet was delivered"
    );
}
