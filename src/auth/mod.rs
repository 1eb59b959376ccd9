//! Single sign-on: OpenID Connect providers (`provider`, over our own HTTP
//! client in `http`), the browser flow and the `/.portcullis/` endpoints
//! (`flow`), server-side sessions (`session`, stored by `store`), route
//! policies (`policy`), identity headers (`identity`) and bearer / logout
//! tokens (`jwt`).
//!
//! The request path calls [`check`] once per request after the route is
//! chosen. Public routes return at once; protected ones look up the session
//! cookie in the hot cache, then a bearer token, then send a browser to the
//! provider or answer 401. This module never picks a backend.

pub mod flow;
pub mod http;
pub mod identity;
pub mod jwt;
pub mod policy;
pub mod provider;
pub mod session;
pub mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::config::{Config, OidcConfig, OidcPolicy, RouteAuth};
use crate::proxy::ConnInfo;
use crate::proxy::body::Body;
use crate::proxy::error::{self, ProxyError};
use crate::state::{Route, Shared, Snapshot, canonical_ip};

use self::flow::{LoginTarget, OUR_COOKIES};
use self::identity::{Identity, UserClaims};
use self::provider::Provider;
use self::session::{Found, Session, Sessions, unix_now};
use self::store::RedbStore;

/// How often expired sessions and abandoned sign-ins are purged.
const PURGE_EVERY: Duration = Duration::from_secs(300);
/// How long a reload waits for rediscovery before going live anyway.
const RELOAD_DISCOVERY_WAIT: Duration = Duration::from_secs(5);

/// One configured provider in a snapshot: its settings from this config,
/// and the run-time provider (which may be shared with older snapshots).
pub struct ProviderView {
    pub config: OidcConfig,
    pub provider: Arc<Provider>,
    /// The session cookie's name for this provider's settings.
    pub cookie_name: &'static str,
}

/// The auth part of a [`Snapshot`]: providers in config order, so a route's
/// `provider_index` finds its provider without a lookup by name.
#[derive(Default)]
pub struct AuthSnapshot {
    pub providers: Vec<ProviderView>,
}

impl std::fmt::Debug for AuthSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| &p.config.name))
            .finish()
    }
}

fn view(config: &OidcConfig, provider: Arc<Provider>) -> ProviderView {
    let cookie_name = if config.cookie_domain.is_none() && !config.insecure_cookies {
        flow::COOKIE_HOST
    } else {
        flow::COOKIE_PLAIN
    };
    ProviderView {
        config: config.clone(),
        provider,
        cookie_name,
    }
}

