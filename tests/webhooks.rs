//! Webhook delivery against a real PostgreSQL database and a real HTTP receiver that checks
//! every signature with the shared secret. Time is simulated with an [`OffsetClock`], so hours
//! of receiver downtime take a second.

#[path = "webhooks/support.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hyfleet::domain::AlertEventType as T;
use hyfleet::notify::{self, Format, OffsetClock, Worker};
use support::{Receiver, Respond, TestDb, event, hook, notify_config};

async fn enqueue(db: &TestDb, events: &[hyfleet::domain::AlertEvent]) {
    let mut conn = db.pool.get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    notify::enqueue(&tx, events).await.unwrap();
    tx.commit().await.unwrap();
}

async fn states(db: &TestDb, webhook_id: i64) -> HashMap<String, usize> {
    let conn = db.pool.get().await.unwrap();
    let mut m = HashMap::new();
    for d in notify::deliveries(&conn, webhook_id, 10_000, None)
        .await
        .unwrap()
    {
        *m.entry(d.state).or_default() += 1;
    }
    m
}

async fn setup(
    hooks: Vec<hyfleet::notify::WebhookConfig>,
    cfg: &notify::NotifyConfig,
) -> (TestDb, Vec<i64>) {
    let db = TestDb::new().await;
    let mut conn = db.pool.get().await.unwrap();
    notify::sync_config_webhooks(&mut conn, &hooks, cfg)
        .await
        .unwrap();
    let ids = notify::list_webhooks(&conn)
        .await
        .unwrap()
        .iter()
        .map(|w| w.id)
        .collect();
    (db, ids)
}

#[tokio::test]
async fn generic_delivery_is_signed_and_rollback_sends_nothing() {
    let rx = Receiver::start().await;
    let cfg = notify_config();
    let (db, ids) = setup(
        vec![hook("main", &rx.url("/generic"), Format::Generic)],
        &cfg,
    )
    .await;
    let clock = Arc::new(OffsetClock::new());
    let worker = Worker::new(db.pool.clone(), cfg, clock).unwrap();

    // A change that rolls back must not be announced.
    {
        let mut conn = db.pool.get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        notify::enqueue(&tx, &[event(99, T::Opened)]).await.unwrap();
        tx.rollback().await.unwrap();
    }
    let ev = event(1, T::Opened);
    enqueue(&db, std::slice::from_ref(&ev)).await;
    assert_eq!(worker.run_once().await.unwrap(), 1);

    let got = rx.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(rx.bad_signatures(), 0);
    assert_eq!(got[0].id, ev.id.to_string());
    assert_eq!(got[0].body["id"], ev.id.to_string());
    assert_eq!(got[0].body["type"], "hyfleet.alert.opened");
    assert_eq!(got[0].body["specversion"], "1.0");
    assert_eq!(got[0].body["subject"], ev.alert.vehicle_id);
    assert_eq!(got[0].body["data"]["id"], 1);

    let conn = db.pool.get().await.unwrap();
    let d = notify::deliveries(&conn, ids[0], 10, None).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].state.as_str(), d[0].attempts), ("delivered", 1));
    let a = notify::attempts(&conn, ids[0], 10, None).await.unwrap();
    assert_eq!(a.len(), 1);
    assert!(a[0].ok);
    assert_eq!(a[0].status_code, Some(200));
    assert_eq!(a[0].event_ids, vec![ev.id]);
    assert_eq!(worker.run_once().await.unwrap(), 0, "nothing left to send");
}

