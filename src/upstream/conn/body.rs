//! A backend's response body, read straight from its connection.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::{BODY_READ, BODY_READ_MAX, BackendConn, BackendFraming, MAX_HEAD};
use crate::config::PoolKey;
use crate::h1::wire::{Dechunker, Step, take};
use crate::http::body::{Body, BoxError};

/// Where a response body is.
#[derive(Debug)]
enum Reading {
    Length(u64),
    Chunked(Dechunker),
    UntilClose,
}

/// A backend's response body, read from its connection as the client
/// side asks for it. Read to its end on a reusable connection, the
/// connection goes back to the pool; dropped early (the client left), the
/// connection is closed.
#[derive(Debug)]
pub struct UpstreamBody {
    conn: Option<BackendConn>,
    reading: Reading,
    reusable: bool,
    key: PoolKey,
    max_idle: Duration,
    /// Longest pause allowed between pieces (`upstream_read_timeout`).
    read_timeout: Duration,
    /// Armed the first time the body waits for the backend.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes arrived since the stall timer was last set.
    progressed: bool,
    /// Room asked for by the next read: grows while reads fill it.
    read_size: u32,
}

impl UpstreamBody {
    /// The body of a response just read from `conn`; `reusable` when the
    /// backend allows another request on it and the whole request went out.
    pub fn start(
        conn: BackendConn,
        framing: BackendFraming,
        reusable: bool,
        key: &PoolKey,
        max_idle: Duration,
        read_timeout: Duration,
    ) -> Body {
        let reading = match framing {
            BackendFraming::None | BackendFraming::Length(0) => {
                if reusable && conn.buf.is_empty() {
                    crate::upstream::pool::release(key, conn, max_idle);
                }
                return Body::Empty;
            }
            BackendFraming::Length(n) => Reading::Length(n),
            // Trailers may be as large as a response head.
            BackendFraming::Chunked => Reading::Chunked(Dechunker::new(MAX_HEAD)),
            BackendFraming::UntilClose => Reading::UntilClose,
        };
        Body::Streamed(Box::new(UpstreamBody {
            conn: Some(conn),
            reading,
            reusable,
            key: key.clone(),
            max_idle,
            read_timeout,
            stall: None,
            progressed: false,
            read_size: BODY_READ as u32,
        }))
    }

    /// The body ended: a clean connection goes back to the pool.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
        {
            crate::upstream::pool::release(&self.key, conn, self.max_idle);
        }
    }

    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match &mut self.reading {
                Reading::Length(rem) => {
                    if conn.buf.is_empty() {
                        Ok(Step::More)
                    } else {
                        let n = (*rem).min(conn.buf.len() as u64) as usize;
                        *rem -= n as u64;
                        Ok(Step::Data(take(&mut conn.buf, n)))
                    }
                }
                Reading::Chunked(d) => d.decode(&mut conn.buf),
                Reading::UntilClose if conn.buf.is_empty() => Ok(Step::More),
                Reading::UntilClose => {
                    let n = conn.buf.len();
                    Ok(Step::Data(take(&mut conn.buf, n)))
                }
            };
            match step {
                Ok(Step::Data(b)) => {
                    if matches!(self.reading, Reading::Length(0)) {
                        // Done now: release before the last frame goes out
                        // so `is_end_stream` can say so.
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Ok(Step::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    // The backend's fault: the client sees a cut-off body.
                    tracing::warn!(
                        upstream = self.key.as_str(),
                        reason = e,
                        "invalid chunked body from the backend; response cut off"
                    );
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            let conn = self.conn.as_mut().expect("checked above");
            let want = self.read_size as usize;
            conn.buf.reserve(want);
            let polled = conn.io.poll_read_some(&mut conn.buf, want, cx);
            let Poll::Ready(read) = polled else {
                return self.wait(cx);
            };
            self.progressed = true;
            match read {
                Ok(0) if matches!(self.reading, Reading::UntilClose) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(
                        "the backend closed the connection in the middle of the body".into(),
                    )));
                }
                Ok(n) => {
                    if n == want && want < BODY_READ_MAX {
                        self.read_size = (want * 2) as u32;
                    }
                }
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    /// The backend has nothing for us yet: how long it may stay quiet is
    /// `read_timeout` from the last piece (the timer is set once and only
    /// pushed forward after progress, not per read).
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let deadline = tokio::time::Instant::now() + self.read_timeout;
        let progressed = std::mem::take(&mut self.progressed);
        let timer = match &mut self.stall {
            Some(t) => {
                if progressed {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .stall
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if timer.as_mut().poll(cx).is_ready() {
            self.conn = None;
            return Poll::Ready(Some(Err(
                "the backend went quiet in the middle of the body (upstream_read_timeout)".into(),
            )));
        }
        Poll::Pending
    }

    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    pub fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.reading) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Reading::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}

impl crate::http::body::Stream for UpstreamBody {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        UpstreamBody::poll(self, cx)
    }
    fn is_end_stream(&self) -> bool {
        UpstreamBody::is_end_stream(self)
    }
    fn size_hint(&self) -> SizeHint {
        UpstreamBody::size_hint(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a whole body of `framing` that a backend thread writes as
    /// `wire`; returns the payload and the largest piece handed on.
    async fn read_all(framing: BackendFraming, wire: Vec<u8>) -> (Vec<u8>, usize) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let io = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (mut peer, _) = l.accept().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            peer.write_all(&wire).unwrap();
            peer
        });
        let key = PoolKey::new(&"127.0.0.1:1".parse().unwrap());
        let mut body = match UpstreamBody::start(
            BackendConn::new(io),
            framing,
            false,
            &key,
            Duration::from_secs(1),
            Duration::from_secs(10),
        ) {
            Body::Streamed(b) => b,
            _ => panic!("a non-empty body is streamed"),
        };
        let (mut got, mut largest) = (Vec::new(), 0);
        while let Some(frame) = std::future::poll_fn(|cx| body.poll(cx)).await {
            let data = frame.unwrap().into_data().unwrap();
            largest = largest.max(data.len());
            got.extend_from_slice(&data);
        }
        drop(writer.join().unwrap());
        (got, largest)
    }

    #[tokio::test]
    async fn a_bulk_body_arrives_whole_in_pieces_that_grow_past_the_first_read() {
        let payload: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i| (i % 251) as u8).collect();

        let (got, largest) = read_all(
            BackendFraming::Length(payload.len() as u64),
            payload.clone(),
        )
        .await;
        assert!(got == payload, "the Content-Length body differs");
        assert!(
            largest > BODY_READ && largest <= BODY_READ_MAX,
            "largest piece {largest} bytes"
        );

        let mut wire = Vec::new();
        for c in payload.chunks(100_000) {
            wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let (got, largest) = read_all(BackendFraming::Chunked, wire).await;
        assert!(got == payload, "the chunked body differs");
        assert!(largest <= BODY_READ_MAX, "largest piece {largest} bytes");

        // A small body is read with one small read, as before.
        let (got, _) = read_all(BackendFraming::Length(5), b"hello".to_vec()).await;
        assert_eq!(got, b"hello");
    }
}
