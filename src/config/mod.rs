//! One configuration tree: a TOML file, then environment overrides, then validation.
//! Every option has a default that works on a developer machine; `hyfleet.example.toml`
//! documents each one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod api;
pub mod dashboard;
pub mod gbfs;
pub mod nats;

use crate::domain::VehicleKind;
pub use crate::domain::{Profile, Profiles};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub mqtt: MqttConfig,
    pub nats: nats::NatsConfig,
    pub ingest: IngestConfig,
    pub store: StoreConfig,
    pub http: HttpConfig,
    pub geo: crate::geo::GeoConfig,
    pub profiles: Profiles,
    pub rules: crate::rules::RulesConfig,
    pub webhooks: Vec<crate::notify::WebhookConfig>,
    pub notify: crate::notify::NotifyConfig,
    pub api: api::ApiConfig,
    pub gbfs: gbfs::GbfsConfig,
    pub dashboard: dashboard::DashboardConfig,
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user[:password]@host:port/dbname`; the database is created if missing.
    pub url: String,
    /// Connections for the API (operators' requests, token look-ups).
    /// Ingest writers, the webhook worker and upkeep hold connections of their own.
    pub pool_size: usize,
    /// Connections for the public GBFS feeds, apart from the operators': anonymous readers
    /// cannot take the API's.
    pub public_pool_size: usize,
    /// An API request waits this long for one of those connections, then gets a 503.
    pub pool_wait_ms: u64,
    /// An API statement running longer than this is cancelled (503).
    pub statement_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/hyfleet".into(),
            pool_size: 4,
            public_pool_size: 2,
            pool_wait_ms: 2000,
            statement_timeout_ms: 10_000,
        }
    }
}

/// The URL's password stays out of any `{:?}` of the configuration.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::store::redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("public_pool_size", &self.public_pool_size)
            .field("pool_wait_ms", &self.pool_wait_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .finish()
    }
}

impl DatabaseConfig {
    pub fn pool_wait(&self) -> Duration {
        Duration::from_millis(self.pool_wait_ms)
    }

    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]`.
    pub url: String,
    /// Fixed client id: the broker keeps this session's queue while hyfleet is away.
    pub client_id: String,
    pub topic_root: String,
    /// When set, subscribe through `$share/{group}/...` so that several instances split the load.
    pub shared_group: Option<String>,
    pub keep_alive_secs: u64,
    /// On every stop, leave the shared subscription and end the broker session (the instance
    /// does not come back under this client id); otherwise only on SIGUSR1 or `serve --retire`.
    pub retire_on_shutdown: bool,
    /// The broker login of the API's command publisher, `mqtt://user:password@host:port`;
    /// unset: `url`'s. It must be another user than ingest's: a broker that pins client ids
    /// to users (the shipped Mosquitto) would otherwise end ingest's session at each command.
    /// It may name several listeners, comma-separated (a NATS cluster's nodes): the publisher
    /// moves to the next when it loses the one it is on.
    pub commands_url: Option<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "hyfleet-ingest".into(),
            topic_root: "hyfleet/v1".into(),
            shared_group: None,
            keep_alive_secs: 30,
            retire_on_shutdown: false,
            commands_url: None,
        }
    }
}

/// A parsed `mqtt://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
}

impl MqttConfig {
    pub fn endpoint(&self) -> Result<MqttEndpoint, String> {
        parse_mqtt_url(&self.url)
    }

    /// Where and as whom the API publishes commands, in the order it tries them.
    pub fn commands_endpoints(&self) -> Result<Vec<MqttEndpoint>, String> {
        match &self.commands_url {
            Some(list) => list.split(',').map(|u| parse_mqtt_url(u.trim())).collect(),
            None => Ok(vec![parse_mqtt_url(&self.url)?]),
        }
    }
}

/// `user:password@host:port` → the login, if any, and `host:port`.
fn split_login(rest: &str) -> (Option<(String, String)>, &str) {
    match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (Some((user.to_owned(), pass.to_owned())), hostport)
        }
        None => (None, rest),
    }
}

