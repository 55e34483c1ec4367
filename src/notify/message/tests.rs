use base64::Engine;
use chrono::TimeZone;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::*;
use crate::domain::{Alert, AlertState, Severity, VehicleKind};
use crate::notify::labels::Language;

fn event(alert_id: i64, t: AlertEventType) -> AlertEvent {
    AlertEvent {
        id: uuid::Uuid::from_u128(0x1234_0000 + alert_id as u128),
        event_type: t,
        at: Utc.with_ymd_and_hms(2025, 3, 1, 8, 30, 0).unwrap(),
        alert: Alert {
            id: alert_id,
            vehicle_id: format!("XY-B{alert_id:04}"),
            vehicle_kind: VehicleKind::Bike,
            rule: "parking_violation".into(),
            zone: None,
            state: AlertState::Open,
            severity: Severity::Warning,
            opened_at: Utc.with_ymd_and_hms(2025, 3, 1, 8, 29, 0).unwrap(),
            acknowledged_at: None,
            resolved_at: None,
            lat: Some(37.146_5),
            lon: Some(111.773_9),
            details: json!({"nearest_zone": "P-03", "distance_m": 41.2}),
        },
    }
}

fn ctx() -> Context {
    Context {
        source: "/hyfleet".into(),
        dashboard_url: "https://fleet.example.com/".into(),
        language: Language::En,
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 8, 30, 5).unwrap()
}

fn b64_hmac(key: &[u8], msg: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

fn header<'a>(o: &'a Outgoing, name: &str) -> &'a str {
    &o.headers.iter().find(|(k, _)| *k == name).unwrap().1
}

#[test]
fn generic_is_a_signed_cloudevent() {
    let ev = event(42, AlertEventType::Opened);
    let t = Target {
        url: "https://hooks.example.com/in",
        secret: Some("whsec_c2VjcmV0LWtleQ=="),
        format: Format::Generic,
    };
    let o = single(t, &ev, &ctx(), now()).unwrap();
    let body: Value = serde_json::from_slice(&o.body).unwrap();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], ev.id.to_string());
    assert_eq!(body["type"], "hyfleet.alert.opened");
    assert_eq!(body["source"], "/hyfleet");
    assert_eq!(body["subject"], "XY-B0042");
    assert_eq!(body["time"], "2025-03-01T08:30:00.000Z");
    assert_eq!(body["data"]["id"], 42);
    assert_eq!(body["data"]["details"]["nearest_zone"], "P-03");
    assert_eq!(header(&o, "content-type"), "application/cloudevents+json");
    assert_eq!(header(&o, "webhook-id"), ev.id.to_string());
    assert_eq!(
        header(&o, "webhook-timestamp"),
        now().timestamp().to_string()
    );
    let signed = format!("{}.{}.", ev.id, now().timestamp());
    let mut msg = signed.into_bytes();
    msg.extend_from_slice(&o.body);
    assert_eq!(
        header(&o, "webhook-signature"),
        format!("v1,{}", b64_hmac(b"secret-key", &msg))
    );
}

