//! The request pipeline (floor 6 of docs/ARCHITECTURE.md): [`handle`]
//! counts and logs around [`route_request`], whose named steps normalise
//! the target, answer the reserved endpoints, find the route, apply its
//! address rules and auth gate, then answer or forward (`forward`, with
//! header rules in `headers`). `server` holds the accept loops (plain and
//! TLS) and the HTTP/1 vs HTTP/2 dispatch. Errors are `http::error`'s.

pub(crate) mod access;
pub(crate) mod forward;
pub mod headers;
mod proxy_protocol;
pub(crate) mod server;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};

use self::forward::Forward;
use crate::config::Action;
use crate::http::body::Body;
pub use crate::http::conn::ConnInfo;
use crate::http::error::{ProxyError, Side};
use crate::http::{answer, request_id};
use crate::routing::{HOST_BUF_LEN, normalize_host};
use crate::snapshot::{Shared, Snapshot};
use crate::telemetry::metrics::UpstreamFailure;

/// The path prefix reserved on every host for the gateway's own endpoints.
pub const RESERVED_PREFIX: &str = "/.portcullis";

/// Where ACME HTTP-01 validators fetch their tokens.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Serves one request. Never fails: every error becomes a response here.
///
/// Not an `async fn`, and neither are the steps it awaits: an `async fn`
/// keeps a copy of its by-value arguments next to the locals it moves them
/// into, and nested calls add those copies up. The future is boxed per
/// request and moved while it starts, so its size is paid on every request.
#[allow(clippy::manual_async_fn)]
///
/// Borrows the gateway and connection state from the connection's future
/// that drives it (no reference counts touched per request).
pub fn handle<'a>(
    shared: &'a Shared,
    conn: &'a Arc<ConnInfo>,
    req: Request<crate::http::body::Body>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'a {
    async move {
        let start = Instant::now();
        let listener = shared.metrics.listener(conn.scheme.is_https());
        // Decremented on drop: the future is dropped when the client goes away.
        let _in_flight = crate::telemetry::metrics::InFlight::enter(&listener.in_flight);
        let snap = shared.current();
        let request_id = request_id::request_id(req.headers(), &shared.request_ids);
        let accept = req.headers().get(header::ACCEPT).cloned();
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let method = req.method().clone();
        let log = tracing::enabled!(target: "portcullis::access", tracing::Level::INFO);
        // Written when the response ends, or with 499 if this future is
        // dropped first (the client went away). Boxed: most requests are
        // not logged, and inline it would be part of every request's state.
        let mut pending = access::Guard::new(log.then(|| {
            access::Record::start(
                start,
                conn,
                &request_id,
                &req,
                snap.server.access_log_format,
            )
        }));

        let mut outcome = Outcome::default();
        let mut resp = match route_request(shared, &snap, conn, req, &request_id, &mut outcome)
            .await
        {
            // The gateway's own refusals (an access list's 401, a 429, a
            // signed-in user's 403) take the configured page too.
            Ok(r) if r.status().as_u16() >= 400 => {
                let pages = outcome.route.map_or(&snap.server.options.error_pages, |r| {
                    &r.config.options.error_pages
                });
                if pages.is_empty() {
                    r
                } else {
                    crate::policy::pages::own_page(r, pages, &request_id, accept.as_ref())
                }
            }
            Ok(r) => r,
            Err(e) => {
                let pages = outcome.route.map_or(&snap.server.options.error_pages, |r| {
                    &r.config.options.error_pages
                });
                let resp = match grpc.then(|| e.grpc_response()).flatten() {
                    Some(r) => r,
                    None if pages.is_empty() => e.response(&request_id, accept.as_ref()),
                    None => {
                        crate::policy::pages::error_page(&e, pages, &request_id, accept.as_ref())
                    }
                };
                outcome.error = Some(e);
                resp
            }
        };
        resp.headers_mut()
            .insert(request_id::REQUEST_ID, request_id.clone());
        if conn.scheme.is_https() {
            let hsts = match &outcome.hsts {
                Some(route_hsts) => route_hsts.as_ref(),
                None => snap.server.hsts.as_ref(),
            };
            if let Some(v) = hsts
                && !resp
                    .headers()
                    .contains_key(header::STRICT_TRANSPORT_SECURITY)
            {
                resp.headers_mut()
                    .insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
            }
        }

        let took = start.elapsed();
        let route_metrics = outcome
            .route
            .map_or(&shared.metrics.unrouted, |r| &r.metrics);
        route_metrics.request(&method, resp.status(), took);
        if let Some(e) = &outcome.error {
            if let Some(kind) = upstream_failure(e) {
                route_metrics.upstream_error(kind);
            }
            log_failure(e, &outcome, &request_id);
        }

        let logging = pending.record().is_some();
        if let Some(rec) = pending.record() {
            rec.status = resp.status().as_u16();
            rec.client_ip = outcome.client_ip;
            rec.route = outcome.route.map(|r| r.log_name.clone());
            rec.upstream = outcome
                .route
                .zip(outcome.upstream_index)
                .and_then(|(r, i)| r.log_upstreams.get(i).cloned());
            rec.user = outcome.user.take().unwrap_or_default();
            rec.error = outcome.error.as_ref().map_or("", ProxyError::kind);
        }
        if logging {
            resp = resp.map(|body| pending.wrap(body));
        }
        Ok(resp)
    }
}

