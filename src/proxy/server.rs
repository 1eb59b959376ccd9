//! Accept loops and connections for the public listeners. Listening sockets
//! are created once and never re-bound; shutdown stops accepting, asks each
//! connection to finish its in-flight requests, and waits (see [`Drain`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::{ConnInfo, handle};
use crate::config::ServerConfig;
use crate::state::Shared;

pub type HttpBuilder = auto::Builder<TokioExecutor>;

/// The HTTP/1.1 + HTTP/2 (h2c prior knowledge, or ALPN `h2` on TLS) server
/// settings shared by every public connection.
pub fn http_builder(server: &ServerConfig) -> HttpBuilder {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Without a timer hyper silently skips this; with it a slow client
        // cannot hold a connection open by trickling header bytes.
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.h2_max_concurrent_streams)
        .max_header_list_size(server.max_header_bytes as u32)
        // Rapid-reset protection: a client resetting streams it opened
        // faster than we answer gets a GOAWAY (h2 >= 0.4.4 also counts
        // locally reset streams).
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
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

    /// Number of live accept loops and connections.
    pub fn live(&self) -> usize {
        self.tx.receiver_count()
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
    proto: &str,
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
                    tracing::warn!(listener = proto, error = %e, "accept failed; backing off");
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

/// Accepts plain TCP connections until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    proto: &'static str,
    shared: Arc<Shared>,
    builder: Arc<HttpBuilder>,
    slots: Arc<Semaphore>,
    mut drain: watch::Receiver<DrainState>,
) {
    while let Some(Accepted {
        stream,
        peer,
        local,
        permit,
    }) = accept_next(&listener, proto, &slots, &mut drain).await
    {
        let info = Arc::new(ConnInfo::new(peer, local, proto, None));
        let shared = shared.clone();
        let builder = builder.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            serve_connection(TokioIo::new(stream), info, shared, &builder, drain).await;
            drop(permit);
        });
    }
    tracing::debug!(listener = proto, "stopped accepting");
}

/// Serves HTTP on one established connection (plain or TLS).
pub async fn serve_connection<I>(
    io: I,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    builder: &HttpBuilder,
    mut drain: watch::Receiver<DrainState>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer: SocketAddr = info.peer;
    let metrics = shared.metrics.clone();
    let listener = metrics.listener(info.proto);
    listener.connections.fetch_add(1, Relaxed);
    listener.open_connections.fetch_add(1, Relaxed);
    let svc = service_fn(move |req| handle(shared.clone(), info.clone(), req));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
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
}
