//! No response of `avap serve` carries a configured secret: a server is
//! configured with connector tokens, database URLs with passwords (the
//! application database, connectors, the registry), a Redis URL with a
//! password, an API key and a model endpoint whose URL holds a key; then
//! every error path a script (or a request) can reach runs through
//! `POST /api/v1/execute`, and each full response (status line, headers and
//! body) is searched for every secret string.
//!
//! The cases are data ([`CASES`]): a script and the outcome that proves its
//! error path was taken (an error kind, or a result holding the message).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::routing::post;
use serde_json::Value;

mod support;

use support::{PgDatabase, Reply, Server, fresh_dir, serve_command};

/// The connector token scripts use.
const TOKEN: &str = "tok_CONNECTOR_SECRET_7f3a9c";
/// A connector whose database does not answer.
const DEAD_TOKEN: &str = "tok_DEAD_CONNECTOR_SECRET_19ab";
const APP_PASSWORD: &str = "AppDbPassw0rdSecret";
const CONNECTOR_PASSWORD: &str = "ConnPassw0rdSecret";
const DEAD_PASSWORD: &str = "DeadPassw0rdSecret";
const REGISTRY_PASSWORD: &str = "RegistryDbPassw0rdSecret";
const REDIS_PASSWORD: &str = "RedisPassw0rdSecret";
const REGISTRY_API_KEY: &str = "avap_0123abcd_RegistryApiKeySecret";
const AI_KEY: &str = "AiQueryKeySecret";
const AI_PASSWORD: &str = "AiUserPassw0rdSecret";
/// Not configured: a credential a script writes into a URL is hidden too.
const SCRIPT_URL_PASSWORD: &str = "ScriptUrlPassw0rd";

/// How a case proves that its error path ran.
enum Expect {
    /// The response's error kind (a run envelope's or an API error's).
    Kind(&'static [&'static str]),
    /// A 200 whose result has this key holding the error message.
    Caught(&'static str),
}

