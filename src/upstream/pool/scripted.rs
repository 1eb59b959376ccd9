//! The upstream client's exchange below the proxy, against scripted
//! backends: what `send` returns (the 502 the proxy answers with and the
//! cause it logs), what the response body reports, and whether the
//! connection goes back to the pool. The backend is a thread on a
//! loopback socket (the pool's reuse check asks the socket itself).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;

use bytes::Bytes;
use http_body_util::BodyExt as _;

use super::{send, take_idle};
use crate::config::{ServerConfig, UpstreamTarget};
use crate::http::body::Body;
use crate::upstream::conn::Outgoing;

fn server() -> ServerConfig {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[server]\nhttp = \"127.0.0.1:0\"\n[[route]]\nhost = \"a.test\"\nrespond = {}\n";
    crate::config::parse(&dir.path().join("p.toml"), toml)
        .unwrap()
        .server
}

fn target(l: &TcpListener) -> UpstreamTarget {
    crate::config::parse_upstream(&format!("http://{}", l.local_addr().unwrap())).unwrap()
}

/// Reads a request head (and nothing after it).
fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "the request head ended early");
        head.push(b[0]);
    }
    head
}

/// `METHOD / HTTP/1.1` to `a.test` with `headers` and `body`.
pub(super) fn request(method: http::Method, headers: http::HeaderMap, body: Body) -> Outgoing {
    Outgoing::new(&method, &["/"], b"a.test", headers, &[], body)
}

fn get() -> Outgoing {
    request(http::Method::GET, http::HeaderMap::new(), Body::Empty)
}

/// What the client side got: an error's status, kind and logged cause,
/// or the status and how the body ended.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Refused(u16, &'static str, String),
    Body(u16, Result<Bytes, String>),
}

async fn exchange(target: &UpstreamTarget, out: &mut Outgoing, server: &ServerConfig) -> Got {
    match send(target, out, server).await {
        Err(e) => Got::Refused(
            e.status().as_u16(),
            e.kind(),
            e.cause().map(|c| c.to_string()).unwrap_or_default(),
        ),
        Ok((resp, _)) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await;
            Got::Body(
                status,
                body.map(|b| b.to_bytes()).map_err(|e| e.to_string()),
            )
        }
    }
}

/// The backend sends every prefix of a response, then closes: before
/// the status line, in the head, in a body with a length, in a chunk,
/// after the last chunk in the trailers, after an interim `100`. Nothing
/// before the final head is a 502 (and the log says where the backend
/// stopped); a cut body is an error, so the client's response is cut off
/// too rather than ending as if whole; no connection is ever pooled.
#[tokio::test(flavor = "current_thread")]
async fn the_backend_closing_at_every_point() {
    let responses: [(&[u8], &[u8]); 3] = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            b"hello",
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"ok",
        ),
    ];
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (target, server) = (target(&l), server());
    let (closed_tx, closed) = mpsc::channel();
    let cases: Vec<(&[u8], usize)> = responses
        .iter()
        .flat_map(|(r, _)| (0..=r.len()).map(move |cut| (*r, cut)))
        .collect();
    let script = cases.clone();
    let backend = std::thread::spawn(move || {
        for (resp, cut) in script {
            let (mut s, _) = l.accept().unwrap();
            read_head(&mut s);
            s.write_all(&resp[..cut]).unwrap();
            drop(s);
            closed_tx.send(()).unwrap();
        }
    });
    let mut wrong = Vec::new();
    for (resp, cut) in cases {
        let payload = responses.iter().find(|(r, _)| *r == resp).unwrap().1;
        // The final head ends at the first blank line after the last
        // status line.
        let last = resp.windows(9).rposition(|w| w == b"HTTP/1.1 ").unwrap();
        let head_end = last
            + resp[last..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap()
            + 4;
        let want = if cut == 0 {
            Got::Refused(
                502,
                "upstream_broken",
                "the backend closed the connection without answering".into(),
            )
        } else if cut < head_end {
            Got::Refused(
                502,
                "upstream_broken",
                "closed in the middle of the response head".into(),
            )
        } else if cut < resp.len() {
            Got::Body(
                200,
                Err("the backend closed the connection in the middle of the body".into()),
            )
        } else {
            Got::Body(200, Ok(Bytes::from_static(payload)))
        };
        let got = exchange(&target, &mut get(), &server).await;
        closed.recv().unwrap();
        let pooled = take_idle(&target.pool_key, server.upstream_idle_timeout).is_some();
        if got != want || pooled {
            wrong.push(format!(
                "{:?} cut at {cut}: {got:?}, pooled {pooled}",
                String::from_utf8_lossy(&resp[..cut])
            ));
        }
    }
    backend.join().unwrap();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Interim answers before the final one: a `100 Continue` the backend
/// sends before reading the body, and a `100` and a `103` with headers in
/// one write. The client side gets the final answer alone, and the
/// connection is reused (the whole request went out).
#[tokio::test(flavor = "current_thread")]
async fn interim_answers_then_the_final_one() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (target, server) = (target(&l), server());
    let (done_tx, done) = mpsc::channel::<()>();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // A 100, then the body is read, then the answer.
        let head = read_head(&mut s);
        assert!(String::from_utf8_lossy(&head).contains("content-length: 4"));
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        let mut body = [0u8; 4];
        s.read_exact(&mut body).unwrap();
        assert_eq!(&body, b"data");
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        // The same connection, next request: 100 and 103 in one write.
        read_head(&mut s);
        s.read_exact(&mut body).unwrap();
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew").unwrap();
        done.recv().unwrap();
    });
    let post = || {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, "4".parse().unwrap());
        request(http::Method::POST, h, Body::full("data"))
    };
    let got = exchange(&target, &mut post(), &server).await;
    assert_eq!(got, Got::Body(200, Ok(Bytes::from_static(b"ok"))));
    assert!(super::has_idle(&target.pool_key), "not pooled after a 100");
    let got = exchange(&target, &mut post(), &server).await;
    assert_eq!(got, Got::Body(201, Ok(Bytes::from_static(b"new"))));
    assert!(take_idle(&target.pool_key, server.upstream_idle_timeout).is_some());
    done_tx.send(()).unwrap();
    backend.join().unwrap();
}

