//! How the gateway speaks HTTP/1.1 to backends (the upstream side), pinned
//! with hand-written backends on raw sockets, so that only what crosses the
//! wire counts: response framing (chunked with extensions and trailers,
//! close-delimited, HEAD, 204/304), interim 1xx answers, keep-alive reuse,
//! invalid answers (502), truncated bodies, stale pooled connections,
//! request bodies, early answers and the request head a backend receives.
//!
//! Every backend here is a [`RawBackend`]: a `127.0.0.1:0` listener whose
//! connections run a handler written in the test, stopped with all its
//! connections when dropped. Handlers never assert: they report what they
//! read over a channel, and the test asserts.
//!
//! The tests use the default current-thread runtime: the gateway pools
//! upstream connections per worker thread, so counting backend connections
//! is only deterministic with one thread.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt as _;
use support::client::{RawResponse, TestBody, TestClient, error_chain, raw_bytes};
use support::gateway::Gateway;
use support::wire::{Head, RawBackend, Seen, Wire};
use support::within;
use tokio::io::{AsyncRead, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

/// The bound on every wait in this file (the routes' own timeout is 5 s, so
/// a gateway that waits for an upstream shows up as a 504, not a hang).
const WAIT: Duration = Duration::from_secs(10);

fn proxy_route(host: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[route]]\nhost = \"{host}\"\nupstream = \"{upstream}\"\ntimeout = \"5s\"\n{extra}\n\n"
    )
}

/// A client pinned to the gateway, each request bounded by [`WAIT`].
fn client(gw: &Gateway) -> TestClient {
    TestClient::to(gw.http_addr()).with_timeout(WAIT)
}

/// A `200 OK` with a Content-Length body.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn sha256_hex(b: &[u8]) -> String {
    support::hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

// ---------------------------------------------------------------------------
// Wire helpers: HTTP/1.1 framing read off a byte stream by hand.
// ---------------------------------------------------------------------------

/// The next request a backend reported.
async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    within("the backend to read a request", WAIT, rx.recv())
        .await
        .expect("the backend stopped")
}

/// A response read off a raw client socket (interim 1xx skipped).
struct RawResp {
    status: u16,
    head: Head,
    body: Vec<u8>,
}

async fn read_raw_response<R: AsyncRead + Unpin>(w: &mut Wire<R>) -> Option<RawResp> {
    loop {
        let head = Head::parse(&w.head().await?);
        let status: u16 = head.start.split(' ').nth(1)?.parse().ok()?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if head.is_chunked() {
            w.chunked().await?
        } else if let Some(n) = head.content_length() {
            w.exact(n).await?
        } else {
            w.read_to_eof().await
        };
        return Some(RawResp { status, head, body });
    }
}

/// Writes `request` on a new connection to `addr` and reads one response,
/// bounded by [`WAIT`].
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    within(
        "a raw exchange with the gateway",
        WAIT,
        raw_bytes(addr, request),
    )
    .await
}

// ---------------------------------------------------------------------------
// Response framing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn chunked_response_with_extensions_and_trailers_arrives_whole() {
    let tail: Vec<u8> = (b'a'..=b'z').collect(); // 26 = 0x1A bytes
    let mut answer = b"HTTP/1.1 200 OK\r\n\
        Content-Type: text/plain\r\n\
        X-Backend: chunked\r\n\
        Transfer-Encoding: chunked\r\n\
        Trailer: X-Checksum\r\n\
        \r\n\
        5\r\nhello\r\n\
        1;name=val\r\n \r\n\
        6\r\nworld!\r\n\
        1A\r\n"
        .to_vec();
    answer.extend_from_slice(&tail);
    answer.extend_from_slice(b"\r\n0\r\nX-Checksum: 0xfeed\r\nX-Other: t\r\n\r\n");
    let expected = [b"hello world!".as_slice(), &tail].concat();

    let be = RawBackend::start(move |mut c| {
        let answer = answer.clone();
        async move {
            while let Some(req) = c.read_request().await {
                if req.target == "/chunked" {
                    c.send(&answer).await;
                } else {
                    c.send(&ok("after the trailers")).await;
                }
            }
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("c.test", &be.url(), "")).await;
    let cl = client(&gw);

    let r = cl.get("http://c.test/chunked").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        &r.body[..],
        &expected[..],
        "body: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-backend"), Some("chunked"));

    // The next exchange with the same backend is not disturbed.
    let r = cl.get("http://c.test/next").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "after the trailers");
}

