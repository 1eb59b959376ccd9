//! The browser sign-in flow: the redirect to the provider and the
//! callback at `/.portcullis/callback` (sign-out is in `logout`).
//!
//! Where to return after sign-in is kept server-side, keyed by `state`,
//! and is always an absolute URL on the host the user asked for; nothing
//! in a query parameter can point it elsewhere. A short-lived cookie binds
//! the `state` to the browser that started the sign-in, so a callback URL
//! captured from someone else's sign-in does not log a victim in.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use openidconnect::OAuth2TokenResponse as _;
use openidconnect::TokenResponse as _;

use super::claims::{merge_userinfo, user_claims};
use super::provider::FlowError;
use super::session::{decode_id, for_each_cookie, unix_now};
use super::store::SessionRecord;
use super::{AuthShared, AuthSnapshot, ProviderView};
use crate::cluster::Cluster;
use crate::http::body::Body;
use crate::http::error::{Cause, ProxyError};

/// How long a started sign-in may take.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Sign-ins in progress at once; beyond this, new ones get a 503.
const MAX_PENDING: usize = 100_000;
/// How long a request waits for discovery before answering 503.
pub(super) const DISCOVERY_WAIT: Duration = Duration::from_secs(5);

/// Session cookie names: `__Host-` (host-only, Secure, Path=/) unless a
/// `cookie_domain` is set or cookies are insecure, where browsers refuse it.
pub const COOKIE_HOST: &str = "__Host-portcullis";
pub const COOKIE_PLAIN: &str = "portcullis_session";
/// The cookie binding a sign-in in progress to its browser.
pub const LOGIN_COOKIE_HOST: &str = "__Host-portcullis-login";
pub const LOGIN_COOKIE_PLAIN: &str = "portcullis_login";
/// Every cookie of ours: never forwarded to a backend.
pub const OUR_COOKIES: [&str; 4] = [
    COOKIE_HOST,
    COOKIE_PLAIN,
    LOGIN_COOKIE_HOST,
    LOGIN_COOKIE_PLAIN,
];

/// A sign-in between the redirect to the provider and the callback.
#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    provider: String,
    issuer: String,
    nonce: String,
    pkce_verifier: String,
    redirect_uri: String,
    return_to: String,
    /// The host (with port) the sign-in started on; the callback must match.
    host: String,
    binding: String,
    /// Whether `binding` is in the `Secure` cookie (`login_cookie_name`).
    secure_cookie: bool,
    /// Unix seconds.
    started: u64,
}

impl Pending {
    fn login_cookie(&self) -> &'static str {
        login_cookie_name(self.secure_cookie)
    }

    fn fresh(&self) -> bool {
        unix_now() < self.started.saturating_add(LOGIN_TTL.as_secs())
    }
}

/// Why a callback's sign-in cannot be taken.
pub(super) enum TakeError {
    /// It exists, for another browser.
    OtherBrowser,
    /// Unknown, expired or already used.
    Gone,
    /// The shared store cannot be reached.
    StoreDown,
}

/// Sign-ins in progress, keyed by `state`. In memory (a restart in the
/// middle of a sign-in just means signing in again), or with `[cluster]`
/// in Redis, sealed with a key derived from `state` (which holds the PKCE
/// verifier and nonce) so a sign-in started on one instance completes on
/// another.
#[derive(Default)]
pub struct PendingLogins {
    map: DashMap<String, Pending>,
    remote: OnceLock<Arc<Cluster>>,
}

const LOGIN_INFO: &[u8] = b"portcullis login v1";

impl PendingLogins {
    /// Keeps sign-ins in Redis from now on.
    pub(crate) fn share(&self, cluster: Arc<Cluster>) {
        let _ = self.remote.set(cluster);
    }

    fn remote_key(c: &Cluster, state: &str) -> String {
        c.key("login", &c.digest(&[b"login", state.as_bytes()]))
    }

