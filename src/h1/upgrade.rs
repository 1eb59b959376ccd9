//! Handing an HTTP/1 connection over after `101 Switching Protocols`.
//!
//! A request that asks for an upgrade carries an [`OnUpgrade`] in its
//! extensions. When the answer is a 101, the connection writes it and then
//! gives up its socket (with any bytes the client already sent behind the
//! request) to whoever holds the `OnUpgrade`, and its own loop ends.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// A client connection's byte stream, whatever its transport.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The client's connection after a 101.
pub struct Upgraded {
    io: Box<dyn Stream>,
    early: BytesMut,
}

impl Upgraded {
    pub fn new(io: Box<dyn Stream>, early: BytesMut) -> Self {
        Upgraded { io, early }
    }
}

/// Waits for the connection to be handed over (a request extension, so
/// cloneable; the first to wait gets the connection).
#[derive(Debug, Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    pub(super) fn new(rx: oneshot::Receiver<Upgraded>) -> Self {
        OnUpgrade(Arc::new(Mutex::new(Some(rx))))
    }

    /// Resolves once the 101 has been written; fails if the connection
    /// ended first.
    pub async fn wait(self) -> io::Result<Upgraded> {
        let rx = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let gone = || io::Error::new(io::ErrorKind::ConnectionAborted, "no upgrade happened");
        rx.ok_or_else(gone)?.await.map_err(|_| gone())
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..n]);
            self.early.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upgraded({} early bytes)", self.early.len())
    }
}