#[tokio::test]
async fn receiver_down_for_hours_then_up_gets_everything_once_in_order() {
    let rx = Receiver::start().await;
    let cfg = notify_config();
    let (db, ids) = setup(
        vec![hook("main", &rx.url("/generic"), Format::Generic)],
        &cfg,
    )
    .await;
    let clock = Arc::new(OffsetClock::new());
    let worker = Worker::new(db.pool.clone(), cfg, clock.clone()).unwrap();
    rx.respond(Respond::Status(503));

    let alerts = 1..=5i64;
    for t in [T::Opened, T::Acknowledged, T::Resolved] {
        let batch: Vec<_> = alerts.clone().map(|a| event(a, t)).collect();
        enqueue(&db, &batch).await;
    }
    // Four simulated hours of a receiver answering 503.
    for _ in 0..24 {
        worker.run_once().await.unwrap();
        clock.advance(chrono::Duration::minutes(10));
    }
    let tried = rx.requests();
    assert!(tried >= 24, "the worker kept trying: {tried}");
    assert!(rx.received().is_empty());
    assert_eq!(states(&db, ids[0]).await.get("pending"), Some(&15));

    rx.respond(Respond::Ok);
    for _ in 0..36 {
        worker.run_once().await.unwrap();
        if states(&db, ids[0]).await.get("delivered") == Some(&15) {
            break;
        }
        clock.advance(chrono::Duration::minutes(5));
    }
    assert_eq!(states(&db, ids[0]).await.get("delivered"), Some(&15));
    let got = rx.received();
    assert_eq!(got.len(), 15, "each event exactly once");
    assert_eq!(rx.bad_signatures(), 0);
    let mut per_alert: HashMap<i64, Vec<String>> = HashMap::new();
    for g in &got {
        per_alert
            .entry(g.body["data"]["id"].as_i64().unwrap())
            .or_default()
            .push(g.body["type"].as_str().unwrap().to_owned());
    }
    for a in alerts {
        assert_eq!(
            per_alert[&a],
            [
                "hyfleet.alert.opened",
                "hyfleet.alert.acknowledged",
                "hyfleet.alert.resolved"
            ],
            "alert {a}"
        );
    }
    let conn = db.pool.get().await.unwrap();
    let attempts = notify::attempts(&conn, ids[0], 10_000, None).await.unwrap();
    assert_eq!(attempts.len(), rx.requests(), "every request recorded");
    assert!(attempts.iter().any(|a| a.status_code == Some(503)));
}

#[tokio::test]
async fn a_delivery_is_given_up_after_max_retry_hours() {
    let rx = Receiver::start().await;
    let mut cfg = notify_config();
    cfg.max_retry_hours = 2;
    let (db, ids) = setup(
        vec![hook("main", &rx.url("/generic"), Format::Generic)],
        &cfg,
    )
    .await;
    let clock = Arc::new(OffsetClock::new());
    let worker = Worker::new(db.pool.clone(), cfg, clock.clone()).unwrap();
    rx.respond(Respond::Status(500));
    enqueue(&db, &[event(1, T::Opened)]).await;
    for _ in 0..30 {
        worker.run_once().await.unwrap();
        clock.advance(chrono::Duration::minutes(10));
    }
    assert_eq!(states(&db, ids[0]).await.get("failed"), Some(&1));
    let before = rx.requests();
    clock.advance(chrono::Duration::hours(5));
    worker.run_once().await.unwrap();
    assert_eq!(rx.requests(), before, "no attempt after giving up");
}

