//! Message framing at both ends of the gateway, pinned on raw sockets:
//! transfer codings other than `chunked` (501 from a client, 502 from a
//! backend), the bound on chunk extensions (per chunk, so a long stream of
//! small ones passes and one huge one does not), an absolute-form request
//! without `Host`, request methods, and a repeated `content-length` over
//! HTTP/2.
//!
//! Backends are [`RawBackend`]s that report what they read over a channel
//! (handlers never assert); clients are raw sockets or the test client.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use support::client::TestClient;
use support::gateway::gateway_with;
use support::wire::{Head, RawBackend, Seen, Wire};
use support::within;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn proxy_route(host: &str, upstream: &str) -> String {
    format!("[[route]]\nhost = \"{host}\"\nupstream = \"{upstream}\"\ntimeout = \"5s\"\n\n")
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A backend that reads whole requests, reports each, and answers `fine`.
async fn reporting_backend() -> (RawBackend, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            while let Some(req) = c.read_request().await {
                let _ = tx.send(req);
                c.send(&ok("fine")).await;
            }
        }
    })
    .await;
    (be, rx)
}

/// A backend answering every request with `answer`, then closing.
async fn answering_backend(answer: Vec<u8>) -> RawBackend {
    RawBackend::start(move |mut c| {
        let answer = answer.clone();
        async move {
            if c.read_request().await.is_some() {
                c.send(&answer).await;
            }
        }
    })
    .await
}

/// One response read off a raw client socket.
struct Resp {
    status: u16,
    head: Head,
    /// The decoded body; `None` when the chunked body was cut off.
    body: Option<Vec<u8>>,
}

async fn connect(addr: SocketAddr) -> Wire<TcpStream> {
    let s = within("connect to the gateway", WAIT, TcpStream::connect(addr))
        .await
        .expect("connect to the gateway");
    s.set_nodelay(true).unwrap();
    Wire::new(s)
}

/// Sends `request` on a new connection and reads one response.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut w = connect(addr).await;
    within("write to the gateway", WAIT, w.io.write_all(request))
        .await
        .expect("write to the gateway");
    read(&mut w).await
}

async fn read(w: &mut Wire<TcpStream>) -> Resp {
    within("a response from the gateway", WAIT, async {
        let raw = w
            .head()
            .await
            .expect("the gateway closed without answering");
        let head = Head::parse(&raw);
        let status: u16 = head
            .start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {:?}", head.start));
        let body = if head.is_chunked() {
            w.chunked().await
        } else if let Some(n) = head.content_length() {
            w.exact(n).await
        } else {
            Some(w.read_to_eof().await)
        };
        Resp { status, head, body }
    })
    .await
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(r.body.as_deref().unwrap_or_default()).into_owned()
}

