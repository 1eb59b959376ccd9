//! HTTP/2 to backends (`h2c://`, and `https://` that settled on h2), on
//! hyper's HTTP/2 client: one connection per backend address shared by
//! every worker (requests are streams on it, multiplexed), opened on first
//! use and opened again once the backend closes it or sends GOAWAY.
//! Requests that find no connection open wait for the one being opened:
//! without that, 50 concurrent requests after an idle close opened 50
//! connections (benches/load/run.sh https-upstream).
//!
//! Why hyper here and not our codec: HTTP/2 needs framing, flow control
//! and HPACK; hyper's h2 is the maintained implementation we already serve
//! clients with.

use crate::http::error::Cause;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::connect::{self, Alpn, Opened};
use crate::config::{PoolKey, ServerConfig, UpstreamTarget};
use crate::http::body::Body;
use crate::http::error::ProxyError;

static SHARED: LazyLock<Mutex<HashMap<PoolKey, SendRequest<Body>>>> =
    LazyLock::new(Default::default);

/// A connection being opened, awaited by every request that needs it.
type Dial = Shared<BoxFuture<'static, Result<SendRequest<Body>, ProxyError>>>;

/// Connections being opened, by backend.
static DIALS: LazyLock<Mutex<HashMap<PoolKey, Dial>>> = LazyLock::new(Default::default);

/// A live shared connection to `key`, if there is one.
fn live(key: &PoolKey) -> Option<SendRequest<Body>> {
    let mut map = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    match map.get(key) {
        Some(s) if !s.is_closed() => Some(s.clone()),
        Some(_) => {
            map.remove(key);
            None
        }
        None => None,
    }
}

/// Whether requests to `key` go over a live HTTP/2 connection now.
pub fn is_live(key: &PoolKey) -> bool {
    live(key).is_some()
}

/// Starts HTTP/2 on a new connection and shares it.
pub async fn adopt(
    target: &UpstreamTarget,
    opened: Opened,
    server: &ServerConfig,
) -> Result<SendRequest<Body>, ProxyError> {
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(server.upstream_idle_timeout / 2)
        .keep_alive_while_idle(false);
    let (sender, conn) = match b.handshake(TokioIo::new(opened.stream)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(upstream = %target.url, reason = %e, "HTTP/2 handshake with the backend failed");
            return Err(ProxyError::UpstreamBroken(Cause::error(e)));
        }
    };
    let url = target.url.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(upstream = %url, error = %e, "HTTP/2 connection to the backend ended");
        }
    });
    SHARED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(target.pool_key.clone(), sender.clone());
    Ok(sender)
}

async fn sender(
    target: &UpstreamTarget,
    server: &ServerConfig,
) -> Result<SendRequest<Body>, ProxyError> {
    if let Some(s) = live(&target.pool_key) {
        return Ok(s);
    }
    let dial = {
        let mut dials = DIALS.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock: a dial may have just finished.
        if let Some(s) = live(&target.pool_key) {
            return Ok(s);
        }
        dials
            .entry(target.pool_key.clone())
            .or_insert_with(|| {
                let (target, server) = (target.clone(), server.clone());
                async move {
                    let opened =
                        connect::open(&target, server.upstream_connect_timeout, Alpn::H2).await;
                    let r = match opened {
                        Ok(o) => adopt(&target, o, &server).await,
                        Err(e) => Err(e),
                    };
                    // Done (shared or failed): the next request without a
                    // live connection dials again.
                    DIALS
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&target.pool_key);
                    r
                }
                .boxed()
                .shared()
            })
            .clone()
    };
    dial.await
}

/// For an `auto` https target with nothing open yet: connects once with
/// ALPN offering both and keeps the connection where it belongs (shared
/// for h2, the HTTP/1 pool otherwise). True when the target speaks h2.
pub async fn settle_auto(
    target: &UpstreamTarget,
    server: &ServerConfig,
) -> Result<bool, ProxyError> {
    let opened = connect::open(target, server.upstream_connect_timeout, Alpn::Auto).await?;
    if opened.h2 {
        adopt(target, opened, server).await?;
        return Ok(true);
    }
    let mut conn = super::conn::BackendConn::from_stream(opened.stream);
    conn.cert_requested = opened.cert_requested;
    super::pool::release(&target.pool_key, conn, server.upstream_idle_timeout);
    Ok(false)
}

/// Sends one request over the shared connection (opening one if needed).
/// A request the connection refused before sending it (it was closing:
/// GOAWAY) goes once more over a new connection.
pub async fn send(
    target: &UpstreamTarget,
    req: Request<Body>,
    server: &ServerConfig,
) -> Result<Response<Body>, ProxyError> {
    let mut s = sender(target, server).await?;
    let resp = match s.try_send_request(req).await {
        Ok(r) => r,
        Err(mut e) => match e.take_message() {
            Some(req) => {
                tracing::debug!(upstream = %target.url, "HTTP/2 connection was closing; sending on a new one");
                forget(&target.pool_key, &s);
                let opened =
                    connect::open(target, server.upstream_connect_timeout, Alpn::H2).await?;
                let mut s = adopt(target, opened, server).await?;
                s.send_request(req).await.map_err(|e| broken(target, &e))?
            }
            None => return Err(broken(target, e.error())),
        },
    };
    let read_timeout = server.upstream_read_timeout;
    Ok(resp.map(|inner| {
        Body::Streamed(Box::new(H2Body {
            inner,
            read_timeout,
            stall: None,
        }))
    }))
}

/// A backend's HTTP/2 response body, cut off when the backend stays quiet
/// longer than `upstream_read_timeout` between frames (as an HTTP/1
/// backend's is).
#[derive(Debug)]
struct H2Body {
    inner: hyper::body::Incoming,
    read_timeout: std::time::Duration,
    /// Armed the first time the body waits; pushed forward after progress.
    stall: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl crate::http::body::Stream for H2Body {
    fn poll(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, crate::http::body::BoxError>>>
    {
        use http_body::Body as _;
        use std::task::Poll;
        let deadline = tokio::time::Instant::now() + self.read_timeout;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(t) = &mut self.stall {
                    t.as_mut().reset(deadline);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timer = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(
                        "the backend went quiet in the middle of the body (upstream_read_timeout)"
                            .into(),
                    )));
                }
                Poll::Pending
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

fn forget(key: &PoolKey, dead: &SendRequest<Body>) {
    let mut map = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if map
        .get(key)
        .is_some_and(|s| s.is_closed() || !dead.is_ready())
    {
        map.remove(key);
    }
}

fn broken(target: &UpstreamTarget, e: &hyper::Error) -> ProxyError {
    tracing::warn!(upstream = %target.url, reason = %e, "HTTP/2 exchange with the backend failed");
    ProxyError::UpstreamBroken(Cause::error(format!("HTTP/2 exchange: {e}")))
}
