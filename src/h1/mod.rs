//! Our HTTP/1.x codec and its server connection: reads requests from a
//! client connection (plain or TLS), runs a [`Handler`] (the proxy's
//! request pipeline), writes the responses. The wire format shared with
//! the upstream client (lengths, chunked coding) is in [`wire`]. Nothing
//! here routes, authenticates or accepts sockets.
//!
//! Why not hyper's HTTP/1 server (HTTP/2 still uses hyper): it keeps an
//! 8 KiB read buffer and a write buffer allocated for a connection's whole
//! life, and its per-request machinery (dispatcher, body channel, a timer
//! allocated per request) was the largest share of the instructions per
//! proxied request after hyper's client was gone. Here:
//! - an idle keep-alive connection holds no buffer at all: heads are read
//!   into a per-thread scratch buffer and parsed in place; only a partial
//!   head, a pipelined request or body bytes are kept per connection;
//! - the head is copied once into its own small allocation that the URI
//!   and header values share;
//! - the response head and a body that is ready at once go out in one
//!   write;
//! - the header read timeout is one timer per connection, pushed forward
//!   only when less than the full timeout is left (so a connection waits
//!   between 1 and 1.25 times `header_read_timeout` for a head).
//!
//! Request bodies are fed on demand ([`body`]): nothing of a body is read
//! before the handler asks, so a client uploading to a handler that waits
//! fills only its own pipe. `Expect: 100-continue` (HTTP/1.1 only; RFC
//! 9110 10.1.1) is answered when the body is first asked for; an answer
//! that comes before leaves no `100` owed and closes the connection (the
//! client may or may not send the body), and a `100` that had started to
//! go out is finished before the final answer; a `101` to a request that
//! expects one is preceded by the whole `100` (RFC 9110 7.8). An unread
//! body of a known length up to 64 KiB is read and dropped after the answer so the
//! connection stays usable; anything else unread closes it. While a
//! response is being written nothing is read, so a client that pipelines
//! without reading its answers is not read from. A `101` hands the socket,
//! with any bytes read past the head, to the upgrade ([`upgrade`]). While
//! a request without a body is being handled, the connection keeps
//! reading so that a client that hangs up cancels its request (as hyper
//! and nginx do).
//!
//! `tests.rs` drives all of this below the socket (a scripted client on an
//! in-memory pipe, paused time); `upstream::pool`'s `scripted` tests do
//! the same for the backend side.
//!
//! # What the codec refuses, and why
//!
//! A proxy that reads a message's length one way while the backend reads
//! it another can be made to carry a second, hidden request (request
//! smuggling), so every head whose framing is not unambiguous under
//! RFC 9112 is refused before anything is forwarded, and the connection
//! is closed after the answer:
//! - malformed heads (httparse's strict rules: bad tokens, whitespace
//!   before a colon, obsolete line folding, bare CR): 400 (RFC 9112 5.1,
//!   5.2); bare LF line ends are read as CRLF (RFC 9112 2.2);
//! - a head over `max_head` or with more than 100 lines: 431 (memory is
//!   bounded per connection);
//! - `Content-Length` that is not digits, or lists of unequal values: 400
//!   (RFC 9112 6.3 item 5); identical repeats are one value;
//! - `Transfer-Encoding` whose last coding is not `chunked`, or on an
//!   HTTP/1.0 request: 400 (RFC 9112 6.3 item 4, 6.1); other codings before
//!   `chunked`: 501 (only `chunked` is implemented); with `Content-Length`
//!   too: read as chunked, the length dropped, the connection closed after
//!   the response (RFC 9112 6.3 item 3);
//! - chunked bodies ([`wire::Dechunker`]): a size without digits or over
//!   16 hex digits, anything but CRLF ending a line, an extension over
//!   4 KiB per chunk, a trailer section over `max_head`, a trailer line
//!   that is not a field line (token, colon, visible bytes; RFC 9112
//!   7.1.2): the body fails and the connection closes;
//! - methods with lowercase letters and absolute-form HTTP/1.1 requests
//!   without `Host`: 400 (policy, see [`wire::method_allowed`]; RFC 9112
//!   3.2).
//!
//! A backend's answer is read by the same rules in
//! [`crate::upstream::conn`] (a refusal there is a 502).
//! `fuzz/` checks all of this differentially against references built on
//! httparse and against hyper (`request_head`, `response_head`, `chunked`,
//! `h1_conn`); `tests/vtc/` runs it under varnishtest.
//!
//! # Where hyper is still used, and why
//!
//! - HTTP/2, both ways: clients (`proxy::server`) and backends
//!   (`upstream::h2`, for `h2c://` and `https://` upstreams that settle on
//!   h2). Multiplexing, flow control and HPACK are a protocol of their
//!   own, and hyper's (the `h2` crate) is maintained and well tested;
//!   HTTP/2 requests join the same pipeline and the same `Body`.
//! - The gateway's own outbound calls (OIDC discovery and token requests
//!   in `auth::http`, ACME and its DNS providers, health checks in
//!   `upstream::health`, the CLI's calls to the admin API) and the admin
//!   listener: few requests, off the request path, where hyper's
//!   per-request cost does not matter and a second codec to audit would.
//! - An HTTP/2 client's upgrade hand-off (`hyper::upgrade`), where the
//!   upgraded stream comes from hyper's connection.