/// A chunked body of `n` one-byte chunks, each with a small extension.
fn many_small_extensions(n: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..n {
        body.extend_from_slice(
            format!("1;seq={i}\r\n{}\r\n", (b'a' + (i % 26) as u8) as char).as_bytes(),
        );
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

fn expected_letters(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

// ---------------------------------------------------------------------------
// Transfer codings other than chunked
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_request_with_a_transfer_coding_before_chunked_gets_501() {
    let (be, mut rx) = reporting_backend().await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: a.test\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n");
        let mut w = connect(gw.http_addr()).await;
        w.io.write_all(req.as_bytes()).await.unwrap();
        let r = read(&mut w).await;
        assert_eq!(r.status, 501, "{te:?}: {}", text(&r));
        assert_eq!(r.head.get("connection"), Some("close"), "{te:?}");
        assert!(
            within("the close after a 501", WAIT, w.read_to_eof())
                .await
                .is_empty(),
            "{te:?}: more after the 501"
        );
    }
    assert!(rx.try_recv().is_err(), "a coded body reached the backend");

    // Plain chunked still goes through.
    let r = exchange(
        gw.http_addr(),
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(rx.recv().await.unwrap().body, b"hello");
}

#[tokio::test]
async fn a_backend_answer_with_a_transfer_coding_before_chunked_is_a_502() {
    let be = answering_backend(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\n\x1f\x8b\x08\x00\x00\r\n0\r\n\r\n"
            .to_vec(),
    )
    .await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    let r = exchange(gw.http_addr(), b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(
        r.status, 502,
        "a gzip-coded body was passed on without its coding: {:?}",
        r.body
    );

    // Only chunked last, with gzip first, and a lone gzip are the same.
    let be = answering_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n\x1f\x8b\x08\x00"
            .to_vec(),
    )
    .await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    let r = exchange(gw.http_addr(), b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(r.status, 502, "{:?}", r.body);
}

// ---------------------------------------------------------------------------
// Chunk extensions: bounded per chunk, not per body
// ---------------------------------------------------------------------------

const CHUNKS: usize = 10_000;

#[tokio::test]
async fn a_long_chunked_upload_with_small_extensions_reaches_the_backend_whole() {
    let (be, mut rx) = reporting_backend().await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    let mut req =
        b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend(many_small_extensions(CHUNKS));
    let r = exchange(gw.http_addr(), &req).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let seen = within("the backend", WAIT, rx.recv()).await.unwrap();
    assert_eq!(seen.body, expected_letters(CHUNKS));
}

#[tokio::test]
async fn an_oversized_chunk_extension_in_a_request_gets_400() {
    let (be, mut rx) = reporting_backend().await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    let req = format!(
        "POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;x={}\r\nhello\r\n0\r\n\r\n",
        "e".repeat(5000)
    );
    let r = exchange(gw.http_addr(), req.as_bytes()).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    // The backend may have seen the head (the body streams), never a
    // complete body.
    if let Ok(seen) = rx.try_recv() {
        panic!("the backend got the whole body: {:?}", seen.body);
    }
}

#[tokio::test]
async fn a_long_chunked_response_with_small_extensions_arrives_whole() {
    let mut answer =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    answer.extend(many_small_extensions(CHUNKS));
    let be = answering_backend(answer).await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    let r = exchange(gw.http_addr(), b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.as_deref().map(<[u8]>::len),
        Some(CHUNKS),
        "the response was cut off"
    );
    assert_eq!(r.body.unwrap(), expected_letters(CHUNKS));
}

#[tokio::test]
async fn an_oversized_chunk_extension_in_a_response_cuts_it_off() {
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5;x={}\r\nworld\r\n0\r\n\r\n",
        "e".repeat(5000)
    );
    let be = answering_backend(answer.into_bytes()).await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    let r = exchange(gw.http_addr(), b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.is_none(),
        "the response looked complete: {:?}",
        text(&r)
    );
}

// ---------------------------------------------------------------------------
// Request line and Host
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_http11_absolute_form_request_without_host_gets_400() {
    let (be, mut rx) = reporting_backend().await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    let r = exchange(gw.http_addr(), b"GET http://a.test/x HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(rx.try_recv().is_err(), "it reached the backend");

    // HTTP/1.0 has no Host requirement; with Host, 1.1 is fine.
    for req in [
        &b"GET http://a.test/x HTTP/1.0\r\n\r\n"[..],
        b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ] {
        let r = exchange(gw.http_addr(), req).await;
        assert_eq!(
            r.status,
            200,
            "{:?}: {}",
            String::from_utf8_lossy(req),
            text(&r)
        );
        assert_eq!(rx.recv().await.unwrap().target, "/x");
    }
}

#[tokio::test]
async fn lowercase_methods_get_400_and_uppercase_extension_methods_are_forwarded() {
    let (be, mut rx) = reporting_backend().await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    for m in ["get", "Post", "propfind", "gEt"] {
        let r = exchange(
            gw.http_addr(),
            format!("{m} / HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{m}: {}", text(&r));
    }
    assert!(
        rx.try_recv().is_err(),
        "a lowercase method reached the backend"
    );
    for m in ["PROPFIND", "MKCOL", "REPORT", "X-CUSTOM_1"] {
        let r = exchange(
            gw.http_addr(),
            format!("{m} /dav HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{m}: {}", text(&r));
        assert_eq!(rx.recv().await.unwrap().method, m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowercase_methods_over_http2_get_400() {
    let (be, mut rx) = reporting_backend().await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    let h2 = TestClient::h2c_to(gw.http_addr()).with_timeout(WAIT);
    let r = h2
        .request(
            Method::from_bytes(b"get").unwrap(),
            "http://a.test/",
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        rx.try_recv().is_err(),
        "a lowercase method reached the backend"
    );
    let r = h2
        .request(
            Method::from_bytes(b"PROPFIND").unwrap(),
            "http://a.test/",
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rx.recv().await.unwrap().method, "PROPFIND");
}

// ---------------------------------------------------------------------------
// content-length over HTTP/2
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_http2_content_lengths_reach_the_backend_as_one_plain_value() {
    let (be, mut rx) = reporting_backend().await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    let h2 = TestClient::h2c_to(gw.http_addr()).with_timeout(WAIT);
    let r = h2
        .request(
            Method::POST,
            "http://a.test/up",
            &[("content-length", "05"), ("content-length", "5")],
            "hello",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = within("the backend", WAIT, rx.recv()).await.unwrap();
    assert_eq!(seen.head.all("content-length"), ["5"]);
    assert_eq!(seen.body, b"hello");
}

/// Refused before it gets to us (the h2 layer resets the stream); pinned
/// so that it stays refused, by a reset or a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unequal_http2_content_lengths_never_reach_the_backend() {
    let (be, mut rx) = reporting_backend().await;
    let gw = gateway_with(&proxy_route("a.test", &be.url()), "").await;
    let h2 = TestClient::h2c_to(gw.http_addr()).with_timeout(WAIT);
    let r = h2
        .try_request(
            Method::POST,
            "http://a.test/up",
            &[("content-length", "5"), ("content-length", "50")],
            "hello",
        )
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status, 400, "{}", r.text());
    }
    assert!(rx.try_recv().is_err(), "it reached the backend");
}
