//! Shared integration-test harness. Every test file starts with `mod support;`
//! and uses the builders here; nothing in it uses fixed ports, and everything
//! it starts is stopped when its handle is dropped.
//!
//! - [`gateway`]: the real gateway in-process on `127.0.0.1:0`
//!   ([`gateway::Gateway`]), or the built binary as a child process for
//!   signal tests ([`gateway::GatewayProcess`]).
//! - [`backend`]: upstreams on real sockets: an echo server that reports what
//!   it received, a WebSocket echo, a refusing address and a hanging one.
//! - [`client`]: an HTTP/1.1 and h2c test client, plus raw-TCP helpers for
//!   requests a client library would normalise.
//! - [`nginx`]: a real nginx with `auth_request` to the gateway's
//!   forward-auth endpoint, in front of a backend (forward-auth tests).
//! - [`docker`]: our own dockerd, a busybox image and httpd containers
//!   (Docker label discovery tests).
//! - [`pebble`]: a Pebble ACME server (used by the ACME tests).
//! - [`tls`]: a test CA and a TLS client (used by the TLS and ACME tests).
//! - [`browser`]: chromedriver and headless Chromium sessions (WebDriver)
//!   for the tests a real browser must run.
//! - [`haproxy`]: a real HAProxy in TCP mode sending PROXY headers.
//! - [`redis`]: a real redis-server on a free port (the cluster tests).
//! - [`promql`]: the selectors and `by` labels of a PromQL expression
//!   (alert rules and dashboard queries checked against live metrics).
//! - [`idp`]: the OIDC test provider (`tests/peers/oidc`) and a browser
//!   (cookie jar, redirects, login form) for the SSO tests.
//!
//! Not every test binary uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod backend;
pub mod browser;
pub mod client;
pub mod docker;
pub mod gateway;
pub mod haproxy;
pub mod idp;
pub mod named;
pub mod nginx;
pub mod pebble;
pub mod promql;
pub mod redis;
pub mod tls;
pub mod wire;

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 10 ms until it returns `Some`, or panics after
/// `timeout` with `what` in the message. For waiting on events (a backend
/// has seen a request, a route has changed), never for timing assertions.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `fut` with a bound; panics with `what` if it takes longer.
pub async fn within<T>(what: &str, timeout: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {timeout:?}: {what}"),
    }
}

/// The process's resident set size in bytes (Linux, `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// The pattern bytes `[offset, offset + len)` of the byte stream that the
/// backends and clients send for large bodies: byte `i` is `(i % 251) as u8`.
pub fn pattern_chunk_at(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect()
}

/// SHA-256 of the first `n` bytes of the pattern, as lowercase hex. Hashes
/// chunk by chunk, never holding more than one chunk.
pub fn pattern_sha256(n: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut stream = PatternStream::new(n);
    while let Some(chunk) = stream.next_chunk() {
        ctx.update(&chunk);
    }
    hex(ctx.finish().as_ref())
}

/// Yields the pattern in chunks without allocating per chunk: one period-
/// aligned buffer (a multiple of 251 bytes) is sliced with `Bytes` refcounts.
pub struct PatternStream {
    left: u64,
    buf: bytes::Bytes,
}

/// 251 * 261 = 65511 bytes: a whole number of pattern periods, so every
/// chunk starts at pattern offset 0.
const ALIGNED_CHUNK: usize = 251 * 261;

impl PatternStream {
    pub fn new(n: u64) -> Self {
        PatternStream {
            left: n,
            buf: bytes::Bytes::from(pattern_chunk_at(0, ALIGNED_CHUNK)),
        }
    }

    pub fn remaining(&self) -> u64 {
        self.left
    }

    pub fn next_chunk(&mut self) -> Option<bytes::Bytes> {
        if self.left == 0 {
            return None;
        }
        let take = self.left.min(ALIGNED_CHUNK as u64) as usize;
        self.left -= take as u64;
        Some(self.buf.slice(..take))
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
