//! `hyfleet demo`: the whole system on one machine. An embedded broker (unless `MQTT_URL`
//! names one), the service, and the simulated Xiaoyi fleet publishing into it.

use std::net::{SocketAddr, TcpListener as StdListener};

use anyhow::Context as _;

use crate::store::local_server::LocalServer;

/// Start rumqttd on its own thread on a free loopback port (a system broker often holds 1883)
/// and return its `mqtt://` URL.
pub fn start_embedded_broker() -> anyhow::Result<String> {
    let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let toml = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 2000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 2000
    dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&toml).context("embedded broker configuration")?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })?;
    // Wait until it accepts connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(format!("mqtt://{addr}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    anyhow::bail!("the embedded MQTT broker did not start on {addr}")
}

/// A webhook receiver for the demo: prints each alert event it gets, so a newcomer sees the
/// whole path (reading → rule → outbox → webhook) in the terminal. Returns its URL.
pub async fn start_inbox() -> anyhow::Result<String> {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/inbox",
        post(|body: axum::body::Bytes| async move {
            let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let a = &event["data"];
            println!(
                "webhook  {:<20} {:<10} {:<20} {:<8} {}",
                event["type"].as_str().unwrap_or("?"),
                a["vehicle_id"].as_str().unwrap_or("?"),
                a["rule"].as_str().unwrap_or("?"),
                a["severity"].as_str().unwrap_or("?"),
                a["details"]
            );
            axum::http::StatusCode::NO_CONTENT
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/inbox"))
}

/// The demo's configuration: the user's, with a webhook to the inbox.
pub fn webhook_to(inbox: &str) -> crate::notify::WebhookConfig {
    crate::notify::WebhookConfig {
        name: "demo-inbox".into(),
        url: inbox.into(),
        secret: Some("whsec_ZGVtby1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u".into()),
        events: crate::domain::AlertEventType::ALL.to_vec(),
        format: crate::notify::Format::Generic,
        rate_per_minute: None,
    }
}

/// The PostgreSQL a demo runs on when no `DATABASE_URL` was given: the local server's
/// `hyfleet_demo` database, emptied, or, when that server cannot be used (not running, not
/// reachable, asking for a password), a throwaway server of the demo's own, returned so that
/// the caller keeps it for as long as the demo runs.
pub async fn database(url: &str) -> anyhow::Result<(String, Option<LocalServer>)> {
    let unusable = match reset_database(url).await {
        Ok(()) => return Ok((url.to_owned(), None)),
        Err(e) => e,
    };
    println!(
        "{}; starting a throwaway PostgreSQL for this demo",
        crate::store::error_chain(&unusable)
    );
    let server = LocalServer::start()
        .await
        .context("the demo needs PostgreSQL: start it, set DATABASE_URL, or install it")?;
    let url = server.url("hyfleet_demo");
    println!(
        "  throwaway PostgreSQL on 127.0.0.1:{} (removed when the demo stops)",
        server.port()
    );
    Ok((url, Some(server)))
}

/// Where the demo looks first: the local server's default address, a database of its own.
pub const DEFAULT_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/hyfleet_demo";

/// Drop the demo's own database, so that each demo starts with a fresh simulated fleet.
pub async fn reset_database(url: &str) -> anyhow::Result<()> {
    let mut admin = crate::store::pg_config(url)?;
    let name = admin.get_dbname().unwrap_or("hyfleet_demo").to_owned();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(tokio_postgres::NoTls).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to PostgreSQL at {}: {}",
            crate::store::redact(url),
            crate::store::pg_error(&e)
        )
    })?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.replace('"', "\"\"")
        ))
        .await
        .context("cannot reset the demo database")?;
    Ok(())
}
