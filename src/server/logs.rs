//! Where `avap serve` logs go: `tracing` events on stderr, as JSON lines
//! (one object per line, the request span's fields under `span`) or as
//! human text. The startup line on stdout is not a log line and stays as it is.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use super::config::{LogFormat, LogLevel};

/// Install the process-wide subscriber. `Auto` means JSON unless stderr is
/// a terminal. A second call keeps the first subscriber. Keep the returned
/// guard alive until exit: dropping it writes what is still buffered.
pub fn init(format: LogFormat, level: LogLevel) -> LogGuard {
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let (writer, guard) = BatchedStderr::start();
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

/// How often buffered lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes past which new lines are dropped (stderr is stuck).
const MAX_BUFFERED: usize = 8 << 20;

/// Log lines go to a buffer that a background thread writes to stderr
/// every [`FLUSH_EVERY`]. A request never waits on a `write(2)`, nobody is
/// woken per line, and a busy server makes one syscall per batch. If stderr
/// stalls, lines beyond [`MAX_BUFFERED`] are dropped rather than slowing
/// requests down (and the drop is reported once it drains).
#[derive(Debug, Clone)]
struct BatchedStderr {
    shared: Arc<Buffer>,
}

#[derive(Debug, Default)]
struct Buffer {
    bytes: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    stop: AtomicBool,
}

impl Buffer {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write out what is buffered; `false` when stderr is gone.
    fn drain(&self, out: &mut impl Write) -> bool {
        let batch = std::mem::take(&mut *self.lock());
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut ok = batch.is_empty() || out.write_all(&batch).is_ok();
        if dropped > 0 {
            ok &= writeln!(out, "avap serve: {dropped} log lines dropped: stderr could not keep up").is_ok();
        }
        ok
    }
}

impl BatchedStderr {
    fn start() -> (BatchedStderr, LogGuard) {
        let shared = Arc::new(Buffer::default());
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("avap-log".into())
                .spawn(move || {
                    let mut stderr = std::io::stderr();
                    while !shared.stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(FLUSH_EVERY);
                        if !shared.drain(&mut stderr) {
                            return;
                        }
                    }
                    shared.drain(&mut stderr);
                })
                .ok()
        };
        let writer = BatchedStderr { shared: shared.clone() };
        (writer, LogGuard { shared, flusher })
    }
}

impl Write for BatchedStderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut bytes = self.shared.lock();
        if bytes.len() + line.len() > MAX_BUFFERED {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            bytes.extend_from_slice(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = BatchedStderr;

    fn make_writer(&'a self) -> BatchedStderr {
        self.clone()
    }
}

/// Writes what is buffered when dropped.
#[derive(Debug)]
pub struct LogGuard {
    shared: Arc<Buffer>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        match self.flusher.take() {
            Some(flusher) => {
                flusher.thread().unpark();
                let _ = flusher.join();
            }
            // No thread could be started: write what there is now.
            None => {
                self.shared.drain(&mut std::io::stderr());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_buffered_then_drained_in_order() {
        let buffer = Buffer::default();
        let mut writer = BatchedStderr {
            shared: Arc::new(buffer),
        };
        writer.write_all(b"one\n").unwrap();
        writer.write_all(b"two\n").unwrap();
        let mut out = Vec::new();
        assert!(writer.shared.drain(&mut out));
        assert_eq!(out, b"one\ntwo\n");
        out.clear();
        assert!(writer.shared.drain(&mut out));
        assert!(out.is_empty(), "drained once");
    }

    #[test]
    fn a_stalled_stderr_drops_lines_and_says_so() {
        let mut writer = BatchedStderr {
            shared: Arc::new(Buffer::default()),
        };
        let line = vec![b'x'; MAX_BUFFERED / 2 + 1];
        writer.write_all(&line).unwrap();
        writer.write_all(&line).unwrap();
        writer.write_all(&line).unwrap();
        let mut out = Vec::new();
        assert!(writer.shared.drain(&mut out));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('x').count(), line.len(), "only the first line fit");
        assert!(
            text.ends_with("avap serve: 2 log lines dropped: stderr could not keep up\n"),
            "{}",
            &text[text.len() - 80..]
        );
    }
}
