//! Forwarding one request to an upstream, streaming bodies both ways, and
//! relaying protocol upgrades (WebSocket) once the backend has agreed with
//! a 101.
//!
//! Requests go over per-thread pooled upstream connections on our HTTP/1
//! codec ([`crate::upstream::pool`]), plain or TLS, or over a shared HTTP/2
//! connection ([`crate::upstream::h2`]) to an upstream that speaks it.

use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper_util::rt::TokioIo;

use super::headers;
use crate::config::{ServerConfig, UpstreamProtocol, UpstreamTarget};
use crate::http::body::{Body, Limited, TripWire, Tripped};
use crate::http::error::{Cause, ProxyError};
use crate::snapshot::Route;
use crate::upstream::conn::{self as pool_conn, Outgoing};
use crate::upstream::{h2, pool};

/// Every upstream of the route is ejected, down or already tried.
const NONE_USABLE: Cause = Cause::Said("no upstream of the route is usable (ejected or down)");

/// Waits for response headers: `timeout` from the end of the upload
/// (`wire` tells when the body is done; `None` for bodiless requests).
///
/// Takes the future pinned by the caller: an `async fn` moving its argument
/// into a local would hold two copies of it in its state.
async fn await_response<T>(
    mut fut: std::pin::Pin<&mut impl std::future::Future<Output = Result<T, ProxyError>>>,
    timeout: Duration,
    wire: Option<&TripWire>,
) -> Result<T, ProxyError> {
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            r = fut.as_mut() => return r,
            _ = tokio::time::sleep_until(deadline) => {
                if wire.is_none_or(TripWire::body_done) {
                    return Err(ProxyError::UpstreamTimeout(Cause::Said(
                        "no answer within the route's timeout",
                    )));
                }
                deadline = tokio::time::Instant::now() + timeout;
            }
        }
    }
}

/// The request as it left the client, reduced to what forwarding needs.
pub struct Forward<'a> {
    pub route: &'a Route,
    pub server: &'a ServerConfig,
    /// The host as the client sent it (with port), for a preserved Host header.
    pub host_value: &'a HeaderValue,
    /// The signed-in user's identity headers, as header lines.
    pub identity: &'a [u8],
    /// The client asked for a protocol upgrade (HTTP/1.1); hop-by-hop
    /// headers are already removed (but for `Connection: upgrade` and
    /// `Upgrade` when this is set).
    pub upgrade: bool,
    /// `X-Forwarded-*` and `X-Real-IP` to write, when the peer is not a
    /// trusted proxy (from a trusted one they were merged into the
    /// request's header map by [`headers::set_forwarded`]).
    pub forwarded: Option<Forwarded<'a>>,
    /// This request's id (`X-Request-Id`).
    pub request_id: &'a HeaderValue,
    /// The route's request header rules with literal values, as header
    /// lines (`Policy::request_lines`), written after the client's.
    pub rule_lines: &'a [u8],
}

/// The forwarding headers of a request from a peer that is not a trusted
/// proxy: the client is the TCP peer, and what the client itself sent
/// under these names was removed.
pub struct Forwarded<'a> {
    /// The peer's address, formatted once per connection: `X-Forwarded-For`
    /// and `X-Real-IP`.
    pub peer: &'a HeaderValue,
    /// How the client reached us.
    pub scheme: crate::http::Scheme,
}

impl Forward<'_> {
    /// The header lines the gateway adds to the upstream request, in
    /// pieces, written straight into its head: no header-map work per
    /// request for them.
    fn added_lines(&self) -> [&[u8]; 13] {
        let id = self.request_id.as_bytes();
        match &self.forwarded {
            Some(f) => [
                b"x-forwarded-for: ",
                f.peer.as_bytes(),
                b"\r\nx-forwarded-proto: ",
                f.scheme.as_str().as_bytes(),
                b"\r\nx-forwarded-host: ",
                self.host_value.as_bytes(),
                b"\r\nx-real-ip: ",
                f.peer.as_bytes(),
                b"\r\nx-request-id: ",
                id,
                b"\r\n",
                self.identity,
                self.rule_lines,
            ],
            None => [
                b"x-request-id: ",
                id,
                b"\r\n",
                self.identity,
                self.rule_lines,
                b"",
                b"",
                b"",
                b"",
                b"",
                b"",
                b"",
                b"",
            ],
        }
    }

    /// The Host header's value for `target`: the client's, or the
    /// target's authority (validated as a URI authority with the config).
    fn host_for<'b>(&'b self, target: &'b UpstreamTarget) -> &'b [u8] {
        if self.route.config.preserve_host {
            self.host_value.as_bytes()
        } else {
            target.authority.as_str().as_bytes()
        }
    }
}

