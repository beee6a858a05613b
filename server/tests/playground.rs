//! The playground's server side in process (`oneshot` on `app(state)`):
//! the page and its files (types, `ETag`/304, their own CSP), 404 when it
//! is off, `POST /api/v1/check`, the `Avap-Usage` header of runs, and
//! every example of the menu checked and run with the request it shows.
//! The page itself, in a browser: `tests/browser/playground.sh`.

mod support;

use avap_server::ServerConfig;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

async fn server(playground: bool) -> Router {
    let config = ServerConfig {
        playground,
        ..ServerConfig::for_this_machine()
    };
    support::router("playground", config).await
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: impl header::AsHeaderName) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().expect("text"))
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body");
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8"),
    }
}

async fn get(app: &Router, path: &str) -> Reply {
    send(app, Request::get(path).body(Body::empty()).unwrap()).await
}

async fn post(app: &Router, path: &str, body: &Value) -> Reply {
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(app, request).await
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_types_etags_and_their_own_csp() {
    let app = server(true).await;
    let page = get(&app, "/playground").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header(header::CONTENT_TYPE), "text/html; charset=utf-8");
    assert!(page.body.contains("<title>AVAP playground</title>"));
    let csp = page.header(header::CONTENT_SECURITY_POLICY);
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        !page.body.contains("<script>") && !page.body.contains("style="),
        "nothing inline"
    );
    assert_eq!(page.header(header::CACHE_CONTROL), "no-cache");
    assert_eq!(page.header(header::X_FRAME_OPTIONS), "DENY");

    let etag = page.header(header::ETAG).to_owned();
    assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
    let again = send(
        &app,
        Request::get("/playground")
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header(header::ETAG), etag);

    for (file, content_type) in [
        ("playground.js", "text/javascript; charset=utf-8"),
        ("highlight.js", "text/javascript; charset=utf-8"),
        ("playground.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
        ("language.json", "application/json"),
        ("examples.json", "application/json"),
    ] {
        let reply = get(&app, &format!("/playground/{file}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{file}");
        assert_eq!(reply.header(header::CONTENT_TYPE), content_type, "{file}");
        assert_ne!(reply.header(header::ETAG), etag, "{file} has its own tag");
        assert!(!reply.body.is_empty(), "{file}");
    }
    let language = get(&app, "/playground/language.json").await.json();
    let commands = language["commands"].as_array().unwrap();
    assert_eq!(commands.len(), avap_hostfns::commands().len());
    assert!(
        language["statements"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == "go_async")
    );

    let missing = get(&app, "/playground/nope.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["kind"], "NotFound");
    let slash = get(&app, "/playground/").await;
    assert_eq!(slash.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(slash.header(header::LOCATION), "/playground");

    // The API keeps its closed policy.
    let info = get(&app, "/api/v1/info").await;
    assert_eq!(
        info.header(header::CONTENT_SECURITY_POLICY),
        "default-src 'none'; frame-ancestors 'none'"
    );
}

#[tokio::test]
async fn when_off_the_playground_is_a_404() {
    let app = server(false).await;
    for path in ["/playground", "/playground/playground.js", "/playground/"] {
        let reply = get(&app, path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json()["error"]["kind"], "NotFound", "{path}");
    }
    // The check endpoint is part of the API, playground or not.
    let check = post(&app, "/api/v1/check", &json!({"script": "x = 1\n"})).await;
    assert_eq!(check.status, StatusCode::OK);
}

#[tokio::test]
async fn check_reports_diagnostics_and_imports() {
    let app = server(true).await;
    let broken = post(
        &app,
        "/api/v1/check",
        &json!({"script": "addParam(name, who)\nif(who, 1, =)\n"}),
    )
    .await;
    assert_eq!(broken.status, StatusCode::OK);
    assert_eq!(broken.header(header::CONTENT_TYPE), "application/json");
    let doc = broken.json();
    assert_eq!(doc["ok"], false);
    let file = &doc["files"][0];
    assert_eq!(file["file"], "inline.avap");
    assert_eq!(file["errors"], 1);
    let diagnostic = &file["diagnostics"][0];
    assert_eq!(
        (&diagnostic["code"], &diagnostic["line"], &diagnostic["column"]),
        (&json!("E0020"), &json!(2), &json!(1))
    );
    assert!(file["imports"].is_null() && file["capabilities"].is_null());

    let clean = post(
        &app,
        "/api/v1/check",
        &json!({"script": "addParam(name, who)\ngetDateTime(\"%Y\", 0, \"UTC\", year)\naddResult(year)\n", "file": "year.avap"}),
    )
    .await
    .json();
    assert_eq!(clean["ok"], true);
    assert_eq!(clean["files"][0]["file"], "year.avap");
    assert_eq!(clean["files"][0]["capabilities"], json!(["request", "clock"]));
    assert_eq!(
        clean["files"][0]["imports"][1],
        json!({"name": "getDateTime", "class": "clock", "line": 2})
    );

    let warned = json!({"script": "addvar(x, 1)\n", "deny_warnings": true});
    assert_eq!(post(&app, "/api/v1/check", &warned).await.json()["ok"], false);

    let too_large = "x = 1\n".repeat(50_000);
    let reply = post(&app, "/api/v1/check", &json!({"script": too_large})).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"]["kind"], "ScriptTooLarge");
    for bad in [
        json!({"script": "", "file": ""}),
        json!({"script": "", "file": "a\nb"}),
        json!({"file": "x"}),
    ] {
        let reply = post(&app, "/api/v1/check", &bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

/// `fuel=…, wall_ms=…, peak_memory_bytes=…` as numbers.
fn usage(reply: &Reply) -> (u64, f64, u64) {
    let text = reply.headers.get("avap-usage").expect("Avap-Usage").to_str().unwrap();
    let field = |name: &str| {
        text.split(", ")
            .find_map(|item| item.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .to_owned()
    };
    (
        field("fuel").parse().unwrap(),
        field("wall_ms").parse().unwrap(),
        field("peak_memory_bytes").parse().unwrap(),
    )
}

#[tokio::test]
async fn runs_report_their_usage_in_a_header() {
    let app = server(true).await;
    let small = post(&app, "/api/v1/execute", &json!({"script": "x = 1\naddResult(x)\n"})).await;
    assert_eq!(small.status, StatusCode::OK);
    let (fuel, wall_ms, memory) = usage(&small);
    assert!(fuel > 0 && wall_ms >= 0.0 && memory > 0, "{fuel} {wall_ms} {memory}");
    let looping = json!({
        "script": "total = 0\nstartLoop(i, 1, 100000)\n    total = total + i\nendLoop()\naddResult(total)\n",
    });
    let (more, _, _) = usage(&post(&app, "/api/v1/execute", &looping).await);
    assert!(more > 10 * fuel, "a loop uses more fuel: {more} vs {fuel}");
    let limited = json!({"script": "startLoop(i, 1, 100000000)\n    x = i\nendLoop()\n", "limits": {"fuel": 50000}});
    let hit = post(&app, "/api/v1/execute", &limited).await;
    assert_eq!(hit.status, StatusCode::UNPROCESSABLE_ENTITY);
    let (spent, _, _) = usage(&hit);
    assert!((45_000..=60_000).contains(&spent), "the limit's worth: {spent}");
}

/// Each example as the page runs it: its method, path, query and body.
fn run_request(example: &Value) -> Value {
    let query: serde_json::Map<String, Value> = example["query"]
        .as_str()
        .unwrap()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name.to_owned(), Value::from(value))
        })
        .collect();
    let mut request = json!({
        "script": example["script"],
        "request": {"method": example["method"], "path": example["path"], "query": query},
    });
    let body = example["body"].as_str().unwrap();
    if !body.is_empty() {
        request["params"] = serde_json::from_str(body).expect("the example's body is JSON");
    }
    if example["fuel"] != 0 {
        request["limits"] = json!({"fuel": example["fuel"]});
    }
    request
}

#[tokio::test]
async fn every_example_checks_clean_and_runs_as_its_comment_says() {
    let app = server(true).await;
    let examples = get(&app, "/playground/examples.json").await.json();
    let examples = examples.as_array().unwrap();
    assert!(examples.len() >= 5);
    for example in examples {
        let id = example["id"].as_str().unwrap();
        let check = post(&app, "/api/v1/check", &json!({"script": example["script"]}))
            .await
            .json();
        assert_eq!(check["files"][0]["errors"], 0, "{id}: {check}");
        assert_eq!(check["files"][0]["warnings"], 0, "{id}: {check}");
        let reply = post(&app, "/api/v1/execute", &run_request(example)).await;
        let envelope = reply.json();
        let result = &envelope["result"];
        match id {
            "hello" => assert_eq!(result["message"], "Hello, Ada!"),
            "json_total" => assert_eq!(
                (&result["count"], &result["total"]),
                (&json!(3), &json!(49.5)),
                "{envelope}"
            ),
            "functions" => assert_eq!(result["finalPrice"], 120.0),
            "errors" => {
                assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{envelope}");
                assert_eq!(result["error"], "age must be a whole number");
            }
            "collections" => assert_eq!(result["summary"], json!({"currency": "EUR", "items": 3})),
            "async" => assert_eq!(result["found"]["prices"], json!([3, 4, 5]), "{envelope}"),
            "endpoint" => assert_eq!(result["message"], "Hello, Lin", "{envelope}"),
            "fuel" => {
                assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
                assert_eq!(envelope["error"]["kind"], "FuelExhausted");
                continue;
            }
            other => panic!("no expectation for the example {other}"),
        }
        if id != "errors" {
            assert_eq!(reply.status, StatusCode::OK, "{id}: {envelope}");
        }
    }
}