#[tokio::test]
async fn gone_disables_the_webhook() {
    let rx = Receiver::start().await;
    let cfg = notify_config();
    let (db, ids) = setup(
        vec![hook("main", &rx.url("/generic"), Format::Generic)],
        &cfg,
    )
    .await;
    let clock = Arc::new(OffsetClock::new());
    let worker = Worker::new(db.pool.clone(), cfg, clock.clone()).unwrap();
    rx.respond(Respond::Status(410));
    enqueue(&db, &[event(1, T::Opened), event(2, T::Opened)]).await;
    worker.run_once().await.unwrap();
    assert_eq!(rx.requests(), 1);
    assert_eq!(states(&db, ids[0]).await.get("cancelled"), Some(&2));
    let conn = db.pool.get().await.unwrap();
    let w = notify::get_webhook(&conn, ids[0]).await.unwrap().unwrap();
    assert!(!w.enabled);
    assert!(w.disabled_reason.unwrap().contains("410"));

    enqueue(&db, &[event(3, T::Opened)]).await;
    clock.advance(chrono::Duration::hours(1));
    worker.run_once().await.unwrap();
    assert_eq!(rx.requests(), 1, "a disabled webhook gets nothing");
    assert_eq!(states(&db, ids[0]).await.values().sum::<usize>(), 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let rx = Receiver::start().await;
    let cfg = notify_config();
    let (db, ids) = setup(
        vec![hook("main", &rx.url("/generic"), Format::Generic)],
        &cfg,
    )
    .await;
    let clock = Arc::new(OffsetClock::new());
    let worker = Worker::new(db.pool.clone(), cfg, clock.clone()).unwrap();
    rx.respond(Respond::RetryAfter(429, "120".into()));
    enqueue(&db, &[event(1, T::Opened), event(2, T::Opened)]).await;
    worker.run_once().await.unwrap();
    assert_eq!(
        rx.requests(),
        1,
        "the whole endpoint waits, not just one delivery"
    );
    rx.respond(Respond::Ok);
    clock.advance(chrono::Duration::seconds(100));
    worker.run_once().await.unwrap();
    assert_eq!(rx.requests(), 1, "asked to wait 120 s");
    clock.advance(chrono::Duration::seconds(25));
    worker.run_once().await.unwrap();
    assert_eq!(rx.received().len(), 2);
    assert_eq!(states(&db, ids[0]).await.get("delivered"), Some(&2));
}

#[tokio::test]
async fn restarted_workers_deliver_every_event_exactly_once() {
    let rx = Receiver::start().await;
    rx.respond(Respond::Delay(Duration::from_millis(15)));
    let mut cfg = notify_config();
    cfg.poll_interval_ms = 20;
    cfg.concurrency = 1;
    let (db, _) = setup(
        vec![hook("main", &rx.url("/generic"), Format::Generic)],
        &cfg,
    )
    .await;
    let clock: Arc<dyn notify::Clock> = Arc::new(notify::SystemClock);

    let events: Vec<_> = (1..=40).map(|a| event(a, T::Opened)).collect();
    let (stop, stopped) = hyfleet::shutdown::channel();
    let first = notify::spawn_worker(db.pool.clone(), cfg.clone(), clock.clone(), stopped).unwrap();
    for chunk in events.chunks(10) {
        enqueue(&db, chunk).await;
    }
    support::wait_until(|| rx.received().len() >= 10).await;
    stop.fire();
    first.await.unwrap();
    let at_stop = rx.received().len();
    assert!(at_stop < 40, "stopped midway ({at_stop})");

    // Two instances on one database: they share the work, never a message.
    let (stop, stopped) = hyfleet::shutdown::channel();
    let spawn = |s: hyfleet::shutdown::Shutdown| {
        notify::spawn_worker(db.pool.clone(), cfg.clone(), clock.clone(), s).unwrap()
    };
    let (a, b) = (spawn(stopped.clone()), spawn(stopped));
    support::wait_until(|| rx.received().len() >= 40).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.fire();
    a.await.unwrap();
    b.await.unwrap();

    let got = rx.received();
    let ids: Vec<&str> = got.iter().map(|g| g.id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 40, "no duplicates");
    let want: HashSet<String> = events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(unique, want.iter().map(String::as_str).collect());
}

#[tokio::test]
async fn a_crash_mid_request_resends_under_the_same_id() {
    let rx = Receiver::start().await;
    rx.respond(Respond::Delay(Duration::from_millis(800)));
    let cfg = notify_config();
    let (db, ids) = setup(
        vec![hook("main", &rx.url("/generic"), Format::Generic)],
        &cfg,
    )
    .await;
    let clock = Arc::new(OffsetClock::new());
    let ev = event(1, T::Opened);
    enqueue(&db, std::slice::from_ref(&ev)).await;

    let crashed = Worker::new(db.pool.clone(), cfg.clone(), clock.clone()).unwrap();
    // The request reaches the receiver, then the worker dies before recording it.
    let r = tokio::time::timeout(Duration::from_millis(300), crashed.step()).await;
    assert!(r.is_err(), "the step was cut short");
    drop(crashed);
    support::wait_until(|| rx.requests() >= 1).await;

    rx.respond(Respond::Ok);
    let restarted = Worker::new(db.pool.clone(), cfg, clock).unwrap();
    assert_eq!(restarted.run_once().await.unwrap(), 1);
    let got = rx.received();
    assert_eq!(got.len(), 2, "at least once: sent again after the crash");
    assert!(got.iter().all(|g| g.id == ev.id.to_string()));
    assert_eq!(rx.bad_signatures(), 0);
    assert_eq!(states(&db, ids[0]).await.get("delivered"), Some(&1));
}

#[tokio::test]
async fn a_burst_to_a_dingtalk_robot_becomes_digests_within_its_limit() {
    let rx = Receiver::start().await;
    let cfg = notify_config();
    let mut h = hook(
        "ding",
        &rx.url("/dingtalk?access_token=tok"),
        Format::DingTalk,
    );
    h.secret = Some(support::DING_SECRET.into());
    let (db, ids) = setup(vec![h], &cfg).await;
    let clock = Arc::new(OffsetClock::new());
    let worker = Worker::new(db.pool.clone(), cfg, clock.clone()).unwrap();

    let batch =
        |r: std::ops::RangeInclusive<i64>| r.map(|a| event(a, T::Opened)).collect::<Vec<_>>();
    // A first handful goes out one by one; then the burst of 100 fits in what is left of
    // the minute's budget of 20 messages.
    enqueue(&db, &batch(1..=5)).await;
    worker.run_once().await.unwrap();
    assert_eq!(rx.received().len(), 5);
    enqueue(&db, &batch(6..=105)).await;
    worker.run_once().await.unwrap();
    assert_eq!(states(&db, ids[0]).await.get("delivered"), Some(&105));
    let in_first_minute = rx.received().len();
    assert!(
        (6..=20).contains(&in_first_minute),
        "{in_first_minute} messages"
    );
    // A storm of 400 more cannot fit in one minute: it waits for the budget, loses nothing.
    enqueue(&db, &batch(106..=505)).await;
    for _ in 0..60 {
        worker.run_once().await.unwrap();
        if states(&db, ids[0]).await.get("delivered") == Some(&505) {
            break;
        }
        clock.advance(chrono::Duration::seconds(10));
    }
    assert_eq!(states(&db, ids[0]).await.get("delivered"), Some(&505));
    assert_eq!(rx.bad_signatures(), 0);
    let got = rx.received();
    assert!(got.len() > 20, "the storm needed a second minute");
    let mut stamps: Vec<i64> = got.iter().map(|g| g.timestamp).collect();
    stamps.sort_unstable();
    for w in stamps.windows(21) {
        assert!(w[20] - w[0] >= 60_000, "21 messages within a minute: {w:?}");
    }
    let mut named = HashSet::new();
    for g in &got {
        let text = g.body["markdown"]["text"].as_str().unwrap();
        for a in 1..=505i64 {
            if text.contains(&format!("#{a} XY-B{a:04}")) || text.contains(&format!("alerts/{a})"))
            {
                named.insert(a);
            }
        }
    }
    assert_eq!(named.len(), 505, "every alert named");
    assert!(got.iter().any(|g| {
        g.body["markdown"]["title"]
            .as_str()
            .unwrap()
            .contains("条告警更新") // "alert updates": chat messages speak zh-CN by default
    }));
}

#[tokio::test]
async fn feishu_and_wecom_messages_are_accepted_by_the_receiver() {
    let rx = Receiver::start().await;
    let cfg = notify_config();
    let mut feishu = hook("feishu", &rx.url("/feishu/hook/abc"), Format::Feishu);
    feishu.secret = Some(support::FEISHU_SECRET.into());
    let wecom = hook("wecom", &rx.url("/wecom?key=K"), Format::WeCom);
    let (db, _) = setup(vec![feishu, wecom], &cfg).await;
    let worker = Worker::new(db.pool.clone(), cfg, Arc::new(OffsetClock::new())).unwrap();
    enqueue(&db, &[event(1, T::Escalated)]).await;
    assert_eq!(worker.run_once().await.unwrap(), 2);
    assert_eq!(rx.bad_signatures(), 0);
    let got = rx.received();
    assert_eq!(got.len(), 2);
    let f = got.iter().find(|g| g.path.starts_with("/feishu")).unwrap();
    assert_eq!(f.body["msg_type"], "text");
    assert!(
        f.body["content"]["text"]
            .as_str()
            .unwrap()
            .contains("XY-B0001")
    );
    let w = got.iter().find(|g| g.path.starts_with("/wecom")).unwrap();
    assert!(
        w.body["markdown"]["content"]
            .as_str()
            .unwrap()
            .contains("告警升级") // "alert escalated", in the default zh-CN
    );
}

#[tokio::test]
async fn private_urls_are_refused_unless_allowed_and_secrets_stay_hidden() {
    let mut strict = notify_config();
    strict.allow_private_networks = false;
    let db = TestDb::new().await;
    let mut conn = db.pool.get().await.unwrap();
    let loopback = hook("lo", "http://127.0.0.1:9/hook", Format::Generic);
    let err = notify::sync_config_webhooks(&mut conn, std::slice::from_ref(&loopback), &strict)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("private"), "{err}");
    let meta = hook("meta", "http://169.254.169.254/latest", Format::Generic);
    assert!(notify::create_webhook(&conn, &meta, &strict).await.is_err());
    assert!(notify::list_webhooks(&conn).await.unwrap().is_empty());

    // Allowed: a robot whose receiver is not listening. Its token and secret must show up
    // nowhere an operator can read.
    let cfg = notify_config();
    let mut ding = hook(
        "ding",
        "http://127.0.0.1:9/robot/send?access_token=TOKEN123",
        Format::DingTalk,
    );
    ding.secret = Some("SECsecret456-0123456789".into());
    notify::sync_config_webhooks(&mut conn, &[ding], &cfg)
        .await
        .unwrap();
    let listed = serde_json::to_string(&notify::list_webhooks(&conn).await.unwrap()).unwrap();
    assert!(listed.contains("access_token=***"), "{listed}");
    enqueue(&db, &[event(1, T::Opened)]).await;
    let worker = Worker::new(db.pool.clone(), cfg.clone(), Arc::new(OffsetClock::new())).unwrap();
    worker.run_once().await.unwrap();
    let id = notify::list_webhooks(&conn).await.unwrap()[0].id;
    let attempts = notify::attempts(&conn, id, 10, None).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].error.is_some() && !attempts[0].ok);
    let deliveries = notify::deliveries(&conn, id, 10, None).await.unwrap();
    for text in [
        listed,
        serde_json::to_string(&attempts).unwrap(),
        serde_json::to_string(&deliveries).unwrap(),
    ] {
        assert!(
            !text.contains("TOKEN123") && !text.contains("secret456"),
            "{text}"
        );
    }
    // Creating through the API with the same name as a configured webhook is a conflict.
    let dup = hook("ding", "http://127.0.0.1:9/x", Format::WeCom);
    assert!(matches!(
        notify::create_webhook(&conn, &dup, &cfg).await,
        Err(notify::WebhookError::Conflict(_))
    ));
}