/// The `portcullis_upstream_errors_total` kind of an error, if upstream.
fn upstream_failure(e: &ProxyError) -> Option<UpstreamFailure> {
    match e {
        ProxyError::UpstreamUnavailable(_) => Some(UpstreamFailure::Refused),
        ProxyError::UpstreamTimeout(_) => Some(UpstreamFailure::Timeout),
        ProxyError::UpstreamBroken(_) => Some(UpstreamFailure::Reset),
        _ => None,
    }
}

/// Logs a failure that is not the client's, from the error and its cause
/// (never on the page): an upstream's with the route and upstream it
/// happened on, our own as an error. The client's own mistakes are in the
/// access log only.
#[cold]
fn log_failure(e: &ProxyError, outcome: &Outcome<'_>, request_id: &HeaderValue) {
    let request_id = request_id.to_str().unwrap_or("");
    let route = outcome.route.map_or("", |r| r.config.name.as_str());
    match e.side() {
        Side::Downstream => {}
        Side::Upstream => {
            let upstream = match (outcome.route, outcome.upstream_index) {
                (Some(r), Some(i)) => r.config.upstreams()[i].url.as_str(),
                (Some(_), None) => "(none usable)",
                (None, _) => "",
            };
            tracing::warn!(route, upstream, request_id, error = %e, "upstream request failed");
        }
        Side::Internal => tracing::error!(route, request_id, error = %e, "request failed"),
    }
}

/// What routing decided, for metrics and the access log. Borrows from the
/// snapshot, so filling it in allocates nothing.
#[derive(Default)]
struct Outcome<'a> {
    route: Option<&'a crate::snapshot::Route>,
    /// Which of the route's upstreams answered or failed last.
    upstream_index: Option<usize>,
    /// The authenticated user's name, when a session or token identified one.
    user: Option<String>,
    client_ip: Option<std::net::IpAddr>,
    error: Option<ProxyError>,
    /// The route's HSTS setting, once a route is chosen.
    hsts: Option<Option<HeaderValue>>,
}

