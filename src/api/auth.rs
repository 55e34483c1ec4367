//! Bearer tokens and roles. Tokens are only ever held as SHA-256 digests: the configured ones
//! are hashed when the configuration is loaded, the ones an admin creates are stored hashed in
//! `api_tokens`. A presented token is hashed and compared in constant time.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{Api, Problem};
pub use crate::config::api::{
    ApiConfig, NAME_RULE, Role, TokenConfig, new_token, sha256, valid_name,
};

/// Who is calling, as the handlers see it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The `api_tokens` row of a token created through the API; None for configured ones.
    pub token_id: Option<i64>,
}

/// The configured tokens, hashed.
pub struct Tokens {
    configured: Vec<(String, Role, [u8; 32])>,
}

impl Tokens {
    pub fn from_config(c: &ApiConfig) -> Tokens {
        let configured: Vec<_> = c
            .tokens
            .iter()
            .filter_map(|t| Some((t.name.clone(), t.role, t.digest().ok()?)))
            .collect();
        if configured.is_empty() {
            tracing::warn!(
                "no API token is configured ([[api.tokens]]): /api/v1 answers 401 until an \
                 admin token exists"
            );
        }
        Tokens { configured }
    }

    /// Every configured digest is compared, match or not, so the time taken does not say
    /// which one (or how much of one) matched.
    fn configured(&self, digest: &[u8; 32]) -> Option<Caller> {
        let mut found = None;
        for (name, role, d) in &self.configured {
            if bool::from(d.ct_eq(digest)) {
                found = Some(Caller {
                    name: name.clone(),
                    role: *role,
                    token_id: None,
                });
            }
        }
        found
    }

    pub fn configured_list(&self) -> impl Iterator<Item = (&str, Role)> {
        self.configured.iter().map(|(n, r, _)| (n.as_str(), *r))
    }
}

/// The bearer token of a request; `?access_token=` too on the SSE stream, since browsers'
/// EventSource cannot set headers.
fn presented(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    if req.uri().path().ends_with("/stream") {
        let q = req.uri().query()?;
        return q.split('&').find_map(|kv| {
            let v = kv.strip_prefix("access_token=")?;
            Some(percent_decode(v))
        });
    }
    None
}

fn percent_decode(s: &str) -> String {
    let hexval = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hexval(b[i + 1]), hexval(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn lookup(api: &Api, token: &str) -> Result<Option<Caller>, Problem> {
    let digest = sha256(token);
    if let Some(c) = api.tokens.configured(&digest) {
        return Ok(Some(c));
    }
    // Looked up by digest: what an index lookup's timing could reveal is about the digest,
    // which an attacker cannot steer towards a real token.
    let client = api.app.pool.get().await?;
    let row = client
        .query_opt(
            "SELECT name, role, token_sha256, id FROM api_tokens WHERE token_sha256 = $1",
            &[&digest.as_slice()],
        )
        .await?;
    Ok(row.and_then(|r| {
        let stored: Vec<u8> = r.get(2);
        let role = Role::parse(r.get(1))?;
        bool::from(stored.as_slice().ct_eq(digest.as_slice())).then(|| Caller {
            name: r.get(0),
            role,
            token_id: Some(r.get(3)),
        })
    }))
}

fn unauthorized(detail: &str) -> Response {
    let mut res =
        Problem::new(axum::http::StatusCode::UNAUTHORIZED, "Unauthorized", detail).into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"hyfleet\""),
    );
    res
}

