//! Scaling down on the shipped broker configuration: three instances share one subscription
//! and one leaves mid-stream. Mosquitto keeps handing a shared subscription's messages to a
//! member whose session exists, connected or not, so an instance that leaves must take its
//! session with it (retire), or an operator must drain it (`hyfleet mqtt drain-session`); an
//! instance that restarts keeps it. Every reading the broker acknowledged is stored once.
//!
//! As the shipped configuration intends: each instance logs in as its own user
//! (`hyfleet.backend`, `hyfleet.backend-2`...), which is also its client id and session, and
//! each bike as `bike/{id}`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::support::broker::{
    BACKEND, Credentials, ShippedBroker, commands_user, device_user, ingest_user, shipped_setting,
};
use crate::support::*;

const ROOT: &str = "hyfleet/v1";
const BIKES: u32 = 20;
const PER_BIKE: u32 = 600;
const TOTAL: i64 = (BIKES * PER_BIKE) as i64;

/// The bikes, each publishing as its own broker user at QoS 1.
struct Fleet {
    bikes: Vec<(String, AsyncClient)>,
    acked: Arc<AtomicU64>,
    sent: u64,
    start: chrono::DateTime<chrono::Utc>,
}

impl Fleet {
    async fn connect(broker: &ShippedBroker, creds: &Credentials) -> Fleet {
        let acked = Arc::new(AtomicU64::new(0));
        let mut bikes = Vec::new();
        for n in 1..=BIKES {
            let id = format!("XY-B{n:04}");
            let user = device_user("bike", &id);
            let (user, password) = creds.of(&user);
            let mut opts = MqttOptions::new(&id, "127.0.0.1", broker.port);
            opts.set_keep_alive(Duration::from_secs(30))
                .set_credentials(user, password);
            opts.set_inflight(500);
            let (client, mut eventloop) = AsyncClient::new(opts, 1000);
            let acked = acked.clone();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(rumqttc::ConnectionError::RequestsDone) => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
            bikes.push((id, client));
        }
        Fleet {
            bikes,
            acked,
            sent: 0,
            start: chrono::Utc::now() - chrono::Duration::hours(2),
        }
    }

    /// Readings `seqs` of every bike, then wait until the broker acknowledged all of them.
    async fn publish(&mut self, seqs: std::ops::Range<u32>) {
        for seq in seqs {
            for (id, client) in &self.bikes {
                let ts = self.start + chrono::Duration::seconds(i64::from(seq));
                // Riding in the service area from 14 g down to 6 g: one low_hydrogen alert
                // (warning below 10 g, never critical below 5 g) past the middle of the stream.
                let h2 = 14.0 - 8.0 * f64::from(seq) / f64::from(PER_BIKE);
                let r = json!({
                    "ts": ts.to_rfc3339(), "seq": seq, "lat": 37.1466, "lon": 111.7817,
                    "speed_kmh": 12.0, "h2_g": h2, "locked": false
                });
                client
                    .publish(
                        format!("{ROOT}/bike/{id}/telemetry"),
                        QoS::AtLeastOnce,
                        false,
                        r.to_string(),
                    )
                    .await
                    .unwrap();
                self.sent += 1;
            }
        }
        let sent = self.sent;
        eventually(120, "the broker acknowledges every reading", || async {
            (self.acked.load(Ordering::SeqCst) >= sent).then_some(())
        })
        .await;
    }
}

/// Instances on `$share/hyfleet/hyfleet/v1/#`, one database.
struct Group {
    broker: ShippedBroker,
    creds: Credentials,
    db: TestDb,
    dirs: Vec<PathBuf>,
    ids: Vec<String>,
    instances: Vec<Option<ChildService>>,
}

impl Group {
    /// One instance per element of `retiring`; `retiring[n]` sets `mqtt.retire_on_shutdown`
    /// on instance `n`.
    async fn start(retiring: &[bool]) -> Group {
        let creds = Credentials::for_instances(BIKES, 0, retiring.len() as u32);
        let broker = ShippedBroker::start(&creds).await;
        let db = TestDb::new().await;
        let mut group = Group {
            broker,
            creds,
            db,
            dirs: Vec::new(),
            ids: Vec::new(),
            instances: Vec::new(),
        };
        for (n, &retire) in retiring.iter().enumerate() {
            group.dirs.push(temp_dir());
            // Its client id is its user's name, which the broker would impose anyway.
            group.ids.push(ingest_user(n as u32 + 1));
            let toml = group.toml(n, retire);
            let svc = ChildService::start(&toml, &group.dirs[n]).await;
            group.instances.push(Some(svc));
        }
        group
    }

