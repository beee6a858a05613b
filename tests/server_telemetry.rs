//! Traces and log files of `avap serve`: spans exported to a real OTLP
//! receiver the test runs (HTTP/protobuf, gRPC, gRPC over TLS), W3C
//! `traceparent` in, out and on to upstreams, trace ids in the JSON log
//! lines, no secrets in either, and log file rotation.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message as _;
use serde_json::{Value, json};

mod support;

use support::{Reply, Server, create_api_key, fresh_dir, serve_command};

/// One HTTP request read by a test server: path, headers (lowercase names), body.
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// Read one request with a `Content-Length` body.
fn read_request(stream: &mut TcpStream) -> Option<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = raw[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Received { path, headers, body })
}

/// How a [`Collector`] receives spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// OTLP/HTTP with protobuf bodies, plain.
    Http,
    /// OTLP/gRPC, plain.
    Grpc,
    /// OTLP/gRPC over TLS, with a certificate from a CA made for the test.
    GrpcTls,
}

/// What a collector was sent.
#[derive(Debug, Clone, Default)]
struct Sink(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A real OTLP receiver: the collector's gRPC service (tonic, from
/// `opentelemetry-proto`), or its HTTP endpoint decoding protobuf bodies.
struct Collector {
    /// What `otlp_endpoint` and `otlp_protocol` should say.
    endpoint: String,
    protocol: &'static str,
    /// The CA to trust (`otlp_ca_file`), for TLS.
    ca_file: Option<std::path::PathBuf>,
    sink: Sink,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    fn start(transport: Transport) -> Collector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the collector");
        let listener = TcpListener::bind("127.0.0.1:0").expect("collector binds");
        let port = listener.local_addr().expect("addr").port();
        let sink = Sink::default();
        let (endpoint, ca_file) = match transport {
            Transport::Http => {
                let http_sink = sink.clone();
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        let Ok(mut stream) = stream else { continue };
                        let Some(request) = read_request(&mut stream) else {
                            continue;
                        };
                        assert_eq!(request.path, "/v1/traces");
                        assert_eq!(
                            request.headers.get("content-type").map(String::as_str),
                            Some("application/x-protobuf")
                        );
                        let decoded =
                            ExportTraceServiceRequest::decode(&request.body[..]).expect("an OTLP protobuf body");
                        http_sink.0.lock().unwrap().push(decoded);
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                });
                (format!("http://127.0.0.1:{port}"), None)
            }
            Transport::Grpc | Transport::GrpcTls => {
                let mut server = tonic::transport::Server::builder();
                let mut ca_file = None;
                if transport == Transport::GrpcTls {
                    let dir = fresh_dir(&format!("otlp-tls-{port}"));
                    support::test_certificates(&dir);
                    let identity = tonic::transport::Identity::from_pem(
                        std::fs::read(dir.join("server.crt")).unwrap(),
                        std::fs::read(dir.join("server.key")).unwrap(),
                    );
                    server = server
                        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                        .expect("the receiver's TLS");
                    ca_file = Some(dir.join("ca.crt"));
                }
                listener.set_nonblocking(true).unwrap();
                let grpc_sink = sink.clone();
                runtime.spawn(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    server
                        .add_service(TraceServiceServer::new(grpc_sink))
                        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                        .await
                        .expect("the gRPC receiver serves");
                });
                let scheme = if ca_file.is_some() { "https" } else { "http" };
                (format!("{scheme}://localhost:{port}"), ca_file)
            }
        };
        Collector {
            endpoint,
            protocol: if transport == Transport::Http {
                "http/protobuf"
            } else {
                "grpc"
            },
            ca_file,
            sink,
            _runtime: runtime,
        }
    }

    /// Every span received so far, in the OTLP/JSON shape (ids in hex,
    /// 64-bit numbers as strings), with the resource's `service.name` as `service`.
    fn spans(&self) -> Vec<Value> {
        let received = self.sink.0.lock().unwrap();
        let mut spans = Vec::new();
        for request in received.iter() {
            for resource in &request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .map_or(Value::Null, |kv| any_value(kv.value.as_ref())["stringValue"].clone());
                for span in resource.scope_spans.iter().flat_map(|scope| &scope.spans) {
                    let mut json = json!({
                        "traceId": hex::encode(&span.trace_id),
                        "spanId": hex::encode(&span.span_id),
                        "name": span.name,
                        "kind": span.kind,
                        "startTimeUnixNano": span.start_time_unix_nano.to_string(),
                        "endTimeUnixNano": span.end_time_unix_nano.to_string(),
                        "attributes": span.attributes.iter()
                            .map(|kv| json!({"key": kv.key, "value": any_value(kv.value.as_ref())}))
                            .collect::<Vec<_>>(),
                        "service": service,
                    });
                    if !span.parent_span_id.is_empty() {
                        json["parentSpanId"] = Value::String(hex::encode(&span.parent_span_id));
                    }
                    spans.push(json);
                }
            }
        }
        spans
    }

    /// Every byte received, for secret checks.
    fn raw(&self) -> String {
        let received = self.sink.0.lock().unwrap();
        received
            .iter()
            .map(|r| String::from_utf8_lossy(&r.encode_to_vec()).into_owned())
            .collect()
    }

    /// Wait until a span named `name` arrived (spans are batched).
    fn wait_for(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spans().iter().any(|s| s["name"] == name) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An attribute value as OTLP/JSON writes it.
fn any_value(value: Option<&AnyValue>) -> Value {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!({ "stringValue": s }),
        Some(any_value::Value::IntValue(i)) => json!({ "intValue": i.to_string() }),
        Some(any_value::Value::BoolValue(b)) => json!({ "boolValue": b }),
        Some(any_value::Value::DoubleValue(d)) => json!({ "doubleValue": d }),
        other => json!({ "other": format!("{other:?}") }),
    }
}

