//! `hyfleet doctor`: checks, one line each, what hyfleet's promises depend on outside its own
//! code: a PostgreSQL it can use, a broker that keeps a persistent session's backlog and lets
//! enough unacknowledged messages travel for ack-after-commit, and a clock that agrees with the
//! database's. The broker checks are measured by sending real messages, not read from a
//! configuration file that may not be the one the broker runs.
//!
//! `serve` runs the cheap checks ([`quick`]) at start and logs a warning for each that fails.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;

use crate::config::{Config, MqttConfig};

/// Readings a persistent session must keep while its subscriber is away. Mosquitto's default
/// `max_queued_messages` is 1000 (plus 20 in flight): a backlog past that is dropped silently.
pub const BACKLOG_PROBE: usize = 1500;
/// Unacknowledged messages ingest needs in flight at the least: below this, ack-after-commit
/// caps throughput near window / commit latency (20 / 50 ms = 400 readings/s for Mosquitto's
/// default of 20).
pub const MIN_INFLIGHT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One check's outcome: what was checked, the verdict and what was seen (and what to do).
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
        Check {
            name,
            verdict,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match self.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{v} {:<18} {}", self.name, self.detail)
    }
}

/// Every check, the broker measurements included. `probe_url` is the broker login the probe
/// uses (`hyfleet doctor --mqtt-url`); without it, `mqtt.url` when that has no user.
pub async fn run(config: &Config, probe_url: Option<&str>) -> Vec<Check> {
    let mut checks = quick(config).await;
    if config.nats.url.is_some() {
        // Ingest takes from JetStream: the MQTT listener only carries commands down.
        checks.push(nats(config).await);
        return checks;
    }
    match probe_url {
        Some(url) => {
            let mut mqtt = config.mqtt.clone();
            mqtt.url = url.to_owned();
            checks.extend(broker(&mqtt).await);
        }
        None if has_user(&config.mqtt) => checks.push(Check::new(
            "broker",
            Verdict::Warn,
            "not measured: the probe needs a broker user of its own (`hyfleet doctor --mqtt-url \
             mqtt://hyfleet.doctor:PASSWORD@host`, made by deploy/mosquitto/make-passwords.sh). \
             With ingest's login it would be ingest's session on a broker that pins client ids \
             to users, and the probe would end it",
        )),
        None => checks.extend(broker(&config.mqtt).await),
    }
    checks
}

/// The JetStream source (`[nats]`): the cluster reachable, and the stream and the consumer as
/// configured (hyfleet creates them at its first start), with what waits in them.
pub async fn nats(config: &Config) -> Check {
    let nats = &config.nats;
    let name = "nats";
    let nodes = nats.servers().map(|(s, _)| s.len()).unwrap_or(0);
    let client = match crate::ingest::connect_nats(nats, "hyfleet doctor".into(), false).await {
        Ok(c) => c,
        Err(e) => return Check::new(name, Verdict::Fail, format!("unreachable: {e:#}")),
    };
    let js = async_nats::jetstream::new(client);
    let mut stream = match js.get_stream(&nats.stream).await {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref api)
                if api.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Check::new(
                name,
                Verdict::Warn,
                format!(
                    "no stream `{}` yet: hyfleet creates it at its first start; devices' \
                     readings before that are captured by no stream and lost ({e})",
                    nats.stream
                ),
            );
        }
        Err(e) => return Check::new(name, Verdict::Fail, format!("JetStream: {e}")),
    };
    let info = match stream.info().await {
        Ok(i) => i.clone(),
        Err(e) => return Check::new(name, Verdict::Fail, format!("JetStream: {e}")),
    };
    let want = format!("{}.>", crate::ingest::subject_root(&config.mqtt.topic_root));
    let mut problems = Vec::new();
    if info.config.subjects != [want.clone()] {
        problems.push(format!("captures {:?}, not {want}", info.config.subjects));
    }
    if info.config.num_replicas != nats.replicas {
        problems.push(format!(
            "keeps {} copies, nats.replicas asks {}",
            info.config.num_replicas, nats.replicas
        ));
    }
    let waiting = match stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&nats.consumer)
        .await
    {
        Ok(mut c) => match c.info().await {
            Ok(ci) => format!(
                "{} waiting, {} handed out and not acknowledged",
                ci.num_pending, ci.num_ack_pending
            ),
            Err(e) => format!("consumer `{}`: {e}", nats.consumer),
        },
        Err(_) => format!("no consumer `{}` yet", nats.consumer),
    };
    let detail = format!(
        "stream `{}` on {} node(s): {} message(s), {waiting}",
        nats.stream, nodes, info.state.messages
    );
    if problems.is_empty() {
        Check::new(name, Verdict::Ok, detail)
    } else {
        Check::new(
            name,
            Verdict::Warn,
            format!("{detail}; the stream {}", problems.join(", ")),
        )
    }
}