/// Routes one request through the pipeline's steps: [`normalise`] the
/// target, find the [`request_host`], [`select`] what answers it (an ACME
/// challenge, one of the gateway's own endpoints, or a route), apply the
/// route's address rules ([`client_of`]), pass the auth gate, then answer or
/// [`prepare_forward`] and forward. A plain `fn` for the reason given at
/// [`handle`]; the steps that do not wait are plain functions, so their
/// locals (the host buffer among them) are never part of this future.
#[allow(clippy::manual_async_fn)]
fn route_request<'a>(
    shared: &Shared,
    snap: &'a Snapshot,
    conn: &ConnInfo,
    mut req: Request<Body>,
    request_id: &HeaderValue,
    outcome: &mut Outcome<'a>,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send {
    async move {
        normalise(&mut req)?;
        let (raw_host, first_host) = request_host(&req)?;
        let selected = match select(shared, snap, conn, &req, raw_host) {
            // `[server] default_route` for requests no route matches.
            Err(ProxyError::NoRoute)
                if snap.server.options.default_route == crate::config::DefaultRoute::Drop =>
            {
                // Logged as a 444 with error `no_route`; never sent.
                outcome.error = Some(ProxyError::NoRoute);
                return Ok(crate::http::CloseWithoutAnswer::response());
            }
            Err(ProxyError::NoRoute)
                if let Some(r) = crate::policy::pages::default_route(
                    &snap.server.options.default_route,
                    req.uri(),
                ) =>
            {
                return Ok(r);
            }
            other => other?,
        };
        let (route, https_redirect) = match selected {
            Selected::Answer(r) => return Ok(r),
            Selected::SharedChallenge(token) => {
                return Ok(Box::pin(shared_challenge(shared, token)).await);
            }
            Selected::Endpoint => {
                let raw_host = raw_host.to_string();
                // Boxed: the login callback's state (code exchange, token
                // checks) is several KiB that every proxied request would
                // otherwise carry.
                return Box::pin(reserved_endpoint(
                    shared, snap, conn, req, &raw_host, request_id,
                ))
                .await;
            }
            Selected::Route(route, redirect) => (route, redirect),
        };
        outcome.route = Some(route);
        outcome.hsts = Some(route.config.hsts.clone());
        let client = client_of(snap, conn, &req);
        outcome.client_ip = Some(client.ip);
        if !route.config.limits.allows(client.ip) {
            return Err(ProxyError::AddressDenied);
        }
        if let Some(r) = https_redirect {
            return Ok(r);
        }
        // The route's options (`policy`): the access list before the SSO
        // gate. Boxed: a route without options carries none of this state.
        let policy = route.policy.as_deref();
        let mut basic_user = None;
        if let Some(p) = policy
            && p.has_access()
        {
            match Box::pin(p.admit(client.ip, req.headers(), request_id)).await {
                Ok(u) => basic_user = u,
                Err(r) => return refused(r),
            }
        }

        // The auth gate (public routes pass at once).
        let find = |host: &str, path: &str| find_route(snap, host, path).map(|r| &r.config);
        let cx = auth_context(shared, snap, &find);
        let checked = crate::auth::check(cx, conn, &req, &route.config, raw_host, request_id).await;
        count_gate(&shared.metrics.auth, &checked);
        let who = match checked {
            Ok(who) => who,
            Err(stop) => return stop.into_result(&mut outcome.error),
        };
        if let Some(w) = &who
            && tracing::enabled!(target: "portcullis::access", tracing::Level::INFO)
        {
            outcome.user = Some(w.identity().display_name().to_string());
        }
        // A route with options: the placeholders' values and the client's
        // Accept-Encoding (read now: forwarding hands the header map on),
        // only when a rule's value uses a placeholder or the route
        // compresses. Boxed, so a route without them carries one pointer.
        let mut extras: Option<Box<(crate::policy::Placeholders, Option<HeaderValue>)>> = None;
        if let Some(p) = policy {
            let user: Option<&str> = match &who {
                Some(w) => Some(w.identity().display_name()),
                None => basic_user.as_deref(),
            };
            if let Some(u) = user
                && outcome.user.is_none()
                && tracing::enabled!(target: "portcullis::access", tracing::Level::INFO)
            {
                outcome.user = Some(u.to_string());
            }
            if let Err(r) = p.limit(client.ip, user, request_id) {
                return refused(r);
            }
            if p.needs_placeholders() {
                let ph = crate::policy::Placeholders {
                    client_ip: client.ip,
                    host: placeholder_host(&req, first_host, raw_host),
                    request_id: request_id.clone(),
                    user: match &who {
                        Some(w) => Some(w.identity().display_name().into()),
                        None => basic_user.clone(),
                    },
                    scheme: conn.scheme,
                };
                extras = Some(Box::new((
                    ph,
                    req.headers().get(header::ACCEPT_ENCODING).cloned(),
                )));
            }
        }

        let mut result = match &route.config.action {
            Action::Respond(r) => Ok(answer::respond(r)),
            Action::Redirect(r) => Ok(answer::redirect(r, req.uri())),
            Action::Upstream(_) => {
                let host_value = match first_host {
                    Some(v) => v.clone(),
                    None => HeaderValue::from_str(raw_host)
                        .map_err(|_| ProxyError::BadRequest("The Host header is not valid."))?,
                };
                let (upgrade, forwarded) = prepare_forward(conn, &mut req, &client, &host_value);
                if let Some(p) = policy
                    && p.has_request_rules()
                {
                    p.request_headers(req.headers_mut(), extras.as_ref().map(|x| &x.0));
                }
                let fwd = Forward {
                    route,
                    server: &snap.server,
                    host_value: &host_value,
                    identity: who
                        .as_ref()
                        .map_or(&[][..], |w| crate::auth::identity_lines(&route.config, w)),
                    upgrade,
                    forwarded,
                    request_id,
                    rule_lines: policy.map_or(&[][..], |p| p.request_lines()),
                };
                let (result, used) = forward::forward(fwd, &mut req).await;
                outcome.upstream_index = used;
                result
            }
        };
        if let Some(p) = policy
            && p.has_response_side()
            && let Ok(resp) = &mut result
            && !p.respond_in_place(resp, extras.as_ref().map(|x| &x.0))
            && let Some(x) = extras
            && let Ok(resp) = result
        {
            // Compression: the tower chain (which always has the extras).
            let (ph, accept_encoding) = *x;
            result = Ok(Box::pin(p.respond(resp, accept_encoding, ph)).await);
        }
        if who.is_some() {
            private_to_user(&mut result);
        }
        result
    }
}

