//! `POST /vehicles/{id}/commands`: a checked command, published with QoS 1 on the vehicle's
//! `cmd` topic through an MQTT connection of the API's own (not ingest's persistent session).

use std::collections::VecDeque;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::auth::Caller;
use super::extract::{J, P};
use super::vehicles::vehicle_key;
use super::{Api, Problem};
use crate::config::MqttConfig;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CommandRequest {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    args: Map<String, Value>,
}

/// The command object of the MQTT contract (docs/mqtt.md).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Command {
    pub id: uuid::Uuid,
    pub ts: DateTime<Utc>,
    #[serde(rename = "type")]
    pub type_: String,
    pub args: Map<String, Value>,
}

/// What a command's args may hold, per type.
fn check(req: &CommandRequest, speed_cap_limit: f32) -> Result<(), String> {
    let no_args = |t: &str| {
        if req.args.is_empty() {
            Ok(())
        } else {
            Err(format!("`{t}` takes no args"))
        }
    };
    match req.type_.as_str() {
        t @ ("lock" | "unlock" | "locate") => no_args(t),
        "set_speed_cap" => {
            let cap = req.args.get("speed_cap_kmh").and_then(Value::as_f64);
            if req.args.len() != 1 || cap.is_none() {
                return Err("`set_speed_cap` takes args {\"speed_cap_kmh\": <number>}".into());
            }
            let cap = cap.unwrap_or_default();
            if !(cap > 0.0 && cap <= f64::from(speed_cap_limit)) {
                return Err(format!(
                    "speed_cap_kmh must be above 0 and at most the profile's cap, {speed_cap_limit}"
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "type `{other}` is not lock, unlock, locate or set_speed_cap"
        )),
    }
}

/// The API's MQTT connection, made on first use.
#[derive(Default)]
pub struct Publisher {
    client: OnceCell<AsyncClient>,
}

impl Publisher {
    async fn client(&self, mqtt: &MqttConfig) -> Result<&AsyncClient, String> {
        self.client
            .get_or_try_init(|| async { connect(mqtt) })
            .await
    }
}

fn connect(mqtt: &MqttConfig) -> Result<AsyncClient, String> {
    // A login of its own (`mqtt.commands_url`): a broker that pins client ids to users gives
    // this connection that user's session, never ingest's.
    let endpoints = mqtt.commands_endpoints()?;
    let id = format!(
        "{}-api-{}",
        mqtt.client_id,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let keep_alive = Duration::from_secs(mqtt.keep_alive_secs.max(5));
    let options = move |n: usize| {
        let ep = &endpoints[n % endpoints.len()];
        let mut opts = MqttOptions::new(id.clone(), ep.host.clone(), ep.port);
        opts.set_keep_alive(keep_alive);
        if let Some((u, p)) = &ep.credentials {
            opts.set_credentials(u, p);
        }
        opts
    };
    let (client, mut eventloop) = AsyncClient::new(options(0), 256);
    tokio::spawn(async move {
        let mut at = 0;
        // What the broker had not acknowledged, or was still queued, when a connection broke.
        // The next connection is a new session, for which rumqttc drops what it kept: it is
        // sent again there instead (at least once; a command carries its id).
        let mut carried = VecDeque::new();
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    eventloop.pending.extend(carried.drain(..));
                }
                Ok(_) => {}
                // Every handle is gone: the API stopped.
                Err(ConnectionError::RequestsDone) => return,
                Err(e) => {
                    carried.extend(eventloop.pending.drain(..));
                    // The next listener of `mqtt.commands_url`, if it names several.
                    at += 1;
                    eventloop.mqtt_options = options(at);
                    let (host, port) = eventloop.mqtt_options.broker_address();
                    tracing::warn!(
                        error = %e,
                        commands = carried.len(),
                        next = %format!("{host}:{port}"),
                        "command connection to the broker lost; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(client)
}

pub(super) async fn send(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    P(code): P<String>,
    J(req): J<CommandRequest>,
) -> Result<impl IntoResponse, Problem> {
    let client = api.app.pool.get().await?;
    let (_, kind) = vehicle_key(&client, &code).await?;
    drop(client);
    let cfg = &api.app.config;
    check(&req, cfg.profiles.get(kind).speed_cap_kmh).map_err(Problem::bad_request)?;
    let cmd = Command {
        id: uuid::Uuid::new_v4(),
        ts: Utc::now(),
        type_: req.type_,
        args: req.args,
    };
    let topic = format!("{}/{}/{}/cmd", cfg.mqtt.topic_root, kind.as_str(), code);
    let payload = serde_json::to_vec(&cmd).map_err(Problem::internal)?;
    let mqtt = api
        .commands
        .client(&cfg.mqtt)
        .await
        .map_err(Problem::internal)?;
    // Queued, not awaited: a broker that is away must not hold HTTP requests, and a full
    // queue says so at once.
    mqtt.try_publish(&topic, QoS::AtLeastOnce, false, payload)
        .map_err(|e| {
            tracing::warn!(error = %e, "command not queued");
            Problem::unavailable("the command queue to the broker is full; try again")
        })?;
    tracing::info!(command = %cmd.id, vehicle = %code, r#type = %cmd.type_, actor = %caller.name, "command sent");
    Ok((StatusCode::ACCEPTED, Json(cmd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(t: &str, args: Value) -> CommandRequest {
        CommandRequest {
            type_: t.into(),
            args: args.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn commands_and_their_args_are_checked() {
        assert!(check(&req("lock", serde_json::json!({})), 23.0).is_ok());
        assert!(check(&req("locate", serde_json::json!({})), 23.0).is_ok());
        assert!(check(&req("unlock", serde_json::json!({"x": 1})), 23.0).is_err());
        assert!(check(&req("explode", serde_json::json!({})), 23.0).is_err());
        assert!(
            check(
                &req("set_speed_cap", serde_json::json!({"speed_cap_kmh": 15})),
                23.0
            )
            .is_ok()
        );
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"speed_cap_kmh": 0}),
            serde_json::json!({"speed_cap_kmh": 40}),
            serde_json::json!({"speed_cap_kmh": "fast"}),
            serde_json::json!({"speed_cap_kmh": 10, "x": 1}),
        ] {
            assert!(
                check(&req("set_speed_cap", bad.clone()), 23.0).is_err(),
                "{bad}"
            );
        }
    }
}
