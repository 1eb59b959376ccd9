//! The server connection's state machine below the socket: a scripted
//! client on one end of an in-memory pipe, `serve` on the other, with
//! paused time (timeouts cost nothing, a hang shows up as one). Cases
//! that share a shape are rows of one table.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::{Handler, Handling, Settings, serve};
use crate::http::Scheme;
use crate::http::body::Body;
use crate::http::conn::ConnInfo;

/// What a test handler does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    /// Reads the whole body, answers 200 with `<target> <body length>`
    /// (or `<target> error` if the body failed).
    ReadBody,
    /// Answers 200 at once, body unread.
    Ignore,
    /// Reads the first body piece, then answers (the rest unread).
    ReadOne,
    /// Answers 101 and echoes the upgraded stream.
    Upgrade,
    /// Answers 200 with a 1 MiB body.
    Big,
    /// Targets starting `/drop` get no answer (the connection closes,
    /// `default_route = "drop"`); others are answered like `Ignore`.
    Drop,
    /// Waits up to a second for the first body piece, then answers (as
    /// a handler with a body timeout does).
    Impatient,
    /// Answers 200 with a body of unknown length that sends one piece,
    /// then fails (a backend that broke mid-body).
    Breaks,
    /// Answers 200 with a body of unknown length: one piece, then the end.
    Streams,
    /// Waits ten seconds (a slow backend), then reads the whole body.
    Slow,
}

/// A response body of unknown length that yields `first`, then an error
/// (or the end, if `ends`).
#[derive(Debug)]
struct Breaking(Option<Bytes>, bool);