pub fn parse_mqtt_url(url: &str) -> Result<MqttEndpoint, String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        // Not echoed: the URL may carry a password.
        .ok_or_else(|| "is not an mqtt:// URL (mqtt://[user[:password]@]host[:port])".to_owned())?;
    let (credentials, hostport) = split_login(rest.trim_end_matches('/'));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number"))?,
        ),
        None => (hostport, 1883),
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    Ok(MqttEndpoint {
        host: host.to_owned(),
        port,
        credentials,
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Payloads larger than this are rejected as `too_large` without being parsed.
    pub max_payload_bytes: usize,
    /// A backlog array longer than this is rejected whole as `schema`.
    pub max_batch: usize,
    /// Register an unknown vehicle id on first sight with its kind's profile.
    pub auto_register: bool,
    /// A write batch is committed when it holds this many readings...
    pub batch_max_rows: usize,
    /// ...or once its oldest message has waited this long and its writer is free to take it.
    pub batch_max_age_ms: u64,
    /// Writers, each on its own connection with its own share of the vehicles: commits overlap
    /// so that the broker's inflight window never waits on one commit.
    pub writers: usize,
    /// A reading more than this far in the future is rejected as `clock_skew`.
    pub max_future_secs: i64,
    /// Per-device budget: messages a vehicle may send per minute (a token bucket refilled
    /// evenly); beyond it messages are rejected as `rate_limited`. Kept by each instance for
    /// what it receives.
    pub device_messages_per_minute: u32,
    /// Per-device budget: payload bytes a vehicle may send per minute, as above.
    pub device_bytes_per_minute: u64,
    /// The budget saves up for this many minutes: a device may send that many minutes' worth
    /// at once. It must cover the longest outage the broker's queue covers, because what a
    /// device sent meanwhile arrives all at once when hyfleet is back.
    pub device_burst_minutes: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 64 * 1024,
            max_batch: 1000,
            auto_register: true,
            batch_max_rows: 5000,
            batch_max_age_ms: 50,
            writers: 2,
            max_future_secs: 300,
            // 1 Hz telemetry plus events and statuses is ~70 messages a minute; a firmware
            // that reconnects after a dead zone may send its retries and backlog at once.
            device_messages_per_minute: 600,
            // Covers a full backlog (ingest.max_batch readings of ~230 B) and a minute of
            // live telemetry within the same minute.
            device_bytes_per_minute: 1024 * 1024,
            // The shipped Mosquitto queues 66 minutes of the whole fleet.
            device_burst_minutes: 70,
        }
    }
}

impl IngestConfig {
    pub fn batch_max_age(&self) -> Duration {
        Duration::from_millis(self.batch_max_age_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Raw telemetry older than this is dropped, a daily partition at a time.
    pub raw_retention_days: u32,
    /// Daily partitions created ahead of today.
    pub partitions_ahead_days: u32,
    /// Per-vehicle minute rollups older than this are deleted; at least the raw retention.
    pub minute_rollup_retention_days: u32,
    /// Per-vehicle daily rollups older than this are deleted; at least the minute retention.
    pub day_rollup_retention_days: u32,
    /// A day's raw readings are packed per vehicle and hour (a fraction of the space) once the
    /// day ended this many days (and an hour) ago; at least 1.
    pub pack_after_days: u32,
    /// Vehicle events (rides, refuels, faults) older than this are deleted by the hourly
    /// upkeep.
    pub event_retention_days: u32,
    /// Rejects older than this are deleted by the hourly upkeep.
    pub reject_retention_days: u32,
    /// At most this many rejects are kept per vehicle (and as many again for messages with
    /// no vehicle): the hourly upkeep deletes the oldest beyond it, so that one device's
    /// garbage cannot fill the disk.
    pub rejects_max_per_vehicle: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            raw_retention_days: 30,
            partitions_ahead_days: 3,
            minute_rollup_retention_days: 365,
            day_rollup_retention_days: 3650,
            pack_after_days: 1,
            event_retention_days: 365,
            reject_retention_days: 14,
            rejects_max_per_vehicle: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    /// A request body larger than this is refused with 413 before it is parsed, on every route.
    pub max_body_bytes: usize,
    /// A connection that has not sent a request's complete headers this long after it opened
    /// (or after its previous response) is closed: a slow client cannot hold it forever.
    pub header_read_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            header_read_timeout_secs: 10,
        }
    }
}

