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

mod bearer;
pub(crate) mod claims;
pub(crate) mod flow;
mod forward_auth;
mod gate;
pub(crate) mod http;
pub mod identity;
pub(crate) mod jwt;
mod logout;
pub mod policy;
pub(crate) mod provider;
pub mod session;
pub mod store;
pub(crate) mod store_redis;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use ::http::header::{self, HeaderMap, HeaderValue};
use ::http::{Request, Response};

use crate::config::RouteConfig;
use crate::config::{Config, OidcConfig, RouteAuth};
use crate::http::body::Body;
use crate::http::conn::ConnInfo;
use crate::http::error::ProxyError;

use self::flow::OUR_COOKIES;
use self::provider::Provider;
use self::session::{Sessions, unix_now};
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
    /// `[cluster]`: the Redis link sessions and sign-ins go through.
    cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    cluster_config: Mutex<Option<crate::config::ClusterConfig>>,
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

    /// The Redis link, with `[cluster]`.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
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
        if let Some(cc) = &config.cluster {
            if self.cluster.get().is_none() {
                let c = crate::cluster::Cluster::new(cc)?;
                tracing::info!(instance = %c.instance, "cluster: sessions and sign-ins shared through Redis");
                self.pending.share(c.clone());
                let _ = self.cluster.set(c);
                *self
                    .cluster_config
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(cc.clone());
            } else {
                let mut kept = self
                    .cluster_config
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let (Some(old), Some(c)) = (kept.as_mut(), self.cluster.get())
                    && old != cc
                {
                    if crate::cluster::link_changed(old, cc) {
                        c.relink(cc)?;
                        tracing::info!(instance = %c.instance, "[cluster] connection settings changed: reconnecting to Redis");
                        old.redis.clone_from(&cc.redis);
                        old.sentinel.clone_from(&cc.sentinel);
                        old.ca_file.clone_from(&cc.ca_file);
                        old.ca_pem.clone_from(&cc.ca_pem);
                        old.user.clone_from(&cc.user);
                        old.password.clone_from(&cc.password);
                    }
                    if old != cc {
                        tracing::warn!(
                            "[cluster] changed (key_prefix, encryption key, instance name or cache lifetime); those are kept until a restart"
                        );
                    }
                }
            }
        } else if self.cluster.get().is_some() {
            tracing::warn!("[cluster] was removed; sessions stay in Redis until a restart");
        }
        if config.oidc.is_empty() {
            return Ok(Arc::new(AuthSnapshot::default()));
        }
        if self.sessions.get().is_none() {
            let store: Arc<dyn store::SessionStore> = match self.cluster.get() {
                Some(c) => Arc::new(store_redis::RedisStore::new(c.clone())),
                None => {
                    let store =
                        RedbStore::open(&config.server.state_dir).map_err(|e| e.to_string())?;
                    tracing::info!(path = %store.path().display(), "session store opened");
                    Arc::new(store)
                }
            };
            let _ = self.sessions.set(Arc::new(Sessions::new(store)));
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
    if let Some(c) = auth.cluster() {
        c.spawn();
    }
    if let Some(s) = auth.sessions() {
        s.spawn_invalidations();
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
// The request path (the gate itself is in `gate`).

pub use self::gate::{Stop, Who, check};

/// What the auth floor needs from the running gateway for one request:
/// its own shared state and snapshot part, the trusted proxies, and (for
/// forward-auth) the route lookup the request path itself uses. Built by
/// the request pipeline; auth never sees the whole snapshot.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub shared: &'a AuthShared,
    pub snap: &'a AuthSnapshot,
    pub trusted_proxies: &'a [ipnet::IpNet],
    /// The route for a normalised host and path, as the pipeline finds it.
    pub find_route: &'a RouteFinder<'a>,
}

/// The pipeline's route lookup, as [`Ctx`] carries it.
pub type RouteFinder<'a> = dyn Fn(&str, &str) -> Result<&'a RouteConfig, ProxyError> + Sync + 'a;

impl Ctx<'_> {
    /// Is this address one of the configured trusted proxies?
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        let ip = crate::http::conn::canonical_ip(ip);
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// The identity headers of the route's style, as header lines written
/// once per session, for a request being forwarded (client-sent ones were
/// already stripped, and, not being in the request's header map, ours
/// cannot be named away by a client's `Connection` header).
#[inline]
pub fn identity_lines<'a>(route: &RouteConfig, who: &'a Who) -> &'a [u8] {
    match &route.auth {
        RouteAuth::Oidc(p) => who.identity().header_lines(p.identity_headers),
        _ => &[],
    }
}