/// Runs the delivery loops as the service does, until the returned trigger fires.
fn spawn_loops(
    db: &TestDb,
    cfg: &notify::NotifyConfig,
) -> (hyfleet::shutdown::Trigger, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = hyfleet::shutdown::channel();
    let handle = notify::spawn_worker(
        db.pool.clone(),
        cfg.clone(),
        Arc::new(notify::SystemClock),
        stopped,
    )
    .unwrap();
    (stop, handle)
}

async fn count_state(db: &TestDb, webhook_id: i64, state: &str) -> usize {
    states(db, webhook_id)
        .await
        .get(state)
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_huge_retry_after_stops_no_webhook() {
    // 10^16 seconds is past what chrono's Duration holds: it once killed every delivery loop.
    let huge = "10000000000000000";
    let hostile = Receiver::start().await;
    hostile.respond(Respond::RetryAfter(200, huge.into()));
    let other = Receiver::start().await;
    let mut cfg = notify_config();
    cfg.poll_interval_ms = 20;
    let (db, ids) = setup(
        vec![
            hook("hostile", &hostile.url("/generic"), Format::Generic),
            hook("other", &other.url("/generic"), Format::Generic),
        ],
        &cfg,
    )
    .await;
    let (stop, loops) = spawn_loops(&db, &cfg);
    let batch: Vec<_> = (1..=3).map(|a| event(a, T::Opened)).collect();
    enqueue(&db, &batch).await;
    support::wait_until(|| other.received().len() == 3).await;
    // A 200 is a delivery, whatever else the answer says.
    support::eventually("the hostile receiver's deliveries settle", || async {
        count_state(&db, ids[0], "delivered").await == 3
    })
    .await;

    // With a 503 the wait is honoured, clamped to a day.
    hostile.respond(Respond::RetryAfter(503, huge.into()));
    enqueue(&db, &[event(4, T::Opened)]).await;
    support::wait_until(|| other.received().len() == 4).await;
    let conn = db.pool.get().await.unwrap();
    support::eventually("the 503 is recorded", || async {
        notify::attempts(&conn, ids[0], 10, None)
            .await
            .unwrap()
            .len()
            == 4
    })
    .await;
    let w = notify::get_webhook(&conn, ids[0]).await.unwrap().unwrap();
    let paused = w.paused_until.expect("the endpoint waits");
    let now = chrono::Utc::now();
    assert!(
        paused > now + chrono::Duration::hours(23) && paused <= now + chrono::Duration::hours(24),
        "{paused}"
    );
    let d = notify::deliveries(&conn, ids[0], 1, None).await.unwrap();
    assert_eq!(d[0].state, "pending");
    assert!(d[0].next_attempt_at.unwrap() <= now + chrono::Duration::hours(24));
    // The receiver has the fourth; its delivery is recorded once the attempt commits.
    support::eventually(
        "the other receiver's deliveries are all recorded",
        || async { count_state(&db, ids[1], "delivered").await == 4 },
    )
    .await;
    stop.fire();
    loops.await.unwrap();
}

#[tokio::test]
async fn a_huge_answer_is_read_only_in_part() {
    let rx = support::RawReceiver::start(support::Raw::Huge(128 << 20)).await;
    let cfg = notify_config();
    let h = hook(
        "ding",
        &rx.url("/robot/send?access_token=t"),
        Format::DingTalk,
    );
    let (db, ids) = setup(vec![h], &cfg).await;
    let worker = Worker::new(db.pool.clone(), cfg, Arc::new(OffsetClock::new())).unwrap();
    enqueue(&db, &[event(1, T::Opened)]).await;
    assert!(worker.step().await.unwrap());
    support::wait_until(|| rx.open() == 0).await;
    // What the kernel buffers between the two sockets is sent too; the cap is far below.
    assert!(rx.sent() < 32 << 20, "{} bytes taken", rx.sent());
    assert_eq!(count_state(&db, ids[0], "delivered").await, 1);
}

#[tokio::test]
async fn a_trickling_answer_holds_a_delivery_no_longer_than_the_timeout() {
    let rx = support::RawReceiver::start(support::Raw::Trickle).await;
    let mut cfg = notify_config();
    cfg.http_timeout_secs = 2;
    let h = hook(
        "ding",
        &rx.url("/robot/send?access_token=t"),
        Format::DingTalk,
    );
    let (db, ids) = setup(vec![h], &cfg).await;
    let worker = Worker::new(db.pool.clone(), cfg, Arc::new(OffsetClock::new())).unwrap();
    enqueue(&db, &[event(1, T::Opened)]).await;
    let started = std::time::Instant::now();
    assert!(worker.step().await.unwrap());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "{took:?}");
    let conn = db.pool.get().await.unwrap();
    let a = notify::attempts(&conn, ids[0], 10, None).await.unwrap();
    // The robot's verdict is in the body that never came: not known to be delivered.
    assert!(!a[0].ok, "{:?}", a[0]);
    assert!(a[0].error.as_deref().unwrap().contains("2 s"), "{:?}", a[0]);
    assert_eq!(count_state(&db, ids[0], "pending").await, 1);
    support::wait_until(|| rx.open() == 0).await;
}