impl HttpConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("configuration option `{option}`: {message}")]
    Invalid { option: String, message: String },
}

fn invalid(option: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option: option.into(),
        message: message.into(),
    }
}

impl Config {
    /// The configuration a process starts with: the file named by `path` (or
    /// `HYFLEET_CONFIG`, or none), then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("HYFLEET_CONFIG").map(PathBuf::from));
        let (text, origin) = match &path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?,
                format!("file {}", p.display()),
            ),
            None => (String::new(), "defaults".to_owned()),
        };
        Self::from_toml_and_env(&text, &origin, std::env::vars())
    }

    /// Parse `text`, apply the overrides found in `env`, validate.
    pub fn from_toml_and_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.to_owned(),
                    message: e.to_string(),
                })?;
        for (key, value) in env {
            if let Some(path) = env_override_path(&key) {
                set_path(&mut table, &path, &value)?;
            }
        }
        let config: Config =
            Config::deserialize(table).map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: origin.to_owned(),
                message: e.message().to_owned(),
            })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.mqtt.validate()?;
        self.validate_commands_login()?;
        self.database.validate()?;
        self.http.validate()?;
        self.ingest.validate()?;
        self.store.validate()?;
        self.validate_profiles()?;
        let within = |section: &str, r: Result<(), (String, String)>| {
            r.map_err(|(o, m)| invalid(&format!("{section}{o}"), m))
        };
        within("nats.", self.nats.validate())?;
        if self.nats.url.is_some() && self.mqtt.topic_root.contains(['.', '*', '>', ' ']) {
            return Err(invalid(
                "mqtt.topic_root",
                "must not contain '.', '*', '>' or spaces with nats.url: it becomes a subject",
            ));
        }
        within("geo.", self.geo.validate())?;
        within("rules.", self.rules.validate())?;
        within("notify.", self.notify.validate())?;
        within("api.", self.api.validate())?;
        within("", self.gbfs.validate())?;
        within("dashboard.", self.dashboard.validate())?;
        for (n, w) in self.webhooks.iter().enumerate() {
            within(&format!("webhooks[{n}]."), w.validate())?;
        }
        Ok(())
    }

    fn validate_profiles(&self) -> Result<(), ConfigError> {
        for kind in VehicleKind::ALL {
            let p = self.profiles.get(kind);
            let name = kind.as_str();
            for (field, v) in [
                ("tank_g", p.tank_g),
                ("range_km", p.range_km),
                ("speed_cap_kmh", p.speed_cap_kmh),
                (
                    "nominal_pressure_bar",
                    self.profiles.nominal_pressure_bar(kind),
                ),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(invalid(
                        &format!("profiles.{name}.{field}"),
                        "must be a positive number",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `option` must be at least `min`.
fn at_least(option: &str, value: impl Into<u64>, min: u64) -> Result<(), ConfigError> {
    if value.into() < min {
        return Err(invalid(option, format!("must be at least {min}")));
    }
    Ok(())
}

impl MqttConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = self.endpoint() {
            return Err(invalid("mqtt.url", e));
        }
        let root = &self.topic_root;
        if root.is_empty()
            || root.contains(['+', '#'])
            || root.starts_with('/')
            || root.ends_with('/')
        {
            return Err(invalid(
                "mqtt.topic_root",
                "must be a non-empty topic prefix without wildcards or leading/trailing '/'",
            ));
        }
        if self.client_id.is_empty() {
            return Err(invalid(
                "mqtt.client_id",
                "must be set: a persistent session needs a fixed client id",
            ));
        }
        if let Some(g) = &self.shared_group
            && (g.is_empty() || g.contains(['/', '+', '#']))
        {
            return Err(invalid("mqtt.shared_group", "must be a plain name"));
        }
        Ok(())
    }
}

impl DatabaseConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.starts_with("postgres://") && !self.url.starts_with("postgresql://") {
            return Err(invalid(
                "database.url",
                "must be a postgres:// URL (postgres://user@host:port/dbname)",
            ));
        }
        at_least("database.pool_size", self.pool_size as u64, 1)?;
        at_least("database.public_pool_size", self.public_pool_size as u64, 1)?;
        at_least("database.pool_wait_ms", self.pool_wait_ms, 1)?;
        at_least(
            "database.statement_timeout_ms",
            self.statement_timeout_ms,
            100,
        )
    }
}

impl HttpConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.addr.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.addr",
                format!("`{}` is not host:port", self.addr),
            ));
        }
        at_least("http.max_body_bytes", self.max_body_bytes as u64, 1024)?;
        at_least(
            "http.header_read_timeout_secs",
            self.header_read_timeout_secs,
            1,
        )
    }
}

