//! A request body fed on demand by the connection it arrives on.
//!
//! The connection task owns the socket; the body is a small shared slot.
//! When whoever holds the body (the forwarding code, normally polled by
//! that same task) asks for more, the slot says so, and the connection
//! reads and decodes the next piece into it. Nothing is read before it is
//! asked for, so a slow backend slows the client down (back-pressure).
//! The HTTP/1 server feeds it (`h1::body`); nothing here reads sockets.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::BoxError;

/// Where the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Reading,
    Done,
    Failed(&'static str),
}

/// The slot shared by the body and its connection.
#[derive(Debug)]
pub struct Slot {
    data: Option<Bytes>,
    state: State,
    /// The body has been polled and has nothing: read some.
    want: bool,
    /// The body was dropped before its end.
    dropped: bool,
    body_waker: Option<Waker>,
    conn_waker: Option<Waker>,
}

/// The connection's handle on a body it feeds.
#[derive(Debug, Clone)]
pub struct Feed(Arc<Mutex<Slot>>);

/// A request body read from a client connection, fed by [`Feed`].
#[derive(Debug)]
pub struct Fed {
    slot: Arc<Mutex<Slot>>,
    /// Bytes still to come when the length is known.
    remaining: Option<u64>,
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A body and the connection's handle on it.
pub fn fed(length: Option<u64>) -> (Fed, Feed) {
    let slot = Arc::new(Mutex::new(Slot {
        data: None,
        state: State::Reading,
        want: false,
        dropped: false,
        body_waker: None,
        conn_waker: None,
    }));
    (
        Fed {
            slot: slot.clone(),
            remaining: length,
        },
        Feed(slot),
    )
}

impl Fed {
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = lock(&self.slot);
        if let Some(b) = s.data.take() {
            if let Some(r) = &mut self.remaining {
                *r = r.saturating_sub(b.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        match s.state {
            State::Done => return Poll::Ready(None),
            State::Failed(why) => return Poll::Ready(Some(Err(why.into()))),
            State::Reading => {}
        }
        s.want = true;
        if !s
            .body_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            s.body_waker = Some(cx.waker().clone());
        }
        // Polled from another task than the connection's: wake it.
        if let Some(w) = &s.conn_waker
            && !w.will_wake(cx.waker())
        {
            w.wake_by_ref();
        }
        Poll::Pending
    }

    pub fn is_end_stream(&self) -> bool {
        let s = lock(&self.slot);
        s.data.is_none() && s.state == State::Done
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Fed {
    fn drop(&mut self) {
        let mut s = lock(&self.slot);
        s.dropped = true;
        if let Some(w) = s.conn_waker.take() {
            w.wake();
        }
    }
}

/// What the connection should do for its body now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// Read and deliver the next piece.
    Read,
    /// Nothing wanted right now.
    Idle,
    /// The body is complete, failed, or was dropped: stop feeding.
    Finished,
}

impl Feed {
    /// Registers the connection's waker and says what the body wants.
    pub fn demand(&self, cx: &Context<'_>) -> Demand {
        let mut s = lock(&self.0);
        if !s
            .conn_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            s.conn_waker = Some(cx.waker().clone());
        }
        if s.dropped || s.state != State::Reading {
            Demand::Finished
        } else if s.want && s.data.is_none() {
            Demand::Read
        } else {
            Demand::Idle
        }
    }

    /// Hands over the next piece of the body (`last`: nothing follows it),
    /// its end (`Ok(None)`), or why it broke.
    pub fn deliver(
        &self,
        piece: Result<Option<Bytes>, &'static str>,
        last: bool,
        cx: &Context<'_>,
    ) {
        let mut s = lock(&self.0);
        match piece {
            Ok(Some(b)) => {
                s.data = Some(b);
                if last {
                    s.state = State::Done;
                }
            }
            Ok(None) => s.state = State::Done,
            Err(why) => s.state = State::Failed(why),
        }
        s.want = false;
        if let Some(w) = &s.body_waker
            && !w.will_wake(cx.waker())
        {
            w.wake_by_ref();
        }
    }

    /// The whole body has been read from the connection.
    pub fn complete(&self) -> bool {
        lock(&self.0).state == State::Done
    }
}