fn has_user(mqtt: &MqttConfig) -> bool {
    mqtt.endpoint().is_ok_and(|ep| ep.credentials.is_some())
}

/// The checks that cost nothing: PostgreSQL (reachable, version, rights) and the clock.
pub async fn quick(config: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    let client = match connect_pg(&config.database.url).await {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::new("postgresql", Verdict::Fail, e));
            return checks;
        }
    };
    checks.push(Check::new(
        "postgresql",
        Verdict::Ok,
        format!(
            "reachable at {}",
            crate::store::redact(&config.database.url)
        ),
    ));
    checks.push(pg_version(&client).await);
    checks.push(pg_rights(&client).await);
    checks.push(clock(&client).await);
    checks
}

/// A client of the configured database, or of `postgres` when it does not exist yet (hyfleet
/// creates it).
async fn connect_pg(url: &str) -> Result<tokio_postgres::Client, String> {
    let mut config = crate::store::pg_config(url).map_err(|e| format!("{e:#}"))?;
    let first = config.connect(tokio_postgres::NoTls).await;
    let (client, conn) = match first {
        Ok(pair) => pair,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            config.dbname("postgres");
            config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| unreachable_pg(url, &e))?
        }
        Err(e) => return Err(unreachable_pg(url, &e)),
    };
    tokio::spawn(conn);
    Ok(client)
}

fn unreachable_pg(url: &str, e: &tokio_postgres::Error) -> String {
    format!(
        "cannot connect to {}: {}; start PostgreSQL or set DATABASE_URL",
        crate::store::redact(url),
        crate::store::pg_error(e)
    )
}

async fn pg_version(client: &tokio_postgres::Client) -> Check {
    match client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
    {
        // UNIQUE NULLS NOT DISTINCT, which keeps a reading without `seq` stored once, is 15+.
        Ok(row) if row.get::<_, i32>(0) >= 150000 => {
            Check::new("postgresql version", Verdict::Ok, row.get::<_, String>(1))
        }
        Ok(row) => Check::new(
            "postgresql version",
            Verdict::Fail,
            format!(
                "{}: hyfleet needs PostgreSQL 15 or newer",
                row.get::<_, String>(1)
            ),
        ),
        Err(e) => Check::new(
            "postgresql version",
            Verdict::Fail,
            crate::store::pg_error(&e),
        ),
    }
}

