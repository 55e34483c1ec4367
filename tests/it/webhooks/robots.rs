//! The chat robots (DingTalk, Feishu, WeCom): their formats and signatures as the platforms
//! check them, and a robot's rate limit kept under a burst of alerts.

use std::collections::HashSet;

use hyfleet::domain::AlertEventType as T;
use hyfleet::notify::Format;

use super::{Rig, event, hook, notify_config};
use crate::support::receiver::{DING_SECRET, FEISHU_SECRET, Receiver};

#[tokio::test]
async fn a_burst_to_a_dingtalk_robot_becomes_digests_within_its_limit() {
    let rx = Receiver::start().await;
    let mut h = hook(
        "ding",
        &rx.url("/dingtalk?access_token=tok"),
        Format::DingTalk,
    );
    h.secret = Some(DING_SECRET.into());
    let rig = Rig::new(notify_config(), &[h]).await;

    let batch =
        |r: std::ops::RangeInclusive<i64>| r.map(|a| event(a, T::Opened)).collect::<Vec<_>>();
    // A first handful goes out one by one; then the burst of 100 fits in what is left of
    // the minute's budget of 20 messages.
    rig.enqueue(&batch(1..=5)).await;
    rig.worker.run_once().await.unwrap();
    assert_eq!(rx.received().len(), 5);
    rig.enqueue(&batch(6..=105)).await;
    rig.worker.run_once().await.unwrap();
    assert_eq!(rig.states(rig.ids[0]).await.get("delivered"), Some(&105));
    let in_first_minute = rx.received().len();
    assert!(
        (6..=20).contains(&in_first_minute),
        "{in_first_minute} messages"
    );
    // A storm of 400 more cannot fit in one minute: it waits for the budget, loses nothing.
    rig.enqueue(&batch(106..=505)).await;
    for _ in 0..60 {
        rig.worker.run_once().await.unwrap();
        if rig.states(rig.ids[0]).await.get("delivered") == Some(&505) {
            break;
        }
        rig.clock.advance(chrono::Duration::seconds(10));
    }
    assert_eq!(rig.states(rig.ids[0]).await.get("delivered"), Some(&505));
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
    let mut feishu = hook("feishu", &rx.url("/feishu/hook/abc"), Format::Feishu);
    feishu.secret = Some(FEISHU_SECRET.into());
    let wecom = hook("wecom", &rx.url("/wecom?key=K"), Format::WeCom);
    let rig = Rig::new(notify_config(), &[feishu, wecom]).await;
    rig.enqueue(&[event(1, T::Escalated)]).await;
    assert_eq!(rig.worker.run_once().await.unwrap(), 2);
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
