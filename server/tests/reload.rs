//! Reloading the configuration while serving (`POST /api/v1/admin/reload`),
//! in process: each key that can change live is changed in the file and
//! its effect checked on the next requests, without a restart; the keys
//! that cannot are reported, and a bad file changes nothing. SIGHUP and
//! the log level are checked on a real process in `tests/server_reload.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use avap_server::config::{self, LogLevel};
use avap_server::reload::Reloader;
use avap_server::{AppState, Location, ServeArgs, Store, app};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Reply { status, headers, body }
}

async fn execute(app: &Router, script: &str) -> Reply {
    let body = json!({"script": script}).to_string();
    let request = Request::post("/api/v1/execute")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a request");
    send(app, request).await
}

fn kind(reply: &Reply) -> &str {
    reply.body["error"]["kind"].as_str().unwrap_or("<none>")
}

async fn reload(app: &Router) -> Reply {
    send(app, Request::post("/api/v1/admin/reload").body(Body::empty()).unwrap()).await
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The configuration file of these tests: `extra` lines after the fixed ones.
fn write_config(path: &Path, data_dir: &Path, extra: &str) {
    let app_database = if extra.contains("app_database_url") {
        String::new()
    } else {
        format!(
            "app_database_url = \"sqlite:{}\"\n",
            data_dir.join("app.sqlite").display()
        )
    };
    let text = format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n{app_database}{extra}\n",
        data_dir.display().to_string(),
    );
    std::fs::write(path, text).expect("write the config file");
}

struct Server {
    app: Router,
    state: AppState,
    config_file: PathBuf,
    data_dir: PathBuf,
    log_levels: Arc<Mutex<Vec<LogLevel>>>,
}

