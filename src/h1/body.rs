//! A client's request body on an HTTP/1 connection: the connection's side
//! of a [`Fed`](crate::http::body::Fed) body. Nothing is read before the
//! body asks for it, and `Expect: 100-continue` is answered only once the
//! body is wanted.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::ClientConn;
use super::wire::{Dechunker, Step, take};
use crate::http::body::{Demand, Feed};

/// Room asked for before each read of a request body.
const BODY_READ: usize = 16 * 1024;
pub(super) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How a request body is delimited.
pub(super) enum Reading {
    Length(u64),
    Chunked(Dechunker),
}

/// The connection's side of a request body: reads and decodes pieces
/// when the body asks, after a `100 Continue` if the client expects one.
pub(super) struct BodyReader {
    pub(super) feed: Feed,
    reading: Reading,
    /// Bytes of `100 Continue` still to write (then flush).
    continue_left: usize,
    continue_flush: bool,
    /// Done feeding (complete, failed or dropped).
    pub(super) finished: bool,
    /// The body's framing broke: the connection cannot be reused.
    pub(super) broken: bool,
    /// The client hung up (or its connection broke) mid-body.
    pub(super) client_gone: bool,
    /// The body broke after the piece just delivered.
    deferred: Option<&'static str>,
}

impl BodyReader {
    pub(super) fn new(feed: Feed, reading: Reading, expect_continue: bool) -> Self {
        BodyReader {
            feed,
            reading,
            continue_left: if expect_continue { CONTINUE.len() } else { 0 },
            continue_flush: expect_continue,
            finished: false,
            broken: false,
            client_gone: false,
            deferred: None,
        }
    }

    /// Body bytes the handler left unread, when they can simply be read
    /// and dropped after the answer: a known length, nothing broken, and
    /// no `100 Continue` still owed (a client waiting for one may never
    /// send the body, RFC 9110 10.1.1).
    pub(super) fn unread_length(&self) -> Option<u64> {
        if self.broken || self.client_gone || self.feed.complete() {
            return None;
        }
        let owed_continue = self.continue_left == CONTINUE.len() && self.continue_left > 0;
        match self.reading {
            Reading::Length(rem) if !owed_continue => Some(rem),
            _ => None,
        }
    }

    /// The rest of a `100 Continue` whose writing started and did not
    /// finish (the client was not reading): it must go out whole before
    /// the final answer, or the client would read half a status line
    /// followed by another.
    pub(super) fn unsent_continue(&self) -> &'static [u8] {
        if self.continue_left < CONTINUE.len() {
            &CONTINUE[CONTINUE.len() - self.continue_left..]
        } else {
            &[]
        }
    }

    /// What of `100 Continue` must precede a `101`: all of it not yet
    /// written, sent or not (RFC 9110 7.8: a server that switches
    /// protocols on a request expecting 100-continue sends the 100 first).
    pub(super) fn continue_before_switching(&self) -> &'static [u8] {
        &CONTINUE[CONTINUE.len() - self.continue_left..]
    }

    /// `Ready`: something was delivered (or the body ended); `Pending`:
    /// nothing wanted, or waiting for the client.
    pub(super) fn poll_feed<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut ClientConn<I>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        match self.feed.demand(cx) {
            Demand::Finished => {
                self.finished = true;
                return Poll::Pending;
            }
            Demand::Idle => return Poll::Pending,
            Demand::Read => {}
        }
        if let Some(why) = self.deferred.take() {
            self.broken = true;
            return self.fail(why);
        }
        match self.poll_continue(&mut conn.io, cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(())) => {
                self.client_gone = true;
                return self.fail("the client connection broke");
            }
            Poll::Pending => return Poll::Pending,
        }
        loop {
            let step = match &mut self.reading {
                Reading::Length(0) => Ok(Step::End),
                Reading::Length(_) if conn.pending.is_empty() => Ok(Step::More),
                Reading::Length(rem) => {
                    let n = (*rem).min(conn.pending.len() as u64) as usize;
                    *rem -= n as u64;
                    Ok(Step::Data(take(&mut conn.pending, n)))
                }
                Reading::Chunked(d) => d.decode(&mut conn.pending),
            };
            match step {
                Ok(Step::Data(b)) => return self.deliver(b, &mut conn.pending, cx),
                Ok(Step::End) => {
                    self.feed.deliver(Ok(None), true, cx);
                    self.finished = true;
                    return Poll::Ready(());
                }
                Err(why) => {
                    self.broken = true;
                    return self.fail(why);
                }
                Ok(Step::More) => {}
            }
            conn.pending.reserve(BODY_READ);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.pending) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.client_gone = true;
                    return self.fail("the client closed the connection in the middle of the body");
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Writes the `100 Continue` still owed, then flushes it; `Err` if the
    /// client's connection broke.
    #[inline(always)]
    fn poll_continue<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ()>> {
        while self.continue_left > 0 {
            let from = CONTINUE.len() - self.continue_left;
            match Pin::new(&mut *io).poll_write(cx, &CONTINUE[from..]) {
                Poll::Ready(Ok(n)) if n > 0 => self.continue_left -= n,
                Poll::Ready(_) => return Poll::Ready(Err(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.continue_flush {
            match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.continue_flush = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Hands a decoded piece to the body (with the chunks buffered behind
    /// it, up to [`GATHER`]).
    #[inline(always)]
    fn deliver(
        &mut self,
        b: Bytes,
        pending: &mut bytes::BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let (b, end) = match &mut self.reading {
            Reading::Chunked(d) if b.len() < GATHER => gather(d, pending, b),
            _ => (b, None),
        };
        let last = matches!(self.reading, Reading::Length(0)) || end == Some(Ok(()));
        if let Some(Err(why)) = end {
            // What came before the bad bytes goes first.
            self.deferred = Some(why);
        }
        self.feed.deliver(Ok(Some(b)), last, cx);
        self.finished = last;
        Poll::Ready(())
    }

    fn fail(&mut self, why: &'static str) -> Poll<()> {
        // The body reports it; the connection closes after the response.
        self.broken = true;
        self.finished = true;
        let waker = std::task::Waker::noop();
        self.feed
            .deliver(Err(why), false, &Context::from_waker(waker));
        Poll::Ready(())
    }
}

/// Chunks already buffered are joined to the piece just decoded, up to
/// this size: a client sending many tiny chunks then costs one hand-over,
/// and one write to the backend, per read rather than per chunk.
const GATHER: usize = 16 * 1024;

/// Joins to `first` the chunks that follow it in `pending`. Also returns
/// how the body ended, if it did: `Ok` at the last chunk, `Err` at bad
/// framing (reported after this piece).
fn gather(
    d: &mut Dechunker,
    pending: &mut bytes::BytesMut,
    first: Bytes,
) -> (Bytes, Option<Result<(), &'static str>>) {
    let mut acc: Option<bytes::BytesMut> = None;
    let end = loop {
        if acc.as_ref().map_or(first.len(), |a| a.len()) >= GATHER {
            break None;
        }
        match d.decode(pending) {
            Ok(Step::Data(b)) => acc
                .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                .extend_from_slice(&b),
            Ok(Step::More) => break None,
            Ok(Step::End) => break Some(Ok(())),
            Err(why) => break Some(Err(why)),
        }
    };
    (acc.map_or(first, bytes::BytesMut::freeze), end)
}