/// Removes our cookies (session and sign-in binding) from the `Cookie`
/// headers forwarded to a backend, on every route. Allocates only when one
/// of them is present (then one buffer per `Cookie` header).
pub fn strip_session_cookie(headers: &mut HeaderMap) {
    fn ours(b: &[u8]) -> bool {
        b.windows(10).any(|w| w == b"portcullis")
    }
    fn without_ours(v: &HeaderValue) -> Option<HeaderValue> {
        // Allocated only once a cookie of someone else's turns up (a
        // browser signed in to us alone sends only ours).
        let mut out: Option<Vec<u8>> = None;
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
            let out = out.get_or_insert_with(|| Vec::with_capacity(v.len()));
            if !out.is_empty() {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(trimmed);
        }
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out?)).ok()
    }
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), second) = (values.next(), values.next()) else {
        return;
    };
    if second.is_none() {
        // The usual case: one Cookie header.
        let b = first.as_bytes();
        if !b.contains(&b';') {
            // One cookie (a browser signed in to us alone sends only ours):
            // its name decides, no scan of the value.
            let name = b.split(|&c| c == b'=').next().unwrap_or(b"").trim_ascii();
            if OUR_COOKIES.iter().any(|n| n.as_bytes() == name) {
                headers.remove(header::COOKIE);
            }
            return;
        }
        if !ours(b) {
            return;
        }
        match without_ours(first) {
            Some(v) => {
                headers.insert(header::COOKIE, v);
            }
            None => {
                headers.remove(header::COOKIE);
            }
        }
        return;
    }
    if !headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| ours(v.as_bytes()))
    {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(without_ours)
        .collect();
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
    cx: Ctx<'_>,
    conn: &ConnInfo,
    req: Request<crate::http::body::Body>,
    raw_host: &str,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    let auth_snap = cx.snap;
    if auth_snap.providers.is_empty() {
        return Err(ProxyError::NoRoute);
    }
    let accept = req.headers().get(header::ACCEPT);
    match req.uri().path() {
        "/.portcullis/callback" => flow::callback(cx.shared, auth_snap, &req, raw_host).await,
        "/.portcullis/logout" => {
            let scheme = gate::effective_scheme(&cx, conn, req.headers());
            let h = req.headers();
            logout::logout(cx.shared, auth_snap, h, scheme, raw_host, request_id).await
        }
        "/.portcullis/logged-out" => Ok(logout::logged_out(req.uri().query(), request_id, accept)),
        "/.portcullis/backchannel-logout" => logout::backchannel(cx.shared, auth_snap, req).await,
        "/.portcullis/auth" => {
            forward_auth::forward_auth(cx, conn, &req, raw_host, request_id).await
        }
        _ => Err(ProxyError::NoRoute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::Method;

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

        let mut one = HeaderMap::new();
        one.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-portcullis=abc; a=1"),
        );
        strip_session_cookie(&mut one);
        assert_eq!(cookies(&one), ["a=1"]);
        let mut only = HeaderMap::new();
        only.insert(
            header::COOKIE,
            HeaderValue::from_static("portcullis_session=x"),
        );
        strip_session_cookie(&mut only);
        assert!(only.get(header::COOKIE).is_none());

        let mut untouched = HeaderMap::new();
        untouched.insert(header::COOKIE, HeaderValue::from_static("a=1;  b=2"));
        strip_session_cookie(&mut untouched);
        assert_eq!(cookies(&untouched), ["a=1;  b=2"]);

        // One cookie alone (the fast path): its name alone decides.
        for (sent, left) in [
            ("__Host-portcullis=abc", None),
            (" portcullis_session = abc", None),
            ("portcullis=abc", Some("portcullis=abc")),
            ("__Host-portcullis-login", None),
            ("my_portcullis_pref=dark", Some("my_portcullis_pref=dark")),
            ("a=portcullis", Some("a=portcullis")),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, HeaderValue::from_static(sent));
            strip_session_cookie(&mut h);
            assert_eq!(
                h.get(header::COOKIE).map(|v| v.to_str().unwrap()),
                left,
                "{sent}"
            );
        }
    }

    #[test]
    fn the_403_page_names_the_user_escaped() {
        let id = HeaderValue::from_static("req-1");
        let r = crate::http::error::forbidden_response("<b>bob</b>", &id, None);
        assert_eq!(r.status(), 403);
        let body = match r.into_body() {
            Body::Full(Some(b)) => String::from_utf8(b.to_vec()).unwrap(),
            _ => panic!("a page"),
        };
        assert!(
            body.contains("signed in as &lt;b&gt;bob&lt;/b&gt;"),
            "{body}"
        );
    }

    #[test]
    fn browsers_and_bearers() {
        let mut h = HeaderMap::new();
        assert!(!gate::is_browser(&Method::GET, &h));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html,*/*"));
        assert!(gate::is_browser(&Method::GET, &h));
        assert!(!gate::is_browser(&Method::POST, &h));
        h.insert(
            "x-requested-with",
            HeaderValue::from_static("XMLHttpRequest"),
        );
        assert!(!gate::is_browser(&Method::GET, &h));

        let mut a = HeaderMap::new();
        a.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer::bearer_token(&a), Some("abc"));
        a.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer::bearer_token(&a), None);
    }
}