#[tokio::test]
async fn backend_connection_is_reused_after_a_chunked_response_with_trailers() {
    let be = RawBackend::start(|mut c| async move {
        while let Some(req) = c.read_request().await {
            if req.target == "/trailers" {
                c.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5;name=val\r\nhello\r\n0\r\nX-Checksum: 0xfeed\r\n\r\n")
                    .await;
            } else {
                c.send(&ok("after the trailers")).await;
            }
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("c.test", &be.url(), "")).await;
    let cl = client(&gw);

    let r = cl.get("http://c.test/trailers").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    let r = cl.get("http://c.test/next").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "after the trailers");
    // The trailer section ends the message like a last chunk does: the
    // connection is as reusable as after any other complete response.
    assert_eq!(
        be.accepted(),
        1,
        "the backend connection was not reused after a response with trailers"
    );
}

#[tokio::test]
async fn close_delimited_response_arrives_whole() {
    let payload = support::pattern_chunk_at(3, 100_000);
    let sent = payload.clone();
    let be = RawBackend::start(move |mut c| {
        let payload = payload.clone();
        async move {
            if c.read_request().await.is_none() {
                return;
            }
            // No Content-Length, no Transfer-Encoding: the body ends when
            // the connection does. Sent in pieces.
            c.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Backend: eof\r\n\r\n")
                .await;
            for piece in payload.chunks(30_000) {
                c.send(piece).await;
                tokio::task::yield_now().await;
            }
            // Returning drops the socket: FIN.
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("eof.test", &be.url(), "")).await;
    let cl = client(&gw);

    for round in 1..=2 {
        let r = cl.get("http://eof.test/").await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_eq!(r.body.len(), sent.len(), "round {round}");
        assert!(r.body[..] == sent[..], "round {round}: body corrupted");
        assert_eq!(r.header("x-backend"), Some("eof"));
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    }
    // Each close-delimited response used up its connection.
    assert_eq!(be.accepted(), 2);
}

#[tokio::test]
async fn head_response_with_content_length_has_no_body_and_the_connection_stays_usable() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            while let Some(req) = c.read_request().await {
                let head = req.method == "HEAD";
                let _ = tx.send(req);
                if head {
                    // The length the GET would have; no body follows.
                    c.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1234\r\nETag: \"h1\"\r\n\r\n")
                        .await;
                } else {
                    c.send(&ok("after head")).await;
                }
            }
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("head.test", &be.url(), "")).await;
    let cl = client(&gw);

    let r = cl
        .request(
            Method::HEAD,
            "http://head.test/file",
            &[],
            TestBody::empty(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1234"), "{:?}", r.headers);
    assert_eq!(r.header("etag"), Some("\"h1\""));
    assert!(r.body.is_empty(), "HEAD answered with a body: {:?}", r.body);
    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.head.start, "HEAD /file HTTP/1.1");

    // The next request (same client, same gateway) is not confused by 1234
    // bytes that never came, and goes over the same backend connection.
    let r = cl.get("http://head.test/next").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "after head");
    assert_eq!(next_seen(&mut rx).await.method, "GET");
    assert_eq!(be.accepted(), 1);
}

