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
mod scripted;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> PoolKey {
        PoolKey::new(&s.parse().unwrap())
    }

    /// How much of the response body the client side reads.
    #[derive(Debug, Clone, Copy)]
    enum Read {
        /// To its end.
        All,
        /// The first piece, then the body is dropped (the client left).
        One,
        /// Nothing: dropped at once.
        Nothing,
    }

    /// One response from a scripted backend, and whether the connection
    /// may carry the next request afterwards.
    struct Case {
        what: &'static str,
        /// Written by the backend before the request is read.
        answer: &'static [u8],
        /// The backend closes its side right after `answer`.
        close_after: bool,
        read: Read,
        /// Written by the backend once the body is done (while idle).
        later: &'static [u8],
        /// The backend closes the connection while it is idle.
        close_later: bool,
        reused: bool,
    }

    const fn case(what: &'static str, answer: &'static [u8], read: Read, reused: bool) -> Case {
        Case {
            what,
            answer,
            close_after: false,
            read,
            later: b"",
            close_later: false,
            reused,
        }
    }

    /// The pool's reuse rules below the proxy: one request over
    /// `conn::exchange`, the body read (or not) through `UpstreamBody`,
    /// then whether `take_idle` hands the connection to the next request.
    /// The backend is the far end of a loopback socket written with
    /// blocking calls (not an in-memory pipe: the reuse check asks the
    /// socket itself, and bytes written that way are there at once).
    #[tokio::test]
    async fn a_connection_is_reused_only_after_a_whole_clean_keep_alive_response() {
        use http_body_util::BodyExt as _;
        use std::io::Write as _;
        let cases = [
            case(
                "length, read whole",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                Read::All,
                true,
            ),
            case(
                "chunked with a trailer, read whole",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
                Read::All,
                true,
            ),
            case(
                "no body (204)",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                Read::Nothing,
                true,
            ),
            case(
                "HTTP/1.0 asking for keep-alive",
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
                Read::All,
                true,
            ),
            case(
                "unread bytes after a length body",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n",
                Read::All,
                false,
            ),
            case(
                "unread bytes after a chunked body",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
                Read::All,
                false,
            ),
            case(
                "unread bytes after a bodiless answer",
                b"HTTP/1.1 204 No Content\r\n\r\nX",
                Read::Nothing,
                false,
            ),
            Case {
                later: b"X",
                ..case(
                    "a stray byte arriving while idle",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                    Read::All,
                    false,
                )
            },
            Case {
                close_later: true,
                ..case(
                    "closed by the backend while idle",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                    Read::All,
                    false,
                )
            },
            case(
                "body half read, then abandoned",
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
                Read::One,
                false,
            ),
            case(
                "chunked body half read, then abandoned",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                Read::One,
                false,
            ),
            case(
                "body not read at all",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                Read::Nothing,
                false,
            ),
            case(
                "Connection: close",
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
                Read::All,
                false,
            ),
            case(
                "Connection: close on a bodiless answer",
                b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
                Read::Nothing,
                false,
            ),
            case(
                "HTTP/1.0 without keep-alive",
                b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                Read::All,
                false,
            ),
            case(
                "chunked and a length together",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Read::All,
                false,
            ),
            Case {
                close_after: true,
                ..case(
                    "body read until close",
                    b"HTTP/1.1 200 OK\r\n\r\nhello",
                    Read::All,
                    false,
                )
            },
        ];
        let max_idle = Duration::from_secs(60);
        let mut wrong = Vec::new();
        for c in &cases {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let io = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut peer, _) = l.accept().unwrap();
            let key = key(&addr.to_string());
            peer.write_all(c.answer).unwrap();
            if c.close_after {
                peer.shutdown(std::net::Shutdown::Write).unwrap();
            }
            let mut conn = BackendConn::new(io);
            let mut out =
                super::scripted::request(http::Method::GET, http::HeaderMap::new(), Body::Empty);
            let (head, sent) = upstream::exchange(&mut conn, &mut out)
                .await
                .unwrap_or_else(|e| panic!("{}: {e:?}", c.what));
            let mut body = UpstreamBody::start(
                conn,
                head.framing,
                head.keep_alive && sent,
                &key,
                max_idle,
                Duration::from_secs(5),
            );
            match c.read {
                Read::All => {
                    while let Some(f) = body.frame().await {
                        f.unwrap_or_else(|e| panic!("{}: {e}", c.what));
                    }
                }
                Read::One => {
                    body.frame().await.expect("a first piece").expect("data");
                }
                Read::Nothing => {}
            }
            drop(body);
            peer.write_all(c.later).unwrap();
            if c.close_later {
                peer.shutdown(std::net::Shutdown::Both).unwrap();
            }
            let reused = take_idle(&key, max_idle).is_some();
            if reused != c.reused {
                wrong.push(format!("{}: reused {reused}", c.what));
            }
            assert!(!has_idle(&key), "{}: one connection, taken once", c.what);
            drop(peer);
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
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
