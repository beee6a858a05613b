//! Where `avap serve` logs go and what they look like.
//!
//! [`init`] installs the process subscriber: the trace layer
//! ([`telemetry`](super::telemetry): span ids, OTLP export) and [`LogLayer`],
//! which writes one line per event — JSON (one object per line, the event's
//! fields flattened, the enclosing spans' fields under `span`, `trace_id`
//! and `span_id` of the innermost span) or human text. Every field value
//! goes through the secrets filter ([`redact`]) on its way out.
//!
//! Lines are gathered in batches ([`Batcher`]: at most 64 KiB or 50 ms, so
//! the writer thread wakes once per batch, not once per request) and go
//! through `tracing-appender`'s non-blocking writer (a bounded queue and one
//! writer thread: a request never waits on a `write(2)`; a stuck output
//! drops batches and says so) to stderr, or to `log_file`
//! ([`RotatingFile`]: rotated past `log_max_mb` into `FILE.1` …
//! `FILE.<log_keep>`, newest first, only between lines; reopened on SIGHUP
//! for an external logrotate). The startup line on stdout is not a log line
//! and stays as it is.
//!
//! Why not `tracing-subscriber`'s JSON formatter and `tracing-appender`'s
//! rolling files: the formatter writes field values as they are, and every
//! value must pass the secrets filter by its field's name; the rolling
//! appender rotates by time only, follows a symlink planted at the log path
//! and creates files with the umask's mode, where ours rotates by size,
//! refuses symlinks (`O_NOFOLLOW`) and creates files `0640`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter as _;
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
    let writer = || {
        NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(MAX_QUEUED_LINES)
            .thread_name("avap-log")
    };
    let (output, worker, reopen) = match &options.file {
        None => {
            let (output, worker) = writer().finish(std::io::stderr());
            (output, worker, None)
        }
        Some(path) => {
            let file = RotatingFile::open(path, options.max_bytes, options.keep).map_err(|e| {
                format!(
                    "cannot open the log file {} (log_file): {e}; check that its directory exists and is writable",
                    path.display()
                )
            })?;
            let reopen = LogReopen(file.reopen.clone());
            let (output, worker) = writer().finish(file);
            (output, worker, Some(reopen))
        }
    };
    let to_terminal = options.file.is_none() && std::io::stderr().is_terminal();
    let json = match options.format {
        LogFormat::Auto => !to_terminal,
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let lines = LogLayer::new(output, json);
    let batcher = Arc::clone(&lines.output);
    // The level can change while serving (a reload): a reloadable filter.
    let (level, handle) = tracing_subscriber::reload::Layer::new(LevelFilter::from_level(options.level.level()));
    // Only fails when a subscriber is already set: keep that one.
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(lines.with_filter(level))
        .try_init();
    let set_level: Arc<dyn Fn(LogLevel) -> Result<(), String> + Send + Sync> = Arc::new(move |level: LogLevel| {
        handle
            .reload(LevelFilter::from_level(level.level()))
            .map_err(|e| e.to_string())
    });
    Ok(LogGuard {
        batcher,
        _worker: worker,
        reopen,
        set_level,
    })
}

/// Lines waiting for the writer thread; more are dropped (and counted).
const MAX_QUEUED_LINES: usize = 64 * 1024;

/// Lines gathered for the writer thread, so that it is woken once per
/// batch instead of once per line: under load a wake-up per access line
/// (tracing-appender's channel, then its thread's futex) was about 6% of
/// the server's CPU. A batch goes out when it reaches its size, every
/// [`FLUSH_EVERY`] (a thread of its own), and when the last handle drops.
#[derive(Debug)]
struct Batcher {
    pending: std::sync::Mutex<Vec<u8>>,
    output: NonBlocking,
    /// Bytes that make a batch go out at once.
    batch_bytes: usize,
}

/// The longest a line waits in a batch.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// A batch this large goes out without waiting (one write of the file).
const BATCH_BYTES: usize = 64 << 10;

