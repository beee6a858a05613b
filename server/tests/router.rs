//! The router in process: requests go through `app(state)` with
//! `tower::ServiceExt::oneshot` — every middleware (request id, metrics,
//! body limit, rate limit, timeout, auth) and handler, no socket, no
//! process. What needs the process boundary (signals, the listener's
//! connection bounds, the data directory, the printed address) stays in
//! the workspace's `tests/server*.rs`.

use std::time::{Duration, Instant};

mod support;

use avap_server::ServerConfig;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// A server on a fresh `SQLite` registry with the defaults of `avap serve` on
/// a loopback address (requests without an API key are let in).
async fn server(name: &str) -> Router {
    support::router(&format!("router-{name}"), ServerConfig::for_this_machine()).await
}

/// A response: status, content type and body (JSON when it parses).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The status and `error.kind` of an error response.
    fn error_kind(&self) -> (u16, String) {
        let kind = self.json()["error"]["kind"].as_str().unwrap_or_default().to_owned();
        (self.status.as_u16(), kind)
    }
}

async fn send(app: &Router, method: Method, path: &str, body: Option<String>) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("a request");
    let response = app.clone().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body");
    Reply {
        status,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(app: &Router, path: &str) -> Reply {
    send(app, Method::GET, path, None).await
}

async fn post(app: &Router, path: &str, body: &str) -> Reply {
    send(app, Method::POST, path, Some(body.to_owned())).await
}

async fn execute(app: &Router, request: &Value) -> Reply {
    post(app, "/api/v1/execute", &request.to_string()).await
}

#[tokio::test]
async fn info_lists_limits_policy_and_commands() {
    let app = server("info").await;
    let r = get(&app, "/api/v1/info").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let v = r.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        v["limits"],
        json!({"fuel": 1_000_000_000u64, "time_ms": 10_000, "memory_mb": 128, "stack_kb": 256, "output_kb": 4096})
    );
    assert_eq!(v["requests"]["max_body_bytes"], 1 << 20);
    assert!(
        v["capabilities"]["allowed"]
            .as_array()
            .unwrap()
            .contains(&json!("pure"))
    );
    let commands = v["commands"].as_array().expect("commands");
    let add_param = commands
        .iter()
        .find(|c| c["name"] == "addParam")
        .expect("addParam listed");
    assert_eq!(add_param["capability"], "request");
}