/// Sends `req` (headers already sanitised by the caller) to one of the
/// route's upstreams. Idempotent requests without a body that could not
/// connect are retried on the next usable upstream (nothing was sent).
/// Returns the outcome and the index of the upstream that answered or
/// failed last.
///
/// Takes the request by reference (its body and headers are taken out of
/// it): moved into this future it would be held twice, once as the
/// argument and once in pieces.
pub async fn forward(
    fwd: Forward<'_>,
    req: &mut Request<crate::http::body::Body>,
) -> (Result<Response<Body>, ProxyError>, Option<usize>) {
    if let Err(e) = check_request(&fwd, req) {
        return (Err(e), None);
    }
    let client_upgrade = fwd.upgrade.then(|| take_upgrade(req));
    let body = std::mem::take(req.body_mut());
    let has_body = !body.is_end_stream();
    // Only a request with a body has limits that can trip.
    let wire = has_body.then(TripWire::default);
    let body = match limit_body(&fwd, body, wire.as_ref(), req.headers_mut()).await {
        Ok(b) => b,
        Err(e) => return (Err(e), None),
    };
    // A gRPC deadline is the response timeout of its request.
    let timeout = grpc_timeout(req.headers()).unwrap_or(fwd.route.config.timeout);
    let attempt = Attempt {
        timeout,
        wire: wire.as_ref(),
    };
    if !retryable(&fwd, req, has_body) {
        let Some(i) = fwd
            .route
            .balancer
            .pick(&[], &fwd.route.config, &fwd.route.metrics)
        else {
            return (Err(ProxyError::UpstreamUnavailable(NONE_USABLE)), None);
        };
        let headers = std::mem::take(req.headers_mut());
        let r = send_one(&fwd, i, req, headers, body, client_upgrade, &attempt).await;
        return (r, Some(i));
    }
    forward_with_retries(&fwd, req, &attempt).await
}

/// The request's own limits, before any upstream is involved.
fn check_request(fwd: &Forward<'_>, req: &mut Request<Body>) -> Result<(), ProxyError> {
    if req.version() == http::Version::HTTP_2 {
        http2_head_rules(req)?;
    }
    let limits = &fwd.route.config.limits;
    if let (Some(max), Some(len)) = (
        limits.max_body,
        crate::h1::wire::content_length(req.headers()),
    ) && len > max
    {
        return Err(ProxyError::PayloadTooLarge);
    }
    Ok(())
}

/// The client's side of an upgrade, taken out of the request.
fn take_upgrade(req: &mut Request<Body>) -> ClientUpgrade {
    match req
        .extensions_mut()
        .remove::<crate::h1::upgrade::OnUpgrade>()
    {
        Some(own) => ClientUpgrade::H1(own),
        None => ClientUpgrade::Hyper(hyper::upgrade::on(&mut *req)),
    }
}

/// The request body with its size and stall limits (and read ahead when
/// the route buffers requests); `Empty` without a body.
async fn limit_body(
    fwd: &Forward<'_>,
    body: Body,
    wire: Option<&TripWire>,
    headers: &mut http::HeaderMap,
) -> Result<Body, ProxyError> {
    let Some(wire) = wire else {
        return Ok(Body::Empty);
    };
    let limits = &fwd.route.config.limits;
    let mut limited = Box::new(Limited::new(
        body,
        limits.max_body,
        fwd.server.request_body_timeout,
        wire.clone(),
    ));
    if let Some(max) = limits.request_buffer {
        buffer_body(&mut limited, max, wire, headers).await?;
    }
    Ok(Body::Limited(limited))
}

/// Whether a failed connect may be tried on the next upstream: nothing
/// was sent, and sending it twice is harmless.
fn retryable(fwd: &Forward<'_>, req: &Request<Body>, has_body: bool) -> bool {
    !has_body
        && !fwd.upgrade
        && fwd.route.config.upstreams().len() > 1
        && matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        )
}

