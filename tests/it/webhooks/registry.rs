//! What may be registered as a webhook, and what an operator can read of one: private
//! addresses refused unless allowed (also when a name resolves to one later, and whatever proxy
//! the environment names), secrets of at least 16 bytes, tokens and secrets never shown.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};

use hyfleet::domain::AlertEventType as T;
use hyfleet::notify::{self, Format, OffsetClock, Worker};

use super::{Rig, event, hook, notify_config};
use crate::support::receiver::{Raw, RawReceiver};
use crate::support::{BROKER, InProcess, TOKEN, TestDb, config};

#[tokio::test]
async fn private_urls_are_refused_unless_allowed_and_secrets_stay_hidden() {
    let mut strict = notify_config();
    strict.allow_private_networks = false;
    let rig = Rig::new(notify_config(), &[]).await;
    let mut conn = rig.pool.get().await.unwrap();
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
    rig.enqueue(&[event(1, T::Opened)]).await;
    rig.worker.run_once().await.unwrap();
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

#[tokio::test]
async fn proxies_from_the_environment_are_not_used() {
    let proxy = RawReceiver::start(Raw::Ok).await;
    // Registered while allowed, sent while not: what a name that resolves to a private
    // address once the webhook exists (DNS rebinding) looks like to the worker.
    let rig = Rig::new(
        notify_config(),
        &[hook(
            "internal",
            "http://localhost:9/admin",
            Format::Generic,
        )],
    )
    .await;
    rig.enqueue(&[event(1, T::Opened)]).await;
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
    let worker = Worker::new(rig.pool.clone(), strict, Arc::new(OffsetClock::new()));
    unsafe {
        for k in vars {
            std::env::remove_var(k);
        }
    }
    worker.unwrap().step().await.unwrap();
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
    let conn = rig.pool.get().await.unwrap();
    let a = notify::attempts(&conn, rig.ids[0], 10, None).await.unwrap();
    assert!(
        !a[0].ok && a[0].error.as_deref().unwrap().contains("private"),
        "{:?}",
        a[0]
    );
}

#[tokio::test]
async fn short_secrets_are_refused() {
    let rig = Rig::new(notify_config(), &[]).await;
    let mut conn = rig.pool.get().await.unwrap();
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

/// Through the running service: a short secret is refused by name, in the configuration and at
/// `POST /api/v1/webhooks`.
#[tokio::test]
async fn a_short_webhook_secret_is_refused_by_name() {
    let err = hyfleet::config::Config::from_toml_and_env(
        "[[webhooks]]\nname = \"ops\"\nurl = \"https://ops.example.com/h\"\nsecret = \"short-secret\"",
        "test",
        [],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("webhooks[0].secret") && err.contains("16 bytes"),
        "{err}"
    );

    let db = TestDb::new().await;
    let mut c = config(&db, &BROKER);
    c.notify.allow_private_networks = true;
    let svc = InProcess::start(c).await;
    let post = |secret: &str| {
        reqwest::Client::new()
            .post(svc.url("/api/v1/webhooks"))
            .bearer_auth(TOKEN)
            .json(&json!({"name": "ops", "url": "http://127.0.0.1:9/hook", "secret": secret}))
            .send()
    };
    // "fifteen bytes!!" behind whsec_: fifteen bytes of key, however long the text.
    for secret in ["short-secret", "whsec_ZmlmdGVlbiBieXRlcyEh"] {
        let r = post(secret).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{secret}");
        let b: Value = r.json().await.unwrap();
        let detail = b["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("secret") && detail.contains("16 bytes"),
            "{b}"
        );
    }
    let r = post("whsec_c2l4dGVlbiBieXRlcyEhIQ==").await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    svc.stop().await;
}
