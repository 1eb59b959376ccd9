//! Writing responses: the head, and the body's framing on the wire.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use tokio::io::AsyncWrite;

use super::parse;
pub use super::wire::encode_chunk;
use crate::http::body::Body;

/// Response bytes gathered before they are written. Also most of what a
/// connection holds for a client that does not read (besides one body
/// piece): a write that waits keeps its batch, so this stays small.
const WRITE_BATCH: usize = 16 * 1024;
/// Body pieces at least this big are written as they are, not copied.
const WRITE_DIRECT: usize = 8 * 1024;

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// Nothing after the head (HEAD, 1xx, 204, 304, or an empty body).
    None,
    /// Exactly this many bytes (the `Content-Length` sent).
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, length unknown).
    UntilClose,
}

/// Decides the framing: what the head says (a `Content-Length` from the
/// backend is kept) or what the body knows (`exact`), chunked for HTTP/1.1
/// clients otherwise. Returns the framing and the `Content-Length` to add,
/// if any.
pub fn framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
    exact: Option<u64>,
    http11: bool,
) -> (ResponseFraming, Option<u64>) {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| super::wire::parse_length(v.as_bytes()));
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return (ResponseFraming::None, None);
    }
    if *method == Method::HEAD {
        // The head describes the body a GET would get; none is sent. A
        // backend's answer to HEAD has no body here, so an empty one says
        // nothing about the length: only a real one is added.
        let add = if declared.is_none() {
            exact.filter(|&n| n > 0)
        } else {
            None
        };
        return (ResponseFraming::None, add);
    }
    match (declared, exact) {
        (Some(0), _) => (ResponseFraming::None, None),
        (Some(n), _) => (ResponseFraming::Length(n), None),
        (None, Some(0)) => (ResponseFraming::None, Some(0)),
        (None, Some(n)) => (ResponseFraming::Length(n), Some(n)),
        (None, None) if http11 => (ResponseFraming::Chunked, None),
        (None, None) => (ResponseFraming::UntilClose, None),
    }
}

/// What the head says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// Nothing (HTTP/1.1 keep-alive, or a 101 that carries its own).
    Default,
    /// `connection: keep-alive` (HTTP/1.0 clients that asked for it).
    KeepAlive,
    /// `connection: close`.
    Close,
}

/// Writes the status line and headers.
pub fn encode_head(
    dst: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    add_length: Option<u64>,
    connection: ConnectionHeader,
) {
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    dst.reserve(size + 128);
    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    dst.extend_from_slice(b"\r\n");
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT;
    let mut has_date = false;
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING
            || (bodiless && name == header::CONTENT_LENGTH)
            || (connection != ConnectionHeader::Default && name == header::CONNECTION)
        {
            continue;
        }
        has_date |= name == header::DATE;
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if let Some(n) = add_length {
        dst.extend_from_slice(b"content-length: ");
        dst.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if framing == ResponseFraming::Chunked {
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    match connection {
        ConnectionHeader::Default => {}
        ConnectionHeader::KeepAlive => dst.extend_from_slice(b"connection: keep-alive\r\n"),
        ConnectionHeader::Close => dst.extend_from_slice(b"connection: close\r\n"),
    }
    if !has_date {
        dst.extend_from_slice(b"date: ");
        with_date(|d| dst.extend_from_slice(d));
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// The end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A short plain-text answer made by the connection itself (a request it
/// could not read), after which it closes.
pub fn error_response(status: StatusCode, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + reason.len());
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let body = format!("{reason}\n");
    encode_head(
        &mut out,
        status,
        &h,
        ResponseFraming::Length(body.len() as u64),
        Some(body.len() as u64),
        ConnectionHeader::Close,
    );
    out.extend_from_slice(body.as_bytes());
    out
}

thread_local! {
    /// The `Date` value, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == text.len() {
                text.copy_from_slice(s.as_bytes());
            }
            *at = secs;
        }
        f(&text[..]);
    });
}

/// Writes one response, after `interim` (the unwritten rest of an
/// interim answer, usually nothing). `Ok(true)`: the connection must close
/// after it (it said so, or its body runs until the close).
///
/// Not an `async fn`: the head is encoded here, so the returned future
/// holds the bytes to send and the body, not the whole response (its
/// state is part of every connection's, idle ones included).
pub fn write_response<'a, I: AsyncWrite + Unpin>(
    io: &'a mut I,
    interim: &[u8],
    resp: Response<Body>,
    method: &Method,
    http11: bool,
    connection: ConnectionHeader,
    limit: Duration,
) -> impl Future<Output = io::Result<bool>> + 'a {
    let (parts, body) = resp.into_parts();
    let exact = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    let (framing, add) = framing(method, parts.status, &parts.headers, exact, http11);
    let connection = if framing == ResponseFraming::UntilClose {
        ConnectionHeader::Close
    } else {
        connection
    };
    let small = exact.filter(|&n| n < WRITE_DIRECT as u64).unwrap_or(0) as usize;
    let mut out = Vec::with_capacity(512 + small);
    out.extend_from_slice(interim);
    encode_head(
        &mut out,
        parts.status,
        &parts.headers,
        framing,
        add,
        connection,
    );
    parse::recycle(parts.headers);
    let close = connection == ConnectionHeader::Close;
    send_response(io, out, body, framing, close, limit)
}