/// The host for the `{host}` placeholder: the one [`request_host`] chose
/// (the URI's authority, else the Host header), shared, not copied.
fn placeholder_host(
    req: &Request<Body>,
    first_host: Option<&HeaderValue>,
    raw_host: &str,
) -> crate::policy::RequestHost {
    match (req.uri().authority(), first_host) {
        (Some(a), _) => crate::policy::RequestHost::Authority(a.clone()),
        (None, Some(h)) => crate::policy::RequestHost::Header(h.clone()),
        // Not reached: `request_host` found one of the two.
        (None, None) => crate::policy::RequestHost::Header(
            HeaderValue::from_str(raw_host).unwrap_or(HeaderValue::from_static("")),
        ),
    }
}

/// A request the route's options turned away.
fn refused(r: crate::policy::Refusal) -> Result<Response<Body>, ProxyError> {
    match r {
        crate::policy::Refusal::Error(e) => Err(e),
        crate::policy::Refusal::Respond(resp) => Ok(*resp),
    }
}

/// Refuses targets a backend could read two ways, and normalises the path
/// once, so routing, the auth gate and the backend all see the same one.
/// (Content-Length together with Transfer-Encoding never gets here: the
/// HTTP/1 codec reads such a request as chunked, drops the length and
/// closes the connection after the response, RFC 9112 6.3; HTTP/2 has no
/// such framing.)
fn normalise(req: &mut Request<Body>) -> Result<(), ProxyError> {
    if headers::is_upgrade_request(req.headers()) && has_body(req) {
        return Err(ProxyError::BadRequest(
            "An upgrade request may not have a body.",
        ));
    }
    if let std::borrow::Cow::Owned(p) = crate::http::normalize::normalize_path(req.uri().path())
        .map_err(|e| ProxyError::BadRequest(e.reason()))?
    {
        let uri = with_path(req.uri(), &p)?;
        *req.uri_mut() = uri;
    }
    Ok(())
}

