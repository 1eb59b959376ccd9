//! Signing out: `/.portcullis/logout` (ends our session, then the
//! provider's via its `end_session_endpoint`), the signed-out page, and
//! back-channel logout (`/.portcullis/backchannel-logout`: the provider
//! tells us a user's session there ended, in a signed logout token).

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};

use super::flow::{COOKIE_HOST, COOKIE_PLAIN, DISCOVERY_WAIT, cookie, redirect, session_cookie};
use super::jwt::{self, JwtError};
use super::session::{decode_id, for_each_cookie, unix_now};
use super::store::{SubjectKey, revoked_sid_key, used_jti_key};
use super::{AuthShared, AuthSnapshot};
use crate::http::body::Body;
use crate::http::error::{self, Cause, ProxyError};

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// A logout token issued longer ago than this is refused (its `jti` is
/// remembered this long, so a captured token cannot be replayed).
pub const LOGOUT_TOKEN_MAX_AGE: u64 = 600;
/// A signed-out provider session's bearer tokens are refused for at least
/// this long (or `session_ttl`, if longer).
pub const REVOKED_SID_FOR: u64 = 24 * 3600;

/// Remembers that the provider session `sid` was signed out, so bearer
/// tokens carrying it are refused.
async fn revoke_sid(auth: &AuthShared, provider: &str, sid: &str, session_ttl: u64) {
    let Some(sessions) = auth.sessions() else {
        return;
    };
    let now = unix_now();
    let until = now + REVOKED_SID_FOR.max(session_ttl);
    if let Err(e) = sessions
        .store()
        .mark(revoked_sid_key(provider, sid), until, now)
        .await
    {
        tracing::error!(error = %e, "cannot record a signed-out provider session");
    }
}

/// `/.portcullis/logout`: ends the session, clears the cookie, and sends
/// the browser to the provider's end-session endpoint (or straight to the
/// signed-out page).
///
/// A request another site made the browser send (`Sec-Fetch-Site:
/// cross-site`, such as a plain link there: `SameSite=Lax` cookies ride
/// top-level GETs) ends nothing; it gets a page with a button that signs
/// out from here instead.
pub(super) async fn logout(
    auth: &AuthShared,
    snap: &AuthSnapshot,
    headers: &HeaderMap,
    scheme: &str,
    raw_host: &str,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Ok(confirm_page(request_id, headers.get(header::ACCEPT)));
    }
    let signed_out = format!("{scheme}://{raw_host}/.portcullis/logged-out");
    // Where the user came from on this site, for the signed-out page's
    // link back: carried in `state`, which the provider hands back.
    let back = came_from(headers, scheme, raw_host);
    let mut ended = None;
    if let Some(sessions) = auth.sessions() {
        let mut ids = Vec::new();
        for name in [COOKIE_HOST, COOKIE_PLAIN] {
            for_each_cookie(headers, name, |v| {
                if let Some(id) = decode_id(v) {
                    ids.push(id);
                }
                false
            });
        }
        for id in ids {
            if let Some(rec) = sessions.end(id).await {
                ended.get_or_insert(rec);
            }
        }
    }
    let view = ended.as_ref().and_then(|r| snap.by_name(&r.provider));
    if let Some(rec) = &ended
        && let Some(sid) = &rec.sid
    {
        let ttl = view.map_or(0, |v| v.config.session_ttl.as_secs());
        revoke_sid(auth, &rec.provider, sid, ttl).await;
    }
    let mut location = signed_out.clone();
    if let (Some(rec), Some(view)) = (&ended, view) {
        tracing::info!(provider = %rec.provider, user = %rec.user.username, "signed out");
        if let Some(d) = view.provider.reachable(Duration::from_secs(2)).await
            && let Some(end) = &d.end_session
            && let Ok(mut url) = openidconnect::url::Url::parse(end)
        {
            {
                let mut q = url.query_pairs_mut();
                if let Some(t) = &rec.id_token {
                    q.append_pair("id_token_hint", t);
                }
                q.append_pair("client_id", &view.config.client_id);
                q.append_pair("post_logout_redirect_uri", &signed_out);
                if let Some(b) = &back {
                    q.append_pair("state", b);
                }
            }
            location = url.to_string();
        }
    }
    if location == signed_out
        && let Some(b) = &back
    {
        location = format!(
            "{signed_out}?{}",
            openidconnect::url::form_urlencoded::Serializer::new(String::new())
                .append_pair("state", b)
                .finish()
        );
    }
    let mut resp = redirect(&location)?;
    let h = resp.headers_mut();
    // Pages of the signed-in session stay in the browser's cache (and its
    // back/forward cache): Back would show them again after signing out.
    h.insert("clear-site-data", HeaderValue::from_static("\"cache\""));
    match view {
        Some(v) => {
            h.append(header::SET_COOKIE, session_cookie(v, "", 0));
        }
        None => {
            h.append(header::SET_COOKIE, cookie(COOKIE_HOST, "", 0, true, None));
            h.append(header::SET_COOKIE, cookie(COOKIE_PLAIN, "", 0, false, None));
        }
    }
    Ok(resp)
}

