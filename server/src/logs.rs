//! Where `avap serve` logs go and what they look like.
//!
//! [`init`] installs the process subscriber: the trace layer
//! ([`telemetry`](super::telemetry): span ids, OTLP export) and [`LogLayer`],
//! which writes one line per event — JSON (one object per line, the event's
//! fields flattened, the enclosing spans' fields under `span`, `trace_id`
//! and `span_id` of the innermost span) or human text. Every field value
//! goes through the secrets filter ([`redact`]) on its way out.
//!
//! Lines go to stderr, or to `log_file`, rotated past `log_max_mb` into
//! `FILE.1` … `FILE.<log_keep>` (newest first) and reopened on SIGHUP for
//! an external logrotate. A background thread writes them in batches; a
//! batch is split only between lines, so no line is lost or cut in two by
//! a rotation. The startup line on stdout is not a log line and stays as it is.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;

use super::config::{LogFormat, LogLevel};
use super::telemetry::{self, redact};

/// The `log_*` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LogOptions {
    pub format: LogFormat,
    pub level: LogLevel,
    /// `None`: stderr.
    pub file: Option<PathBuf>,
    /// Rotate the file once it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` … `FILE.<keep>`); 0 truncates instead.
    pub keep: usize,
}

/// Install the process-wide subscriber. `Auto` means JSON unless the log
/// goes to a terminal. A second call keeps the first subscriber. Keep the
/// returned guard alive until exit: dropping it writes what is still
/// buffered. The error says why the log file cannot be opened.
pub fn init(options: &LogOptions, traces: impl Layer<Registry> + Send + Sync) -> Result<LogGuard, String> {
    let sink = match &options.file {
        None => Sink::Stderr,
        Some(path) => Sink::File(RotatingFile::open(path, options.max_bytes, options.keep).map_err(|e| {
            format!(
                "cannot open the log file {} (log_file): {e}; check that its directory exists and is writable",
                path.display()
            )
        })?),
    };
    let to_terminal = options.file.is_none() && std::io::stderr().is_terminal();
    let json = match options.format {
        LogFormat::Auto => !to_terminal,
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let (buffer, guard) = BatchedWriter::start(sink);
    let lines = LogLayer::new(buffer, json);
    // Only fails when a subscriber is already set: keep that one.
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(lines.with_filter(LevelFilter::from_level(options.level.level())))
        .try_init();
    Ok(guard)
}

/// Writes events as lines into the batch buffer.
#[derive(Debug)]
struct LogLayer {
    buffer: Arc<Buffer>,
    json: bool,
    /// The subscriber this layer is part of: where the trace layer keeps
    /// span ids. (`Span::current()` cannot be asked from inside an event:
    /// `tracing` answers re-entrant calls with no subscriber.)
    dispatch: OnceLock<WeakDispatch>,
}

impl LogLayer {
    fn new(buffer: Arc<Buffer>, json: bool) -> LogLayer {
        LogLayer {
            buffer,
            json,
            dispatch: OnceLock::new(),
        }
    }
}

/// A span's fields as its log lines show them: its ancestors' fields, then
/// its own (a child's value wins), already filtered.
struct SpanFields {
    name: &'static str,
    fields: Map<String, Value>,
}

impl<S> Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = span
            .parent()
            .and_then(|parent| parent.extensions().get::<SpanFields>().map(|p| p.fields.clone()))
            .unwrap_or_default();
        attrs.record(&mut JsonFields(&mut fields));
        span.extensions_mut().insert(SpanFields {
            name: attrs.metadata().name(),
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(own) = span.extensions_mut().get_mut::<SpanFields>() {
            values.record(&mut JsonFields(&mut own.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        event.record(&mut JsonFields(&mut fields));
        let span = ctx.event_span(event);
        let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
        let ids = span
            .as_ref()
            .zip(dispatch)
            .and_then(|(span, dispatch)| telemetry::ids(&span.id(), &dispatch));
        let extensions = span.as_ref().map(|s| s.extensions());
        let span_fields = extensions.as_ref().and_then(|e| e.get::<SpanFields>());
        let meta = event.metadata();
        let line = Line {
            level: meta.level().as_str(),
            target: meta.target(),
            fields,
            span: span_fields,
            ids,
        };
        let text = if self.json { line.json() } else { line.text() };
        self.buffer.push(text.as_bytes());
    }
}

/// One event, ready to print.
struct Line<'a> {
    level: &'static str,
    target: &'a str,
    fields: Map<String, Value>,
    span: Option<&'a SpanFields>,
    /// Trace id and span id.
    ids: Option<(String, String)>,
}

impl Line<'_> {
    fn json(self) -> String {
        let mut out = Map::new();
        out.insert("timestamp".into(), Value::String(timestamp()));
        out.insert("level".into(), Value::String(self.level.to_owned()));
        out.extend(self.fields);
        out.insert("target".into(), Value::String(self.target.to_owned()));
        if let Some(span) = self.span {
            let mut fields = span.fields.clone();
            fields.insert("name".into(), Value::String(span.name.to_owned()));
            out.insert("span".into(), Value::Object(fields));
        }
        if let Some((trace_id, span_id)) = self.ids {
            out.insert("trace_id".into(), Value::String(trace_id));
            out.insert("span_id".into(), Value::String(span_id));
        }
        let mut line = Value::Object(out).to_string();
        line.push('\n');
        line
    }

    /// `TIME LEVEL span{k=v}: message k=v trace_id=…`
    fn text(mut self) -> String {
        let mut line = format!("{} {:>5} ", timestamp(), self.level);
        if let Some(span) = self.span {
            line.push_str(span.name);
            if !span.fields.is_empty() {
                line.push('{');
                push_pairs(&mut line, &span.fields);
                line.push('}');
            }
            line.push_str(": ");
        }
        if let Some(message) = self.fields.remove("message") {
            push_value(&mut line, &message);
            line.push(' ');
        }
        push_pairs(&mut line, &self.fields);
        if let Some((trace_id, span_id)) = self.ids {
            let _ = write!(line, " trace_id={trace_id} span_id={span_id}");
        }
        let trimmed = line.trim_end().len();
        line.truncate(trimmed);
        line.push('\n');
        line
    }
}

fn push_pairs(line: &mut String, fields: &Map<String, Value>) {
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        let _ = write!(line, "{key}=");
        push_value(line, value);
    }
}

fn push_value(line: &mut String, value: &Value) {
    match value {
        Value::String(s) => line.push_str(s),
        other => {
            let _ = write!(line, "{other}");
        }
    }
}

/// RFC 3339 in UTC with microseconds.
fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Records fields into a JSON map, through the secrets filter. The `otel.*`
/// fields steer the trace export and are left out.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl JsonFields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name.starts_with("otel.") {
            return;
        }
        let value = if redact::is_sensitive(name) {
            Value::String(redact::REDACTED.to_owned())
        } else if let Value::String(text) = value {
            // Allocate only when something was hidden.
            let scrubbed = match redact::scrub(&text) {
                std::borrow::Cow::Owned(shown) => Some(shown),
                std::borrow::Cow::Borrowed(_) => None,
            };
            Value::String(scrubbed.unwrap_or(text))
        } else {
            value
        };
        self.0.insert(name.to_owned(), value);
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Messages and `%value` fields arrive here, already formatted with Display.
        self.put(field, Value::String(format!("{value:?}")));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