    fn toml(&self, n: usize, retire: bool) -> String {
        format!(
            r#"[database]
url = "{}"
pool_size = 2
[mqtt]
url = "{}"
commands_url = "{}"
topic_root = "{ROOT}"
client_id = "{}"
shared_group = "hyfleet"
retire_on_shutdown = {retire}
[ingest]
batch_max_age_ms = 20
batch_max_rows = 500
"#,
            self.db.url(),
            self.broker.url(self.creds.of(&self.ids[n])),
            self.broker.url(self.creds.of(&commands_user(n as u32 + 1))),
            self.ids[n]
        )
    }

    /// Whether the broker holds instance `n`'s session.
    async fn has_session(&self, n: usize) -> bool {
        self.broker.has_session(self.creds.of(&self.ids[n])).await
    }

    /// Send `signal` to instance `n` and wait for it to exit; its exit status.
    async fn stop(&mut self, n: usize, signal: &str) -> std::process::ExitStatus {
        let mut svc = self.instances[n].take().expect("running");
        let pid = svc.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
        eventually(90, "the instance exits", || {
            let status = svc.child.try_wait().unwrap();
            async move { status }
        })
        .await
    }

    async fn stored(&self) -> i64 {
        count(&self.db.client().await, "SELECT count(*) FROM telemetry").await
    }

    /// Wait until some readings are stored, so that every instance is busy.
    async fn wait_storing(&self) {
        eventually(60, "the group storing", || async {
            (self.stored().await > 1000).then_some(())
        })
        .await;
    }

    /// Every reading of the stream stored, each once.
    async fn assert_all_stored_once(&self) {
        let client = self.db.client().await;
        eventually(180, "every acknowledged reading stored", || async {
            (count(&client, "SELECT count(*) FROM telemetry").await >= TOTAL).then_some(())
        })
        .await;
        assert_eq!(
            count(
                &client,
                "SELECT count(*) FROM (SELECT DISTINCT vehicle, seq FROM telemetry) d"
            )
            .await,
            TOTAL
        );
        assert_eq!(
            count(&client, "SELECT count(*) FROM telemetry").await,
            TOTAL,
            "no reading stored twice"
        );
        assert_eq!(count(&client, "SELECT count(*) FROM rejects").await, 0);
        // The rules saw every reading once, whichever instance or command took it.
        let per_bike =
            "SELECT count(*) FROM alerts WHERE rule = 'low_hydrogen' GROUP BY vehicle_id";
        assert_eq!(
            count(&client, &format!("SELECT count(*) FROM ({per_bike}) a")).await,
            i64::from(BIKES)
        );
        assert_eq!(
            count(&client, &format!("SELECT max(count) FROM ({per_bike}) a")).await,
            1,
            "one low_hydrogen alert per bike"
        );
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.instances.clear();
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[tokio::test]
async fn instances_retired_mid_stream_strand_nothing() {
    // The second instance retires on any stop (`mqtt.retire_on_shutdown`); the third is told
    // to by SIGUSR1.
    let mut group = Group::start(&[false, true, false]).await;
    let mut fleet = Fleet::connect(&group.broker, &group.creds).await;
    fleet.publish(0..PER_BIKE / 3).await;
    group.wait_storing().await;
    // Each leaves for good while the stream goes on around it.
    let more = tokio::spawn(async move {
        fleet.publish(PER_BIKE / 3..PER_BIKE * 2 / 3).await;
        fleet
    });
    let status = group.stop(2, "-USR1").await;
    assert!(status.success(), "the retiring instance failed: {status}");
    let mut fleet = more.await.unwrap();
    let more = tokio::spawn(async move {
        fleet.publish(PER_BIKE * 2 / 3..PER_BIKE).await;
        fleet
    });
    let status = group.stop(1, "-TERM").await;
    assert!(status.success(), "the retiring instance failed: {status}");
    let _fleet = more.await.unwrap();
    group.assert_all_stored_once().await;
    for n in [1, 2] {
        assert!(
            !group.has_session(n).await,
            "the retired instance's session is gone from the broker"
        );
    }
    assert!(group.has_session(0).await);
}

#[tokio::test]
async fn a_killed_instance_s_session_is_drained_by_the_operator_command() {
    let mut group = Group::start(&[false; 3]).await;
    let mut fleet = Fleet::connect(&group.broker, &group.creds).await;
    fleet.publish(0..PER_BIKE / 3).await;
    group.wait_storing().await;
    group.instances[1].take().expect("running").kill();
    fleet.publish(PER_BIKE / 3..PER_BIKE).await;

    // The instance never comes back: the operator drains its session, logged in as its user
    // (its own configuration) and naming that user, whose session it is on this broker.
    let drained = group.drain_session(1).await;
    group.assert_all_stored_once().await;
    // Its share of the rest of the stream, at least: a third of 8,000 readings.
    assert!(drained > 1000, "drained only {drained}");
    assert!(
        !group.has_session(1).await,
        "the drained session is gone from the broker"
    );
}

impl Group {
    /// `hyfleet mqtt drain-session` for instance `n`'s session, with its configuration; the
    /// number of messages it took.
    async fn drain_session(&self, n: usize) -> u64 {
        let config = self.dirs[n].join("hyfleet.toml");
        let id = self.ids[n].clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_hyfleet"))
                .args(["--config", config.to_str().unwrap()])
                .args(["mqtt", "drain-session", "--client-id", &id])
                .env("RUST_LOG", "warn")
                .env_remove("DATABASE_URL")
                .env_remove("MQTT_URL")
                .env_remove("HYFLEET_TOPIC_ROOT")
                .output()
                .expect("run hyfleet mqtt drain-session")
        });
        let out = tokio::time::timeout(Duration::from_secs(180), out)
            .await
            .expect("drain-session ends within 180 s")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "drain-session failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .split_whitespace()
            .skip_while(|w| *w != "drained")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {stdout:?}"))
    }
}