impl AuthSnapshot {
    /// Fresh providers for `configs`, not shared with anything (snapshots
    /// built outside a running gateway: benchmarks, tools).
    pub fn detached(configs: &[OidcConfig]) -> AuthSnapshot {
        AuthSnapshot {
            providers: configs
                .iter()
                .filter_map(|c| Provider::new(c).ok().map(|p| view(c, p)))
                .collect(),
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&ProviderView> {
        self.providers.iter().find(|p| p.config.name == name)
    }
}

/// Auth state that outlives reloads: the session store and cache,
/// sign-ins in progress, and the providers (reused while unchanged).
#[derive(Default)]
pub struct AuthShared {
    sessions: OnceLock<Arc<Sessions>>,
    store_dir: Mutex<Option<PathBuf>>,
    providers: Mutex<Vec<Weak<Provider>>>,
    pub pending: flow::PendingLogins,
    purging: AtomicBool,
}

impl AuthShared {
    pub fn new() -> Arc<AuthShared> {
        Arc::new(AuthShared::default())
    }

    /// The session manager, once a provider has been configured.
    #[inline]
    pub fn sessions(&self) -> Option<&Arc<Sessions>> {
        self.sessions.get()
    }

    /// Uses `sessions` instead of opening the embedded store (tests).
    pub fn with_sessions(sessions: Arc<Sessions>) -> Arc<AuthShared> {
        let a = AuthShared::default();
        let _ = a.sessions.set(sessions);
        Arc::new(a)
    }

    /// Builds the auth part of a snapshot for `config`: opens the session
    /// store the first time a provider is configured, and reuses running
    /// providers whose identity is unchanged (keeping their discovery).
    /// Blocking file I/O the first time only.
    pub fn prepare(&self, config: &Config) -> Result<Arc<AuthSnapshot>, String> {
        if config.oidc.is_empty() {
            return Ok(Arc::new(AuthSnapshot::default()));
        }
        if self.sessions.get().is_none() {
            let store = RedbStore::open(&config.server.state_dir).map_err(|e| e.to_string())?;
            tracing::info!(path = %store.path().display(), "session store opened");
            let _ = self.sessions.set(Arc::new(Sessions::new(Arc::new(store))));
            *self.store_dir.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(config.server.state_dir.clone());
        } else if self
            .store_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|d| *d != config.server.state_dir)
        {
            tracing::warn!(
                "server.state_dir changed; sessions stay where they are until a restart"
            );
        }
        let mut registry = self.providers.lock().unwrap_or_else(|e| e.into_inner());
        registry.retain(|w| w.strong_count() > 0);
        let mut views = Vec::with_capacity(config.oidc.len());
        for cfg in &config.oidc {
            let existing = registry
                .iter()
                .filter_map(Weak::upgrade)
                .find(|p| p.same_identity(cfg));
            let provider = match existing {
                Some(p) => p,
                None => {
                    let p = Provider::new(cfg).map_err(|e| format!("[oidc.{}]: {e}", cfg.name))?;
                    registry.push(Arc::downgrade(&p));
                    p
                }
            };
            if cfg.insecure_cookies {
                tracing::warn!(
                    provider = %cfg.name,
                    "insecure_cookies = true: session cookies are sent without Secure, so anyone on the network path can steal sessions. Development only; never use this in production"
                );
            }
            views.push(view(cfg, provider));
        }
        Ok(Arc::new(AuthSnapshot { providers: views }))
    }
}

/// Starts the background work for a running gateway: discovery for every
/// provider (retried while it fails) and the periodic purge.
pub fn spawn_background(auth: &Arc<AuthShared>, snap: &AuthSnapshot) {
    for v in &snap.providers {
        v.provider.retry_in_background();
    }
    if auth.purging.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(auth);
    tokio::spawn(async move {
        loop {
            {
                let Some(auth) = weak.upgrade() else { return };
                if let Some(s) = auth.sessions().cloned() {
                    s.purge(unix_now()).await;
                }
                auth.pending.purge();
            }
            tokio::time::sleep(PURGE_EVERY).await;
        }
    });
}

/// On reload: rediscovers every provider (bounded), so metadata and keys
/// are current; failures keep what was there and retry in the background.
pub async fn rediscover(snap: &AuthSnapshot) {
    let attempts = snap.providers.iter().map(|v| async move {
        match tokio::time::timeout(RELOAD_DISCOVERY_WAIT, v.provider.discover()).await {
            Ok(Ok(_)) => {}
            _ => v.provider.retry_in_background(),
        }
    });
    futures_util::future::join_all(attempts).await;
}

// ---------------------------------------------------------------------------
// The request path.

/// Who a request is from.
pub enum Who {
    Session(Arc<Session>),
    Bearer(Box<Identity>),
}

impl Who {
    #[inline]
    pub fn identity(&self) -> &Identity {
        match self {
            Who::Session(s) => &s.identity,
            Who::Bearer(i) => i,
        }
    }
}

/// The gate said no: a response to send (redirect, 403 page), or an error.
pub enum Stop {
    Respond(Response<Body>, Option<ProxyError>),
    Error(ProxyError),
}

impl Stop {
    /// For `route_request`: the response to return, noting the error kind
    /// for the access log and metrics.
    pub fn into_result(self, error: &mut Option<ProxyError>) -> Result<Response<Body>, ProxyError> {
        match self {
            Stop::Respond(r, e) => {
                *error = e;
                Ok(r)
            }
            Stop::Error(e) => Err(e),
        }
    }
}

enum Identified {
    Who(Who),
    Nobody,
    BadToken,
    Unavailable,
}

/// The auth gate for a chosen route. Public routes pass at once.
#[inline]
pub async fn check(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    req: &Request<Incoming>,
    route: &Route,
    raw_host: &str,
    request_id: &HeaderValue,
) -> Result<Option<Who>, Stop> {
    let RouteAuth::Oidc(policy) = &route.config.auth else {
        return Ok(None);
    };
    protected(shared, snap, conn, req, policy, raw_host, request_id)
        .await
        .map(Some)
}

async fn protected(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    req: &Request<Incoming>,
    policy: &OidcPolicy,
    raw_host: &str,
    request_id: &HeaderValue,
) -> Result<Who, Stop> {
    let (view, sessions) = resolve(shared, snap, policy)?;
    let headers = req.headers();
    match identify(sessions, view, headers, unix_now()).await {
        Identified::Who(who) => decide(policy, who, request_id, headers.get(header::ACCEPT)),
        Identified::BadToken => Err(Stop::Error(ProxyError::InvalidToken)),
        Identified::Unavailable => Err(Stop::Error(ProxyError::LoginUnavailable)),
        Identified::Nobody if is_browser(req.method(), headers) => {
            let target = LoginTarget {
                scheme: effective_scheme(snap, conn, headers),
                host: raw_host,
                path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            };
            match flow::start_login(&shared.auth, view, &target, headers).await {
                Ok(r) => Err(Stop::Respond(r, None)),
                Err(e) => Err(Stop::Error(e)),
            }
        }
        Identified::Nobody => Err(Stop::Error(ProxyError::Unauthorized)),
    }
}

fn resolve<'a>(
    shared: &'a Shared,
    snap: &'a Snapshot,
    policy: &OidcPolicy,
) -> Result<(&'a ProviderView, &'a Arc<Sessions>), Stop> {
    let view = snap.auth.providers.get(policy.provider_index);
    match (view, shared.auth.sessions()) {
        (Some(v), Some(s)) if v.config.name == policy.provider => Ok((v, s)),
        _ => {
            tracing::error!(provider = %policy.provider, "route names a provider the snapshot lacks");
            Err(Stop::Error(ProxyError::Internal))
        }
    }
}

