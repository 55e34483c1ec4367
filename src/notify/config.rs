//! The `[notify]` section and the `[[webhooks]]` declared in configuration.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::domain::AlertEventType;

/// How a webhook's messages are shaped and signed (docs/alerts.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// CloudEvents 1.0 body, Standard Webhooks headers and signature.
    #[default]
    Generic,
    DingTalk,
    WeCom,
    Feishu,
    Slack,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Generic,
        Format::DingTalk,
        Format::WeCom,
        Format::Feishu,
        Format::Slack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Generic => "generic",
            Format::DingTalk => "dingtalk",
            Format::WeCom => "wecom",
            Format::Feishu => "feishu",
            Format::Slack => "slack",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Format::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Chat robots get readable messages and, past their rate limit, digests.
    pub fn is_chat(self) -> bool {
        self != Format::Generic
    }

    /// The platforms' documented limits: about 20 messages a minute per robot, Feishu 100.
    pub fn default_rate_per_minute(self) -> Option<u32> {
        match self {
            Format::Generic => None,
            Format::DingTalk | Format::WeCom | Format::Slack => Some(20),
            Format::Feishu => Some(100),
        }
    }

    /// Whether the format has a signing scheme that uses a shared secret.
    pub fn takes_secret(self) -> bool {
        matches!(self, Format::Generic | Format::DingTalk | Format::Feishu)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Webhook URLs into loopback, private or link-local networks are refused unless set.
    pub allow_private_networks: bool,
    /// A delivery still failing this long after its first attempt is given up (marked failed).
    pub max_retry_hours: u32,
    /// First retry delay; each later one doubles, up to `retry_max_interval_secs`, with full jitter.
    pub retry_initial_secs: u64,
    pub retry_max_interval_secs: u64,
    /// Base of the links in chat messages (`{dashboard_url}/#/alerts/{id}`).
    pub dashboard_url: String,
    /// CloudEvents `source`: keep it the same on every instance of one fleet, since receivers
    /// deduplicate by (source, id).
    pub source: String,
    pub poll_interval_ms: u64,
    pub http_timeout_secs: u64,
    /// Webhooks delivered to at the same time (each worker holds one database connection).
    pub concurrency: usize,
    /// Most deliveries one worker takes for one webhook in one go.
    pub batch_size: usize,
    /// The language of chat messages: rule, severity and event names and the field labels.
    pub language: super::labels::Language,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            max_retry_hours: 72,
            retry_initial_secs: 5,
            retry_max_interval_secs: 3600,
            dashboard_url: "http://127.0.0.1:8080".into(),
            source: "/hyfleet".into(),
            poll_interval_ms: 1000,
            http_timeout_secs: 10,
            concurrency: 2,
            batch_size: 100,
            language: Default::default(),
        }
    }
}

const MAX_RETRY_HOURS: u32 = 366 * 24;
const MAX_RETRY_INTERVAL_SECS: u64 = 24 * 3600;
/// Above any chat platform's limit, and within the database's integer.
const MAX_RATE_PER_MINUTE: u32 = 10_000;
/// Shortest signing key accepted: 128 bits, as Standard Webhooks asks (its own are 24–64 bytes).
pub const MIN_SECRET_BYTES: usize = 16;

impl NotifyConfig {
    /// `Err((option, message))` names the option below `notify.` that is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |o: &str, m: &str| Err((o.to_owned(), m.to_owned()));
        // Upper bounds keep the worker's date arithmetic far from chrono's limits.
        if !(1..=MAX_RETRY_HOURS).contains(&self.max_retry_hours) {
            return err("max_retry_hours", "must be between 1 and 8760 (a year)");
        }
        if self.retry_max_interval_secs > MAX_RETRY_INTERVAL_SECS {
            return err("retry_max_interval_secs", "must be at most 86400 (a day)");
        }
        if self.retry_initial_secs == 0 || self.retry_max_interval_secs < self.retry_initial_secs {
            return err(
                "retry_initial_secs",
                "must be at least 1 and at most retry_max_interval_secs",
            );
        }
        if !(1..=60_000).contains(&self.poll_interval_ms) {
            return err("poll_interval_ms", "must be between 1 and 60000");
        }
        if !(1..=300).contains(&self.http_timeout_secs) {
            return err("http_timeout_secs", "must be between 1 and 300");
        }
        if !(1..=64).contains(&self.concurrency) {
            return err("concurrency", "must be between 1 and 64");
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return err("batch_size", "must be between 1 and 10000");
        }
        match reqwest::Url::parse(&self.dashboard_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return err("dashboard_url", "must be an http(s) URL"),
        }
        if self.source.is_empty() {
            return err("source", "must not be empty");
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.http_timeout_secs)
    }
}