/// How often buffered lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes past which new lines are dropped (the output is stuck).
const MAX_BUFFERED: usize = 8 << 20;

/// Log lines go to a buffer that a background thread writes out every
/// [`FLUSH_EVERY`]. A request never waits on a `write(2)`, nobody is woken
/// per line, and a busy server makes one syscall per batch. If the output
/// stalls, lines beyond [`MAX_BUFFERED`] are dropped rather than slowing
/// requests down (and the drop is reported once it drains).
struct BatchedWriter;

#[derive(Debug, Default)]
struct Buffer {
    bytes: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    stop: AtomicBool,
    /// Reopen the log file before the next batch (SIGHUP).
    reopen: AtomicBool,
}

impl Buffer {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue one whole line.
    fn push(&self, line: &[u8]) {
        let mut bytes = self.lock();
        if bytes.len() + line.len() > MAX_BUFFERED {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            bytes.extend_from_slice(line);
        }
    }

    /// Write out what is buffered; `false` when the output is gone for good.
    fn drain(&self, out: &mut impl LineSink) -> bool {
        if self.reopen.swap(false, Ordering::AcqRel) {
            out.reopen();
        }
        let batch = std::mem::take(&mut *self.lock());
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut ok = batch.is_empty() || out.write_lines(&batch);
        if dropped > 0 {
            let note = format!("avap serve: {dropped} log lines dropped: the log output could not keep up\n");
            ok &= out.write_lines(note.as_bytes());
        }
        ok
    }
}

