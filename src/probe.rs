//! The HTTP/1 codec's entry points for the fuzz targets (`fuzz/`) and their
//! replay in `tests/fuzz_regressions.rs`: the request and response head
//! parsers, the chunked decoder and a whole server connection over an
//! in-memory pipe, with plain results a differential check can compare
//! (status numbers, strings), so the codec itself stays crate-private.
//! Not part of the gateway's API; nothing in the crate calls it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::h1;
use crate::http::Scheme;
use crate::http::body::Body;
use crate::http::conn::ConnInfo;

pub use crate::h1::wire::{Dechunker, MAX_CHUNK_EXTENSION, Step};

/// How a message's body is delimited, as a parser decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Responses only: read until the backend closes.
    UntilClose,
}

/// What the request head parser made of a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub http11: bool,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub upgrade: bool,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

/// Parses a request head as a client connection does: `Ok(None)` wants
/// more bytes, `Err` is the status the refusal is answered with.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<RequestHead>, u16> {
    use h1::parse::{BodyFraming, HeadError};
    match h1::parse::parse(buf, max_head) {
        Ok(None) => Ok(None),
        Ok(Some((p, len))) => Ok(Some(RequestHead {
            method: p.request.method().as_str().to_owned(),
            target: p.request.uri().to_string(),
            http11: p.request.version() == http::Version::HTTP_11,
            framing: match p.framing {
                BodyFraming::None => Framing::None,
                BodyFraming::Length(n) => Framing::Length(n),
                BodyFraming::Chunked => Framing::Chunked,
            },
            keep_alive: p.keep_alive,
            expect_continue: p.expect_continue,
            upgrade: p.upgrade,
            len,
        })),
        Err(HeadError::Bad(_)) => Err(400),
        Err(HeadError::TooLarge) => Err(431),
        Err(HeadError::NotImplemented(_)) => Err(501),
    }
}

/// What the response head parser made of a backend's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub http11: bool,
    pub framing: Framing,
    pub keep_alive: bool,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

/// Parses a response head as the upstream client does (`Ok(None)`: more
/// bytes wanted; `Err`: the exchange fails with a 502, for this reason).
pub fn parse_response(
    buf: &[u8],
    method_is_head: bool,
) -> Result<Option<ResponseHead>, &'static str> {
    use crate::upstream::conn::{BackendFraming as F, Failure, parse_head};
    let mut b = BytesMut::from(buf);
    let mut spare = http::HeaderMap::new();
    match parse_head(&mut b, method_is_head, &mut spare) {
        Ok(None) => Ok(None),
        Ok(Some(h)) => Ok(Some(ResponseHead {
            status: h.status.as_u16(),
            http11: h.version == http::Version::HTTP_11,
            framing: match h.framing {
                F::None => Framing::None,
                F::Length(n) => Framing::Length(n),
                F::Chunked => Framing::Chunked,
                F::UntilClose => Framing::UntilClose,
            },
            keep_alive: h.keep_alive,
            len: buf.len() - b.len(),
        })),
        Err(Failure::Broken(why)) => Err(why),
        Err(_) => Err("failed"),
    }
}

/// One request a connection handed to its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    pub method: String,
    pub target: String,
    pub http11: bool,
    /// The whole body, or `None` when it could not be read to its end.
    pub body: Option<Vec<u8>>,
}

/// Requests seen by a handler, in order; shared with the handler.
pub type Seen = Arc<Mutex<Vec<Dispatched>>>;

/// Reads each request's body to its end and answers 404 with a short body
/// (not a 2xx: a 2xx to CONNECT would be a tunnel).
struct Recorder(Seen);

impl h1::Handler for Recorder {
    fn handle<'a>(
        &'a self,
        _conn: &'a Arc<ConnInfo>,
        req: http::Request<Body>,
    ) -> h1::Handling<'a> {
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let at = {
                let mut seen = self.0.lock().unwrap();
                seen.push(Dispatched {
                    method: parts.method.as_str().to_owned(),
                    target: parts.uri.to_string(),
                    http11: parts.version == http::Version::HTTP_11,
                    body: None,
                });
                seen.len() - 1
            };
            if let Ok(b) = body.collect().await {
                self.0.lock().unwrap()[at].body = Some(b.to_bytes().to_vec());
            }
            let mut resp = Response::new(Body::full("no"));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            Ok(resp)
        })
    }
}

/// The client side of a scripted connection: writes `pieces` one write at
/// a time (letting the server run between them), reads everything the
/// server sends, waits `linger` with its side still open, then hangs up.
/// Returns what the server sent.
pub async fn script_client<C>(io: C, pieces: Vec<Vec<u8>>, linger: Duration) -> Vec<u8>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(io);
    let read = async {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out).await;
        out
    };
    let write = async {
        for p in pieces {
            if w.write_all(&p).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(linger).await;
        let _ = w.shutdown().await;
    };
    let (out, ()) = tokio::join!(read, write);
    out
}

/// Runs our HTTP/1 server connection over an in-memory pipe fed with
/// `pieces` (see [`script_client`]); returns the requests its handler saw
/// and the bytes it wrote. Meant for a runtime with paused time, where
/// the waits cost nothing; `None` if the connection did not end within
/// `limit` after the client hung up.
pub async fn serve_script(
    pieces: Vec<Vec<u8>>,
    max_head: usize,
    limit: Duration,
) -> Option<(Vec<Dispatched>, Vec<u8>)> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let seen: Seen = Arc::default();
    let addr = "127.0.0.1:1".parse().unwrap();
    let info = Arc::new(ConnInfo::new(addr, addr, Scheme::Http, None));
    let settings = h1::Settings {
        header_read_timeout: Duration::from_secs(3600),
        max_head,
        send_timeout: Duration::from_secs(3600),
    };
    let conn = h1::serve(
        server,
        info,
        Arc::new(Recorder(seen.clone())),
        settings,
        Arc::default(),
    );
    let (out, done) = tokio::join!(
        script_client(client, pieces, Duration::from_secs(10)),
        tokio::time::timeout(limit, conn)
    );
    done.ok()?;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    Some((seen, out))
}