#[tokio::test]
async fn no_content_and_not_modified_pass_through_without_a_body() {
    let be = RawBackend::start(|mut c| async move {
        while let Some(req) = c.read_request().await {
            match req.target.as_str() {
                "/204" => {
                    c.send(b"HTTP/1.1 204 No Content\r\nX-Kind: nothing\r\n\r\n")
                        .await
                }
                "/304" => {
                    c.send(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=60\r\n\r\n")
                        .await
                }
                _ => c.send(&ok("after")).await,
            }
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("nb.test", &be.url(), "")).await;
    let cl = client(&gw);

    for _ in 0..2 {
        let r = cl.get("http://nb.test/204").await;
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty(), "{:?}", r.body);
        assert_eq!(r.header("x-kind"), Some("nothing"));

        let r = cl
            .get_with("http://nb.test/304", &[("if-none-match", "\"v1\"")])
            .await;
        assert_eq!(r.status, 304);
        assert!(r.body.is_empty(), "{:?}", r.body);
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert_eq!(r.header("cache-control"), Some("max-age=60"));
    }
    let r = cl.get("http://nb.test/after").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "after");
    assert_eq!(
        be.accepted(),
        1,
        "bodiless answers should leave the backend connection reusable"
    );
}

#[tokio::test]
async fn interim_100_and_103_answers_are_skipped_for_the_final_one() {
    let be = RawBackend::start(|mut c| async move {
        while let Some(req) = c.read_request().await {
            let interim: &[u8] = match req.target.as_str() {
                "/continue" => b"HTTP/1.1 100 Continue\r\n\r\n",
                "/hints" => b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
                _ => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n",
            };
            c.send(interim).await;
            let body = format!("final for {}", req.target);
            c.send(
                format!(
                    "HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("i.test", &be.url(), "")).await;
    let cl = client(&gw);

    for path in ["/continue", "/hints", "/both"] {
        let r = cl
            .request(
                Method::POST,
                &format!("http://i.test{path}"),
                &[],
                "some body",
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.text(), format!("final for {path}"));
        assert_eq!(r.header("x-final"), Some("yes"), "{path}");
        assert!(
            r.header("link").is_none(),
            "{path}: the 103's Link header leaked into the final response"
        );
    }
    assert_eq!(be.accepted(), 1);
}

// ---------------------------------------------------------------------------
// Connection reuse
// ---------------------------------------------------------------------------

#[tokio::test]
async fn keep_alive_backend_connection_is_reused_for_sequential_requests() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            let mut n = 0;
            while let Some(req) = c.read_request().await {
                let _ = tx.send(req);
                c.send(&ok(&format!("conn {} request {n}", c.index))).await;
                n += 1;
            }
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("ka.test", &be.url(), "")).await;
    let cl = client(&gw);

    for i in 0..5 {
        let r = cl.get(&format!("http://ka.test/r{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("conn 0 request {i}"));
        let seen = next_seen(&mut rx).await;
        assert_eq!(seen.target, format!("/r{i}"));
        assert_eq!(seen.conn, 0);
        assert!(
            seen.head
                .all("connection")
                .iter()
                .all(|v| !v.eq_ignore_ascii_case("close")),
            "the gateway asked the backend to close: {:?}",
            seen.head.headers
        );
    }
    assert_eq!(
        be.accepted(),
        1,
        "5 sequential requests should share one backend connection"
    );
}

#[tokio::test]
async fn connection_close_answers_get_a_new_connection_per_request() {
    let be = RawBackend::start(|mut c| async move {
        if c.read_request().await.is_some() {
            let body = format!("conn {}", c.index);
            // `close` also names a header called Close: hop-by-hop, it
            // must not reach the client either.
            c.send(
                format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nClose: secret\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        }
        // Returning closes the connection, as announced.
    })
    .await;
    let gw = Gateway::start(&proxy_route("cc.test", &be.url(), "")).await;
    let cl = client(&gw);

    for i in 0..5 {
        let r = cl.get("http://cc.test/").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), format!("conn {i}"));
        assert_eq!(
            r.header("close"),
            None,
            "request {i}: a named header passed"
        );
    }
    assert_eq!(be.accepted(), 5);
}

#[tokio::test]
async fn stale_pooled_connection_closed_by_the_backend_is_not_a_failure() {
    let close_first = Arc::new(Notify::new());
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel::<()>();
    let be = {
        let close_first = close_first.clone();
        RawBackend::start(move |mut c| {
            let close_first = close_first.clone();
            let closed_tx = closed_tx.clone();
            async move {
                if c.index == 0 {
                    // One keep-alive exchange, then hang up while idle.
                    if c.read_request().await.is_some() {
                        c.send(&ok("first")).await;
                        close_first.notified().await;
                        drop(c);
                        let _ = closed_tx.send(());
                    }
                    return;
                }
                while let Some(_req) = c.read_request().await {
                    c.send(&ok(&format!("fresh conn {}", c.index))).await;
                }
            }
        })
        .await
    };
    let gw = Gateway::start(&proxy_route("stale.test", &be.url(), "")).await;
    let cl = client(&gw);

    let r = cl.get("http://stale.test/one").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "first");

    close_first.notify_one();
    within(
        "the backend to close its idle connection",
        WAIT,
        closed_rx.recv(),
    )
    .await
    .expect("backend stopped");
    // The FIN is on its way; give it a moment to arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let r = cl.get("http://stale.test/two").await;
    assert_eq!(
        r.status,
        200,
        "a request after the backend closed an idle connection failed: {}",
        r.text()
    );
    assert_eq!(r.text(), "fresh conn 1");
    assert_eq!(be.accepted(), 2);
}

// ---------------------------------------------------------------------------
// Invalid answers
// ---------------------------------------------------------------------------

/// A GET through a fresh gateway to `be` must be answered 502, and `be`
/// must have been reached.
async fn assert_502_from(be: &RawBackend, what: &str) {
    let gw = Gateway::start(&proxy_route("bad.test", &be.url(), "")).await;
    let r = client(&gw)
        .try_request(Method::GET, "http://bad.test/", &[], TestBody::empty())
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer from the gateway: {e}"));
    assert_eq!(r.status, 502, "{what}: {}", r.text());
    assert!(be.accepted() >= 1, "{what}: the backend was never reached");
}

#[tokio::test]
async fn garbage_backend_answer_is_a_502() {
    let be = RawBackend::answer_then_hold(b"HELLO\r\n\r\n".to_vec()).await;
    assert_502_from(&be, "garbage").await;
}

#[tokio::test]
async fn non_numeric_status_code_is_a_502() {
    let be =
        RawBackend::answer_then_hold(b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
            .await;
    assert_502_from(&be, "non-numeric status code").await;
}

#[tokio::test]
async fn conflicting_content_lengths_are_a_502() {
    let be = RawBackend::answer_then_hold(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
    )
    .await;
    assert_502_from(&be, "Content-Length: 5 and Content-Length: 6").await;
}

#[tokio::test]
async fn response_head_over_1_mib_is_a_502() {
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    let value = "a".repeat(50_000);
    for i in 0..24 {
        answer.extend_from_slice(format!("X-Big-{i}: {value}\r\n").as_bytes());
    }
    answer.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    assert!(answer.len() > 1024 * 1024);
    let be = RawBackend::answer_then_hold(answer).await;
    assert_502_from(&be, "a 1.2 MB response head").await;
}

#[tokio::test]
async fn backend_closing_without_an_answer_is_a_502() {
    let be = RawBackend::start(|mut c| async move {
        // Read the request, then hang up without a word.
        let _ = c.read_request().await;
    })
    .await;
    assert_502_from(&be, "closed without answering").await;
}

#[tokio::test]
async fn body_shorter_than_its_content_length_is_not_passed_off_as_complete() {
    let be = RawBackend::start(|mut c| async move {
        if c.read_request().await.is_some() {
            c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                .await;
        }
        // Returning closes the connection 90 bytes short.
    })
    .await;
    let gw = Gateway::start(&proxy_route("short.test", &be.url(), "")).await;
    let cl = client(&gw);

    let resp = cl
        .send(Method::GET, "http://short.test/", &[], TestBody::empty())
        .await;
    let resp = match resp {
        // No response at all, or an error page, is not a response passed
        // off as complete either.
        Err(e) if e.starts_with("no response headers within") => {
            panic!("the gateway hung instead of answering: {e}")
        }
        Err(_) => return,
        Ok(resp) if resp.status().is_server_error() => return,
        Ok(resp) => resp,
    };
    let status = resp.status();
    assert_eq!(status, 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let read = within("the truncated body", WAIT, async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        got.extend_from_slice(&d);
                    }
                }
                Err(e) => return Err(error_chain(e)),
            }
        }
        Ok(())
    })
    .await;
    assert!(
        b"0123456789".starts_with(&got),
        "bytes the backend never sent: {got:?}"
    );
    assert!(
        read.is_err() || got.len() < 100,
        "a complete clean 100-byte response ({status})"
    );
    assert!(
        read.is_err(),
        "the truncation was hidden: {status} with a body that ended cleanly after {} bytes",
        got.len()
    );
}

fn server_with(extra: &str) -> String {
    format!(
        "[server]\nhttp = \"{{{{HTTP}}}}\"\nadmin = \"off\"\nstate_dir = \"{{{{DIR}}}}/state\"\n{extra}\n\n"
    )
}

#[tokio::test]
async fn a_backend_that_goes_quiet_mid_body_is_cut_off_after_upstream_read_timeout() {
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let gone_tx = Arc::new(std::sync::Mutex::new(Some(gone_tx)));
    let be = RawBackend::start(move |mut c| {
        let gone_tx = gone_tx.clone();
        async move {
            if c.read_request().await.is_some() {
                c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                    .await;
                // Quiet, but open: only the gateway can end this.
                let mut b = [0u8; 1];
                let _ = c.read_raw(&mut b).await;
                if let Some(tx) = gone_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
        }
    })
    .await;
    let toml = server_with("upstream_read_timeout = \"300ms\"")
        + &proxy_route("quiet.test", &be.url(), "");
    let gw = Gateway::start(&toml).await;
    let resp = client(&gw)
        .send(Method::GET, "http://quiet.test/", &[], TestBody::empty())
        .await
        .expect("response head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let read = within("the stalled body", WAIT, async {
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => got += f.into_data().map_or(0, |d| d.len()),
                Err(e) => return Err((got, error_chain(e))),
            }
        }
        Ok(got)
    })
    .await;
    assert!(read.is_err(), "the stalled body ended cleanly: {read:?}");
    // And the backend's connection was let go.
    within("the backend connection to close", WAIT, gone_rx)
        .await
        .expect("backend task");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_after_send_timeout() {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    let be = RawBackend::start(move |mut c| {
        let done_tx = done_tx.clone();
        async move {
            if c.read_request().await.is_some() {
                c.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                // Stream until the gateway stops taking it (bounded: 256 MiB).
                let chunk = [b'z'; 64 * 1024];
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                for _ in 0..4096 {
                    if !c.try_send(&framed).await {
                        break;
                    }
                }
                if let Some(tx) = done_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
        }
    })
    .await;
    let toml = server_with("send_timeout = \"300ms\"") + &proxy_route("slow.test", &be.url(), "");
    let gw = Gateway::start(&toml).await;
    // A client that sends a request and then never reads.
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        .await
        .unwrap();
    within("the gateway to give up on the client", WAIT, done_rx)
        .await
        .expect("backend task");
    drop(s);
}

// ---------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn content_length_upload_reaches_the_backend_intact() {
    const SIZE: usize = 1024 * 1024 + 7;
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            while let Some(req) = c.read_request().await {
                let answer = format!("{} {}", req.body.len(), sha256_hex(&req.body));
                let _ = tx.send(req);
                c.send(&ok(&answer)).await;
            }
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("up.test", &be.url(), "")).await;

    let r = client(&gw)
        .request(
            Method::POST,
            "http://up.test/upload",
            &[("content-type", "application/octet-stream")],
            TestBody::pattern(SIZE as u64),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let expected_sha = support::pattern_sha256(SIZE as u64);
    assert_eq!(r.text(), format!("{SIZE} {expected_sha}"));

    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.head.start, "POST /upload HTTP/1.1");
    assert_eq!(seen.body.len(), SIZE);
    assert_eq!(sha256_hex(&seen.body), expected_sha);
    // A length the client declared reaches the backend as that length.
    assert_eq!(
        seen.head.all("content-length"),
        [SIZE.to_string()],
        "{:?}",
        seen.head.headers
    );
    assert!(
        seen.head.all("transfer-encoding").is_empty(),
        "{:?}",
        seen.head.headers
    );
}

