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
use crate::telemetry::access::AccessLine;

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
    ) -> Self {
        Record {
            start,
            conn: conn.clone(),
            request_id: request_id.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: req.headers().get(http::header::HOST).cloned(),
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
            host: self
                .uri
                .host()
                .or_else(|| self.host.as_ref().and_then(|h| h.to_str().ok()))
                .unwrap_or(""),
            path: self.uri.path(),
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out,
            duration: self.start.elapsed(),
            route: self.route.as_deref().unwrap_or(""),
            upstream: self.upstream.as_deref().unwrap_or(""),
            user: &self.user,
            error: self.error,
        }
        .emit();
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
