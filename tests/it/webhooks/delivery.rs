//! The outbox's promise: every event committed is delivered, signed, once per webhook and in
//! order per alert, through receiver outages, retries and restarts; nothing rolled back is.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hyfleet::domain::AlertEventType as T;
use hyfleet::notify;

use super::{Rig, StillClock, event, notify_config};
use crate::support::receiver::Respond;
use crate::support::until;

#[tokio::test]
async fn generic_delivery_is_signed_and_rollback_sends_nothing() {
    let (rig, rx) = Rig::generic(notify_config()).await;

    // A change that rolls back must not be announced.
    {
        let mut conn = rig.pool.get().await.unwrap();
        let tx = conn.transaction().await.unwrap();
        notify::outbox::enqueue(&tx, &[event(99, T::Opened)])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    let ev = event(1, T::Opened);
    rig.enqueue(std::slice::from_ref(&ev)).await;
    assert_eq!(rig.worker.run_once().await.unwrap(), 1);

    let got = rx.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(rx.bad_signatures(), 0);
    assert_eq!(got[0].id, ev.id.to_string());
    assert_eq!(got[0].body["id"], ev.id.to_string());
    assert_eq!(got[0].body["type"], "hyfleet.alert.opened");
    assert_eq!(got[0].body["specversion"], "1.0");
    assert_eq!(got[0].body["subject"], ev.alert.vehicle_id);
    assert_eq!(got[0].body["data"]["id"], 1);

    let conn = rig.pool.get().await.unwrap();
    let d = notify::deliveries(&conn, rig.ids[0], 10, None)
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].state.as_str(), d[0].attempts), ("delivered", 1));
    let a = notify::attempts(&conn, rig.ids[0], 10, None).await.unwrap();
    assert_eq!(a.len(), 1);
    assert!(a[0].ok);
    assert_eq!(a[0].status_code, Some(200));
    assert_eq!(a[0].event_ids, vec![ev.id]);
    assert_eq!(
        rig.worker.run_once().await.unwrap(),
        0,
        "nothing left to send"
    );
}

#[tokio::test]
async fn receiver_down_for_hours_then_up_gets_everything_once_in_order() {
    let (rig, rx) = Rig::generic(notify_config()).await;
    rx.respond(Respond::Status(503));

    let alerts = 1..=5i64;
    for t in [T::Opened, T::Acknowledged, T::Resolved] {
        let batch: Vec<_> = alerts.clone().map(|a| event(a, t)).collect();
        rig.enqueue(&batch).await;
    }
    // Four simulated hours of a receiver answering 503.
    for _ in 0..24 {
        rig.worker.run_once().await.unwrap();
        rig.clock.advance(chrono::Duration::minutes(10));
    }
    let tried = rx.requests();
    assert!(tried >= 24, "the worker kept trying: {tried}");
    assert!(rx.received().is_empty());
    assert_eq!(rig.states(rig.ids[0]).await.get("pending"), Some(&15));

    rx.respond(Respond::Ok);
    for _ in 0..36 {
        rig.worker.run_once().await.unwrap();
        if rig.count(rig.ids[0], "delivered").await == 15 {
            break;
        }
        rig.clock.advance(chrono::Duration::minutes(5));
    }
    assert_eq!(rig.states(rig.ids[0]).await.get("delivered"), Some(&15));
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
    let conn = rig.pool.get().await.unwrap();
    let attempts = notify::attempts(&conn, rig.ids[0], 10_000, None)
        .await
        .unwrap();
    assert_eq!(attempts.len(), rx.requests(), "every request recorded");
    assert!(attempts.iter().any(|a| a.status_code == Some(503)));
}

#[tokio::test]
async fn a_delivery_is_given_up_after_max_retry_hours() {
    let mut cfg = notify_config();
    cfg.max_retry_hours = 2;
    let (rig, rx) = Rig::generic(cfg).await;
    rx.respond(Respond::Status(500));
    rig.enqueue(&[event(1, T::Opened)]).await;
    for _ in 0..30 {
        rig.worker.run_once().await.unwrap();
        rig.clock.advance(chrono::Duration::minutes(10));
    }
    assert_eq!(rig.states(rig.ids[0]).await.get("failed"), Some(&1));
    let before = rx.requests();
    rig.clock.advance(chrono::Duration::hours(5));
    rig.worker.run_once().await.unwrap();
    assert_eq!(rx.requests(), before, "no attempt after giving up");
}