#[tokio::test]
async fn proxies_from_the_environment_are_not_used() {
    let proxy = support::RawReceiver::start(support::Raw::Ok).await;
    // Registered while allowed, sent while not: what a name that resolves to a private
    // address once the webhook exists (DNS rebinding) looks like to the worker.
    let (db, ids) = setup(
        vec![hook(
            "internal",
            "http://localhost:9/admin",
            Format::Generic,
        )],
        &notify_config(),
    )
    .await;
    enqueue(&db, &[event(1, T::Opened)]).await;
    let mut strict = notify_config();
    strict.allow_private_networks = false;
    let vars = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];
    // SAFETY: the test runner gives each test a process of its own, and this one's other
    // tasks run on this thread and read no environment.
    unsafe {
        for k in vars {
            std::env::set_var(k, proxy.url(""));
        }
        std::env::remove_var("no_proxy");
        std::env::remove_var("NO_PROXY");
    }
    let worker = Worker::new(db.pool.clone(), strict, Arc::new(OffsetClock::new()));
    unsafe {
        for k in vars {
            std::env::remove_var(k);
        }
    }
    worker.unwrap().step().await.unwrap();
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
    let conn = db.pool.get().await.unwrap();
    let a = notify::attempts(&conn, ids[0], 10, None).await.unwrap();
    assert!(
        !a[0].ok && a[0].error.as_deref().unwrap().contains("private"),
        "{:?}",
        a[0]
    );
}

