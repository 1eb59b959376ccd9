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

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
#[cfg(test)]
use tokio::net::TcpStream;

use crate::h1::wire::encode_chunk;
use crate::http::body::Body;

mod body;
mod head;
mod stream;

pub use body::UpstreamBody;
pub use head::parse_head;
pub use stream::Stream;

/// Most header lines accepted in a backend's response head (hyper's
/// default as well).
pub const MAX_HEADERS: usize = 100;
/// Largest response head accepted (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Room asked for before each read of a response head.
const HEAD_READ: usize = 8 * 1024;
/// Room asked for before the first read of a response body; doubled after
/// each read that fills it, up to [`BODY_READ_MAX`]. A small body costs no
/// more than before; a bulk download makes up to 8 times fewer `recvfrom`
/// (and client `sendto`) calls (`benches/load/run.sh bulk` measures the
/// CPU seconds per GiB).
const BODY_READ: usize = 16 * 1024;
/// The most a response body read asks for.
const BODY_READ_MAX: usize = 128 * 1024;
/// Request body bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// Body pieces at least this big are written as they are, not copied.
const WRITE_DIRECT: usize = 8 * 1024;

/// An open connection to a backend and what has been read from it but
/// not used yet.
#[derive(Debug)]
pub struct BackendConn {
    io: Stream,
    buf: BytesMut,
    /// The backend asked for a client certificate during the handshake and
    /// none is configured: its refusal (a 400) is our configuration's
    /// fault, reported as such.
    pub(crate) cert_requested: bool,
}

impl BackendConn {
    #[cfg(test)]
    pub fn new(io: TcpStream) -> Self {
        Self::from_stream(Stream::Plain(io))
    }

    pub fn from_stream(io: Stream) -> Self {
        BackendConn {
            io,
            buf: BytesMut::new(),
            cert_requested: false,
        }
    }

