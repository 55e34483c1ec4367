//! `hyfleet demo`: the whole system on one machine. An embedded broker (unless `MQTT_URL`
//! names one), the service, and the simulated Xiaoyi fleet publishing into it.

use std::net::{SocketAddr, TcpListener as StdListener};

use anyhow::Context as _;

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
