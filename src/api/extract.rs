//! axum's extractors, with their refusals turned into problem details so that a bad parameter
//! or body gets the same `application/problem+json` as every other error.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::Problem;

/// Query parameters.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| Problem::bad_request(e.body_text()))
    }
}

/// Path parameters.
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e| Problem::bad_request(e.body_text()))
    }
}

/// A JSON body. Nesting deeper than serde_json's limit (128) is a syntax error, so a hostile
/// body gets a 400 rather than a deep recursion. A string holding NUL (`\u0000`), which
/// PostgreSQL stores neither in text nor in jsonb, is refused here for every body, rather than
/// failing as a 500 in whichever handler forgot it.
pub struct J<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for J<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(|e| body_problem(e.status(), e.body_text()))?;
        if holds_nul(&value) {
            return Err(Problem::bad_request(NUL_IN_BODY));
        }
        serde_json::from_value(value)
            .map(J)
            .map_err(|e| Problem::bad_request(format!("the JSON body does not fit: {e}")))
    }
}

pub(super) const NUL_IN_BODY: &str =
    "a string in the body holds a NUL character (\\u0000), which cannot be stored";

/// Whether a string (or a key) anywhere in `v` holds NUL.
pub(super) fn holds_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(holds_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// A body as bytes, for a handler that parses it itself.
pub struct B(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for B {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        Bytes::from_request(req, state)
            .await
            .map(B)
            .map_err(|e| body_problem(e.status(), e.body_text()))
    }
}

/// Over `http.max_body_bytes` (axum's body limit) is 413; every other refusal of a body, 400.
fn body_problem(status: StatusCode, text: String) -> Problem {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::too_large(text)
    } else {
        Problem::bad_request(text)
    }
}

/// One rule for every route, before routing: a path or query that decodes to a control
/// character (NUL above all, which PostgreSQL refuses in text with a 22021 error) or to invalid
/// UTF-8 is refused with a 400 problem. No parameter of the API has a use for them, and a
/// handler that forgot to check would otherwise answer 500.
pub(super) async fn refuse_control_characters(
    req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let uri = req.uri();
    if let Some(part) = [Some(uri.path()), uri.query()]
        .into_iter()
        .flatten()
        .find(|raw| !clean(raw))
    {
        let which = if part == uri.path() { "path" } else { "query" };
        return Problem::bad_request(format!(
            "the {which} holds a control character (such as %00) or invalid UTF-8, which no \
             parameter may contain"
        ))
        .into_response();
    }
    next.run(req).await
}

/// Percent-decoded, `raw` is UTF-8 without control characters.
fn clean(raw: &str) -> bool {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    std::str::from_utf8(&out).is_ok_and(|s| !s.chars().any(char::is_control))
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn control_characters_are_found_however_encoded() {
        for ok in [
            "/api/v1/vehicles/XY-B0001",
            "a=b%20c&d=%E5%AD%9D",
            "x=%",
            "x=%4",
        ] {
            assert!(clean(ok), "{ok}");
        }
        for bad in [
            "/v/XY%00",
            "vehicle=%00",
            "x=%0a",
            "x=%0D",
            "x=%7f",
            "x=%c2%85",
            "x=%ff",
        ] {
            assert!(!clean(bad), "{bad}");
        }
    }
}