/// hyfleet creates its database when missing, and its tables, partitions and functions.
async fn pg_rights(client: &tokio_postgres::Client) -> Check {
    let sql = "SELECT current_user::text, current_database()::text,
                      has_database_privilege(current_database(), 'CREATE'),
                      has_schema_privilege('public', 'CREATE'),
                      (SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user)";
    match client.query_one(sql, &[]).await {
        Ok(row) => {
            let (user, db): (String, String) = (row.get(0), row.get(1));
            let (db_create, schema_create, createdb): (bool, bool, bool) =
                (row.get(2), row.get(3), row.get(4));
            if db == "postgres" {
                // Connected to `postgres` because hyfleet's database does not exist yet.
                return if createdb {
                    Check::new(
                        "postgresql rights",
                        Verdict::Ok,
                        format!("{user} may create hyfleet's database (it does not exist yet)"),
                    )
                } else {
                    Check::new(
                        "postgresql rights",
                        Verdict::Fail,
                        format!(
                            "hyfleet's database does not exist and {user} may not create it: \
                             CREATE DATABASE it as an administrator, owned by {user}"
                        ),
                    )
                };
            }
            if db_create && schema_create {
                Check::new(
                    "postgresql rights",
                    Verdict::Ok,
                    format!("{user} may create tables and schemas in {db}"),
                )
            } else {
                Check::new(
                    "postgresql rights",
                    Verdict::Fail,
                    format!(
                        "{user} may not create objects in {db} (migrations and daily partitions \
                         need it): GRANT CREATE ON DATABASE {db} and ON SCHEMA public TO {user}"
                    ),
                )
            }
        }
        Err(e) => Check::new(
            "postgresql rights",
            Verdict::Fail,
            crate::store::pg_error(&e),
        ),
    }
}

/// Readings more than 5 min in the future are rejected as `clock_skew` against this machine's
/// clock, and the database stamps alert transitions: the two must agree. (An MQTT broker
/// publishes no clock to compare with; the database's is the one hyfleet's records share.)
async fn clock(client: &tokio_postgres::Client) -> Check {
    let before = chrono::Utc::now();
    let row = match client.query_one("SELECT clock_timestamp()", &[]).await {
        Ok(row) => row,
        Err(e) => return Check::new("clock", Verdict::Fail, crate::store::pg_error(&e)),
    };
    let after = chrono::Utc::now();
    let theirs: chrono::DateTime<chrono::Utc> = row.get(0);
    let ours = before + (after - before) / 2;
    let skew = (theirs - ours).num_milliseconds() as f64 / 1000.0;
    let detail = format!("this machine and PostgreSQL differ by {skew:+.3} s");
    if skew.abs() > 2.0 {
        Check::new(
            "clock",
            Verdict::Warn,
            format!("{detail}: run NTP (chrony, systemd-timesyncd) on both"),
        )
    } else {
        Check::new("clock", Verdict::Ok, detail)
    }
}

