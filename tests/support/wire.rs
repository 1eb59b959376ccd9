//! HTTP/1.1 framing read off a byte stream by hand, for tests that play
//! a raw client or a raw backend (`client_wire.rs`, `upstream_wire.rs`).

use tokio::io::{AsyncRead, AsyncReadExt as _};

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