#[tokio::test]
async fn a_restarting_instance_keeps_its_session() {
    let mut group = Group::start(&[false; 3]).await;
    let mut fleet = Fleet::connect(&group.broker, &group.creds).await;
    fleet.publish(0..PER_BIKE / 3).await;
    group.wait_storing().await;
    let status = group.stop(1, "-TERM").await;
    assert!(status.success(), "the stopping instance failed: {status}");
    fleet.publish(PER_BIKE / 3..PER_BIKE).await;

    // Back under the same client id. Nothing is published from now on, so what it takes can
    // only be what its session kept while it was away.
    let toml = group.toml(1, false);
    let svc = ChildService::start(&toml, &group.dirs[1]).await;
    group.assert_all_stored_once().await;
    let metrics = reqwest::get(format!("http://{}/metrics", svc.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let taken: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hyfleet_mqtt_messages_total "))
        .and_then(|v| v.parse().ok())
        .expect("hyfleet_mqtt_messages_total");
    assert!(taken > 1000, "the restarted instance took only {taken}");
    group.instances[1] = Some(svc);
}

/// A catch-up after an outage: the broker hands over the whole queue at once, faster than
/// acknowledgements go out one write each. Every message the instance takes is acknowledged
/// once committed, none dropped on a full request channel: after it, the broker holds nothing
/// in flight for the session, so nothing comes again.
#[tokio::test]
async fn a_catch_up_acknowledges_every_message_it_takes() {
    let mut group = Group::start(&[false]).await;
    let mut fleet = Fleet::connect(&group.broker, &group.creds).await;
    let status = group.stop(0, "-TERM").await;
    assert!(status.success(), "the stopping instance failed: {status}");
    fleet.publish(0..PER_BIKE).await;

    // Back with small batches, so that its acknowledgement channel (sized from them) is far
    // smaller than the queue the broker floods it with.
    let toml = group
        .toml(0, false)
        .replace("batch_max_rows = 500", "batch_max_rows = 100");
    assert_ne!(toml, group.toml(0, false));
    group.instances[0] = Some(ChildService::start(&toml, &group.dirs[0]).await);
    group.assert_all_stored_once().await;
    let status = group.stop(0, "-TERM").await;
    assert!(status.success(), "the stopping instance failed: {status}");
    assert!(group.has_session(0).await, "a stop keeps the session");

    let left = group.drain_session(0).await;
    assert_eq!(
        left, 0,
        "messages stored but never acknowledged came again from the broker"
    );
}

/// One instance of a group, in this process, with PostgreSQL behind a proxy the test can cut.
struct OutageRig {
    broker: ShippedBroker,
    creds: Credentials,
    proxy: Proxy,
    db: TestDb,
    config: hyfleet::config::Config,
    trigger: hyfleet::shutdown::Trigger,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl OutageRig {
    async fn start() -> OutageRig {
        let creds = Credentials::make(BIKES, 0);
        let broker = ShippedBroker::start(&creds).await;
        let proxy = Proxy::start(pg_addr()).await;
        let db = TestDb::new().await;
        let mut config = config(&db, &broker.url(creds.of(BACKEND)));
        config.mqtt.client_id = BACKEND.into();
        config.database.url = format!("postgres://postgres@127.0.0.1:{}/{}", proxy.port, db.name);
        config.mqtt.topic_root = ROOT.into();
        config.mqtt.shared_group = Some("hyfleet".into());
        config.ingest.batch_max_rows = 200;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, stop) = hyfleet::shutdown::channel();
        let task = tokio::spawn(hyfleet::app::serve(config.clone(), listener, stop));
        wait_ready(addr).await;
        OutageRig {
            broker,
            creds,
            proxy,
            db,
            config,
            trigger,
            task,
        }
    }

    /// A third of the stream stored, then the database cut off while the rest is published:
    /// the instance holds messages it took and cannot commit.
    async fn cut_mid_stream(&self) -> Fleet {
        let mut fleet = Fleet::connect(&self.broker, &self.creds).await;
        fleet.publish(0..PER_BIKE / 3).await;
        let client = self.db.client().await;
        eventually(120, "the first third stored", || async {
            (count(&client, "SELECT count(*) FROM telemetry").await == TOTAL / 3).then_some(())
        })
        .await;
        self.proxy.cut();
        fleet.publish(PER_BIKE / 3..PER_BIKE).await;
        fleet
    }

    /// How the service ended, within `secs`.
    async fn ended(self, secs: u64) -> (anyhow::Result<()>, Proxy, TestDb, Shipped) {
        let r = tokio::time::timeout(Duration::from_secs(secs), self.task)
            .await
            .unwrap_or_else(|_| panic!("the service ends within {secs} s"))
            .unwrap();
        let shipped = Shipped {
            broker: self.broker,
            creds: self.creds,
        };
        (r, self.proxy, self.db, shipped)
    }
}

/// The broker of an `OutageRig` that ended, with its credentials.
struct Shipped {
    broker: ShippedBroker,
    creds: Credentials,
}

impl Shipped {
    async fn has_session(&self, user: &str) -> bool {
        self.broker.has_session(self.creds.of(user)).await
    }
}

/// Stopped for a restart while the database is away: the instance ends within its drain
/// deadline instead of retrying its batches forever, and keeps its session, so that the same
/// client id back takes everything once the database is.
#[tokio::test]
async fn a_stop_during_a_database_outage_ends_and_keeps_the_session() {
    let rig = OutageRig::start().await;
    let _fleet = rig.cut_mid_stream().await;
    let config = rig.config.clone();
    rig.trigger.fire();
    let (result, proxy, db, broker) = rig.ended(60).await;
    result.expect("a stop ends cleanly");
    assert!(broker.has_session(&config.mqtt.client_id).await);
    proxy.restore();
    let svc = InProcess::start(config).await;
    let client = db.client().await;
    eventually(120, "every reading stored after the restart", || async {
        (count(&client, "SELECT count(*) FROM telemetry").await >= TOTAL).then_some(())
    })
    .await;
    svc.stop().await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM telemetry").await,
        TOTAL
    );
}

/// Retired while the database is away: the instance cannot commit what it holds, so it leaves
/// the subscription, keeps the session, fails saying what to run, and the operator command
/// takes the rest once the database is back.
#[tokio::test]
async fn a_retirement_during_a_database_outage_keeps_the_session_for_the_operator() {
    let rig = OutageRig::start().await;
    let _fleet = rig.cut_mid_stream().await;
    let config = rig.config.clone();
    rig.trigger.retire();
    let (result, proxy, db, broker) = rig.ended(120).await;
    let err = format!(
        "{:#}",
        result.expect_err("a retirement that cannot drain fails")
    );
    assert!(err.contains("drain-session"), "{err}");
    assert!(broker.has_session(&config.mqtt.client_id).await);

    proxy.restore();
    let drained = hyfleet::app::drain_session(config.clone())
        .await
        .expect("drain-session");
    assert!(drained >= (TOTAL - TOTAL / 3) as u64, "drained {drained}");
    let client = db.client().await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM telemetry").await,
        TOTAL
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM (SELECT DISTINCT vehicle, seq FROM telemetry) d"
        )
        .await,
        TOTAL
    );
    assert!(!broker.has_session(&config.mqtt.client_id).await);
}

