//! How the gateway speaks HTTP/1.x to clients (the client side of the
//! codec in `src/proxy/h1`), pinned with raw TCP clients, so that only what
//! crosses the wire counts: pipelining, HTTP/1.0 keep-alive and framing,
//! close-delimited and chunked answers, malformed heads (400), oversized
//! heads (431), header read timeouts (silent close or 408), HEAD, the
//! `date` header, `Expect: 100-continue`, `Connection: close`, and
//! request bodies the client breaks (which must not count against the
//! upstream).
//!
//! Clients here are [`RawClient`]s: a socket with a buffer, so that bytes
//! the gateway sends beyond one response (pipelined answers, stray body
//! bytes) are kept and show up in the next read. Backends are the echo
//! [`Backend`] or a [`RawBackend`] whose handler writes exact bytes.
//!
//! Every wait is bounded by [`WAIT`] (or a smaller bound where the timing
//! is the behaviour), so a bug fails a test instead of hanging it.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use support::backend::{Backend, Echo};
use support::gateway::{Gateway, gateway_with};
use support::wire::{Head, RawBackend, Wire};
use support::within;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The bound on every wait that is not itself about timing.
const WAIT: Duration = Duration::from_secs(5);

fn proxy_route(host: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[route]]\nhost = \"{host}\"\nupstream = \"{upstream}\"\ntimeout = \"5s\"\n{extra}\n\n"
    )
}

fn respond_route(host: &str, body: &str) -> String {
    format!("[[route]]\nhost = \"{host}\"\nrespond = {{ body = \"{body}\" }}\n\n")
}

fn sha256_hex(b: &[u8]) -> String {
    support::hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// A `200 OK` with a Content-Length body.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------
// Wire helpers: HTTP/1.1 framing read off a byte stream by hand.
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// The raw client
// ---------------------------------------------------------------------------

/// How a response body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimited {
    /// No body by definition (1xx, 204, 304, or a HEAD answer).
    Bodiless,
    Length,
    Chunked,
    /// Neither length nor chunked: the body ran until the connection closed.
    Close,
}

/// A response read off a client socket.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: Head,
    /// The head exactly as the gateway sent it (for failure messages).
    raw_head: String,
    body: Vec<u8>,
    delimited: Delimited,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.get(name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn echo(&self) -> Echo {
        Echo(serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not echo JSON ({e}):\n{}{}",
                self.raw_head,
                String::from_utf8_lossy(&self.body)
            )
        }))
    }

    /// Whether the `connection` header has this token.
    fn connection_has(&self, token: &str) -> bool {
        self.head
            .all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// A client connection to the gateway with its read buffer.
struct RawClient {
    wire: Wire<TcpStream>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        let s = within("connect to the gateway", WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_nodelay(true).unwrap();
        RawClient { wire: Wire::new(s) }
    }

    /// Writes `bytes` in one write.
    async fn send(&mut self, bytes: &[u8]) {
        within("write to the gateway", WAIT, self.wire.io.write_all(bytes))
            .await
            .expect("write to the gateway");
    }

    /// Reads the next response (1xx included), its body delimited as an
    /// HTTP/1.1 client would. Panics if the connection closes first.
    async fn response(&mut self) -> Resp {
        self.read(false).await
    }

    /// Reads the next response to a HEAD request (never a body).
    async fn head_response(&mut self) -> Resp {
        self.read(true).await
    }

    async fn read(&mut self, head_only: bool) -> Resp {
        within("a response from the gateway", WAIT, async {
            let Some(raw) = self.wire.head().await else {
                panic!(
                    "the gateway closed the connection before a response head; got {:?}",
                    String::from_utf8_lossy(&self.wire.buf)
                );
            };
            let raw_head = String::from_utf8_lossy(&raw).into_owned();
            let head = Head::parse(&raw);
            let status: u16 = head
                .start
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line in {raw_head:?}"));
            let (body, delimited) =
                if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
                    (Vec::new(), Delimited::Bodiless)
                } else if head.is_chunked() {
                    let body = self.wire.chunked().await.unwrap_or_else(|| {
                        panic!("bad or truncated chunked body after {raw_head:?}")
                    });
                    (body, Delimited::Chunked)
                } else if let Some(n) = head.content_length() {
                    let body = self.wire.exact(n).await.unwrap_or_else(|| {
                    panic!(
                        "the connection closed {} bytes into a {n}-byte body after {raw_head:?}",
                        self.wire.buf.len()
                    )
                });
                    (body, Delimited::Length)
                } else {
                    (self.wire.read_to_eof().await, Delimited::Close)
                };
            Resp {
                status,
                head,
                raw_head,
                body,
                delimited,
            }
        })
        .await
    }

    /// Asserts that the gateway closes the connection within `bound`
    /// without sending anything (more); returns how long that took.
    async fn assert_closes_silently(&mut self, what: &str, bound: Duration) -> Duration {
        let start = Instant::now();
        let rest = match tokio::time::timeout(bound, self.wire.read_to_eof()).await {
            Ok(rest) => rest,
            Err(_) => panic!(
                "{what}: the connection was still open after {bound:?} (received {:?})",
                String::from_utf8_lossy(&self.wire.buf)
            ),
        };
        assert!(
            rest.is_empty(),
            "{what}: the gateway sent {:?} before closing",
            String::from_utf8_lossy(&rest)
        );
        start.elapsed()
    }
}