pub mod body;
pub(crate) mod parse;
pub mod upgrade;
pub mod wire;
mod write;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

use crate::http::body::Body;
use crate::http::conn::ConnInfo;
use parse::{BodyFraming, HeadError, Parsed};
use wire::Dechunker;
use write::ConnectionHeader;

/// A request's future, as a [`Handler`] returns it: boxed, so an idle
/// connection holds no request state.
pub type Handling<'a> =
    Pin<Box<dyn Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + 'a>>;

/// What answers the requests of a connection.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, conn: &'a Arc<ConnInfo>, req: http::Request<Body>) -> Handling<'a>;
}

/// How HTTP/1 connections behave (from the server config).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a head may take to arrive, idle keep-alive time included.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (431 above).
    pub max_head: usize,
    /// Longest a client may leave a response unread.
    pub send_timeout: Duration,
}

/// Size of the per-thread buffer heads are read into.
const SCRATCH: usize = 16 * 1024;
/// Handler and body-feeding turns in one poll before yielding.
const TURNS: usize = 32;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Serves HTTP/1 requests on `io` until the client closes, asks to close,
/// the connection breaks or times out, or `draining` is set and the
/// connection is between requests.
///
/// Not an `async fn`: those keep their arguments for their whole life next
/// to the locals they are moved into, so the stream (with its TLS state)
/// would be held twice. For the same reason each request's pieces (head,
/// request, response) live in blocks that end before the next `await`:
/// this future is every connection's state, idle ones included.
pub fn serve<I, H: Handler>(
    io: I,
    info: Arc<ConnInfo>,
    handler: Arc<H>,
    settings: Settings,
    draining: Arc<AtomicBool>,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = ClientConn {
        io,
        pending: BytesMut::new(),
    };
    async move {
        let t = settings.header_read_timeout;
        let mut timer = Box::pin(tokio::time::sleep(t + t / 4));
        loop {
            conn.release_idle_buffer();
            rearm(timer.as_mut(), t);
            let head =
                poll_fn(|cx| conn.poll_next_head(cx, timer.as_mut(), &draining, settings.max_head))
                    .await;
            let parsed = match head {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(stop) => {
                    // Boxed: rare, and its state would be every connection's.
                    Box::pin(refuse(&mut conn, &info, stop)).await;
                    break;
                }
            };
            let (mut fut, mut reader, started) = start(parsed, &*handler, &info, settings.max_head);
            let (writing, switching, leftover) = {
                let outcome = poll_fn(|cx| conn.poll_handler(fut.as_mut(), &mut reader, cx)).await;
                drop(fut);
                let Some(resp) = outcome else {
                    // The client hung up; dropping the handler cancelled the request.
                    break;
                };
                if crate::http::CloseWithoutAnswer::is_on(&resp) {
                    // Not a byte of an answer: the connection just closes.
                    break;
                }
                let (leftover, switching, connection) =
                    after_handling(reader.as_ref(), &resp, &started, draining.load(Relaxed));
                // Boxed per response: inline, the writer's state would be
                // part of every connection's for its whole life.
                let interim = match reader.as_ref() {
                    Some(r) if switching => r.continue_before_switching(),
                    Some(r) => r.unsent_continue(),
                    None if switching && started.expect_continue => body::CONTINUE,
                    None => &[],
                };
                let writing = Box::pin(write::write_response(
                    &mut conn.io,
                    interim,
                    resp,
                    &started.method,
                    started.http11,
                    connection,
                    settings.send_timeout,
                ));
                (writing, switching, leftover)
            };
            let close = match writing.await {
                Ok(close) => close,
                Err(e) => {
                    tracing::debug!(peer = %info.peer, error = %e, "response not completed; closing");
                    return;
                }
            };
            if switching && let Some(tx) = started.upgrade_tx {
                return conn.hand_over(tx);
            }
            if close {
                break;
            }
            // Boxed: rare, and inline its state would make every
            // connection's future bigger for its whole life.
            if let Some(n) = leftover
                && !Box::pin(conn.discard(n, t)).await
            {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.io.shutdown()).await;
    }
}

/// Pushes the head timer forward when less than the full timeout `t` is
/// left (so it is reset at most once per `t / 4`).
#[inline(always)]
fn rearm(timer: Pin<&mut tokio::time::Sleep>, t: Duration) {
    let now = tokio::time::Instant::now();
    if timer.deadline() < now + t {
        timer.reset(now + t + t / 4);
    }
}

/// Once the handler has answered: the unread body to drain before the
/// next request (if any), whether the answer switches protocols, and what
/// the response's `Connection` header says.
#[inline(always)]
fn after_handling(
    reader: Option<&body::BodyReader>,
    resp: &Response<Body>,
    started: &Started,
    draining: bool,
) -> (Option<u64>, bool, ConnectionHeader) {
    // A small body the handler did not read (a `respond` route, an early
    // 401 or 413) is read and dropped after the answer so the connection
    // stays usable; a large or chunked one closes it.
    let leftover = reader
        .and_then(body::BodyReader::unread_length)
        .filter(|&n| n <= DRAIN_MAX);
    let body_read = leftover.is_some() || reader.is_none_or(|r| r.feed.complete() && !r.broken);
    let switching =
        resp.status() == StatusCode::SWITCHING_PROTOCOLS && started.upgrade_tx.is_some();
    let keep = started.keep_alive && body_read && !draining;
    let connection = if switching {
        ConnectionHeader::Default
    } else if !keep {
        ConnectionHeader::Close
    } else if !started.http11 {
        ConnectionHeader::KeepAlive
    } else {
        ConnectionHeader::Default
    };
    (leftover, switching, connection)
}

/// What the response to a request needs to know about it.
struct Started {
    method: http::Method,
    http11: bool,
    keep_alive: bool,
    /// The client asked for `100 Continue` (owed before a `101` even
    /// without a body).
    expect_continue: bool,
    /// Where a `101` hands the connection over.
    upgrade_tx: Option<oneshot::Sender<upgrade::Upgraded>>,
}

/// Turns a parsed head into the handler's future (boxed: an idle
/// connection holds no request state) and the reader that feeds its body.
/// A chunked body's trailer section may be as large as a head
/// (`max_trailers`).
#[allow(clippy::type_complexity)]
fn start<'a, H: Handler>(
    parsed: Parsed,
    handler: &'a H,
    info: &'a Arc<ConnInfo>,
    max_trailers: usize,
) -> (Handling<'a>, Option<body::BodyReader>, Started) {
    let Parsed {
        request,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    } = parsed;
    let method = request.method().clone();
    let http11 = request.version() == Version::HTTP_11;
    let (mut req, reader) = match framing {
        BodyFraming::None => (request.map(|()| Body::Empty), None),
        BodyFraming::Length(n) => {
            let (b, feed) = crate::http::body::fed(Some(n));
            let reader = body::BodyReader::new(feed, body::Reading::Length(n), expect_continue);
            (request.map(|()| Body::Client(b)), Some(reader))
        }
        BodyFraming::Chunked => {
            let (b, feed) = crate::http::body::fed(None);
            let reader = body::BodyReader::new(
                feed,
                body::Reading::Chunked(Dechunker::new(max_trailers)),
                expect_continue,
            );
            (request.map(|()| Body::Client(b)), Some(reader))
        }
    };
    let upgrade_tx = upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        req.extensions_mut().insert(upgrade::OnUpgrade::new(rx));
        tx
    });
    let fut = handler.handle(info, req);
    let started = Started {
        method,
        http11,
        keep_alive,
        expect_continue,
        upgrade_tx,
    };
    (fut, reader, started)
}

