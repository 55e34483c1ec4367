use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn toml_config(db: &TestDb, broker: &str, root: &str, client_id: &str) -> String {
    format!(
        "[database]\nurl = \"{}\"\npool_size = 2\n[mqtt]\nurl = \"{broker}\"\ntopic_root = \"{root}\"\nclient_id = \"{client_id}\"\n[ingest]\nbatch_max_age_ms = 20\nbatch_max_rows = 500\n",
        db.url()
    )
}

fn msg(v: usize, seq: u32, now: chrono::DateTime<chrono::Utc>) -> String {
    json!({
        "ts": (now - chrono::Duration::milliseconds(i64::from(100_000 - seq))).to_rfc3339(),
        "seq": seq, "lat": 37.14, "lon": 111.78, "speed_kmh": 10.0, "h2_g": 30.0,
        "vehicle_id": format!("XY-B{v:04}")
    })
    .to_string()
}

#[tokio::test]
async fn a_killed_service_loses_nothing_and_stores_nothing_twice() {
    let broker = PrivateBroker::start(&shipped_limits()).await;
    let db = TestDb::new().await;
    let dir = temp_dir();
    let root = format!("test/{}", unique("crash"));
    let toml = toml_config(&db, &broker.url(), &root, &unique("svc"));
    let mut svc = ChildService::start(&toml, &dir).await;
    let mut fw = Publisher::connect(&broker.url()).await;
    let now = chrono::Utc::now();
    const VEHICLES: usize = 20;
    const PER_VEHICLE: u32 = 200;
    let client = db.client().await;
    for seq in 1..=PER_VEHICLE {
        for v in 1..=VEHICLES {
            fw.publish(
                &format!("{root}/bike/XY-B{v:04}/telemetry"),
                msg(v, seq, now),
            )
            .await;
        }
        if seq == PER_VEHICLE / 2 {
            // Kill it mid-stream, once something has been stored.
            eventually(20, "first commits", || async {
                (count(&client, "SELECT count(*) FROM telemetry").await > 0).then_some(())
            })
            .await;
            svc.kill();
        }
    }
    fw.flush().await;
    let svc2 = ChildService::start(&toml, &dir).await;
    let total = (VEHICLES as i64) * i64::from(PER_VEHICLE);
    eventually(60, "every reading stored", || async {
        (count(&client, "SELECT count(*) FROM telemetry").await == total).then_some(())
    })
    .await;
    // Exactly once: contiguous seq per vehicle, no duplicates.
    let row = client
        .query_one(
            "SELECT count(DISTINCT vehicle), min(n), max(n), min(lo), max(hi) FROM
             (SELECT vehicle, count(*) n, min(seq) lo, max(seq) hi FROM telemetry GROUP BY vehicle) s",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), VEHICLES as i64);
    assert_eq!(row.get::<_, i64>(1), i64::from(PER_VEHICLE));
    assert_eq!(row.get::<_, i64>(2), i64::from(PER_VEHICLE));
    assert_eq!(row.get::<_, i64>(3), 1);
    assert_eq!(row.get::<_, i64>(4), i64::from(PER_VEHICLE));
    drop(svc2);
    let _ = std::fs::remove_dir_all(dir);
}

/// One value of the service's `/metrics`.
async fn metric(svc: &InProcess, name: &str) -> f64 {
    let text = reqwest::get(svc.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

/// The service between a private broker and a proxy in front of PostgreSQL (to cut or slow
/// down), writing batches of 200, and one bike publishing numbered readings.
struct Rig {
    broker: PrivateBroker,
    proxy: Proxy,
    client: tokio_postgres::Client,
    svc: InProcess,
    topic: String,
    now: chrono::DateTime<chrono::Utc>,
    _db: TestDb,
}

impl Rig {
    async fn start() -> Rig {
        let broker = PrivateBroker::start(&shipped_limits()).await;
        let proxy = Proxy::start(pg_addr()).await;
        let db = TestDb::new().await;
        let mut config = config(&db, &broker.url());
        config.database.url = format!("postgres://postgres@127.0.0.1:{}/{}", proxy.port, db.name);
        config.ingest.batch_max_rows = 200;
        let topic = format!("{}/bike/XY-B0001/telemetry", config.mqtt.topic_root);
        let svc = InProcess::start(config).await;
        Rig {
            client: db.client().await,
            broker,
            proxy,
            svc,
            topic,
            now: chrono::Utc::now(),
            _db: db,
        }
    }

    /// Readings `from..=to`, each acknowledged by the broker when this returns.
    async fn publish(&self, from: u32, to: u32) {
        let mut fw = Publisher::connect(&self.broker.url()).await;
        for seq in from..=to {
            fw.publish(&self.topic, msg(1, seq, self.now)).await;
        }
        fw.flush().await;
    }

    async fn stored(&self) -> i64 {
        count(&self.client, "SELECT count(*) FROM telemetry").await
    }

    async fn wait_stored(&self, secs: u64, what: &str, n: i64) {
        eventually(secs, what, || async {
            (self.stored().await == n).then_some(())
        })
        .await;
    }

    /// Every reading `1..=n` stored, none twice.
    async fn assert_exactly_once(&self, n: i64) {
        let distinct = count(&self.client, "SELECT count(DISTINCT seq) FROM telemetry").await;
        assert_eq!(
            (distinct, self.stored().await),
            (n, n),
            "(distinct, stored)"
        );
    }

    async fn metric(&self, name: &str) -> f64 {
        metric(&self.svc, name).await
    }

    async fn ready(&self) -> Option<u16> {
        let r = reqwest::get(self.svc.url("/readyz")).await.ok()?;
        Some(r.status().as_u16())
    }
}

/// What ingest may hold unacknowledged with batches of 200 and two writers: the channel (200),
/// per writer the batch being written, one queued and one filling (2 × 3 × 200), and the one
/// message the poller holds while it waits.
const WINDOW: f64 = 1401.0;

/// The broker restarts while hyfleet holds messages it has taken and not yet acknowledged
/// (the database is cut so that none can commit): the broker redelivers them from the
/// persistent session, the batch hyfleet still holds is written too, and each reading is
/// stored once.
#[tokio::test]
async fn a_broker_restart_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let mut rig = Rig::start().await;
    rig.publish(1, 500).await;
    rig.wait_stored(20, "the first readings", 500).await;

    rig.proxy.cut();
    rig.publish(501, 2000).await;
    eventually(20, "hyfleet holding unacknowledged messages", || async {
        (rig.metric("hyfleet_unacked_messages").await > 0.0).then_some(())
    })
    .await;
    rig.broker.restart().await;
    rig.proxy.restore();
    rig.publish(2001, 3000).await;
    rig.wait_stored(60, "every reading stored after the restart", 3000)
        .await;
    rig.assert_exactly_once(3000).await;
    assert!(rig.metric("hyfleet_mqtt_reconnects_total").await >= 1.0);
    rig.svc.stop().await;
}

#[tokio::test]
async fn database_cut_off_pauses_ingest_and_loses_nothing() {
    let rig = Rig::start().await;
    rig.publish(1, 100).await;
    rig.wait_stored(20, "first readings", 100).await;

    rig.proxy.cut();
    rig.publish(101, 2000).await;
    // /readyz tells the truth while the database is away, and what ingest has taken from the
    // broker stays bounded by its window rather than by what was published.
    eventually(20, "readyz to report the outage", || async {
        (rig.ready().await == Some(503)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.stored().await, 100);
    let unacked = rig.metric("hyfleet_unacked_messages").await;
    assert!(unacked <= WINDOW, "unacked {unacked}");

    rig.proxy.restore();
    rig.wait_stored(60, "everything stored after the outage", 2000)
        .await;
    rig.svc.wait_ready().await;
    rig.assert_exactly_once(2000).await;
    rig.svc.stop().await;
}

/// A slow database (every packet held back 100 ms each way): ingest slows down and holds no
/// more than its window, stays ready (slow is not down), loses nothing and stores nothing
/// twice, and catches up once the database is fast again.
#[tokio::test]
async fn a_slow_database_slows_ingest_without_loss() {
    let rig = Rig::start().await;
    rig.proxy.set_delay(Duration::from_millis(100));
    rig.publish(1, 3000).await;
    eventually(30, "the first slow commits", || async {
        (rig.stored().await > 0).then_some(())
    })
    .await;
    let stored = rig.stored().await;
    assert!(
        stored < 3000,
        "the delay must slow ingest down ({stored} stored)"
    );
    assert!(rig.metric("hyfleet_unacked_messages").await <= WINDOW);
    assert_eq!(rig.ready().await, Some(200), "slow is not down");

    rig.proxy.set_delay(Duration::ZERO);
    rig.wait_stored(
        60,
        "everything stored once the database is fast again",
        3000,
    )
    .await;
    rig.assert_exactly_once(3000).await;
    assert_eq!(rig.metric("hyfleet_write_errors_total").await, 0.0);
    rig.svc.stop().await;
}

/// PostgreSQL refuses writes as it does when its disk is full (SQLSTATE 53100, raised here by
/// a trigger): the error is counted, logged and shown by /readyz, nothing is acknowledged, and
/// once space is back every reading is stored once.
#[tokio::test]
async fn disk_full_errors_are_surfaced_and_nothing_is_lost() {
    let rig = Rig::start().await;
    rig.client
        .batch_execute(
            "CREATE TABLE disk (is_full boolean NOT NULL);
             INSERT INTO disk VALUES (true);
             CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF (SELECT is_full FROM disk) THEN
                     RAISE EXCEPTION 'could not extend file: No space left on device'
                         USING ERRCODE = 'disk_full';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER disk_full BEFORE INSERT ON telemetry
                 FOR EACH ROW EXECUTE FUNCTION disk_full();",
        )
        .await
        .unwrap();
    rig.publish(1, 1000).await;
    eventually(
        20,
        "the write errors counted and /readyz failing",
        || async {
            let errors = rig.metric("hyfleet_write_errors_total").await;
            (errors >= 1.0 && rig.ready().await == Some(503)).then_some(())
        },
    )
    .await;
    assert_eq!(rig.stored().await, 0);
    assert!(
        rig.metric("hyfleet_unacked_messages").await > 0.0,
        "nothing acknowledged"
    );

    rig.client
        // Space comes back by a row update, not DDL: dropping the trigger would need an
        // exclusive lock on telemetry while the writer retries its insert, and deadlock.
        .batch_execute("UPDATE disk SET is_full = false")
        .await
        .unwrap();
    rig.wait_stored(60, "everything stored once space is back", 1000)
        .await;
    rig.assert_exactly_once(1000).await;
    eventually(10, "ready again", || async {
        (rig.ready().await == Some(200)).then_some(())
    })
    .await;
    rig.svc.stop().await;
}