#[tokio::test]
async fn each_delivery_retries_on_its_own_jittered_schedule() {
    let rx = Receiver::start().await;
    rx.respond(Respond::Status(500));
    let mut cfg = notify_config();
    cfg.retry_initial_secs = 60;
    let (db, ids) = setup(
        vec![hook("main", &rx.url("/generic"), Format::Generic)],
        &cfg,
    )
    .await;
    let clock = Arc::new(OffsetClock::new());
    let worker = Worker::new(db.pool.clone(), cfg, clock.clone()).unwrap();
    let events: Vec<_> = (1..=10).map(|a| event(a, T::Opened)).collect();
    enqueue(&db, &events).await;
    let t0 = notify::Clock::now(&*clock);
    worker.run_once().await.unwrap();
    // One failure holds back no other delivery, and pauses no endpoint.
    assert_eq!(rx.requests(), 10);
    let conn = db.pool.get().await.unwrap();
    let w = notify::get_webhook(&conn, ids[0]).await.unwrap().unwrap();
    assert_eq!(w.paused_until, None);
    let planned: HashMap<uuid::Uuid, chrono::DateTime<chrono::Utc>> =
        notify::deliveries(&conn, ids[0], 100, None)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.event_id, d.next_attempt_at.unwrap()))
            .collect();
    let mut times: Vec<_> = planned.values().copied().collect();
    times.sort_unstable();
    times.dedup();
    assert_eq!(
        times.len(),
        10,
        "each delivery draws its own delay: {times:?}"
    );
    assert!(times[0] >= t0 && times[9] <= t0 + chrono::Duration::seconds(62));
    assert!(
        times[9] - times[0] > chrono::Duration::seconds(10),
        "spread over the first interval: {times:?}"
    );

    // What runs is that schedule: each second attempt at its own planned time.
    for _ in 0..70 {
        clock.advance(chrono::Duration::seconds(1));
        worker.run_once().await.unwrap();
    }
    let mut at: HashMap<uuid::Uuid, Vec<chrono::DateTime<chrono::Utc>>> = HashMap::new();
    for a in notify::attempts(&conn, ids[0], 1000, None).await.unwrap() {
        at.entry(a.event_ids[0]).or_default().push(a.at);
    }
    for (event, plan) in &planned {
        let mut tries = at[event].clone();
        tries.sort_unstable();
        assert!(tries.len() >= 2, "{event}: {tries:?}");
        let late = tries[1] - *plan;
        assert!(
            late >= chrono::Duration::zero() && late < chrono::Duration::seconds(3),
            "{event}: planned {plan}, tried {}",
            tries[1]
        );
    }
}