impl Server {
    /// A server started from a config file holding `extra`, as `avap serve
    /// --config FILE` would be (the log level change is recorded, not applied).
    async fn start(name: &str, extra: &str) -> Server {
        let dir = std::env::temp_dir().join(format!("avap-reload-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let config_file = dir.join("config.toml");
        write_config(&config_file, &dir, extra);
        let args = ServeArgs {
            config: Some(config_file.clone()),
            ..ServeArgs::default()
        };
        let resolved = config::resolve(&args).expect("the config resolves");
        let mut server_config = resolved.settings.server_config();
        server_config.effective_config = resolved.to_toml().ok().map(Arc::from);
        let store = Store::connect(&Location::Sqlite(dir.join("avap.sqlite")))
            .await
            .expect("the registry");
        let key = avap_hostfns::artifact::generate_key().expect("a key");
        let state = AppState::new(server_config, store, key).expect("the state");
        let log_levels = Arc::new(Mutex::new(Vec::new()));
        let recorded = log_levels.clone();
        let set_level = Box::new(move |level| {
            recorded.lock().unwrap().push(level);
            Ok(())
        });
        state.set_reloader(Reloader::new(args, resolved.settings, Some(set_level)));
        Server {
            app: app(state.clone()),
            state,
            config_file,
            data_dir: dir,
            log_levels,
        }
    }

    /// Rewrite the file with `extra` and reload; the report.
    async fn reload_with(&self, extra: &str) -> Value {
        write_config(&self.config_file, &self.data_dir, extra);
        let reply = reload(&self.app).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body
    }
}

/// An upstream on loopback (private, so refused until allowed).
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hello", axum::routing::get(|| async { "hi from upstream" }))
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

const LOOP: &str = "s = 0\nstartLoop(i, 1, 20000)\n    s = s + i\nendLoop()\naddResult(s)\n";

#[tokio::test]
async fn every_live_key_takes_effect_without_a_restart() {
    let server = Server::start("live", "").await;
    let app = &server.app;

    // [limits]: the maximums clamp the next run.
    assert_eq!(execute(app, LOOP).await.status, StatusCode::OK);
    let report = server.reload_with("[limits]\nfuel = 20000\n").await;
    assert_eq!(strings(&report["applied"]), ["limits.fuel"]);
    assert_eq!(strings(&report["needs_restart"]), Vec::<String>::new());
    let reply = execute(app, LOOP).await;
    assert_eq!(kind(&reply), "FuelExhausted", "{}", reply.body);
    let info = send(app, Request::get("/api/v1/info").body(Body::empty()).unwrap()).await;
    assert_eq!(info.body["limits"]["fuel"], 20000);

    // deny_capabilities: a module compiled and cached before is refused too.
    let clock = "getDateTime(\"%Y\", 0, \"UTC\", y)\naddResult(y)\n";
    assert_eq!(execute(app, clock).await.status, StatusCode::OK);
    server.reload_with("deny_capabilities = [\"clock\"]\n").await;
    let reply = execute(app, clock).await;
    assert_eq!(
        (reply.status, kind(&reply)),
        (StatusCode::FORBIDDEN, "CapabilityDenied")
    );
    server.reload_with("").await;
    assert_eq!(execute(app, clock).await.status, StatusCode::OK, "allowed again");

    // outbound_allow: a private upstream refused, then reachable.
    let upstream = upstream().await;
    let get = format!("RequestGet(\"http://{upstream}/hello\", \"\", \"\", r)\naddResult(r)\n");
    assert_eq!(kind(&execute(app, &get).await), "CapabilityDenied");
    let report = server.reload_with("outbound_allow = [\"127.0.0.1\"]\n").await;
    assert_eq!(strings(&report["applied"]), ["outbound_allow"]);
    let reply = execute(app, &get).await;
    assert_eq!(reply.body["result"]["r"], "hi from upstream", "{}", reply.body);

    // db_*: the application database's caps.
    let rows = "ormDirect(\"SELECT 1 AS a UNION ALL SELECT 2 UNION ALL SELECT 3\", r)\naddResult(r)\n";
    assert_eq!(execute(app, rows).await.status, StatusCode::OK);
    server.reload_with("db_max_rows = 2\n").await;
    assert_eq!(kind(&execute(app, rows).await), "DatabaseError");

    // rate_limit / rate_burst: the next requests are counted.
    server.reload_with("rate_limit = 1\nrate_burst = 2\n").await;
    let statuses: Vec<StatusCode> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(execute(app, "x = 1\naddResult(x)\n").await.status);
        }
        out
    };
    assert_eq!(statuses[2], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");

    // request_timeout_ms: the outer bound of the next request.
    let slow = format!("RequestGet(\"http://{upstream}/slow\", \"\", \"\", r)\naddResult(r)\n");
    server
        .reload_with("request_timeout_ms = 100\noutbound_allow = [\"127.0.0.1\"]\n")
        .await;
    let started = std::time::Instant::now();
    let reply = execute(app, &slow).await;
    assert_eq!(
        (reply.status, kind(&reply)),
        (StatusCode::GATEWAY_TIMEOUT, "RequestTimeout")
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // cors_origins: a preflight from the new origin is answered.
    let preflight = || {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api/v1/execute")
            .header(header::ORIGIN, "https://app.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(Body::empty())
            .unwrap()
    };
    let before = send(app, preflight()).await;
    assert!(before.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    server.reload_with("cors_origins = [\"https://app.example\"]\n").await;
    let after = send(app, preflight()).await;
    assert_eq!(
        after
            .headers
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );

    // audit_retention_days and log_level.
    assert_eq!(server.state.audit().retention(), None);
    let report = server
        .reload_with("audit_retention_days = 7\nlog_level = \"debug\"\n")
        .await;
    assert!(
        strings(&report["applied"]).contains(&"log_level".to_owned()),
        "{report}"
    );
    assert_eq!(server.state.audit().retention(), Some(Duration::from_hours(24 * 7)));
    assert_eq!(*server.log_levels.lock().unwrap(), [LogLevel::Debug]);

    // Every reload left an audit row.
    server.state.audit().flush().await;
    let audit = send(
        app,
        Request::get("/api/v1/audit?limit=500").body(Body::empty()).unwrap(),
    )
    .await;
    let rows: Vec<Value> = audit.body["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["action"] == "config_reload")
        .cloned()
        .collect();
    assert!(rows.len() >= 9, "{}", audit.body);
    assert!(rows.iter().all(|row| row["outcome"] == "ok"), "{}", audit.body);
}

#[tokio::test]
async fn the_application_database_route_limits_and_breakers_change_live() {
    let server = Server::start("databases", "").await;
    let app = &server.app;
    let other = format!(
        "app_database_url = \"sqlite:{}\"\n",
        server.data_dir.join("other.sqlite").display()
    );
    let report = server.reload_with(&other).await;
    assert_eq!(strings(&report["applied"]), ["app_database_url"]);
    let create = "ormDirect(\"CREATE TABLE t (x INTEGER)\", r)\normDirect(\"INSERT INTO t VALUES (42)\", r)\n";
    assert_eq!(execute(app, create).await.status, StatusCode::OK);
    let read = "ormDirect(\"SELECT x FROM t\", r)\naddResult(r)\n";
    assert_eq!(execute(app, read).await.body["result"]["r"], json!([{"x": 42}]));
    server.reload_with("").await;
    assert_eq!(
        kind(&execute(app, read).await),
        "DatabaseError",
        "back on app.sqlite: no table t"
    );
    server.reload_with(&other).await;
    assert_eq!(execute(app, read).await.body["result"]["r"], json!([{"x": 42}]));

    let report = server
        .reload_with(&format!(
            "{other}outbound_breaker_failure_pct = 0\n[route_rate_limits]\n\"/api/v1/execute\" = {{ per_second = 1, burst = 1 }}\n"
        ))
        .await;
    assert_eq!(
        strings(&report["applied"]),
        ["outbound_breaker_failure_pct", "route_rate_limits"]
    );
    let first = execute(app, "x = 1\naddResult(x)\n").await;
    assert_eq!(first.status, StatusCode::OK);
    let second = execute(app, "x = 1\naddResult(x)\n").await;
    assert_eq!(
        (second.status, kind(&second)),
        (StatusCode::TOO_MANY_REQUESTS, "RateLimited")
    );
    let info = send(app, Request::get("/api/v1/info").body(Body::empty()).unwrap()).await;
    assert_eq!(
        info.status,
        StatusCode::OK,
        "other routes keep the server-wide limit only"
    );
}

#[tokio::test]
async fn keys_that_need_a_restart_are_reported_and_left_alone() {
    let server = Server::start("restart", "max_concurrent_runs = 4\n").await;
    let report = server.reload_with("max_concurrent_runs = 9\nrate_limit = 7\n").await;
    assert_eq!(strings(&report["applied"]), ["rate_limit"]);
    assert_eq!(strings(&report["needs_restart"]), ["max_concurrent_runs"]);
    let config = send(
        &server.app,
        Request::get("/api/v1/debug/config").body(Body::empty()).unwrap(),
    )
    .await;
    let text = config.body.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("max_concurrent_runs = 4"),
        "the old value stays in force:\n{text}"
    );
    assert!(text.contains("rate_limit = 7"), "{text}");
    assert!(text.contains("in force after a restart: max_concurrent_runs"), "{text}");
    // Reloading the same file again: nothing changes, still pending.
    let again = server.reload_with("max_concurrent_runs = 9\nrate_limit = 7\n").await;
    assert_eq!(strings(&again["applied"]), Vec::<String>::new());
    assert_eq!(strings(&again["needs_restart"]), ["max_concurrent_runs"]);
}

#[tokio::test]
async fn a_bad_file_changes_nothing() {
    let server = Server::start("bad", "[limits]\nfuel = 20000\n").await;
    let app = &server.app;
    for bad in [
        "rate_limit = \"many\"\n",
        "no_such_key = 1\n",
        "[limits\n",
        "deny_capabilities = [\"telepathy\"]\n",
    ] {
        write_config(&server.config_file, &server.data_dir, bad);
        let reply = reload(app).await;
        assert_eq!(
            (reply.status, kind(&reply)),
            (StatusCode::UNPROCESSABLE_ENTITY, "ConfigInvalid"),
            "{bad}: {}",
            reply.body
        );
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("running one stays in force"), "{message}");
    }
    assert_eq!(
        kind(&execute(app, LOOP).await),
        "FuelExhausted",
        "the old limits still apply"
    );
}

#[tokio::test]
async fn a_server_not_started_from_a_configuration_cannot_reload() {
    let dir = std::env::temp_dir().join(format!("avap-reload-{}-embedded", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::connect(&Location::Sqlite(dir.join("avap.sqlite")))
        .await
        .unwrap();
    let key = avap_hostfns::artifact::generate_key().unwrap();
    let config = avap_server::ServerConfig {
        allow_anonymous: true,
        ..avap_server::ServerConfig::for_this_machine()
    };
    let app = app(AppState::new(config, store, key).unwrap());
    let reply = reload(&app).await;
    assert_eq!(
        (reply.status, kind(&reply)),
        (StatusCode::CONFLICT, "ReloadUnavailable")
    );
}
