//! `/tokens`: API tokens an admin creates. The token is returned once, at creation; only its
//! SHA-256 digest is stored.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::{Caller, NAME_RULE, Role, new_token, sha256, valid_name};
use super::extract::{J, P};
use super::{Api, Problem};

#[derive(Serialize)]
pub struct TokenView {
    /// Absent for tokens named in the configuration.
    pub id: Option<i64>,
    pub name: String,
    pub role: Role,
    /// `config` or `api`.
    pub source: &'static str,
    pub created_at: Option<DateTime<Utc>>,
    pub created_by: Option<String>,
}

pub(super) async fn list(State(api): State<Api>) -> Result<impl IntoResponse, Problem> {
    let mut items: Vec<TokenView> = api
        .tokens
        .configured_list()
        .map(|(name, role)| TokenView {
            id: None,
            name: name.to_owned(),
            role,
            source: "config",
            created_at: None,
            created_by: None,
        })
        .collect();
    let client = api.app.pool.get().await?;
    let rows = client
        .query(
            "SELECT id, name, role, created_at, created_by FROM api_tokens ORDER BY id",
            &[],
        )
        .await?;
    items.extend(rows.iter().filter_map(|r| {
        Some(TokenView {
            id: Some(r.get(0)),
            name: r.get(1),
            role: Role::parse(r.get(2))?,
            source: "api",
            created_at: Some(r.get(3)),
            created_by: Some(r.get(4)),
        })
    }));
    Ok(Json(serde_json::json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    name: String,
    role: Role,
}

#[derive(Serialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub view: TokenView,
    /// Shown this once: keep it, it cannot be read back.
    pub token: String,
}

pub(super) async fn create(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    J(req): J<NewToken>,
) -> Result<impl IntoResponse, Problem> {
    if !valid_name(&req.name) {
        return Err(Problem::bad_request(format!("name {NAME_RULE}")));
    }
    if api.tokens.configured_list().any(|(n, _)| n == req.name) {
        return Err(Problem::conflict(format!(
            "a configured token is named `{}`",
            req.name
        )));
    }
    let token = new_token();
    let digest = sha256(&token);
    let client = api.app.pool.get().await?;
    let row = client
        .query_opt(
            "INSERT INTO api_tokens (name, role, token_sha256, created_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING RETURNING id, created_at",
            &[
                &req.name,
                &req.role.as_str(),
                &digest.as_slice(),
                &caller.name,
            ],
        )
        .await?
        .ok_or_else(|| Problem::conflict(format!("a token named `{}` exists", req.name)))?;
    tracing::info!(name = %req.name, role = req.role.as_str(), by = %caller.name, "API token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            view: TokenView {
                id: Some(row.get(0)),
                name: req.name,
                role: req.role,
                source: "api",
                created_at: Some(row.get(1)),
                created_by: Some(caller.name),
            },
            token,
        }),
    ))
}

pub(super) async fn delete(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    P(raw): P<String>,
) -> Result<impl IntoResponse, Problem> {
    let id: i64 = raw
        .parse()
        .map_err(|_| Problem::bad_request(format!("`{raw}` is not a token id")))?;
    let client = api.app.pool.get().await?;
    let n = client
        .execute("DELETE FROM api_tokens WHERE id = $1", &[&id])
        .await?;
    if n == 0 {
        return Err(Problem::not_found(format!("no token {id}")));
    }
    // Its open event streams end now; other instances' within `stream::RECHECK`.
    let _ = api.revoked.send(id);
    tracing::info!(token = id, by = %caller.name, "API token deleted");
    Ok(StatusCode::NO_CONTENT)
}