/// Session cookie first (so a backend's own `Authorization` header in a
/// signed-in browser is left alone), then a bearer token.
async fn identify(
    sessions: &Arc<Sessions>,
    view: &ProviderView,
    headers: &HeaderMap,
    now: u64,
) -> Identified {
    let cfg = &view.config;
    let session = match sessions.find_cached(headers, view.cookie_name, &cfg.name, &cfg.issuer, now)
    {
        Found::Hit(s) => Some(s),
        Found::Miss(id) => sessions
            .get(id)
            .await
            .filter(|s| s.usable_for(&cfg.name, &cfg.issuer, now)),
        Found::None => None,
    };
    if let Some(s) = session {
        let s = if s.needs_refresh(now) {
            sessions.refresh(s, view.provider.clone()).await
        } else {
            s
        };
        return Identified::Who(Who::Session(s));
    }
    match bearer_token(headers) {
        Some(token) => match verify_bearer(view, token, now).await {
            Ok(id) => Identified::Who(Who::Bearer(Box::new(id))),
            Err(BearerError::Unavailable) => Identified::Unavailable,
            Err(BearerError::Invalid(e)) => {
                tracing::debug!(provider = %cfg.name, error = %e, "bearer token refused");
                Identified::BadToken
            }
        },
        None => Identified::Nobody,
    }
}

fn decide(
    policy: &OidcPolicy,
    who: Who,
    request_id: &HeaderValue,
    accept: Option<&HeaderValue>,
) -> Result<Who, Stop> {
    if policy::allows(policy, who.identity()) {
        return Ok(who);
    }
    let user = who.identity().display_name();
    tracing::info!(provider = %policy.provider, user = %user, "access denied by the route policy");
    Err(Stop::Respond(
        error::forbidden_response(user, request_id, accept),
        Some(ProxyError::Forbidden),
    ))
}

/// A top-level navigation that can follow a redirect to a login page:
/// GET/HEAD, HTML accepted, not an XHR/fetch call.
fn is_browser(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let html = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")));
    let xhr = headers
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"xmlhttprequest"));
    html && !xhr
}