/// The host as the client sent it: `:authority` (HTTP/2, absolute-form)
/// or the one Host header; if both are present they must agree. Also the
/// Host header itself, reused as a header value when forwarding.
fn request_host(req: &Request<Body>) -> Result<(&str, Option<&HeaderValue>), ProxyError> {
    let mut host_headers = req.headers().get_all(header::HOST).iter();
    let first_host = host_headers.next();
    if host_headers.next().is_some() {
        return Err(ProxyError::BadRequest(
            "The request has more than one Host header.",
        ));
    }
    let header_host = match first_host {
        Some(h) => Some(
            h.to_str()
                .map_err(|_| ProxyError::BadRequest("The Host header is not valid."))?,
        ),
        None => None,
    };
    let uri_host = req.uri().authority().map(|a| a.as_str());
    let raw_host = match (uri_host, header_host) {
        (Some(u), Some(h)) if !same_host(u, h) => {
            return Err(ProxyError::BadRequest(
                "The request names two different hosts.",
            ));
        }
        (Some(u), _) => u,
        (None, Some(h)) => h,
        (None, None) => return Err(ProxyError::BadRequest("The request has no Host header.")),
    };
    Ok((raw_host, first_host))
}

/// What answers a request, once its host is known.
enum Selected<'a> {
    /// An HTTP-01 token this instance does not know: asked of the
    /// cluster's shared store.
    SharedChallenge(String),
    /// Answered here: an ACME HTTP-01 challenge, or a logout over plain
    /// HTTP sent to HTTPS.
    Answer(Response<Body>),
    /// One of the gateway's own endpoints under [`RESERVED_PREFIX`].
    Endpoint,
    /// A route, and the redirect to HTTPS to send once its address rules
    /// have passed (a denied client gets 403, not a redirect).
    Route(&'a crate::snapshot::Route, Option<Response<Body>>),
}

/// Checks the host against the TLS name, then picks what answers: an ACME
/// challenge (plain HTTP), the reserved endpoints, or the route.
fn select<'a>(
    shared: &Shared,
    snap: &'a Snapshot,
    conn: &ConnInfo,
    req: &Request<Body>,
    raw_host: &str,
) -> Result<Selected<'a>, ProxyError> {
    let mut buf = [0u8; HOST_BUF_LEN];
    let host = normalize_host(raw_host, &mut buf)
        .ok_or(ProxyError::BadRequest("The Host header is not valid."))?;
    let path = req.uri().path();
    if let Some(sni) = conn.sni.as_deref()
        && host != sni
    {
        // HTTP/2 clients may reuse a connection for another name the same
        // certificate covers; anything else was meant for another site.
        let same_cert = match (shared.certs.resolve(sni), shared.certs.resolve(host)) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a.key, &b.key),
            _ => false,
        };
        if !same_cert {
            return Err(ProxyError::Misdirected);
        }
    }
    if !conn.scheme.is_https()
        && let Some(token) = path.strip_prefix(ACME_CHALLENGE_PREFIX)
    {
        let local = shared
            .certs
            .http_tokens
            .get(token)
            .map(|k| k.value().clone());
        if local.is_none() && shared.certs.shared.get().is_some() {
            // Maybe another instance's order (`[cluster]`).
            return Ok(Selected::SharedChallenge(token.to_string()));
        }
        return Ok(Selected::Answer(answer::acme_challenge(local)));
    }
    let port = shared.https_port.load(std::sync::atomic::Ordering::Acquire);
    if routing_prefix_is_reserved(path) {
        // The session cookie is Secure: a logout over plain HTTP would not
        // carry it, so send it to HTTPS first (other endpoints, such as
        // forward-auth from a proxy on the internal network, stay as they are).
        let endpoint = path.strip_prefix(RESERVED_PREFIX).unwrap_or("");
        if !conn.scheme.is_https() && endpoint == "/logout" && port != 0 {
            return Ok(Selected::Answer(answer::https_redirect(
                host,
                port,
                req.uri(),
            )));
        }
        return Ok(Selected::Endpoint);
    }
    let route = find_route(snap, host, path)?;
    // Made here, where the host is in `buf`.
    let redirect = (!conn.scheme.is_https() && route.config.https_redirect && port != 0)
        .then(|| answer::https_redirect(host, port, req.uri()));
    Ok(Selected::Route(route, redirect))
}