/// Where batches of whole lines are written.
trait LineSink {
    /// `false` when nothing can be written any more.
    fn write_lines(&mut self, batch: &[u8]) -> bool;
    fn reopen(&mut self) {}
}

impl LineSink for Vec<u8> {
    fn write_lines(&mut self, batch: &[u8]) -> bool {
        self.extend_from_slice(batch);
        true
    }
}

enum Sink {
    Stderr,
    File(RotatingFile),
}

impl LineSink for Sink {
    fn write_lines(&mut self, batch: &[u8]) -> bool {
        match self {
            Sink::Stderr => std::io::stderr().write_all(batch).is_ok(),
            Sink::File(file) => file.write_lines(batch),
        }
    }

    fn reopen(&mut self) {
        if let Sink::File(file) = self {
            file.reopen();
        }
    }
}

/// The log file: appended to, rotated by size.
struct RotatingFile {
    path: PathBuf,
    file: File,
    /// Bytes in `file` (as far as we know: an external truncation is seen at reopen).
    size: u64,
    max_bytes: u64,
    keep: usize,
    /// A write error was reported on stderr; report the next one only after a success.
    failing: bool,
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<RotatingFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(1),
            keep,
            failing: false,
        })
    }

    /// `FILE.n`.
    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Write whole lines, rotating between lines whenever the next ones
    /// would take the file past `max_bytes`. A single line longer than
    /// that gets a file of its own.
    fn write_batch(&mut self, mut batch: &[u8]) -> std::io::Result<()> {
        while !batch.is_empty() {
            let room = usize::try_from(self.max_bytes.saturating_sub(self.size)).unwrap_or(usize::MAX);
            let take = if batch.len() <= room {
                batch.len()
            } else {
                batch[..room].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
            };
            let take = match take {
                0 if self.size > 0 => {
                    self.rotate()?;
                    continue;
                }
                // An empty file and a line that does not fit: the whole line.
                0 => batch.iter().position(|&b| b == b'\n').map_or(batch.len(), |i| i + 1),
                n => n,
            };
            self.file.write_all(&batch[..take])?;
            self.size += take as u64;
            batch = &batch[take..];
        }
        Ok(())
    }

    /// `FILE.(keep-1)` → `FILE.keep`, …, `FILE` → `FILE.1`, and a new `FILE`.
    fn rotate(&mut self) -> std::io::Result<()> {
        // A missing file (moved away without SIGHUP) is not an error: a new one starts.
        let moved = |result: std::io::Result<()>| match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        if self.keep == 0 {
            self.file = log_file_options().write(true).truncate(true).open(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                moved(std::fs::rename(self.numbered(n), self.numbered(n + 1)))?;
            }
            moved(std::fs::rename(&self.path, self.numbered(1)))?;
            self.file = open_append(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    /// Say on stderr that the file fails, once per run of failures.
    fn report(&mut self, result: std::io::Result<()>, doing: &str) {
        match result {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    eprintln!("avap serve: cannot {doing} the log file {}: {e}", self.path.display());
                }
                self.failing = true;
            }
        }
    }
}