/// How the browser reached us: the connection, or a trusted proxy's
/// `X-Forwarded-Proto`.
fn effective_scheme(snap: &Snapshot, conn: &ConnInfo, headers: &HeaderMap) -> &'static str {
    if conn.proto == "https" {
        return "https";
    }
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    if forwarded_https && snap.is_trusted_proxy(canonical_ip(conn.peer.ip())) {
        "https"
    } else {
        "http"
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

enum BearerError {
    Invalid(String),
    Unavailable,
}

/// A JWT from the route's provider: signature through its JWKS (an
/// asymmetric algorithm only), `iss`, `exp`/`nbf`, and an audience that is
/// the client id or one of `audiences`.
async fn verify_bearer(
    view: &ProviderView,
    token: &str,
    now: u64,
) -> Result<Identity, BearerError> {
    let invalid = |e: jwt::JwtError| BearerError::Invalid(e.to_string());
    let cfg = &view.config;
    let t = jwt::parse(token).map_err(invalid)?;
    // Before any network work, so foreign tokens cannot trigger JWKS fetches.
    t.check_issuer(&cfg.issuer).map_err(invalid)?;
    let mut d = view
        .provider
        .ensure(Duration::from_secs(3))
        .await
        .ok_or(BearerError::Unavailable)?;
    let mut checked = t.verify_signature(jwt::BEARER_ALGS, d.jwks(), None);
    if checked == Err(jwt::JwtError::NoMatchingKey)
        && let Some(newer) = view.provider.refetch_jwks(&d).await
    {
        d = newer;
        checked = t.verify_signature(jwt::BEARER_ALGS, d.jwks(), None);
    }
    checked.map_err(invalid)?;
    t.check_times(now, true).map_err(invalid)?;
    t.check_audience(
        std::iter::once(cfg.client_id.as_str()).chain(cfg.audiences.iter().map(String::as_str)),
    )
    .map_err(invalid)?;
    let sub = t
        .str_claim("sub")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| BearerError::Invalid("no sub claim".into()))?;
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

/// Sets the identity headers of the route's style on a request being
/// forwarded (client-sent ones were already stripped).
#[inline]
pub fn apply_identity(headers: &mut HeaderMap, route: &Route, who: &Who) {
    if let RouteAuth::Oidc(p) = &route.config.auth {
        who.identity().apply(headers, p.identity_headers);
    }
}

/// Removes our cookies (session and sign-in binding) from the `Cookie`
/// headers forwarded to a backend, on every route. Allocates only when one
/// of them is present.
pub fn strip_session_cookie(headers: &mut HeaderMap) {
    fn ours(b: &[u8]) -> bool {
        b.windows(10).any(|w| w == b"portcullis")
    }
    if !headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| ours(v.as_bytes()))
    {
        return;
    }
    let mut kept: Vec<HeaderValue> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        let mut out: Vec<u8> = Vec::with_capacity(v.len());
        for pair in v.as_bytes().split(|&b| b == b';') {
            let trimmed = pair.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            let name = trimmed
                .split(|&b| b == b'=')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            if OUR_COOKIES.iter().any(|n| n.as_bytes() == name) {
                continue;
            }
            if !out.is_empty() {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(trimmed);
        }
        if let Ok(v) = HeaderValue::from_bytes(&out)
            && !out.is_empty()
        {
            kept.push(v);
        }
    }
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
}

// ---------------------------------------------------------------------------
// `/.portcullis/` endpoints.

/// Serves the gateway's own endpoints on any host. Without any provider
/// configured, the prefix stays a plain 404.
pub async fn endpoint(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    raw_host: &str,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    let auth_snap = &snap.auth;
    if auth_snap.providers.is_empty() {
        return Err(ProxyError::NoRoute);
    }
    let accept = req.headers().get(header::ACCEPT);
    match req.uri().path() {
        "/.portcullis/callback" => flow::callback(&shared.auth, auth_snap, &req, raw_host).await,
        "/.portcullis/logout" => {
            let scheme = effective_scheme(snap, conn, req.headers());
            flow::logout(&shared.auth, auth_snap, req.headers(), scheme, raw_host).await
        }
        "/.portcullis/logged-out" => Ok(flow::logged_out(request_id, accept)),
        "/.portcullis/backchannel-logout" => flow::backchannel(&shared.auth, auth_snap, req).await,
        "/.portcullis/auth" => forward_auth(shared, snap, conn, &req, raw_host, request_id).await,
        _ => Err(ProxyError::NoRoute),
    }
}

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");