/// `(what, request body, expected outcome)`; `TOKEN` and `DEAD_TOKEN` in a
/// body stand for those connector tokens.
const CASES: &[(&str, &str, Expect)] = &[
    (
        "bad SQL on the application database",
        r#"{"script": "ormDirect(\"SELECT * FROM no_such_table\", rows)\naddResult(rows)\n"}"#,
        Expect::Kind(&["DatabaseError"]),
    ),
    (
        "bad SQL on a connector",
        r#"{"script": "c = avapConnector(\"TOKEN\")\nrows = c.query(\"SELECT * FROM no_such_table\")\naddResult(rows)\n"}"#,
        Expect::Kind(&["DatabaseError"]),
    ),
    (
        "a database error quoting the connector's token",
        r#"{"script": "c = avapConnector(\"TOKEN\")\nrows = c.query(\"SELECT 'TOKEN'::int\")\naddResult(rows)\n"}"#,
        Expect::Kind(&["DatabaseError"]),
    ),
    (
        "a database error quoting a configured password",
        r#"{"script": "ormDirect(\"SELECT 'ConnPassw0rdSecret'::int\", rows)\naddResult(rows)\n"}"#,
        Expect::Kind(&["DatabaseError"]),
    ),
    (
        "an unknown connector token that starts with a configured one",
        r#"{"script": "c = avapConnector(\"TOKEN_and_more\")\naddResult(c)\n"}"#,
        Expect::Kind(&["DatabaseError"]),
    ),
    (
        "an unreachable connector database",
        r#"{"script": "c = avapConnector(\"DEAD_TOKEN\")\nrows = c.query(\"SELECT 1\")\naddResult(rows)\n"}"#,
        Expect::Kind(&["DatabaseError", "TimeoutError"]),
    ),
    (
        "a bad table name",
        r#"{"script": "ormAccessSelect(\"*\", \"users; DROP TABLE x\", \"\", rows)\naddResult(rows)\n"}"#,
        Expect::Kind(&["DatabaseError"]),
    ),
    (
        "a bad table name to ormCheckTable",
        r#"{"script": "ormCheckTable(\"a.b.c\", found)\naddResult(found)\n"}"#,
        Expect::Kind(&["DatabaseError"]),
    ),
    (
        "an insert into a missing table",
        r#"{"script": "ormAccessInsert(\"a\", \"no_such_table\", [1], n)\naddResult(n)\n"}"#,
        Expect::Kind(&["DatabaseError"]),
    ),
    // PostgreSQL's own `statement_timeout` may cancel the statement just
    // before the client's timer (a `DatabaseError` then).
    (
        "a statement timeout on the application database",
        r#"{"script": "ormDirect(\"SELECT pg_sleep(5)\", rows)\naddResult(rows)\n"}"#,
        Expect::Kind(&["TimeoutError", "DatabaseError"]),
    ),
    (
        "a statement timeout on a connector",
        r#"{"script": "c = avapConnector(\"TOKEN\")\nrows = c.query(\"SELECT pg_sleep(5)\")\naddResult(rows)\n"}"#,
        Expect::Kind(&["TimeoutError", "DatabaseError"]),
    ),
    (
        "the run's time limit while a connector waits",
        r#"{"script": "c = avapConnector(\"TOKEN\")\nrows = c.query(\"SELECT pg_sleep(5)\")\naddResult(rows)\n", "limits": {"time_ms": 150}}"#,
        Expect::Kind(&["TimeLimit"]),
    ),
    (
        "a caught database error stored in the result",
        r#"{"script": "try()\n  c = avapConnector(\"TOKEN\")\n  rows = c.query(\"SELECT 'TOKEN'::int\")\nexception(e)\n  addResult(e)\nend()\n"}"#,
        Expect::Caught("e"),
    ),
    (
        "an outbound refusal",
        r#"{"script": "r = RequestGet(\"http://10.0.0.1/x\", \"\", \"\")\naddResult(r)\n"}"#,
        Expect::Kind(&["CapabilityDenied"]),
    ),
    (
        "an outbound refusal stored by RequestPost",
        r#"{"script": "RequestPost(\"http://10.0.0.1/x\", \"\", \"\", \"\", r)\nerror = r[\"error\"]\naddResult(error)\n"}"#,
        Expect::Caught("error"),
    ),
    (
        "a refused connection to a URL with a password",
        r#"{"script": "r = RequestGet(\"http://user:ScriptUrlPassw0rd@127.0.0.1:1/x?token=ScriptUrlPassw0rd\", \"\", \"\")\naddResult(r)\n"}"#,
        Expect::Kind(&["HttpError"]),
    ),
    (
        "the model endpoint answering 401 with the request it got",
        r#"{"script": "answer = functionAI(\"echo\")\naddResult(answer)\n"}"#,
        Expect::Kind(&["HttpError"]),
    ),
    (
        "the model endpoint timing out",
        r#"{"script": "answer = functionAI(\"slow\")\naddResult(answer)\n"}"#,
        Expect::Kind(&["TimeoutError"]),
    ),
    (
        "a stored script that does not exist",
        r#"{"name": "no_such_script"}"#,
        Expect::Kind(&["ScriptNotFound"]),
    ),
    (
        "a body that is not JSON",
        r#"{"script": TOKEN}"#,
        Expect::Kind(&["InvalidJson"]),
    ),
];