#[tokio::test]
async fn hanging_receivers_do_not_delay_a_healthy_one() {
    let hang = [Receiver::start().await, Receiver::start().await];
    for h in &hang {
        h.respond(Respond::Delay(Duration::from_secs(120)));
    }
    let healthy = Receiver::start().await;
    let mut cfg = notify_config();
    cfg.http_timeout_secs = 5;
    cfg.retry_initial_secs = 1;
    cfg.poll_interval_ms = 20;
    cfg.concurrency = 2;
    let (db, _) = setup(
        vec![
            hook("hang0", &hang[0].url("/generic"), Format::Generic),
            hook("hang1", &hang[1].url("/generic"), Format::Generic),
            hook("healthy", &healthy.url("/generic"), Format::Generic),
        ],
        &cfg,
    )
    .await;
    let (stop, loops) = spawn_loops(&db, &cfg);
    // The first round shows which receivers hang.
    enqueue(&db, &[event(1, T::Opened)]).await;
    support::wait_until(|| healthy.received().len() == 1).await;
    // Now a worker is again waiting on a hanging receiver.
    support::wait_until(|| hang[0].requests() + hang[1].requests() >= 3).await;
    let sent = std::time::Instant::now();
    enqueue(&db, &[event(2, T::Opened), event(3, T::Opened)]).await;
    support::wait_until(|| healthy.received().len() == 3).await;
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(2500), "{took:?}");
    stop.fire();
    loops.await.unwrap();
}