/// `/.portcullis/auth` for other proxies (nginx `auth_request`, Traefik
/// and Caddy `forward_auth`): the route matching the original host and URI
/// decides. 200 with identity headers, 403, or 401; with
/// `X-Forwarded-Host` from a trusted proxy, browsers get the login redirect.
async fn forward_auth(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    req: &Request<Incoming>,
    raw_host: &str,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    let headers = req.headers();
    let trusted = snap.is_trusted_proxy(canonical_ip(conn.peer.ip()));
    let from_proxy = |name: &HeaderName| {
        trusted
            .then(|| headers.get(name).and_then(|v| v.to_str().ok()))
            .flatten()
    };
    let fwd_host = from_proxy(&X_FORWARDED_HOST);
    let target_host = fwd_host.unwrap_or(raw_host);
    let uri = from_proxy(&X_FORWARDED_URI)
        .or_else(|| from_proxy(&X_ORIGINAL_URI))
        .filter(|u| u.starts_with('/'))
        .unwrap_or("/");
    let path = uri.split(['?', '#']).next().unwrap_or("/");
    let mut buf = [0u8; crate::routing::HOST_BUF_LEN];
    let host = crate::routing::normalize_host(target_host, &mut buf)
        .ok_or(ProxyError::BadRequest("The forwarded host is not valid."))?;
    let route = snap.table.lookup(host, path).ok_or(ProxyError::NoRoute)?;
    let ok = || {
        let mut r = Response::new(Body::Empty);
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    };
    let RouteAuth::Oidc(policy) = &route.config.auth else {
        return Ok(ok());
    };
    let (view, sessions) = match resolve(shared, snap, policy) {
        Ok(x) => x,
        Err(_) => return Err(ProxyError::Internal),
    };
    let accept = headers.get(header::ACCEPT);
    match identify(sessions, view, headers, unix_now()).await {
        Identified::Who(who) => match decide(policy, who, request_id, accept) {
            Ok(who) => {
                let mut r = ok();
                who.identity()
                    .apply(r.headers_mut(), policy.identity_headers);
                Ok(r)
            }
            Err(stop) => stop.into_result(&mut None),
        },
        Identified::BadToken => Err(ProxyError::InvalidToken),
        Identified::Unavailable => Err(ProxyError::LoginUnavailable),
        Identified::Nobody if fwd_host.is_some() && is_browser(req.method(), headers) => {
            let scheme = match from_proxy(&HeaderName::from_static("x-forwarded-proto")) {
                Some(p) if p.eq_ignore_ascii_case("https") => "https",
                Some(_) => "http",
                None => effective_scheme(snap, conn, headers),
            };
            let target = LoginTarget {
                scheme,
                host: target_host,
                path_and_query: uri,
            };
            flow::start_login(&shared.auth, view, &target, headers).await
        }
        Identified::Nobody => Err(ProxyError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(h: &HeaderMap) -> Vec<String> {
        h.get_all(header::COOKIE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    #[test]
    fn strips_only_our_cookies() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-portcullis=abc;b=2"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("portcullis_session=x; portcullis_login=y"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("my_portcullis_pref=dark; __Host-portcullis-login=z"),
        );
        strip_session_cookie(&mut h);
        assert_eq!(cookies(&h), ["a=1; b=2", "my_portcullis_pref=dark"]);

        let mut untouched = HeaderMap::new();
        untouched.insert(header::COOKIE, HeaderValue::from_static("a=1;  b=2"));
        strip_session_cookie(&mut untouched);
        assert_eq!(cookies(&untouched), ["a=1;  b=2"]);
    }

    #[test]
    fn browsers_and_bearers() {
        let mut h = HeaderMap::new();
        assert!(!is_browser(&Method::GET, &h));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html,*/*"));
        assert!(is_browser(&Method::GET, &h));
        assert!(!is_browser(&Method::POST, &h));
        h.insert(
            "x-requested-with",
            HeaderValue::from_static("XMLHttpRequest"),
        );
        assert!(!is_browser(&Method::GET, &h));

        let mut a = HeaderMap::new();
        a.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer_token(&a), Some("abc"));
        a.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&a), None);
    }
}
