//! The HTTP/1.1 client side of the proxy: writes a request to a backend
//! connection and reads the answer, inside the request's own task.
//!
//! Why not hyper's client connection: it runs every upstream connection as
//! a task of its own and passes each request and response through channels
//! to it, so a proxied request paid two task switches, a channel round trip
//! and a second state machine — about a third of the instructions per
//! request in callgrind. Here the request future writes the head, reads
//! the response head, and the response body ([`UpstreamBody`]) reads
//! straight from the socket when the client side asks for more.
//!
//! What a backend sends is read strictly (RFC 9112): a malformed head, an
//! invalid or conflicting `Content-Length`, a bad chunk, or a head over
//! [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines is an error (the client gets
//! 502), never a guess. `Transfer-Encoding` wins over `Content-Length` and
//! the connection is then not reused. Interim answers (`100`, `103`) are
//! skipped; `101` hands the connection to the caller for the tunnel.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::body::{Body, BoxError};
use super::wire::{Dechunker, Step, last_token, parse_length, take};
use crate::config::PoolKey;

/// Most header lines accepted in a backend's response head (hyper's
/// default as well).
pub const MAX_HEADERS: usize = 100;
/// Largest response head accepted (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Room asked for before each read of a response head.
const HEAD_READ: usize = 8 * 1024;
/// Room asked for before each read of a response body.
const BODY_READ: usize = 16 * 1024;

/// An open connection to a backend and what has been read from it but
/// not used yet.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The socket and any bytes already read past the response head (the
    /// start of an upgraded protocol's stream).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.io, self.buf)
    }

    /// Whether an idle connection can carry another request: false once
    /// the backend has closed it or sent something unasked. Does not wait;
    /// makes a system call only when the socket has reported activity.
    pub fn is_reusable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be left over from the last read of the previous
            // response; only a read tells.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// No body.
    None,
    /// Exactly this many bytes (the client's `Content-Length`).
    Length(u64),
    /// Length unknown in advance (a chunked or HTTP/2 client body).
    Chunked,
}

