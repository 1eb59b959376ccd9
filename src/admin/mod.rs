//! The admin listener: health and readiness, reload, and read-only views.
//! It never serves public traffic. Endpoints other than health need the
//! bearer token from `admin_token_file` when one is set; without one the
//! config only allows a loopback admin address.

pub mod client;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Action;
use crate::http::body::Body;
use crate::proxy::server::DrainState;
use crate::reload::{ReloadHandle, ReloadOutcome};
use crate::snapshot::Shared;
use crate::telemetry::metrics::{CertGauge, UpstreamGauge};
use crate::tls::store::Source;

/// Serves the admin API until shutdown.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    reload: ReloadHandle,
    mut drain: watch::Receiver<DrainState>,
) {
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = "admin", error = %e, "accept failed; backing off");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.changed() => break,
        };
        let shared = shared.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), reload.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    reload: ReloadHandle,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let method = req.method();
    let resp = match (method, path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if shared.ready.load(Ordering::Acquire) {
                // Docker or Redis being away does not make us unready: file
                // routes, the last known container routes and cached
                // sessions keep serving; the body says how they are.
                let mut body = String::from("ready\n");
                if let Some(d) = &shared.docker {
                    body.push_str(&format!("docker: {}\n", d.message()));
                }
                if let Some(c) = shared.auth.cluster() {
                    body.push_str(&c.status_line());
                }
                text(StatusCode::OK, body)
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        (&Method::GET, "/metrics") => metrics(&shared),
        (_, "/healthz" | "/readyz" | "/metrics") => method_not_allowed("GET"),
        (&Method::POST, "/reload") => match authorize(&shared, &req) {
            Some(refusal) => refusal,
            None => match reload.reload().await {
                Some(outcome @ ReloadOutcome::Reloaded { .. }) => {
                    json_response(StatusCode::OK, &outcome)
                }
                Some(outcome @ ReloadOutcome::Rejected { .. }) => {
                    json_response(StatusCode::UNPROCESSABLE_ENTITY, &outcome)
                }
                None => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            },
        },
        (_, "/reload") => method_not_allowed("POST"),
        (&Method::GET, "/routes") => match authorize(&shared, &req) {
            Some(refusal) => refusal,
            None => routes_view(&shared),
        },
        (_, "/routes") => method_not_allowed("GET"),
        (&Method::GET, "/certificates") => match authorize(&shared, &req) {
            Some(refusal) => refusal,
            None => certificates_view(&shared).await,
        },
        (_, "/certificates") => method_not_allowed("GET"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// Checks `Authorization: Bearer <token>` when a token is configured:
/// `None` lets the request through, `Some` is the 401 to answer with.
fn authorize(shared: &Shared, req: &Request<Incoming>) -> Option<Response<Body>> {
    let snap = shared.current();
    // No token configured: open (the config allows that on loopback only).
    let token = snap.server.admin_token.as_ref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 11.1): `bearer` is fine.
        .and_then(|v| {
            let (scheme, token) = v.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.expose().as_bytes()) => None,
        _ => {
            let mut r = text(StatusCode::UNAUTHORIZED, "admin token required\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
            );
            Some(r)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Header rules as `GET /routes` shows them (values as written).
fn header_rules_view(r: &crate::config::HeaderRules) -> serde_json::Value {
    if r.is_empty() {
        return serde_json::Value::Null;
    }
    let map = |l: &[(http::HeaderName, crate::config::Template)]| {
        l.iter()
            .map(|(n, t)| (n.to_string(), json!(t.source)))
            .collect::<serde_json::Map<_, _>>()
    };
    json!({
        "set": map(&r.set),
        "add": map(&r.add),
        "remove": r.remove.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
    })
}

fn routes_view(shared: &Shared) -> Response<Body> {
    let snap = shared.current();
    let routes: Vec<_> = snap
        .table
        .routes()
        .iter()
        .map(|r| {
            let c = &r.config;
            let (kind, target) = match &c.action {
                Action::Upstream(list) => (
                    "upstream",
                    json!(list.iter().map(|u| u.url.as_str()).collect::<Vec<_>>()),
                ),
                Action::Redirect(r) => ("redirect", json!(r.to)),
                Action::Respond(r) => ("respond", json!(r.status.as_u16())),
            };
            json!({
                "name": c.name,
                "host": c.host.to_string(),
                "path": c.path,
                "matrix_params": c.path_match.matrix_params,
                "case_insensitive_path": c.path_match.ignore_case,
                "action": kind,
                "target": target,
                "strip_prefix": c.strip_prefix,
                "preserve_host": c.preserve_host,
                "timeout_ms": c.timeout.as_millis() as u64,
                "request_buffering": c.limits.request_buffer.is_some(),
                "request_buffer_bytes": c.limits.request_buffer,
                "source": c.source.to_string(),
                "upstream_protocol": c.upstream_protocol.as_str(),
                "upstream_tls": c.upstream_tls.as_ref().map(|t| json!({
                    "ca_file": t.ca_file,
                    "server_name": t.server_name,
                    "client_cert_file": t.client_cert_file,
                    "pin_sha256": t.pin_sha256,
                    "insecure_skip_verify": t.insecure_skip_verify,
                })),
                "access": c.options.access.as_ref().map(|a| json!({
                    "name": a.name,
                    "users": a.users.len(),
                    "allow": a.allow.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "deny": a.deny.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "satisfy": match a.satisfy { crate::config::Satisfy::Any => "any", crate::config::Satisfy::All => "all" },
                    "pass_auth": a.pass_auth,
                    "realm": a.realm,
                })),
                "request_headers": header_rules_view(&c.options.request_headers),
                "response_headers": header_rules_view(&c.options.response_headers),
                "security_headers": c.options.security_headers,
                "compress": c.options.compress.map(|z| json!({
                    "level": z.level.as_str(),
                    "min_size": z.min_size,
                })),
                "rate_limit": c.options.rate_limit.map(|l| json!({
                    "requests": l.requests,
                    "per_ms": l.per.as_millis() as u64,
                    "burst": l.burst,
                    "by": l.by.as_str(),
                })),
                "error_pages": c.options.error_pages.pages.iter().map(|(m, _, path)| {
                    let status = match m {
                        crate::config::StatusMatch::Exact(s) => s.to_string(),
                        crate::config::StatusMatch::Class(c) => format!("{c}xx"),
                    };
                    (status, json!(path.display().to_string()))
                }).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    let mut body = json!({
        "generation": snap.generation,
        "default_route": match &snap.server.options.default_route {
            crate::config::DefaultRoute::NotFound => json!("404"),
            crate::config::DefaultRoute::Redirect(to) => json!({ "redirect": to }),
            crate::config::DefaultRoute::Drop => json!("drop"),
        },
        "routes": routes,
    });
    if let Some(d) = &shared.docker {
        let shadowed: Vec<_> = snap
            .discovery
            .shadowed
            .iter()
            .map(|s| {
                json!({
                    "host": s.host,
                    "path": s.path,
                    "source": s.source.to_string(),
                    "shadowed_by": s.by.to_string(),
                })
            })
            .collect();
        let errors: Vec<_> = snap
            .discovery
            .errors
            .iter()
            .map(|e| {
                json!({
                    "container": e.container,
                    "label": e.label,
                    "message": e.message,
                    "text": e.to_string(),
                })
            })
            .collect();
        body["docker"] = json!({
            "up": d.is_up(),
            "status": d.message(),
            "shadowed": shadowed,
            "label_errors": errors,
        });
    }
    json_response(StatusCode::OK, &body)
}

fn metrics(shared: &Shared) -> Response<Body> {
    // The session manager owns its refresh counts; copy them in.
    if let Some(s) = shared.auth.sessions() {
        use std::sync::atomic::Ordering::Relaxed;
        let a = &shared.metrics.auth;
        a.refresh_ok.store(s.refresh_ok.load(Relaxed), Relaxed);
        a.refresh_failed
            .store(s.refresh_failed.load(Relaxed), Relaxed);
        a.sessions_active.store(s.cached_len() as i64, Relaxed);
    }
    if let Some(c) = shared.auth.cluster() {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &shared.metrics.cluster;
        m.configured.store(true, Relaxed);
        let _ = m.instance.set(c.instance.clone());
        m.up.store(i64::from(c.is_up()), Relaxed);
        m.errors.store(c.errors(), Relaxed);
    }
    let certs: Vec<CertGauge> = shared
        .certs
        .entries()
        .into_iter()
        .filter_map(|(host, e)| {
            Some(CertGauge {
                host,
                source: match e.source {
                    Source::File => "file",
                    Source::SelfSigned => "self-signed",
                    Source::Acme => "acme",
                },
                not_after: e.facts.as_ref()?.not_after,
            })
        })
        .collect();
    let upstreams = upstream_gauges(&shared.current());
    let mut r = Response::new(Body::full(shared.metrics.render(&certs, &upstreams)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `portcullis_upstream_up` of every upstream of the running config's
/// routes, as their balancers see it now. An upstream listed twice in a
/// route is one series, up only while every copy is.
fn upstream_gauges(snap: &crate::snapshot::Snapshot) -> Vec<UpstreamGauge> {
    let mut up: std::collections::BTreeMap<(&str, &str), bool> = Default::default();
    for route in snap.table.routes() {
        for (i, u) in route.config.upstreams().iter().enumerate() {
            let is_up = route.balancer.is_up(i);
            up.entry((route.config.name.as_str(), u.url.as_str()))
                .and_modify(|v| *v &= is_up)
                .or_insert(is_up);
        }
    }
    up.into_iter()
        .map(|((route, upstream), up)| UpstreamGauge {
            route: route.to_string(),
            upstream: upstream.to_string(),
            up,
        })
        .collect()
}

/// Every served certificate: names, source, issuer, validity, and for
/// ACME hosts the last issuance and the last error in plain words; with
/// `[cluster]`, which instance holds each host's order lock.
async fn certificates_view(shared: &Shared) -> Response<Body> {
    let locks: std::collections::HashMap<String, crate::tls::store::OrderLock> =
        match shared.certs.shared.get() {
            Some(s) => s.order_locks().await.into_iter().collect(),
            None => Default::default(),
        };
    let lock_of = |host: &str| locks.get(host).map(|l| json!(l));
    let mut list = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, entry) in shared.certs.entries() {
        let status = shared.certs.acme_status.get(&name).map(|s| s.clone());
        seen.insert(name.clone());
        let f = entry.facts.as_ref();
        list.push(json!({
            "host": name,
            "source": entry.source,
            "issuer": f.map(|f| f.issuer.clone()),
            "names": f.map(|f| f.names.clone()),
            "not_before": f.map(|f| f.not_before),
            "not_after": f.map(|f| f.not_after),
            "last_issued": status.as_ref().and_then(|s| s.last_issued),
            "last_error": status.as_ref().and_then(|s| s.last_error.clone()),
            "next_attempt": status.as_ref().and_then(|s| s.next_attempt),
            "order_lock": lock_of(&name),
        }));
    }
    // ACME hosts that have no certificate yet still show their state.
    for s in shared.certs.acme_status.iter() {
        if seen.contains(s.key()) {
            continue;
        }
        list.push(json!({
            "host": s.key(),
            "source": "acme",
            "issuer": null,
            "names": null,
            "not_before": null,
            "not_after": null,
            "last_issued": s.last_issued,
            "last_error": s.last_error,
            "next_attempt": s.next_attempt,
            "order_lock": lock_of(s.key()),
        }));
        seen.insert(s.key().clone());
    }
    // A first order in progress (on any instance) shows its lock.
    for (host, l) in &locks {
        if seen.contains(host) {
            continue;
        }
        list.push(json!({
            "host": host,
            "source": "acme",
            "issuer": null,
            "names": null,
            "not_before": null,
            "not_after": null,
            "last_issued": null,
            "last_error": null,
            "next_attempt": null,
            "order_lock": l,
        }));
    }
    json_response(StatusCode::OK, &json!({ "certificates": list }))
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