/// One `[[webhooks]]` entry. `Debug` hides the secret and the URL's query, which for chat
/// robots holds the access token.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub url: String,
    /// Standard Webhooks form `whsec_<base64>` or a plain string (DingTalk `SEC…`, Feishu).
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default = "all_events")]
    pub events: Vec<AlertEventType>,
    #[serde(default)]
    pub format: Format,
    /// Messages per rolling minute; defaults per format.
    #[serde(default)]
    pub rate_per_minute: Option<u32>,
}

fn all_events() -> Vec<AlertEventType> {
    AlertEventType::ALL.to_vec()
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &crate::notify::redact_url(&self.url, self.format))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("events", &self.events)
            .field("format", &self.format)
            .field("rate_per_minute", &self.rate_per_minute)
            .finish()
    }
}

impl WebhookConfig {
    /// `Err((option, message))` names the option of this webhook that is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        validate_webhook(
            &self.name,
            &self.url,
            self.secret.as_deref(),
            &self.events,
            self.format,
            self.rate_per_minute,
        )
    }

    pub fn effective_rate(&self) -> Option<u32> {
        self.rate_per_minute
            .or_else(|| self.format.default_rate_per_minute())
    }
}

/// The checks shared by configured webhooks and those created through the API; the network
/// check needs DNS and lives in [`crate::notify::check_url`].
pub(crate) fn validate_webhook(
    name: &str,
    url: &str,
    secret: Option<&str>,
    events: &[AlertEventType],
    format: Format,
    rate_per_minute: Option<u32>,
) -> Result<(), (String, String)> {
    let err = |o: &str, m: String| Err((o.to_owned(), m));
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !name_ok {
        return err("name", "must be 1–64 of A-Z a-z 0-9 _ - .".into());
    }
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(_) => return err("url", "must be an http or https URL with a host".into()),
        Err(e) => return err("url", format!("is not a URL: {e}")),
    }
    if events.is_empty() {
        return err("events", "must name at least one event type".into());
    }
    if rate_per_minute.is_some_and(|r| !(1..=MAX_RATE_PER_MINUTE).contains(&r)) {
        return err("rate_per_minute", "must be between 1 and 10000".into());
    }
    match (secret.filter(|s| !s.is_empty()), format) {
        (None, Format::Generic) => {
            return err(
                "secret",
                "is required for the generic format (Standard Webhooks signature)".into(),
            );
        }
        (Some(_), f) if !f.takes_secret() => {
            return err(
                "secret",
                format!(
                    "{} robots are not signed: their key is part of the URL",
                    f.as_str()
                ),
            );
        }
        (Some(s), _) => check_secret(s).map_err(|m| ("secret".to_owned(), m))?,
        (None, _) => {}
    }
    Ok(())
}

/// A signing secret good enough to keep: it decodes, and its key has at least
/// [`MIN_SECRET_BYTES`] bytes, since a short one can be found by trying. Configured webhooks and
/// `POST /webhooks` both go through here.
pub fn check_secret(secret: &str) -> Result<(), String> {
    let key = secret_key(secret)?;
    if key.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "must be at least {MIN_SECRET_BYTES} bytes (after whsec_, of the decoded key); this one has {}",
            key.len()
        ));
    }
    Ok(())
}