/// The broker: reachable with these credentials, and, measured with a probe session of its own
/// under `{root}/_doctor/…`, whether it keeps a backlog for a session that is away and how many
/// unacknowledged messages it lets travel, and whether it keeps retained messages.
pub async fn broker(mqtt: &MqttConfig) -> Vec<Check> {
    let probe = format!(
        "hyfleet-doctor-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let topic = format!("{}/_doctor/{probe}", mqtt.topic_root);
    let mut checks = Vec::new();
    match Session::open(mqtt, &probe, true, false).await {
        Ok(s) => {
            s.close().await;
            let ep = mqtt.endpoint().expect("checked by Session::open");
            checks.push(Check::new(
                "broker",
                Verdict::Ok,
                format!("reachable at {}:{}", ep.host, ep.port),
            ));
        }
        Err(e) => {
            checks.push(Check::new("broker", Verdict::Fail, e));
            return checks;
        }
    }
    let measured = measure_backlog(mqtt, &probe, &topic).await;
    // End the probe's persistent session: a clean connection removes it from the broker.
    if let Ok(s) = Session::open(mqtt, &probe, true, false).await {
        s.close().await;
    }
    match measured {
        Ok((kept, inflight)) => {
            checks.push(backlog_verdict(kept));
            checks.push(inflight_verdict(inflight));
        }
        Err(e) => checks.push(Check::new("broker backlog", Verdict::Fail, e)),
    }
    checks.push(retained(mqtt, &probe, &topic).await);
    checks
}

fn backlog_verdict(kept: usize) -> Check {
    if kept >= BACKLOG_PROBE {
        Check::new(
            "broker backlog",
            Verdict::Ok,
            format!("kept all {BACKLOG_PROBE} messages queued for a session that was away"),
        )
    } else {
        Check::new(
            "broker backlog",
            Verdict::Fail,
            format!(
                "kept {kept} of {BACKLOG_PROBE} messages queued for a session that was away: \
                 readings past that are dropped silently while hyfleet is down or behind \
                 (Mosquitto: raise max_queued_messages and max_queued_bytes, as \
                 deploy/mosquitto/mosquitto.conf does)"
            ),
        )
    }
}

fn inflight_verdict(inflight: usize) -> Check {
    if inflight >= MIN_INFLIGHT {
        Check::new(
            "broker inflight",
            Verdict::Ok,
            format!("{inflight} or more unacknowledged messages travel at once"),
        )
    } else {
        Check::new(
            "broker inflight",
            Verdict::Fail,
            format!(
                "only {inflight} unacknowledged messages travel at once: hyfleet acknowledges \
                 after commit, so ingest is capped near {} readings/s with 50 ms commits \
                 (Mosquitto: raise max_inflight_messages to 5000, as \
                 deploy/mosquitto/mosquitto.conf does)",
                inflight * 20
            ),
        )
    }
}

/// Subscribe the probe session, leave, publish [`BACKLOG_PROBE`] messages, come back: first
/// without acknowledging (what arrives is the inflight window), then acknowledging everything
/// (what arrives in all is what the broker kept). Returns (kept, inflight).
async fn measure_backlog(
    mqtt: &MqttConfig,
    probe: &str,
    topic: &str,
) -> Result<(usize, usize), String> {
    let backlog = format!("{topic}/backlog");
    let mut away = Session::open(mqtt, probe, false, true).await?;
    away.client
        .subscribe(&backlog, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    away.wait_for(|p| matches!(p, Packet::SubAck(_))).await?;
    away.close().await;

    let mut publisher =
        Session::open(&publisher_of(mqtt), &format!("{probe}-pub"), true, false).await?;
    for i in 0..BACKLOG_PROBE {
        publisher
            .client
            .publish(&backlog, QoS::AtLeastOnce, false, i.to_string())
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut acked = 0;
    while acked < BACKLOG_PROBE {
        match publisher.next(Duration::from_secs(10)).await? {
            Some(Packet::PubAck(_)) => acked += 1,
            Some(_) => {}
            None => return Err("the broker stopped acknowledging the probe's messages".into()),
        }
    }
    publisher.close().await;

    let mut back = Session::open(mqtt, probe, false, true).await?;
    let mut seen = HashSet::new();
    let mut unacked = Vec::new();
    // Without acknowledgements, the broker stops at its inflight window.
    while let Some(p) = back.next(Duration::from_millis(1500)).await? {
        if let Packet::Publish(p) = p {
            seen.insert(p.payload.clone());
            unacked.push(p);
        }
    }
    let inflight = unacked.len();
    for p in unacked.drain(..) {
        back.client.ack(&p).await.map_err(|e| e.to_string())?;
    }
    while let Some(p) = back.next(Duration::from_millis(1500)).await? {
        if let Packet::Publish(p) = p {
            seen.insert(p.payload.clone());
            back.client.ack(&p).await.map_err(|e| e.to_string())?;
        }
    }
    back.close().await;
    Ok((seen.len(), inflight))
}

/// The login that publishes the probe's messages. On a broker that pins client ids to user
/// names, a second connection of the probe's user would be the probe's own session (and a clean
/// one would end it), so the publisher is the user `{probe user}-pub` with the same password
/// (`make-passwords.sh` makes both); on an anonymous broker, the same login.
fn publisher_of(mqtt: &MqttConfig) -> MqttConfig {
    let mut publisher = mqtt.clone();
    if let Ok(ep) = mqtt.endpoint()
        && let Some((user, password)) = ep.credentials
    {
        publisher.url = format!("mqtt://{user}-pub:{password}@{}:{}", ep.host, ep.port);
    }
    publisher
}

/// Vehicles publish `status` retained, so that a subscriber learns who is online at once.
async fn retained(mqtt: &MqttConfig, probe: &str, topic: &str) -> Check {
    let status = format!("{topic}/status");
    let result: Result<bool, String> = async {
        let mut publisher =
            Session::open(&publisher_of(mqtt), &format!("{probe}-ret"), true, false).await?;
        publisher
            .client
            .publish(&status, QoS::AtLeastOnce, true, "online")
            .await
            .map_err(|e| e.to_string())?;
        publisher
            .wait_for(|p| matches!(p, Packet::PubAck(_)))
            .await?;
        let mut reader = Session::open(mqtt, &format!("{probe}-read"), true, false).await?;
        reader
            .client
            .subscribe(&status, QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        let got = reader
            .wait_for(|p| matches!(p, Packet::Publish(p) if p.retain))
            .await
            .is_ok();
        reader.close().await;
        // Clear it: an empty retained message removes the retained one.
        let _ = publisher
            .client
            .publish(&status, QoS::AtLeastOnce, true, Vec::new())
            .await;
        let _ = publisher.wait_for(|p| matches!(p, Packet::PubAck(_))).await;
        publisher.close().await;
        Ok(got)
    }
    .await;
    match result {
        Ok(true) => Check::new(
            "broker retained",
            Verdict::Ok,
            "keeps retained status messages",
        ),
        Ok(false) => Check::new(
            "broker retained",
            Verdict::Warn,
            "a retained message was not kept: vehicles' online/offline status is learned only \
             when they next publish it (Mosquitto: retain_available true)",
        ),
        Err(e) => Check::new("broker retained", Verdict::Fail, e),
    }
}

/// One MQTT connection of the probe, polled by whoever holds it.
struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
}

impl Session {
    async fn open(
        mqtt: &MqttConfig,
        id: &str,
        clean: bool,
        manual_acks: bool,
    ) -> Result<Session, String> {
        let ep = mqtt.endpoint().map_err(|e| format!("mqtt.url {e}"))?;
        let mut opts = MqttOptions::new(id, ep.host.clone(), ep.port);
        opts.set_clean_session(clean)
            .set_manual_acks(manual_acks)
            .set_keep_alive(Duration::from_secs(30))
            .set_request_channel_capacity(2 * BACKLOG_PROBE + 16);
        if let Some((user, pass)) = ep.credentials {
            opts.set_credentials(user, pass);
        }
        let (client, eventloop) = AsyncClient::new(opts, 2 * BACKLOG_PROBE + 16);
        let mut session = Session { client, eventloop };
        let where_ = format!("{}:{}", ep.host, ep.port);
        match tokio::time::timeout(Duration::from_secs(10), session.eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok(session),
            Ok(Ok(other)) => Err(format!("unexpected first packet from {where_}: {other:?}")),
            Ok(Err(ConnectionError::ConnectionRefused(code))) => Err(format!(
                "{where_} refused the connection ({code:?}): check the user and password in MQTT_URL"
            )),
            Ok(Err(e)) => Err(format!(
                "cannot connect to the broker at {where_}: {e}; start it or set MQTT_URL"
            )),
            Err(_) => Err(format!("no answer from the broker at {where_} within 10 s")),
        }
    }

    /// The next incoming packet, or `None` after `quiet` without one.
    async fn next(&mut self, quiet: Duration) -> Result<Option<Packet>, String> {
        loop {
            match tokio::time::timeout(quiet, self.eventloop.poll()).await {
                Err(_) => return Ok(None),
                Ok(Ok(Event::Incoming(p))) => return Ok(Some(p)),
                Ok(Ok(Event::Outgoing(_))) => {}
                Ok(Err(e)) => return Err(format!("the broker closed the probe's connection: {e}")),
            }
        }
    }

    async fn wait_for(&mut self, want: impl Fn(&Packet) -> bool) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if let Some(p) = self.next(Duration::from_secs(5)).await?
                && want(&p)
            {
                return Ok(());
            }
        }
        Err("the broker did not answer the probe within 5 s".into())
    }

    async fn close(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.eventloop.poll().await.is_ok() {}
        })
        .await;
    }
}
