//! Upstream keep-alive connections, pooled per worker thread.
//!
//! A connection is taken for one request and comes back to the pool of the
//! thread that finishes the response body (see [`Body::Pooled`]), so:
//! - idle client connections hold no upstream connection (memory follows
//!   concurrency, not the number of open clients);
//! - taking and returning is a thread-local map lookup: no lock, no
//!   contention, no hand-off to another task;
//! - a connection that was closed, or idle longer than
//!   `upstream_idle_timeout`, is dropped instead of reused.
//!
//! A request the pooled connection did not take (it closed under us) is
//! resent once on a fresh connection: nothing of it was sent.
//!
//! [`Body::Pooled`]: super::body::Body::Pooled

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::Body;
use super::error::ProxyError;
use crate::config::{PoolKey, ServerConfig, UpstreamTarget};

/// Idle connections kept per upstream address and thread.
const MAX_IDLE_PER_UPSTREAM: usize = 256;

struct Idle {
    sender: SendRequest<Body>,
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

type Pools = HashMap<PoolKey, Vec<Idle>, BuildHasherDefault<PreHashed>>;

thread_local! {
    static IDLE: RefCell<Pools> = RefCell::new(Pools::default());
}

/// A connection on its way back to the pool once the response body ends.
pub struct Lease {
    key: PoolKey,
    sender: SendRequest<Body>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.key.as_str())
    }
}

impl Lease {
    /// Puts the connection back (the response has been read to its end).
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        IDLE.with_borrow_mut(|pool| {
            let list = pool.entry(self.key).or_default();
            if list.len() >= MAX_IDLE_PER_UPSTREAM {
                list.remove(0);
            }
            list.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        });
    }
}

fn take_idle(a: &PoolKey, max_idle: Duration) -> Option<SendRequest<Body>> {
    IDLE.with_borrow_mut(|pool| {
        let list = pool.get_mut(a)?;
        // Newest first: it is the most likely to still be open.
        while let Some(idle) = list.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < max_idle {
                return Some(idle.sender);
            }
        }
        None
    })
}

/// Sends `req` to `target` over a pooled connection (or a new one).
/// Returns the response and the lease to release when its body ends.
pub async fn send(
    target: &UpstreamTarget,
    req: Request<Body>,
    server: &ServerConfig,
) -> Result<(Response<Incoming>, Lease), ProxyError> {
    let mut sender = match take_idle(&target.pool_key, server.upstream_idle_timeout) {
        Some(s) => s,
        None => connect(target, server.upstream_connect_timeout).await?,
    };
    if sender.ready().await.is_err() {
        sender = connect(target, server.upstream_connect_timeout).await?;
    }
    let resp = match sender.try_send_request(req).await {
        Ok(resp) => resp,
        Err(mut e) => match e.take_message() {
            Some(req) => {
                sender = connect(target, server.upstream_connect_timeout).await?;
                sender.send_request(req).await.map_err(|e| classify(&e))?
            }
            None => return Err(classify(e.error())),
        },
    };
    Ok((
        resp,
        Lease {
            key: target.pool_key.clone(),
            sender,
        },
    ))
}

/// Opens one HTTP/1.1 connection to an upstream. Boxed: connecting (DNS,
/// TCP, timer, handshake) is the rare path, and inline its state would
/// make every proxied request's future kilobytes bigger.
fn connect(
    target: &UpstreamTarget,
    connect_timeout: Duration,
) -> std::pin::Pin<Box<impl Future<Output = Result<SendRequest<Body>, ProxyError>> + Send + '_>> {
    Box::pin(connect_inner(target, connect_timeout))
}

async fn connect_inner(
    target: &UpstreamTarget,
    connect_timeout: Duration,
) -> Result<SendRequest<Body>, ProxyError> {
    let host = target
        .authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = target.authority.port_u16().unwrap_or(80);
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect((host, port))).await
    {
        Err(_) => return Err(ProxyError::UpstreamTimeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Err(ProxyError::UpstreamTimeout);
        }
        Ok(Err(_)) => return Err(ProxyError::UpstreamUnavailable),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ProxyError::UpstreamUnavailable)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

fn classify(e: &hyper::Error) -> ProxyError {
    if e.is_timeout() {
        ProxyError::UpstreamTimeout
    } else {
        ProxyError::UpstreamBroken
    }
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
        pools.insert(key("Backend.Internal:8080"), Vec::new());
        // A key built by a later config generation finds the same pool.
        assert!(pools.contains_key(&key("backend.internal:8080")));
        assert!(!pools.contains_key(&key("backend.internal:8081")));
        assert!(!pools.contains_key(&key("backend.internal")));
        assert_eq!(key("A:1"), key("a:1"));
        assert_ne!(key("a:1"), key("a:2"));
    }
}
