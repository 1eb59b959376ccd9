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

/// Writes `pieces` one write each, letting the server run in between.
async fn send(client: &mut DuplexStream, pieces: &[&[u8]]) {
    for p in pieces {
        client.write_all(p).await.unwrap();
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
