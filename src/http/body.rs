//! One body type for everything the gateway sends: streamed bodies from the
//! other side of the proxy, and small fixed bodies we make ourselves. An enum
//! rather than a boxed trait object, so no allocation per request.
//!
//! Request bodies going upstream are wrapped in [`Limited`] (only when the
//! request has a body): it enforces the route's `max_body` and the server's
//! `request_body_timeout`, and records which limit tripped so the caller can
//! answer 413 or 408 instead of a generic upstream error. It can also read
//! the start of the body ahead ([`Limited::read_ahead`], request
//! buffering) and hand it out again before the rest.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

pub use self::fed::{Demand, Fed, Feed, fed};

mod fed;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Default)]
pub enum Body {
    #[default]
    Empty,
    /// A complete body we made (pages, `respond` routes).
    Full(Option<Bytes>),
    /// Streamed from a client or an upstream.
    Incoming(Incoming),
    /// A client's request body under limits.
    Limited(Box<Limited>),
    /// A request body read from an HTTP/1 client connection, fed on
    /// demand by the connection ([`Fed`]).
    Client(Fed),
    /// A body made by a floor above this one: a backend's response read
    /// from its pooled connection, or a response whose access-log line is
    /// written when it ends. Boxed: inline it would triple the size of
    /// every body, request and response moved along the request path (and
    /// those bodies were boxed before they were behind a trait).
    Streamed(Box<dyn Stream>),
}

/// A body kind that lives above this module (see [`Body::Streamed`]): the
/// three calls of [`http_body::Body`], on `&mut self` since the boxed
/// value never moves.
pub trait Stream: Send + Sync + std::fmt::Debug {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    fn is_end_stream(&self) -> bool;
    fn size_hint(&self) -> SizeHint;
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        if b.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(b))
        }
    }
}

impl From<Incoming> for Body {
    fn from(i: Incoming) -> Self {
        Body::Incoming(i)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(i) => Pin::new(i).poll_frame(cx).map_err(Into::into),
            Body::Limited(l) => l.poll(cx),
            Body::Client(c) => c.poll(cx),
            Body::Streamed(s) => s.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(i) => i.is_end_stream(),
            Body::Limited(l) => l.is_end_stream(),
            Body::Client(c) => c.is_end_stream(),
            Body::Streamed(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Incoming(i) => i.size_hint(),
            Body::Limited(l) => l.size_hint(),
            Body::Client(c) => c.size_hint(),
            Body::Streamed(s) => s.size_hint(),
        }
    }
}

/// Which limit stopped a request body (or that it finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    TooLarge = 1,
    Idle = 2,
}

/// Shared between a [`Limited`] body and whoever sent it upstream.
#[derive(Debug, Clone, Default)]
pub struct TripWire(Arc<AtomicU8>);

impl TripWire {
    /// True once the whole body has been read from the client.
    pub fn body_done(&self) -> bool {
        self.0.load(Ordering::Acquire) == DONE
    }

    pub fn get(&self) -> Option<Tripped> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(Tripped::TooLarge),
            2 => Some(Tripped::Idle),
            _ => None,
        }
    }
    fn set(&self, t: Tripped) {
        self.0.store(t as u8, Ordering::Release);
    }
}

const DONE: u8 = 3;

/// A request body with a size limit and an idle timeout between frames.
#[derive(Debug)]
pub struct Limited {
    inner: Body,
    limit: Option<u64>,
    seen: u64,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    wire: TripWire,
    /// What [`Limited::read_ahead`] read, given out first.
    ahead: BytesMut,
    /// `inner` has ended (it is not polled again).
    ended: bool,
}

impl Limited {
    pub fn new(inner: Body, limit: Option<u64>, idle: Duration, wire: TripWire) -> Self {
        Limited {
            inner,
            limit,
            seen: 0,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            wire,
            ahead: BytesMut::new(),
            ended: false,
        }
    }

    /// Request buffering: reads the body until it ends or more than `max`
    /// bytes have arrived, under the same limits as when streamed, and
    /// keeps what it read to give out first. `Ok(Some(n))`: the whole
    /// body, `n` bytes, is here; `Ok(None)`: it is longer than `max`, the
    /// rest follows as it comes. An error is the client's (the trip wire
    /// says whether a limit tripped). Trailers are dropped (they are not
    /// forwarded anyway).
    pub async fn read_ahead(&mut self, max: u64) -> Result<Option<u64>, BoxError> {
        loop {
            match std::future::poll_fn(|cx| self.poll_inner(cx)).await {
                None => return Ok(Some(self.ahead.len() as u64)),
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        self.ahead.extend_from_slice(d);
                    }
                    if self.ahead.len() as u64 > max {
                        return Ok(None);
                    }
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(self.ahead.len() as u64)
        } else {
            let mut h = self.inner.size_hint();
            let ahead = self.ahead.len() as u64;
            h.set_lower(h.lower().saturating_add(ahead));
            if let Some(u) = h.upper() {
                h.set_upper(u.saturating_add(ahead));
            }
            h
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.ahead.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(self.ahead.split().freeze()))));
        }
        self.poll_inner(cx)
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.seen += d.len() as u64;
                    if self.limit.is_some_and(|l| self.seen > l) {
                        self.wire.set(Tripped::TooLarge);
                        return Poll::Ready(Some(Err(
                            "request body over the route's max_body".into()
                        )));
                    }
                }
                let deadline = tokio::time::Instant::now() + self.idle;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                self.ended = true;
                self.wire.0.store(DONE, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.timer.as_mut().poll(cx).is_ready() {
                    self.wire.set(Tripped::Idle);
                    return Poll::Ready(Some(Err(
                        "request body stalled past request_body_timeout".into(),
                    )));
                }
                Poll::Pending
            }
        }
    }
}