#[tokio::test]
async fn thousands_of_tiny_chunks_reach_the_backend_whole_and_a_bad_one_after_them_is_a_400() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            while let Some(req) = c.read_request().await {
                let answer = format!("{}", req.body.len());
                let _ = tx.send(req);
                c.send(&ok(&answer)).await;
            }
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("tiny.test", &be.url(), "")).await;

    // 5,000 one-byte chunks (gathered on the way, not sent one by one).
    let mut req =
        b"POST /tiny HTTP/1.1\r\nHost: tiny.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut expected = Vec::new();
    for i in 0..5000u32 {
        let b = b'a' + (i % 26) as u8;
        req.extend_from_slice(&[b'1', b'\r', b'\n', b, b'\r', b'\n']);
        expected.push(b);
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw_exchange(gw.http_addr(), &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "5000");
    let seen = next_seen(&mut rx).await;
    assert!(seen.body == expected, "upload corrupted");

    // Good chunks, then a broken size line: the client's fault (400), not
    // a backend failure.
    let mut bad =
        b"POST /tiny HTTP/1.1\r\nHost: tiny.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..100 {
        bad.extend_from_slice(b"1\r\nx\r\n");
    }
    bad.extend_from_slice(b"zz\r\nhello\r\n0\r\n\r\n");
    let r = raw_exchange(gw.http_addr(), &bad).await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn chunked_upload_from_the_client_reaches_the_backend_complete() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            while let Some(req) = c.read_request().await {
                let answer = format!("{} {}", req.body.len(), sha256_hex(&req.body));
                let _ = tx.send(req);
                c.send(&ok(&answer)).await;
            }
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("chunk.test", &be.url(), "")).await;

    let mut req = b"POST /chunked-upload HTTP/1.1\r\nHost: chunk.test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut expected = Vec::new();
    let mut offset = 0u64;
    for (i, size) in [1usize, 4096, 65_536, 100_000, 17].into_iter().enumerate() {
        let data = support::pattern_chunk_at(offset, size);
        offset += size as u64;
        let ext = if i == 2 { ";part=middle" } else { "" };
        req.extend_from_slice(format!("{size:x}{ext}\r\n").as_bytes());
        req.extend_from_slice(&data);
        req.extend_from_slice(b"\r\n");
        expected.extend_from_slice(&data);
    }
    req.extend_from_slice(b"0\r\n\r\n");

    let r = raw_exchange(gw.http_addr(), &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        format!("{} {}", expected.len(), sha256_hex(&expected))
    );

    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body.len(), expected.len());
    assert!(seen.body == expected, "upload corrupted");
    // Whichever framing the gateway chose, it chose one.
    let te = seen.head.all("transfer-encoding");
    let cl = seen.head.all("content-length");
    if te.is_empty() {
        assert_eq!(cl, [expected.len().to_string()], "{:?}", seen.head.headers);
    } else {
        assert_eq!(te, ["chunked"], "{:?}", seen.head.headers);
        assert!(cl.is_empty(), "both framings: {:?}", seen.head.headers);
    }
}