    /// `Ok(false)`: too many in progress; `Err`: the shared store is down.
    async fn insert(&self, state: String, p: Pending) -> Result<bool, ()> {
        if let Some(c) = self.remote.get() {
            let key = Self::remote_key(c, &state);
            let plain = serde_json::to_vec(&p).map_err(|_| ())?;
            let sealed = Cluster::seal(
                &c.derive(state.as_bytes(), LOGIN_INFO),
                key.as_bytes(),
                &plain,
            );
            return c
                .run::<()>(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(sealed)
                        .arg("EX")
                        .arg(LOGIN_TTL.as_secs()),
                )
                .await
                .map(|_| true)
                .map_err(|e| tracing::warn!(error = %e, "cannot store a sign-in in Redis"));
        }
        Ok(self.insert_local(state, p))
    }

    fn insert_local(&self, state: String, p: Pending) -> bool {
        if self.map.len() >= MAX_PENDING {
            self.purge();
            if self.map.len() >= MAX_PENDING {
                return false;
            }
        }
        self.map.insert(state, p);
        true
    }

    /// Removes and returns the sign-in for `state` (each state works once),
    /// but only for the browser that started it: `state` is in the
    /// authorization URL, and whoever learns it must not be able to cancel
    /// the sign-in. `Err(true)`: it exists, for another browser.
    async fn take(&self, state: &str, headers: &HeaderMap) -> Result<Pending, TakeError> {
        let bound = |p: &Pending| {
            let mut bound = false;
            for_each_cookie(headers, p.login_cookie(), |v| {
                bound = same_secret(v, &p.binding);
                bound
            });
            bound
        };
        if let Some(c) = self.remote.get() {
            let key = Self::remote_key(c, state);
            let v: Option<Vec<u8>> = c
                .run(redis::cmd("GET").arg(&key))
                .await
                .map_err(|_| TakeError::StoreDown)?;
            let p: Pending = v
                .and_then(|v| {
                    Cluster::open(&c.derive(state.as_bytes(), LOGIN_INFO), key.as_bytes(), &v)
                })
                .and_then(|plain| serde_json::from_slice(&plain).ok())
                .ok_or(TakeError::Gone)?;
            if !bound(&p) {
                return Err(TakeError::OtherBrowser);
            }
            // Each state works once, on one instance.
            let n: i64 = c
                .run(redis::cmd("DEL").arg(&key))
                .await
                .map_err(|_| TakeError::StoreDown)?;
            return if n == 1 && p.fresh() {
                Ok(p)
            } else {
                Err(TakeError::Gone)
            };
        }
        match self.map.remove_if(state, |_, p| bound(p)) {
            Some((_, p)) if p.fresh() => Ok(p),
            Some(_) => Err(TakeError::Gone),
            None if self.map.contains_key(state) => Err(TakeError::OtherBrowser),
            None => Err(TakeError::Gone),
        }
    }

    /// Drops sign-ins that were never finished.
    pub fn purge(&self) {
        self.map.retain(|_, p| p.fresh());
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Where the user wanted to go, as the gateway saw the request.
pub struct LoginTarget<'a> {
    /// `http` or `https`, as the browser reached us.
    pub scheme: &'static str,
    /// The Host the browser used (validated, may carry a port).
    pub host: &'a str,
    pub path_and_query: &'a str,
}

/// An absolute URL on `host` for a path and query. Leading runs of `/` and
/// `\` collapse to one `/`, so `//evil.example` stays a path on this host.
pub fn return_to(scheme: &str, host: &str, path_and_query: &str) -> String {
    let pq = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    let rest = pq.trim_start_matches(['/', '\\']);
    let rest: String = rest.chars().filter(|c| !c.is_control()).collect();
    format!("{scheme}://{host}/{rest}")
}

fn random_token() -> String {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the OS random number generator failed");
    URL_SAFE_NO_PAD.encode(b)
}

fn login_cookie_name(secure: bool) -> &'static str {
    if secure {
        LOGIN_COOKIE_HOST
    } else {
        LOGIN_COOKIE_PLAIN
    }
}

