//! Outbound HTTP from scripts (`RequestGet`, `RequestPost`): the security
//! policy and the client's behaviour, end to end (compiler → runtime →
//! hostfns effects → real sockets).
//!
//! Security tests put a "trap" listener on the refused address and port and
//! assert it never accepted a connection: refusals happen before any packet
//! is sent to the refused address. Addresses a test cannot listen on
//! (10.0.0.1, 169.254.169.254) are proven unreached by the error kind:
//! `CapabilityDenied` comes only from the policy check that precedes the
//! connect (a connect attempt would end in `HttpError` or `TimeoutError`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, compile};
use avap_hostfns::Request;
use avap_hostfns::artifact::{SigningKey, TrustedKeys};
use avap_hostfns::effects::breaker::BreakerConfig;
use avap_hostfns::effects::http::{Outbound, OutboundConfig};
use avap_runtime::{Effects, Limits, RunInput, Runtime, RuntimeConfig};
use axum::Router;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A listener that only counts the connections it accepts.
struct Trap {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Trap {
    async fn on(ip: &str) -> Trap {
        let listener = TcpListener::bind((ip, 0)).await.expect("trap listener binds");
        let addr = listener.local_addr().expect("trap address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Trap { addr, hits }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// No connection reached the trap (after giving a stray one time to land).
    async fn assert_untouched(&self) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            self.hits.load(Ordering::SeqCst),
            0,
            "a connection reached the refused address {}",
            self.addr
        );
    }
}

async fn echo_get(RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let query: serde_json::Map<String, Value> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let token = headers.get("x-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    let proxy = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    axum::Json(json!({"query": query, "token": token, "proxy": proxy})).into_response()
}

async fn echo_post(headers: HeaderMap, body: String) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = headers.get("x-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    axum::Json(json!({"body": parsed, "content_type": content_type, "token": token})).into_response()
}

/// The allowlisted test server: `127.0.0.1:<port>`. `/to-private` and
/// `/to-localhost` redirect to `trap_port` on loopback.
async fn test_server(trap_port: u16) -> SocketAddr {
    let app = Router::new()
        .route("/echo", get(echo_get).post(echo_post))
        .route("/text", get(|| async { "plain words" }))
        .route(
            "/missing",
            any(|| async { (StatusCode::NOT_FOUND, axum::Json(json!({"detail": "nope"}))) }),
        )
        .route(
            "/slow",
            any(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route("/big", get(|| async { "x".repeat(100 * 1024) }))
        // A JSON bomb within the response cap: 60 KiB of `[]`s.
        .route("/bomb", get(|| async { format!("[{}[]]", "[],".repeat(20_000)) }))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route("/hop", get(|| async { Redirect::to("/echo?via=hop") }))
        .route(
            "/post-hop",
            post(|| async { (StatusCode::FOUND, [(header::LOCATION, "/echo?via=post")]) }),
        )
        .route(
            "/to-private",
            any(move || async move { Redirect::temporary(&format!("http://127.0.0.1:{trap_port}/secret")) }),
        )
        .route(
            "/to-localhost",
            get(move || async move { Redirect::temporary(&format!("http://localhost:{trap_port}/secret")) }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("test server binds");
    let addr = listener.local_addr().expect("test server address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A raw server that answers every connection with a body of `size` bytes
/// and no Content-Length (the body ends when the connection closes).
async fn unsized_server(size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n")
                    .await;
                let _ = stream.write_all(&vec![b'y'; size]).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

struct Harness {
    runtime: Runtime,
    key: SigningKey,
}

impl Harness {
    fn new() -> Harness {
        let key = SigningKey::from_bytes(&[11; 32]);
        let mut trusted = TrustedKeys::new();
        trusted.add(key.verifying_key());
        let runtime = Runtime::new(RuntimeConfig {
            trusted_keys: trusted,
            max_concurrent_runs: 4,
            ..RuntimeConfig::default()
        })
        .expect("runtime starts");
        Harness { runtime, key }
    }

    /// Run `source` with outbound HTTP allowing `allow`; the envelope.
    async fn run(&self, source: &str, allow: &[String]) -> Value {
        self.run_limited(source, allow, Limits::CLI, 2_000).await
    }

    async fn run_limited(&self, source: &str, allow: &[String], limits: Limits, timeout_ms: u64) -> Value {
        let outbound = Outbound::new(&OutboundConfig {
            allow: allow.to_vec(),
            timeout_ms,
            max_response_kb: 64,
            max_redirects: 3,
            ..OutboundConfig::default()
        })
        .expect("valid allowlist");
        self.run_through(source, Arc::new(outbound), limits).await
    }

    /// Run `source` through `outbound` (shared across runs: its breakers
    /// remember the hosts); the envelope.
    async fn run_through(&self, source: &str, outbound: Arc<Outbound>, limits: Limits) -> Value {
        let checked = check_file(SourceFile::new("outbound.avap", source), &NoIncludes);
        assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
        let module = self
            .runtime
            .load(&compile(&checked, Some(&self.key)).bytes)
            .expect("loads");
        let input = RunInput {
            request: Request::default(),
            limits,
            effects: Effects {
                http: Some(outbound),
                ..Effects::default()
            },
            ..RunInput::default()
        };
        self.runtime.run(&module, input).await.envelope.json().clone()
    }
}

fn get_script(url: &str) -> String {
    format!("addVar(u, \"{url}\")\nRequestGet(u, \"\", \"\", r)\naddResult(r)\n")
}

fn error_kind(envelope: &Value) -> &str {
    envelope["error"]["kind"].as_str().unwrap_or("<no error>")
}

fn error_message(envelope: &Value) -> &str {
    envelope["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_addresses_are_refused_before_connecting() {
    let h = Harness::new();
    let trap4 = Trap::on("127.0.0.1").await;
    let e = h
        .run(&get_script(&format!("http://127.0.0.1:{}/", trap4.port())), &[])
        .await;
    assert_eq!(error_kind(&e), "CapabilityDenied", "{e}");
    assert!(error_message(&e).contains("loopback"), "{e}");
    assert!(
        error_message(&e).contains("--allow-outbound"),
        "says how to allow it: {e}"
    );
    trap4.assert_untouched().await;

    let trap6 = Trap::on("::1").await;
    let e = h
        .run(&get_script(&format!("http://[::1]:{}/", trap6.port())), &[])
        .await;
    assert_eq!(error_kind(&e), "CapabilityDenied", "{e}");
    trap6.assert_untouched().await;

    // The IPv4-mapped IPv6 form of 127.0.0.1 reaches the IPv4 trap if connected.
    let e = h
        .run(
            &get_script(&format!("http://[::ffff:127.0.0.1]:{}/", trap4.port())),
            &[],
        )
        .await;
    assert_eq!(error_kind(&e), "CapabilityDenied", "{e}");
    // 0.0.0.0 means "this host" to connect().
    let e = h
        .run(&get_script(&format!("http://0.0.0.0:{}/", trap4.port())), &[])
        .await;
    assert_eq!(error_kind(&e), "CapabilityDenied", "{e}");
    trap4.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostname_resolving_to_loopback_is_refused() {
    let h = Harness::new();
    let trap = Trap::on("127.0.0.1").await;
    let e = h
        .run(&get_script(&format!("http://localhost:{}/", trap.port())), &[])
        .await;
    assert_eq!(error_kind(&e), "CapabilityDenied", "{e}");
    assert!(error_message(&e).contains("localhost"), "{e}");
    trap.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_do_not_show_the_resolved_address() {
    let h = Harness::new();
    let trap = Trap::on("127.0.0.1").await;
    let post = format!(
        "addVar(u, \"http://localhost:{}/\")\nRequestPost(u, \"\", \"\", \"\", r)\naddResult(r)\n",
        trap.port()
    );
    let e = h.run(&post, &[]).await;
    assert_eq!(e["status"], true, "{e}");
    let posted = e["result"]["r"]["error"].as_str().unwrap_or_default();
    assert!(posted.contains("refused") && posted.contains("loopback"), "{e}");
    assert!(!posted.contains("127.0.0.1"), "the resolved address leaks: {posted}");
    let e = h
        .run(&get_script(&format!("http://localhost:{}/", trap.port())), &[])
        .await;
    assert!(!error_message(&e).contains("127.0.0.1"), "{e}");
    trap.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn script_proxy_authorization_is_never_sent() {
    let h = Harness::new();
    let server = test_server(1).await;
    let script = format!(
        "addVar(u, \"http://{server}/echo\")\n\
         hs = \"{{'X-Token': 'kept', 'Proxy-Authorization': 'Basic c2VjcmV0'}}\"\n\
         RequestGet(u, \"\", hs, r)\n\
         addResult(r)\n"
    );
    let e = h.run(&script, &[server.to_string()]).await;
    assert_eq!(e["result"]["r"]["token"], "kept", "{e}");
    assert_eq!(e["result"]["r"]["proxy"], "", "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_and_metadata_addresses_are_refused_without_a_connect() {
    let h = Harness::new();
    for url in [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.1.1:8080/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://100.64.0.1/",
    ] {
        let start = std::time::Instant::now();
        let e = h.run_limited(&get_script(url), &[], Limits::CLI, 5_000).await;
        assert_eq!(error_kind(&e), "CapabilityDenied", "{url}: {e}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{url}: refused without waiting"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_to_private_addresses_are_refused_at_the_hop() {
    let h = Harness::new();
    let trap = Trap::on("127.0.0.1").await;
    let server = test_server(trap.port()).await;
    let allow = [server.to_string()];
    for path in ["to-private", "to-localhost"] {
        let e = h.run(&get_script(&format!("http://{server}/{path}")), &allow).await;
        assert_eq!(error_kind(&e), "CapabilityDenied", "{path}: {e}");
        assert!(error_message(&e).contains(&trap.port().to_string()), "{e}");
    }
    // RequestPost stores the refusal instead of raising.
    let post =
        format!("addVar(u, \"http://{server}/to-private\")\nRequestPost(u, \"\", \"\", \"\", r)\naddResult(r)\n");
    let e = h.run(&post, &allow).await;
    assert_eq!(e["status"], true, "{e}");
    let posted = e["result"]["r"]["error"].as_str().unwrap_or_default();
    // A POST answered with 307 repeats as a POST to the trap: refused too.
    assert!(posted.contains("refused"), "{e}");
    trap.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_bomb_response_is_decoded_within_the_run_memory() {
    let h = Harness::new();
    let server = test_server(1).await;
    let script = format!("r = RequestGet(\"http://{server}/bomb\", \"\", \"\")\nn = len(r)\naddResult(n)\n");
    // 20,001 lists decode to about 1.5 MB of values: fine with room…
    let e = h.run(&script, &[server.to_string()]).await;
    assert_eq!(e["result"]["n"], 20_001, "{e}");
    // …and refused while decoding, before it is built, under a 1 MiB limit.
    let limits = Limits {
        memory_bytes: 1 << 20,
        ..Limits::CLI
    };
    let e = h.run_limited(&script, &[server.to_string()], limits, 2_000).await;
    assert_eq!(error_kind(&e), "MemoryLimit", "{e}");
    assert_eq!(e["error"]["line"], 1, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_sends_the_query_dict_and_headers_and_decodes_json() {
    let h = Harness::new();
    let server = test_server(1).await;
    let script = format!(
        "addVar(u, \"http://{server}/echo?fixed=1\")\n\
         q = {{\"postId\": 7, \"name\": \"a b&c\"}}\n\
         hs = \"{{'X-Token': 'secret'}}\"\n\
         RequestGet(u, q, hs, r)\n\
         variableFromJSON(r, query, query)\n\
         variableFromJSON(r, token, token)\n\
         addResult(query)\n\
         addResult(token)\n"
    );
    let e = h.run(&script, &[server.to_string()]).await;
    assert_eq!(e["status"], true, "{e}");
    assert_eq!(
        e["result"]["query"],
        json!({"fixed": "1", "postId": "7", "name": "a b&c"}),
        "{e}"
    );
    assert_eq!(e["result"]["token"], "secret");
    // Assignment form, text response, redirect followed.
    let script = format!(
        "t = RequestGet(\"http://{server}/text\", \"\", \"\")\n\
         RequestGet(\"http://{server}/hop\", None, None, hop)\n\
         addResult(t)\naddResult(hop)\n"
    );
    let e = h.run(&script, &[server.to_string()]).await;
    assert_eq!(e["result"]["t"], "plain words", "{e}");
    assert_eq!(e["result"]["hop"]["query"], json!({"via": "hop"}), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn post_sends_json_bodies_and_headers() {
    let h = Harness::new();
    let server = test_server(1).await;
    let script = format!(
        "addVar(u, \"http://{server}/echo\")\n\
         body = {{\"name\": \"ann\", \"n\": 2}}\n\
         hs = {{\"X-Token\": \"t0k\"}}\n\
         RequestPost(u, \"\", hs, body, r)\n\
         RequestPost(u, \"\", \"\", \"{{'raw': true}}\", fromText)\n\
         RequestPost(u, \"\", \"\", \"a=1&b=2\", form)\n\
         RequestPost(\"http://{server}/post-hop\", \"\", \"\", body, hop)\n\
         addResult(r)\naddResult(fromText)\naddResult(form)\naddResult(hop)\n"
    );
    let e = h.run(&script, &[server.to_string()]).await;
    assert_eq!(e["status"], true, "{e}");
    let r = &e["result"];
    assert_eq!(r["r"]["body"], json!({"name": "ann", "n": 2}), "{e}");
    assert_eq!(r["r"]["content_type"], "application/json");
    assert_eq!(r["r"]["token"], "t0k");
    assert_eq!(r["fromText"]["body"], json!({"raw": true}));
    assert_eq!(r["form"]["body"], "a=1&b=2");
    assert_eq!(r["form"]["content_type"], "");
    // 302 after a POST continues as a GET without the body.
    assert_eq!(r["hop"]["query"], json!({"via": "post"}), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_errors_raise_catchable_http_error_for_get_only() {
    let h = Harness::new();
    let server = test_server(1).await;
    let allow = [server.to_string()];
    let e = h.run(&get_script(&format!("http://{server}/missing")), &allow).await;
    assert_eq!(error_kind(&e), "HttpError", "{e}");
    assert!(error_message(&e).contains("404"), "{e}");
    let caught = format!(
        "try()\n    RequestGet(\"http://{server}/missing\", \"\", \"\", r)\n\
         exception(reason)\n    addVar(caught, reason)\nend()\naddResult(caught)\n"
    );
    let e = h.run(&caught, &allow).await;
    assert_eq!(e["status"], true, "{e}");
    assert!(
        e["result"]["caught"].as_str().unwrap_or_default().contains("404"),
        "{e}"
    );
    let post = format!("RequestPost(\"http://{server}/missing\", \"\", \"\", \"\", r)\naddResult(r)\n");
    let e = h.run(&post, &allow).await;
    assert_eq!(e["result"]["r"], json!({"detail": "nope"}), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_size_caps_and_redirect_limits() {
    let h = Harness::new();
    let server = test_server(1).await;
    let unsized_addr = unsized_server(100 * 1024).await;
    let allow = [server.to_string(), unsized_addr.to_string()];

    let start = std::time::Instant::now();
    let e = h
        .run_limited(&get_script(&format!("http://{server}/slow")), &allow, Limits::CLI, 300)
        .await;
    assert_eq!(error_kind(&e), "TimeoutError", "{e}");
    assert!(error_message(&e).contains("outbound_timeout_ms"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));

    let e = h.run(&get_script(&format!("http://{server}/big")), &allow).await;
    assert_eq!(error_kind(&e), "HttpError", "{e}");
    assert!(error_message(&e).contains("outbound_max_response_kb"), "{e}");
    let e = h.run(&get_script(&format!("http://{unsized_addr}/")), &allow).await;
    assert_eq!(
        error_kind(&e),
        "HttpError",
        "no Content-Length, capped while reading: {e}"
    );
    assert!(error_message(&e).contains("64 KiB"), "{e}");

    let e = h.run(&get_script(&format!("http://{server}/loop")), &allow).await;
    assert_eq!(error_kind(&e), "HttpError", "{e}");
    assert!(error_message(&e).contains("more than 3 times"), "{e}");

    let post = format!("RequestPost(\"http://{server}/slow\", \"\", \"\", \"\", r)\naddResult(r)\n");
    let e = h.run_limited(&post, &allow, Limits::CLI, 300).await;
    assert!(
        e["result"]["r"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("within 300 ms"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_on_the_network_counts_against_the_run_time_limit() {
    let h = Harness::new();
    let server = test_server(1).await;
    let limits = Limits {
        time_ms: 400,
        ..Limits::CLI
    };
    let start = std::time::Instant::now();
    let e = h
        .run_limited(
            &get_script(&format!("http://{server}/slow")),
            &[server.to_string()],
            limits,
            10_000,
        )
        .await;
    assert_eq!(error_kind(&e), "TimeLimit", "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_entries_are_port_specific() {
    let h = Harness::new();
    let trap = Trap::on("127.0.0.1").await;
    let server = test_server(trap.port()).await;
    // The allowlisted port works; another port on the same host does not.
    let e = h
        .run(&get_script(&format!("http://{server}/text")), &[server.to_string()])
        .await;
    assert_eq!(e["result"]["r"], "plain words", "{e}");
    let e = h
        .run(
            &get_script(&format!("http://127.0.0.1:{}/", trap.port())),
            &[server.to_string()],
        )
        .await;
    assert_eq!(error_kind(&e), "CapabilityDenied", "{e}");
    trap.assert_untouched().await;
    // A CIDR entry opens every port in the block.
    let e = h
        .run(
            &get_script(&format!("http://{server}/text")),
            &["127.0.0.0/8".to_owned()],
        )
        .await;
    assert_eq!(e["result"]["r"], "plain words", "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn function_ai_posts_the_prompt_to_the_configured_endpoint() {
    let app = Router::new().route(
        "/ask",
        post(|axum::Json(q): axum::Json<Value>| async move {
            axum::Json(json!({"response": format!("echo: {}", q["prompt"].as_str().unwrap_or("?"))}))
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let h = Harness::new();
    let checked = check_file(
        SourceFile::new(
            "ai.avap",
            "addVar(q, \"hello\")\nfunctionAI(`say ${q}`, answer)\naddResult(answer)\n",
        ),
        &NoIncludes,
    );
    assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
    let module = h.runtime.load(&compile(&checked, Some(&h.key)).bytes).expect("loads");
    let effects = |allow: Vec<String>| Effects {
        http: Some(Arc::new(
            Outbound::new(&OutboundConfig {
                allow,
                ..OutboundConfig::default()
            })
            .expect("valid"),
        )),
        ai: Some(Arc::new(
            avap_hostfns::effects::http::AiEndpoint::new(&format!("http://{addr}/ask")).expect("url"),
        )),
        ..Effects::default()
    };
    let run = |fx: Effects| RunInput {
        effects: fx,
        ..RunInput::default()
    };
    let e = h
        .runtime
        .run(&module, run(effects(vec![addr.to_string()])))
        .await
        .envelope
        .json()
        .clone();
    assert_eq!(e["result"]["answer"], "echo: say hello", "{e}");
    // The endpoint goes through the same policy: not allowlisted, refused.
    let e = h
        .runtime
        .run(&module, run(effects(Vec::new())))
        .await
        .envelope
        .json()
        .clone();
    assert_eq!(error_kind(&e), "CapabilityDenied", "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_outbound_configured_requests_are_denied() {
    let h = Harness::new();
    let checked = check_file(
        SourceFile::new("x.avap", "RequestGet(\"http://example.com/\", \"\", \"\", r)\n"),
        &NoIncludes,
    );
    let module = h.runtime.load(&compile(&checked, Some(&h.key)).bytes).expect("loads");
    let e = h
        .runtime
        .run(&module, RunInput::default())
        .await
        .envelope
        .json()
        .clone();
    assert_eq!(error_kind(&e), "CapabilityDenied", "{e}");
    assert!(error_message(&e).contains("not configured"), "{e}");
}

/// An upstream whose `/flaky` answers 500 while `failing` is set, `/slow`
/// after `slow_ms`, `/hold` after 600 ms; it counts the requests it gets.
struct Upstream {
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn upstream(slow_ms: u64) -> Upstream {
    let failing = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let (fail, count) = (Arc::clone(&failing), Arc::clone(&hits));
    let counted = move || {
        count.fetch_add(1, Ordering::SeqCst);
    };
    let (c1, c2, c3) = (counted.clone(), counted.clone(), counted);
    let app = Router::new()
        .route(
            "/flaky",
            get(move || async move {
                c1();
                if fail.load(Ordering::SeqCst) {
                    (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response()
                } else {
                    "up".into_response()
                }
            }),
        )
        .route(
            "/slow",
            get(move || async move {
                c2();
                tokio::time::sleep(Duration::from_millis(slow_ms)).await;
                "late"
            }),
        )
        .route(
            "/hold",
            get(move || async move {
                c3();
                tokio::time::sleep(Duration::from_millis(600)).await;
                "held"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("upstream binds");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Upstream { addr, failing, hits }
}

fn outbound_with(upstream: &Upstream, breaker: BreakerConfig) -> Arc<Outbound> {
    Arc::new(
        Outbound::new(&OutboundConfig {
            allow: vec![upstream.addr.to_string()],
            timeout_ms: 5_000,
            breaker,
            ..OutboundConfig::default()
        })
        .expect("valid"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_upstream_opens_its_circuit_and_probes_close_it() {
    let h = Harness::new();
    let up = upstream(0).await;
    let outbound = outbound_with(
        &up,
        BreakerConfig {
            failure_pct: 50,
            slow_ms: 0,
            min_calls: 4,
            open_ms: 300,
            max_concurrent: 8,
        },
    );
    let flaky = get_script(&format!("http://{}/flaky", up.addr));
    for _ in 0..4 {
        let e = h.run_through(&flaky, Arc::clone(&outbound), Limits::CLI).await;
        assert!(error_message(&e).contains("500"), "{e}");
    }
    let reached = up.hits.load(Ordering::SeqCst);
    let e = h.run_through(&flaky, Arc::clone(&outbound), Limits::CLI).await;
    assert_eq!(error_kind(&e), "HttpError", "{e}");
    assert!(
        error_message(&e).contains(&format!("circuit open for {}", up.addr)),
        "{e}"
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), reached, "an open circuit sends nothing");
    // The upstream recovers; after open_ms, probes go through and close it.
    up.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..3 {
        let e = h.run_through(&flaky, Arc::clone(&outbound), Limits::CLI).await;
        assert_eq!(e["result"]["r"], "up", "{e}");
    }
    let stats = outbound.breakers().expect("breakers").stats();
    assert_eq!(
        (stats.open, stats.opened_total, stats.closed_total),
        (0, 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.refused_open_total, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_opens_its_circuit_too() {
    let h = Harness::new();
    let up = upstream(150).await;
    let outbound = outbound_with(
        &up,
        BreakerConfig {
            failure_pct: 50,
            slow_ms: 100,
            min_calls: 2,
            open_ms: 60_000,
            max_concurrent: 8,
        },
    );
    let slow = get_script(&format!("http://{}/slow", up.addr));
    for _ in 0..2 {
        let e = h.run_through(&slow, Arc::clone(&outbound), Limits::CLI).await;
        assert_eq!(e["result"]["r"], "late", "slow answers still arrive: {e}");
    }
    let started = std::time::Instant::now();
    let e = h.run_through(&slow, Arc::clone(&outbound), Limits::CLI).await;
    assert!(error_message(&e).contains("circuit open"), "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "fails fast: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bulkhead_keeps_one_upstream_from_taking_every_slot() {
    let h = Arc::new(Harness::new());
    let up = upstream(0).await;
    let outbound = outbound_with(
        &up,
        BreakerConfig {
            max_concurrent: 2,
            ..BreakerConfig::default()
        },
    );
    let hold = get_script(&format!("http://{}/hold", up.addr));
    // Spawned all at once (collected), so the three calls overlap.
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (h, outbound, hold) = (Arc::clone(&h), Arc::clone(&outbound), hold.clone());
            tokio::spawn(async move { h.run_through(&hold, outbound, Limits::CLI).await })
        })
        .collect();
    let mut envelopes = Vec::new();
    for run in runs {
        envelopes.push(run.await.expect("the run task"));
    }
    let held = envelopes.iter().filter(|e| e["result"]["r"] == "held").count();
    let refused: Vec<&Value> = envelopes
        .iter()
        .filter(|e| error_message(e).contains("too many calls at once"))
        .collect();
    assert_eq!((held, refused.len()), (2, 1), "{envelopes:#?}");
    assert_eq!(error_kind(refused[0]), "HttpError");
    assert_eq!(up.hits.load(Ordering::SeqCst), 2, "the third call never left");
}
