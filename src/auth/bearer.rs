//! Bearer tokens for API clients: `Authorization: Bearer <JWT>` issued by
//! the route's provider, checked against its JWKS (asymmetric algorithms
//! only), `iss`, `exp`/`nbf` and the audience (the client id or one of
//! `audiences`). Only access tokens: the provider signs ID tokens and
//! logout tokens with the same keys for the same audience, so the type is
//! checked too, and a token of a provider session (`sid`) that was signed
//! out is refused. The same route policies apply; there is never a
//! redirect.

use std::time::Duration;

use ::http::header::{self, HeaderMap};

use super::identity::{self, Identity, UserClaims};
use super::session::Sessions;
use super::store::revoked_sid_key;
use super::{ProviderView, jwt};

pub(super) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub(super) enum BearerError {
    Invalid(String),
    Unavailable,
}

/// A JWT access token from the route's provider: signature through its
/// JWKS (an asymmetric algorithm only), `iss`, `exp`/`nbf`, an audience
/// that is the client id or one of `audiences`, typed as an access token,
/// and not of a signed-out provider session.
pub(super) async fn verify_bearer(
    sessions: &Sessions,
    view: &ProviderView,
    token: &str,
    now: u64,
) -> Result<Identity, BearerError> {
    let invalid = |e: jwt::JwtError| BearerError::Invalid(e.to_string());
    let cfg = &view.config;
    let t = jwt::parse(token).map_err(invalid)?;
    // Before any network work, so foreign tokens cannot trigger JWKS fetches.
    t.check_issuer(&cfg.issuer).map_err(invalid)?;
    t.check_access_token_type().map_err(invalid)?;
    let d = view
        .provider
        .ensure(Duration::from_secs(3))
        .await
        .ok_or(BearerError::Unavailable)?;
    view.provider
        .verify_jws(d, &t, jwt::BEARER_ALGS, None)
        .await
        .map_err(invalid)?;
    t.check_times(now, true).map_err(invalid)?;
    t.check_audience(
        std::iter::once(cfg.client_id.as_str()).chain(cfg.audiences.iter().map(String::as_str)),
    )
    .map_err(invalid)?;
    let sub = t
        .str_claim("sub")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| BearerError::Invalid("no sub claim".into()))?;
    if let Some(sid) = t.str_claim("sid") {
        let key = revoked_sid_key(&cfg.name, sid);
        match sessions.store().is_marked(key, now).await {
            Ok(false) => {}
            Ok(true) => {
                return Err(BearerError::Invalid(
                    "its provider session was signed out".into(),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check a bearer token's session; refusing it for now");
                return Err(BearerError::Unavailable);
            }
        }
    }
    let email = t.str_claim("email").map(String::from);
    let groups = match t.claims.get("groups") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|g| g.as_str().map(String::from))
            .collect(),
        Some(serde_json::Value::String(g)) => vec![g.clone()],
        _ => Vec::new(),
    };
    Ok(Identity::new(UserClaims {
        username: identity::username_of(t.str_claim("preferred_username"), email.as_deref(), sub),
        sub: sub.to_string(),
        email_verified: t.claims.get("email_verified").and_then(|v| v.as_bool()),
        name: t.str_claim("name").map(String::from),
        groups,
        email,
    }))
}