/// A local HTTP server answering every request with `hello`, keeping the
/// headers of each request.
struct Upstream {
    addr: String,
    seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

fn outbound_target() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("target binds");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if let Some(request) = read_request(&mut stream) {
                sink.lock().unwrap().push(request.headers);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                );
            }
        }
    });
    Upstream { addr, seen }
}

/// `avap serve` sending spans to `collector`, logging JSON to `<dir>/avap.log`,
/// allowed to reach `target`.
fn traced_server(name: &str, collector: &Collector, target: &str) -> (Server, std::path::PathBuf) {
    let dir = fresh_dir(name);
    let data_dir = dir.join("data");
    let log = dir.join("avap.log");
    let mut cmd = serve_command(&data_dir);
    cmd.env("XDG_CONFIG_HOME", dir.join("config-home"))
        .env("AVAP_LOG_FORMAT", "json")
        .env("AVAP_LOG_FILE", &log)
        .env("AVAP_OTLP_ENDPOINT", &collector.endpoint)
        .env("AVAP_OTLP_SERVICE_NAME", "avap-test")
        .env("AVAP_OUTBOUND_ALLOW", target);
    cmd.env("AVAP_OTLP_PROTOCOL", collector.protocol);
    if let Some(ca) = &collector.ca_file {
        cmd.env("AVAP_OTLP_CA_FILE", ca);
    }
    (Server::spawn(cmd, data_dir), log)
}

fn post_json(s: &Server, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    s.request_with_headers("POST", path, headers, Some(("application/json", &body.to_string())))
}

/// The trace id and span id a response's `traceparent` names.
fn traceparent(reply: &Reply) -> (String, String) {
    let value = reply
        .header("traceparent")
        .unwrap_or_else(|| panic!("no traceparent: {reply:?}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{value}");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key))
        .map_or(&Value::Null, |kv| &kv["value"])
}

/// The JSON lines of a log file.
fn log_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

/// Spans of one trace, by name.
struct Trace<'a> {
    spans: Vec<&'a Value>,
}

impl<'a> Trace<'a> {
    fn of(all: &'a [Value], trace_id: &str) -> Trace<'a> {
        Trace {
            spans: all.iter().filter(|s| s["traceId"] == trace_id).collect(),
        }
    }

    fn one(&self, name: &str) -> &'a Value {
        let found: Vec<&&Value> = self.spans.iter().filter(|s| s["name"] == name).collect();
        assert_eq!(found.len(), 1, "one {name} span in {:#?}", self.spans);
        found[0]
    }
}