/// What leaving relies on, checked on the shipped broker: after an UNSUBSCRIBE, the broker
/// still delivers what it had queued for the session (here beyond the in-flight window, so
/// that some of it is sent only after the unsubscription), routes nothing new to it, and
/// answers an UNSUBSCRIBE sent behind the last acknowledgement with nothing ahead of it once
/// the queue is empty.
#[tokio::test]
async fn the_shipped_broker_delivers_a_queue_after_an_unsubscription_and_nothing_new() {
    // Beyond the shipped in-flight window, so that some is sent only after the unsubscription.
    let queued = shipped_setting("max_inflight_messages") + 1000;
    let creds = Credentials::make(BIKES, 0);
    let broker = ShippedBroker::start(&creds).await;
    let id = unique("probe");
    let filter = format!("$share/hyfleet/{ROOT}/#");
    let connect = || {
        let mut opts = MqttOptions::new(&id, "127.0.0.1", broker.port);
        opts.set_clean_session(false)
            .set_manual_acks(true)
            .set_credentials(BACKEND, creds.of(BACKEND).1);
        AsyncClient::new(opts, 20_000)
    };

    // The session exists, subscribed, and its client is away.
    let (client, mut eventloop) = connect();
    loop {
        match next(&mut eventloop).await {
            Event::Incoming(Packet::ConnAck(_)) => client
                .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                .unwrap(),
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => {}
        }
    }
    client.try_disconnect().unwrap();
    while !matches!(
        next(&mut eventloop).await,
        Event::Outgoing(rumqttc::Outgoing::Disconnect)
    ) {}
    drop(eventloop);

    let mut fleet = Fleet::connect(&broker, &creds).await;
    let per_bike = (queued / u64::from(BIKES)) as u32;
    fleet.publish(0..per_bike).await;

    // Back: unsubscribe before acknowledging anything, then take and acknowledge everything.
    let (client, mut eventloop) = connect();
    let mut held = Vec::new();
    let mut got = 0u64;
    let mut at_unsuback = None;
    while got < queued {
        match next(&mut eventloop).await {
            Event::Incoming(Packet::ConnAck(ack)) => {
                assert!(ack.session_present);
                client.try_unsubscribe(filter.clone()).unwrap();
            }
            Event::Incoming(Packet::UnsubAck(_)) => {
                at_unsuback = Some(got);
                for p in held.drain(..) {
                    client.try_ack(&p).unwrap();
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                got += 1;
                if at_unsuback.is_some() {
                    client.try_ack(&p).unwrap();
                } else {
                    held.push(p);
                }
            }
            _ => {}
        }
    }
    let at_unsuback = at_unsuback.expect("UNSUBACK before the queue ran out");
    assert!(
        at_unsuback < queued,
        "part of the queue is delivered after the unsubscription ({at_unsuback} before)"
    );

    // Published now, with no member left in the group: nothing of it reaches the session. An
    // UNSUBSCRIBE sent behind the last acknowledgement comes back with nothing ahead of it.
    fleet.publish(per_bike..per_bike + 1).await;
    client.try_unsubscribe(filter.clone()).unwrap();
    loop {
        match next(&mut eventloop).await {
            Event::Incoming(Packet::UnsubAck(_)) => break,
            Event::Incoming(Packet::Publish(p)) => {
                panic!("{} delivered after the unsubscription", p.topic)
            }
            _ => {}
        }
    }
}

async fn next(eventloop: &mut rumqttc::EventLoop) -> Event {
    tokio::time::timeout(Duration::from_secs(30), eventloop.poll())
        .await
        .expect("the broker answers within 30 s")
        .expect("connected")
}