/// Answers a head that was refused (400, 431, 408) where one is due.
async fn refuse<I: AsyncWrite + Unpin>(conn: &mut ClientConn<I>, info: &ConnInfo, stop: Stop) {
    let answer = match stop {
        Stop::Head(HeadError::Bad(why)) => Some((StatusCode::BAD_REQUEST, why)),
        Stop::Head(HeadError::NotImplemented(why)) => Some((StatusCode::NOT_IMPLEMENTED, why)),
        Stop::Head(HeadError::TooLarge) => Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "The request head is too large.",
        )),
        // A head that started and did not finish in time.
        Stop::Timeout if !conn.pending.is_empty() => Some((
            StatusCode::REQUEST_TIMEOUT,
            "The request head took too long to arrive.",
        )),
        Stop::Timeout => None,
    };
    if let Some((status, why)) = answer {
        tracing::debug!(peer = %info.peer, %status, reason = why, "request head refused");
        let bytes = write::error_response(status, why);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            conn.io.write_all(&bytes).await?;
            conn.io.flush().await
        })
        .await;
    }
}

/// Largest unread request body read and dropped to keep a connection.
const DRAIN_MAX: u64 = 64 * 1024;

/// Why waiting for a head ended without one.
enum Stop {
    Head(HeadError),
    Timeout,
}