/// The key authorization another instance published for `token`.
async fn shared_challenge(shared: &Shared, token: String) -> Response<Body> {
    let key_auth = match shared.certs.shared.get() {
        Some(s) => s.http_token(&token).await,
        None => None,
    };
    answer::acme_challenge(key_auth)
}

/// The gateway's own endpoints (sign-in callback, logout, back-channel
/// logout, forward-auth), counted as logins and logouts.
#[allow(clippy::manual_async_fn)]
fn reserved_endpoint<'a>(
    shared: &'a Shared,
    snap: &'a Snapshot,
    conn: &'a ConnInfo,
    req: Request<Body>,
    raw_host: &'a str,
    request_id: &'a HeaderValue,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a {
    async move {
        let counter = match req.uri().path().strip_prefix(RESERVED_PREFIX) {
            Some("/callback") => Some(true),
            Some("/logout") => Some(false),
            _ => None,
        };
        let find = |host: &str, path: &str| find_route(snap, host, path).map(|r| &r.config);
        let cx = auth_context(shared, snap, &find);
        let r = crate::auth::endpoint(cx, conn, req, raw_host, request_id).await;
        let a = &shared.metrics.auth;
        match (counter, &r) {
            // A callback that ends in a redirect with a new session is a login.
            (Some(true), Ok(resp))
                if resp.status().is_redirection()
                    && resp.headers().contains_key(header::SET_COOKIE) =>
            {
                a.login_ok.fetch_add(1, Relaxed)
            }
            (Some(true), _) => a.login_failed.fetch_add(1, Relaxed),
            // A cross-site logout answered with a confirm page ended nothing.
            (Some(false), Ok(resp)) if resp.status().is_redirection() => {
                a.logout.fetch_add(1, Relaxed)
            }
            _ => 0,
        };
        r
    }
}

/// The parts of the gateway's state the auth floor works with.
fn auth_context<'a>(
    shared: &'a Shared,
    snap: &'a Snapshot,
    find: &'a crate::auth::RouteFinder<'a>,
) -> crate::auth::Ctx<'a> {
    crate::auth::Ctx {
        shared: &shared.auth,
        snap: &snap.auth,
        trusted_proxies: &snap.server.trusted_proxies,
        find_route: find,
    }
}

/// Who the client is, as far as the route's address rules go.
struct Client {
    /// The TCP peer (IPv4-mapped addresses as IPv4).
    peer: std::net::IpAddr,
    /// Is the peer a trusted proxy?
    peer_trusted: bool,
    /// The client's address: the peer, or from a trusted proxy's headers.
    ip: std::net::IpAddr,
}

/// The client's address, for the route's `allow`/`deny` rules, the logs
/// and the forwarding headers.
fn client_of(snap: &Snapshot, conn: &ConnInfo, req: &Request<Body>) -> Client {
    let peer = crate::http::conn::canonical_ip(conn.peer.ip());
    let peer_trusted = snap.is_trusted_proxy(peer);
    let ip = crate::http::conn::client_ip(req.headers(), peer, |ip| snap.is_trusted_proxy(ip));
    Client {
        peer,
        peer_trusted,
        ip,
    }
}

/// Counts the auth gate's verdict: bearer tokens taken or refused, users
/// denied by a route's policy.
fn count_gate(
    a: &crate::telemetry::metrics::AuthMetrics,
    checked: &Result<Option<crate::auth::Who>, crate::auth::Stop>,
) {
    match checked {
        Ok(Some(crate::auth::Who::Bearer(_))) => {
            a.bearer_ok.fetch_add(1, Relaxed);
        }
        Err(crate::auth::Stop::Error(ProxyError::InvalidToken)) => {
            a.bearer_rejected.fetch_add(1, Relaxed);
        }
        Err(
            crate::auth::Stop::Respond(_, Some(ProxyError::Forbidden))
            | crate::auth::Stop::Error(ProxyError::Forbidden),
        ) => {
            a.denied.fetch_add(1, Relaxed);
        }
        _ => {}
    }
}

