//! Active health checks of upstreams: [`probe`] GETs an upstream's check
//! path (2xx and 3xx are healthy) with the process's [`HealthClient`].
//! The tasks that run them every `interval` belong to a snapshot
//! (`snapshot::spawn_health_checks`) and end when a reload replaces it.

use std::error::Error as _;
use std::time::Duration;

use http::{Request, Response, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{HealthCheck, ServerConfig, UpstreamTarget};
use crate::http::body::Body;
use crate::http::error::{Cause, ProxyError};

/// The client health checks use: hyper-util's, pooled, one per process
/// (it survives reloads, so its keep-alive connections do too). Proxied
/// requests do not use it: they go over [`super::pool`] on our codec.
pub struct HealthClient {
    client: Client<HttpConnector, Body>,
}

impl HealthClient {
    pub fn new(server: &ServerConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(server.upstream_connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(server.upstream_idle_timeout)
            .pool_max_idle_per_host(256)
            // We set Host ourselves (preserve_host decides which).
            .set_host(false)
            .build(connector);
        HealthClient { client }
    }

    pub async fn send(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(Cause::Said(
                "the health check took longer than its timeout",
            ))),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(e)),
        }
    }
}

/// Is `target` healthy? One check request, within `check.timeout`;
/// `None` when no request can be made for it (then nothing changes).
pub async fn probe(
    client: &HealthClient,
    target: &UpstreamTarget,
    check: &HealthCheck,
) -> Option<bool> {
    if target.tls.is_some() || target.protocol == crate::config::UpstreamProtocol::H2 {
        return Some(probe_direct(target, check).await);
    }
    let uri = format!(
        "{}://{}{}{}",
        target.scheme, target.authority, target.base_path, check.path
    );
    let Ok(mut req) = Request::get(uri).body(Body::Empty) else {
        return None;
    };
    if let Ok(v) = http::HeaderValue::from_str(target.authority.as_str()) {
        req.headers_mut().insert(header::HOST, v);
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        http::HeaderValue::from_static("portcullis-health-check"),
    );
    Some(match client.send(req, check.timeout).await {
        Ok(resp) => {
            let s = resp.status();
            s.is_success() || s.is_redirection()
        }
        Err(_) => false,
    })
}

/// A check of an `https://` or `h2c://` upstream: a connection of its
/// own, made the way proxied requests make theirs (TLS verified, ALPN),
/// then one request on hyper's client. Few requests, so not pooled.
async fn probe_direct(target: &UpstreamTarget, check: &HealthCheck) -> bool {
    use super::connect::{Alpn, open};
    use hyper_util::rt::TokioIo;
    let alpn = match target.protocol {
        crate::config::UpstreamProtocol::H2 => Alpn::H2,
        crate::config::UpstreamProtocol::Http1 => Alpn::Http1,
        crate::config::UpstreamProtocol::Auto => Alpn::Auto,
    };
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let path = format!("{}{}", target.base_path, check.path);
    let run = async {
        let opened = open(target, check.timeout, alpn).await.ok()?;
        let io = TokioIo::new(opened.stream);
        let mut req = Request::get(&path).body(Body::Empty).ok()?;
        req.headers_mut().insert(
            header::USER_AGENT,
            http::HeaderValue::from_static("portcullis-health-check"),
        );
        let status = if opened.h2 || alpn == Alpn::H2 {
            *req.uri_mut() = format!("{scheme}://{}{path}", target.authority)
                .parse()
                .ok()?;
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .ok()?;
            tokio::spawn(conn);
            send.send_request(req).await.ok()?.status()
        } else {
            let host = http::HeaderValue::from_str(target.authority.as_str()).ok()?;
            req.headers_mut().insert(header::HOST, host);
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
            tokio::spawn(conn);
            send.send_request(req).await.ok()?.status()
        };
        Some(status.is_success() || status.is_redirection())
    };
    matches!(
        tokio::time::timeout(check.timeout, run).await,
        Ok(Some(true))
    )
}

fn classify(e: hyper_util::client::legacy::Error) -> ProxyError {
    let timed_out = {
        let mut src = e.source();
        let mut found = false;
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
            {
                found = true;
                break;
            }
            src = s.source();
        }
        found
    };
    if timed_out {
        ProxyError::UpstreamTimeout(Cause::error(e))
    } else if e.is_connect() {
        ProxyError::UpstreamUnavailable(Cause::error(e))
    } else {
        ProxyError::UpstreamBroken(Cause::error(e))
    }
}