#[tokio::test]
async fn gone_disables_the_webhook() {
    let (rig, rx) = Rig::generic(notify_config()).await;
    rx.respond(Respond::Status(410));
    rig.enqueue(&[event(1, T::Opened), event(2, T::Opened)])
        .await;
    rig.worker.run_once().await.unwrap();
    assert_eq!(rx.requests(), 1);
    assert_eq!(rig.states(rig.ids[0]).await.get("cancelled"), Some(&2));
    let conn = rig.pool.get().await.unwrap();
    let w = notify::get_webhook(&conn, rig.ids[0])
        .await
        .unwrap()
        .unwrap();
    assert!(!w.enabled);
    assert!(w.disabled_reason.unwrap().contains("410"));

    rig.enqueue(&[event(3, T::Opened)]).await;
    rig.clock.advance(chrono::Duration::hours(1));
    rig.worker.run_once().await.unwrap();
    assert_eq!(rx.requests(), 1, "a disabled webhook gets nothing");
    assert_eq!(rig.states(rig.ids[0]).await.values().sum::<usize>(), 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (rig, rx) = Rig::generic(notify_config()).await;
    rx.respond(Respond::RetryAfter(429, "120".into()));
    rig.enqueue(&[event(1, T::Opened), event(2, T::Opened)])
        .await;
    rig.worker.run_once().await.unwrap();
    assert_eq!(
        rx.requests(),
        1,
        "the whole endpoint waits, not just one delivery"
    );
    rx.respond(Respond::Ok);
    rig.clock.advance(chrono::Duration::seconds(100));
    rig.worker.run_once().await.unwrap();
    assert_eq!(rx.requests(), 1, "asked to wait 120 s");
    rig.clock.advance(chrono::Duration::seconds(25));
    rig.worker.run_once().await.unwrap();
    assert_eq!(rx.received().len(), 2);
    assert_eq!(rig.states(rig.ids[0]).await.get("delivered"), Some(&2));
}

#[tokio::test]
async fn restarted_workers_deliver_every_event_exactly_once() {
    let mut cfg = notify_config();
    cfg.poll_interval_ms = 20;
    cfg.concurrency = 1;
    let (rig, rx) = Rig::generic(cfg).await;
    rx.respond(Respond::Delay(Duration::from_millis(15)));
    let clock: Arc<dyn notify::Clock> = Arc::new(notify::SystemClock);

    let events: Vec<_> = (1..=40).map(|a| event(a, T::Opened)).collect();
    let first = rig.spawn_loops(clock.clone());
    for chunk in events.chunks(10) {
        rig.enqueue(chunk).await;
    }
    until("10 delivered", || rx.received().len() >= 10).await;
    first.stop().await;
    let at_stop = rx.received().len();
    assert!(at_stop < 40, "stopped midway ({at_stop})");

    // Two instances on one database: they share the work, never a message.
    let (stop, shutdown) = hyfleet::shutdown::channel();
    let spawn = || {
        notify::spawn_worker(
            rig.pool.clone(),
            rig.cfg.clone(),
            clock.clone(),
            shutdown.clone(),
        )
        .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    until("40 delivered", || rx.received().len() >= 40).await;
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
    let (rig, rx) = Rig::generic(notify_config()).await;
    rx.respond(Respond::Delay(Duration::from_millis(800)));
    let ev = event(1, T::Opened);
    rig.enqueue(std::slice::from_ref(&ev)).await;

    // The request reaches the receiver, then the worker dies before recording it.
    let crashed = &rig.worker;
    let r = tokio::time::timeout(Duration::from_millis(300), crashed.step()).await;
    assert!(r.is_err(), "the step was cut short");
    until("the request arrived", || rx.requests() >= 1).await;

    rx.respond(Respond::Ok);
    let restarted = rig.worker(rig.clock.clone());
    assert_eq!(restarted.run_once().await.unwrap(), 1);
    let got = rx.received();
    assert_eq!(got.len(), 2, "at least once: sent again after the crash");
    assert!(got.iter().all(|g| g.id == ev.id.to_string()));
    assert_eq!(rx.bad_signatures(), 0);
    assert_eq!(rig.states(rig.ids[0]).await.get("delivered"), Some(&1));
}

#[tokio::test]
async fn each_delivery_retries_on_its_own_jittered_schedule() {
    let mut cfg = notify_config();
    cfg.retry_initial_secs = 60;
    let (rig, rx) = Rig::generic(cfg).await;
    let clock = Arc::new(StillClock::new());
    let worker = rig.worker(clock.clone());
    rx.respond(Respond::Status(500));
    let events: Vec<_> = (1..=10).map(|a| event(a, T::Opened)).collect();
    rig.enqueue(&events).await;
    let t0 = notify::Clock::now(&*clock);
    worker.run_once().await.unwrap();
    // One failure holds back no other delivery, and pauses no endpoint.
    assert_eq!(rx.requests(), 10);
    let conn = rig.pool.get().await.unwrap();
    let w = notify::get_webhook(&conn, rig.ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.paused_until, None);
    let planned: HashMap<uuid::Uuid, chrono::DateTime<chrono::Utc>> =
        notify::deliveries(&conn, rig.ids[0], 100, None)
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
    assert!(times[0] >= t0 && times[9] < t0 + chrono::Duration::seconds(60));
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
    for a in notify::attempts(&conn, rig.ids[0], 1000, None)
        .await
        .unwrap()
    {
        at.entry(a.event_ids[0]).or_default().push(a.at);
    }
    for (event, plan) in &planned {
        let mut tries = at[event].clone();
        tries.sort_unstable();
        assert!(tries.len() >= 2, "{event}: {tries:?}");
        let late = tries[1] - *plan;
        assert!(
            late >= chrono::Duration::zero() && late < chrono::Duration::seconds(1),
            "{event}: planned {plan}, tried {}",
            tries[1]
        );
    }
}