// ---------------------------------------------------------------------------
// Raw backends
// ---------------------------------------------------------------------------

/// A backend answering `/chunked` with a chunked body (keeping the
/// connection), `/eof` with a close-delimited `payload` (then closing), and
/// anything else with `ok("plain")`.
async fn unsized_backend(payload: Vec<u8>) -> RawBackend {
    RawBackend::start(move |mut c| {
        let payload = payload.clone();
        async move {
            while let Some(req) = c.read_request().await {
                match req.target.as_str() {
                    "/chunked" => {
                        c.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n")
                            .await
                    }
                    "/eof" => {
                        // No length, no chunking: the body ends with the
                        // connection. Sent in pieces.
                        c.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Backend: eof\r\n\r\n")
                            .await;
                        for piece in payload.chunks(30_000) {
                            c.send(piece).await;
                            tokio::task::yield_now().await;
                        }
                        return;
                    }
                    _ => c.send(&ok("plain")).await,
                }
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// 1. Pipelining
// ---------------------------------------------------------------------------

#[tokio::test]
async fn two_pipelined_gets_in_one_write_get_two_responses_in_order() {
    let be = Backend::echo().await;
    let gw = gateway_with(&proxy_route("p.test", &be.url(), ""), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;

    c.send(
        b"GET /first HTTP/1.1\r\nHost: p.test\r\n\r\n\
          GET /second HTTP/1.1\r\nHost: p.test\r\n\r\n",
    )
    .await;
    let r1 = c.response().await;
    assert_eq!(r1.status, 200, "{}{}", r1.raw_head, r1.text());
    assert_eq!(r1.echo().uri(), "/first");
    let r2 = c.response().await;
    assert_eq!(r2.status, 200, "{}{}", r2.raw_head, r2.text());
    assert_eq!(r2.echo().uri(), "/second");

    // Nothing more than the two answers: a third request on the same
    // connection (asking to close) gets its own answer, then the close.
    c.send(b"GET /third HTTP/1.1\r\nHost: p.test\r\nConnection: close\r\n\r\n")
        .await;
    let r3 = c.response().await;
    assert_eq!(r3.status, 200);
    assert_eq!(r3.echo().uri(), "/third");
    c.assert_closes_silently("after Connection: close", WAIT)
        .await;
    assert_eq!(be.served(), 3);
}

#[tokio::test]
async fn a_pipelined_post_body_is_not_mistaken_for_the_next_request() {
    let be = Backend::echo().await;
    let gw = gateway_with(&proxy_route("p.test", &be.url(), ""), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;

    c.send(
        b"GET /first HTTP/1.1\r\nHost: p.test\r\n\r\n\
          POST /second HTTP/1.1\r\nHost: p.test\r\nContent-Length: 5\r\n\r\nhello\
          POST /third HTTP/1.1\r\nHost: p.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /fourth HTTP/1.1\r\nHost: p.test\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.echo().uri(), "/first");
    assert_eq!(r.echo().body_len(), 0);
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.text());
    let e = r.echo();
    assert_eq!((e.method(), e.uri()), ("POST", "/second"));
    assert_eq!(e.body_sha256(), sha256_hex(b"hello"));
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.text());
    let e = r.echo();
    assert_eq!((e.method(), e.uri()), ("POST", "/third"));
    assert_eq!(e.body_sha256(), sha256_hex(b"abc"));
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.text());
    assert_eq!(r.echo().uri(), "/fourth");
    assert_eq!(be.served(), 4);
}

// ---------------------------------------------------------------------------
// 2. HTTP/1.0 keep-alive
// ---------------------------------------------------------------------------

#[tokio::test]
async fn http10_request_without_keep_alive_is_answered_then_closed() {
    let be = Backend::echo().await;
    let gw = gateway_with(&proxy_route("old.test", &be.url(), ""), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;

    c.send(b"GET /ten HTTP/1.0\r\nHost: old.test\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.text());
    assert_eq!(r.echo().uri(), "/ten");
    assert!(
        !r.connection_has("keep-alive"),
        "an HTTP/1.0 request without keep-alive was told keep-alive: {}",
        r.raw_head
    );
    c.assert_closes_silently("after an HTTP/1.0 response", WAIT)
        .await;
}

#[tokio::test]
async fn http10_request_with_keep_alive_keeps_the_connection() {
    let be = Backend::echo().await;
    let gw = gateway_with(&proxy_route("old.test", &be.url(), ""), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;

    for path in ["/one", "/two"] {
        c.send(
            format!("GET {path} HTTP/1.0\r\nHost: old.test\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "{path}: {}{}", r.raw_head, r.text());
        assert_eq!(r.echo().uri(), path);
        assert_eq!(
            r.header("connection"),
            Some("keep-alive"),
            "{path}: {}",
            r.raw_head
        );
        assert_eq!(r.delimited, Delimited::Length, "{path}: {}", r.raw_head);
    }
    // The same socket, now without keep-alive: answered, then closed.
    c.send(b"GET /three HTTP/1.0\r\nHost: old.test\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.echo().uri(), "/three");
    c.assert_closes_silently("after the last HTTP/1.0 response", WAIT)
        .await;
    assert_eq!(be.served(), 3);
}

// ---------------------------------------------------------------------------
// 3, 4. Answers without a length
// ---------------------------------------------------------------------------

#[tokio::test]
async fn http10_client_gets_an_unsized_body_delimited_by_the_close_not_chunked() {
    let payload = support::pattern_chunk_at(7, 100_000);
    let be = unsized_backend(payload.clone()).await;
    let gw = gateway_with(&proxy_route("old.test", &be.url(), ""), "").await;

    // Chunked from the backend, with and without keep-alive asked for: an
    // HTTP/1.0 client cannot read chunked, and without a length the only
    // way to end the body is to close.
    for connection in ["", "Connection: keep-alive\r\n"] {
        let mut c = RawClient::connect(gw.http_addr()).await;
        c.send(format!("GET /chunked HTTP/1.0\r\nHost: old.test\r\n{connection}\r\n").as_bytes())
            .await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "{connection:?}: {}{}", r.raw_head, r.text());
        assert!(
            r.head.all("transfer-encoding").is_empty(),
            "{connection:?}: chunked to an HTTP/1.0 client: {}",
            r.raw_head
        );
        assert!(
            !r.connection_has("keep-alive"),
            "{connection:?}: keep-alive promised with a close-delimited body: {}",
            r.raw_head
        );
        assert_eq!(
            r.delimited,
            Delimited::Close,
            "{connection:?}: {}",
            r.raw_head
        );
        assert_eq!(r.text(), "hello, world", "{connection:?}: {}", r.raw_head);
    }

    // Close-delimited from the backend.
    let mut c = RawClient::connect(gw.http_addr()).await;
    c.send(b"GET /eof HTTP/1.0\r\nHost: old.test\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert!(
        r.head.all("transfer-encoding").is_empty(),
        "chunked to an HTTP/1.0 client: {}",
        r.raw_head
    );
    assert_eq!(r.header("x-backend"), Some("eof"));
    assert_eq!(r.delimited, Delimited::Close, "{}", r.raw_head);
    assert_eq!(r.body.len(), payload.len(), "{}", r.raw_head);
    assert!(r.body == payload, "body corrupted");
    assert!(!r.connection_has("keep-alive"), "{}", r.raw_head);
}

#[tokio::test]
async fn http11_client_gets_a_close_delimited_backend_body_chunked_and_keeps_its_connection() {
    let payload = support::pattern_chunk_at(3, 100_000);
    let be = unsized_backend(payload.clone()).await;
    let gw = gateway_with(&proxy_route("eof.test", &be.url(), ""), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;

    for round in 1..=2 {
        c.send(b"GET /eof HTTP/1.1\r\nHost: eof.test\r\n\r\n").await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "round {round}: {}", r.raw_head);
        assert_eq!(
            r.delimited,
            Delimited::Chunked,
            "round {round}: {}",
            r.raw_head
        );
        assert_eq!(
            r.head.all("transfer-encoding"),
            ["chunked"],
            "{}",
            r.raw_head
        );
        assert!(r.header("content-length").is_none(), "{}", r.raw_head);
        assert!(!r.connection_has("close"), "round {round}: {}", r.raw_head);
        assert_eq!(r.header("x-backend"), Some("eof"));
        assert_eq!(r.body.len(), payload.len(), "round {round}");
        assert!(r.body == payload, "round {round}: body corrupted");
    }
    // And a plain request after them on the same client connection.
    c.send(b"GET /plain HTTP/1.1\r\nHost: eof.test\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "plain");
    // Each close-delimited answer used up its backend connection.
    assert!(be.accepted() >= 2, "backend connections: {}", be.accepted());
}

// ---------------------------------------------------------------------------
// 5, 6. Refused heads
// ---------------------------------------------------------------------------

/// Sends `request` on a new connection; asserts the answer is `status`
/// with `connection: close`, and that the connection then closes.
async fn assert_refused_and_closed(addr: SocketAddr, request: &str, status: u16) {
    let mut c = RawClient::connect(addr).await;
    c.send(request.as_bytes()).await;
    let r = c.response().await;
    assert_eq!(
        r.status,
        status,
        "{request:?} was answered:\n{}{}",
        r.raw_head,
        r.text()
    );
    assert!(
        r.connection_has("close"),
        "{request:?}: no connection: close in {:?}",
        r.raw_head
    );
    c.assert_closes_silently(&format!("after refusing {request:?}"), WAIT)
        .await;
}

#[tokio::test]
async fn malformed_request_heads_get_400_and_the_connection_closes() {
    let be = Backend::echo().await;
    let gw = gateway_with(&proxy_route("a.test", &be.url(), ""), "").await;
    let addr = gw.http_addr();

    for bad in [
        // Two spaces in the request line (a space in the target).
        "GET /a b HTTP/1.1\r\nHost: a.test\r\n\r\n",
        // Whitespace between a header name and its colon.
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Thing : v\r\n\r\n",
        // Obsolete line folding.
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Folded: a\r\n b\r\n\r\n",
        // A Transfer-Encoding whose last coding is not chunked.
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        // Transfer-Encoding on HTTP/1.0.
        "POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        // Two different lengths.
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        // Not HTTP/1.x.
        "GET / HTTP/2.0\r\nHost: a.test\r\n\r\n",
    ] {
        assert_refused_and_closed(addr, bad, 400).await;
    }
    assert_eq!(be.served(), 0, "a malformed request reached the backend");

    // The route itself works: the zero above means something.
    let mut c = RawClient::connect(addr).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(c.response().await.status, 200);
    assert_eq!(be.served(), 1);
}

#[tokio::test]
async fn request_head_over_max_header_bytes_gets_431() {
    let be = Backend::echo().await;
    let gw = gateway_with(
        &proxy_route("a.test", &be.url(), ""),
        "max_header_bytes = \"8KiB\"",
    )
    .await;
    let addr = gw.http_addr();

    // ~12 KiB: over the configured 8 KiB (the smallest allowed), far under
    // the 64 KiB default.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    assert_refused_and_closed(addr, &big, 431).await;
    assert_eq!(be.served(), 0, "an oversized head reached the backend");

    // ~6 KiB: under the limit, served.
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(6 * 1024)
    );
    let mut c = RawClient::connect(addr).await;
    c.send(fits.as_bytes()).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(be.served(), 1);
}

// ---------------------------------------------------------------------------
// 7. Header read timeout
// ---------------------------------------------------------------------------

/// `header_read_timeout` in these tests; the codec waits between 1 and
/// 1.25 times it.
const HEAD_TIMEOUT: Duration = Duration::from_millis(300);
/// Lower bound on a timeout-driven close (the timeout, less some slack for
/// when this side notices the instant it measures from).
const NOT_BEFORE: Duration = Duration::from_millis(250);
/// Upper bound on a timeout-driven close (10 × the timeout).
const CLOSED_BY: Duration = Duration::from_secs(3);

async fn timeout_gateway() -> Gateway {
    gateway_with(&respond_route("*", "ok"), "header_read_timeout = \"300ms\"").await
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_without_a_response() {
    let gw = timeout_gateway().await;
    let mut c = RawClient::connect(gw.http_addr()).await;
    let took = c
        .assert_closes_silently("a connection that sent nothing", CLOSED_BY)
        .await;
    assert!(
        took >= NOT_BEFORE,
        "closed after {took:?}, before the {HEAD_TIMEOUT:?} header read timeout"
    );
}

#[tokio::test]
async fn half_a_request_head_gets_408_after_the_header_read_timeout() {
    let gw = timeout_gateway().await;
    let mut c = RawClient::connect(gw.http_addr()).await;
    let start = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: a").await;
    let r = within("the 408", CLOSED_BY, c.response()).await;
    let took = start.elapsed();
    assert_eq!(r.status, 408, "{}{}", r.raw_head, r.text());
    assert!(r.connection_has("close"), "{}", r.raw_head);
    assert!(
        took >= NOT_BEFORE,
        "408 after {took:?}, before the {HEAD_TIMEOUT:?} header read timeout"
    );
    c.assert_closes_silently("after the 408", WAIT).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_without_a_response() {
    let gw = timeout_gateway().await;
    let mut c = RawClient::connect(gw.http_addr()).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.text(), "ok");
    assert!(!r.connection_has("close"), "{}", r.raw_head);
    let took = c
        .assert_closes_silently("an idle keep-alive connection", CLOSED_BY)
        .await;
    assert!(
        took >= NOT_BEFORE,
        "closed {took:?} after the response, before the {HEAD_TIMEOUT:?} header read timeout"
    );
}

// ---------------------------------------------------------------------------
// 8. HEAD
// ---------------------------------------------------------------------------

#[tokio::test]
async fn head_answer_with_a_length_but_no_body_leaves_the_connection_clean() {
    let be = RawBackend::start(|mut c| async move {
        while let Some(req) = c.read_request().await {
            if req.method == "HEAD" {
                // The length the GET would have; no body follows.
                c.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1234\r\n\r\n")
                    .await;
            } else {
                c.send(&ok(&format!("after head: {} {}", req.method, req.target)))
                    .await;
            }
        }
    })
    .await;
    let gw = gateway_with(&proxy_route("head.test", &be.url(), ""), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;

    for round in 1..=2 {
        c.send(b"HEAD /file HTTP/1.1\r\nHost: head.test\r\n\r\n")
            .await;
        let r = c.head_response().await;
        assert_eq!(r.status, 200, "round {round}: {}", r.raw_head);
        assert_eq!(
            r.header("content-length"),
            Some("1234"),
            "round {round}: {}",
            r.raw_head
        );
        assert!(r.head.all("transfer-encoding").is_empty(), "{}", r.raw_head);
        assert!(!r.connection_has("close"), "{}", r.raw_head);

        // Stray bytes after the HEAD answer would be read as the start of
        // this response.
        c.send(b"GET /next HTTP/1.1\r\nHost: head.test\r\n\r\n")
            .await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "round {round}: {}{}", r.raw_head, r.text());
        assert_eq!(r.text(), "after head: GET /next", "round {round}");
    }
}

#[tokio::test]
async fn head_on_a_generated_answer_has_its_length_and_no_body() {
    let gw = gateway_with(&respond_route("r.test", "hello"), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;

    c.send(b"HEAD / HTTP/1.1\r\nHost: r.test\r\n\r\n").await;
    let r = c.head_response().await;
    assert_eq!(r.status, 200, "{}", r.raw_head);
    // The length a GET would get.
    assert_eq!(r.header("content-length"), Some("5"), "{}", r.raw_head);
    assert!(r.head.all("transfer-encoding").is_empty(), "{}", r.raw_head);

    c.send(b"GET / HTTP/1.1\r\nHost: r.test\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.text());
    assert_eq!(r.text(), "hello");
}

// ---------------------------------------------------------------------------
// 9. Date
// ---------------------------------------------------------------------------

/// Asserts `v` is an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) within
/// a minute of now.
fn assert_imf_fixdate(v: &str, what: &str) {
    assert_eq!(v.len(), 29, "{what}: date {v:?} is not 29 characters");
    assert!(v.ends_with(" GMT"), "{what}: date {v:?}");
    let parsed = httpdate::parse_http_date(v)
        .unwrap_or_else(|e| panic!("{what}: date {v:?} does not parse: {e}"));
    // Re-formatting gives IMF-fixdate; equal means it was one (right
    // weekday included), not RFC 850 or asctime form.
    assert_eq!(
        httpdate::fmt_http_date(parsed),
        v,
        "{what}: date {v:?} is not in IMF-fixdate form"
    );
    let now = SystemTime::now();
    let skew = now
        .duration_since(parsed)
        .or_else(|_| parsed.duration_since(now))
        .unwrap();
    assert!(
        skew < Duration::from_secs(60),
        "{what}: date {v:?} is {skew:?} off"
    );
}

#[tokio::test]
async fn every_response_has_one_imf_fixdate_date_header() {
    let echo = Backend::echo().await;
    // A backend that sends no Date of its own.
    let dateless = RawBackend::start(|mut c| async move {
        while c.read_request().await.is_some() {
            c.send(&ok("no date here")).await;
        }
    })
    .await;
    let refusing = Backend::refusing().await;
    let routes = [
        respond_route("gen.test", "ok"),
        proxy_route("echo.test", &echo.url(), ""),
        proxy_route("dateless.test", &dateless.url(), ""),
        proxy_route("down.test", &refusing.url(), ""),
    ]
    .concat();
    let gw = gateway_with(&routes, "").await;
    let addr = gw.http_addr();

    let cases: [(&str, &[u8], Option<u16>); 7] = [
        (
            "generated answer",
            b"GET / HTTP/1.1\r\nHost: gen.test\r\n\r\n",
            Some(200),
        ),
        (
            "proxied, backend sent a Date",
            b"GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n",
            Some(200),
        ),
        (
            "proxied, backend sent no Date",
            b"GET / HTTP/1.1\r\nHost: dateless.test\r\n\r\n",
            Some(200),
        ),
        (
            "upstream down",
            b"GET / HTTP/1.1\r\nHost: down.test\r\n\r\n",
            Some(502),
        ),
        (
            "no route",
            b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n",
            None,
        ),
        (
            "HTTP/1.0 client",
            b"GET / HTTP/1.0\r\nHost: dateless.test\r\n\r\n",
            Some(200),
        ),
        (
            "malformed head",
            b"GET / HTTP/1.1\r\nHost: gen.test\r\nX : y\r\n\r\n",
            Some(400),
        ),
    ];
    for (what, request, status) in cases {
        let mut c = RawClient::connect(addr).await;
        c.send(request).await;
        let r = c.response().await;
        if let Some(s) = status {
            assert_eq!(r.status, s, "{what}: {}{}", r.raw_head, r.text());
        }
        let dates = r.head.all("date");
        assert_eq!(dates.len(), 1, "{what}: date headers in {:?}", r.raw_head);
        assert_imf_fixdate(dates[0], what);
    }
    assert_eq!(dateless.accepted(), 1, "the dateless backend was not used");
}

// ---------------------------------------------------------------------------
// 10. Expect: 100-continue
// ---------------------------------------------------------------------------

#[tokio::test]
async fn expect_100_continue_gets_100_before_the_body_then_the_final_answer() {
    let be = Backend::echo().await;
    let gw = gateway_with(&proxy_route("e.test", &be.url(), ""), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;
    let body = support::pattern_chunk_at(0, 50_000);

    for round in 1..=2 {
        c.send(
            format!(
                "PUT /upload HTTP/1.1\r\nHost: e.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        // Nothing of the body has been sent: the gateway must say 100 first.
        let interim = c.response().await;
        assert_eq!(
            interim.raw_head, "HTTP/1.1 100 Continue\r\n\r\n",
            "round {round}: the first answer to Expect: 100-continue"
        );
        c.send(&body).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "round {round}: {}{}", r.raw_head, r.text());
        let e = r.echo();
        assert_eq!(e.body_len(), body.len() as u64, "round {round}");
        assert_eq!(e.body_sha256(), sha256_hex(&body), "round {round}");
        assert!(!r.connection_has("close"), "round {round}: {}", r.raw_head);
    }
    assert_eq!(be.served(), 2);
}

#[tokio::test]
async fn expect_100_continue_over_max_body_gets_413_without_100_continue() {
    let be = Backend::echo().await;
    let gw = gateway_with(&proxy_route("e.test", &be.url(), "max_body = \"1KiB\""), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;

    c.send(b"PUT /upload HTTP/1.1\r\nHost: e.test\r\nExpect: 100-continue\r\nContent-Length: 2048\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(
        r.status,
        413,
        "the first answer to a too-large Expect: 100-continue: {}{}",
        r.raw_head,
        r.text()
    );
    // The client never sent the body it announced: the connection cannot
    // carry another request.
    assert!(r.connection_has("close"), "{}", r.raw_head);
    c.assert_closes_silently("after the 413", WAIT).await;
    assert_eq!(be.served(), 0);
}

// ---------------------------------------------------------------------------
// 11. Connection: close
// ---------------------------------------------------------------------------

#[tokio::test]
async fn connection_close_from_the_client_is_answered_with_close_and_a_close() {
    let be = Backend::echo().await;
    let gw = gateway_with(&proxy_route("c.test", &be.url(), ""), "").await;

    let mut c = RawClient::connect(gw.http_addr()).await;
    c.send(b"GET /bye HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.text());
    assert_eq!(r.echo().uri(), "/bye");
    assert!(r.connection_has("close"), "{}", r.raw_head);
    c.assert_closes_silently("after Connection: close", WAIT)
        .await;
    assert_eq!(be.served(), 1);
}

#[tokio::test]
async fn an_upgrade_with_a_listed_length_is_refused_like_any_upgrade_with_a_body() {
    // `Content-Length: 5, 5` is a valid length (a list of equal values);
    // the no-body-on-upgrade rule must read it the same way.
    let be = Backend::echo().await;
    let gw = gateway_with(&proxy_route("u.test", &be.url(), ""), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;
    c.send(
        b"GET /ws HTTP/1.1\r\nHost: u.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
          Content-Length: 5, 5\r\n\r\nhello",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 400, "{}{}", r.raw_head, r.text());
    assert_eq!(be.served(), 0);
}

#[tokio::test]
async fn a_small_unread_body_is_dropped_and_the_connection_kept() {
    // A `respond` route never reads the body; the connection reads and
    // drops it after the answer instead of closing.
    let gw = gateway_with(&respond_route("r.test", "hi"), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;
    c.send(b"POST /form HTTP/1.1\r\nHost: r.test\r\nContent-Length: 11\r\n\r\nhello=world")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.text());
    assert!(!r.connection_has("close"), "{}", r.raw_head);
    // The body did not leak into the next request.
    c.send(b"GET /again HTTP/1.1\r\nHost: r.test\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.text());
    assert_eq!(r.text(), "hi");
}

#[tokio::test]
async fn a_large_unread_body_closes_the_connection() {
    let gw = gateway_with(&respond_route("r.test", "hi"), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;
    let len = 200 * 1024;
    c.send(
        format!("POST /big HTTP/1.1\r\nHost: r.test\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.text());
    assert!(r.connection_has("close"), "{}", r.raw_head);
}

#[tokio::test]
async fn requests_pipelined_after_connection_close_are_not_served() {
    let be = Backend::echo().await;
    let gw = gateway_with(&proxy_route("c.test", &be.url(), ""), "").await;

    let mut c = RawClient::connect(gw.http_addr()).await;
    c.send(
        b"GET /bye HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n\
          GET /ignored HTTP/1.1\r\nHost: c.test\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}{}", r.raw_head, r.text());
    assert_eq!(r.echo().uri(), "/bye");
    assert!(r.connection_has("close"), "{}", r.raw_head);
    c.assert_closes_silently("after Connection: close with more pipelined", WAIT)
        .await;
    assert_eq!(
        be.served(),
        1,
        "a request after Connection: close was served"
    );
}

// ---------------------------------------------------------------------------
// Request bodies the client breaks
// ---------------------------------------------------------------------------

/// What a [`body_watching_backend`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendEvent {
    /// A request head arrived.
    Head,
    /// The gateway stopped in the middle of that request's body.
    CutOff,
}

/// A backend that answers every complete request with `ok("fine")` and
/// reports each head it reads and each body the gateway cut off.
async fn body_watching_backend() -> (RawBackend, mpsc::UnboundedReceiver<BackendEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            while let Some(raw) = c.wire.head().await {
                let _ = tx.send(BackendEvent::Head);
                let head = Head::parse(&raw);
                let complete = if head.is_chunked() {
                    c.wire.chunked().await.is_some()
                } else if let Some(n) = head.content_length() {
                    c.wire.exact(n).await.is_some()
                } else {
                    true
                };
                if !complete {
                    let _ = tx.send(BackendEvent::CutOff);
                    return;
                }
                c.send(&ok("fine")).await;
            }
        }
    })
    .await;
    (be, rx)
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<BackendEvent>) -> BackendEvent {
    within("the backend to report", WAIT, rx.recv())
        .await
        .expect("the backend stopped")
}

const BAD_CHUNKED: &[u8] = b"POST /upload HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";

#[tokio::test]
async fn a_malformed_chunked_request_body_gets_400() {
    let (be, _rx) = body_watching_backend().await;
    let gw = gateway_with(&proxy_route("b.test", &be.url(), ""), "").await;
    let mut c = RawClient::connect(gw.http_addr()).await;
    c.send(BAD_CHUNKED).await;
    let r = c.response().await;
    assert_eq!(r.status, 400, "{}{}", r.raw_head, r.text());
    assert!(r.connection_has("close"), "{}", r.raw_head);
    c.assert_closes_silently("after a broken request body", WAIT)
        .await;
}

#[tokio::test]
async fn malformed_chunked_request_bodies_do_not_eject_a_healthy_upstream() {
    let (be, _rx) = body_watching_backend().await;
    let gw = gateway_with(
        &proxy_route("b.test", &be.url(), ""),
        "upstream_eject_after = 3\nupstream_eject_for = \"60s\"",
    )
    .await;
    for i in 0..3 {
        let mut c = RawClient::connect(gw.http_addr()).await;
        c.send(BAD_CHUNKED).await;
        let r = c.response().await;
        assert_ne!(r.status, 200, "broken body {i} was answered 200");
    }
    // Someone else's well-formed request to the same (healthy) upstream.
    let mut c = RawClient::connect(gw.http_addr()).await;
    c.send(b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(
        r.status,
        200,
        "three malformed bodies from a client took the upstream down: {}{}",
        r.raw_head,
        r.text()
    );
    assert_eq!(r.text(), "fine");
}

#[tokio::test]
async fn clients_hanging_up_mid_upload_do_not_eject_a_healthy_upstream() {
    let (be, mut rx) = body_watching_backend().await;
    // Streamed: with request buffering the backend would never see these.
    let gw = gateway_with(
        &proxy_route("b.test", &be.url(), "request_buffering = false"),
        "upstream_eject_after = 3\nupstream_eject_for = \"60s\"",
    )
    .await;
    for i in 0..3 {
        let mut c = RawClient::connect(gw.http_addr()).await;
        c.send(b"POST /upload HTTP/1.1\r\nHost: b.test\r\nContent-Length: 100\r\n\r\n0123456789")
            .await;
        assert_eq!(next_event(&mut rx).await, BackendEvent::Head, "upload {i}");
        drop(c);
        // The gateway gives up on the upload once it sees the hang-up.
        assert_eq!(
            next_event(&mut rx).await,
            BackendEvent::CutOff,
            "upload {i}"
        );
    }
    let mut c = RawClient::connect(gw.http_addr()).await;
    c.send(b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(
        r.status,
        200,
        "three clients hanging up mid-upload took the upstream down: {}{}",
        r.raw_head,
        r.text()
    );
    assert_eq!(r.text(), "fine");
}