#[test]
fn dingtalk_signs_the_url_and_reads_well() {
    let ev = event(7, AlertEventType::Opened);
    let secret = "SEC000demo";
    let t = Target {
        url: "https://oapi.dingtalk.com/robot/send?access_token=tok",
        secret: Some(secret),
        format: Format::DingTalk,
    };
    let o = single(t, &ev, &ctx(), now()).unwrap();
    let url = reqwest::Url::parse(&o.url).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    let ts = now().timestamp_millis();
    assert_eq!(q["access_token"], "tok");
    assert_eq!(q["timestamp"], ts.to_string());
    assert_eq!(
        q["sign"],
        b64_hmac(secret.as_bytes(), format!("{ts}\n{secret}").as_bytes())
    );
    let body: Value = serde_json::from_slice(&o.body).unwrap();
    assert_eq!(body["msgtype"], "markdown");
    let text = body["markdown"]["text"].as_str().unwrap();
    for needle in [
        "XY-B0007",
        "Parked outside the fence",
        "warning",
        "37.14650, 111.77390",
        "P-03 (41 m)",
        "https://fleet.example.com/#/alerts/7",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert!(
        body["markdown"]["title"]
            .as_str()
            .unwrap()
            .contains("XY-B0007")
    );

    let unsigned = Target { secret: None, ..t };
    let o = single(unsigned, &ev, &ctx(), now()).unwrap();
    assert_eq!(o.url, t.url);
}

#[test]
fn feishu_signs_in_the_body_with_the_swapped_key() {
    let ev = event(9, AlertEventType::Resolved);
    let secret = "feishu-secret";
    let t = Target {
        url: "https://open.feishu.cn/open-apis/bot/v2/hook/abc",
        secret: Some(secret),
        format: Format::Feishu,
    };
    let o = single(t, &ev, &ctx(), now()).unwrap();
    let body: Value = serde_json::from_slice(&o.body).unwrap();
    let ts = now().timestamp();
    assert_eq!(body["timestamp"], ts.to_string());
    assert_eq!(
        body["sign"],
        b64_hmac(format!("{ts}\n{secret}").as_bytes(), b"")
    );
    assert_eq!(body["msg_type"], "text");
    assert!(
        body["content"]["text"]
            .as_str()
            .unwrap()
            .contains("Alert resolved")
    );
    assert_eq!(o.url, t.url);
}

#[test]
fn wecom_stays_within_2048_bytes() {
    let mut ev = event(3, AlertEventType::Escalated);
    ev.alert.rule = "超长的规则名称".repeat(200);
    let t = Target {
        url: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K",
        secret: None,
        format: Format::WeCom,
    };
    let o = single(t, &ev, &ctx(), now()).unwrap();
    let body: Value = serde_json::from_slice(&o.body).unwrap();
    assert_eq!(body["msgtype"], "markdown");
    let content = body["markdown"]["content"].as_str().unwrap();
    assert!(content.len() <= 2048, "{}", content.len());
    assert!(content.ends_with('…'));
}

#[test]
fn slack_escapes_and_links() {
    let mut ev = event(5, AlertEventType::Acknowledged);
    ev.alert.zone = Some("<Depot & Yard>".into());
    let t = Target {
        url: "https://hooks.slack.com/services/T/B/X",
        secret: None,
        format: Format::Slack,
    };
    let o = single(t, &ev, &ctx(), now()).unwrap();
    let body: Value = serde_json::from_slice(&o.body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("&lt;Depot &amp; Yard&gt;"), "{text}");
    assert!(
        text.contains("<https://fleet.example.com/#/alerts/5|"),
        "{text}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1);
}

#[test]
fn digests_name_every_alert_within_the_size_limits() {
    let events: Vec<_> = (1..=100)
        .map(|i| event(i, AlertEventType::Opened))
        .collect();
    for format in [
        Format::DingTalk,
        Format::WeCom,
        Format::Feishu,
        Format::Slack,
    ] {
        let chunks = digest_chunks(format, &events);
        assert_eq!(chunks.iter().sum::<usize>(), 100);
        assert!(chunks.iter().all(|&n| (1..=DIGEST_MAX_ALERTS).contains(&n)));
        let t = Target {
            url: "https://robot.example.com/send?k=1",
            secret: None,
            format,
        };
        let mut start = 0;
        for n in chunks {
            let part = &events[start..start + n];
            let o = digest(t, part, &ctx(), now()).unwrap();
            let text = String::from_utf8(o.body).unwrap();
            assert!(!text.contains('…'), "{format:?} digest was cut");
            for e in part {
                assert!(text.contains(&format!("#{} {}", e.alert.id, e.alert.vehicle_id)));
            }
            start += n;
        }
    }
}

#[test]
fn a_deescalation_reads_as_one_in_every_format() {
    let mut ev = event(11, AlertEventType::Deescalated);
    ev.alert.severity = Severity::Warning;
    for (format, url) in [
        (
            Format::DingTalk,
            "https://oapi.dingtalk.com/robot/send?access_token=T",
        ),
        (
            Format::WeCom,
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K",
        ),
        (
            Format::Feishu,
            "https://open.feishu.cn/open-apis/bot/v2/hook/H",
        ),
        (Format::Slack, "https://hooks.slack.com/services/T/B/X"),
    ] {
        let t = Target {
            url,
            secret: None,
            format,
        };
        let o = single(t, &ev, &ctx(), now()).unwrap();
        let text = String::from_utf8(o.body).unwrap();
        assert!(text.contains("Alert de-escalated"), "{format:?}: {text}");
        assert!(text.contains("warning"), "{format:?}: {text}");
    }
    let generic = Target {
        url: "https://ops.example.com/hook",
        secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        format: Format::Generic,
    };
    let o = single(generic, &ev, &ctx(), now()).unwrap();
    let body: Value = serde_json::from_slice(&o.body).unwrap();
    assert_eq!(body["type"], "hyfleet.alert.deescalated");
}

/// Xiaoyi's dispatchers read Chinese: rule, severity, event and kind by name, not by code.
#[test]
fn chat_texts_speak_the_configured_language() {
    let zh = Context {
        language: Language::ZhCn,
        ..ctx()
    };
    let mut ev = event(7, AlertEventType::Opened);
    ev.alert.rule = "low_hydrogen".into();
    ev.alert.severity = Severity::Critical;
    for format in [
        Format::DingTalk,
        Format::WeCom,
        Format::Feishu,
        Format::Slack,
    ] {
        let t = Target {
            url: "https://robot.example.com/send?k=1",
            secret: None,
            format,
        };
        let text = String::from_utf8(single(t, &ev, &zh, now()).unwrap().body).unwrap();
        let text: Value = serde_json::from_str(&text).unwrap();
        let text = text.to_string();
        for needle in ["新告警", "氢量不足", "严重", "单车", "规则", "打开控制台"]
        {
            assert!(
                text.contains(needle),
                "{format:?}: {needle} missing from {text}"
            );
        }
        assert!(
            !text.contains("low_hydrogen"),
            "{format:?}: raw rule name in {text}"
        );
        let text = String::from_utf8(single(t, &ev, &ctx(), now()).unwrap().body).unwrap();
        for needle in ["Alert opened", "Low hydrogen", "critical", "Rule"] {
            assert!(
                text.contains(needle),
                "{format:?}: {needle} missing from {text}"
            );
        }
        assert!(
            !text.contains("low_hydrogen"),
            "{format:?}: raw rule name in {text}"
        );
        let digest = digest(t, std::slice::from_ref(&ev), &zh, now()).unwrap();
        let digest = String::from_utf8(digest.body).unwrap();
        let digest: Value = serde_json::from_str(&digest).unwrap();
        assert!(
            digest.to_string().contains("#7 XY-B0007 氢量不足 严重"),
            "{digest}"
        );
    }
    // A custom rule keeps the name its author gave it.
    ev.alert.rule = "night_ride".into();
    let t = Target {
        url: "https://robot.example.com/send?k=1",
        secret: None,
        format: Format::Feishu,
    };
    let text = String::from_utf8(single(t, &ev, &zh, now()).unwrap().body).unwrap();
    assert!(text.contains("night_ride"), "{text}");
}