/// The HMAC key of a secret: the bytes after `whsec_` base64-decoded, else the raw bytes.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => {
            let key = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "after whsec_ must come base64".to_owned())?;
            if key.is_empty() {
                return Err("whsec_ secret is empty".into());
            }
            Ok(key)
        }
        None => Ok(secret.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(format: Format, secret: Option<&str>) -> WebhookConfig {
        WebhookConfig {
            name: "ops".into(),
            url: "https://example.com/hook?access_token=abc".into(),
            secret: secret.map(str::to_owned),
            events: all_events(),
            format,
            rate_per_minute: None,
        }
    }

    #[test]
    fn generic_needs_a_valid_secret() {
        assert_eq!(
            hook(Format::Generic, None).validate().unwrap_err().0,
            "secret"
        );
        assert!(hook(Format::Generic, Some("whsec_!!")).validate().is_err());
        // "secret-signing-key" and "sixteen bytes!!!"
        assert!(
            hook(Format::Generic, Some("whsec_c2VjcmV0LXNpZ25pbmcta2V5"))
                .validate()
                .is_ok()
        );
        assert!(
            hook(Format::Generic, Some("whsec_c2l4dGVlbiBieXRlcyEhIQ=="))
                .validate()
                .is_ok()
        );
        assert!(
            hook(Format::Generic, Some("plain-secret-of-24-bytes"))
                .validate()
                .is_ok()
        );
        assert_eq!(secret_key("whsec_c2VjcmV0").unwrap(), b"secret");
        assert_eq!(secret_key("SECabc").unwrap(), b"SECabc");
    }

    #[test]
    fn unsigned_robots_refuse_a_secret() {
        assert!(hook(Format::WeCom, Some("x")).validate().is_err());
        assert!(hook(Format::Slack, Some("x")).validate().is_err());
        assert!(hook(Format::WeCom, None).validate().is_ok());
        assert!(
            hook(Format::DingTalk, Some("SEC0123456789abcdef"))
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn short_secrets_are_refused_by_name() {
        // "fifteen bytes!!": one short, whatever its text form's length.
        for (format, s) in [
            (Format::Generic, "whsec_ZmlmdGVlbiBieXRlcyEh"),
            (Format::Generic, "whsec_c2VjcmV0"),
            (Format::Generic, "fifteen bytes!!"),
            (Format::DingTalk, "SECxyz"),
            (Format::Feishu, "abc"),
        ] {
            let (field, msg) = hook(format, Some(s)).validate().unwrap_err();
            assert_eq!(field, "secret", "{s}");
            assert!(msg.contains("16 bytes"), "{s}: {msg}");
        }
        assert!(check_secret("sixteen bytes!!!").is_ok());
    }

    #[test]
    fn numbers_that_would_overflow_are_refused() {
        for (set, field) in [
            (
                (|c: &mut NotifyConfig| c.max_retry_hours = u32::MAX) as fn(&mut NotifyConfig),
                "max_retry_hours",
            ),
            (
                |c| c.retry_max_interval_secs = u64::MAX,
                "retry_max_interval_secs",
            ),
            (
                |c| {
                    c.retry_initial_secs = 10_000_000_000_000_000;
                    c.retry_max_interval_secs = 10_000_000_000_000_000;
                },
                "retry_max_interval_secs",
            ),
            (|c| c.batch_size = usize::MAX, "batch_size"),
            (|c| c.poll_interval_ms = u64::MAX, "poll_interval_ms"),
        ] {
            let mut c = NotifyConfig::default();
            set(&mut c);
            assert_eq!(c.validate().unwrap_err().0, field);
        }
        let mut h = hook(Format::DingTalk, None);
        h.rate_per_minute = Some(u32::MAX);
        assert_eq!(h.validate().unwrap_err().0, "rate_per_minute");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut h = hook(Format::DingTalk, None);
        h.url = "ftp://example.com".into();
        assert_eq!(h.validate().unwrap_err().0, "url");
        let mut h = hook(Format::DingTalk, None);
        h.events.clear();
        assert_eq!(h.validate().unwrap_err().0, "events");
        let mut h = hook(Format::DingTalk, None);
        h.name = "has space".into();
        assert_eq!(h.validate().unwrap_err().0, "name");
        let mut h = hook(Format::DingTalk, None);
        h.rate_per_minute = Some(0);
        assert_eq!(h.validate().unwrap_err().0, "rate_per_minute");
    }

    #[test]
    fn debug_hides_secret_and_token() {
        let s = format!(
            "{:?}",
            hook(Format::DingTalk, Some("SECtopsecret-0123456789"))
        );
        assert!(!s.contains("topsecret") && !s.contains("abc"), "{s}");
    }

    #[test]
    fn parses_from_toml_with_defaults() {
        let w: WebhookConfig =
            toml::from_str("name = \"d\"\nurl = \"https://x.test/\"\nformat = \"dingtalk\"")
                .unwrap();
        assert_eq!(w.events.len(), 5, "every event, alert.deescalated too");
        assert_eq!(w.effective_rate(), Some(20));
        assert!(NotifyConfig::default().validate().is_ok());
    }
}