/// The path (and query) on this site a logout was started from: the
/// `Referer` when it is on the same scheme and host, and not one of our
/// own endpoints.
fn came_from(headers: &HeaderMap, scheme: &str, raw_host: &str) -> Option<String> {
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let rest = referer
        .get(..scheme.len() + 3)
        .filter(|s| s.eq_ignore_ascii_case(&format!("{scheme}://")))
        .map(|_| &referer[scheme.len() + 3..])?;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if !rest[..host_end].eq_ignore_ascii_case(raw_host) {
        return None;
    }
    let path = rest[host_end..].split('#').next().unwrap_or("");
    let path = if path.starts_with('/') { path } else { "/" };
    (!path.starts_with(RESERVED)).then(|| path.to_string())
}

const RESERVED: &str = "/.portcullis/";

/// A link target on this host for a path that came from the browser: one
/// leading `/` (so `//elsewhere` stays a path here), no control characters,
/// never one of our endpoints.
fn same_host_path(p: &str) -> String {
    let rest: String = p
        .trim_start_matches(['/', '\\'])
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let path = format!("/{rest}");
    if path.starts_with(RESERVED) {
        "/".to_string()
    } else {
        path
    }
}

/// `/.portcullis/logged-out`, with a link back to where the user signed
/// out from (`state`, set by [`logout`]; a path on this host only).
pub(super) fn logged_out(
    query: Option<&str>,
    request_id: &HeaderValue,
    accept: Option<&HeaderValue>,
) -> Response<Body> {
    let back = openidconnect::url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "state")
        .map_or_else(|| "/".to_string(), |(_, v)| same_host_path(&v));
    let link = format!(
        "<p><a href=\"{}\">Back to the site</a></p>",
        error::html_escape(&back)
    );
    let mut r = error::render_page(
        StatusCode::OK,
        "Signed out",
        "You are signed out. Close this tab, or go back to the site to sign in again.",
        &link,
        request_id,
        error::wants_json(accept),
    );
    r.headers_mut()
        .insert("clear-site-data", HeaderValue::from_static("\"cache\""));
    r
}

/// The answer to a logout another site asked for: nothing ends; a button
/// here signs out with a POST from this site.
fn confirm_page(request_id: &HeaderValue, accept: Option<&HeaderValue>) -> Response<Body> {
    error::render_page(
        StatusCode::OK,
        "Sign out?",
        "Another site sent you here to sign out. You are still signed in.",
        "<form method=\"post\" action=\"/.portcullis/logout\">\
         <button type=\"submit\">Sign out</button></form>",
        request_id,
        error::wants_json(accept),
    )
}