/// A `Set-Cookie` value. `domain` only for the session cookie.
pub(super) fn cookie(
    name: &str,
    value: &str,
    max_age: u64,
    secure: bool,
    domain: Option<&str>,
) -> HeaderValue {
    let mut s = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax");
    if secure {
        s.push_str("; Secure");
    }
    if let Some(d) = domain {
        s.push_str("; Domain=");
        s.push_str(d);
    }
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""))
}

pub(super) fn session_cookie(view: &ProviderView, value: &str, max_age: u64) -> HeaderValue {
    let cfg = &view.config;
    cookie(
        view.cookie_name,
        value,
        max_age,
        !cfg.insecure_cookies,
        cfg.cookie_domain.as_deref(),
    )
}

/// The session store is missing: a bug, sessions are made at start-up.
pub(super) const NO_SESSIONS: ProxyError =
    ProxyError::Internal(Cause::Said("the gateway has no session store"));

pub(super) fn redirect(location: &str) -> Result<Response<Body>, ProxyError> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = StatusCode::FOUND;
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(location).map_err(|_| {
            ProxyError::Internal(Cause::Said("a redirect location is not a header value"))
        })?,
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Sends the browser to the provider.
pub(super) async fn start_login(
    auth: &AuthShared,
    view: &ProviderView,
    target: &LoginTarget<'_>,
    headers: &HeaderMap,
) -> Result<Response<Body>, ProxyError> {
    let secure = !view.config.insecure_cookies;
    if secure && target.scheme != "https" {
        // A Secure cookie set over plain HTTP is dropped by the browser:
        // redirecting would loop forever.
        return Err(ProxyError::BadRequest(
            "Sign-in needs HTTPS: open this address with https://.",
        ));
    }
    let Some(d) = view.provider.reachable(DISCOVERY_WAIT).await else {
        return Err(ProxyError::LoginUnavailable(Cause::Said(
            "the identity provider's discovery document cannot be fetched",
        )));
    };
    let redirect_uri = format!("{}://{}/.portcullis/callback", target.scheme, target.host);
    let req = view
        .provider
        .authorize(&d, &view.config.scopes, &redirect_uri)
        .map_err(|e| {
            ProxyError::Internal(Cause::error(format!(
                "provider {}: cannot build the authorization URL: {e}",
                view.config.name
            )))
        })?;
    let login_cookie = login_cookie_name(secure);
    let mut binding = None;
    for_each_cookie(headers, login_cookie, |v| {
        let ok = v.len() == 22
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            binding = Some(v.to_string());
        }
        ok
    });
    let binding = binding.unwrap_or_else(random_token);
    let pending = Pending {
        provider: view.config.name.clone(),
        issuer: view.config.issuer.clone(),
        nonce: req.nonce,
        pkce_verifier: req.pkce_verifier,
        redirect_uri,
        return_to: return_to(target.scheme, target.host, target.path_and_query),
        host: target.host.to_ascii_lowercase(),
        binding: binding.clone(),
        secure_cookie: secure,
        started: unix_now(),
    };
    match auth.pending.insert(req.state, pending).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(ProxyError::LoginUnavailable(Cause::Said(
                "too many sign-ins in progress; refusing new ones for now",
            )));
        }
        Err(()) => return Err(ProxyError::SessionStoreUnavailable),
    }
    let mut resp = redirect(&req.url)?;
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie(login_cookie, &binding, LOGIN_TTL.as_secs(), secure, None),
    );
    Ok(resp)
}

/// The first value of each wanted query parameter.
fn query_params<'q, const N: usize>(query: &'q str, names: [&str; N]) -> [Option<String>; N] {
    let mut out: [Option<String>; N] = std::array::from_fn(|_| None);
    for (k, v) in openidconnect::url::form_urlencoded::parse(query.as_bytes()) {
        if let Some(i) = names.iter().position(|n| *n == k)
            && out[i].is_none()
        {
            out[i] = Some(v.into_owned());
        }
    }
    let _: &'q str = query;
    out
}

