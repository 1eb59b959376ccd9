//! When a request's access-log line is written: once its response has been
//! sent to the end, so `bytes_out` and `duration_ms` are what the client
//! actually got and how long it took (a large download is not logged at
//! its first byte). A client that goes away still gets its line:
//! - before any response: status 499 (nginx's "client closed request"),
//!   error `client_closed`;
//! - during the response body: the status that was sent, the bytes that
//!   made it out, error `client_closed`.
//!
//! Only built when the access log is enabled (`RUST_LOG`), so a gateway
//! with the log off pays nothing here.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use http_body::{Body as _, Frame, SizeHint};

use super::ConnInfo;
use crate::http::body::{Body, BoxError};
use crate::telemetry::access::{AccessLine, Format};

/// nginx's code for a request whose client closed the connection first.
pub const CLIENT_CLOSED: u16 = 499;

/// Everything an access-log line needs, owned, so it can outlive the
/// request handler inside the response body.
pub struct Record {
    start: Instant,
    conn: Arc<ConnInfo>,
    request_id: HeaderValue,
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    version: http::Version,
    format: Format,
    bytes_in: Option<u64>,
    pub client_ip: Option<IpAddr>,
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub user: String,
    pub error: &'static str,
}

impl Record {
    /// At the start of a request (reference-counted clones, no copies).
    pub fn start(
        start: Instant,
        conn: &Arc<ConnInfo>,
        request_id: &HeaderValue,
        req: &http::Request<crate::http::body::Body>,
        format: crate::config::AccessLogFormat,
    ) -> Self {
        let header = |name| req.headers().get(name).cloned();
        Record {
            start,
            conn: conn.clone(),
            request_id: request_id.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: header(http::header::HOST),
            user_agent: header(http::header::USER_AGENT),
            referer: header(http::header::REFERER),
            version: req.version(),
            format: match format {
                crate::config::AccessLogFormat::Default => Format::Default,
                crate::config::AccessLogFormat::Combined => Format::Combined,
            },
            bytes_in: crate::h1::wire::content_length(req.headers()),
            client_ip: None,
            status: CLIENT_CLOSED,
            route: None,
            upstream: None,
            user: String::new(),
            error: "client_closed",
        }
    }

    /// Writes the line.
    pub fn emit(&self, bytes_out: Option<u64>) {
        let peer_ip = crate::snapshot::canonical_ip(self.conn.peer.ip());
        let client_ip = self.client_ip.unwrap_or(peer_ip);
        AccessLine {
            request_id: self.request_id.to_str().unwrap_or(""),
            client_ip,
            client_text: (client_ip == peer_ip)
                .then(|| self.conn.peer_value.to_str().ok())
                .flatten(),
            method: self.method.as_str(),
            // The name without the port, from `:authority` (HTTP/2,
            // absolute-form) or `Host`: the same for both protocols.
            host: host_name(
                self.uri
                    .authority()
                    .map(|a| a.as_str())
                    .or_else(|| self.host.as_ref().and_then(|h| h.to_str().ok()))
                    .unwrap_or(""),
            ),
            path: self.uri.path(),
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out,
            duration: self.start.elapsed(),
            route: self.route.as_deref().unwrap_or(""),
            upstream: self.upstream.as_deref().unwrap_or(""),
            user: &self.user,
            error: self.error,
            user_agent: text(&self.user_agent),
            // Like the path, without its query: a referring URL can
            // carry tokens (an OAuth callback's `code`, say).
            referer: text(&self.referer).split(['?', '#']).next().unwrap_or(""),
            protocol: protocol(self.version),
            tls_version: self.conn.tls_version,
        }
        .emit(self.format);
    }
}

/// A header's value as text (`""` when absent or not visible ASCII).
fn text(v: &Option<HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// `host[:port]` (or `[v6]:port`, or `user@host`) → the host name.
fn host_name(authority: &str) -> &str {
    let a = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if a.starts_with('[') {
        return a.find(']').map_or(a, |end| &a[..=end]);
    }
    match a.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => a,
    }
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Holds a request's record while its handler runs: if the handler is
/// dropped (the client went away) the line is written with status 499.
/// The record starts life in the box that becomes the response body's
/// wrapper ([`Logged::wrap`]): one allocation per logged request, and the
/// handler's state holds a pointer, not the record.
#[derive(Default)]
pub struct Guard(Option<Box<Logged>>);

impl Guard {
    /// A guard holding `record` (None: this request is not logged).
    pub fn new(record: Option<Record>) -> Self {
        Guard(record.map(|r| {
            Box::new(Logged {
                inner: Body::Empty,
                record: Some(r),
                sent: 0,
            })
        }))
    }

    /// The record, to fill in as the request goes.
    pub fn record(&mut self) -> Option<&mut Record> {
        self.0.as_mut().and_then(|l| l.record.as_mut())
    }

    /// Hands the record over to `body`: the line is written when the body
    /// ends (at once when there is none left to send).
    pub fn wrap(mut self, body: Body) -> Body {
        match self.0.take() {
            Some(logged) => Logged::wrap(logged, body),
            None => body,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(r) = self.0.take().and_then(|mut l| l.record.take()) {
            r.emit(None);
        }
    }
}

/// A response body that writes the access-log line when it ends.
pub struct Logged {
    inner: Body,
    record: Option<Record>,
    sent: u64,
}

impl Logged {
    /// Wraps `inner`, or writes the line at once when there is no body
    /// left to send.
    fn wrap(mut logged: Box<Logged>, inner: Body) -> Body {
        if inner.is_end_stream() {
            if let Some(r) = logged.record.take() {
                r.emit(Some(0));
            }
            return inner;
        }
        logged.inner = inner;
        Body::Streamed(logged)
    }

    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.sent += d.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish("");
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("response_body_failed"),
            Poll::Ready(None) => self.finish(""),
            Poll::Pending => {}
        }
        r
    }

    fn finish(&mut self, error: &'static str) {
        if let Some(mut r) = self.record.take() {
            if !error.is_empty() {
                r.error = error;
            }
            r.emit(Some(self.sent));
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl crate::http::body::Stream for Logged {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Logged::poll(self, cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        Logged::size_hint(self)
    }
}

impl Drop for Logged {
    /// The servers (our HTTP/1 codec, hyper's HTTP/2) stop polling once a
    /// body of known length is complete, and drop a body whose client went
    /// away: tell the two apart.
    fn drop(&mut self) {
        if let Some(r) = &self.record {
            // A HEAD response's body is never sent, so never polled.
            let error = if self.inner.is_end_stream() || r.method == Method::HEAD {
                ""
            } else {
                "client_closed"
            };
            self.finish(error);
        }
    }
}

impl std::fmt::Debug for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logged")
            .field("inner", &self.inner)
            .field("sent", &self.sent)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn hosts_are_logged_without_their_port() {
        for (authority, want) in [
            ("app.example.com", "app.example.com"),
            ("127.0.0.1:8080", "127.0.0.1"),
            ("[::1]:8443", "[::1]"),
            ("[::1]", "[::1]"),
            ("user@app.test:80", "app.test"),
            ("", ""),
        ] {
            assert_eq!(host_name(authority), want, "{authority}");
        }
    }
}
