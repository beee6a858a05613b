//! Logs of `avap serve`: JSON lines on stderr, one access line per request
//! carrying its request id, and no secrets: API keys, cookies, query
//! strings, script sources and params never reach the log.

use std::process::{Command, Stdio};

use serde_json::{Value, json};

mod support;

use support::{Server, create_api_key, fresh_dir};

const SECRETS: [&str; 6] = [
    "BEARERSECRET",
    "APIKEYSECRET",
    "COOKIESECRET",
    "QUERYSECRET",
    "PARAMSECRET",
    "SCRIPTSECRET",
];

#[test]
fn access_lines_are_json_with_request_ids_and_no_secrets() {
    let dir = fresh_dir("json");
    let data_dir = dir.join("data");
    let key = create_api_key(&data_dir, "execute");
    let log_path = dir.join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.env("XDG_CONFIG_HOME", dir.join("config-home"))
        .env("AVAP_LOG_FORMAT", "json")
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cors-origin",
            "https://app.example",
            "--data-dir",
        ])
        .arg(&data_dir);
    let s = Server::spawn_with_stderr(cmd, data_dir, Stdio::from(log));

    let script = "addParam(password, p)\nsecret = \"SCRIPTSECRET\"\naddResult(p)\n";
    let body = json!({"script": script, "params": {"password": "PARAMSECRET"}}).to_string();
    let json_body = Some(("application/json", body.as_str()));

    // A client id is echoed; secrets ride in headers and the query string.
    let sent = s.request_with_headers(
        "POST",
        "/api/v1/execute?token=QUERYSECRET",
        &[
            ("X-Request-Id", "client-id-1"),
            ("Authorization", "Bearer avap_0123abcd_BEARERSECRET"),
            ("Cookie", "session=COOKIESECRET"),
        ],
        json_body,
    );
    assert_eq!(sent.status, 401, "{}", sent.body);
    assert_eq!(sent.header("x-request-id"), Some("client-id-1"));

    let bad_key = s.request_with_headers(
        "POST",
        "/api/v1/execute",
        &[("X-API-Key", "avap_0123abcd_APIKEYSECRET")],
        json_body,
    );
    assert_eq!(bad_key.status, 401);

    // A run with a real key: its params and source stay out of the log.
    let ran = s.request_with_headers(
        "POST",
        "/api/v1/execute?password=QUERYSECRET",
        &[
            ("Authorization", &format!("Bearer {key}")),
            ("X-Request-Id", "with key"),
        ],
        json_body,
    );
    assert_eq!(ran.status, 200, "{}", ran.body);
    assert!(ran.body.contains("PARAMSECRET"), "the run saw its params: {}", ran.body);
    let generated = ran.header("x-request-id").expect("an id").to_owned();
    assert!(
        generated.len() == 16 && generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "an id with a space is replaced: {generated:?}"
    );

    let missing = s.get("/api/v1/nope?x=QUERYSECRET");
    assert_eq!(missing.status, 404);
    let missing_id = missing.header("x-request-id").expect("404s carry an id").to_owned();

    let preflight = s.request_with_headers(
        "OPTIONS",
        "/api/v1/execute",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        None,
    );
    assert_eq!(preflight.status, 200, "answered by the CORS layer");
    assert!(preflight.header("x-request-id").is_some(), "preflights carry an id");
    // Graceful shutdown writes the buffered lines.
    assert!(s.stop().success());

    let text = std::fs::read_to_string(&log_path).expect("read the log");
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} leaked into the log:\n{text}");
    }
    let access: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(access.len(), 5, "one access line per request:\n{text}");
    for line in &access {
        let id = line["span"]["request_id"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "{line}");
        assert_eq!(line["level"], "INFO");
        assert!(line["latency_ms"].is_number(), "{line}");
        assert!(!line["path"].as_str().unwrap_or("?").contains('?'), "{line}");
    }
    let by_id = |id: &str| {
        *access
            .iter()
            .find(|l| l["span"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}:\n{text}"))
    };
    let first = by_id("client-id-1");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/api/v1/execute");
    assert_eq!(first["route"], "/api/v1/execute");
    assert_eq!(first["status"], 401);
    let with_key = by_id(&generated);
    assert_eq!(with_key["status"], 200);
    assert_eq!(with_key["key_id"], key["avap_".len().."avap_".len() + 8]);
    let not_found = by_id(&missing_id);
    assert_eq!(
        (&not_found["status"], &not_found["path"]),
        (&json!(404), &json!("/api/v1/nope"))
    );
}