fn assert_child(child: &Value, parent: &Value) {
    assert_eq!(
        child["parentSpanId"], parent["spanId"],
        "{} inside {}",
        child["name"], parent["name"]
    );
}

#[test]
fn spans_follow_requests_compiles_runs_and_host_calls() {
    let collector = Collector::start(Transport::Http);
    let upstream = outbound_target();
    let target = upstream.addr.clone();
    let (s, log) = traced_server("traces", &collector, &target);

    let inline = post_json(
        &s,
        "/api/v1/execute",
        &[("X-Request-Id", "inline-1")],
        &json!({"script": "x = 40 + 2\naddResult(x)\n"}),
    );
    assert_eq!(inline.status, 200, "{}", inline.body);
    let (inline_trace, inline_span) = traceparent(&inline);

    let source = "addParam(who, w)\naddResult(w)\n";
    let stored = post_json(
        &s,
        "/api/v1/scripts",
        &[("X-Request-Id", "store-1")],
        &json!({"name": "greet", "source": source}),
    );
    assert_eq!(stored.status, 201, "{}", stored.body);
    let (store_trace, _) = traceparent(&stored);

    // A client that traces: its trace goes on, our request span is its child.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let run = post_json(
        &s,
        "/api/v1/run/greet",
        &[
            ("X-Request-Id", "stored-1"),
            ("traceparent", &format!("00-{client_trace}-{client_span}-01")),
        ],
        &json!({"who": "Ada"}),
    );
    assert_eq!(run.status, 200, "{}", run.body);
    let (run_trace, run_span) = traceparent(&run);
    assert_eq!(run_trace, client_trace, "the client's trace continues");
    assert_ne!(run_span, client_span);

    let script = format!("RequestGet(\"http://{target}/data\", \"\", \"\", r)\naddResult(r)\n");
    let outbound = post_json(
        &s,
        "/api/v1/execute",
        &[("X-Request-Id", "outbound-1")],
        &json!({"script": script}),
    );
    assert_eq!(outbound.status, 200, "{}", outbound.body);
    assert_eq!(outbound.json()["result"]["r"], "hello");
    let (outbound_trace, _) = traceparent(&outbound);

    let traces = [&inline_trace, &store_trace, &run_trace, &outbound_trace];
    for (i, a) in traces.iter().enumerate() {
        for b in &traces[i + 1..] {
            assert_ne!(a, b, "one trace per request");
        }
    }
    // Spans are batched: wait for the last request's host call, then stop
    // (shutdown sends whatever is still queued).
    collector.wait_for("RequestGet");
    assert!(s.stop().success());
    let spans = collector.spans();
    assert!(spans.iter().all(|s| s["service"] == "avap-test"), "service.name");

    // Inline run: request ⊃ run ⊃ compile.
    let t = Trace::of(&spans, &inline_trace);
    let request = t.one("POST /api/v1/execute");
    assert_eq!(request["spanId"], inline_span.as_str());
    assert!(request.get("parentSpanId").is_none(), "a new trace: {request}");
    assert_eq!(request["kind"], 2, "server");
    assert_eq!(attr(request, "http.route")["stringValue"], "/api/v1/execute");
    assert_eq!(attr(request, "http.response.status_code")["intValue"], "200");
    assert_eq!(attr(request, "request_id")["stringValue"], "inline-1");
    let run_span_inline = t.one("run");
    assert_child(run_span_inline, request);
    assert_eq!(attr(run_span_inline, "script.name")["stringValue"], "inline");
    assert_eq!(attr(run_span_inline, "outcome")["stringValue"], "ok");
    assert!(
        attr(run_span_inline, "fuel")["intValue"]
            .as_str()
            .is_some_and(|f| f != "0"),
        "{run_span_inline}"
    );
    let compile = t.one("compile");
    assert_child(compile, run_span_inline);
    assert_eq!(attr(compile, "outcome")["stringValue"], "ok");
    let start = |s: &Value, k: &str| s[k].as_str().unwrap().parse::<u64>().unwrap();
    assert!(start(request, "startTimeUnixNano") <= start(run_span_inline, "startTimeUnixNano"));
    assert!(start(run_span_inline, "endTimeUnixNano") <= start(request, "endTimeUnixNano"));

    // Registry store: request ⊃ compile.
    let t = Trace::of(&spans, &store_trace);
    let request = t.one("POST /api/v1/scripts");
    assert_child(t.one("compile"), request);
    assert_eq!(attr(t.one("compile"), "script.file")["stringValue"], "greet.avap");

    // Stored run: the client's span ⊃ request ⊃ run.
    let t = Trace::of(&spans, &run_trace);
    let request = t.one("POST /api/v1/run/{name}");
    assert_eq!(request["parentSpanId"], client_span);
    let stored_run = t.one("run");
    assert_child(stored_run, request);
    assert_eq!(attr(stored_run, "script.name")["stringValue"], "greet");

    // Outbound: request ⊃ run ⊃ host call.
    let t = Trace::of(&spans, &outbound_trace);
    let request = t.one("POST /api/v1/execute");
    let run = t.one("run");
    assert_child(run, request);
    let call = t.one("RequestGet");
    assert_child(call, run);
    assert_eq!(call["kind"], 3, "client");
    assert_eq!(attr(call, "command")["stringValue"], "RequestGet");
    assert_eq!(attr(call, "capability")["stringValue"], "net");
    assert_eq!(attr(call, "server.address")["stringValue"], "127.0.0.1");
    let port = target.rsplit_once(':').unwrap().1;
    assert_eq!(attr(call, "server.port")["intValue"], port);
    assert_eq!(attr(call, "outcome")["stringValue"], "ok");
    assert!(!collector.raw().contains("/data"), "no URL paths in spans");
    // The upstream was told the host call's span: its spans join the trace.
    let sent = upstream.seen.lock().unwrap()[0].get("traceparent").cloned();
    assert_eq!(
        sent,
        Some(format!("00-{outbound_trace}-{}-01", call["spanId"].as_str().unwrap()))
    );

    // The log lines of each request carry its trace id and request span id.
    let lines = log_lines(&log);
    for (request_id, trace_id) in [
        ("inline-1", &inline_trace),
        ("store-1", &store_trace),
        ("stored-1", &run_trace),
        ("outbound-1", &outbound_trace),
    ] {
        let of_request: Vec<&Value> = lines.iter().filter(|l| l["span"]["request_id"] == request_id).collect();
        assert!(!of_request.is_empty(), "lines of {request_id}");
        for line in &of_request {
            assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
            assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
        }
        let access = of_request
            .iter()
            .find(|l| l["message"] == "request")
            .expect("an access line");
        let request_span = spans
            .iter()
            .find(|s| s["traceId"] == trace_id.as_str() && attr(s, "request_id")["stringValue"] == request_id)
            .expect("the request span");
        assert_eq!(access["span_id"], request_span["spanId"]);
    }
}

