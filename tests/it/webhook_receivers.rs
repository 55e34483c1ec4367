//! Webhook signing secrets through the running service: a short one is refused by name, in
//! the configuration and at `POST /api/v1/webhooks`.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{BROKER, InProcess, TOKEN, TestDb, config};

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
