//! A buffered stdout for log lines. `tracing`'s default writer makes one
//! `write` syscall per event, which on a busy gateway means one per request
//! for the access log. Here events go into a shared buffer that a
//! background thread flushes every [`FLUSH_EVERY`] (and that is flushed at
//! once when it fills up, for events at WARN and above, and at exit), so
//! syscalls are batched while a quiet gateway's lines still show up
//! promptly.

use std::io::{self, BufWriter, Stdout, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a log line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct BufferedStdout {
    inner: Arc<Mutex<BufWriter<Stdout>>>,
}

impl BufferedStdout {
    /// Creates the buffer and starts the thread that flushes it.
    pub fn start() -> Self {
        let inner = Arc::new(Mutex::new(BufWriter::with_capacity(
            64 * 1024,
            io::stdout(),
        )));
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                while let Some(inner) = weak.upgrade() {
                    if let Ok(mut w) = inner.lock() {
                        let _ = w.flush();
                    }
                    drop(inner);
                    std::thread::sleep(FLUSH_EVERY);
                }
            })
            .expect("start the log flush thread");
        BufferedStdout { inner }
    }

    /// Appends one complete line (the access log's fast path).
    pub fn write_line(&self, line: &[u8]) {
        if let Ok(mut w) = self.inner.lock() {
            let _ = w.write_all(line);
        }
    }

    /// Writes out whatever is buffered (call before exiting).
    pub fn flush(&self) {
        if let Ok(mut w) = self.inner.lock() {
            let _ = w.flush();
        }
    }
}

/// One event's writer: the whole formatted line goes in under one lock.
pub struct Line<'a> {
    out: &'a BufferedStdout,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self
            .out
            .inner
            .lock()
            .map_err(|_| io::Error::other("log buffer poisoned"))?;
        w.write_all(buf)?;
        if self.urgent {
            w.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            out: self,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        Line {
            out: self,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}