/// Rewrites the request's headers for the backend. Hop-by-hop headers go
/// first, so a client's `Connection` header can name only its own headers
/// away, never the ones we add (X-Forwarded-*, X-Real-IP, X-Request-Id).
/// Returns whether this is an upgrade, and the forwarding header lines to
/// write (none when a trusted proxy's were merged into the map).
fn prepare_forward<'c>(
    conn: &'c ConnInfo,
    req: &mut Request<Body>,
    client: &Client,
    host_value: &HeaderValue,
) -> (bool, Option<forward::Forwarded<'c>>) {
    let upgrade =
        headers::is_upgrade_request(req.headers()) && req.version() == http::Version::HTTP_11;
    let h = req.headers_mut();
    headers::remove_hop_by_hop(h, upgrade);
    headers::strip_spoofable(h, client.peer_trusted);
    // HTTP/2 cookie crumbs become one line for the HTTP/1.1 hop.
    headers::join_cookies(h);
    // Our cookies never reach a backend; who the user is goes as
    // identity header lines instead.
    crate::auth::strip_session_cookie(h);
    let forwarded = if client.peer_trusted {
        let origin = headers::Origin {
            peer: client.peer,
            peer_value: &conn.peer_value,
            peer_trusted: true,
            scheme: conn.scheme,
            host: host_value,
        };
        headers::set_forwarded(h, &origin, client.ip);
        None
    } else {
        Some(forward::Forwarded {
            peer: &conn.peer_value,
            scheme: conn.scheme,
        })
    };
    (upgrade, forwarded)
}

/// A signed-in user's pages are theirs alone: without a Cache-Control of
/// the backend's own, shared caches must not keep them.
fn private_to_user(result: &mut Result<Response<Body>, ProxyError>) {
    if let Ok(r) = result
        && !r.headers().contains_key(header::CACHE_CONTROL)
    {
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
}

/// The route step every entry point shares (requests, and forward-auth
/// for other proxies' requests), on a normalised host and path: the path
/// itself and its lenient reading must agree on the route (400 if not,
/// see `routing`), no route is a 404.
#[inline]
pub fn find_route<'s>(
    snap: &'s Snapshot,
    host: &str,
    path: &str,
) -> Result<&'s crate::snapshot::Route, ProxyError> {
    match snap.table.route(host, path) {
        Ok(Some(route)) => Ok(route),
        Ok(None) => Err(ProxyError::NoRoute),
        Err(e) => Err(ProxyError::BadRequest(e.reason())),
    }
}

/// Do two host values name the same host (ignoring case, port and a
/// trailing dot)? `http://a.test:80/` with `Host: a.test` is one host.
fn same_host(a: &str, b: &str) -> bool {
    let (mut x, mut y) = ([0u8; HOST_BUF_LEN], [0u8; HOST_BUF_LEN]);
    match (normalize_host(a, &mut x), normalize_host(b, &mut y)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// True when the request announces a body.
fn has_body(req: &Request<Body>) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || crate::h1::wire::content_length(req.headers()).is_some_and(|n| n > 0)
}

/// The same URI with another path (query kept).
fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, ProxyError> {
    let mut parts = uri.clone().into_parts();
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| ProxyError::BadRequest("The request target is not valid."))?,
    );
    http::Uri::from_parts(parts)
        .map_err(|_| ProxyError::BadRequest("The request target is not valid."))
}

fn routing_prefix_is_reserved(path: &str) -> bool {
    crate::routing::prefix_matches(RESERVED_PREFIX, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_prefix() {
        assert!(routing_prefix_is_reserved("/.portcullis/callback"));
        assert!(routing_prefix_is_reserved("/.portcullis"));
        assert!(!routing_prefix_is_reserved("/.portcullisx"));
    }
}
