//! HTTP/1.1 framing read off a byte stream by hand, for tests that play
//! a raw client or a raw backend (`client_wire.rs`, `upstream_wire.rs`),
//! and [`RawBackend`], a backend on a real socket whose every byte the
//! test writes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Buffered reads of HTTP/1.1 framing from any byte stream.
pub struct Wire<R> {
    pub io: R,
    pub buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Wire<R> {
    pub fn new(io: R) -> Self {
        Wire {
            io,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; false at EOF or on an error (a
    /// reset counts as the end of the stream).
    pub async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.io.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// A message head up to and including its empty line, or `None` if the
    /// stream ends first.
    pub async fn head(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                return Some(self.buf.drain(..i + 4).collect());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// One line, without its CRLF.
    pub async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let mut l: Vec<u8> = self.buf.drain(..i + 2).collect();
                l.truncate(i);
                return Some(l);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    pub async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// A chunked body, decoded (extensions ignored, trailers skipped).
    pub async fn chunked(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await?;
            let text = String::from_utf8(line).ok()?;
            let size = usize::from_str_radix(text.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                while !self.line().await?.is_empty() {}
                return Some(out);
            }
            out.extend(self.exact(size).await?);
            if !self.line().await?.is_empty() {
                return None;
            }
        }
    }

    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }
}

/// A parsed message head.
#[derive(Debug, Clone)]
pub struct Head {
    /// The request line or status line.
    pub start: String,
    /// Names lowercased, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn parse(bytes: &[u8]) -> Head {
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
                None => (l.to_ascii_lowercase(), String::new()),
            })
            .collect();
        Head { start, headers }
    }

    /// Every value of `name` (lowercase), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    pub fn is_chunked(&self) -> bool {
        self.all("transfer-encoding").iter().any(|v| {
            v.rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
        })
    }

    pub fn content_length(&self) -> Option<usize> {
        self.get("content-length").and_then(|v| v.parse().ok())
    }
}

// ---------------------------------------------------------------------------
// Raw backends
// ---------------------------------------------------------------------------

/// One request as a backend read it off the wire.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which accepted connection it came on (0 = the first).
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub head: Head,
    /// The body, decoded from whatever framing the gateway used.
    pub body: Vec<u8>,
}

/// One accepted backend connection.
pub struct Conn {
    pub index: usize,
    pub wire: Wire<TcpStream>,
}

impl Conn {
    /// Reads a request head (not its body); `None` if the gateway closed
    /// the connection first.
    pub async fn read_head(&mut self) -> Option<Seen> {
        let head = Head::parse(&self.wire.head().await?);
        let mut parts = head.start.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        Some(Seen {
            conn: self.index,
            method,
            target,
            head,
            body: Vec::new(),
        })
    }

    /// Reads a whole request, its body by chunked framing or Content-Length.
    pub async fn read_request(&mut self) -> Option<Seen> {
        let mut req = self.read_head().await?;
        req.body = if req.head.is_chunked() {
            self.wire.chunked().await?
        } else if let Some(n) = req.head.content_length() {
            self.wire.exact(n).await?
        } else {
            Vec::new()
        };
        Some(req)
    }

    /// Writes bytes, ignoring errors (the gateway may hang up first).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.wire.io.write_all(bytes).await;
    }

    /// Writes bytes; false once the gateway stopped taking them.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.wire.io.write_all(bytes).await.is_ok()
    }

    /// Reads raw bytes past what was buffered: 0 once the gateway closed.
    pub async fn read_raw(&mut self, buf: &mut [u8]) -> usize {
        self.wire.io.read(buf).await.unwrap_or(0)
    }

    /// Keeps the connection open, reading nothing more, until the backend
    /// is dropped.
    pub async fn hold(self) {
        let _open = self;
        std::future::pending::<()>().await;
    }
}

/// A backend on `127.0.0.1:0` running `handler` for every connection.
/// Dropping it stops the listener and every connection task.
pub struct RawBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawBackend {
    pub async fn start<F, Fut>(handler: F) -> RawBackend
    where
        F: Fn(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw backend");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            // Dropped (and with it every connection task) on abort.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let index = count.fetch_add(1, Ordering::SeqCst);
                while conns.try_join_next().is_some() {}
                conns.spawn(handler(Conn {
                    index,
                    wire: Wire::new(stream),
                }));
            }
        });
        RawBackend {
            addr,
            accepted,
            task,
        }
    }

    /// A backend that reads each request head and answers `answer`, then
    /// keeps the connection open without reading (closing only on drop).
    pub async fn answer_then_hold(answer: Vec<u8>) -> RawBackend {
        RawBackend::start(move |mut c| {
            let answer = answer.clone();
            async move {
                if c.read_head().await.is_some() {
                    c.send(&answer).await;
                    c.hold().await;
                }
            }
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