/// The model endpoint: `echo` gets a 401 quoting the request line (with
/// the key in its query), `slow` an answer after the outbound timeout.
fn model_endpoint() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let app = Router::new().route(
                "/v1/ask",
                post(|uri: Uri, body: String| async move {
                    if body.contains("slow") {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        return (StatusCode::OK, "{\"response\": \"late\"}".to_owned());
                    }
                    (StatusCode::UNAUTHORIZED, format!("invalid key in POST {uri}"))
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("address")).expect("send");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    rx.recv().expect("the model endpoint starts")
}

#[test]
fn no_error_response_carries_a_configured_secret() {
    let app_db = PgDatabase::create("secrets_app");
    let registry_db = PgDatabase::create("secrets_registry");
    let with_password =
        |url: &str, user_password: &str| url.replacen("://postgres@", &format!("://postgres:{user_password}@"), 1);
    let app_url = with_password(&app_db.url, APP_PASSWORD);
    let connector_url = with_password(&app_db.url, CONNECTOR_PASSWORD);
    let dead_url = format!("postgres://avap:{DEAD_PASSWORD}@127.0.0.1:1/avap");
    let registry_url = with_password(&registry_db.url, REGISTRY_PASSWORD);
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0");
    let ai = model_endpoint();
    let ai_url = format!("http://aiuser:{AI_PASSWORD}@{ai}/v1/ask?api_key={AI_KEY}");

    let dir = fresh_dir("secrets");
    let data_dir = dir.join("data");
    let config = dir.join("avap.toml");
    std::fs::write(
        &config,
        format!(
            "app_database_url = {app_url:?}\n\
             redis_url = {redis_url:?}\n\
             registry_api_key = {REGISTRY_API_KEY:?}\n\
             ai_endpoint = {ai_url:?}\n\
             outbound_allow = [\"{ai}\", \"127.0.0.1:1\"]\n\
             outbound_timeout_ms = 500\n\
             db_statement_timeout_ms = 300\n\
             [connectors]\n\
             {TOKEN} = {connector_url:?}\n\
             {DEAD_TOKEN} = {dead_url:?}\n"
        ),
    )
    .expect("write the config file");
    let mut cmd = serve_command(&data_dir);
    cmd.arg("--config")
        .arg(&config)
        .arg("--require-api-key")
        .env("AVAP_DATABASE_URL", &registry_url)
        .env("XDG_CONFIG_HOME", dir.join("config-home"));
    // The key is made in the server's registry before it starts.
    let key = {
        let mut make = std::process::Command::new(env!("CARGO_BIN_EXE_avap"));
        make.args(["apikey", "create", "--scope", "execute", "--data-dir"])
            .arg(&data_dir)
            .arg("--database-url")
            .arg(&registry_url);
        let out = make.output().expect("run avap apikey");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
    };
    let s = Server::spawn(cmd, data_dir.clone());

    let secrets: Vec<&str> = vec![
        TOKEN,
        DEAD_TOKEN,
        APP_PASSWORD,
        &app_url,
        CONNECTOR_PASSWORD,
        &connector_url,
        DEAD_PASSWORD,
        &dead_url,
        REGISTRY_PASSWORD,
        &registry_url,
        REDIS_PASSWORD,
        &redis_url,
        REGISTRY_API_KEY,
        &key,
        AI_KEY,
        AI_PASSWORD,
        &ai_url,
        SCRIPT_URL_PASSWORD,
    ];
    let mut failures = Vec::new();
    for (what, body, expect) in CASES {
        let body = body.replace("DEAD_TOKEN", DEAD_TOKEN).replace("TOKEN", TOKEN);
        let r = s.request_with_headers(
            "POST",
            "/api/v1/execute",
            &[("Authorization", &format!("Bearer {key}"))],
            Some(("application/json", &body)),
        );
        let full = format!("{} {:?}\n{}", r.status, r.headers, r.body);
        for secret in &secrets {
            if full.contains(secret) {
                failures.push(format!("{what}: the response shows {secret:?}:\n{full}"));
            }
        }
        if let Err(why) = check(&r, expect) {
            failures.push(format!("{what}: {why}:\n{full}"));
        }
    }
    // A request with a key that is not valid, but embeds the real one.
    let r = s.request_with_headers(
        "POST",
        "/api/v1/execute",
        &[("X-API-Key", &format!("{key}x"))],
        Some(("application/json", "{\"script\": \"addResult(1)\"}")),
    );
    assert_eq!(r.error_kind(), (401, "Unauthorized".to_owned()));
    assert!(!r.body.contains(&key), "{}", r.body);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Whether `r` shows the outcome `expect` names.
fn check(r: &Reply, expect: &Expect) -> Result<(), String> {
    let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("not JSON: {e}"))?;
    match expect {
        Expect::Kind(kinds) => {
            let kind = v["error"]["kind"].as_str().unwrap_or_default();
            if kinds.contains(&kind) {
                Ok(())
            } else {
                Err(format!("expected one of {kinds:?}, got {kind:?}"))
            }
        }
        Expect::Caught(key) => match &v["result"][key] {
            Value::String(message) if r.status == 200 && !message.is_empty() => Ok(()),
            other => Err(format!(
                "expected a message in result.{key}, got {other} ({})",
                r.status
            )),
        },
    }
}