impl Batcher {
    /// A batcher over `output`, flushed every [`FLUSH_EVERY`] by a thread
    /// that ends once the batcher is dropped.
    fn start(output: NonBlocking, batch_bytes: usize) -> Arc<Batcher> {
        let batcher = Arc::new(Batcher {
            pending: std::sync::Mutex::new(Vec::new()),
            output,
            batch_bytes,
        });
        let weak = Arc::downgrade(&batcher);
        let _ = std::thread::Builder::new()
            .name("avap-log-flush".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    match weak.upgrade() {
                        Some(batcher) => batcher.flush(),
                        None => return,
                    }
                }
            });
        batcher
    }

    fn push(&self, line: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.extend_from_slice(line);
        if pending.len() >= self.batch_bytes {
            let batch = std::mem::take(&mut *pending);
            drop(pending);
            self.write(&batch);
        }
    }

    fn flush(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if !batch.is_empty() {
            self.write(&batch);
        }
    }

    fn write(&self, batch: &[u8]) {
        let _ = self.output.make_writer().write_all(batch);
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes events as lines to the non-blocking writer, in batches.
#[derive(Debug)]
struct LogLayer {
    output: Arc<Batcher>,
    /// Dropped lines already reported.
    dropped_reported: AtomicUsize,
    json: bool,
    /// The subscriber this layer is part of: where the trace layer keeps
    /// span ids. (`Span::current()` cannot be asked from inside an event:
    /// `tracing` answers re-entrant calls with no subscriber.)
    dispatch: OnceLock<WeakDispatch>,
}

impl LogLayer {
    fn new(output: NonBlocking, json: bool) -> LogLayer {
        LogLayer::batched(output, json, BATCH_BYTES)
    }

    /// A layer whose batches go out at `batch_bytes` (1: every line).
    fn batched(output: NonBlocking, json: bool, batch_bytes: usize) -> LogLayer {
        LogLayer {
            output: Batcher::start(output, batch_bytes),
            dropped_reported: AtomicUsize::new(0),
            json,
            dispatch: OnceLock::new(),
        }
    }
}

/// A span's own fields, already filtered. A line shows its span's
/// ancestors' fields, then its own (a child's value wins): merged when a
/// line is written, not copied into every span (spans outnumber lines).
struct SpanFields {
    name: &'static str,
    fields: Fields,
}

/// A field's value as recorded, through the secrets filter.
#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl FieldValue {
    /// As a JSON value: strings quoted and escaped, numbers as
    /// `serde_json` writes them (a non-finite float is `null`).
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            FieldValue::Str(text) => write_json_str(out, text),
            FieldValue::I64(n) => write_json_number(out, n),
            FieldValue::U64(n) => write_json_number(out, n),
            FieldValue::F64(n) => write_json_number(out, n),
            FieldValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        }
    }

    /// As text: strings as they are, the rest as in JSON.
    fn write_text(&self, out: &mut Vec<u8>) {
        match self {
            FieldValue::Str(text) => out.extend_from_slice(text.as_bytes()),
            other => other.write_json(out),
        }
    }
}

