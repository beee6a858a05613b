//! A stored script's own limits and rate limit, and rate limits per route,
//! in process (router `oneshot`): what each applies to, the precedence
//! (server maximum ≥ script's limits ≥ the request's), and that a policy
//! change is a new version like a source change.

mod support;

use avap_server::ServerConfig;
use axum::Router;
use axum::http::StatusCode;
use serde_json::{Value, json};

async fn server(name: &str, config: ServerConfig) -> Router {
    support::router(&format!("policy-{name}"), config).await
}

async fn send(app: &Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    support::send_json(app, method, path, body).await
}

fn kind(body: &Value) -> &str {
    body["error"]["kind"].as_str().unwrap_or("<none>")
}

const LOOP: &str = "s = 0\nstartLoop(i, 1, 20000)\n    s = s + i\nendLoop()\naddResult(s)\n";

#[tokio::test]
async fn a_stored_scripts_limits_apply_to_every_way_of_running_it() {
    let app = server("limits", ServerConfig::for_this_machine()).await;
    let store = |limits: Value| json!({"name": "report", "source": LOOP, "limits": limits});
    let (status, body) = send(&app, "POST", "/api/v1/scripts", Some(store(json!({"fuel": 20000})))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, shown) = send(&app, "GET", "/api/v1/scripts/report", None).await;
    assert_eq!(shown["limits"], json!({"fuel": 20000}));
    assert_eq!(shown["rate_limit"], Value::Null);

    let (_, run) = send(&app, "POST", "/api/v1/run/report", None).await;
    assert_eq!(kind(&run), "FuelExhausted", "{run}");
    // By name, asking for more than the script allows: the script's limit still holds.
    let by_name = json!({"name": "report", "limits": {"fuel": 1_000_000}});
    let (_, run) = send(&app, "POST", "/api/v1/execute", Some(by_name)).await;
    assert_eq!(kind(&run), "FuelExhausted", "{run}");
    // The same source inline has the server's maximum.
    let (status, run) = send(&app, "POST", "/api/v1/execute", Some(json!({"script": LOOP}))).await;
    assert_eq!(status, StatusCode::OK, "{run}");

    // The same source and limits: unchanged; other limits: a new version.
    let (status, body) = send(&app, "POST", "/api/v1/scripts", Some(store(json!({"fuel": 20000})))).await;
    assert_eq!(
        (status, body["unchanged"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{body}"
    );
    let (status, body) = send(&app, "POST", "/api/v1/scripts", Some(store(json!({"fuel": 1_000_000})))).await;
    assert_eq!(
        (status, body["version"].as_i64()),
        (StatusCode::CREATED, Some(2)),
        "{body}"
    );
    let (status, run) = send(&app, "POST", "/api/v1/run/report", None).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    // Rolling back brings the old limits back with the old version.
    let (status, _) = send(
        &app,
        "POST",
        "/api/v1/scripts/report/rollback",
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, run) = send(&app, "POST", "/api/v1/run/report", None).await;
    assert_eq!(kind(&run), "FuelExhausted", "{run}");
}

#[tokio::test]
async fn a_scripts_limits_never_pass_the_servers_maximum() {
    let config = ServerConfig {
        limits: avap_runtime::Limits {
            fuel: 20_000,
            ..ServerConfig::LIMITS
        },
        ..ServerConfig::for_this_machine()
    };
    let app = server("clamped", config).await;
    let body = json!({"name": "greedy", "source": LOOP, "limits": {"fuel": 1_000_000_000_000_u64}});
    let (status, _) = send(&app, "POST", "/api/v1/scripts", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, run) = send(&app, "POST", "/api/v1/run/greedy", None).await;
    assert_eq!(kind(&run), "FuelExhausted", "{run}");
}

#[tokio::test]
async fn a_stored_scripts_rate_limit_is_per_script() {
    let app = server("rate", ServerConfig::for_this_machine()).await;
    let limited =
        json!({"name": "limited", "source": "x = 1\naddResult(x)\n", "rate_limit": {"per_second": 1, "burst": 2}});
    let (status, body) = send(&app, "POST", "/api/v1/scripts", Some(limited)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let free = json!({"name": "free", "source": "x = 2\naddResult(x)\n"});
    assert_eq!(
        send(&app, "POST", "/api/v1/scripts", Some(free)).await.0,
        StatusCode::CREATED
    );
    let (_, shown) = send(&app, "GET", "/api/v1/scripts/limited", None).await;
    assert_eq!(shown["rate_limit"], json!({"per_second": 1, "burst": 2}));

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(send(&app, "GET", "/api/v1/run/limited", None).await.0);
    }
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]
    );
    // By name through /execute: the same bucket.
    let (status, body) = send(&app, "POST", "/api/v1/execute", Some(json!({"name": "limited"}))).await;
    assert_eq!((status, kind(&body)), (StatusCode::TOO_MANY_REQUESTS, "RateLimited"));
    // Other scripts are not affected.
    for _ in 0..3 {
        assert_eq!(send(&app, "GET", "/api/v1/run/free", None).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn route_rate_limits_apply_to_their_prefix_only() {
    let mut settings = avap_server::config::Settings::defaults(std::env::temp_dir());
    let rate = avap_server::config::RouteRate {
        per_second: 1,
        burst: Some(1),
    };
    settings.route_rate_limits.insert("/api/v1/run/hello".to_owned(), rate);
    let mut config = ServerConfig::for_this_machine();
    config.protect = settings.protect_config();
    let app = server("route", config).await;
    for name in ["hello", "hello2"] {
        let body = json!({"name": name, "source": "x = 1\naddResult(x)\n"});
        assert_eq!(
            send(&app, "POST", "/api/v1/scripts", Some(body)).await.0,
            StatusCode::CREATED
        );
    }
    assert_eq!(send(&app, "GET", "/api/v1/run/hello", None).await.0, StatusCode::OK);
    let (status, body) = send(&app, "GET", "/api/v1/run/hello/sub/path", None).await;
    assert_eq!(
        (status, kind(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "RateLimited"),
        "the prefix covers sub-paths"
    );
    // `/api/v1/run/hello2` is not under `/api/v1/run/hello` (whole segments).
    assert_eq!(send(&app, "GET", "/api/v1/run/hello2", None).await.0, StatusCode::OK);
    assert_eq!(send(&app, "GET", "/api/v1/run/hello2", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn bad_policies_are_refused_with_what_to_fix() {
    let app = server("bad", ServerConfig::for_this_machine()).await;
    for (policy, expected) in [
        (json!({"limits": [null, null]}), "expected a JSON object"),
        (
            json!({"limits": {"output_kb": 9_223_372_036_854_775_808_u64}}),
            "must be at most",
        ),
        (json!({"limits": {"fule": 5}}), "unknown field `fule`"),
        (json!({"rate_limit": {"per_second": 0}}), "must be 1 to 1000000"),
        (
            json!({"rate_limit": {"per_second": 5, "burst": 0}}),
            "must be 1 to 1000000",
        ),
        (json!({"rate_limit": {"burst": 5}}), "missing field `per_second`"),
    ] {
        let mut body = json!({"name": "x", "source": "x = 1\naddResult(x)\n"});
        body.as_object_mut()
            .unwrap()
            .extend(policy.as_object().unwrap().clone());
        let (status, reply) = send(&app, "POST", "/api/v1/scripts", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{policy}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{policy}: {message}");
    }
    assert_eq!(
        send(&app, "GET", "/api/v1/scripts/x", None).await.0,
        StatusCode::NOT_FOUND
    );
}