/// Constant-time comparison for the binding cookie.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `/.portcullis/callback`: checks the answer, makes a new session, and
/// sends the browser back where it started.
pub(super) async fn callback(
    auth: &AuthShared,
    snap: &AuthSnapshot,
    req: &Request<crate::http::body::Body>,
    raw_host: &str,
) -> Result<Response<Body>, ProxyError> {
    let [code, state, err, iss] = query_params(
        req.uri().query().unwrap_or(""),
        ["code", "state", "error", "iss"],
    );
    let Some(state) = state else {
        return Err(ProxyError::LoginFailed(
            "The sign-in answer is incomplete. Go back to the site and sign in again.",
        ));
    };
    let p = match auth.pending.take(&state, req.headers()).await {
        Ok(p) => p,
        Err(TakeError::StoreDown) => return Err(ProxyError::SessionStoreUnavailable),
        Err(TakeError::OtherBrowser) => {
            tracing::warn!("sign-in callback from a browser that did not start it; refused");
            return Err(ProxyError::LoginFailed(
                "This sign-in was started in another browser. Go back to the site and sign in again.",
            ));
        }
        Err(TakeError::Gone) => {
            return Err(ProxyError::LoginFailed(
                "This sign-in has expired or was already used. Go back to the site and sign in again.",
            ));
        }
    };
    let view = snap
        .by_name(&p.provider)
        .filter(|v| v.config.issuer == p.issuer)
        .ok_or(ProxyError::LoginFailed(
            "The sign-in settings changed meanwhile. Go back to the site and sign in again.",
        ))?;
    if !raw_host.eq_ignore_ascii_case(&p.host) {
        return Err(ProxyError::LoginFailed(
            "This sign-in was started on another site address. Go back to the site and sign in again.",
        ));
    }
    if let Some(e) = err {
        tracing::info!(provider = %p.provider, error = %e, "the provider did not sign the user in");
        return Err(ProxyError::LoginFailed(
            "The identity provider did not sign you in.",
        ));
    }
    if let Some(iss) = &iss
        && *iss != view.config.issuer
    {
        tracing::warn!(provider = %p.provider, iss = %iss, "callback names another issuer (mix-up?); refused");
        return Err(ProxyError::LoginFailed(
            "The sign-in answer came from another identity provider.",
        ));
    }
    let Some(code) = code else {
        return Err(ProxyError::LoginFailed(
            "The sign-in answer is incomplete. Go back to the site and sign in again.",
        ));
    };
    let Some(d) = view.provider.ensure(DISCOVERY_WAIT).await else {
        return Err(ProxyError::LoginUnavailable(Cause::Said(
            "the identity provider's discovery document cannot be fetched",
        )));
    };
    if iss.is_none() && d.iss_in_response {
        // RFC 9207 §2.4: the provider promised `iss` on every answer.
        tracing::warn!(provider = %p.provider, "callback without iss from a provider that sends it (mix-up?); refused");
        return Err(ProxyError::LoginFailed(
            "The sign-in answer did not name its identity provider. Go back to the site and sign in again.",
        ));
    }
    let tokens = match view
        .provider
        .exchange_code(&d, &code, &p.pkce_verifier, &p.redirect_uri)
        .await
    {
        Ok(t) => t,
        Err(FlowError::Unavailable(e)) => {
            view.provider.note_unreachable();
            return Err(ProxyError::LoginUnavailable(Cause::error(format!(
                "provider {}: code exchange failed: {e}",
                p.provider
            ))));
        }
        Err(e) => {
            tracing::warn!(provider = %p.provider, error = %e, "code exchange refused");
            return Err(ProxyError::LoginFailed(
                "The identity provider did not accept this sign-in. Go back to the site and sign in again.",
            ));
        }
    };
    let Some(id_token) = tokens.id_token() else {
        tracing::warn!(provider = %p.provider, "token response has no ID token");
        return Err(ProxyError::LoginFailed(
            "The identity provider's answer could not be verified.",
        ));
    };
    let claims = match view
        .provider
        .verify_id_token(d.clone(), id_token, Some(&p.nonce))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(provider = %p.provider, error = %e, "ID token refused");
            return Err(ProxyError::LoginFailed(
                "The identity provider's answer could not be verified.",
            ));
        }
    };
    let mut user = user_claims(&claims);
    if user.email.is_none() && user.groups.is_empty() {
        // Providers set to keep claims out of the ID token: ask userinfo.
        match view
            .provider
            .userinfo(&d, tokens.access_token().secret(), &user.sub)
            .await
        {
            Ok(info) => user = merge_userinfo(user, &info),
            Err(e) => tracing::debug!(provider = %p.provider, error = %e, "userinfo unavailable"),
        }
    }
    let now = unix_now();
    let record = SessionRecord {
        provider: view.config.name.clone(),
        issuer: view.config.issuer.clone(),
        sid: claims.additional_claims().sid.clone(),
        created: now,
        expires: now + view.config.session_ttl.as_secs(),
        id_token: Some(id_token.to_string()),
        access_token: Some(tokens.access_token().secret().clone()),
        access_expires: tokens.expires_in().map(|d| now + d.as_secs()),
        refresh_token: tokens.refresh_token().map(|r| r.secret().clone()),
        user,
    };
    let sessions = auth.sessions().ok_or(NO_SESSIONS)?;
    // Never reuse an id the browser brought along (session fixation).
    let mut old = Vec::new();
    for_each_cookie(req.headers(), view.cookie_name, |v| {
        if let Some(id) = decode_id(v) {
            old.push(id);
        }
        false
    });
    for id in old {
        sessions.end(id).await;
    }
    let session = sessions.create(record).await.map_err(|e| {
        if sessions.store().cache_lifetime().is_some() {
            tracing::error!(error = %e, "cannot store a new session");
            ProxyError::SessionStoreUnavailable
        } else {
            ProxyError::Internal(Cause::error(format!("cannot store a new session: {e}")))
        }
    })?;
    tracing::info!(
        provider = %view.config.name,
        user = %session.identity.display_name(),
        "signed in"
    );
    let mut resp = redirect(&p.return_to)?;
    resp.headers_mut().append(
        header::SET_COOKIE,
        session_cookie(
            view,
            &super::session::encode_id(&session.id),
            view.config.session_ttl.as_secs(),
        ),
    );
    // The sign-in is over: its binding cookie has no further use.
    let secure = !view.config.insecure_cookies;
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie(login_cookie_name(secure), "", 0, secure, None),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_on_host() {
        let cases = [
            ("/app?x=1", "https://a.test/app?x=1"),
            ("//evil.example/x", "https://a.test/evil.example/x"),
            ("/\\evil.example", "https://a.test/evil.example"),
            ("/\\/evil.example", "https://a.test/evil.example"),
            ("/%2F%2Fevil.example", "https://a.test/%2F%2Fevil.example"),
            ("https://evil.example/", "https://a.test/"),
            ("", "https://a.test/"),
        ];
        for (pq, want) in cases {
            assert_eq!(return_to("https", "a.test", pq), want, "{pq}");
        }
    }

    #[test]
    fn query_params_take_the_first() {
        let [a, b, c] = query_params("code=1&state=x%20y&code=2", ["code", "state", "error"]);
        assert_eq!(a.as_deref(), Some("1"));
        assert_eq!(b.as_deref(), Some("x y"));
        assert_eq!(c, None);
    }

    #[test]
    fn cookies_have_the_flags() {
        let c = cookie(COOKIE_HOST, "v", 60, true, None);
        assert_eq!(
            c,
            "__Host-portcullis=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        let c = cookie(COOKIE_PLAIN, "v", 60, true, Some("example.com"));
        assert!(
            c.to_str()
                .unwrap()
                .ends_with("; Secure; Domain=example.com")
        );
    }
}