async fn authorize(api: Api, need: Role, mut req: Request, next: Next) -> Response {
    let Some(token) = presented(&req) else {
        return unauthorized("a bearer token is required (Authorization: Bearer <token>)");
    };
    let caller = match lookup(&api, &token).await {
        Ok(Some(c)) => c,
        Ok(None) => return unauthorized("the token is not valid"),
        Err(p) => return p.into_response(),
    };
    if caller.role < need {
        return Problem::new(
            axum::http::StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "this needs the {} role; the token `{}` has {}",
                need.as_str(),
                caller.name,
                caller.role.as_str()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

pub(super) async fn viewer(State(api): State<Api>, req: Request, next: Next) -> Response {
    authorize(api, Role::Viewer, req, next).await
}

pub(super) async fn operator(State(api): State<Api>, req: Request, next: Next) -> Response {
    authorize(api, Role::Operator, req, next).await
}

pub(super) async fn admin(State(api): State<Api>, req: Request, next: Next) -> Response {
    authorize(api, Role::Admin, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_tokens_are_found_by_digest_only() {
        let c = ApiConfig {
            tokens: vec![
                TokenConfig {
                    name: "ops".into(),
                    role: Role::Operator,
                    token: Some("operator-token-0123".into()),
                    token_sha256: None,
                },
                TokenConfig {
                    name: "root".into(),
                    role: Role::Admin,
                    token: None,
                    token_sha256: Some(hex(&sha256("admin-token-0123456"))),
                },
            ],
            ..ApiConfig::default()
        };
        c.validate().unwrap();
        let t = Tokens::from_config(&c);
        let ops = t.configured(&sha256("operator-token-0123")).unwrap();
        assert_eq!((ops.name.as_str(), ops.role), ("ops", Role::Operator));
        let root = t.configured(&sha256("admin-token-0123456")).unwrap();
        assert_eq!(root.role, Role::Admin);
        assert!(t.configured(&sha256("operator-token-012")).is_none());
    }

    #[test]
    fn bad_token_configuration_names_the_option() {
        let bad = |t: TokenConfig| {
            ApiConfig {
                tokens: vec![t],
                ..ApiConfig::default()
            }
            .validate()
            .unwrap_err()
            .0
        };
        let base = TokenConfig {
            name: "a".into(),
            role: Role::Viewer,
            token: None,
            token_sha256: None,
        };
        assert_eq!(bad(base.clone()), "tokens[0].token_sha256");
        let short = TokenConfig {
            token: Some("short".into()),
            ..base.clone()
        };
        assert_eq!(bad(short), "tokens[0].token");
        let hexbad = TokenConfig {
            token_sha256: Some("zz".into()),
            ..base.clone()
        };
        assert_eq!(bad(hexbad), "tokens[0].token_sha256");
        let name = TokenConfig {
            name: "no spaces".into(),
            token: Some("long-enough-token-here".into()),
            ..base
        };
        assert_eq!(bad(name), "tokens[0].name");
    }

    #[test]
    fn well_known_weak_tokens_are_refused_in_clear_and_as_digests() {
        let with = |token: Option<&str>, digest: Option<String>| ApiConfig {
            tokens: vec![TokenConfig {
                name: "a".into(),
                role: Role::Admin,
                token: token.map(str::to_owned),
                token_sha256: digest,
            }],
            ..ApiConfig::default()
        };
        // The digest the example configuration used to carry: SHA-256 of "test".
        let test = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        for weak in [
            with(None, Some(test.into())),
            with(None, Some(hex(&sha256("admin")))),
            with(None, Some(hex(&sha256("")))),
            with(None, Some(hex(&sha256("changeme")).to_uppercase())),
            with(Some("a-long-random-string-from-your-secret-store"), None),
            with(Some("<openssl rand -hex 32>"), None),
        ] {
            let (option, message) = weak.validate().unwrap_err();
            assert!(option.starts_with("tokens[0].token"), "{option}");
            assert!(message.contains("weak"), "{message}");
        }
        let strong = "4c1f7e0b9a2d6e8f3b5a7c9d1e2f4a6b";
        with(Some(strong), None).validate().unwrap();
        with(None, Some(hex(&sha256(strong)))).validate().unwrap();
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let t = TokenConfig {
            name: "a".into(),
            role: Role::Viewer,
            token: Some("very-secret-token-value".into()),
            token_sha256: None,
        };
        assert!(!format!("{t:?}").contains("very-secret"));
    }

    #[test]
    fn roles_are_ordered_and_tokens_are_fresh() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("hyf_") && a.len() == 68);
        assert_eq!(percent_decode("a%2Bb+c"), "a+b c");
    }

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }
}
