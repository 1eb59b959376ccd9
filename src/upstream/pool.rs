//! Upstream keep-alive connections, pooled per worker thread.
//!
//! A connection is taken for one request and comes back to the pool of the
//! thread that finishes the response body (see [`UpstreamBody`]), so:
//! - idle client connections hold no upstream connection (memory follows
//!   concurrency, not the number of open clients);
//! - taking and returning is a thread-local map lookup: no lock, no
//!   contention, no hand-off to another task;
//! - a connection that was closed, that has unread bytes (a misbehaving
//!   backend's stray data would become the next client's response), or
//!   idle longer than `upstream_idle_timeout`, is dropped instead of
//!   reused (checked on the socket itself when it is taken); a sweeper task
//!   per thread closes those nobody takes, so a quiet pool does not keep
//!   sockets the backend has given up on.
//!
//! A body-less request whose reused connection turns out to be closed
//! (the backend hung up while it sat idle) is resent once on a fresh
//! connection; idempotent methods only, unless the head could not even be
//! written.
//!
//! [`UpstreamBody`]: super::conn::UpstreamBody

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use http::Response;

use super::conn::{self as upstream, BackendConn, Failure, Outgoing, UpstreamBody};
use super::connect::Alpn;
use crate::config::{PoolKey, ServerConfig, UpstreamTarget};
use crate::http::body::Body;
use crate::http::error::{Cause, ProxyError};

/// Idle connections kept per upstream address and thread.
const MAX_IDLE_PER_UPSTREAM: usize = 256;

struct Idle {
    conn: BackendConn,
    since: Instant,
}

/// The pool map's hasher: [`PoolKey`] is hashed already, so this only
/// passes its `u64` through.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by PoolKey; kept correct for any other input.
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Pools = HashMap<PoolKey, VecDeque<Idle>, BuildHasherDefault<PreHashed>>;

thread_local! {
    static IDLE: RefCell<Pools> = RefCell::new(Pools::default());
    /// Whether this thread's sweeper task is running.
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// Puts a connection back (its response has been read to the end).
pub fn release(key: &PoolKey, conn: BackendConn, max_idle: Duration) {
    IDLE.with_borrow_mut(|pool| {
        // The key is cloned (a reference count) only for a new upstream.
        let list = match pool.get_mut(key) {
            Some(list) => list,
            None => pool.entry(key.clone()).or_default(),
        };
        if list.len() >= MAX_IDLE_PER_UPSTREAM {
            list.pop_front();
        }
        list.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    });
    if !SWEEPING.get() {
        start_sweeper(max_idle);
    }
}

/// Closes idle connections that expired or that the backend closed, every
/// half idle timeout (at least each second); ends when the pool is empty.
fn start_sweeper(max_idle: Duration) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    SWEEPING.set(true);
    let every = (max_idle / 2).max(Duration::from_secs(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let left = IDLE.with_borrow_mut(|pool| {
                pool.retain(|_, list| {
                    list.retain_mut(|i| i.since.elapsed() < max_idle && i.conn.is_reusable());
                    !list.is_empty()
                });
                pool.len()
            });
            if left == 0 {
                SWEEPING.set(false);
                return;
            }
        }
    });
}

fn take_idle(a: &PoolKey, max_idle: Duration) -> Option<BackendConn> {
    IDLE.with_borrow_mut(|pool| {
        let list = pool.get_mut(a)?;
        // Newest first: it is the most likely to still be open.
        while let Some(mut idle) = list.pop_back() {
            if idle.since.elapsed() < max_idle && idle.conn.is_reusable() {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Sends `out` to `target` over a pooled connection or a new one. A `101`
/// answer comes back with the connection for the tunnel; any other
/// answer's body returns the connection to the pool when it has been read.
pub async fn send(
    target: &UpstreamTarget,
    out: &mut Outgoing,
    server: &ServerConfig,
) -> Result<(Response<Body>, Option<BackendConn>), ProxyError> {
    let max_idle = server.upstream_idle_timeout;
    let (mut conn, mut reused) = match take_idle(&target.pool_key, max_idle) {
        Some(c) => (c, true),
        None => (
            connect(target, server.upstream_connect_timeout).await?,
            false,
        ),
    };
    let (head, sent) = loop {
        match upstream::exchange(&mut conn, out).await {
            Ok(answer) => break answer,
            // The backend closed the idle connection under us: nothing it
            // could act on reached it, so once more on a fresh one.
            Err(Failure::NoAnswer) if reused && !out.has_body() && out.idempotent() => {
                tracing::debug!(upstream = %target.url, "pooled connection was closed; retrying on a new one");
                conn = connect(target, server.upstream_connect_timeout).await?;
                reused = false;
            }
            // The client's body broke (bad chunking, cut short): its fault,
            // not the backend's. Size and stall limits are told apart by
            // the caller.
            Err(Failure::ClientBody) => {
                return Err(ProxyError::BadRequest(
                    "The request body is malformed or was cut short.",
                ));
            }
            Err(Failure::NoAnswer) => {
                return Err(ProxyError::UpstreamBroken(Cause::Said(
                    "the backend closed the connection without answering",
                )));
            }
            Err(Failure::Broken(why)) => return Err(ProxyError::UpstreamBroken(Cause::Said(why))),
        }
    };
    if conn.cert_requested && head.status == http::StatusCode::BAD_REQUEST {
        tracing::warn!(
            upstream = %target.url,
            reason = "the backend asked for a client certificate and none is configured (set upstream_tls.client_cert_file and client_key_file); it answered 400",
            "TLS to the backend failed"
        );
        return Err(ProxyError::UpstreamBroken(Cause::Said(
            "the backend asked for a client certificate and none is configured; it answered 400",
        )));
    }
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok((resp, Some(conn)));
    }
    *resp.body_mut() = UpstreamBody::start(
        conn,
        head.framing,
        head.keep_alive && sent,
        &target.pool_key,
        max_idle,
        server.upstream_read_timeout,
    );
    Ok((resp, None))
}

/// Opens one HTTP/1.1 connection to an upstream (TLS for `https://`).
/// Boxed: connecting (DNS, TCP, timer, handshake) is the rare path, and
/// inline its state would make every proxied request's future bigger.
fn connect(
    target: &UpstreamTarget,
    connect_timeout: Duration,
) -> std::pin::Pin<Box<impl Future<Output = Result<BackendConn, ProxyError>> + Send + '_>> {
    Box::pin(async move {
        let opened = super::connect::open(target, connect_timeout, Alpn::Http1).await?;
        let mut conn = BackendConn::from_stream(opened.stream);
        conn.cert_requested = opened.cert_requested;
        Ok(conn)
    })
}

/// Whether an idle HTTP/1 connection to `key` is pooled on this thread.
pub fn has_idle(key: &PoolKey) -> bool {
    IDLE.with_borrow(|pool| pool.get(key).is_some_and(|l| !l.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> PoolKey {
        PoolKey::new(&s.parse().unwrap())
    }

    #[test]
    fn pool_keys_match_across_configs_and_letter_case() {
        let mut pools = Pools::default();
        pools.insert(key("Backend.Internal:8080"), VecDeque::new());
        // A key built by a later config generation finds the same pool.
        assert!(pools.contains_key(&key("backend.internal:8080")));
        assert!(!pools.contains_key(&key("backend.internal:8081")));
        assert!(!pools.contains_key(&key("backend.internal")));
        assert_eq!(key("A:1"), key("a:1"));
        assert_ne!(key("a:1"), key("a:2"));
    }
}