/// A backend may answer before it has read the request body, and then stop
/// reading. The 64 MiB upload cannot fit in the socket buffers, so a
/// gateway that only reads the answer after sending the whole body would
/// never get to it.
#[tokio::test]
async fn early_413_from_a_backend_that_stops_reading_reaches_the_client() {
    const UPLOAD: usize = 64 * 1024 * 1024;
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            // Answer as soon as the head is in, never read the body, stop
            // sending (FIN) and keep the socket until the test ends.
            let Some(req) = c.read_head().await else {
                return;
            };
            let _ = tx.send(req);
            c.send(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\ntoo large")
                .await;
            let _ = c.wire.io.shutdown().await;
            c.hold().await;
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route("early.test", &be.url(), "")).await;

    let stream = within(
        "connect to the gateway",
        WAIT,
        TcpStream::connect(gw.http_addr()),
    )
    .await
    .expect("connect");
    let (rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: early.test\r\nContent-Type: application/octet-stream\r\nContent-Length: {UPLOAD}\r\n\r\n"
        );
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = support::pattern_chunk_at(0, 64 * 1024);
        let mut sent = 0;
        while sent < UPLOAD {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
    });
    let mut w = Wire::new(rd);
    let r = within(
        "the backend's early answer",
        WAIT,
        read_raw_response(&mut w),
    )
    .await;
    writer.abort();
    let r = r.expect("the gateway closed the connection without an answer");
    assert_eq!(
        r.status,
        413,
        "{:?} {}",
        r.head.headers,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.body, b"too large");
    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.head.start, "POST /upload HTTP/1.1");
}

// ---------------------------------------------------------------------------
// The request head a backend receives
// ---------------------------------------------------------------------------

/// A backend that reports each request and answers `ok`.
async fn recording_backend() -> (RawBackend, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel::<Seen>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            while let Some(req) = c.read_request().await {
                let _ = tx.send(req);
                c.send(&ok("ok")).await;
            }
        }
    })
    .await;
    (be, rx)
}

#[tokio::test]
async fn backend_receives_the_configured_host() {
    let (be, mut rx) = recording_backend().await;
    let mut toml = proxy_route("keep.test", &be.url(), "");
    toml += &proxy_route("own.test", &be.url(), "preserve_host = false");
    let gw = Gateway::start(&toml).await;
    let cl = client(&gw);

    // preserve_host (the default): the Host the client sent.
    let r = cl.get("http://keep.test/a").await;
    assert_eq!(r.status, 200);
    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.head.start, "GET /a HTTP/1.1");
    assert_eq!(seen.head.all("host"), ["keep.test"]);

    // preserve_host = false: the upstream's own authority.
    let r = cl.get("http://own.test/b").await;
    assert_eq!(r.status, 200);
    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.head.start, "GET /b HTTP/1.1");
    assert_eq!(seen.head.all("host"), [be.addr.to_string()]);
}

