//! The debug endpoints of `avap serve` (admin scope): runs in progress,
//! cache summary, the effective configuration without secrets, and a CPU
//! profile taken while scripts run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::{Reply, Server, create_api_key, fresh_dir, serve_command};

/// Runs until its fuel or `time_ms` runs out.
const SPIN: &str = "s = 0\nstartLoop(i, 1, 9000000000000)\n  s = s + 1\nendLoop()\naddResult(s)\n";

struct Keys {
    admin: String,
    execute: String,
}

/// A server that requires API keys, with secrets in its configuration.
fn server(name: &str) -> (Server, Keys) {
    let dir = fresh_dir(name);
    let data_dir = dir.join("data");
    let config = dir.join("avap.toml");
    std::fs::write(
        &config,
        format!(
            // No pre-warming: it runs in the background after start and
            // would race the cache assertions below.
            "prewarm = 0\n\
             app_database_url = \"postgres://avap:DBSECRET@127.0.0.1:5432/test\"\n\
             ai_endpoint = \"http://127.0.0.1:9/v1/ask?api_key=AISECRET\"\n\
             [connectors]\nTOKENSECRET123 = \"sqlite:{}\"\n",
            dir.join("connector.sqlite").display()
        ),
    )
    .expect("write the config file");
    let mut cmd = serve_command(&data_dir);
    cmd.arg("--config")
        .arg(&config)
        .arg("--require-api-key")
        .env("XDG_CONFIG_HOME", dir.join("config-home"));
    let keys = Keys {
        admin: create_api_key(&data_dir, "admin"),
        execute: create_api_key(&data_dir, "execute"),
    };
    (Server::spawn(cmd, data_dir), keys)
}

fn with_key(s: &Server, method: &str, path: &str, key: &str, body: Option<&Value>) -> Reply {
    let text = body.map(Value::to_string);
    s.request_with_headers(
        method,
        path,
        &[("X-API-Key", key)],
        text.as_deref().map(|t| ("application/json", t)),
    )
}

#[test]
fn debug_endpoints_need_the_admin_scope() {
    let (s, keys) = server("scopes");
    for (method, path) in [
        ("GET", "/api/v1/debug/runs"),
        ("GET", "/api/v1/debug/cache"),
        ("GET", "/api/v1/debug/config"),
        ("POST", "/api/v1/debug/profile?seconds=1"),
    ] {
        let anonymous = s.request(method, path, None);
        assert_eq!(anonymous.error_kind(), (401, "Unauthorized".to_owned()), "{path}");
        let execute = with_key(&s, method, path, &keys.execute, None);
        assert_eq!(execute.error_kind(), (403, "Forbidden".to_owned()), "{path}");
    }
    let admin = with_key(&s, "GET", "/api/v1/debug/runs", &keys.admin, None);
    assert_eq!(admin.status, 200, "{}", admin.body);
}

