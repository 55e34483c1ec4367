//! The `[nats]` section: take telemetry from a NATS JetStream stream instead of an MQTT
//! subscription. Devices still publish MQTT, to nats-server's MQTT listener, which turns
//! `hyfleet/v1/bike/XY-B0001/telemetry` into the subject `hyfleet.v1.bike.XY-B0001.telemetry`;
//! the stream captures those subjects and every instance pulls from one durable consumer.

use std::time::Duration;

use serde::Deserialize;

/// A user name and its password.
pub type Login = (String, String);

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://[user:password@]host:port`, several separated by commas (the cluster's nodes).
    /// Unset: ingest subscribes over MQTT (`[mqtt]`).
    pub url: Option<String>,
    /// The stream that captures `{topic_root with '/' as '.'}.>`; created if missing.
    pub stream: String,
    /// The durable pull consumer every instance shares.
    pub consumer: String,
    /// Copies of each message the stream keeps (1, or 3 on a cluster of three and more): what
    /// a device's reading survives once the stream stored it.
    pub replicas: usize,
    /// Kept at most this long when no instance takes it (an outage of hyfleet's).
    pub max_age_hours: u64,
    /// The stream's cap on disk; past it the oldest messages are dropped.
    pub max_bytes: i64,
    /// Messages handed to instances and not yet acknowledged, over all instances: the
    /// consumer stops delivering at this many. At least the instances' windows together.
    pub max_ack_pending: i64,
    /// A message handed out and not acknowledged within this is handed out again (to any
    /// instance): longer than a batch's commit takes, shorter than a restart.
    pub ack_wait_secs: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: None,
            stream: "HYFLEET".into(),
            consumer: "hyfleet-ingest".into(),
            replicas: 1,
            max_age_hours: 7 * 24,
            max_bytes: 8 << 30,
            max_ack_pending: 120_000,
            ack_wait_secs: 30,
        }
    }
}

impl NatsConfig {
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }

    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_hours * 3600)
    }

    /// The nodes to connect to, as `async-nats` takes them, and the login if one is given.
    pub fn servers(&self) -> Result<(Vec<String>, Option<Login>), String> {
        let url = self.url.as_deref().unwrap_or_default();
        let mut servers = Vec::new();
        let mut login = None;
        for part in url.split(',').map(str::trim) {
            let rest = part
                .strip_prefix("nats://")
                // Not echoed: the URL may carry a password.
                .ok_or("is not a nats:// URL (nats://[user:password@]host:port[,host:port…])")?;
            let (given, hostport) = super::split_login(rest.trim_end_matches('/'));
            login = given.or(login);
            if hostport.is_empty() || hostport.starts_with(':') {
                return Err("a node's host is empty".into());
            }
            servers.push(format!("nats://{hostport}"));
        }
        Ok((servers, login))
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let bad = |o: &str, m: &str| Err((o.to_owned(), m.to_owned()));
        if self.url.is_none() {
            return Ok(());
        }
        if let Err(e) = self.servers() {
            return Err(("url".into(), e));
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.stream) {
            return bad("stream", "must be a name of letters, digits, '-' and '_'");
        }
        if !name_ok(&self.consumer) {
            return bad("consumer", "must be a name of letters, digits, '-' and '_'");
        }
        if !(1..=5).contains(&self.replicas) {
            return bad("replicas", "must be between 1 and 5 (JetStream's limit)");
        }
        if self.max_age_hours == 0 {
            return bad("max_age_hours", "the stream must keep at least an hour");
        }
        if self.max_bytes < 1 << 20 {
            return bad("max_bytes", "the stream must keep at least 1 MiB");
        }
        if self.max_ack_pending < 1 {
            return bad("max_ack_pending", "must be at least 1");
        }
        if self.ack_wait_secs < 5 {
            return bad(
                "ack_wait_secs",
                "must be at least 5: a batch's commit must fit in it",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::NatsConfig;

    #[test]
    fn urls_of_a_cluster_give_each_node_and_one_login() {
        let c = NatsConfig {
            url: Some("nats://ingest:s3cret@n1:4222, nats://n2:4222,nats://n3:4222/".into()),
            ..NatsConfig::default()
        };
        let (servers, login) = c.servers().unwrap();
        assert_eq!(
            servers,
            ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
        );
        assert_eq!(login, Some(("ingest".into(), "s3cret".into())));
        let bad = NatsConfig {
            url: Some("mqtt://n1:1883".into()),
            ..NatsConfig::default()
        };
        let (option, message) = bad.validate().unwrap_err();
        assert_eq!(option, "url");
        assert!(!message.contains("n1"), "{message}");
        // Each limit is named as itself.
        let small = NatsConfig {
            url: Some("nats://n1:4222".into()),
            max_bytes: 1000,
            ..NatsConfig::default()
        };
        assert_eq!(small.validate().unwrap_err().0, "max_bytes");
        let short = NatsConfig {
            url: Some("nats://n1:4222".into()),
            max_age_hours: 0,
            ..NatsConfig::default()
        };
        assert_eq!(short.validate().unwrap_err().0, "max_age_hours");
    }
}
