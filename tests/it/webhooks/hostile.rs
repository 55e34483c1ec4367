//! Receivers that misbehave, and faults inside hyfleet: none stops a delivery loop or holds
//! up the other webhooks, and none makes the worker read or wait without bound.

use std::sync::Arc;
use std::time::Duration;

use hyfleet::domain::AlertEventType as T;
use hyfleet::notify::{self, Format};

use super::{Rig, event, hook, notify_config};
use crate::support::receiver::{Raw, RawReceiver, Receiver, Respond};
use crate::support::{eventually, until};

#[tokio::test]
async fn a_huge_retry_after_stops_no_webhook() {
    // 10^16 seconds is past what chrono's Duration holds: it once killed every delivery loop.
    let huge = "10000000000000000";
    let hostile = Receiver::start().await;
    hostile.respond(Respond::RetryAfter(200, huge.into()));
    let other = Receiver::start().await;
    let mut cfg = notify_config();
    cfg.poll_interval_ms = 20;
    let rig = Rig::new(
        cfg,
        &[
            hook("hostile", &hostile.url("/generic"), Format::Generic),
            hook("other", &other.url("/generic"), Format::Generic),
        ],
    )
    .await;
    let loops = rig.spawn_loops(Arc::new(notify::SystemClock));
    let batch: Vec<_> = (1..=3).map(|a| event(a, T::Opened)).collect();
    rig.enqueue(&batch).await;
    until("the other receiver has three", || {
        other.received().len() == 3
    })
    .await;
    // A 200 is a delivery, whatever else the answer says.
    eventually(30, "the hostile receiver's deliveries settle", || async {
        (rig.count(rig.ids[0], "delivered").await == 3).then_some(())
    })
    .await;

    // With a 503 the wait is honoured, clamped to a day.
    hostile.respond(Respond::RetryAfter(503, huge.into()));
    rig.enqueue(&[event(4, T::Opened)]).await;
    until("the other receiver has four", || {
        other.received().len() == 4
    })
    .await;
    let conn = rig.pool.get().await.unwrap();
    eventually(30, "the 503 is recorded", || async {
        let attempts = notify::attempts(&conn, rig.ids[0], 10, None).await.unwrap();
        (attempts.len() == 4).then_some(())
    })
    .await;
    let w = notify::get_webhook(&conn, rig.ids[0])
        .await
        .unwrap()
        .unwrap();
    let paused = w.paused_until.expect("the endpoint waits");
    let now = chrono::Utc::now();
    assert!(
        paused > now + chrono::Duration::hours(23) && paused <= now + chrono::Duration::hours(24),
        "{paused}"
    );
    let d = notify::deliveries(&conn, rig.ids[0], 1, None)
        .await
        .unwrap();
    assert_eq!(d[0].state, "pending");
    assert!(d[0].next_attempt_at.unwrap() <= now + chrono::Duration::hours(24));
    // The receiver has the fourth; its delivery is recorded once the attempt commits.
    eventually(
        30,
        "the other receiver's deliveries are all recorded",
        || async { (rig.count(rig.ids[1], "delivered").await == 4).then_some(()) },
    )
    .await;
    loops.stop().await;
}

#[tokio::test]
async fn a_huge_answer_is_read_only_in_part() {
    let rx = RawReceiver::start(Raw::Huge(128 << 20)).await;
    let h = hook(
        "ding",
        &rx.url("/robot/send?access_token=t"),
        Format::DingTalk,
    );
    let rig = Rig::new(notify_config(), &[h]).await;
    rig.enqueue(&[event(1, T::Opened)]).await;
    assert!(rig.worker.step().await.unwrap());
    until("the connection closed", || rx.open() == 0).await;
    // What the kernel buffers between the two sockets is sent too; the cap is far below.
    assert!(rx.sent() < 32 << 20, "{} bytes taken", rx.sent());
    assert_eq!(rig.count(rig.ids[0], "delivered").await, 1);
}

#[tokio::test]
async fn a_trickling_answer_holds_a_delivery_no_longer_than_the_timeout() {
    let rx = RawReceiver::start(Raw::Trickle).await;
    let mut cfg = notify_config();
    cfg.http_timeout_secs = 2;
    let h = hook(
        "ding",
        &rx.url("/robot/send?access_token=t"),
        Format::DingTalk,
    );
    let rig = Rig::new(cfg, &[h]).await;
    rig.enqueue(&[event(1, T::Opened)]).await;
    let started = std::time::Instant::now();
    assert!(rig.worker.step().await.unwrap());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "{took:?}");
    let conn = rig.pool.get().await.unwrap();
    let a = notify::attempts(&conn, rig.ids[0], 10, None).await.unwrap();
    // The robot's verdict is in the body that never came: not known to be delivered.
    assert!(!a[0].ok, "{:?}", a[0]);
    assert!(a[0].error.as_deref().unwrap().contains("2 s"), "{:?}", a[0]);
    assert_eq!(rig.count(rig.ids[0], "pending").await, 1);
    until("the connection closed", || rx.open() == 0).await;
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
    let rig = Rig::new(
        cfg,
        &[
            hook("hang0", &hang[0].url("/generic"), Format::Generic),
            hook("hang1", &hang[1].url("/generic"), Format::Generic),
            hook("healthy", &healthy.url("/generic"), Format::Generic),
        ],
    )
    .await;
    let loops = rig.spawn_loops(Arc::new(notify::SystemClock));
    // The first round shows which receivers hang.
    rig.enqueue(&[event(1, T::Opened)]).await;
    until("the healthy receiver has the first", || {
        healthy.received().len() == 1
    })
    .await;
    // Now a worker is again waiting on a hanging receiver.
    until("a loop waits on a hanging receiver again", || {
        hang[0].requests() + hang[1].requests() >= 3
    })
    .await;
    let sent = std::time::Instant::now();
    rig.enqueue(&[event(2, T::Opened), event(3, T::Opened)])
        .await;
    until("the healthy receiver has all three", || {
        healthy.received().len() == 3
    })
    .await;
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(2500), "{took:?}");
    loops.stop().await;
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
    let rig = Rig::new(cfg, &[hook("main", &rx.url("/generic"), Format::Generic)]).await;
    let clock = Arc::new(FaultyClock::default());
    let loops = rig.spawn_loops(clock.clone());
    let panics = notify::delivery_panics();
    rig.enqueue(&[event(1, T::Opened)]).await;
    until("the request arrived", || rx.requests() == 1).await;
    clock.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(30, "the delivery is given up", || async {
        (rig.count(rig.ids[0], "failed").await == 1).then_some(())
    })
    .await;
    assert!(notify::delivery_panics() > panics);
    let conn = rig.pool.get().await.unwrap();
    let d = notify::deliveries(&conn, rig.ids[0], 10, None)
        .await
        .unwrap();
    let why = d[0].last_error.as_deref().unwrap();
    assert!(
        why.contains("panic") && why.contains("clock fault"),
        "{why}"
    );
    let a = notify::attempts(&conn, rig.ids[0], 10, None).await.unwrap();
    assert_eq!(a.len(), 1);
    assert!(!a[0].ok && a[0].error.as_deref() == Some(why), "{a:?}");

    rx.respond(Respond::Ok);
    rig.enqueue(&[event(2, T::Opened)]).await;
    until("the second arrived", || rx.received().len() == 2).await;
    eventually(30, "the next delivery goes through", || async {
        (rig.count(rig.ids[0], "delivered").await == 1).then_some(())
    })
    .await;
    loops.stop().await;
}