/// A client's connection to us (`upstream::conn::BackendConn` is ours to
/// a backend).
pub(super) struct ClientConn<I> {
    pub(super) io: I,
    /// Bytes read but not used yet: a partial head, a pipelined request,
    /// body bytes. Empty and unallocated while the connection idles.
    pub(super) pending: BytesMut,
}

/// What one read made of a head. Lives for one poll; boxing the parsed
/// head would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum HeadStep {
    Got(Parsed),
    More,
    Eof,
    Refused(HeadError),
    Pending,
}

impl<I: AsyncRead + AsyncWrite + Unpin> ClientConn<I> {
    /// Reads and drops `n` body bytes (some may be buffered already);
    /// false if they did not arrive within `limit`.
    async fn discard(&mut self, mut n: u64, limit: Duration) -> bool {
        let drained = async {
            loop {
                let now = n.min(self.pending.len() as u64) as usize;
                self.pending.advance(now);
                n -= now as u64;
                if n == 0 {
                    return true;
                }
                self.pending.reserve(8 * 1024);
                match tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.pending).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(limit, drained).await.unwrap_or(false)
    }

    /// After a `101`: the socket and any bytes already read past the
    /// request go to the upgrade.
    fn hand_over(self, tx: oneshot::Sender<upgrade::Upgraded>)
    where
        I: Send + 'static,
    {
        let _ = tx.send(upgrade::Upgraded::new(Box::new(self.io), self.pending));
    }

    /// Idle connections hold no buffer.
    #[inline(always)]
    fn release_idle_buffer(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = BytesMut::new();
        }
    }