    /// The stream and any bytes already read past the response head (the
    /// start of an upgraded protocol's stream).
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.io, self.buf)
    }

    /// Whether an idle connection can carry another request: false once
    /// the backend has closed it or sent anything unasked (a stray byte
    /// would otherwise be read as the start of the next client's
    /// response). Does not wait. Asks the socket itself (a non-blocking
    /// peek, one system call) rather than the runtime's readiness flags:
    /// those are only updated when the runtime next polls for events, so
    /// bytes that arrived since would go unnoticed. Over TLS, bytes that
    /// are only TLS records (a late session ticket) do not count.
    pub fn is_reusable(&mut self) -> bool {
        self.buf.is_empty() && self.io.idle_and_open()
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
    let declared = crate::h1::wire::content_length(headers);
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
    host: &[u8],
    headers: &HeaderMap,
    extra: &[&[u8]],
    upload: Upload,
    dst: &mut Vec<u8>,
) {
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target.iter().map(|t| t.len()).sum::<usize>()
        + extra.iter().map(|e| e.len()).sum::<usize>();
    dst.reserve(method.as_str().len() + size + host.len() + 56);
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    for piece in target {
        dst.extend_from_slice(piece.as_bytes());
    }
    dst.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    dst.extend_from_slice(host);
    dst.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::HOST {
            continue;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    for piece in extra {
        dst.extend_from_slice(piece);
    }
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
    /// `target`'s pieces make the request target (origin form); `host` is
    /// the Host header's value (one in `headers` is not sent); `headers`
    /// are final (hop-by-hop removed); `extra` is header lines, in pieces,
    /// written after them (the gateway's own: forwarding, request id,
    /// identity).
    pub fn new(
        method: &Method,
        target: &[&str],
        host: &[u8],
        mut headers: HeaderMap,
        extra: &[&[u8]],
        body: Body,
    ) -> Self {
        let has_body = !matches!(body, Body::Empty);
        let upload = upload_framing(method, &mut headers, has_body);
        let mut head = Vec::new();
        encode_head(method, target, host, &headers, extra, upload, &mut head);
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

/// How a backend frames its response body, as read (`h1::write::ResponseFraming`
/// is how we frame the responses we write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendFraming {
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
    pub framing: BackendFraming,
    /// The backend lets the connection carry another request.
    pub keep_alive: bool,
}

/// Sends the request and reads the response head. The upload and the wait
/// for the answer run together: a backend may answer (a 413, say) before
/// it has read the whole body. Returns the head and whether the whole
/// request was sent.
pub async fn exchange(conn: &mut BackendConn, out: &mut Outgoing) -> Result<(Head, bool), Failure> {
    let BackendConn { io, buf, .. } = conn;
    io.write_all(&out.head)
        .await
        .map_err(|_| Failure::NoAnswer)?;
    match io {
        Stream::Plain(tcp) => {
            let (r, w) = tcp.split();
            exchange_on(r, w, buf, out).await
        }
        Stream::Tls(tls) => {
            // One allocation per exchange for the shared halves; TLS has
            // one session for both directions.
            let (r, w) = tokio::io::split(&mut **tls);
            exchange_on(r, w, buf, out).await
        }
    }
}

async fn exchange_on(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    buf: &mut BytesMut,
    out: &mut Outgoing,
) -> Result<(Head, bool), Failure> {
    let Outgoing {
        body,
        upload,
        method_is_head,
        spare,
        ..
    } = out;
    if *upload == Upload::None {
        writer.flush().await.map_err(|_| Failure::NoAnswer)?;
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
async fn send_body(
    w: &mut (impl AsyncWrite + Unpin),
    body: &mut Body,
    upload: Upload,
) -> Result<(), Failure> {
    let broken = |_| Failure::Broken("write failed");
    let mut sent: u64 = 0;
    // Pieces that are ready at once are gathered into one write: a client
    // sending many tiny chunks must not cost a system call (and a packet)
    // each.
    let mut out: Vec<u8> = Vec::new();
    loop {
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    w.write_all(&out).await.map_err(broken)?;
                    out.clear();
                }
                // TLS holds written bytes until flushed.
                w.flush().await.map_err(broken)?;
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let Some(frame) = frame else { break };
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
            Upload::Chunked => encode_chunk(&mut out, &data),
            _ if out.is_empty() && data.len() >= WRITE_DIRECT => {
                w.write_all(&data).await.map_err(broken)?;
            }
            _ => out.extend_from_slice(&data),
        }
        if out.len() >= WRITE_BATCH {
            w.write_all(&out).await.map_err(broken)?;
            out.clear();
        }
    }
    match upload {
        Upload::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        Upload::Length(n) if sent != n => return Err(Failure::ClientBody),
        _ => {}
    }
    w.write_all(&out).await.map_err(broken)?;
    w.flush().await.map_err(broken)
}

/// Reads until a final response head has arrived (interim 1xx answers
/// other than 101 are skipped).
async fn read_head(
    r: &mut (impl AsyncRead + Unpin),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to a peer the test writes to with blocking calls, so
    /// that the runtime has no chance to notice what arrives.
    async fn pair() -> (BackendConn, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let io = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (peer, _) = l.accept().unwrap();
        (BackendConn::new(io), peer)
    }

    #[tokio::test]
    async fn a_stray_byte_or_a_close_makes_an_idle_connection_unusable_at_once() {
        use std::io::Write as _;
        let (mut conn, mut peer) = pair().await;
        assert!(conn.is_reusable());
        // Loopback delivers before write returns; no await in between, so
        // the runtime has not polled for events since.
        peer.write_all(b"X").unwrap();
        assert!(!conn.is_reusable(), "a stray byte went unnoticed");

        let (mut conn, peer) = pair().await;
        assert!(conn.is_reusable());
        drop(peer);
        assert!(!conn.is_reusable(), "the backend's close went unnoticed");
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

        // Host comes first and only once: a Host left in the map is not sent.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("client.test"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let mut out = Vec::new();
        encode_head(
            &Method::POST,
            &["/x", "?", "y"],
            b"a.test",
            &h,
            &[b"x-a: ", b"1", b"\r\n", b"x-b: 2\r\n"],
            Upload::Chunked,
            &mut out,
        );
        assert_eq!(
            out,
            b"POST /x?y HTTP/1.1\r\nhost: a.test\r\naccept: */*\r\nx-a: 1\r\nx-b: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }
}