#[tokio::test]
async fn execute_hello_returns_the_envelope() {
    let app = server("hello").await;
    let script = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";
    let r = execute(&app, &json!({"script": script, "params": {"name": "Ada"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], true);
    assert_eq!(v["result"], json!({"message": "Hello, Ada"}));
    // The query of the simulated request works too.
    let r = execute(
        &app,
        &json!({"script": script, "request": {"method": "GET", "query": {"name": "Bo"}}}),
    )
    .await;
    assert_eq!(r.json()["result"]["message"], "Hello, Bo");
}

#[tokio::test]
async fn status_variable_is_the_http_status() {
    let app = server("status").await;
    let script = "addParam(code, code)\n_status = code\naddResult(code)\n";
    let r = execute(&app, &json!({"script": script, "request": {"query": {"code": "201"}}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["result"]["code"], 201);
}

#[tokio::test]
async fn runtime_error_is_400_with_kind_and_position() {
    let app = server("runtime-error").await;
    let r = execute(&app, &json!({"script": "x = 1\ny = x + missing\n"})).await;
    assert_eq!(r.error_kind(), (400, "NameError".to_owned()), "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], false);
    assert_eq!(
        (v["error"]["line"].as_u64(), v["error"]["column"].as_u64()),
        (Some(2), Some(9))
    );
}

#[tokio::test]
async fn compile_error_is_400_compile_error() {
    let app = server("compile-error").await;
    let r = execute(&app, &json!({"script": "if(x, 1, =)\naddVar(y, 2)\n"})).await;
    assert_eq!(r.error_kind(), (400, "CompileError".to_owned()), "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"]["line"], 1);
    assert_eq!(v["error"]["diagnostics"][0]["code"], "E0020");
}

#[tokio::test]
async fn limits_are_clamped_to_the_server_maximum() {
    let app = server("limits").await;
    let endless = "s = 0\nstartLoop(i, 1, 9000000000000)\n  s = s + 1\nendLoop()\naddResult(s)\n";
    let start = Instant::now();
    let asked = json!({"script": endless, "limits": {"fuel": 99_999_999_999_999u64, "time_ms": 3_600_000}});
    let r = execute(&app, &asked).await;
    let took = start.elapsed();
    // Unclamped, the run would go on to the time limit; clamped, it runs out of fuel first.
    assert_eq!(r.error_kind(), (422, "FuelExhausted".to_owned()), "{}", r.body);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Asking for less than the maximum is honoured.
    let r = execute(&app, &json!({"script": endless, "limits": {"fuel": 1000}})).await;
    assert_eq!(r.error_kind(), (422, "FuelExhausted".to_owned()));
    assert!(r.json()["elapsed"].as_f64().unwrap() < 0.5);
}

#[tokio::test]
async fn malformed_json_is_400_with_position() {
    let app = server("malformed").await;
    let r = post(&app, "/api/v1/execute", "{\"script\": \"x\",\n}").await;
    assert_eq!(r.error_kind(), (400, "InvalidJson".to_owned()), "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["error"]["line"].as_u64(), v["error"]["column"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("trailing comma"),
        "{v}"
    );
    let r = post(&app, "/api/v1/execute", "").await;
    assert_eq!(r.error_kind(), (400, "InvalidJson".to_owned()), "{}", r.body);
}

#[tokio::test]
async fn unknown_fields_are_rejected() {
    let app = server("unknown-field").await;
    let r = execute(&app, &json!({"script": "x = 1\naddResult(x)\n", "parms": {}})).await;
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    assert!(r.body.contains("unknown field `parms`"), "{}", r.body);
    let r = execute(
        &app,
        &json!({"script": "x = 1\naddResult(x)\n", "limits": {"fuel_max": 1}}),
    )
    .await;
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    let r = execute(&app, &json!({"script": "x = 1\naddResult(x)\n", "params": [1, 2]})).await;
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
}

#[tokio::test]
async fn oversized_body_and_script_are_413() {
    let app = server("oversized").await;
    let big = json!({"script": "x".repeat((1 << 20) + 10)}).to_string();
    let r = post(&app, "/api/v1/execute", &big).await;
    assert_eq!(r.error_kind(), (413, "BodyTooLarge".to_owned()), "{}", r.body);
    let long_script = json!({"script": "x".repeat(300 << 10)}).to_string();
    let r = post(&app, "/api/v1/execute", &long_script).await;
    assert_eq!(r.error_kind(), (413, "ScriptTooLarge".to_owned()), "{}", r.body);
    // The server is fine afterwards.
    assert_eq!(
        execute(&app, &json!({"script": "x = 1\naddResult(x)\n"})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let app = server("routes").await;
    let r = get(&app, "/api/v1/nope").await;
    assert_eq!(r.error_kind(), (404, "NotFound".to_owned()), "{}", r.body);
    assert!(r.body.contains("/api/v1/nope"));
    let r = get(&app, "/api/v1/execute").await;
    assert_eq!(r.error_kind(), (405, "MethodNotAllowed".to_owned()), "{}", r.body);
}

#[tokio::test]
async fn stored_scripts_run_as_endpoints_and_fill_the_cache() {
    let app = server("stored").await;
    let stored = post(
        &app,
        "/api/v1/scripts",
        &json!({"name": "hi", "source": "x = 2\naddResult(x)\n"}).to_string(),
    )
    .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.body);
    assert_eq!(stored.json()["version"], 1);
    for _ in 0..2 {
        let r = get(&app, "/api/v1/run/hi").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.json()["result"]["x"], 2);
    }
    let cache = get(&app, "/api/v1/health").await.json()["cache"].clone();
    assert_eq!((&cache["stored_scripts"], &cache["modules"]), (&json!(1), &json!(1)));
    let listed = get(&app, "/api/v1/scripts").await.json();
    assert_eq!(listed[0]["name"], "hi", "{listed}");
}

#[tokio::test]
async fn the_audit_export_is_json_lines_oldest_first_in_pages() {
    let app = server("audit-export").await;
    let stored = post(
        &app,
        "/api/v1/scripts",
        &json!({"name": "hi", "source": "x = 1\naddResult(x)\n"}).to_string(),
    )
    .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.body);
    for _ in 0..2 {
        assert_eq!(get(&app, "/api/v1/run/hi").await.status, StatusCode::OK);
    }
    let all = get(&app, "/api/v1/audit/export").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(all.content_type.as_deref(), Some("application/x-ndjson"));
    let rows: Vec<Value> = all
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["store", "run", "run"], "oldest first");
    // Pulled in turns: the last id is the next `after`.
    let first = get(&app, "/api/v1/audit/export?limit=1").await;
    let first: Value = serde_json::from_str(first.body.trim()).unwrap();
    let rest = get(&app, &format!("/api/v1/audit/export?after={}", first["id"])).await;
    assert_eq!(rest.body.lines().count(), 2);
    let later = get(&app, "/api/v1/audit/export?since=2999-01-01T00:00:00Z").await;
    assert_eq!((later.status, later.body.as_str()), (StatusCode::OK, ""));
    let bad = get(&app, "/api/v1/audit/export?since=yesterday").await;
    assert_eq!(bad.error_kind(), (400, "InvalidRequest".to_owned()), "{}", bad.body);
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("RFC 3339"));
    let bad = get(&app, "/api/v1/audit/export?limit=0").await;
    assert_eq!(bad.error_kind(), (400, "InvalidRequest".to_owned()));
}