#[tokio::test]
async fn the_gateway_headers_reach_the_backend_once_each_whatever_the_client_sent() {
    let (be, mut rx) = recording_backend().await;
    let gw = Gateway::start(&proxy_route("spoof.test", &be.url(), "")).await;

    // A client (not a trusted proxy) sending every header the gateway sets,
    // some twice, and a request id that is not valid as one.
    let r = raw_exchange(
        gw.http_addr(),
        b"GET /who HTTP/1.1\r\n\
          Host: spoof.test\r\n\
          X-Forwarded-For: 6.6.6.6\r\n\
          X-Forwarded-For: 7.7.7.7\r\n\
          X-Forwarded-Proto: https\r\n\
          X-Forwarded-Host: evil.test\r\n\
          X-Real-IP: 6.6.6.6\r\n\
          X-Request-Id: not valid\r\n\
          X-Request-Id: second\r\n\
          Accept: */*\r\n\
          Connection: close\r\n\
          \r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r
        .header("x-request-id")
        .expect("the answer carries the request id");
    assert_ne!(id, "not valid");

    let seen = next_seen(&mut rx).await;
    let h = &seen.head;
    assert_eq!(h.start, "GET /who HTTP/1.1");
    // Host leads the head (RFC 9112 asks for it first) and comes once.
    assert_eq!(
        h.headers[0],
        ("host".into(), "spoof.test".into()),
        "{:?}",
        h.headers
    );
    assert_eq!(h.all("host"), ["spoof.test"]);
    assert_eq!(h.all("x-forwarded-for"), ["127.0.0.1"], "{:?}", h.headers);
    assert_eq!(h.all("x-forwarded-proto"), ["http"]);
    assert_eq!(h.all("x-forwarded-host"), ["spoof.test"]);
    assert_eq!(h.all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(h.all("x-request-id"), [id], "{:?}", h.headers);
    assert_eq!(h.all("accept"), ["*/*"]);
}

#[tokio::test]
async fn client_hop_by_hop_headers_do_not_reach_the_backend() {
    let (be, mut rx) = recording_backend().await;
    let gw = Gateway::start(&proxy_route("hop.test", &be.url(), "")).await;

    let r = raw_exchange(
        gw.http_addr(),
        b"POST /hop HTTP/1.1\r\n\
          Host: hop.test\r\n\
          Connection: foo\r\n\
          Foo: x\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Transfer-Encoding: chunked\r\n\
          X-Keep: yes\r\n\
          \r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = next_seen(&mut rx).await;
    let h = &seen.head;
    assert_eq!(h.start, "POST /hop HTTP/1.1");
    assert_eq!(h.all("host"), ["hop.test"]);
    assert_eq!(h.all("x-keep"), ["yes"], "{:?}", h.headers);
    for gone in ["foo", "keep-alive", "te"] {
        assert!(
            h.all(gone).is_empty(),
            "{gone} reached the backend: {:?}",
            h.headers
        );
    }
    for c in h.all("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("foo"),
            "the client's Connection header was forwarded: {c}"
        );
    }
    // Transfer-Encoding only as the gateway's own framing of this hop.
    let te = h.all("transfer-encoding");
    if te.is_empty() {
        assert_eq!(h.all("content-length"), ["5"], "{:?}", h.headers);
    } else {
        assert_eq!(te, ["chunked"], "{:?}", h.headers);
        assert!(h.all("content-length").is_empty(), "{:?}", h.headers);
    }
    assert_eq!(seen.body, b"hello");
}

#[tokio::test]
async fn empty_post_with_content_length_zero_reaches_the_backend_with_content_length_zero() {
    let (be, mut rx) = recording_backend().await;
    let gw = Gateway::start(&proxy_route("empty.test", &be.url(), "")).await;

    let r = raw_exchange(
        gw.http_addr(),
        b"POST /empty HTTP/1.1\r\nHost: empty.test\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.head.start, "POST /empty HTTP/1.1");
    assert_eq!(
        seen.head.all("content-length"),
        ["0"],
        "{:?}",
        seen.head.headers
    );
    assert!(
        seen.head.all("transfer-encoding").is_empty(),
        "{:?}",
        seen.head.headers
    );
    assert!(seen.body.is_empty());
}

#[tokio::test]
/// RFC 9110 8.6: a user agent sends Content-Length for a POST without
/// Transfer-Encoding, even when it is 0; some backends answer a POST
/// without one with 411 Length Required.
async fn empty_post_without_a_length_reaches_the_backend_with_content_length_zero() {
    let (be, mut rx) = recording_backend().await;
    let gw = Gateway::start(&proxy_route("empty.test", &be.url(), "")).await;

    // No Content-Length, no Transfer-Encoding: an HTTP/1.1 request with an
    // empty body (what `curl -X POST` sends).
    let r = raw_exchange(
        gw.http_addr(),
        b"POST /empty HTTP/1.1\r\nHost: empty.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.head.start, "POST /empty HTTP/1.1");
    assert_eq!(
        seen.head.all("content-length"),
        ["0"],
        "{:?}",
        seen.head.headers
    );
    assert!(
        seen.head.all("transfer-encoding").is_empty(),
        "{:?}",
        seen.head.headers
    );
}

// ---------------------------------------------------------------------------
// Ejection: what counts against an upstream, and panic mode
// ---------------------------------------------------------------------------

/// The value of `portcullis_upstream_panic_total` for `route`, from the
/// admin listener's `/metrics`.
async fn panic_count(gw: &Gateway, route: &str) -> u64 {
    let text = TestClient::new()
        .with_timeout(WAIT)
        .get(&gw.admin_url("/metrics"))
        .await
        .text();
    let key = format!("portcullis_upstream_panic_total{{route=\"{route}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} in /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("a counter value")
}

#[tokio::test]
async fn a_sole_upstream_ejected_by_timeouts_still_gets_requests_in_panic_mode() {
    // The first three connections never answer; later ones do.
    let be = RawBackend::start(|mut c| async move {
        if c.index < 3 {
            if c.read_head().await.is_some() {
                c.hold().await;
            }
            return;
        }
        while c.read_request().await.is_some() {
            c.send(&ok("answered")).await;
        }
    })
    .await;
    let gw = support::gateway::gateway_with(
        &format!(
            "[[route]]\nname = \"sole\"\nhost = \"sole.test\"\nupstream = \"{}\"\ntimeout = \"300ms\"\n",
            be.url()
        ),
        "upstream_eject_after = 3\nupstream_eject_for = \"60s\"",
    )
    .await;
    let cl = client(&gw);
    for i in 0..3 {
        let r = cl.get("http://sole.test/slow").await;
        assert_eq!(r.status, 504, "request {i}: {}", r.text());
    }
    // The upstream is ejected now, but it is the only one: requests still
    // go to it instead of everyone getting a 502 for a minute.
    for i in 0..2 {
        let r = cl.get("http://sole.test/fine").await;
        assert_eq!(
            r.status,
            200,
            "request {i} after the ejection was not sent to the sole upstream: {}",
            r.text()
        );
        assert_eq!(r.text(), "answered");
    }
    assert_eq!(panic_count(&gw, "sole").await, 2);
}

#[tokio::test]
async fn slow_uploads_the_backend_gives_up_on_do_not_eject_it() {
    // Like a backend whose own body timeout fires: it reads the head and
    // part of the body, then hangs up without answering. Requests without
    // a body are answered.
    let be = RawBackend::start(|mut c| async move {
        while let Some(req) = c.read_head().await {
            if req.method == "POST" {
                let _ = c.wire.exact(1000).await;
                return;
            }
            c.send(&ok("fine")).await;
        }
    })
    .await;
    let gw = support::gateway::gateway_with(
        &format!(
            "[[route]]\nname = \"up\"\nhost = \"up.test\"\nupstream = \"{}\"\ntimeout = \"5s\"\n",
            be.url()
        ),
        "upstream_eject_after = 3\nupstream_eject_for = \"60s\"",
    )
    .await;
    // Bigger than any request buffer, so it goes upstream before it is
    // complete; then the client stalls.
    let part = vec![b'x'; 256 * 1024];
    let mut stalled = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: up.test\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&part).await.unwrap();
        let mut w = Wire::new(s);
        let r = within(
            "the answer to a stalled upload",
            WAIT,
            read_raw_response(&mut w),
        )
        .await
        .unwrap_or_else(|| panic!("upload {i}: no answer"));
        assert_eq!(r.status, 502, "upload {i}");
        stalled.push(w);
    }
    let r = client(&gw).get("http://up.test/").await;
    assert_eq!(
        r.status,
        200,
        "three stalled uploads took the sole upstream out: {}",
        r.text()
    );
    assert_eq!(r.text(), "fine");
    assert_eq!(
        panic_count(&gw, "up").await,
        0,
        "the upstream was ejected by the clients' stalled uploads"
    );
}

#[tokio::test]
async fn when_every_upstream_fails_its_health_check_requests_are_still_tried() {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            while let Some(req) = c.read_request().await {
                let _ = tx.send(req.target.clone());
                if req.target == "/healthz" {
                    c.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                        .await;
                } else {
                    c.send(&ok("still here")).await;
                }
            }
        }
    })
    .await;
    let gw = support::gateway::gateway_with(
        &format!(
            "[[route]]\nname = \"hc\"\nhost = \"hc.test\"\nupstream = \"{}\"\n\
             health_check = {{ path = \"/healthz\", interval = \"50ms\", timeout = \"1s\" }}\n",
            be.url()
        ),
        "",
    )
    .await;
    // Two checks seen: the first one's verdict has been recorded.
    let mut checks = 0;
    while checks < 2 {
        if within("a health check", WAIT, rx.recv()).await.as_deref() == Some("/healthz") {
            checks += 1;
        }
    }
    let r = client(&gw).get("http://hc.test/page").await;
    assert_eq!(
        r.status,
        200,
        "the route's only upstream fails its health check and nothing was tried: {}",
        r.text()
    );
    assert_eq!(r.text(), "still here");
    assert_eq!(panic_count(&gw, "hc").await, 1);
}

