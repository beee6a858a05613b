//! OTLP over HTTP with the JSON encoding: finished spans go into a bounded
//! queue; one background thread batches them and `POST`s
//! `ExportTraceServiceRequest` documents to `{otlp_endpoint}/v1/traces`.
//!
//! A request never waits on the exporter: a full queue drops the span and
//! counts it (reported in the log), and a collector that is down costs the
//! exporter thread a connect timeout, nobody else. Plain `http://` only —
//! point it at a local OpenTelemetry Collector or agent, which forwards
//! over TLS; that keeps TLS, gRPC and protobuf out of this binary.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::context::{SpanId, TraceId};

/// Finished spans waiting for the exporter; more are dropped.
const QUEUE: usize = 4096;
/// Spans per export request.
const MAX_BATCH: usize = 512;
/// How long a span waits for companions before its batch is sent.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Connect, write and read timeout of one export request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the last batch.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Where spans go: `http://HOST[:PORT][/PATH]`, posted to `PATH/v1/traces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// `HOST:PORT`, to connect to and for the `Host` header.
    authority: String,
    /// The request path: the endpoint's path + `/v1/traces`.
    path: String,
}

impl OtlpEndpoint {
    /// The `otlp_endpoint` setting; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<OtlpEndpoint, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(if url.starts_with("https://") {
                "only http:// is supported: send spans to a local OpenTelemetry Collector or agent \
                 (for example http://127.0.0.1:4318), which forwards them over TLS"
                    .to_owned()
            } else {
                "not an http:// URL such as http://127.0.0.1:4318".to_owned()
            });
        };
        let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        if path.contains(['?', '#']) {
            return Err("no query string or fragment: give the collector's base URL".to_owned());
        }
        if authority.is_empty() || authority.contains('@') {
            return Err("name a host (and port), without user or password".to_owned());
        }
        // `[::1]:4318`, `host:4318`, or a host alone (port 80).
        let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
            !host.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty()
        });
        if authority.starts_with('[') && !authority.contains(']') {
            return Err("an IPv6 address goes in brackets, as in http://[::1]:4318".to_owned());
        }
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let port_ok = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
        if !port_ok {
            return Err("the port is not a number from 0 to 65535".to_owned());
        }
        Ok(OtlpEndpoint {
            authority,
            path: format!("{}/v1/traces", path.trim_end_matches('/')),
        })
    }
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// An attribute value, as OTLP types it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl AttrValue {
    fn to_otlp(&self) -> Value {
        match self {
            AttrValue::Str(s) => json!({"stringValue": s}),
            // int64 is a JSON string in the OTLP/JSON mapping.
            AttrValue::Int(i) => json!({"intValue": i.to_string()}),
            AttrValue::Double(d) => json!({"doubleValue": d}),
            AttrValue::Bool(b) => json!({"boolValue": b}),
        }
    }
}

/// `SpanKind` of the OTLP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// `Status.code` of the OTLP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    Unset = 0,
    Ok = 1,
    Error = 2,
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub status: StatusCode,
}

impl SpanRecord {
    fn to_otlp(&self) -> Value {
        let attributes: Vec<Value> = self
            .attributes
            .iter()
            .map(|(key, value)| json!({"key": key, "value": value.to_otlp()}))
            .collect();
        let mut span = json!({
            "traceId": self.trace_id.to_string(),
            "spanId": self.span_id.to_string(),
            "name": self.name,
            "kind": self.kind as i32,
            "startTimeUnixNano": self.start_unix_nanos.to_string(),
            "endTimeUnixNano": self.end_unix_nanos.to_string(),
            "attributes": attributes,
            "status": {"code": self.status as i32},
        });
        if let Some(parent) = self.parent_span_id {
            span["parentSpanId"] = Value::String(parent.to_string());
        }
        span
    }
}

/// The `ExportTraceServiceRequest` of `spans`, as OTLP/JSON.
pub fn export_request(service_name: &str, spans: &[SpanRecord]) -> Value {
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service_name}},
                {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "avap", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans.iter().map(SpanRecord::to_otlp).collect::<Vec<_>>(),
            }],
        }],
    })
}

pub(super) enum Message {
    Span(SpanRecord),
    /// Send what is queued and stop; answer on the channel when done.
    Stop(SyncSender<()>),
}

/// The sending side, held by the trace layer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Exporter {
    queue: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Span(span) => f.debug_tuple("Span").field(&span.name).finish(),
            Message::Stop(_) => f.write_str("Stop"),
        }
    }
}