    /// The next request head, unless the connection is draining and idle
    /// (`None`, as when the client closed) or `timer` fires first.
    #[inline(always)]
    fn poll_next_head(
        &mut self,
        cx: &mut Context<'_>,
        timer: Pin<&mut tokio::time::Sleep>,
        draining: &AtomicBool,
        max_head: usize,
    ) -> Poll<Result<Option<Parsed>, Stop>> {
        if draining.load(Relaxed) && self.pending.is_empty() {
            return Poll::Ready(Ok(None));
        }
        if let Poll::Ready(r) = self.poll_head(cx, max_head) {
            return Poll::Ready(r);
        }
        timer.poll(cx).map(|()| Err(Stop::Timeout))
    }

    /// Reads until a complete request head (`None`: the client closed).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        max_head: usize,
    ) -> Poll<Result<Option<Parsed>, Stop>> {
        if !self.pending.is_empty() {
            match parse::parse(&self.pending, max_head) {
                Ok(Some((p, len))) => {
                    self.pending.advance(len);
                    return Poll::Ready(Ok(Some(p)));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(Stop::Head(e))),
            }
        }
        loop {
            let step = SCRATCH_BUF.with_borrow_mut(|scratch| {
                let mut rb = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Pending => return HeadStep::Pending,
                    Poll::Ready(Err(_)) => return HeadStep::Eof,
                    Poll::Ready(Ok(())) => {}
                }
                let got = rb.filled();
                if got.is_empty() {
                    return HeadStep::Eof;
                }
                let parsed = if self.pending.is_empty() {
                    // The usual case: a whole head in one read, parsed where
                    // it landed; only what follows it is kept.
                    match parse::parse(got, max_head) {
                        Ok(Some((p, len))) => {
                            self.pending.extend_from_slice(&got[len..]);
                            Ok(Some(p))
                        }
                        Ok(None) => {
                            self.pending.extend_from_slice(got);
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    self.pending.extend_from_slice(got);
                    match parse::parse(&self.pending, max_head) {
                        Ok(Some((p, len))) => {
                            self.pending.advance(len);
                            Ok(Some(p))
                        }
                        other => other.map(|_| None),
                    }
                };
                match parsed {
                    Ok(Some(p)) => HeadStep::Got(p),
                    Ok(None) => HeadStep::More,
                    Err(e) => HeadStep::Refused(e),
                }
            });
            match step {
                HeadStep::Got(p) => return Poll::Ready(Ok(Some(p))),
                HeadStep::More => continue,
                HeadStep::Eof => return Poll::Ready(Ok(None)),
                HeadStep::Refused(e) => return Poll::Ready(Err(Stop::Head(e))),
                HeadStep::Pending => return Poll::Pending,
            }
        }
    }

    /// Drives the handler, feeding its request body when asked; watches
    /// for the client hanging up otherwise. `None`: the client is gone.
    fn poll_handler<F>(
        &mut self,
        mut fut: Pin<&mut F>,
        reader: &mut Option<body::BodyReader>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Response<Body>>>
    where
        F: Future<Output = Result<Response<Body>, std::convert::Infallible>> + ?Sized,
    {
        for _ in 0..TURNS {
            if let Poll::Ready(Ok(resp)) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(resp));
            }
            if let Some(r) = reader.as_mut().filter(|r| !r.finished) {
                match r.poll_feed(self, cx) {
                    // The client left mid-body: cancel the request (the
                    // handler's drop logs it as 499).
                    Poll::Ready(()) if r.client_gone => return Poll::Ready(None),
                    // Something was delivered: let the handler use it.
                    Poll::Ready(()) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.pending.is_empty() {
                return Poll::Pending;
            }
            // Nothing to feed: a read tells whether the client hung up.
            let gone = SCRATCH_BUF.with_borrow_mut(|scratch| {
                let mut rb = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Pending => false,
                    Poll::Ready(Err(_)) => true,
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => true,
                    Poll::Ready(Ok(())) => {
                        // Pipelined: kept for after this response.
                        self.pending.extend_from_slice(rb.filled());
                        false
                    }
                }
            });
            return if gone {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
