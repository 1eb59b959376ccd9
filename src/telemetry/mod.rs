//! Logging: JSON lines to stdout by default (what Promtail/Loki ingest from
//! `docker logs`), a human format on request or on a terminal. The filter is
//! `RUST_LOG`-style. Access-log lines use the target `portcullis::access`.

pub mod access;
pub mod metrics;
pub mod writer;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, pretty otherwise.
    Auto,
    Json,
    Pretty,
}

/// Installs the global subscriber. `filter` defaults to `RUST_LOG`, then
/// `info`. Returns the buffered stdout to flush before exiting.
pub fn init_logging(format: LogFormat) -> writer::BufferedStdout {
    let out = writer::BufferedStdout::start();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(out.clone());
    access::install(out.clone(), json);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    } else {
        // Colour only for a terminal: escape codes in a file or a pipe
        // (docker logs, journald, less) are noise.
        builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    out
}