// ---------------------------------------------------------------------------
// Request buffering
// ---------------------------------------------------------------------------

/// A backend that reports each whole request and answers with its body.
async fn body_echo_backend() -> (RawBackend, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel::<Seen>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            while let Some(req) = c.read_request().await {
                let answer = ok(&String::from_utf8_lossy(&req.body));
                let _ = tx.send(req);
                c.send(&answer).await;
            }
        }
    })
    .await;
    (be, rx)
}

#[tokio::test]
async fn a_slow_upload_reaches_the_backend_only_once_it_is_complete() {
    let (be, mut rx) = body_echo_backend().await;
    let gw = Gateway::start(&proxy_route("buf.test", &be.url(), "")).await;
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: buf.test\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    // Something the gateway would have done by now if it streamed: a
    // request on another connection goes through meanwhile.
    let r = client(&gw).get("http://buf.test/other").await;
    assert_eq!(r.status, 200);
    let first = next_seen(&mut rx).await;
    assert_eq!(
        first.target, "/other",
        "the unfinished upload reached the backend first"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        be.accepted(),
        1,
        "a backend connection was opened for an upload that is not complete"
    );
    s.write_all(b"56789").await.unwrap();
    let mut w = Wire::new(s);
    let r = within("the upload's answer", WAIT, read_raw_response(&mut w))
        .await
        .expect("an answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"0123456789");
    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.target, "/up");
    assert_eq!(seen.body, b"0123456789");
}