/// A backend that answers (a 413) without reading the request body and
/// keeps its connection open: the answer reaches the client side while
/// the body is still being sent (a body that never ends, and one larger
/// than the socket buffers), and the connection, whose request was not
/// sent whole, is not reused even though the backend allows it.
#[tokio::test(flavor = "current_thread")]
async fn a_backend_answering_before_reading_the_body() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (target, server) = (target(&l), server());
    let (done_tx, done) = mpsc::channel::<()>();
    let backend = std::thread::spawn(move || {
        let mut open = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = l.accept().unwrap();
            read_head(&mut s);
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
                .unwrap();
            open.push(s);
        }
        done.recv().unwrap();
    });
    // A client body that never ends (the client is still sending).
    let (fed, _feed) = crate::http::body::fed(None);
    let bodies = [Body::Client(fed), Body::full(vec![b'x'; 64 << 20])];
    for body in bodies {
        let mut out = request(http::Method::POST, http::HeaderMap::new(), body);
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            exchange(&target, &mut out, &server),
        )
        .await
        .expect("the early answer arrives");
        assert_eq!(got, Got::Body(413, Ok(Bytes::from_static(b"big"))));
        assert!(
            take_idle(&target.pool_key, server.upstream_idle_timeout).is_none(),
            "a connection with half a request on it was pooled"
        );
    }
    done_tx.send(()).unwrap();
    backend.join().unwrap();
}

/// A backend that writes its answers a byte at a time (each its own
/// segment): interim answer, head, chunk sizes, extensions and trailers
/// all arrive across many reads; the answers are read whole and the
/// connection is reused for each next request.
#[tokio::test(flavor = "current_thread")]
async fn answers_trickling_in_a_byte_at_a_time() {
    let answers: [(&[u8], &[u8]); 3] = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello", b"hello"),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n",
            b"abc0123456789abcdef",
        ),
        (b"HTTP/1.1 204 No Content\r\nX-B: 2\r\n\r\n", b""),
    ];
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (target, server) = (target(&l), server());
    let (done_tx, done) = mpsc::channel::<()>();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        for (answer, _) in answers {
            read_head(&mut s);
            for b in answer {
                s.write_all(&[*b]).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        done.recv().unwrap();
    });
    for (_, body) in answers {
        let got = exchange(&target, &mut get(), &server).await;
        let status = if body.is_empty() { 204 } else { 200 };
        assert_eq!(got, Got::Body(status, Ok(Bytes::from_static(body))));
        assert!(super::has_idle(&target.pool_key), "not pooled");
    }
    done_tx.send(()).unwrap();
    backend.join().unwrap();
}