impl LineSink for RotatingFile {
    fn write_lines(&mut self, batch: &[u8]) -> bool {
        let result = self.write_batch(batch);
        self.report(result, "write");
        // Keep going: the disk may get space back, the file may be fixed.
        true
    }

    /// After an external rotation (`logrotate` moved the file away).
    fn reopen(&mut self) {
        let result = open_append(&self.path).and_then(|file| {
            self.size = file.metadata()?.len();
            self.file = file;
            Ok(())
        });
        self.report(result, "reopen");
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    log_file_options().append(true).open(path)
}

/// Log files are created `0640` and never opened through a symlink: logs
/// name scripts, keys' ids and addresses, and a symlink planted at the log
/// path must not redirect the server's writes elsewhere.
fn log_file_options() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = OpenOptions::new();
    options.create(true).mode(0o640).custom_flags(libc::O_NOFOLLOW);
    options
}

impl BatchedWriter {
    fn start(mut sink: Sink) -> (Arc<Buffer>, LogGuard) {
        let shared = Arc::new(Buffer::default());
        let file = matches!(sink, Sink::File(_));
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("avap-log".into())
                .spawn(move || {
                    while !shared.stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(FLUSH_EVERY);
                        if !shared.drain(&mut sink) {
                            return;
                        }
                    }
                    shared.drain(&mut sink);
                })
                .ok()
        };
        let guard = LogGuard {
            shared: shared.clone(),
            flusher,
            file,
        };
        (shared, guard)
    }
}

/// Writes what is buffered when dropped.
#[derive(Debug)]
pub struct LogGuard {
    shared: Arc<Buffer>,
    flusher: Option<std::thread::JoinHandle<()>>,
    /// Logging to a file (which SIGHUP reopens).
    file: bool,
}

/// Asks the log writer to reopen its file.
#[derive(Debug, Clone)]
pub struct LogReopen(Arc<Buffer>);

impl LogGuard {
    /// A handle for SIGHUP, when logging to a file.
    pub fn reopener(&self) -> Option<LogReopen> {
        self.file.then(|| LogReopen(self.shared.clone()))
    }
}