/// A body-less idempotent request: the next usable upstream after one
/// that could not be connected to.
async fn forward_with_retries(
    fwd: &Forward<'_>,
    req: &Request<Body>,
    attempt: &Attempt<'_>,
) -> (Result<Response<Body>, ProxyError>, Option<usize>) {
    let route = fwd.route;
    let mut tried: Vec<usize> = Vec::with_capacity(route.config.upstreams().len());
    let mut last = Err(ProxyError::UpstreamUnavailable(NONE_USABLE));
    while let Some(i) = route.balancer.pick(&tried, &route.config, &route.metrics) {
        tried.push(i);
        let headers = req.headers().clone();
        match send_one(fwd, i, req, headers, Body::Empty, None, attempt).await {
            Err(e @ ProxyError::UpstreamUnavailable(_)) => {
                let url = &route.config.upstreams()[i].url;
                tracing::debug!(route = %route.config.name, upstream = %url, error = %e, "connect failed; trying the next upstream");
                last = Err(e);
            }
            other => return (other, Some(i)),
        }
    }
    (last, tried.last().copied())
}

/// `grpc-timeout` (`<digits><unit>`, units H M S m u n), when the request
/// is gRPC.
fn grpc_timeout(h: &http::HeaderMap) -> Option<Duration> {
    // A constant name: looking up by `&str` parses and checks the name on
    // every request (about 340 instructions of a plain request's 27,600).
    const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    let v = h.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What every attempt of one request shares.
struct Attempt<'a> {
    /// Time allowed for the response head.
    timeout: Duration,
    /// The request body's limits (`None` without a body).
    wire: Option<&'a TripWire>,
}

/// What our HTTP/1 parser enforces while it reads a head, for an HTTP/2
/// request about to become an HTTP/1.1 head for a backend: the h2 layer
/// lets identical repeated `content-length`s and leading zeros through
/// (they would go on as two lines, or as `05`), and any method token.
fn http2_head_rules(req: &mut Request<crate::http::body::Body>) -> Result<(), ProxyError> {
    if !crate::h1::wire::method_allowed(req.method().as_str().as_bytes()) {
        return Err(ProxyError::BadRequest(
            "The request method is not valid (methods are uppercase).",
        ));
    }
    crate::h1::wire::one_length(req.headers_mut())
        .map_err(|_| ProxyError::BadRequest("The Content-Length header is not valid."))?;
    Ok(())
}