impl crate::http::body::Stream for Breaking {
    fn poll(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, crate::http::body::BoxError>>> {
        std::task::Poll::Ready(Some(match self.0.take() {
            Some(b) => Ok(http_body::Frame::data(b)),
            None if self.1 => return std::task::Poll::Ready(None),
            None => Err("the backend went away".into()),
        }))
    }
    fn is_end_stream(&self) -> bool {
        false
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::default()
    }
}

/// What the handler saw: target, and how its body ended (`None`: the
/// request was cancelled before it finished).
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct Test {
    act: Act,
    log: Log,
}

impl Handler for Test {
    fn handle<'a>(&'a self, _: &'a Arc<ConnInfo>, req: http::Request<Body>) -> Handling<'a> {
        Box::pin(async move {
            let target = req.uri().to_string();
            let at = {
                let mut log = self.log.lock().unwrap();
                log.push((target.clone(), None));
                log.len() - 1
            };
            let done = |s: String| self.log.lock().unwrap()[at].1 = Some(s);
            let resp = match self.act {
                Act::ReadBody => {
                    let got = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes().len().to_string(),
                        Err(_) => "error".to_string(),
                    };
                    done(got.clone());
                    Response::new(Body::full(format!("{target} {got}")))
                }
                Act::Ignore => {
                    done("ignored".into());
                    Response::new(Body::full(target))
                }
                Act::ReadOne => {
                    let mut body = req.into_body();
                    let first = body.frame().await;
                    done(format!("{}", first.is_some()));
                    Response::new(Body::full(target))
                }
                Act::Upgrade => {
                    let on = req.extensions().get::<super::upgrade::OnUpgrade>().cloned();
                    done("upgrade".into());
                    if let Some(on) = on {
                        tokio::spawn(async move {
                            if let Ok(mut io) = on.wait().await {
                                let mut buf = [0u8; 64];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                    }
                    let mut r = Response::new(Body::Empty);
                    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    r.headers_mut()
                        .insert(http::header::UPGRADE, "echo".parse().unwrap());
                    r.headers_mut()
                        .insert(http::header::CONNECTION, "upgrade".parse().unwrap());
                    r
                }
                Act::Drop if target.starts_with("/drop") => {
                    done("dropped".into());
                    crate::http::CloseWithoutAnswer::response()
                }
                Act::Drop => {
                    done("ignored".into());
                    Response::new(Body::full(target))
                }
                Act::Impatient => {
                    let mut body = req.into_body();
                    let first = tokio::time::timeout(Duration::from_secs(1), body.frame()).await;
                    done(if first.is_ok() { "read" } else { "timed out" }.into());
                    Response::new(Body::full(target))
                }
                Act::Breaks => {
                    done("breaks".into());
                    Response::new(Body::Streamed(Box::new(Breaking(
                        Some(Bytes::from_static(b"partial")),
                        false,
                    ))))
                }
                Act::Streams => {
                    done("streams".into());
                    Response::new(Body::Streamed(Box::new(Breaking(
                        Some(Bytes::from(format!("streamed {target}"))),
                        true,
                    ))))
                }
                Act::Slow => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let got = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes().len().to_string(),
                        Err(_) => "error".to_string(),
                    };
                    done(got.clone());
                    Response::new(Body::full(format!("{target} {got}")))
                }
                Act::Big => {
                    done("big".into());
                    Response::new(Body::full(Bytes::from(vec![b'x'; 1 << 20])))
                }
            };
            Ok(resp)
        })
    }
}

const SETTINGS: Settings = Settings {
    header_read_timeout: Duration::from_secs(10),
    max_head: 256,
    send_timeout: Duration::from_secs(30),
};

/// A running connection: the client's end, the handler's log, the task.
struct Running {
    client: DuplexStream,
    log: Log,
    task: tokio::task::JoinHandle<()>,
}

fn start(act: Act, pipe: usize) -> Running {
    let (client, server) = tokio::io::duplex(pipe);
    let log: Log = Arc::default();
    let addr = "127.0.0.1:1".parse().unwrap();
    let info = Arc::new(ConnInfo::new(addr, addr, Scheme::Http, None));
    let handler = Arc::new(Test {
        act,
        log: log.clone(),
    });
    let task = tokio::spawn(serve(server, info, handler, SETTINGS, Arc::default()));
    Running { client, log, task }
}

/// Everything the server sends within `wait`, and whether it closed.
async fn read_for(client: &mut DuplexStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Writes `pieces` one write each, letting the server run in between;
/// stops when the server has closed the connection.
async fn send(client: &mut DuplexStream, pieces: &[&[u8]]) {
    for p in pieces {
        if client.write_all(p).await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Status codes of the responses in `out`, in order.
fn statuses(out: &str) -> Vec<u16> {
    out.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| out[i + 9..i + 12].parse().ok())
        .collect()
}

struct Row {
    what: &'static str,
    act: Act,
    pieces: &'static [&'static [u8]],
    /// Status codes of the answers, in order.
    statuses: &'static [u16],
    /// The server closes the connection by itself (within a second).
    closes: bool,
    /// Must appear in the output.
    shows: &'static [&'static str],
    /// What the handler saw: target and body outcome.
    seen: &'static [(&'static str, Option<&'static str>)],
}

const ROWS: &[Row] = &[
    Row {
        what: "a request answered by closing gets not one byte",
        act: Act::Drop,
        pieces: &[b"GET /drop HTTP/1.1\r\nHost: a\r\n\r\n"],
        statuses: &[],
        closes: true,
        shows: &[],
        seen: &[("/drop", Some("dropped"))],
    },
    Row {
        what: "pipelined: answered, then closed at the dropped one, the rest unread",
        act: Act::Drop,
        pieces: &[b"GET /a HTTP/1.1\r\n\r\nGET /drop HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"],
        statuses: &[200],
        closes: true,
        shows: &["/a"],
        seen: &[("/a", Some("ignored")), ("/drop", Some("dropped"))],
    },
    Row {
        what: "a head one byte at a time",
        act: Act::ReadBody,
        pieces: &[
            b"G", b"E", b"T", b" ", b"/", b"a", b" ", b"HTTP/1.1", b"\r", b"\n", b"Host: a", b"\r\n",
            b"\r", b"\n",
        ],
        statuses: &[200],
        closes: false,
        shows: &["/a 0"],
        seen: &[("/a", Some("0"))],
    },
    Row {
        what: "three pipelined requests in one write, answered in order",
        act: Act::ReadBody,
        pieces: &[
            b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\n\r\n",
        ],
        statuses: &[200, 200, 200],
        closes: false,
        shows: &["/1 0", "/2 3", "/3 0"],
        seen: &[("/1", Some("0")), ("/2", Some("3")), ("/3", Some("0"))],
    },
    Row {
        what: "a pipelined request split across the previous body",
        act: Act::ReadBody,
        pieces: &[
            b"POST /1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
            b"c\r\n0\r\n\r\nGET /",
            b"2 HTTP/1.1\r\n\r\n",
        ],
        statuses: &[200, 200],
        closes: false,
        shows: &["/1 3", "/2 0"],
        seen: &[("/1", Some("3")), ("/2", Some("0"))],
    },
    Row {
        what: "HTTP/1.0 closes after its answer",
        act: Act::ReadBody,
        pieces: &[b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n"],
        statuses: &[200],
        closes: true,
        shows: &["connection: close"],
        seen: &[("/a", Some("0"))],
    },
    Row {
        what: "HTTP/1.0 with keep-alive stays open and says so",
        act: Act::ReadBody,
        pieces: &[b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"],
        statuses: &[200],
        closes: false,
        shows: &["connection: keep-alive"],
        seen: &[("/a", Some("0"))],
    },
    Row {
        what: "Connection: close ends the connection, pipelined requests unread",
        act: Act::ReadBody,
        pieces: &[b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n"],
        statuses: &[200],
        closes: true,
        shows: &["connection: close"],
        seen: &[("/a", Some("0"))],
    },
    Row {
        what: "a malformed head is a 400, and the end",
        act: Act::ReadBody,
        pieces: &[b"GET /a HTTP/1.1\r\n\r\nGET /b c HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"],
        statuses: &[200, 400],
        closes: true,
        shows: &[],
        seen: &[("/a", Some("0"))],
    },
    Row {
        what: "a head over max_head is a 431",
        act: Act::ReadBody,
        pieces: &[b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        statuses: &[431],
        closes: true,
        shows: &[],
        seen: &[],
    },
    Row {
        what: "Transfer-Encoding with Content-Length: read as chunked, then closed",
        act: Act::ReadBody,
        pieces: &[
            b"POST /a HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        ],
        statuses: &[200],
        closes: true,
        shows: &["/a 2", "connection: close"],
        seen: &[("/a", Some("2"))],
    },
    Row {
        what: "a transfer coding other than chunked is a 501",
        act: Act::ReadBody,
        pieces: &[b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"],
        statuses: &[501],
        closes: true,
        shows: &[],
        seen: &[],
    },
    Row {
        what: "Expect: 100-continue is answered when the body is read",
        act: Act::ReadBody,
        pieces: &[b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", b"ok"],
        statuses: &[100, 200],
        closes: false,
        shows: &["/a 2"],
        seen: &[("/a", Some("2"))],
    },
    Row {
        what: "Expect: 100-continue and a body never read: no 100, and the connection closes",
        act: Act::Ignore,
        pieces: &[b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"],
        statuses: &[200],
        closes: true,
        shows: &["connection: close"],
        seen: &[("/a", Some("ignored"))],
    },
    Row {
        what: "a small unread body is drained and the next request served",
        act: Act::Ignore,
        pieces: &[b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel", b"loGET /b HTTP/1.1\r\n\r\n"],
        statuses: &[200, 200],
        closes: false,
        shows: &["/a", "/b"],
        seen: &[("/a", Some("ignored")), ("/b", Some("ignored"))],
    },
    Row {
        what: "a large unread body closes the connection",
        act: Act::Ignore,
        pieces: &[b"POST /a HTTP/1.1\r\nContent-Length: 1000000\r\n\r\nxx"],
        statuses: &[200],
        closes: true,
        shows: &["connection: close"],
        seen: &[("/a", Some("ignored"))],
    },
    Row {
        what: "a chunked body abandoned after one piece closes the connection",
        act: Act::ReadOne,
        pieces: &[b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"],
        statuses: &[200],
        closes: true,
        shows: &["connection: close"],
        seen: &[("/a", Some("true"))],
    },
    Row {
        what: "bad chunked framing fails the body and closes after the answer",
        act: Act::ReadBody,
        pieces: &[b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\nGET /b HTTP/1.1\r\n\r\n"],
        statuses: &[200],
        closes: true,
        shows: &["/a error", "connection: close"],
        seen: &[("/a", Some("error"))],
    },
    Row {
        what: "a 101 hands the connection, early bytes included, to the upgrade",
        act: Act::Upgrade,
        pieces: &[b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly", b"-later"],
        statuses: &[101],
        closes: false,
        shows: &["\r\n\r\nearly-later"],
        seen: &[("/ws", Some("upgrade"))],
    },
    Row {
        what: "an upgrade expecting 100-continue gets its 100 before the 101 (RFC 9110 7.8)",
        act: Act::Upgrade,
        pieces: &[b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\nExpect: 100-continue\r\n\r\nearly"],
        statuses: &[100, 101],
        closes: false,
        shows: &["\r\n\r\nearly"],
        seen: &[("/ws", Some("upgrade"))],
    },
    Row {
        what: "an upgrade with a body expecting 100-continue gets its 100 before the 101",
        act: Act::Upgrade,
        pieces: &[b"POST /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"],
        statuses: &[100, 101],
        closes: false,
        shows: &["HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101"],
        seen: &[("/ws", Some("upgrade"))],
    },
    Row {
        what: "an upgrade request answered without a 101 stays HTTP",
        act: Act::Ignore,
        pieces: &[b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nGET /b HTTP/1.1\r\n\r\n"],
        statuses: &[200, 200],
        closes: false,
        shows: &["/ws", "/b"],
        seen: &[("/ws", Some("ignored")), ("/b", Some("ignored"))],
    },
    Row {
        what: "Connection: keep-alive, close is a close",
        act: Act::ReadBody,
        pieces: &[b"GET /a HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\nGET /b HTTP/1.1\r\n\r\n"],
        statuses: &[200],
        closes: true,
        shows: &["connection: close"],
        seen: &[("/a", Some("0"))],
    },
    Row {
        what: "Connection: close on a request with a body: the body is read, then the end",
        act: Act::ReadBody,
        pieces: &[b"POST /a HTTP/1.1\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"],
        statuses: &[200],
        closes: true,
        shows: &["/a 3", "connection: close"],
        seen: &[("/a", Some("3"))],
    },
    Row {
        what: "HTTP/1.0 with Expect: the expectation is ignored (RFC 9110 10.1.1), no 100",
        act: Act::ReadBody,
        pieces: &[
            b"PUT /a HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            b"ok",
        ],
        statuses: &[200],
        closes: true,
        shows: &["/a 2"],
        seen: &[("/a", Some("2"))],
    },
    Row {
        what: "Expect: 100-continue with a chunked body: 100 once the body is read",
        act: Act::ReadBody,
        pieces: &[
            b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"2\r\nok\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        ],
        statuses: &[100, 200, 200],
        closes: false,
        shows: &["/a 2", "/b 0"],
        seen: &[("/a", Some("2")), ("/b", Some("0"))],
    },
    Row {
        what: "Expect: 100-continue answered first, the body sent anyway: closed, the body never read as a request",
        act: Act::Ignore,
        pieces: &[
            b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 20\r\n\r\n",
            b"GET /x HTTP/1.1\r\n\r\n",
        ],
        statuses: &[200],
        closes: true,
        shows: &["connection: close"],
        seen: &[("/a", Some("ignored"))],
    },
    Row {
        what: "a small body read in part is drained after the answer and the next request served",
        act: Act::ReadOne,
        pieces: &[
            b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello",
            b"world",
            b"GET /b HTTP/1.1\r\n\r\n",
        ],
        statuses: &[200, 200],
        closes: false,
        shows: &["/a", "/b"],
        seen: &[("/a", Some("true")), ("/b", Some("false"))],
    },
    Row {
        what: "a body that looks like a request is drained, never dispatched",
        act: Act::Ignore,
        pieces: &[
            b"POST /a HTTP/1.1\r\nContent-Length: 20\r\n\r\nGET /x HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        ],
        statuses: &[200, 200],
        closes: false,
        shows: &["/a", "/b"],
        seen: &[("/a", Some("ignored")), ("/b", Some("ignored"))],
    },
    Row {
        what: "a response body that breaks closes the connection; the pipelined request is not served",
        act: Act::Breaks,
        pieces: &[b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"],
        statuses: &[200],
        closes: true,
        shows: &["transfer-encoding: chunked", "partial"],
        seen: &[("/a", Some("breaks"))],
    },
    Row {
        what: "a body of unknown length to HTTP/1.1 is chunked, and the connection kept",
        act: Act::Streams,
        pieces: &[b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"],
        statuses: &[200, 200],
        closes: false,
        shows: &["transfer-encoding: chunked", "streamed /a\r\n0\r\n\r\n", "streamed /b"],
        seen: &[("/a", Some("streams")), ("/b", Some("streams"))],
    },
    Row {
        what: "a body of unknown length to HTTP/1.0 runs until the close, keep-alive or not",
        act: Act::Streams,
        pieces: &[b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n"],
        statuses: &[200],
        closes: true,
        shows: &["connection: close", "\r\n\r\nstreamed /a"],
        seen: &[("/a", Some("streams"))],
    },
    Row {
        what: "Expect: 100-continue with Content-Length: 0: no 100, nothing to wait for",
        act: Act::ReadBody,
        pieces: &[b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\nGET /b HTTP/1.1\r\n\r\n"],
        statuses: &[200, 200],
        closes: false,
        shows: &["/a 0", "/b 0"],
        seen: &[("/a", Some("0")), ("/b", Some("0"))],
    },
];

#[tokio::test(start_paused = true)]
async fn connection_rows() {
    let mut failures = Vec::new();
    for row in ROWS {
        let mut c = start(row.act, 64 * 1024);
        send(&mut c.client, row.pieces).await;
        let (out, closed) = read_for(&mut c.client, Duration::from_secs(1)).await;
        let seen: Vec<(String, Option<String>)> = c.log.lock().unwrap().clone();
        let want_seen: Vec<(String, Option<String>)> = row
            .seen
            .iter()
            .map(|(t, b)| (t.to_string(), b.map(str::to_string)))
            .collect();
        let mut bad = Vec::new();
        if statuses(&out) != row.statuses {
            bad.push(format!("statuses {:?}", statuses(&out)));
        }
        if row.statuses.is_empty() && !out.is_empty() {
            bad.push("bytes sent where no answer was due".to_string());
        }
        if closed != row.closes {
            bad.push(format!("closed: {closed}"));
        }
        for s in row.shows {
            if !out.contains(s) {
                bad.push(format!("no {s:?}"));
            }
        }
        if seen != want_seen {
            bad.push(format!("handler saw {seen:?}"));
        }
        if !bad.is_empty() {
            failures.push(format!("{}: {} in {out:?}", row.what, bad.join(", ")));
        }
        drop(c.client);
        // Whatever state it was in, the connection ends once the client is gone.
        tokio::time::timeout(Duration::from_secs(60), c.task)
            .await
            .unwrap_or_else(|_| panic!("{}: the connection did not end", row.what))
            .unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The client hangs up after every prefix of a stream (a request with a
/// chunked body, an upload with a length, a plain one): the connection
/// always ends, answers only requests that arrived whole, and a request
/// whose body was cut off never completes.
#[tokio::test(start_paused = true)]
async fn the_client_closing_at_every_point() {
    let stream: &[u8] = b"POST /1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPUT /2 HTTP/1.1\r\nContent-Length: 4\r\n\r\nwxyzGET /3 HTTP/1.1\r\n\r\n";
    let ends = [
        stream.windows(5).position(|w| w == b"PUT /").unwrap(),
        stream.windows(5).position(|w| w == b"GET /").unwrap(),
        stream.len(),
    ];
    for cut in 0..=stream.len() {
        let mut c = start(Act::ReadBody, 64 * 1024);
        send(&mut c.client, &[&stream[..cut]]).await;
        c.client.shutdown().await.unwrap();
        let (out, closed) = read_for(&mut c.client, Duration::from_secs(60)).await;
        assert!(closed, "cut at {cut}: the connection did not end");
        c.task.await.unwrap();
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let answered = statuses(&out);
        assert!(
            answered.iter().all(|&s| s == 200) && answered.len() <= whole,
            "cut at {cut}: answers {answered:?} with {whole} whole requests"
        );
        for (target, body) in c.log.lock().unwrap().iter() {
            let i: usize = target[1..].parse().unwrap();
            if ends[i - 1] > cut {
                assert!(
                    body.as_deref().is_none_or(|b| b == "error"),
                    "cut at {cut}: {target} completed with {body:?}"
                );
            }
        }
    }
}

/// A client that stops reading a large answer: the server writes only
/// what the pipe takes, and gives up after `send_timeout`; one that reads
/// slowly gets every byte.
#[tokio::test(start_paused = true)]
async fn write_back_pressure() {
    let mut c = start(Act::Big, 256);
    send(&mut c.client, &[b"GET /big HTTP/1.1\r\n\r\n"]).await;
    let mut head = [0u8; 128];
    let n = c.client.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // Not reading: the connection is dropped after send_timeout.
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(120), c.task)
        .await
        .expect("the stalled connection is closed")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= SETTINGS.send_timeout && waited < SETTINGS.send_timeout * 2,
        "closed after {waited:?}"
    );

    // Reading in small bites: the whole body arrives.
    let mut c = start(Act::Big, 256);
    send(
        &mut c.client,
        &[b"GET /big HTTP/1.1\r\nConnection: close\r\n\r\n"],
    )
    .await;
    let mut got = Vec::new();
    let mut buf = [0u8; 100];
    loop {
        let n = c.client.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(got.len() - body_at, 1 << 20);
    assert!(got[body_at..].iter().all(|&b| b == b'x'));
}

/// A connection that never sends a head, or stops halfway through one,
/// is closed after the header read timeout (408 only for the latter).
#[tokio::test(start_paused = true)]
async fn idle_and_slow_heads_time_out() {
    for (pieces, want) in [
        (&[][..], &[][..]),
        (&[&b"GET / HT"[..]][..], &[408u16][..]),
        (&[&b"GET / HTTP/1.1\r\n\r\n"[..]][..], &[200u16][..]),
    ] {
        let mut c = start(Act::ReadBody, 4096);
        send(&mut c.client, pieces).await;
        let (out, closed) = read_for(&mut c.client, SETTINGS.header_read_timeout * 3).await;
        assert!(closed, "{pieces:?}: not closed");
        assert_eq!(statuses(&out), want, "{pieces:?}");
    }
}

/// A pipelined stream (a plain request, a body with a length, a chunked
/// body with an extension and a trailer, a request with bare LF line
/// ends) split into two reads at every byte, and fed one byte per read:
/// always the same requests, bodies and answers as in one read.
#[tokio::test(start_paused = true)]
async fn a_stream_split_anywhere_gives_the_same_requests() {
    let stream: &[u8] = b"GET /1 HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\nGET /4 HTTP/1.1\nHost: a\n\n";
    let want_seen = [("/1", "0"), ("/2", "5"), ("/3", "19"), ("/4", "0")];
    let check = |what: String, out: &str, seen: Vec<(String, Option<String>)>| {
        assert_eq!(statuses(out), [200; 4], "{what}: {out:?}");
        for (target, len) in want_seen {
            assert!(out.contains(&format!("{target} {len}")), "{what}: {out:?}");
        }
        let want: Vec<_> = want_seen
            .iter()
            .map(|(t, l)| (t.to_string(), Some(l.to_string())))
            .collect();
        assert_eq!(seen, want, "{what}");
    };
    let mut splits: Vec<Vec<&[u8]>> = (0..=stream.len())
        .map(|i| vec![&stream[..i], &stream[i..]])
        .collect();
    splits.push(stream.chunks(1).collect());
    for pieces in splits {
        let what = format!(
            "split {:?}",
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
        );
        let mut c = start(Act::ReadBody, 64 * 1024);
        send(&mut c.client, &pieces).await;
        let (out, closed) = read_for(&mut c.client, Duration::from_secs(1)).await;
        assert!(!closed, "{what}: closed");
        check(what, &out, c.log.lock().unwrap().clone());
        drop(c.client);
        c.task.await.unwrap();
    }
}

/// A client that pipelines requests without reading the answers: once
/// the answers fill the pipe, the server stops reading requests (what it
/// accepted stays within a few buffers, not the client's whole stream);
/// once the client reads, every request is answered, in order.
#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_is_not_read_from() {
    const N: usize = 5_000;
    let stream: Vec<u8> = (0..N)
        .flat_map(|i| format!("GET /{i} HTTP/1.1\r\n\r\n").into_bytes())
        .collect();
    let c = start(Act::Ignore, 4096);
    let (mut rd, mut wr) = tokio::io::split(c.client);
    let mut accepted = 0;
    // One write at a time, so a write that waits has written nothing.
    while accepted < stream.len() {
        let end = stream.len().min(accepted + 1024);
        match tokio::time::timeout(Duration::from_secs(5), wr.write(&stream[accepted..end])).await {
            Ok(r) => accepted += r.unwrap(),
            Err(_) => break,
        }
    }
    // At most: the pipe's 4 KiB, one read into the per-thread buffer, the
    // pending requests that read left (8 KiB is what it takes today).
    assert!(
        accepted <= 4096 + super::SCRATCH,
        "the server took {accepted} of {} bytes from a client that reads nothing",
        stream.len()
    );
    // Now the client reads; the rest of its stream goes in meanwhile.
    let rest = stream[accepted..].to_vec();
    let writer = tokio::spawn(async move {
        wr.write_all(&rest).await.unwrap();
        wr
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let mut answered = 0;
    while answered < N {
        let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf))
            .await
            .expect("answers keep coming")
            .unwrap();
        assert!(n > 0, "closed after {answered} answers");
        out.extend_from_slice(&buf[..n]);
        answered = out.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    }
    let text = String::from_utf8(out).unwrap();
    let targets: Vec<usize> = text
        .split("HTTP/1.1 200 OK")
        .skip(1)
        .map(|r| r.rsplit("\r\n\r\n/").next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(targets, (0..N).collect::<Vec<_>>(), "answers out of order");
    drop(writer.await.unwrap());
    drop(rd);
    c.task.await.unwrap();
}

/// A small body the handler left unread that never arrives: the answer
/// goes out, then the connection waits for the rest no longer than the
/// header read timeout, and closes.
#[tokio::test(start_paused = true)]
async fn an_unread_body_that_never_arrives_closes_the_connection() {
    let mut c = start(Act::Ignore, 4096);
    send(
        &mut c.client,
        &[b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe"],
    )
    .await;
    let (out, closed) = read_for(&mut c.client, Duration::from_secs(1)).await;
    assert_eq!(statuses(&out), [200]);
    assert!(!closed, "closed before the rest of the body had a chance");
    let started = tokio::time::Instant::now();
    let (out, closed) = read_for(&mut c.client, SETTINGS.header_read_timeout * 3).await;
    assert!(closed && out.is_empty(), "{closed} {out:?}");
    let waited = started.elapsed();
    assert!(
        waited <= SETTINGS.header_read_timeout,
        "closed after {waited:?}"
    );
    c.task.await.unwrap();
}

/// The `100 Continue` is owed while the client's side of the pipe is
/// full (it has not read the previous answer), and the handler answers
/// before the body comes: the interim answer is finished before the
/// final one, so the client never sees half a status line.
#[tokio::test(start_paused = true)]
async fn a_final_answer_never_follows_half_an_interim_one() {
    let first = b"GET /fill HTTP/1.1\r\n\r\n";
    let second = b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    // How long the first answer is (the date has a fixed width).
    let mut c = start(Act::Impatient, 64 * 1024);
    send(&mut c.client, &[first]).await;
    let (out, _) = read_for(&mut c.client, Duration::from_millis(10)).await;
    let first_len = out.len();
    assert!(out.ends_with("/fill"), "{out:?}");
    drop(c);

    // Room for the first answer and 10 bytes of `HTTP/1.1 100 Continue`.
    let mut c = start(Act::Impatient, first_len + 10);
    let both = [&first[..], &second[..]].concat();
    send(&mut c.client, &[&both]).await;
    // The handler waits a second for the body, then answers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (out, _) = read_for(&mut c.client, Duration::from_secs(1)).await;
    let rest = &out[first_len..];
    assert!(
        rest.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
            || rest.starts_with("HTTP/1.1 200 OK\r\n"),
        "{rest:?}"
    );
    // Told to go on, the client sends its body: it is drained, and the
    // connection carries the next request.
    send(&mut c.client, &[b"okGET /b HTTP/1.1\r\n\r\n"]).await;
    let (out, closed) = read_for(&mut c.client, Duration::from_secs(2)).await;
    assert!(
        !closed && statuses(&out) == [200] && out.ends_with("/b"),
        "{out:?}"
    );
    assert_eq!(
        *c.log.lock().unwrap(),
        [
            ("/fill".to_string(), Some("read".to_string())),
            ("/a".to_string(), Some("timed out".to_string())),
            ("/b".to_string(), Some("read".to_string()))
        ]
    );
}

/// Upgrade hand-off with a stream already flowing: the client sends
/// 100 KiB right behind the head, without waiting for the `101`. Some of
/// it is read with the head, some while the handler runs, the rest is
/// still in the pipe; the upgraded stream gets every byte, once, in order.
#[tokio::test(start_paused = true)]
async fn no_byte_is_lost_across_the_upgrade() {
    let c = start(Act::Upgrade, 8 * 1024);
    let data: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = tokio::io::split(c.client);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        wr.write_all(&sent).await.unwrap();
        wr
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() - (i + 4) >= data.len()
        {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf))
            .await
            .expect("the echo keeps coming")
            .unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    };
    assert!(got.starts_with(b"HTTP/1.1 101 "));
    assert!(got[head_end..] == data[..], "the upgraded stream differs");
    drop(writer.await.unwrap());
}

/// A large upload the handler does not ask for yet (it waits for a slow
/// backend): the server reads none of it, so the client's writes stop
/// once the pipe is full; when the handler reads, all of it arrives.
#[tokio::test(start_paused = true)]
async fn a_body_nobody_asks_for_stays_with_the_client() {
    const LEN: usize = 4 << 20;
    let c = start(Act::Slow, 4096);
    let (mut rd, mut wr) = tokio::io::split(c.client);
    let head = format!("PUT /up HTTP/1.1\r\nContent-Length: {LEN}\r\n\r\n");
    wr.write_all(head.as_bytes()).await.unwrap();
    let body = vec![b'u'; LEN];
    let mut accepted = 0;
    while accepted < LEN {
        let end = LEN.min(accepted + 1024);
        // Less than the handler's wait: the server has not asked yet.
        match tokio::time::timeout(Duration::from_secs(1), wr.write(&body[accepted..end])).await {
            Ok(r) => accepted += r.unwrap(),
            Err(_) => break,
        }
    }
    // The pipe, and what the head's read brought along.
    assert!(
        accepted <= 4096 + super::SCRATCH,
        "the server took {accepted} bytes of a body nobody asked for"
    );
    let rest = body[accepted..].to_vec();
    let writer = tokio::spawn(async move {
        wr.write_all(&rest).await.unwrap();
        wr
    });
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 1024];
        while !out.ends_with(format!("/up {LEN}").as_bytes()) {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the upload is answered");
    assert!(out.starts_with(b"HTTP/1.1 200 "));
    drop(writer.await.unwrap());
}

/// Draining (shutdown or reload), as `proxy::server` does it: the flag
/// is set, then the connection polled again. A request in flight is
/// answered with `connection: close` and the pipelined one behind it is
/// left unread; an idle keep-alive connection closes at once, not after
/// the header read timeout.
#[tokio::test(start_paused = true)]
async fn draining_finishes_the_request_in_flight_and_closes_idle_connections() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    for in_flight in [true, false] {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let log: Log = Arc::default();
        let addr = "127.0.0.1:1".parse().unwrap();
        let info = Arc::new(ConnInfo::new(addr, addr, Scheme::Http, None));
        let act = if in_flight { Act::Slow } else { Act::ReadBody };
        let handler = Arc::new(Test {
            act,
            log: log.clone(),
        });
        let draining = Arc::new(AtomicBool::new(false));
        let mut conn = Box::pin(serve(server, info, handler, SETTINGS, draining.clone()));
        let (drain_tx, drain) = tokio::sync::oneshot::channel();
        let peer = tokio::spawn(async move {
            send(
                &mut client,
                &[b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"],
            )
            .await;
            let first = if in_flight {
                // The handler is still waiting.
                tokio::time::sleep(Duration::from_secs(1)).await;
                String::new()
            } else {
                read_for(&mut client, Duration::from_secs(1)).await.0
            };
            drain_tx.send(()).unwrap();
            let (rest, closed) = read_for(&mut client, Duration::from_secs(60)).await;
            (first + &rest, closed)
        });
        tokio::select! {
            () = conn.as_mut() => panic!("the connection ended by itself"),
            _ = drain => {}
        }
        draining.store(true, Relaxed);
        let started = tokio::time::Instant::now();
        conn.await;
        let (out, closed) = peer.await.unwrap();
        assert!(closed, "in flight {in_flight}: not closed");
        let seen: Vec<String> = log.lock().unwrap().iter().map(|(t, _)| t.clone()).collect();
        if in_flight {
            assert_eq!(statuses(&out), [200], "{out:?}");
            assert!(out.contains("connection: close"), "{out:?}");
            assert_eq!(seen, ["/a"]);
        } else {
            assert_eq!(statuses(&out), [200, 200], "{out:?}");
            assert_eq!(seen, ["/a", "/b"]);
            assert!(
                started.elapsed() < SETTINGS.header_read_timeout,
                "the idle connection waited {:?}",
                started.elapsed()
            );
        }
    }
}
