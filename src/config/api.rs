//! `[api]`: the operator API's tokens and limits, and the roles a token may have.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but secrets.
    Viewer,
    /// Also acknowledges and resolves alerts and sends commands to vehicles.
    Operator,
    /// Also manages zones, webhooks and tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// `[[api.tokens]]`: tokens that exist as long as the configuration names them.
    pub tokens: Vec<TokenConfig>,
    /// Raw readings (pages, tracks, buckets under a minute) over at most this many hours.
    pub max_raw_range_hours: u32,
    /// Most buckets a telemetry request may span: (to − from) / every.
    pub max_buckets: u32,
    /// Event streams (`/stream`) open at once, in all and per token.
    pub max_streams: usize,
    pub max_streams_per_token: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            tokens: Vec::new(),
            max_raw_range_hours: 24,
            max_buckets: 10_000,
            max_streams: 256,
            max_streams_per_token: 8,
        }
    }
}

/// Tokens anyone would try first, and the placeholders of the example configuration: refused
/// in clear and as their digest, whatever their length.
const WEAK_TOKENS: &[&str] = &[
    "",
    "test",
    "testing",
    "admin",
    "administrator",
    "password",
    "passw0rd",
    "password1",
    "changeme",
    "change-me",
    "secret",
    "token",
    "default",
    "root",
    "guest",
    "demo",
    "hyfleet",
    "viewer",
    "operator",
    "letmein",
    "qwerty",
    "123456",
    "12345678",
    "1234567890",
    "<openssl rand -hex 32>",
    "a-long-random-string-from-your-secret-store",
];

/// Whether `digest` is the SHA-256 of a well-known weak token (compared case-insensitively
/// for tokens given in clear, exactly for digests).
fn is_weak(digest: &[u8; 32]) -> bool {
    WEAK_TOKENS.iter().any(|w| sha256(w) == *digest)
}

/// One configured token: `token` in clear (hashed at load), or its `token_sha256` in hex.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_sha256: Option<String>,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "token_sha256",
                &self.token_sha256.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Shortest accepted token in clear: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

impl TokenConfig {
    pub fn digest(&self) -> Result<[u8; 32], String> {
        match (&self.token, &self.token_sha256) {
            (Some(t), None) => Ok(sha256(t)),
            (None, Some(h)) => parse_hex32(h).ok_or_else(|| "must be 64 hex digits".to_owned()),
            _ => Err("give exactly one of `token` and `token_sha256`".to_owned()),
        }
    }
}

impl ApiConfig {
    /// `Err((option, message))` names the option below `api.` that is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut names = std::collections::HashSet::new();
        for (n, t) in self.tokens.iter().enumerate() {
            let at = |f: &str| format!("tokens[{n}].{f}");
            if !valid_name(&t.name) {
                return Err((at("name"), NAME_RULE.into()));
            }
            if !names.insert(t.name.as_str()) {
                return Err((at("name"), format!("`{}` is used twice", t.name)));
            }
            if let Some(tok) = &t.token
                && tok.len() < MIN_TOKEN_LEN
            {
                return Err((
                    at("token"),
                    format!("must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
            let field = if t.token.is_some() {
                "token"
            } else {
                "token_sha256"
            };
            let digest = t.digest().map_err(|m| (at(field), m))?;
            let weak_in_clear = t
                .token
                .as_ref()
                .is_some_and(|tok| is_weak(&sha256(&tok.to_ascii_lowercase())));
            if weak_in_clear || is_weak(&digest) {
                return Err((
                    at(field),
                    "is a well-known weak token (such as \"test\", \"admin\" or \"changeme\"): \
                     make one with `openssl rand -hex 32` and configure its `sha256sum`"
                        .to_owned(),
                ));
            }
        }
        if self.max_raw_range_hours == 0 {
            return Err(("max_raw_range_hours".into(), "must be at least 1".into()));
        }
        if self.max_buckets == 0 {
            return Err(("max_buckets".into(), "must be at least 1".into()));
        }
        if self.max_streams_per_token == 0 || self.max_streams_per_token > self.max_streams {
            return Err((
                "max_streams_per_token".into(),
                "must be at least 1 and at most max_streams".into(),
            ));
        }
        Ok(())
    }
}

pub const NAME_RULE: &str = "must be 1–64 of A-Z a-z 0-9 _ - .";

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_hex32(h: &str) -> Option<[u8; 32]> {
    let h = h.trim();
    if h.len() != 64 || !h.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A fresh random token: two v4 UUIDs, 244 random bits from a CSPRNG seeded by the OS,
/// prefixed so that secret scanners recognise it.
pub fn new_token() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("hyf_{}{}", a.simple(), b.simple())
}
