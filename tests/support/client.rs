//! Test clients: [`TestClient`] (hyper-util's pooled client, HTTP/1.1 or
//! h2c prior knowledge, optionally pinned to one address so any host name
//! can be used in URLs without DNS), and [`raw`] for requests a client library would
//! normalise away (underscored header names, duplicate headers, hand-made
//! `Connection` headers, invalid Host values).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::PatternStream;

/// Request/response body used by the harness: empty, a fixed buffer, or
/// `n` bytes of the test pattern streamed chunk by chunk (never held whole).
pub enum TestBody {
    Full(Option<Bytes>),
    Pattern(PatternStream),
}

impl TestBody {
    pub fn empty() -> Self {
        TestBody::Full(None)
    }
    pub fn pattern(n: u64) -> Self {
        TestBody::Pattern(PatternStream::new(n))
    }
}

impl From<&'static str> for TestBody {
    fn from(s: &'static str) -> Self {
        TestBody::Full(Some(Bytes::from_static(s.as_bytes())))
    }
}
impl From<String> for TestBody {
    fn from(s: String) -> Self {
        TestBody::Full(Some(Bytes::from(s)))
    }
}
impl From<Vec<u8>> for TestBody {
    fn from(v: Vec<u8>) -> Self {
        TestBody::Full(Some(Bytes::from(v)))
    }
}
impl From<Bytes> for TestBody {
    fn from(b: Bytes) -> Self {
        TestBody::Full(Some(b))
    }
}
impl From<()> for TestBody {
    fn from(_: ()) -> Self {
        TestBody::empty()
    }
}

impl http_body::Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            TestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            TestBody::Pattern(p) => Poll::Ready(p.next_chunk().map(|c| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TestBody::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            TestBody::Pattern(p) => p.remaining() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            TestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            TestBody::Pattern(p) => SizeHint::with_exact(p.remaining()),
        }
    }
}