impl Exporter {
    /// Queue a finished span; never blocks (a full queue drops it).
    pub fn export(&self, span: SpanRecord) {
        match self.queue.try_send(Message::Span(span)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Keep it until exit: dropping it sends what is queued (for at most a few seconds).
#[derive(Debug)]
pub struct ExporterGuard {
    exporter: Exporter,
}

impl Drop for ExporterGuard {
    fn drop(&mut self) {
        let (done, finished) = mpsc::sync_channel(1);
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        // The queue may be full: retry until the thread makes room.
        let mut stop = Message::Stop(done);
        loop {
            match self.exporter.queue.try_send(stop) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return;
                    }
                    stop = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let _ = finished.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// Start the exporter thread.
pub fn start(endpoint: OtlpEndpoint, service_name: String) -> std::io::Result<(Exporter, ExporterGuard)> {
    let (queue, spans) = mpsc::sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let exporter = Exporter {
        queue,
        dropped: dropped.clone(),
    };
    let mut sender = Sender {
        endpoint,
        service_name,
        dropped,
        failing: false,
    };
    std::thread::Builder::new()
        .name("avap-otlp".into())
        .spawn(move || sender.run(&spans))?;
    Ok((exporter.clone(), ExporterGuard { exporter }))
}

struct Sender {
    endpoint: OtlpEndpoint,
    service_name: String,
    dropped: Arc<AtomicU64>,
    /// The last export failed: say so once, not per batch.
    failing: bool,
}

impl Sender {
    fn run(&mut self, spans: &Receiver<Message>) {
        let mut batch = Vec::new();
        let mut due: Option<Instant> = None;
        loop {
            let wait = due.map_or(Duration::from_hours(1), |d| d.saturating_duration_since(Instant::now()));
            match spans.recv_timeout(wait) {
                Ok(Message::Span(span)) => {
                    batch.push(span);
                    due.get_or_insert_with(|| Instant::now() + FLUSH_EVERY);
                    if batch.len() >= MAX_BATCH {
                        self.send(&mut batch);
                        due = None;
                    }
                }
                Ok(Message::Stop(done)) => {
                    // Whatever was queued before the stop is in `batch` or still in the channel.
                    while let Ok(Message::Span(span)) = spans.try_recv() {
                        batch.push(span);
                    }
                    while !batch.is_empty() {
                        let rest = batch.split_off(batch.len().min(MAX_BATCH));
                        self.send(&mut batch);
                        batch = rest;
                    }
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.send(&mut batch);
                    due = None;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Post `batch` (emptying it) and report problems in the log.
    fn send(&mut self, batch: &mut Vec<SpanRecord>) {
        if batch.is_empty() {
            return;
        }
        let body = export_request(&self.service_name, batch).to_string();
        let count = batch.len();
        batch.clear();
        match post(&self.endpoint, body.as_bytes()) {
            Ok(()) => {
                if self.failing {
                    tracing::info!(endpoint = %self.endpoint, "sending spans again");
                }
                self.failing = false;
            }
            Err(e) => {
                self.dropped.fetch_add(count as u64, Ordering::Relaxed);
                if !self.failing {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        "cannot send spans to the OTLP collector: {e}; spans are dropped until it answers"
                    );
                }
                self.failing = true;
            }
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 && !self.failing {
            tracing::warn!(
                dropped,
                "spans dropped: the trace queue was full or the collector failed"
            );
        }
    }
}

/// One `POST` with `Connection: close`; `Ok` on a 2xx answer.
fn post(endpoint: &OtlpEndpoint, body: &[u8]) -> Result<(), String> {
    let addr = endpoint
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", endpoint.authority))?
        .next()
        .ok_or_else(|| format!("{} has no address", endpoint.authority))?;
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.authority,
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| format!("cannot send: {e}"))?;
    // The status line is all we need.
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.contains(&b'\n') && answer.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    let status_line = String::from_utf8_lossy(&answer);
    let status_line = status_line.lines().next().unwrap_or("");
    match status_line.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        Some(_) => Err(format!("the collector answered {status_line:?}")),
        None => Err("the collector closed the connection without an answer".to_owned()),
    }
}

#[cfg(test)]
impl Exporter {
    /// An exporter whose queue the test reads.
    pub(super) fn for_tests(queue: SyncSender<Message>) -> Exporter {
        Exporter {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// The spans queued so far.
#[cfg(test)]
pub(super) fn drain_for_tests(queue: &Receiver<Message>) -> Vec<SpanRecord> {
    queue
        .try_iter()
        .filter_map(|m| match m {
            Message::Span(span) => Some(span),
            Message::Stop(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = OtlpEndpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(e.to_string(), "http://127.0.0.1:4318/v1/traces");
        let e = OtlpEndpoint::parse("http://collector/otlp/").unwrap();
        assert_eq!(e.to_string(), "http://collector:80/otlp/v1/traces");
        let e = OtlpEndpoint::parse("http://[::1]:4318").unwrap();
        assert_eq!(e.to_string(), "http://[::1]:4318/v1/traces");
        let e = OtlpEndpoint::parse("http://[::1]").unwrap();
        assert_eq!(e.to_string(), "http://[::1]:80/v1/traces");
        for bad in [
            "https://x:4318",
            "127.0.0.1:4318",
            "http://",
            "http://u:p@x:4318",
            "http://x:99999",
            "http://x:4318/?a=b",
        ] {
            assert!(OtlpEndpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spans_in_the_otlp_json_mapping() {
        let span = SpanRecord {
            trace_id: TraceId(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            span_id: SpanId(0x00f0_67aa_0ba9_02b7),
            parent_span_id: None,
            name: "GET /api/v1/health".to_owned(),
            kind: SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![
                ("http.response.status_code", AttrValue::Int(200)),
                ("ok", AttrValue::Bool(true)),
            ],
            status: StatusCode::Unset,
        };
        let doc = export_request("svc", &[span]);
        let resource = &doc["resourceSpans"][0];
        assert_eq!(resource["resource"]["attributes"][0]["value"]["stringValue"], "svc");
        let s = &resource["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["spanId"], "00f067aa0ba902b7");
        assert!(s.get("parentSpanId").is_none());
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "1");
        assert_eq!(s["attributes"][0]["value"]["intValue"], "200");
        assert_eq!(s["attributes"][1]["value"]["boolValue"], true);
        assert_eq!(s["status"]["code"], 0);
    }
}