#[test]
fn runs_in_progress_are_listed_until_they_end() {
    let (s, keys) = server("runs");
    let addr = s.addr.clone();
    let execute_key = keys.execute.clone();
    let long = std::thread::spawn(move || {
        let body = json!({"script": SPIN, "limits": {"time_ms": 3000}}).to_string();
        let raw = format!(
            "POST /api/v1/execute HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-API-Key: {execute_key}\r\n\
             X-Request-Id: long-run-1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        support::send_to(&addr, raw.as_bytes())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = None;
    while Instant::now() < deadline && seen.is_none() {
        let runs = with_key(&s, "GET", "/api/v1/debug/runs", &keys.admin, None).json();
        seen = runs["runs"].as_array().and_then(|r| r.first().cloned());
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = seen.expect("the long run was listed while it ran");
    assert_eq!(run["request_id"], "long-run-1");
    assert_eq!(run["script"], "inline");
    assert!(
        run["elapsed_ms"].is_u64() && run["started_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{run}"
    );
    let ended = long.join().expect("the long run's client");
    assert!(matches!(ended.status, 422 | 504), "{}", ended.body);
    let runs = with_key(&s, "GET", "/api/v1/debug/runs", &keys.admin, None).json();
    assert_eq!(runs["count"], 0, "{runs}");
    assert_eq!(runs["runs"], json!([]));
}

#[test]
fn cache_summary_and_config_without_secrets() {
    let (s, keys) = server("cache-config");
    let stored = with_key(
        &s,
        "POST",
        "/api/v1/scripts",
        &keys.admin,
        Some(&json!({"name": "hello", "source": "x = 1\naddResult(x)\n"})),
    );
    assert_eq!(stored.status, 201, "{}", stored.body);
    let cold = with_key(&s, "GET", "/api/v1/debug/cache", &keys.admin, None).json();
    assert_eq!(cold["registry"]["scripts"], 1, "{cold}");
    assert_eq!(cold["registry"]["listed"][0]["name"], "hello");
    assert_eq!(cold["registry"]["listed"][0]["cached"], false, "{cold}");
    let ran = with_key(&s, "POST", "/api/v1/run/hello", &keys.execute, None);
    assert_eq!(ran.status, 200, "{}", ran.body);
    let inline = with_key(
        &s,
        "POST",
        "/api/v1/execute",
        &keys.execute,
        Some(&json!({"script": "y = 2\naddResult(y)\n"})),
    );
    assert_eq!(inline.status, 200, "{}", inline.body);
    let warm = with_key(&s, "GET", "/api/v1/debug/cache", &keys.admin, None).json();
    let listed = &warm["registry"]["listed"][0];
    assert_eq!(
        (listed["version"].as_i64(), listed["cached"].as_bool()),
        (Some(1), Some(true)),
        "{warm}"
    );
    assert_eq!(listed["artifact_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(warm["inline_scripts"], 1, "{warm}");
    assert!(warm["runs"]["slots"].as_u64().is_some_and(|n| n > 0), "{warm}");

    let config = with_key(&s, "GET", "/api/v1/debug/config", &keys.admin, None);
    assert_eq!(config.status, 200);
    assert_eq!(config.header("content-type"), Some("text/plain; charset=utf-8"));
    let text = &config.body;
    assert!(
        text.contains("require_api_key = true  # flag --require-api-key"),
        "{text}"
    );
    assert!(
        text.contains("app_database_url = \"postgres://avap:***@127.0.0.1:5432/test\""),
        "{text}"
    );
    for secret in ["DBSECRET", "AISECRET", "TOKENSECRET123"] {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    toml_lines_parse(text);
}

/// Every non-comment line is `key = value`, a table header or empty.
fn toml_lines_parse(text: &str) {
    for line in text.lines() {
        let line = line.trim();
        assert!(
            line.is_empty() || line.starts_with('#') || line.starts_with('[') || line.contains(" = "),
            "{line:?}"
        );
    }
}

#[test]
fn cpu_profile_while_scripts_run() {
    let (s, keys) = server("profile");
    let bad = with_key(&s, "POST", "/api/v1/debug/profile?seconds=0", &keys.admin, None);
    assert_eq!(bad.error_kind(), (400, "InvalidRequest".to_owned()));
    let bad = with_key(&s, "POST", "/api/v1/debug/profile?seconds=61", &keys.admin, None);
    assert_eq!(bad.error_kind(), (400, "InvalidRequest".to_owned()));

    // Scripts keep running in wasm (JIT code, wasmtime's signal handlers)
    // for the whole profile.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let (addr, key, stop) = (s.addr.clone(), keys.execute.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({"script": SPIN, "limits": {"time_ms": 400}}).to_string();
                    let raw = format!(
                        "POST /api/v1/execute HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-API-Key: {key}\r\n\
                         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    statuses.push(support::send_to(&addr, raw.as_bytes()).status);
                }
                statuses
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (addr, admin) = (s.addr.clone(), keys.admin.clone());
    let profiling = std::thread::spawn(move || {
        let raw = format!(
            "POST /api/v1/debug/profile?seconds=3 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             X-API-Key: {admin}\r\nContent-Length: 0\r\n\r\n"
        );
        support::send_to(&addr, raw.as_bytes())
    });
    std::thread::sleep(Duration::from_millis(800));
    let second = with_key(&s, "POST", "/api/v1/debug/profile?seconds=1", &keys.admin, None);
    assert_eq!(
        second.error_kind(),
        (409, "ProfileInProgress".to_owned()),
        "one profile at a time"
    );
    let profile = profiling.join().expect("the profile's client");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(profile.status, 200, "{}", profile.body);
    assert_eq!(profile.header("content-type"), Some("text/plain; charset=utf-8"));
    let lines: Vec<&str> = profile.body.lines().collect();
    assert!(!lines.is_empty(), "samples were taken");
    for line in &lines {
        let (stack, count) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not folded: {line:?}"));
        assert!(count.parse::<u64>().is_ok_and(|n| n > 0), "{line:?}");
        assert!(!stack.is_empty(), "{line:?}");
    }
    assert!(
        lines.iter().any(|l| l.contains(';')),
        "at least one frame under a thread:\n{}",
        profile.body
    );
    let samples: u64 = lines
        .iter()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert!(samples >= 20, "{samples} samples in 3 s at 99 Hz with two busy runs");
    for runner in runners {
        let statuses = runner.join().expect("a runner");
        assert!(!statuses.is_empty());
        assert!(statuses.iter().all(|s| matches!(s, 200 | 422 | 504)), "{statuses:?}");
    }
    // The server survived the profile and a second one can start.
    let health = s.get("/api/v1/health");
    assert_eq!(health.status, 200);
    let again = with_key(&s, "POST", "/api/v1/debug/profile?seconds=1", &keys.admin, None);
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(s.stop().success());
}