/// Decides the request body's framing and makes the headers say so:
/// `has_body` is false when the request is known to carry nothing.
pub fn upload_framing(method: &Method, headers: &mut HeaderMap, has_body: bool) -> Upload {
    let declared = super::headers::content_length(headers);
    if !has_body {
        // A body-carrying method without one still says so (as hyper and
        // nginx do); a stale non-zero length would make the backend wait.
        if declared.is_some_and(|n| n != 0)
            || (declared.is_none() && matches!(*method, Method::POST | Method::PUT | Method::PATCH))
        {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        return Upload::None;
    }
    match declared {
        Some(n) => Upload::Length(n),
        None => {
            headers.remove(header::CONTENT_LENGTH);
            Upload::Chunked
        }
    }
}

/// Writes the request line and headers, then `extra` (complete header
/// lines); the request target (origin form) is the concatenation of
/// `target`'s pieces.
pub fn encode_head(
    method: &Method,
    target: &[&str],
    headers: &HeaderMap,
    extra: &[u8],
    upload: Upload,
    dst: &mut Vec<u8>,
) {
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target.iter().map(|t| t.len()).sum::<usize>();
    dst.reserve(method.as_str().len() + size + extra.len() + 48);
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    for piece in target {
        dst.extend_from_slice(piece.as_bytes());
    }
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(extra);
    if upload == Upload::Chunked {
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// A request ready for one backend: its head encoded, its body framed.
#[derive(Debug)]
pub struct Outgoing {
    head: Vec<u8>,
    pub body: Body,
    upload: Upload,
    method_is_head: bool,
    idempotent: bool,
    /// The request's header map, emptied: the response's headers reuse its
    /// room instead of allocating a map of their own.
    spare: HeaderMap,
}

impl Outgoing {
    /// `target`'s pieces make the request target (origin form); `headers`
    /// are final (hop-by-hop removed, Host set); `extra` is header lines
    /// written after them (the identity headers).
    pub fn new(
        method: &Method,
        target: &[&str],
        mut headers: HeaderMap,
        extra: &[u8],
        body: Body,
    ) -> Self {
        let has_body = !matches!(body, Body::Empty);
        let upload = upload_framing(method, &mut headers, has_body);
        let mut head = Vec::new();
        encode_head(method, target, &headers, extra, upload, &mut head);
        headers.clear();
        Outgoing {
            head,
            body,
            upload,
            method_is_head: *method == Method::HEAD,
            idempotent: method.is_idempotent(),
            spare: headers,
        }
    }

    /// True when the request carries a body.
    pub fn has_body(&self) -> bool {
        self.upload != Upload::None
    }

    /// Safe to send again (RFC 9110 9.2.2).
    pub fn idempotent(&self) -> bool {
        self.idempotent
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing of an answer arrived: the head could not be written, or the
    /// connection closed before the first byte of a response. On a reused
    /// connection this is the backend having closed it while idle.
    NoAnswer,
    /// The client's request body failed (its limits say why).
    ClientBody,
    /// The backend broke the exchange or answered with something that is
    /// not HTTP/1.x; the text says what, for the log.
    Broken(&'static str),
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The backend lets the connection carry another request.
    pub keep_alive: bool,
}

/// Sends the request and reads the response head. The upload and the wait
/// for the answer run together: a backend may answer (a 413, say) before
/// it has read the whole body. Returns the head and whether the whole
/// request was sent.
pub async fn exchange(conn: &mut Conn, out: &mut Outgoing) -> Result<(Head, bool), Failure> {
    let Conn { io, buf } = conn;
    let Outgoing {
        head,
        body,
        upload,
        method_is_head,
        spare,
        ..
    } = out;
    io.write_all(head).await.map_err(|_| Failure::NoAnswer)?;
    let (mut reader, mut writer) = io.split();
    if *upload == Upload::None {
        let head = read_head(&mut reader, buf, *method_is_head, spare).await?;
        return Ok((head, true));
    }
    let sending = send_body(&mut writer, body, *upload);
    let answer = read_head(&mut reader, buf, *method_is_head, spare);
    tokio::pin!(sending, answer);
    let mut sent = false;
    let mut write_failed = false;
    loop {
        tokio::select! {
            biased;
            r = &mut sending, if !sent && !write_failed => match r {
                Ok(()) => sent = true,
                Err(Failure::ClientBody) => return Err(Failure::ClientBody),
                // The backend stopped reading; it may still have answered.
                Err(_) => write_failed = true,
            },
            h = &mut answer => {
                let h = match h {
                    // Some of the request went out: not a clean "no answer".
                    Err(Failure::NoAnswer) => Err(Failure::Broken("closed before answering")),
                    other => other,
                };
                return h.map(|h| (h, sent));
            }
        }
    }
}

/// Streams the request body to the backend in the given framing.
async fn send_body(w: &mut WriteHalf<'_>, body: &mut Body, upload: Upload) -> Result<(), Failure> {
    let mut sent: u64 = 0;
    let mut chunk = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let Ok(data) = frame.map_err(|_| Failure::ClientBody)?.into_data() else {
            // Trailers are not forwarded.
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match upload {
            Upload::Length(n) if sent > n => return Err(Failure::ClientBody),
            Upload::Chunked => {
                chunk.clear();
                chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\r\n");
                w.write_all(&chunk)
                    .await
                    .map_err(|_| Failure::Broken("write failed"))?;
                continue;
            }
            _ => {}
        }
        w.write_all(&data)
            .await
            .map_err(|_| Failure::Broken("write failed"))?;
    }
    match upload {
        Upload::Chunked => w
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(|_| Failure::Broken("write failed")),
        Upload::Length(n) if sent != n => Err(Failure::ClientBody),
        _ => Ok(()),
    }
}

/// Reads until a final response head has arrived (interim 1xx answers
/// other than 101 are skipped).
async fn read_head(
    r: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    method_is_head: bool,
    spare: &mut HeaderMap,
) -> Result<Head, Failure> {
    let mut got_any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_head(buf, method_is_head, spare)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Ok(head);
            }
            if buf.len() >= MAX_HEAD {
                return Err(Failure::Broken("response head too large"));
            }
        }
        buf.reserve(HEAD_READ);
        match r.read_buf(buf).await {
            Ok(0) | Err(_) if !got_any => return Err(Failure::NoAnswer),
            Ok(0) => return Err(Failure::Broken("closed in the middle of the response head")),
            Err(_) => return Err(Failure::Broken("read failed")),
            Ok(_) => got_any = true,
        }
    }
}

/// Parses one response head from the front of `buf` and consumes it;
/// `None` when more bytes are needed. The headers go into `spare`'s room
/// (taken, left empty).
pub fn parse_head(
    buf: &mut BytesMut,
    method_is_head: bool,
    spare: &mut HeaderMap,
) -> Result<Option<Head>, Failure> {
    // Where each header's name and value sit in the head, so they can be
    // taken from one shared buffer instead of copied one by one.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut storage,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Failure::Broken("too many header lines"));
            }
            Err(_) => return Err(Failure::Broken("not an HTTP/1 response")),
        };
        if len > MAX_HEAD {
            return Err(Failure::Broken("response head too large"));
        }
        let base = buf.as_ptr() as usize;
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            *span = (
                n as u32,
                (n + h.name.len()) as u32,
                v as u32,
                (v + h.value.len()) as u32,
            );
        }
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            resp.headers.len(),
        )
    };
    let status = StatusCode::from_u16(code).map_err(|_| Failure::Broken("invalid status code"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = buf.split_to(len).freeze();

    let mut headers = std::mem::take(spare);
    headers.clear();
    headers.reserve(count);
    let mut length: Option<u64> = None;
    let mut chunked = None::<bool>;
    let (mut close, mut keep_alive) = (false, false);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| Failure::Broken("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| Failure::Broken("invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            let n =
                parse_length(value.as_bytes()).ok_or(Failure::Broken("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Failure::Broken("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            // The last coding decides: chunked must come last to frame.
            chunked = Some(
                last_token(value.as_bytes()).is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        } else if name == header::CONNECTION {
            for t in value.as_bytes().split(|&b| b == b',') {
                let t = t.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }

    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive);
    let bodiless = method_is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::None
    } else if let Some(is_chunked) = chunked {
        if length.is_some() {
            // Both: the length is a lie or a smuggling attempt; do not
            // pass it on, and do not trust this connection again.
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if is_chunked {
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// Where a response body is.
#[derive(Debug)]
enum Reading {
    Length(u64),
    Chunked(Dechunker),
    UntilClose,
}

/// A backend's response body, read from its connection as the client
/// side asks for it. Read to its end on a reusable connection, the
/// connection goes back to the pool; dropped early (the client left), the
/// connection is closed.
#[derive(Debug)]
pub struct UpstreamBody {
    conn: Option<Conn>,
    reading: Reading,
    reusable: bool,
    key: PoolKey,
    max_idle: Duration,
}

impl UpstreamBody {
    /// The body of a response just read from `conn`; `reusable` when the
    /// backend allows another request on it and the whole request went out.
    pub fn start(
        conn: Conn,
        framing: Framing,
        reusable: bool,
        key: &PoolKey,
        max_idle: Duration,
    ) -> Body {
        let reading = match framing {
            Framing::None | Framing::Length(0) => {
                if reusable && conn.buf.is_empty() {
                    super::pool::release(key, conn, max_idle);
                }
                return Body::Empty;
            }
            Framing::Length(n) => Reading::Length(n),
            Framing::Chunked => Reading::Chunked(Dechunker::default()),
            Framing::UntilClose => Reading::UntilClose,
        };
        Body::Upstream(UpstreamBody {
            conn: Some(conn),
            reading,
            reusable,
            key: key.clone(),
            max_idle,
        })
    }

    /// The body ended: a clean connection goes back to the pool.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
        {
            super::pool::release(&self.key, conn, self.max_idle);
        }
    }

    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match &mut self.reading {
                Reading::Length(rem) => {
                    if conn.buf.is_empty() {
                        Ok(Step::More)
                    } else {
                        let n = (*rem).min(conn.buf.len() as u64) as usize;
                        *rem -= n as u64;
                        Ok(Step::Data(take(&mut conn.buf, n)))
                    }
                }
                Reading::Chunked(d) => d.decode(&mut conn.buf),
                Reading::UntilClose if conn.buf.is_empty() => Ok(Step::More),
                Reading::UntilClose => {
                    let n = conn.buf.len();
                    Ok(Step::Data(take(&mut conn.buf, n)))
                }
            };
            match step {
                Ok(Step::Data(b)) => {
                    if matches!(self.reading, Reading::Length(0)) {
                        // Done now: release before the last frame goes out
                        // so `is_end_stream` can say so.
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Ok(Step::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            let conn = self.conn.as_mut().expect("checked above");
            conn.buf.reserve(BODY_READ);
            let read = ready!(poll_read_buf(&conn.io, &mut conn.buf, cx));
            match read {
                Ok(0) if matches!(self.reading, Reading::UntilClose) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(
                        "the backend closed the connection in the middle of the body".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    pub fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.reading) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Reading::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}

/// One read from the socket into `buf`'s spare room.
fn poll_read_buf(
    io: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(io.poll_read_ready(cx))?;
        match io.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Head>, Failure> {
        parse_head(
            &mut BytesMut::from(s.as_bytes()),
            false,
            &mut HeaderMap::new(),
        )
    }

    fn framing(s: &str) -> (Framing, bool) {
        let h = parse(s).unwrap().unwrap();
        (h.framing, h.keep_alive)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            (Framing::Chunked, true)
        );
        // Not chunked last: the body runs to the close.
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n"),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
            (Framing::None, true)
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\n\r\n"),
            (Framing::None, true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"),
            (Framing::Length(1), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"),
            (Framing::Length(1), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n"),
            (Framing::Length(1), true)
        );
        // Identical repeats are one length.
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n"),
            (Framing::Length(3), true)
        );
    }

    #[test]
    fn transfer_encoding_beats_content_length_and_is_not_reused() {
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        assert!(h.headers.get(header::CONTENT_LENGTH).is_none());
    }

    #[test]
    fn head_responses_have_no_body() {
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"[..]);
        let h = parse_head(&mut b, true, &mut HeaderMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::None);
        assert_eq!(h.headers[header::CONTENT_LENGTH], "1234");
        assert!(b.is_empty());
    }

    #[test]
    fn bad_heads_are_refused() {
        for bad in [
            "HELLO\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Failure::Broken(_))),
                "accepted {bad:?}"
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
    }

    #[test]
    fn a_partial_head_waits_and_the_rest_stays_buffered() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP"[..]);
        let h = parse_head(&mut b, false, &mut HeaderMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(&b[..], b"okHTTP");
    }

    #[test]
    fn request_framing_and_head() {
        let mut h = HeaderMap::new();
        assert_eq!(upload_framing(&Method::GET, &mut h, false), Upload::None);
        assert!(h.is_empty());
        assert_eq!(upload_framing(&Method::POST, &mut h, false), Upload::None);
        assert_eq!(h[header::CONTENT_LENGTH], "0");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(
            upload_framing(&Method::PUT, &mut h, true),
            Upload::Length(12)
        );
        let mut h = HeaderMap::new();
        assert_eq!(upload_framing(&Method::POST, &mut h, true), Upload::Chunked);

        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.test"));
        let mut out = Vec::new();
        encode_head(
            &Method::POST,
            &["/x", "?", "y"],
            &h,
            b"x-a: 1\r\n",
            Upload::Chunked,
            &mut out,
        );
        assert_eq!(
            out,
            b"POST /x?y HTTP/1.1\r\nhost: a.test\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }
}