/// Request buffering: reads the client's body (up to `max` bytes) before
/// any upstream is picked, so a client that sends slowly or stalls holds
/// no backend connection meanwhile. A body that turned out complete is
/// sent with its length (as nginx does), not chunked. The client's
/// failures while buffering are answered here (413, 408, 400).
async fn buffer_body(
    body: &mut Limited,
    max: u64,
    wire: &TripWire,
    headers: &mut http::HeaderMap,
) -> Result<(), ProxyError> {
    match body.read_ahead(max).await {
        Ok(Some(len)) => {
            if !headers.contains_key(http::header::CONTENT_LENGTH) {
                headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(_) => Err(match wire.get() {
            Some(Tripped::TooLarge) => ProxyError::PayloadTooLarge,
            Some(Tripped::Idle) => ProxyError::RequestTimeout,
            None => ProxyError::BadRequest("The request body is malformed or was cut short."),
        }),
    }
}

/// One attempt against upstream `i`: the request in the upstream's
/// protocol, health bookkeeping, body limits, and the upgrade tunnel
/// after a 101.
async fn send_one(
    fwd: &Forward<'_>,
    i: usize,
    req: &Request<Body>,
    headers: http::HeaderMap,
    body: Body,
    client_upgrade: Option<ClientUpgrade>,
    attempt: &Attempt<'_>,
) -> Result<Response<Body>, ProxyError> {
    let route = fwd.route;
    let target = &route.config.upstreams()[i];
    // The response deadline starts once the request body has been sent: a
    // long upload to a backend that reads it all before answering is not a
    // timeout (a stalled one is `request_body_timeout`'s business).
    let body_wire = attempt.wire.filter(|_| matches!(body, Body::Limited(_)));
    let result = if target.protocol == UpstreamProtocol::Http1 {
        let path = upstream_path(target, &route.config, req.uri());
        let added = fwd.added_lines();
        let host = fwd.host_for(target);
        let mut out = Outgoing::new(req.method(), &path, host, headers, &added, body);
        let send = std::pin::pin!(pool::send(target, &mut out, fwd.server));
        await_response(send, attempt.timeout, body_wire).await
    } else {
        // Boxed: the plain HTTP/1 path's future stays as small as it was.
        let mut send = Box::pin(send_other(fwd, target, req, headers, body));
        await_response(send.as_mut(), attempt.timeout, body_wire).await
    };
    if let Some(t) = attempt.wire.and_then(TripWire::get) {
        // The client's body broke the request, not the upstream.
        return Err(match t {
            Tripped::TooLarge => ProxyError::PayloadTooLarge,
            Tripped::Idle => ProxyError::RequestTimeout,
        });
    }
    report(fwd, i, &result, body_wire);
    let (resp, tunnel) = result?;
    finish_response(fwd, resp, tunnel, client_upgrade)
}

/// An upstream that may speak HTTP/2 (`h2c://`, or `https://` with `h2`
/// or `auto`): over the shared HTTP/2 connection when it does, else over
/// the HTTP/1 pool. Upgrades always go over HTTP/1.1.
async fn send_other(
    fwd: &Forward<'_>,
    target: &UpstreamTarget,
    req: &Request<Body>,
    headers: http::HeaderMap,
    body: Body,
) -> Result<(Response<Body>, Option<pool_conn::BackendConn>), ProxyError> {
    let server = fwd.server;
    let h2 = match target.protocol {
        UpstreamProtocol::H2 => true,
        _ if fwd.upgrade => false,
        _ if h2::is_live(&target.pool_key) => true,
        _ if pool::has_idle(&target.pool_key) => false,
        _ => h2::settle_auto(target, server).await?,
    };
    if h2 {
        let out = h2_request(fwd, target, req, headers, body)?;
        return h2::send(target, out, server).await.map(|r| (r, None));
    }
    let path = upstream_path(target, &fwd.route.config, req.uri());
    let added = fwd.added_lines();
    let host = fwd.host_for(target);
    let mut out = Outgoing::new(req.method(), &path, host, headers, &added, body);
    pool::send(target, &mut out, server).await
}

/// The request for an HTTP/2 upstream: the authority is the Host the
/// backend gets; the gateway's header lines become fields.
fn h2_request(
    fwd: &Forward<'_>,
    target: &UpstreamTarget,
    req: &Request<Body>,
    mut headers: http::HeaderMap,
    body: Body,
) -> Result<Request<Body>, ProxyError> {
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = std::str::from_utf8(fwd.host_for(target)).unwrap_or_default();
    let path = upstream_path(target, &fwd.route.config, req.uri()).concat();
    let uri: Uri = format!("{scheme}://{host}{path}")
        .parse()
        .map_err(|_| ProxyError::BadRequest("The Host header is not valid."))?;
    headers.remove(http::header::HOST);
    let added = fwd.added_lines().concat();
    for line in added.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    // gRPC servers want to know that trailers will be read (TE is
    // hop-by-hop, so the client's was removed).
    if headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let mut out = Request::new(body);
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = uri;
    *out.version_mut() = http::Version::HTTP_2;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Only what the upstream did counts towards ejecting it: a client whose
/// own request broke must not take a healthy backend out. Nor does a
/// failure while the client's body was still incomplete: a backend that
/// gives up on an upload which stalled (its own body timeout) did what it
/// should, and counting it would let a few slow uploaders eject it. A
/// backend that is really down is still caught by requests without a
/// body, complete uploads and health checks.
fn report<T>(
    fwd: &Forward<'_>,
    i: usize,
    result: &Result<T, ProxyError>,
    body_wire: Option<&TripWire>,
) {
    let body_incomplete = body_wire.is_some_and(|w| !w.body_done());
    let verdict = match result {
        Ok(_) => Some(true),
        Err(_) if body_incomplete => None,
        Err(e) if e.side() == crate::http::error::Side::Upstream => Some(false),
        Err(_) => None,
    };
    if let Some(ok) = verdict {
        fwd.route.balancer.report(
            i,
            ok,
            fwd.server.upstream_eject_after,
            fwd.server.upstream_eject_for,
            &fwd.route.config,
        );
    }
}

/// The backend's answer on its way to the client: hop-by-hop headers
/// removed; after a 101, the tunnel between the two connections.
fn finish_response(
    fwd: &Forward<'_>,
    mut resp: Response<Body>,
    tunnel: Option<pool_conn::BackendConn>,
    client_upgrade: Option<ClientUpgrade>,
) -> Result<Response<Body>, ProxyError> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let (Some(client_upgrade), Some(tunnel)) = (client_upgrade, tunnel) else {
            // A 101 we did not ask for cannot be relayed.
            return Err(ProxyError::UpstreamBroken(Cause::Said(
                "101 Switching Protocols to a request that asked for no upgrade",
            )));
        };
        let route = fwd.route.config.name.clone();
        tokio::spawn(async move {
            let relayed = match client_upgrade {
                ClientUpgrade::H1(on) => match on.wait().await {
                    Ok(c) => relay_upgraded(c, tunnel).await,
                    Err(e) => Err(e),
                },
                ClientUpgrade::Hyper(on) => match on.await {
                    Ok(c) => relay_upgraded(TokioIo::new(c), tunnel).await,
                    Err(e) => Err(std::io::Error::other(e)),
                },
            };
            if let Err(e) = relayed {
                tracing::debug!(route, error = %e, "upgraded connection ended with an error");
            }
        });
    }
    headers::remove_hop_by_hop(resp.headers_mut(), switching);
    Ok(resp)
}

/// Where the client's side of an upgrade comes from: our HTTP/1 server,
/// or hyper's.
enum ClientUpgrade {
    H1(crate::h1::upgrade::OnUpgrade),
    Hyper(hyper::upgrade::OnUpgrade),
}

/// Relays an upgraded connection both ways until either side closes.
/// Bytes the backend sent right behind its 101 go to the client first.
async fn relay_upgraded(
    mut client: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    backend: pool_conn::BackendConn,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (mut backend, early) = backend.into_parts();
    if !early.is_empty() {
        client.write_all(&early).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut backend).await?;
    Ok(())
}

/// The request target sent upstream, in pieces to write one after the
/// other: the target's base path, the request path (minus the route prefix
/// with `strip_prefix`), then `?` and the query if there is one. Origin
/// form (`/path?query`), as nginx sends it; where to connect comes from
/// the target, the host from the Host header. Every piece was validated
/// already (the request's URI by the parser and the path normaliser, the
/// base path with the config).
pub fn upstream_path<'a>(
    target: &'a UpstreamTarget,
    route: &crate::config::RouteConfig,
    uri: &'a Uri,
) -> [&'a str; 4] {
    let path = uri.path();
    let rest = if route.strip_prefix && route.path != "/" {
        match path.get(route.path.len()..) {
            Some("") | None => "/",
            Some(r) => r,
        }
    } else {
        path
    };
    match uri.query() {
        Some(q) => [&target.base_path, rest, "?", q],
        None => [&target.base_path, rest, "", ""],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, HostPattern, RouteConfig};

    fn route(path: &str, strip: bool) -> RouteConfig {
        RouteConfig {
            name: "r".into(),
            host: HostPattern::Any,
            path: path.into(),
            path_match: Default::default(),
            action: Action::Upstream(vec![]),
            strip_prefix: strip,
            preserve_host: true,
            timeout: Duration::from_secs(1),
            hsts: None,
            https_redirect: true,
            limits: Default::default(),
            auth: Default::default(),
            upstream_tls: None,
            upstream_protocol: Default::default(),
            options: Default::default(),
            line: 1,
            source: Default::default(),
        }
    }

    #[test]
    fn grpc_timeouts() {
        let t = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(t("300m"), Some(Duration::from_millis(300)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        // At most 8 digits, a known unit.
        for bad in ["", "m", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn builds_upstream_uris() {
        let plain = crate::config::parse_upstream("http://10.0.0.1:8080").unwrap();
        let based = crate::config::parse_upstream("http://10.0.0.1:8080/base/").unwrap();
        let cases = [
            (&plain, "/", false, "/api/x?q=1", "/api/x?q=1"),
            (&plain, "/api", true, "/api/x?q=1", "/x?q=1"),
            (&plain, "/api", true, "/api", "/"),
            (&plain, "/api", true, "/api?q", "/?q"),
            (&based, "/api", true, "/api/x", "/base/x"),
            (&based, "/", false, "/x", "/base/x"),
        ];
        for (target, prefix, strip, req, want) in cases {
            let uri: Uri = req.parse().unwrap();
            let got = upstream_path(target, &route(prefix, strip), &uri).concat();
            assert_eq!(got, want, "{prefix} {strip} {req}");
        }
    }
}