#[tokio::test]
async fn a_buffered_chunked_upload_reaches_the_backend_with_its_length() {
    let (be, mut rx) = body_echo_backend().await;
    let gw = Gateway::start(&proxy_route("buf.test", &be.url(), "")).await;
    let r = raw_exchange(
        gw.http_addr(),
        b"POST /c HTTP/1.1\r\nHost: buf.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.body, b"hello world");
    assert_eq!(seen.head.all("content-length"), ["11"]);
    assert!(seen.head.all("transfer-encoding").is_empty());
}

#[tokio::test]
async fn with_request_buffering_off_an_upload_is_streamed_as_it_comes() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            if let Some(req) = c.read_head().await {
                let _ = tx.send(req);
                if c.wire.exact(10).await.is_some() {
                    c.send(&ok("got it")).await;
                }
            }
        }
    })
    .await;
    let gw = Gateway::start(&proxy_route(
        "stream.test",
        &be.url(),
        "request_buffering = false",
    ))
    .await;
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: stream.test\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    // The head reaches the backend before the body is complete.
    let seen = next_seen(&mut rx).await;
    assert_eq!(seen.target, "/up");
    s.write_all(b"56789").await.unwrap();
    let mut w = Wire::new(s);
    let r = within("the upload's answer", WAIT, read_raw_response(&mut w))
        .await
        .expect("an answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"got it");
}

#[tokio::test]
async fn a_client_that_stalls_while_its_body_is_buffered_gets_408_without_reaching_the_backend() {
    let (be, _rx) = body_echo_backend().await;
    let toml =
        server_with("request_body_timeout = \"200ms\"") + &proxy_route("buf.test", &be.url(), "");
    let gw = Gateway::start(&toml).await;
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: buf.test\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    let mut w = Wire::new(s);
    let r = within(
        "the stalled upload's answer",
        WAIT,
        read_raw_response(&mut w),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 408);
    assert_eq!(
        be.accepted(),
        0,
        "the backend was contacted for a stalled upload"
    );
}

// ---------------------------------------------------------------------------
// Pooled connections with stray bytes
// ---------------------------------------------------------------------------

/// A backend that, after answering on its first connection, sends a whole
/// unasked-for response on it (`stray`) while it sits in the pool; every
/// later request on any connection gets `fresh conn N`.
async fn stray_bytes_backend(stray: &'static [u8]) -> (RawBackend, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let be = RawBackend::start(move |mut c| {
        let tx = tx.clone();
        async move {
            if c.index == 0 && c.read_request().await.is_some() {
                c.send(&ok("first")).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.send(stray).await;
                let _ = tx.send(());
            }
            while c.read_request().await.is_some() {
                c.send(&ok(&format!("fresh conn {}", c.index))).await;
            }
        }
    })
    .await;
    (be, rx)
}

#[tokio::test]
async fn a_pooled_connection_with_stray_bytes_is_discarded_not_reused() {
    for (what, stray) in [
        (
            "a whole response",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"[..],
        ),
        ("one byte", &b"X"[..]),
    ] {
        let (be, mut sent) = stray_bytes_backend(stray).await;
        let gw = Gateway::start(&proxy_route("stray.test", &be.url(), "")).await;
        let cl = client(&gw);
        let r = cl.get("http://stray.test/one").await;
        assert_eq!(r.text(), "first", "{what}");
        within("the stray bytes to be sent", WAIT, sent.recv())
            .await
            .expect("backend stopped");
        // Let them arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = cl.get("http://stray.test/two").await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(
            r.text(),
            "fresh conn 1",
            "{what}: a pooled connection with unread bytes was reused"
        );
        assert_eq!(be.accepted(), 2, "{what}");
    }
}