#[test]
fn secrets_stay_out_of_logs_and_spans() {
    let collector = Collector::start(Transport::Grpc);
    let target = outbound_target().addr;
    let (s, log) = traced_server("secrets", &collector, &target);
    let key = create_api_key(&s.data_dir, "admin");
    let key_secret = key.rsplit('_').next().unwrap().to_owned();

    let script = format!(
        "addParam(password, p)\nRequestGet(\"http://{target}/q?token=OUTSECRET\", \"\", \"\", r)\naddResult(r)\n"
    );
    let body = json!({"script": script, "params": {"password": "PARAMSECRET"}});
    let bearer = format!("Bearer {key}");
    for headers in [
        vec![("Authorization", bearer.as_str())],
        vec![("X-API-Key", key.as_str())],
        vec![("Authorization", "Bearer avap_0123abcd_BADKEYSECRET")],
    ] {
        let r = post_json(
            &s,
            "/api/v1/execute?api_key=QUERYSECRET&token=QUERYSECRET2",
            &headers,
            &body,
        );
        assert!(r.status == 200 || r.status == 401, "{}", r.body);
    }
    let stored = s.request_with_headers(
        "POST",
        "/api/v1/scripts",
        &[("Authorization", bearer.as_str())],
        Some((
            "application/json",
            &json!({"name": "pw", "source": "addParam(password, p)\naddResult(p)\n"}).to_string(),
        )),
    );
    assert_eq!(stored.status, 201, "{}", stored.body);
    let run = s.request_with_headers(
        "POST",
        "/api/v1/run/pw?secret=QUERYSECRET3",
        &[("Authorization", bearer.as_str()), ("Cookie", "session=COOKIESECRET")],
        Some(("application/x-www-form-urlencoded", "password=FORMSECRET")),
    );
    assert_eq!(run.status, 200, "{}", run.body);
    assert!(run.body.contains("FORMSECRET"), "the script saw its params");
    collector.wait_for("RequestGet");
    assert!(s.stop().success());

    let logged = std::fs::read_to_string(&log).expect("the log file");
    let exported = collector.raw();
    assert!(!exported.is_empty(), "spans were exported");
    for secret in [
        key_secret.as_str(),
        "BADKEYSECRET",
        "PARAMSECRET",
        "QUERYSECRET",
        "OUTSECRET",
        "COOKIESECRET",
        "FORMSECRET",
    ] {
        assert!(!logged.contains(secret), "{secret} in the log:\n{logged}");
        assert!(!exported.contains(secret), "{secret} in the spans:\n{exported}");
    }
    assert!(
        log_lines(&log).iter().any(|l| l["status"] == 401),
        "the bad key was logged (without the key)"
    );
}

