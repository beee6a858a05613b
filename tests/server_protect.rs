//! Protection of `avap serve`: rate limits, security headers and CORS,
//! against the real server on a loopback port. (The request timeout is
//! unit-tested in `server/src/protect.rs`: a real request slow enough to
//! hit it is hard to make.)

use serde_json::json;

mod support;

use support::{Reply, Server};

const HELLO: &str = "x = 1\naddResult(x)\n";

fn execute_with(s: &Server, headers: &[(&str, &str)]) -> Reply {
    let body = json!({"script": HELLO}).to_string();
    s.request_with_headers("POST", "/api/v1/execute", headers, Some(("application/json", &body)))
}

#[test]
fn clients_over_the_rate_get_429() {
    let s = Server::start_with_args("rate", &["--rate-limit", "2", "--rate-burst", "2"]);
    // Two quick requests use up the burst (malformed bodies: fast, and they still count).
    for _ in 0..2 {
        assert_eq!(s.post("/api/v1/execute", "{").status, 400);
    }
    let limited = s.execute(&json!({"script": HELLO}));
    assert_eq!(
        limited.error_kind(),
        (429, "RateLimited".to_owned()),
        "{}",
        limited.body
    );
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!(retry >= 1);
    // Health is never limited.
    for _ in 0..10 {
        assert_eq!(s.get("/api/v1/health").status, 200);
    }
    // A made-up key id is not a client of its own: it is charged to the
    // sender's address, so it is limited too (and never reaches the database).
    let forged = execute_with(&s, &[("X-API-Key", "avap_0123abcd_nope")]);
    assert_eq!(forged.error_kind(), (429, "RateLimited".to_owned()), "{}", forged.body);
    // After waiting, the client may go on.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(s.execute(&json!({"script": HELLO})).status, 200);
    // A real key: its first request is charged to the address (the server
    // has not verified it yet); from then on it has a budget of its own.
    let key = support::create_api_key(&s.data_dir, "execute");
    let with_key = [("X-API-Key", key.as_str())];
    assert_eq!(
        execute_with(&s, &with_key).status,
        200,
        "verified on the address's budget"
    );
    for _ in 0..2 {
        assert_eq!(execute_with(&s, &with_key).status, 200, "the key's own burst");
    }
    assert_eq!(
        execute_with(&s, &with_key).error_kind().0,
        429,
        "the key's budget is spent"
    );
}

#[test]
fn responses_carry_security_headers() {
    let s = Server::start("headers");
    let r = s.execute(&json!({"script": HELLO}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("strict-transport-security"), None, "HSTS only when configured");
    let errors = s.get("/api/v1/nope");
    assert_eq!(errors.status, 404);
    assert_eq!(errors.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(s.get("/api/v1/health").header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn hsts_is_sent_when_configured() {
    let data_dir = support::fresh_dir("hsts").join("data");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("AVAP_HSTS_MAX_AGE", "31536000");
    let s = Server::spawn(cmd, data_dir);
    for r in [s.execute(&json!({"script": HELLO})), s.get("/api/v1/nope")] {
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains")
        );
    }
}

#[test]
fn cors_answers_listed_origins_only() {
    let s = Server::start_with_args(
        "cors",
        &[
            "--cors-origin",
            "https://app.example",
            "--cors-origin",
            "http://localhost:3000",
        ],
    );
    let preflight = |origin: &str| {
        s.request_with_headers(
            "OPTIONS",
            "/api/v1/execute",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type, authorization"),
            ],
            None,
        )
    };
    // Preflights are answered by tower-http's CORS layer, before the rest
    // of the stack (no key needed, no rate-limit charge).
    let ok = preflight("https://app.example");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(ok.header("vary"), Some("origin"));
    assert!(ok.header("access-control-allow-methods").unwrap().contains("POST"));
    assert_eq!(
        ok.header("access-control-allow-headers"),
        Some("authorization,content-type,x-api-key")
    );
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert_eq!(
        ok.header("x-content-type-options"),
        Some("nosniff"),
        "security headers too"
    );

    // An unlisted origin gets no grant: the browser refuses the call.
    let other = preflight("https://evil.example");
    assert_eq!(other.header("access-control-allow-origin"), None);

    let listed = execute_with(&s, &[("Origin", "http://localhost:3000")]);
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(
        listed.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let unlisted = execute_with(&s, &[("Origin", "https://evil.example")]);
    assert_eq!(unlisted.status, 200);
    assert_eq!(unlisted.header("access-control-allow-origin"), None);
    assert_eq!(unlisted.header("vary"), Some("origin"));
}
