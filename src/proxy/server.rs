//! Accept loops (plain and TLS) and connections for the public listeners. Listening sockets
//! are created once and never re-bound; shutdown stops accepting, asks each
//! connection to finish its in-flight requests, and waits (see [`Drain`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::future::Either;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::{ConnInfo, handle};
use crate::config::ServerConfig;
use crate::h1;
use crate::http::Scheme;
use crate::http::body::Body;
use crate::snapshot::Shared;
use crate::tls::{Handshake, TlsContext, handshake};

/// The HTTP/1.x and HTTP/2 server settings shared by every public
/// connection. Which one serves a connection is decided up front: ALPN on
/// TLS, a peek at the first bytes on plain TCP (`PRI` starts the h2c
/// prior-knowledge preface). HTTP/1.x is served by our own codec
/// ([`crate::h1`]), HTTP/2 by hyper.
pub struct HttpBuilder {
    h1: h1::Settings,
    h2: http2::Builder<TokioExecutor>,
    /// How long a plain connection may stay silent before its first byte
    /// (the header read timeout, which applies from then on).
    first_byte_timeout: Duration,
}

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

pub fn http_builder(server: &ServerConfig) -> HttpBuilder {
    let h1 = h1::Settings {
        // A slow client cannot hold a connection open by trickling header
        // bytes.
        header_read_timeout: server.header_read_timeout,
        max_head: server.max_header_bytes,
        send_timeout: server.send_timeout,
    };
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(server.h2_max_concurrent_streams)
        .max_header_list_size(server.max_header_bytes as u32)
        // Rapid-reset protection: a client resetting streams it opened
        // faster than we answer gets a GOAWAY (h2 >= 0.4.4 also counts
        // locally reset streams).
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    HttpBuilder {
        h1,
        h2,
        first_byte_timeout: server.header_read_timeout,
    }
}

/// The h2c prior-knowledge preface starts with the method `PRI`, which
/// HTTP/1 reserves for exactly this; anything else is HTTP/1 (and our
/// codec's to accept or refuse). `None`: the client closed or went quiet first.
async fn sniff(stream: &TcpStream, timeout: Duration) -> Option<Protocol> {
    const PRI: &[u8] = b"PRI";
    let look = async {
        let mut buf = [0u8; 3];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != PRI[..n] {
                return Some(Protocol::Http1);
            }
            if n == PRI.len() {
                return Some(Protocol::Http2);
            }
            // "P" or "PR" so far: peeking again at once would spin on the
            // same bytes; the rest is normally in the same packet anyway.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(timeout, look).await.ok().flatten()
}

/// Where shutdown is: serving, finishing in-flight requests, or closing
/// whatever is left once the grace period is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainState {
    Serving,
    Graceful,
    Close,
}

/// Tells connections to wind down, then waits until they have.
///
/// Every accept loop and connection task holds a receiver; `drain` moves
/// the state on, and completes when every receiver has been dropped.
pub struct Drain {
    tx: watch::Sender<DrainState>,
}

impl Drain {
    pub fn new() -> Self {
        Drain {
            tx: watch::channel(DrainState::Serving).0,
        }
    }

    pub fn watcher(&self) -> watch::Receiver<DrainState> {
        self.tx.subscribe()
    }

    /// Signals shutdown and waits up to `grace` for everything to finish;
    /// then closes what is left. Returns how many were still open when the
    /// grace period ran out.
    pub async fn drain(self, grace: Duration) -> usize {
        let _ = self.tx.send(DrainState::Graceful);
        match tokio::time::timeout(grace, self.tx.closed()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.tx.receiver_count();
                let _ = self.tx.send(DrainState::Close);
                let _ = tokio::time::timeout(Duration::from_secs(5), self.tx.closed()).await;
                left
            }
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

/// One accepted client connection, holding its connection slot.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

/// Waits for a free connection slot, then for the next client; `None`
/// once shutdown starts. `slots` bounds the connections served at once
/// across the public listeners: when none is free, accepting pauses (the
/// kernel's backlog holds new clients) instead of failing. Accept errors
/// (EMFILE and friends) back off instead of spinning; the connections we
/// have keep being served.
pub async fn accept_next(
    listener: &TcpListener,
    scheme: Scheme,
    slots: &Arc<Semaphore>,
    drain: &mut watch::Receiver<DrainState>,
) -> Option<Accepted> {
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.ok()?,
            _ = drain.changed() => return None,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = %scheme, error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.changed() => return None,
        };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .or_else(|_| listener.local_addr())
            .unwrap_or(peer);
        return Some(Accepted {
            stream,
            peer,
            local,
            permit,
        });
    }
}