#[test]
fn grpc_over_tls_with_a_private_ca() {
    let collector = Collector::start(Transport::GrpcTls);
    let (s, _log) = traced_server("traces-tls", &collector, "127.0.0.1:9");
    let r = post_json(&s, "/api/v1/execute", &[], &json!({"script": "x = 1\naddResult(x)\n"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let (trace, span) = traceparent(&r);
    collector.wait_for("POST /api/v1/execute");
    assert!(s.stop().success());
    let spans = collector.spans();
    let t = Trace::of(&spans, &trace);
    let request = t.one("POST /api/v1/execute");
    assert_eq!(request["spanId"], span.as_str());
    assert_eq!(request["service"], "avap-test");
    assert_child(t.one("run"), request);
}

#[test]
fn log_files_rotate_keep_whole_lines_and_reopen_on_sighup() {
    let dir = fresh_dir("rotation");
    let data_dir = dir.join("data");
    let log = dir.join("avap.log");
    let mut cmd = serve_command(&data_dir);
    cmd.env("XDG_CONFIG_HOME", dir.join("config-home"))
        .env("AVAP_LOG_FORMAT", "json")
        .env("AVAP_LOG_FILE", &log)
        .env("AVAP_LOG_MAX_MB", "0.004")
        .env("AVAP_LOG_KEEP", "3");
    let s = Server::spawn(cmd, data_dir);
    // log_max_mb = 0.004: 4194 bytes (0.004 × 1 MiB, rounded).
    let max_bytes = 4194;
    for i in 0..80 {
        let r = s.request_with_headers(
            "GET",
            "/api/v1/health",
            &[("X-Request-Id", &format!("rotate-{i:03}"))],
            None,
        );
        assert_eq!(r.status, 200);
    }
    // Let the writer flush, move the file away as logrotate would, then SIGHUP.
    std::thread::sleep(Duration::from_millis(300));
    let moved = dir.join("moved.log");
    std::fs::rename(&log, &moved).expect("move the log away");
    hang_up(&s);
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        s.request_with_headers(
            "GET",
            "/api/v1/health",
            &[("X-Request-Id", &format!("after-hup-{i}"))],
            None,
        );
    }
    assert!(s.stop().success(), "SIGHUP did not stop the server");

    let mut ids = Vec::new();
    let mut files = vec![moved, log.clone()];
    for n in 1..=3 {
        files.push(dir.join(format!("avap.log.{n}")));
    }
    assert!(!dir.join("avap.log.4").exists(), "log_keep = 3");
    for file in &files {
        assert!(file.exists(), "{} exists", file.display());
        let size = std::fs::metadata(file).unwrap().len();
        assert!(
            size <= max_bytes,
            "{} is {size} bytes, over {max_bytes}",
            file.display()
        );
        for line in log_lines(file) {
            if let Some(id) = line["span"]["request_id"].as_str()
                && line["message"] == "request"
            {
                ids.push(id.to_owned());
            }
        }
    }
    let after: Vec<&String> = ids.iter().filter(|id| id.starts_with("after-hup-")).collect();
    assert_eq!(after.len(), 3, "lines after SIGHUP are in the new file");
    let reopened = std::fs::read_to_string(&log).unwrap();
    assert!(reopened.contains("after-hup-2"), "{reopened}");
    // The newest rotated files hold the last lines before the move; none is cut.
    let kept: Vec<&String> = ids.iter().filter(|id| id.starts_with("rotate-")).collect();
    assert!(kept.len() >= 10, "{kept:?}");
    assert!(
        kept.iter().any(|id| *id == "rotate-079"),
        "the last line before the move is kept"
    );
}

/// Send the server SIGHUP (as `systemctl reload` or logrotate would).
fn hang_up(s: &Server) {
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(hup.success());
}

#[test]
fn sighup_without_a_log_file_does_not_stop_the_server() {
    let s = Server::start("hangup-stderr");
    hang_up(&s);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.get("/api/v1/health").status, 200, "still serving after SIGHUP");
    assert!(s.stop().success());
}

/// `systemctl reload`: SIGHUP reads the configuration file again; the new
/// log level applies to the next lines (the reload's own line is logged),
/// and the server keeps serving.
#[test]
fn sighup_reloads_the_configuration_and_the_log_level() {
    let dir = fresh_dir("hangup-reload");
    let data_dir = dir.join("data");
    let log = dir.join("avap.log");
    let config = dir.join("config.toml");
    let write = |level: &str, rate_limit: u32| {
        std::fs::write(
            &config,
            format!("log_format = \"json\"\nlog_level = \"{level}\"\nrate_limit = {rate_limit}\n"),
        )
        .unwrap();
    };
    write("warn", 50);
    let mut cmd = serve_command(&data_dir);
    cmd.arg("--config").arg(&config).env("AVAP_LOG_FILE", &log);
    let s = Server::spawn(cmd, data_dir);
    let health = |id: &str| {
        let r = s.request_with_headers("GET", "/api/v1/health", &[("X-Request-Id", id)], None);
        assert_eq!(r.status, 200);
    };
    health("at-warn");
    write("info", 1);
    hang_up(&s);
    std::thread::sleep(Duration::from_millis(300));
    health("at-info");
    // rate_limit = 1 (burst 100 still): the limit is on, and the info says so.
    let info = s.get("/api/v1/debug/config");
    assert!(info.body.contains("rate_limit = 1 "), "{}", info.body);
    assert!(s.stop().success(), "SIGHUP did not stop the server");
    let lines = log_lines(&log);
    let ids: Vec<&str> = lines
        .iter()
        .filter(|line| line["message"] == "request")
        .filter_map(|line| line["span"]["request_id"].as_str())
        .filter(|id| id.starts_with("at-"))
        .collect();
    assert_eq!(
        ids,
        ["at-info"],
        "access lines are INFO: none at warn, then one at info"
    );
    let reloaded = lines
        .iter()
        .find(|line| line["message"] == "configuration reloaded")
        .unwrap_or_else(|| panic!("no reload line in {lines:?}"));
    let applied = reloaded["fields"]["applied"]
        .as_str()
        .or(reloaded["applied"].as_str())
        .unwrap_or_default();
    assert!(
        applied.contains("log_level") && applied.contains("rate_limit"),
        "{reloaded}"
    );
}

#[test]
fn an_unwritable_log_file_stops_the_start_with_a_clear_error() {
    let dir = fresh_dir("bad-log");
    let out = serve_command(&dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config-home"))
        .env("AVAP_LOG_FILE", dir.join("no-such-dir/avap.log"))
        .output()
        .expect("run avap serve");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot open the log file") && stderr.contains("no-such-dir/avap.log"),
        "{stderr}"
    );
    let bad = serve_command(&dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config-home"))
        .env("AVAP_OTLP_ENDPOINT", "collector:4318")
        .output()
        .expect("run avap serve");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("otlp_endpoint = \"collector:4318\" (from environment variable AVAP_OTLP_ENDPOINT)")
            && stderr.contains("http://127.0.0.1:4318"),
        "{stderr}"
    );
}