#[tokio::test]
async fn short_secrets_are_refused() {
    let db = TestDb::new().await;
    let mut conn = db.pool.get().await.unwrap();
    let cfg = notify_config();
    let b64 = |s: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    for (format, secret) in [
        (
            Format::Generic,
            format!("whsec_{}", b64(b"fifteen bytes!!")),
        ),
        (Format::Generic, "short-secret".to_owned()),
        (Format::DingTalk, "SEC0123456".to_owned()),
        (Format::Feishu, "abc".to_owned()),
    ] {
        let mut h = hook("s", "http://127.0.0.1:9/hook", format);
        h.secret = Some(secret.clone());
        let err = notify::create_webhook(&conn, &h, &cfg).await.unwrap_err();
        assert!(
            matches!(&err, notify::WebhookError::Invalid { field, message }
                if field == "secret" && message.contains("16 bytes")),
            "{secret}: {err}"
        );
        let err = notify::sync_config_webhooks(&mut conn, std::slice::from_ref(&h), &cfg)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
    }
    assert!(notify::list_webhooks(&conn).await.unwrap().is_empty());
    let mut h = hook("s", "http://127.0.0.1:9/hook", Format::Generic);
    h.secret = Some(format!("whsec_{}", b64(b"sixteen bytes!!!")));
    notify::create_webhook(&conn, &h, &cfg).await.unwrap();
}

/// A clock that panics on its next reading once armed: a fault inside hyfleet in the middle
/// of a delivery, after the request went out.
#[derive(Default)]
struct FaultyClock {
    armed: std::sync::atomic::AtomicBool,
}

impl notify::Clock for FaultyClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("clock fault injected by the test");
        }
        chrono::Utc::now()
    }
}

#[tokio::test]
async fn a_panic_in_a_delivery_fails_that_delivery_and_the_loop_goes_on() {
    let rx = Receiver::start().await;
    rx.respond(Respond::Delay(Duration::from_millis(500)));
    let mut cfg = notify_config();
    // One loop: if it died, nothing else would deliver.
    cfg.concurrency = 1;
    cfg.poll_interval_ms = 20;
    let (db, ids) = setup(
        vec![hook("main", &rx.url("/generic"), Format::Generic)],
        &cfg,
    )
    .await;
    let clock = Arc::new(FaultyClock::default());
    let (stop, stopped) = hyfleet::shutdown::channel();
    let loops = notify::spawn_worker(db.pool.clone(), cfg, clock.clone(), stopped).unwrap();
    let panics = notify::delivery_panics();
    enqueue(&db, &[event(1, T::Opened)]).await;
    support::wait_until(|| rx.requests() == 1).await;
    clock.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    support::eventually("the delivery is given up", || async {
        count_state(&db, ids[0], "failed").await == 1
    })
    .await;
    assert!(notify::delivery_panics() > panics);
    let conn = db.pool.get().await.unwrap();
    let d = notify::deliveries(&conn, ids[0], 10, None).await.unwrap();
    let why = d[0].last_error.as_deref().unwrap();
    assert!(
        why.contains("panic") && why.contains("clock fault"),
        "{why}"
    );
    let a = notify::attempts(&conn, ids[0], 10, None).await.unwrap();
    assert_eq!(a.len(), 1);
    assert!(!a[0].ok && a[0].error.as_deref() == Some(why), "{a:?}");

    rx.respond(Respond::Ok);
    enqueue(&db, &[event(2, T::Opened)]).await;
    support::wait_until(|| rx.received().len() == 2).await;
    support::eventually("the next delivery goes through", || async {
        count_state(&db, ids[0], "delivered").await == 1
    })
    .await;
    stop.fire();
    loops.await.unwrap();
}