impl IngestConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        at_least(
            "ingest.max_payload_bytes",
            self.max_payload_bytes as u64,
            256,
        )?;
        at_least("ingest.max_batch", self.max_batch as u64, 1)?;
        at_least("ingest.batch_max_rows", self.batch_max_rows as u64, 1)?;
        if !(1..=16).contains(&self.writers) {
            return Err(invalid("ingest.writers", "must be between 1 and 16"));
        }
        if self.max_future_secs < 0 {
            return Err(invalid("ingest.max_future_secs", "must not be negative"));
        }
        at_least(
            "ingest.device_messages_per_minute",
            self.device_messages_per_minute,
            1,
        )?;
        at_least("ingest.device_burst_minutes", self.device_burst_minutes, 1)?;
        if self.device_bytes_per_minute < self.max_payload_bytes as u64 {
            return Err(invalid(
                "ingest.device_bytes_per_minute",
                "must be at least ingest.max_payload_bytes: a device must be able to send one largest message",
            ));
        }
        Ok(())
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        at_least("store.event_retention_days", self.event_retention_days, 1)?;
        at_least("store.reject_retention_days", self.reject_retention_days, 1)?;
        at_least(
            "store.rejects_max_per_vehicle",
            self.rejects_max_per_vehicle,
            1,
        )?;
        at_least("store.raw_retention_days", self.raw_retention_days, 1)?;
        if self.pack_after_days == 0 {
            return Err(invalid(
                "store.pack_after_days",
                "must be at least 1: today's partition is still being written",
            ));
        }
        if self.minute_rollup_retention_days < self.raw_retention_days {
            return Err(invalid(
                "store.minute_rollup_retention_days",
                "must be at least store.raw_retention_days: rollups outlive the raw data",
            ));
        }
        if self.day_rollup_retention_days < self.minute_rollup_retention_days {
            return Err(invalid(
                "store.day_rollup_retention_days",
                "must be at least store.minute_rollup_retention_days",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The command publisher's login must not be ingest's (see [`MqttConfig::commands_url`]).
    fn validate_commands_login(&self) -> Result<(), ConfigError> {
        let commands = self
            .mqtt
            .commands_endpoints()
            .map_err(|e| invalid("mqtt.commands_url", e))?;
        if self.nats.url.is_some() {
            // Ingest takes from JetStream and holds no MQTT session a command could end.
            return Ok(());
        }
        let ingest = self.mqtt.endpoint().map_err(|e| invalid("mqtt.url", e))?;
        let user = |ep: &MqttEndpoint| ep.credentials.as_ref().map(|(u, _)| u.clone());
        if let Some(u) = user(&ingest)
            && commands.iter().any(|c| user(c).as_ref() == Some(&u))
        {
            return Err(invalid(
                "mqtt.commands_url",
                format!(
                    "must log in as another user than mqtt.url's `{u}`: a broker that pins \
                     client ids to users (the shipped Mosquitto) would end ingest's session \
                     whenever the API sends a command"
                ),
            ));
        }
        Ok(())
    }
}

/// `DATABASE_URL` → `database.url`; `HYFLEET_INGEST__MAX_BATCH` → `ingest.max_batch`.
fn env_override_path(key: &str) -> Option<Vec<String>> {
    let fixed = match key {
        "DATABASE_URL" => Some("database.url"),
        "MQTT_URL" => Some("mqtt.url"),
        "NATS_URL" => Some("nats.url"),
        "HYFLEET_TOPIC_ROOT" => Some("mqtt.topic_root"),
        "HYFLEET_HTTP_ADDR" => Some("http.addr"),
        _ => None,
    };
    if let Some(path) = fixed {
        return Some(path.split('.').map(str::to_owned).collect());
    }
    let rest = key.strip_prefix("HYFLEET_")?;
    if rest == "CONFIG" || !rest.contains("__") {
        return None;
    }
    Some(rest.split("__").map(|s| s.to_ascii_lowercase()).collect())
}

/// Set `path` in `table` to `raw`, read as a TOML value when it is one (numbers, booleans,
/// arrays) and as a string otherwise.
fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), ConfigError> {
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let (last, parents) = path.split_last().expect("override path is never empty");
    let mut cur = table;
    for (depth, key) in parents.iter().enumerate() {
        let entry = cur
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        cur = entry.as_table_mut().ok_or_else(|| {
            invalid(
                &path[..=depth].join("."),
                "is not a section, so it cannot be overridden by key",
            )
        })?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_toml_and_env("", "defaults", env(&[])).unwrap();
        assert_eq!(c.mqtt.topic_root, "hyfleet/v1");
        assert_eq!(c.ingest.max_batch, 1000);
        assert_eq!(c.profiles.bike.tank_g, 50.0);
    }

    #[test]
    fn a_refused_url_is_not_echoed_with_its_password() {
        for (key, value) in [
            ("MQTT_URL", "mqtts://dev:hunter2@broker:8883"),
            ("MQTT_URL", "mqtt://dev:hunter2@:1883"),
            ("DATABASE_URL", "mysql://app:hunter2@db/fleet"),
        ] {
            let e = Config::from_toml_and_env("", "test", env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
        let c = Config::from_toml_and_env(
            "",
            "test",
            env(&[("DATABASE_URL", "postgres://app:hunter2@db/fleet")]),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn environment_overrides_file() {
        let text = "[mqtt]\ntopic_root = \"from/file\"\n[ingest]\nmax_batch = 10\n";
        let c = Config::from_toml_and_env(
            text,
            "test",
            env(&[
                ("HYFLEET_TOPIC_ROOT", "from/env"),
                ("HYFLEET_INGEST__MAX_BATCH", "20"),
                ("HYFLEET_INGEST__AUTO_REGISTER", "false"),
                ("DATABASE_URL", "postgres://x@db:5432/fleet"),
                ("MQTT_URL", "mqtt://u:p@broker:1884"),
                ("HYFLEET_MQTT__COMMANDS_URL", "mqtt://c:q@broker:1884"),
                ("UNRELATED", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.mqtt.topic_root, "from/env");
        assert_eq!(c.ingest.max_batch, 20);
        assert!(!c.ingest.auto_register);
        assert_eq!(c.database.url, "postgres://x@db:5432/fleet");
        let ep = c.mqtt.endpoint().unwrap();
        assert_eq!(ep.host, "broker");
        assert_eq!(ep.port, 1884);
        assert_eq!(ep.credentials, Some(("u".into(), "p".into())));
        let cmd = c.mqtt.commands_endpoints().unwrap().remove(0);
        assert_eq!(cmd.credentials, Some(("c".into(), "q".into())));
    }

    #[test]
    fn the_command_publisher_never_logs_in_as_ingest() {
        for commands in [None, Some("mqtt://u:other@broker:1883")] {
            let mut e = vec![("MQTT_URL", "mqtt://u:p@broker:1883")];
            e.extend(commands.map(|c| ("HYFLEET_MQTT__COMMANDS_URL", c)));
            let err = Config::from_toml_and_env("", "t", env(&e))
                .unwrap_err()
                .to_string();
            assert!(err.contains("mqtt.commands_url"), "{err}");
        }
        // Without logins (a development broker) one URL serves both.
        assert!(Config::from_toml_and_env("", "t", env(&[])).is_ok());
        // Every listener of a list is checked.
        let e = [
            ("MQTT_URL", "mqtt://u:p@broker:1883"),
            (
                "HYFLEET_MQTT__COMMANDS_URL",
                "mqtt://c:q@a:1883, mqtt://u:p@b:1883",
            ),
        ];
        let err = Config::from_toml_and_env("", "t", env(&e))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.commands_url"), "{err}");
    }

    #[test]
    fn commands_url_may_list_several_listeners() {
        let e = [(
            "HYFLEET_MQTT__COMMANDS_URL",
            "mqtt://c:q@nats-1:1883, mqtt://c:q@nats-2:1884,mqtt://c:q@nats-3",
        )];
        let c = Config::from_toml_and_env("", "t", env(&e)).unwrap();
        let at: Vec<(String, u16)> = c
            .mqtt
            .commands_endpoints()
            .unwrap()
            .into_iter()
            .map(|ep| (ep.host, ep.port))
            .collect();
        assert_eq!(
            at,
            [
                ("nats-1".into(), 1883),
                ("nats-2".into(), 1884),
                ("nats-3".into(), 1883)
            ]
        );
        let e = [("HYFLEET_MQTT__COMMANDS_URL", "mqtt://a:1883,http://b")];
        let err = Config::from_toml_and_env("", "t", env(&e))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.commands_url"), "{err}");
    }

    #[test]
    fn bad_values_name_the_option() {
        let err = Config::from_toml_and_env("[ingest]\nmax_batch = 0\n", "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ingest.max_batch"), "{err}");
        let err = Config::from_toml_and_env("", "t", env(&[("MQTT_URL", "http://x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.url"), "{err}");
        let err = Config::from_toml_and_env(
            "[profiles.bike]\ntank_g = -1\nrange_km = 60\nspeed_cap_kmh = 23\n",
            "t",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("profiles.bike.tank_g"), "{err}");
    }

    #[test]
    fn unknown_and_mistyped_options_are_refused() {
        let err = Config::from_toml_and_env("[ingest]\nmax_bach = 3\n", "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_bach"), "{err}");
        let err = Config::from_toml_and_env("[ingest]\nmax_batch = \"many\"\n", "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_batch") || err.contains("invalid type"),
            "{err}"
        );
    }

    #[test]
    fn today_is_never_packed() {
        let err = Config::from_toml_and_env("[store]\npack_after_days = 0\n", "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.pack_after_days"), "{err}");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The documented example is a valid configuration, and its values are the defaults.
    #[test]
    fn example_configuration_loads_and_matches_the_defaults() {
        let text = include_str!("../../hyfleet.example.toml");
        let c = Config::from_toml_and_env(text, "hyfleet.example.toml", Vec::new()).unwrap();
        let d = Config::default();
        assert_eq!(c.database.url, d.database.url);
        assert_eq!(c.database.pool_wait_ms, d.database.pool_wait_ms);
        assert_eq!(c.database.public_pool_size, d.database.public_pool_size);
        assert_eq!(
            c.database.statement_timeout_ms,
            d.database.statement_timeout_ms
        );
        assert_eq!(c.api.max_raw_range_hours, d.api.max_raw_range_hours);
        assert_eq!(c.api.max_buckets, d.api.max_buckets);
        assert_eq!(c.api.max_streams, d.api.max_streams);
        assert_eq!(c.api.max_streams_per_token, d.api.max_streams_per_token);
        assert_eq!(c.mqtt.topic_root, d.mqtt.topic_root);
        assert_eq!(c.ingest.batch_max_rows, d.ingest.batch_max_rows);
        assert_eq!(c.profiles.bike, d.profiles.bike);
        assert_eq!(c.profiles.bus, d.profiles.bus);
        assert_eq!(c.rules.bike, d.rules.bike);
        assert_eq!(c.rules.telemetry_gap, d.rules.telemetry_gap);
        assert_eq!(c.notify.max_retry_hours, d.notify.max_retry_hours);
        assert_eq!(
            c.store.minute_rollup_retention_days,
            d.store.minute_rollup_retention_days
        );
        assert_eq!(
            c.store.day_rollup_retention_days,
            d.store.day_rollup_retention_days
        );
        assert_eq!(c.store.pack_after_days, d.store.pack_after_days);
        assert_eq!(c.gbfs, d.gbfs);
        assert_eq!(c.dashboard, d.dashboard);
        assert_eq!(c.notify.language, d.notify.language);
        assert_eq!(c.http.max_body_bytes, d.http.max_body_bytes);
        assert_eq!(
            c.http.header_read_timeout_secs,
            d.http.header_read_timeout_secs
        );
    }
}