async fn send_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    mut out: Vec<u8>,
    mut body: Body,
    framing: ResponseFraming,
    close: bool,
    limit: Duration,
) -> io::Result<bool> {
    if framing == ResponseFraming::None {
        send(io, &out, limit).await?;
        return Ok(close);
    }
    let mut sent: u64 = 0;
    loop {
        // A piece that is ready now goes out with what is gathered (one
        // write for head and body); otherwise what is gathered goes first.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    send(io, &out, limit).await?;
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                let _ = send(io, &out, limit).await;
                return Err(io::Error::other(format!("the response body broke: {e}")));
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
        };
        if let ResponseFraming::Length(n) = framing
            && sent + data.len() as u64 > n
        {
            let room = (n - sent) as usize;
            out.extend_from_slice(&data[..room]);
            let _ = send(io, &out, limit).await;
            return Err(io::Error::other(
                "the response body is longer than its length",
            ));
        }
        sent += data.len() as u64;
        if framing == ResponseFraming::Chunked {
            encode_chunk(&mut out, &data);
        } else if out.is_empty() && data.len() >= WRITE_DIRECT {
            send(io, &data, limit).await?;
            continue;
        } else {
            out.extend_from_slice(&data);
        }
        if out.len() >= WRITE_BATCH {
            send(io, &out, limit).await?;
            out.clear();
        }
    }
    if let ResponseFraming::Length(n) = framing
        && sent != n
    {
        let _ = send(io, &out, limit).await;
        return Err(io::Error::other(
            "the response body ended before its length",
        ));
    }
    if framing == ResponseFraming::Chunked {
        out.extend_from_slice(LAST_CHUNK);
    }
    send(io, &out, limit).await?;
    Ok(close || framing == ResponseFraming::UntilClose)
}

/// Writes all of `buf` and flushes, giving up when the client accepts
/// nothing for `limit` (`send_timeout`): a client that stops reading must
/// not hold its connection and a backend's forever. The timer is made only
/// when a write has to wait, and is set again after progress.
async fn send<I: AsyncWrite + Unpin>(
    io: &mut I,
    mut buf: &[u8],
    limit: Duration,
) -> io::Result<()> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        loop {
            let step = if buf.is_empty() {
                Pin::new(&mut *io).poll_flush(cx).map_ok(|()| None)
            } else {
                Pin::new(&mut *io).poll_write(cx, buf).map_ok(Some)
            };
            match step {
                Poll::Ready(Ok(None)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(Some(0))) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(Some(n))) => {
                    buf = &buf[n..];
                    timer = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client read nothing for send_timeout",
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(
        status: u16,
        h: &[(&str, &str)],
        f: ResponseFraming,
        add: Option<u64>,
        c: ConnectionHeader,
    ) -> String {
        let mut map = HeaderMap::new();
        for (k, v) in h {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        encode_head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            &map,
            f,
            add,
            c,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn heads_say_what_the_body_is() {
        let h = head(
            200,
            &[("x-a", "1")],
            ResponseFraming::Chunked,
            None,
            ConnectionHeader::Default,
        );
        assert!(h.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\ndate: "));
        assert!(h.ends_with(" GMT\r\n\r\n"), "{h}");
        let h = head(
            404,
            &[("date", "x")],
            ResponseFraming::Length(3),
            Some(3),
            ConnectionHeader::Close,
        );
        assert_eq!(
            h,
            "HTTP/1.1 404 Not Found\r\ndate: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\n"
        );
        // A stale Transfer-Encoding never goes out; 204 has no length.
        let h = head(
            204,
            &[
                ("date", "x"),
                ("transfer-encoding", "chunked"),
                ("content-length", "0"),
            ],
            ResponseFraming::None,
            None,
            ConnectionHeader::Default,
        );
        assert_eq!(h, "HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n");
    }

    #[test]
    fn framing_choices() {
        let h = HeaderMap::new();
        let mut cl = HeaderMap::new();
        cl.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        let ok = StatusCode::OK;
        assert_eq!(
            framing(&Method::GET, ok, &cl, None, true),
            (ResponseFraming::Length(10), None)
        );
        assert_eq!(
            framing(&Method::GET, ok, &h, Some(5), true),
            (ResponseFraming::Length(5), Some(5))
        );
        assert_eq!(
            framing(&Method::GET, ok, &h, None, true),
            (ResponseFraming::Chunked, None)
        );
        assert_eq!(
            framing(&Method::GET, ok, &h, None, false),
            (ResponseFraming::UntilClose, None)
        );
        assert_eq!(
            framing(&Method::HEAD, ok, &cl, None, true),
            (ResponseFraming::None, None)
        );
        assert_eq!(
            framing(&Method::HEAD, ok, &h, Some(7), true),
            (ResponseFraming::None, Some(7))
        );
        assert_eq!(
            framing(&Method::GET, StatusCode::NOT_MODIFIED, &cl, None, true),
            (ResponseFraming::None, None)
        );
    }

    #[test]
    fn chunks() {
        let mut v = Vec::new();
        encode_chunk(&mut v, &[b'a'; 26]);
        assert_eq!(&v[..4], b"1a\r\n");
        v.clear();
        encode_chunk(&mut v, b"");
        assert_eq!(v, b"0\r\n\r\n");
    }
}