/// A buffered response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response ({}) is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// A header as a string (the first if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Connects a request to the IP address its URL names
/// (`http://127.0.0.1:PORT/...`), and a URL naming a host
/// (`http://app.test/...`) to the pinned address, so tests can put any
/// host name in a URL without DNS.
#[derive(Clone, Debug)]
pub struct Connector {
    pinned: Option<SocketAddr>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let pinned = self.pinned;
        Box::pin(async move {
            let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(80);
            let addr = match (host.parse::<std::net::IpAddr>(), pinned) {
                (Ok(ip), _) => SocketAddr::new(ip, port),
                (Err(_), Some(pinned)) => pinned,
                (Err(_), None) => {
                    return Err(std::io::Error::other(format!(
                        "test client: {uri} names no IP address and the client is not pinned"
                    )));
                }
            };
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The default bound on one request (headers and buffered body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client for tests. Cheap to clone (shares its pool).
#[derive(Clone)]
pub struct TestClient {
    inner: Client<Connector, TestBody>,
    timeout: Duration,
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClient {
    /// HTTP/1.1 to the IP address and port each URL names.
    pub fn new() -> Self {
        Self::build(None, false, true)
    }

    /// HTTP/1.1; a URL naming a host goes to `addr`
    /// (`http://app.example.com/x` connects to `addr` and sends
    /// `Host: app.example.com`), a URL naming an IP address goes there.
    pub fn to(addr: SocketAddr) -> Self {
        Self::build(Some(addr), false, true)
    }

    /// Like [`TestClient::to`] but never reuses a connection.
    pub fn to_fresh_connections(addr: SocketAddr) -> Self {
        Self::build(Some(addr), false, false)
    }

    /// HTTP/2 with prior knowledge (h2c), pinned to `addr` like [`TestClient::to`].
    pub fn h2c_to(addr: SocketAddr) -> Self {
        Self::build(Some(addr), true, true)
    }

    fn build(pinned: Option<SocketAddr>, h2: bool, pool: bool) -> Self {
        let mut b = Client::builder(TokioExecutor::new());
        b.http2_only(h2);
        if !pool {
            b.pool_max_idle_per_host(0);
        }
        TestClient {
            inner: b.build(Connector { pinned }),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Changes the bound on each request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET url`; panics on transport errors.
    pub async fn get(&self, url: &str) -> Resp {
        self.request(Method::GET, url, &[], TestBody::empty()).await
    }

    /// `GET url` with extra headers; panics on transport errors.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(Method::GET, url, headers, TestBody::empty())
            .await
    }

    /// Sends a request and buffers the response; panics on transport errors.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<TestBody>,
    ) -> Resp {
        match self.try_request(method.clone(), url, headers, body).await {
            Ok(r) => r,
            Err(e) => panic!("{method} {url} failed: {e}"),
        }
    }

    /// Sends a request and buffers the response; transport errors and
    /// timeouts are returned as text.
    pub async fn try_request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<TestBody>,
    ) -> Result<Resp, String> {
        let req = build_request(method, url, headers, body.into());
        let fut = async {
            let resp = self.inner.request(req).await.map_err(error_chain)?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the response body: {}", error_chain(e)))?
                .to_bytes();
            Ok(Resp {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("no complete response within {:?}", self.timeout)),
        }
    }

    /// Sends a request and returns the response with its body unread, for
    /// streaming. Bounded by the client timeout up to the response headers.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<TestBody>,
    ) -> Result<Response<Incoming>, String> {
        let req = build_request(method, url, headers, body.into());
        match tokio::time::timeout(self.timeout, self.inner.request(req)).await {
            Ok(r) => r.map_err(error_chain),
            Err(_) => Err(format!("no response headers within {:?}", self.timeout)),
        }
    }
}

fn build_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Request<TestBody> {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .unwrap_or_else(|e| panic!("bad test request {url}: {e}"));
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    req
}

/// The full error chain as one line.
pub fn error_chain(e: impl std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Reads a response body to its end, returning (length, sha256 hex).
/// Holds one frame at a time.
pub async fn hash_body(body: Incoming) -> Result<(u64, String), String> {
    let mut body = body;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(error_chain)?;
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            ctx.update(&data);
        }
    }
    Ok((len, super::hex(ctx.finish().as_ref())))
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "raw response ({}) is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends `head_lines` (request line and headers, written exactly as given,
/// each without its CRLF) plus `body` over a new TCP connection and reads
/// one response. `Content-Length` is added for a non-empty body unless a
/// line already sets it; nothing else is added, so include `Host` yourself.
pub async fn raw(addr: SocketAddr, head_lines: &[&str], body: &[u8]) -> RawResponse {
    let mut req = Vec::new();
    for l in head_lines {
        req.extend_from_slice(l.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    let has_cl = head_lines
        .iter()
        .any(|l| l.to_ascii_lowercase().starts_with("content-length:"));
    if !body.is_empty() && !has_cl {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    raw_bytes(addr, &req).await
}

/// Writes `request` verbatim on a new connection and reads one response
/// (by Content-Length, chunked framing, or to EOF). Panics after 20 s.
pub async fn raw_bytes(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = super::within(
        "raw connect",
        Duration::from_secs(20),
        TcpStream::connect(addr),
    )
    .await
    .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    exchange(&mut s, request).await
}

/// Writes `request` verbatim on `stream` and reads one response. Panics
/// after 20 s.
pub async fn exchange(stream: &mut TcpStream, request: &[u8]) -> RawResponse {
    stream.write_all(request).await.expect("write raw request");
    read_response(stream).await
}

/// Reads one response from `stream` (by Content-Length, chunked framing,
/// or to EOF). Panics after 20 s.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let fut = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(r) = parse_response(&buf, false) {
                return r;
            }
            let n = stream.read(&mut chunk).await.expect("read raw response");
            if n == 0 {
                return parse_response(&buf, true).unwrap_or_else(|| {
                    panic!(
                        "connection closed before a complete response; got {:?}",
                        String::from_utf8_lossy(&buf)
                    )
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    super::within("raw HTTP response", Duration::from_secs(20), fut).await
}

/// Parses one response if `buf` holds all of it, skipping interim 1xx
/// responses (`100 Continue`) other than `101`. With `eof`, a response
/// without framing ends at the end of `buf`.
fn parse_response(mut buf: &[u8], eof: bool) -> Option<RawResponse> {
    let mut head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    while buf.starts_with(b"HTTP/1.1 1") && !buf.starts_with(b"HTTP/1.1 101") {
        buf = &buf[head_end + 4..];
        head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    }
    let head = std::str::from_utf8(&buf[..head_end]).expect("response head is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let rest = &buf[head_end + 4..];
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if status == 101 || status == 204 || status == 304 {
        Vec::new()
    } else if get("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest)?
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().expect("content-length");
        if rest.len() < n {
            return None;
        }
        rest[..n].to_vec()
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            // Trailers (if any) end with an empty line.
            return b.windows(2).any(|w| w == b"\r\n").then_some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
