//! The admin listener: health and readiness, reload, and read-only views.
//! It never serves public traffic. Endpoints other than health need the
//! bearer token from `admin_token_file` when one is set; without one the
//! config only allows a loopback admin address.

pub mod client;
mod views;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

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
            None => json_response(StatusCode::OK, &views::routes(&shared)),
        },
        (_, "/routes") => method_not_allowed("GET"),
        (&Method::GET, "/certificates") => match authorize(&shared, &req) {
            Some(refusal) => refusal,
            None => json_response(StatusCode::OK, &views::certificates(&shared).await),
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