/// The client's address: the TCP peer, or with `proxy_protocol` the one a
/// trusted load balancer's PROXY header names. `None`: refused (a PROXY
/// header from an untrusted peer, or a broken one); the caller closes.
async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    scheme: Scheme,
) -> Option<SocketAddr> {
    let (enabled, trusted, timeout) = {
        let snap = shared.snapshot.load();
        (
            snap.server.proxy_protocol,
            snap.is_trusted_proxy(peer.ip()),
            snap.server.header_read_timeout,
        )
    };
    if !enabled {
        return Some(peer);
    }
    match super::proxy_protocol::read_header(stream, trusted, timeout).await {
        Ok(Some(client)) => Some(client),
        Ok(None) => Some(peer),
        Err(why) => {
            tracing::info!(listener = %scheme, %peer, reason = ?why, "PROXY protocol header refused; connection closed");
            None
        }
    }
}

/// An HTTP/2 request answered by resetting its stream
/// ([`crate::http::CloseWithoutAnswer`]).
#[derive(Debug)]
struct StreamDropped;

impl std::fmt::Display for StreamDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream reset without an answer (default_route = \"drop\")")
    }
}

impl std::error::Error for StreamDropped {}

/// The HTTP/1 server's requests go through the same pipeline as hyper's.
impl h1::Handler for Shared {
    fn handle<'a>(&'a self, conn: &'a Arc<ConnInfo>, req: http::Request<Body>) -> h1::Handling<'a> {
        Box::pin(handle(self, conn, req))
    }
}

/// Accepts plain TCP connections until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    scheme: Scheme,
    shared: Arc<Shared>,
    builder: Arc<HttpBuilder>,
    slots: Arc<Semaphore>,
    mut drain: watch::Receiver<DrainState>,
) {
    while let Some(Accepted {
        mut stream,
        peer,
        local,
        permit,
    }) = accept_next(&listener, scheme, &slots, &mut drain).await
    {
        let shared = shared.clone();
        let builder = builder.clone();
        let mut drain = drain.clone();
        tokio::spawn(async move {
            let Some(peer) = client_address(&mut stream, peer, &shared, scheme).await else {
                return;
            };
            let info = Arc::new(ConnInfo::new(peer, local, scheme, None));
            let proto = tokio::select! {
                p = sniff(&stream, builder.first_byte_timeout) => p,
                _ = drain.changed() => None,
            };
            if let Some(proto) = proto {
                serve_connection(stream, proto, info, shared, &builder, drain).await;
            }
            drop(permit);
        });
    }
    tracing::debug!(listener = %scheme, "stopped accepting");
}

/// Accepts TLS connections until shutdown.
pub async fn accept_tls_loop(
    listener: TcpListener,
    tls: Arc<TlsContext>,
    shared: Arc<Shared>,
    builder: Arc<HttpBuilder>,
    slots: Arc<Semaphore>,
    mut drain: watch::Receiver<DrainState>,
) {
    while let Some(Accepted {
        mut stream,
        peer,
        local,
        permit,
    }) = accept_next(&listener, Scheme::Https, &slots, &mut drain).await
    {
        let tls = tls.clone();
        let shared = shared.clone();
        let builder = builder.clone();
        let drain = drain.clone();
        // Boxed: the task's state (handshake, then the connection with its
        // TLS stream) is ~13 KiB, which tokio would otherwise copy on
        // spawn and again when the task's stage changes.
        tokio::spawn(Box::pin(async move {
            let Some(peer) = client_address(&mut stream, peer, &shared, Scheme::Https).await else {
                return;
            };
            let timeout = tls.handshake_timeout;
            let m = &shared.metrics;
            // The handshake's state is boxed on its own and freed once it is
            // done, so the connection does not carry it for its life.
            let hs = Box::pin(handshake(stream, &tls));
            let Ok(done) = tokio::time::timeout(timeout, hs).await else {
                m.tls_handshake_failures.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            };
            let (stream, sni) = match done {
                Handshake::Done(stream, sni) => {
                    m.tls_handshakes.fetch_add(1, Relaxed);
                    (stream, sni)
                }
                Handshake::UnknownName => {
                    m.tls_unknown_sni.fetch_add(1, Relaxed);
                    return;
                }
                Handshake::Failed => {
                    m.tls_handshake_failures.fetch_add(1, Relaxed);
                    return;
                }
                Handshake::Challenge => return,
            };
            let info = Arc::new(
                ConnInfo::new(peer, local, Scheme::Https, Some(sni.into_boxed_str()))
                    .with_tls_version(stream.get_ref().1.protocol_version()),
            );
            let proto = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            serve_connection(stream, proto, info, shared, &builder, drain).await;
            drop(permit);
        }));
    }
}