/// Heads past the limits (bytes, then lines) are a 502 that says why;
/// the connection is dropped.
#[tokio::test(flavor = "current_thread")]
async fn oversized_answer_heads_are_refused() {
    use crate::upstream::conn::{MAX_HEAD, MAX_HEADERS};
    let long = format!(
        "HTTP/1.1 200 OK\r\nX-Long: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(MAX_HEAD)
    );
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 0\r\n\r\n");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (target, server) = (target(&l), server());
    let answers = [long, many];
    let script = answers.clone();
    let backend = std::thread::spawn(move || {
        for a in script {
            let (mut s, _) = l.accept().unwrap();
            read_head(&mut s);
            // The gateway may stop reading and close: a write error is fine.
            let _ = s.write_all(a.as_bytes());
        }
    });
    let mut causes = Vec::new();
    for _ in &answers {
        match exchange(&target, &mut get(), &server).await {
            Got::Refused(502, "upstream_broken", cause) => causes.push(cause),
            other => panic!("{other:?}"),
        }
        assert!(take_idle(&target.pool_key, server.upstream_idle_timeout).is_none());
    }
    backend.join().unwrap();
    assert_eq!(causes[0], "response head too large");
    assert_eq!(causes[1], "too many header lines");
}

/// A `101` comes back with its connection, and bytes the backend sent
/// right behind the head (the upgraded protocol's first message) stay
/// with it for the tunnel, not lost and not read as HTTP.
#[tokio::test(flavor = "current_thread")]
async fn a_101_keeps_the_bytes_behind_it() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (target, server) = (target(&l), server());
    let backend = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        read_head(&mut s);
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nfirst frame").unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"reply");
    });
    let mut h = http::HeaderMap::new();
    h.insert(http::header::UPGRADE, "echo".parse().unwrap());
    let mut out = request(http::Method::GET, h, Body::Empty);
    let (resp, conn) = send(&target, &mut out, &server).await.unwrap();
    assert_eq!(resp.status(), 101);
    let (mut io, early) = conn.expect("the connection, for the tunnel").into_parts();
    assert_eq!(&early[..], b"first frame");
    tokio::io::AsyncWriteExt::write_all(&mut io, b"reply")
        .await
        .unwrap();
    backend.join().unwrap();
    assert!(!super::has_idle(&target.pool_key));
}

/// A backend that goes quiet mid-body: after `upstream_read_timeout`
/// without a byte the body fails (the client's response is cut off, the
/// log says why) and the connection is not pooled.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_backend_going_quiet_mid_body() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (target, server) = (target(&l), server());
    let (done_tx, done) = mpsc::channel::<()>();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        read_head(&mut s);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
            .unwrap();
        done.recv().unwrap();
    });
    let started = tokio::time::Instant::now();
    let got = exchange(&target, &mut get(), &server).await;
    assert_eq!(
        got,
        Got::Body(
            200,
            Err("the backend went quiet in the middle of the body (upstream_read_timeout)".into())
        )
    );
    let waited = started.elapsed();
    assert!(
        waited >= server.upstream_read_timeout && waited < server.upstream_read_timeout * 2,
        "failed after {waited:?}"
    );
    assert!(take_idle(&target.pool_key, server.upstream_idle_timeout).is_none());
    done_tx.send(()).unwrap();
    backend.join().unwrap();
}

/// A pooled connection the backend closes as the next request arrives
/// (it had timed it out just then): a GET, which nothing could have
/// acted on, is sent once more on a fresh connection; a POST is not
/// (the backend may have acted on it) and is a 502 that says so; a close
/// after the first byte of an answer is never retried.
#[tokio::test(flavor = "current_thread")]
async fn a_pooled_connection_closed_as_the_request_arrives() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (target, server) = (target(&l), server());
    let (done_tx, done) = mpsc::channel::<()>();
    let backend = std::thread::spawn(move || {
        // What the second request on each kept connection gets, and
        // whether a retry is due. (A wrong retry would be taken by the
        // next round's accept, answered "first", and seen.)
        for (second, retry) in [(&b""[..], true), (b"", false), (b"HTTP/1.1 200", false)] {
            let (mut s, _) = l.accept().unwrap();
            read_head(&mut s);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                .unwrap();
            read_head(&mut s);
            s.write_all(second).unwrap();
            drop(s);
            if retry {
                let (mut s, _) = l.accept().unwrap();
                read_head(&mut s);
                s.write_all(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nretry",
                )
                .unwrap();
            }
        }
        done.recv().unwrap();
    });
    let post = || request(http::Method::POST, http::HeaderMap::new(), Body::Empty);
    let first = Got::Body(200, Ok(Bytes::from_static(b"first")));
    let broken = |why: &str| Got::Refused(502, "upstream_broken", why.into());
    let mut got = Vec::new();
    for second in [get(), post(), get()] {
        assert_eq!(exchange(&target, &mut get(), &server).await, first);
        assert!(super::has_idle(&target.pool_key));
        let mut second = second;
        got.push(exchange(&target, &mut second, &server).await);
    }
    assert_eq!(
        got,
        [
            Got::Body(200, Ok(Bytes::from_static(b"retry"))),
            broken("the backend closed the connection without answering"),
            broken("closed in the middle of the response head"),
        ]
    );
    done_tx.send(()).unwrap();
    backend.join().unwrap();
}