fn write_json_str(out: &mut Vec<u8>, text: &str) {
    // Most names and values need no escape: copied as they are.
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

fn write_json_number(out: &mut Vec<u8>, n: &impl serde::Serialize) {
    let _ = serde_json::to_writer(&mut *out, n);
}

/// Fields in the order they were first recorded; recording a name again
/// replaces its value in place (as a JSON object's key would). Names are
/// `tracing`'s static field names: no allocation per field name.
#[derive(Debug, Clone, Default)]
struct Fields(Vec<(&'static str, FieldValue)>);

/// Add `name` to `entries`, or replace its value where it already is (as
/// inserting into an ordered map would): fields, a span's merged fields and
/// a line's members all keep their order this way.
fn set_in_place<V>(entries: &mut Vec<(&'static str, V)>, name: &'static str, value: V) {
    match entries.iter_mut().find(|(own, _)| *own == name) {
        Some((_, slot)) => *slot = value,
        None => entries.push((name, value)),
    }
}

impl Fields {
    fn take(&mut self, name: &str) -> Option<FieldValue> {
        let at = self.0.iter().position(|(own, _)| *own == name)?;
        Some(self.0.remove(at).1)
    }
}

/// Records fields through the secrets filter. The `otel.*` fields steer
/// the trace export and are left out.
impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, || FieldValue::Str(value.to_owned()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Messages and `%value` fields arrive here, already formatted with Display.
        self.record(field, || FieldValue::Str(format!("{value:?}")));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, || FieldValue::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, || FieldValue::U64(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record(field, || FieldValue::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, || FieldValue::Bool(value));
    }
}

impl Fields {
    /// A value hidden whole under a sensitive name (never formatted then),
    /// else as it is, text scrubbed of anything that looks like a secret
    /// (allocating again only then).
    fn record(&mut self, field: &Field, value: impl FnOnce() -> FieldValue) {
        let name = field.name();
        if name.starts_with("otel.") {
            return;
        }
        let shown = if sensitive(name) {
            FieldValue::Str(redact::REDACTED.to_owned())
        } else {
            match value() {
                FieldValue::Str(text) => match redact::scrub(&text) {
                    std::borrow::Cow::Owned(scrubbed) => FieldValue::Str(scrubbed),
                    std::borrow::Cow::Borrowed(_) => FieldValue::Str(text),
                },
                other => other,
            }
        };
        set_in_place(&mut self.0, name, shown);
    }
}

/// [`redact::is_sensitive`], remembered per field name: names are the
/// static strings of `tracing`'s call sites, a few dozen in all, and every
/// request records some twenty fields (a linear scan of the few seen beats
/// hashing the name).
fn sensitive(name: &'static str) -> bool {
    thread_local! {
        static SEEN: std::cell::RefCell<Vec<(&'static str, bool)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SEEN.with_borrow_mut(|seen| {
        // The same address and length are the same static string.
        let known = seen
            .iter()
            .find(|(own, _)| std::ptr::eq(own.as_ptr(), name.as_ptr()) && own.len() == name.len());
        match known {
            Some(&(_, sensitive)) => sensitive,
            None => {
                let sensitive = redact::is_sensitive(name);
                seen.push((name, sensitive));
                sensitive
            }
        }
    })
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
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields {
            name: attrs.metadata().name(),
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(own) = span.extensions_mut().get_mut::<SpanFields>() {
            values.record(&mut own.fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let span = ctx.event_span(event);
        // Before the spans' extensions are read below: the trace layer
        // writes to them when asked for the ids.
        let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
        let ids = span
            .as_ref()
            .zip(dispatch)
            .and_then(|(span, dispatch)| telemetry::ids(&span.id(), &dispatch));
        // The event's span and its ancestors, root first: their fields.
        let scope: Vec<_> = span.iter().flat_map(|span| span.scope().from_root()).collect();
        let extensions: Vec<_> = scope.iter().map(|span| span.extensions()).collect();
        let owns = extensions.iter().filter_map(|own| own.get::<SpanFields>());
        let span_fields = span.as_ref().map(|span| {
            let mut merged = MergedSpan {
                name: span.name(),
                fields: Vec::new(),
            };
            for own in owns {
                merged.name = own.name;
                for (name, value) in &own.fields.0 {
                    set_in_place(&mut merged.fields, name, value);
                }
            }
            merged
        });
        let meta = event.metadata();
        let line = Line {
            level: meta.level().as_str(),
            target: meta.target(),
            fields,
            span: span_fields,
            ids,
        };
        let text = if self.json { line.json() } else { line.text() };
        self.output.push(&text);
        let dropped = self.output.output.error_counter().dropped_lines();
        let reported = self.dropped_reported.load(Ordering::Relaxed);
        if dropped > reported && self.dropped_reported.swap(dropped, Ordering::Relaxed) < dropped {
            let note = format!(
                "avap serve: {} batches of log lines dropped: the log output could not keep up\n",
                dropped - reported
            );
            self.output.push(note.as_bytes());
        }
    }
}

/// The fields of an event's spans, merged, borrowed from the spans.
struct MergedSpan<'a> {
    /// The innermost span's name.
    name: &'static str,
    fields: Vec<(&'static str, &'a FieldValue)>,
}

/// One event, ready to print.
struct Line<'a> {
    level: &'static str,
    target: &'a str,
    fields: Fields,
    span: Option<MergedSpan<'a>>,
    /// Trace id and span id.
    ids: Option<(String, String)>,
}

/// A member of a JSON line.
enum Member<'a> {
    Text(&'a str),
    Field(&'a FieldValue),
    Object(Vec<(&'static str, Member<'a>)>),
}

/// `{"name":value,…}`.
fn write_object(out: &mut Vec<u8>, members: &[(&'static str, Member<'_>)]) {
    out.push(b'{');
    for (i, (name, member)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, name);
        out.push(b':');
        match member {
            Member::Text(text) => write_json_str(out, text),
            Member::Field(value) => value.write_json(out),
            Member::Object(members) => write_object(out, members),
        }
    }
    out.push(b'}');
}

impl Line<'_> {
    /// One JSON object: `timestamp`, `level`, the event's fields, `target`,
    /// `span` (the spans' fields and the innermost span's `name`),
    /// `trace_id`, `span_id`. A field named like one of those replaces it in
    /// its place, as inserting into an ordered map would. Written straight
    /// into the line's bytes: no JSON tree is built.
    fn json(self) -> Vec<u8> {
        let timestamp = timestamp();
        let mut members = Vec::with_capacity(self.fields.0.len() + 6);
        set_in_place(&mut members, "timestamp", Member::Text(&timestamp));
        set_in_place(&mut members, "level", Member::Text(self.level));
        for (name, value) in &self.fields.0 {
            set_in_place(&mut members, name, Member::Field(value));
        }
        set_in_place(&mut members, "target", Member::Text(self.target));
        if let Some(span) = &self.span {
            let mut object: Vec<_> = span
                .fields
                .iter()
                .map(|(name, value)| (*name, Member::Field(value)))
                .collect();
            set_in_place(&mut object, "name", Member::Text(span.name));
            set_in_place(&mut members, "span", Member::Object(object));
        }
        if let Some((trace_id, span_id)) = &self.ids {
            set_in_place(&mut members, "trace_id", Member::Text(trace_id));
            set_in_place(&mut members, "span_id", Member::Text(span_id));
        }
        let mut out = Vec::with_capacity(256);
        write_object(&mut out, &members);
        out.push(b'\n');
        out
    }

    /// `TIME LEVEL span{k=v}: message k=v trace_id=…`
    fn text(mut self) -> Vec<u8> {
        let mut line = Vec::with_capacity(256);
        let _ = write!(line, "{} {:>5} ", timestamp(), self.level);
        if let Some(span) = &self.span {
            line.extend_from_slice(span.name.as_bytes());
            if !span.fields.is_empty() {
                line.push(b'{');
                push_pairs(&mut line, span.fields.iter().map(|(name, value)| (*name, *value)));
                line.push(b'}');
            }
            line.extend_from_slice(b": ");
        }
        if let Some(message) = self.fields.take("message") {
            message.write_text(&mut line);
            line.push(b' ');
        }
        push_pairs(&mut line, self.fields.0.iter().map(|(name, value)| (*name, value)));
        if let Some((trace_id, span_id)) = &self.ids {
            let _ = write!(line, " trace_id={trace_id} span_id={span_id}");
        }
        while line.last().is_some_and(u8::is_ascii_whitespace) {
            line.pop();
        }
        line.push(b'\n');
        line
    }
}

fn push_pairs<'a>(line: &mut Vec<u8>, fields: impl Iterator<Item = (&'static str, &'a FieldValue)>) {
    for (i, (name, value)) in fields.enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        line.extend_from_slice(name.as_bytes());
        line.push(b'=');
        value.write_text(line);
    }
}

/// RFC 3339 in UTC with microseconds.
fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The log file: appended to, rotated by size, reopened on request.
struct RotatingFile {
    path: PathBuf,
    /// Lines are buffered until the writer thread's queue is empty: one
    /// `write(2)` per batch.
    file: BufWriter<File>,
    /// Bytes in `file` (as far as we know: an external truncation is seen at reopen).
    size: u64,
    max_bytes: u64,
    keep: usize,
    /// A write error was reported on stderr; report the next one only after a success.
    failing: bool,
    /// Set by SIGHUP: reopen before the next line.
    reopen: Arc<AtomicBool>,
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<RotatingFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            size,
            max_bytes: max_bytes.max(1),
            keep,
            failing: false,
            reopen: Arc::new(AtomicBool::new(false)),
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
        self.file.flush()?;
        let file = if self.keep == 0 {
            log_file_options().write(true).truncate(true).open(&self.path)?
        } else {
            for n in (1..self.keep).rev() {
                moved(std::fs::rename(self.numbered(n), self.numbered(n + 1)))?;
            }
            moved(std::fs::rename(&self.path, self.numbered(1)))?;
            open_append(&self.path)?
        };
        self.file = BufWriter::with_capacity(WRITE_BUFFER, file);
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

    /// After an external rotation (`logrotate` moved the file away).
    fn reopen_now(&mut self) {
        let result = self
            .file
            .flush()
            .and_then(|()| open_append(&self.path))
            .and_then(|file| {
                self.size = file.metadata()?.len();
                self.file = BufWriter::with_capacity(WRITE_BUFFER, file);
                Ok(())
            });
        self.report(result, "reopen");
    }
}

/// Bytes of lines gathered before a `write(2)`.
const WRITE_BUFFER: usize = 64 * 1024;

/// The writer thread's end: each `write` is whole lines. Errors are
/// reported on stderr and swallowed: the disk may get space back, the file
/// may be fixed, and the writer thread must keep going.
impl Write for RotatingFile {
    fn write(&mut self, lines: &[u8]) -> std::io::Result<usize> {
        if self.reopen.swap(false, Ordering::AcqRel) {
            self.reopen_now();
        }
        let result = self.write_batch(lines);
        self.report(result, "write");
        Ok(lines.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.file.flush();
        self.report(result, "write");
        Ok(())
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

/// Keeps the writer thread; dropping it writes what is queued.
pub struct LogGuard {
    /// The global layer's batch: written out before the writer stops.
    batcher: Arc<Batcher>,
    _worker: WorkerGuard,
    /// Logging to a file (which SIGHUP reopens).
    reopen: Option<LogReopen>,
    /// Changes the level of the lines written.
    set_level: Arc<dyn Fn(LogLevel) -> Result<(), String> + Send + Sync>,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard")
            .field("reopen", &self.reopen)
            .finish_non_exhaustive()
    }
}

/// Asks the log writer to reopen its file.
#[derive(Debug, Clone)]
pub struct LogReopen(Arc<AtomicBool>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Before `_worker` (a field) drops: its drop writes what it was
        // given and stops the writer thread.
        self.batcher.flush();
    }
}

impl LogGuard {
    /// A handle for SIGHUP, when logging to a file.
    pub fn reopener(&self) -> Option<LogReopen> {
        self.reopen.clone()
    }

    /// Sets the level of the lines from now on (`log_level` on a reload).
    pub fn level_setter(&self) -> super::reload::SetLogLevel {
        let set = self.set_level.clone();
        Box::new(move |level| set(level))
    }
}

/// Handle every SIGHUP until the process ends: reopen the log file (for an
/// external logrotate with `postrotate kill -HUP`), then `reload` (read the
/// configuration again, as `systemctl reload` means). The signal no longer
/// has its default effect, which would end the server (a closing terminal).
pub async fn on_hangup<F, R>(reopen: Option<LogReopen>, reload: F)
where
    F: Fn() -> R,
    R: std::future::Future<Output = ()>,
{
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!(
                "cannot listen for SIGHUP, the log file will not be reopened nor the configuration reloaded on it: {e}"
            );
            return;
        }
    };
    while hangups.recv().await.is_some() {
        if let Some(reopen) = &reopen {
            reopen.0.store(true, Ordering::Release);
            tracing::info!("SIGHUP: reopening the log file");
        }
        tracing::info!("SIGHUP: reloading the configuration");
        reload().await;
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

    /// A writer that blocks until the test lets it go.
    #[derive(Clone)]
    struct Stuck(Collected, Arc<std::sync::Barrier>);

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if self.0.0.lock().unwrap().is_empty() {
                self.1.wait();
            }
            self.0.write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_drops_lines_and_says_so() {
        let out = Collected::default();
        let release = Arc::new(std::sync::Barrier::new(2));
        let (output, worker) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(2)
            .finish(Stuck(out.clone(), release.clone()));
        // Every line its own batch, so the channel fills.
        let layer = LogLayer::batched(output, false, 1);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            for i in 0..10 {
                tracing::info!("line {i}");
            }
            release.wait();
            std::thread::sleep(std::time::Duration::from_millis(50));
            tracing::info!("after");
        });
        drop(worker);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("line 0"), "{text}");
        assert!(!text.contains("line 9"), "{text}");
        assert!(
            text.contains("batches of log lines dropped: the log output could not keep up"),
            "{text}"
        );
        assert!(text.contains("after"), "{text}");
    }

    /// Counts the writes the writer thread makes.
    #[derive(Clone, Default)]
    struct Counted(Collected, Arc<AtomicUsize>);

    impl Write for Counted {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_writer_in_batches_within_the_flush_interval() {
        let out = Counted::default();
        let (output, worker) = tracing_appender::non_blocking(out.clone());
        let layer = LogLayer::new(output, false);
        let subscriber = tracing_subscriber::registry().with(layer);
        let dispatch = tracing::Dispatch::new(subscriber);
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..1000 {
                tracing::info!("line {i}");
            }
        });
        // Without dropping anything: the flush thread sends the batch.
        let text = || String::from_utf8(out.0.0.lock().unwrap().clone()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !text().contains("line 999") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(text().lines().count(), 1000, "every line, in order, once");
        assert!(
            text()
                .lines()
                .enumerate()
                .all(|(i, l)| l.ends_with(&format!("line {i}")))
        );
        let writes = out.1.load(Ordering::Relaxed);
        assert!(writes <= 3, "1000 lines in {writes} writes");
        // The last lines go out when the layer drops.
        tracing::dispatcher::with_default(&dispatch, || tracing::info!("last"));
        drop(dispatch);
        drop(worker);
        assert!(text().ends_with("last\n"), "{}", text());
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
        file.write_all(&batch).unwrap();
        let long = format!("{}\n", "y".repeat(300));
        file.write_all(long.as_bytes()).unwrap();
        file.write_all(b"last\n").unwrap();
        file.flush().unwrap();
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
        file.write_all(b"before\n").unwrap();
        file.flush().unwrap();
        std::fs::rename(&path, dir.join("moved.log")).unwrap();
        LogReopen(file.reopen.clone()).0.store(true, Ordering::Release);
        file.write_all(b"after\n").unwrap();
        file.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert_eq!(std::fs::read_to_string(dir.join("moved.log")).unwrap(), "before\n");
    }

    /// What the writer thread was given.
    #[derive(Clone, Default)]
    struct Collected(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Collected {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Events through the real layers and writer thread, as text.
    fn logged(json: bool, work: impl FnOnce()) -> String {
        let out = Collected::default();
        let (output, worker) = tracing_appender::non_blocking(out.clone());
        let layer = LogLayer::new(output, json);
        let (traces, _guard) = telemetry::start(&telemetry::TelemetryConfig::default()).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(traces)
            .with(layer.with_filter(LevelFilter::INFO));
        tracing::subscriber::with_default(subscriber, work);
        drop(worker);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
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
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
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
    fn json_lines_escape_text_and_keep_fields_in_place() {
        let tricky = "say \"hi\"\n\tand \u{1} \\ done";
        let text = logged(true, || {
            tracing::error_span!("outer", name = "shadowed", a = 1).in_scope(|| {
                tracing::info_span!("inner", a = 2, b = true).in_scope(|| {
                    tracing::info!(
                        level = "custom",
                        ratio = 0.5,
                        big = u64::MAX,
                        nan = f64::NAN,
                        tricky,
                        "msg"
                    );
                });
            });
        });
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(&keys[..2], ["timestamp", "level"], "{text}");
        assert_eq!(line["level"], "custom", "an event field replaces a member in its place");
        assert_eq!(
            &keys[keys.len() - 4..],
            ["target", "span", "trace_id", "span_id"],
            "{text}"
        );
        assert_eq!(line["tricky"], tricky);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["big"], u64::MAX);
        assert!(line["nan"].is_null(), "{text}");
        assert_eq!(
            line["span"],
            serde_json::json!({"name": "inner", "a": 2, "b": true}),
            "ancestors first, the child's value wins in place, `name` is the innermost span's"
        );
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