/// `/.portcullis/backchannel-logout`: the provider tells us a user's
/// session there ended; end ours.
pub(super) async fn backchannel(
    auth: &AuthShared,
    snap: &AuthSnapshot,
    req: Request<crate::http::body::Body>,
) -> Result<Response<Body>, ProxyError> {
    const BAD: ProxyError = ProxyError::BadRequest("The logout token is not valid.");
    if req.method() != Method::POST {
        return Err(ProxyError::BadRequest(
            "Back-channel logout takes a POST with a logout_token.",
        ));
    }
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| ProxyError::BadRequest("The logout request body is too large or broken."))?
        .to_bytes();
    let token = openidconnect::url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned())
        .ok_or(BAD)?;
    let jwt = jwt::parse(&token).map_err(|_| BAD)?;
    let iss = jwt.str_claim("iss").ok_or(BAD)?;
    let view = snap
        .providers
        .iter()
        .filter(|v| v.config.issuer == iss)
        .find(|v| {
            jwt.check_audience(std::iter::once(v.config.client_id.as_str()))
                .is_ok()
        })
        .ok_or(BAD)?;
    let Some(d) = view.provider.ensure(DISCOVERY_WAIT).await else {
        return Err(ProxyError::LoginUnavailable(Cause::Said(
            "the identity provider's discovery document cannot be fetched",
        )));
    };
    let secret = Some(view.provider.client_secret());
    let algs = d.id_token_algs.clone();
    let checked = view.provider.verify_jws(d, &jwt, &algs, secret).await;
    let now = unix_now();
    let valid = checked
        .and_then(|_| jwt.check_times(now, true))
        .and_then(|_| {
            match jwt.num_claim("iat") {
                None => return Err(JwtError::Claims("no iat")),
                Some(iat) if iat > now + jwt::LEEWAY_SECS => {
                    return Err(JwtError::Claims("issued in the future"));
                }
                Some(iat) if iat + LOGOUT_TOKEN_MAX_AGE < now => {
                    return Err(JwtError::Claims("issued too long ago"));
                }
                Some(_) => {}
            }
            if jwt.str_claim("jti").is_none_or(str::is_empty) {
                return Err(JwtError::Claims("no jti"));
            }
            if jwt.claims.contains_key("nonce") {
                return Err(JwtError::Claims("a logout token has no nonce"));
            }
            match jwt
                .claims
                .get("events")
                .and_then(|e| e.get(BACKCHANNEL_EVENT))
            {
                Some(serde_json::Value::Object(_)) => Ok(()),
                _ => Err(JwtError::Claims("no back-channel logout event")),
            }
        });
    if let Err(e) = valid {
        tracing::warn!(provider = %view.config.name, error = %e, "back-channel logout token refused");
        return Err(BAD);
    }
    let key = match (jwt.str_claim("sid"), jwt.str_claim("sub")) {
        (Some(sid), _) => SubjectKey::Sid(sid.to_string()),
        (None, Some(sub)) => SubjectKey::Sub(sub.to_string()),
        (None, None) => return Err(BAD),
    };
    let sessions = auth.sessions().ok_or(super::flow::NO_SESSIONS)?;
    // Each logout token works once: its `jti` is remembered until the
    // token would be refused anyway (expired, or issued too long ago).
    let (iat, exp) = (
        jwt.num_claim("iat").unwrap_or(0),
        jwt.num_claim("exp").unwrap_or(0),
    );
    let until = exp.min(iat + LOGOUT_TOKEN_MAX_AGE) + jwt::LEEWAY_SECS + 1;
    let jti = jwt.str_claim("jti").unwrap_or_default();
    match sessions
        .store()
        .mark(used_jti_key(&view.config.name, jti), until, now)
        .await
    {
        Ok(false) => {}
        Ok(true) => {
            tracing::warn!(provider = %view.config.name, "back-channel logout token replayed; refused");
            return Err(BAD);
        }
        Err(e) => {
            return Err(ProxyError::Internal(Cause::error(format!(
                "cannot record a logout token: {e}"
            ))));
        }
    }
    if let SubjectKey::Sid(sid) = &key {
        revoke_sid(
            auth,
            &view.config.name,
            sid,
            view.config.session_ttl.as_secs(),
        )
        .await;
    }
    let ended = sessions.end_matching(&view.config.name, key).await;
    tracing::info!(provider = %view.config.name, sessions = ended, "back-channel logout");
    let mut r = Response::new(Body::Empty);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn came_from_is_a_path_on_this_host_only() {
        let with = |r: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::REFERER, HeaderValue::from_static(r));
            came_from(&h, "https", "App.test:8443")
        };
        assert_eq!(
            with("https://app.test:8443/a/b?c=1#x").as_deref(),
            Some("/a/b?c=1")
        );
        assert_eq!(with("https://app.test:8443").as_deref(), Some("/"));
        assert_eq!(with("https://evil.test/a"), None);
        assert_eq!(with("https://app.test:8443.evil.test/a"), None);
        assert_eq!(with("http://app.test:8443/a"), None);
        assert_eq!(with("https://app.test:8443/.portcullis/logout"), None);
        assert_eq!(came_from(&HeaderMap::new(), "https", "app.test"), None);
    }

    #[test]
    fn links_back_stay_on_this_host() {
        assert_eq!(same_host_path("/a?b=1"), "/a?b=1");
        assert_eq!(same_host_path("//evil.example/x"), "/evil.example/x");
        assert_eq!(same_host_path("/\\evil.example"), "/evil.example");
        assert_eq!(
            same_host_path("https://evil.example/"),
            "/https://evil.example/"
        );
        assert_eq!(same_host_path("/.portcullis/logout"), "/");
        assert_eq!(same_host_path("/a\r\nb"), "/ab");
    }
}