/// Serves HTTP on one established connection (plain or TLS) with the
/// protocol already chosen.
///
/// Not an `async fn`: the connection is built here and only it moves into
/// the returned future. An `async fn` keeps its arguments for its whole
/// life, so the stream (with its TLS state) would be held twice for as long
/// as the connection lives.
pub fn serve_connection<I>(
    io: I,
    proto: Protocol,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    builder: &HttpBuilder,
    mut drain: watch::Receiver<DrainState>,
) -> impl Future<Output = ()> + Send + 'static
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer: SocketAddr = info.peer;
    let https = info.scheme.is_https();
    let metrics = shared.metrics.clone();
    match proto {
        Protocol::Http1 => {
            // Built and boxed here: captured by the async block below and
            // pinned again inside it, the connection's future (with the
            // stream and its TLS state) would be held twice.
            let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut conn = Box::pin(h1::serve(io, info, shared, builder.h1, draining.clone()));
            Either::Left(async move {
                let listener = metrics.listener(https);
                listener.connections.fetch_add(1, Relaxed);
                listener.open_connections.fetch_add(1, Relaxed);
                tokio::select! {
                    () = conn.as_mut() => {}
                    _ = drain.changed() => {
                        // Finish the request in flight, then close.
                        draining.store(true, Relaxed);
                        tokio::select! {
                            () = conn.as_mut() => {}
                            // Grace period over: drop the connection as it is.
                            _ = drain.wait_for(|s| *s == DrainState::Close) => {}
                        }
                    }
                }
                listener.open_connections.fetch_sub(1, Relaxed);
            })
        }
        // Boxed: HTTP/2 connections are few and long-lived; inline, their
        // larger state would make every HTTP/1 connection's task bigger.
        Protocol::Http2 => {
            let h2 = builder.h2.clone();
            Either::Right(Box::pin(async move {
                let listener = metrics.listener(https);
                listener.connections.fetch_add(1, Relaxed);
                listener.open_connections.fetch_add(1, Relaxed);
                // Boxed per request: hyper keeps room for one in-flight request
                // future per stream slot; a pointer is enough.
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (shared, info) = (shared.clone(), info.clone());
                    Box::pin(async move {
                        let Ok(resp) = handle(&shared, &info, req.map(Body::Incoming)).await;
                        if crate::http::CloseWithoutAnswer::is_on(&resp) {
                            // hyper resets a stream whose service fails:
                            // RST_STREAM with INTERNAL_ERROR, the
                            // connection's other streams untouched.
                            return Err(StreamDropped);
                        }
                        Ok(resp)
                    })
                });
                let mut conn = std::pin::pin!(h2.serve_connection(TokioIo::new(io), svc));
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = drain.changed() => {
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            r = conn.as_mut() => r,
                            // Grace period over: drop the connection as it is.
                            _ = drain.wait_for(|s| *s == DrainState::Close) => Ok(()),
                        }
                    }
                };
                listener.open_connections.fetch_sub(1, Relaxed);
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// What `sniff` decides for a client that sends `parts` with a pause
    /// between them (then closes).
    async fn sniffed(parts: &[&'static [u8]]) -> Option<Protocol> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let parts: Vec<&'static [u8]> = parts.to_vec();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for p in parts {
                c.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Hold the socket until the server has decided.
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        let (server, _) = listener.accept().await.unwrap();
        let p = sniff(&server, Duration::from_secs(2)).await;
        client.await.unwrap();
        p
    }

    #[tokio::test]
    async fn the_first_bytes_pick_the_protocol() {
        assert_eq!(
            sniffed(&[b"GET / HTTP/1.1\r\n"]).await,
            Some(Protocol::Http1)
        );
        assert_eq!(
            sniffed(&[b"PUT /x HTTP/1.1\r\n"]).await,
            Some(Protocol::Http1)
        );
        assert_eq!(
            sniffed(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).await,
            Some(Protocol::Http2)
        );
        // The preface trickled in: waits for the third byte.
        assert_eq!(
            sniffed(&[b"P", b"R", b"I * HTTP/2.0"]).await,
            Some(Protocol::Http2)
        );
        assert_eq!(sniffed(&[b"P", b"OST"]).await, Some(Protocol::Http1));
        // Nothing sent before close.
        assert_eq!(sniffed(&[]).await, None);
    }

    #[tokio::test]
    async fn a_silent_client_is_given_up_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(sniff(&server, Duration::from_millis(50)).await, None);
    }
}