/// Reopen the log file on every SIGHUP (for an external logrotate with
/// `postrotate kill -HUP`). Runs until the process ends.
pub async fn reopen_on_hangup(reopen: LogReopen) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP, the log file will not be reopened on it: {e}");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        reopen.0.reopen.store(true, Ordering::Release);
        tracing::info!("SIGHUP: reopening the log file");
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        match self.flusher.take() {
            Some(flusher) => {
                flusher.thread().unpark();
                let _ = flusher.join();
            }
            // No thread could be started: write what there is now, to stderr.
            None => {
                self.shared.drain(&mut Sink::Stderr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn tmp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("avap-logs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lines_are_buffered_then_drained_in_order() {
        let buffer = Buffer::default();
        buffer.push(b"one\n");
        buffer.push(b"two\n");
        let mut out = Vec::new();
        assert!(buffer.drain(&mut out));
        assert_eq!(out, b"one\ntwo\n");
        out.clear();
        assert!(buffer.drain(&mut out));
        assert!(out.is_empty(), "drained once");
    }

    #[test]
    fn a_stalled_output_drops_lines_and_says_so() {
        let buffer = Buffer::default();
        let line = vec![b'x'; MAX_BUFFERED / 2 + 1];
        buffer.push(&line);
        buffer.push(&line);
        buffer.push(&line);
        let mut out = Vec::new();
        assert!(buffer.drain(&mut out));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('x').count(), line.len(), "only the first line fit");
        assert!(
            text.ends_with("avap serve: 2 log lines dropped: the log output could not keep up\n"),
            "{}",
            &text[text.len() - 80..]
        );
    }

    #[test]
    fn rotation_keeps_whole_lines_and_at_most_keep_files() {
        let dir = tmp_dir("rotate");
        let path = dir.join("avap.log");
        let mut file = RotatingFile::open(&path, 100, 2).unwrap();
        let mut batch = Vec::new();
        for i in 0..40 {
            writeln!(batch, "line {i:02} xxxxxxxxxxxxxxxxxxxx").unwrap();
        }
        file.write_batch(&batch).unwrap();
        let long = format!("{}\n", "y".repeat(300));
        file.write_batch(long.as_bytes()).unwrap();
        file.write_batch(b"last\n").unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "last\n");
        assert_eq!(
            read(&dir.join("avap.log.1")),
            long,
            "a long line gets a file of its own"
        );
        let older = read(&dir.join("avap.log.2"));
        assert!(older.len() <= 100 && older.ends_with('\n'), "{older:?}");
        assert!(
            older.lines().all(|l| l.starts_with("line ") && l.len() == 28),
            "{older:?}"
        );
        assert!(!dir.join("avap.log.3").exists(), "keep = 2");
    }

    #[test]
    fn reopen_follows_an_external_rotation() {
        let dir = tmp_dir("reopen");
        let path = dir.join("avap.log");
        let mut file = RotatingFile::open(&path, 1 << 20, 1).unwrap();
        assert!(file.write_lines(b"before\n"));
        std::fs::rename(&path, dir.join("moved.log")).unwrap();
        file.reopen();
        assert!(file.write_lines(b"after\n"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert_eq!(std::fs::read_to_string(dir.join("moved.log")).unwrap(), "before\n");
    }

    /// Events through the real layers, as JSON values.
    fn logged(json: bool, work: impl FnOnce()) -> String {
        let buffer = Arc::new(Buffer::default());
        let layer = LogLayer::new(buffer.clone(), json);
        let (traces, _guard) = telemetry::start(&telemetry::TelemetryConfig::default()).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(traces)
            .with(layer.with_filter(LevelFilter::INFO));
        tracing::subscriber::with_default(subscriber, work);
        let mut out = Vec::new();
        buffer.drain(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_lines_carry_span_fields_and_ids_and_no_secrets() {
        let text = logged(true, || {
            let request = tracing::error_span!("request", request_id = "r1", otel.kind = "server");
            let _in = request.enter();
            let run = tracing::info_span!("run", script.name = "hello", params = "PARAMSECRET");
            let _run = run.enter();
            tracing::info!(
                api_key = "APIKEYSECRET",
                key_id = "0123abcd",
                status = 200,
                "sent Bearer avap_0123abcd_BEARERSECRET"
            );
            tracing::debug!("below the level");
        });
        assert!(!text.contains("SECRET"), "{text}");
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["status"], 200);
        assert_eq!(line["key_id"], "0123abcd");
        assert_eq!(line["api_key"], redact::REDACTED);
        assert_eq!(line["message"], "sent Bearer [redacted]");
        assert_eq!(line["span"]["request_id"], "r1", "inherited from the request span");
        assert_eq!(line["span"]["name"], "run");
        assert_eq!(line["span"]["params"], redact::REDACTED);
        assert!(line["span"].get("otel.kind").is_none());
        assert_eq!(line["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(line["span_id"].as_str().unwrap().len(), 16);
    }

    #[test]
    fn text_lines() {
        let text = logged(false, || {
            tracing::error_span!("request", request_id = "r1").in_scope(|| tracing::warn!(n = 3, "slow"));
            tracing::info!("outside");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains(" WARN request{request_id=r1}: slow n=3 trace_id="),
            "{text}"
        );
        assert!(lines[1].ends_with(" INFO outside"), "{text}");
    }
}
