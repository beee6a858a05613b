//! Where `avap serve` logs go: `tracing` events on stderr, as JSON lines
//! (one object per line, the request span's fields under `span`) or as
//! human text. The startup line on stdout is not a log line and stays as it is.

use std::io::{BufWriter, IsTerminal};

use tracing_appender::non_blocking::WorkerGuard;

use super::config::{LogFormat, LogLevel};

/// Install the process-wide subscriber. `Auto` means JSON unless stderr is
/// a terminal. A second call keeps the first subscriber.
///
/// Lines are written by a background thread through a buffer that is
/// flushed whenever the queue runs dry, so a request never waits on a
/// `write` to stderr and a busy server makes one syscall per batch, not per
/// line. When the queue is full, lines are dropped rather than slowing
/// requests down. Keep the returned guard alive until exit: dropping it
/// flushes what is queued.
pub fn init(format: LogFormat, level: LogLevel) -> WorkerGuard {
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .thread_name("avap-log")
        .finish(BufWriter::with_capacity(64 << 10, std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(!json && std::io::stderr().is_terminal())
        .with_max_level(level.level());
    // Only fails when a subscriber is already set: keep that one.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_target(false).try_init()
    };
    guard
}
