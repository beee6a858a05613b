//! `avap serve`'s metrics, `OpenAPI` document and batch endpoint, over HTTP.

mod support;

use serde_json::{Value, json};
use support::Server;

/// The value of the sample line `name` (with its labels) in an `OpenMetrics` text body.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.parse().expect("a number"))
}

#[test]
fn metrics_count_requests_runs_and_cache() {
    let s = Server::start("metrics");
    let r = s.get("/api/v1/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.body.contains("# TYPE avap_runs_in_flight gauge"), "{}", r.body);
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    assert!(
        r.body.contains("# TYPE avap_run_duration_seconds histogram"),
        "{}",
        r.body
    );
    assert_eq!(sample(&r.body, "avap_runs_in_flight"), Some(0.0));
    let ok_runs = r#"avap_runs_total{outcome="ok"}"#;
    assert_eq!(sample(&r.body, ok_runs), None);

    for _ in 0..2 {
        assert_eq!(s.execute(&json!({"script": "x = 1\naddResult(x)\n"})).status, 200);
    }
    let endless = "s = 0\nstartLoop(i, 1, 9000000000000)\n  s = s + 1\nendLoop()\naddResult(s)\n";
    let fuel = s.execute(&json!({"script": endless, "limits": {"fuel": 1000}}));
    assert_eq!(fuel.error_kind(), (422, "FuelExhausted".to_owned()));
    let r = s.get("/api/v1/metrics");
    let text = &r.body;
    // OpenMetrics names a counter's family without `_total`; its samples have it.
    assert!(text.contains("# TYPE avap_requests counter"), "{text}");
    assert_eq!(sample(text, ok_runs), Some(2.0), "{text}");
    assert_eq!(
        sample(text, r#"avap_requests_total{route="/api/v1/execute",status="200"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(text, r#"avap_requests_total{route="/api/v1/metrics",status="200"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(text, "avap_compile_cache_hits_total"), Some(1.0), "{text}");
    assert!(
        sample(text, "avap_compile_cache_misses_total").unwrap() >= 2.0,
        "{text}"
    );
    assert!(
        sample(text, "avap_run_duration_seconds_count").unwrap() >= 3.0,
        "{text}"
    );
    assert!(
        sample(text, r#"avap_run_duration_seconds_bucket{le="+Inf"}"#).unwrap() >= 3.0,
        "{text}"
    );
    assert_eq!(
        sample(text, r#"avap_limit_hits_total{kind="FuelExhausted"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(text, r#"avap_runs_total{outcome="FuelExhausted"}"#),
        Some(1.0),
        "{text}"
    );
    s.get("/api/v1/nope");
    let text = s.get("/api/v1/metrics").body;
    assert_eq!(
        sample(&text, r#"avap_requests_total{route="unmatched",status="404"}"#),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn openapi_lists_every_route_and_each_is_served() {
    let s = Server::start("openapi");
    let r = s.get("/api/v1/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{doc}");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert_eq!(doc["components"]["securitySchemes"]["apiKey"]["name"], "X-API-Key");
    assert!(doc["components"]["schemas"]["ExecuteRequest"].is_object());
    assert!(doc["components"]["schemas"]["Envelope"].is_object());
    assert!(doc["components"]["schemas"]["Error"].is_object());
    let paths = doc["paths"].as_object().expect("paths");
    for want in [
        "/api/v1/execute",
        "/api/v1/execute/batch",
        "/api/v1/scripts",
        "/api/v1/scripts/{name}",
        "/api/v1/scripts/{name}/rollback",
        "/api/v1/run/{name}",
        "/api/v1/run/{name}/{rest}",
        "/api/v1/health",
        "/api/v1/info",
        "/api/v1/metrics",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(want), "{want} missing");
    }
    // Every documented operation is routed: never the 404 fallback nor a 405.
    for (path, item) in paths {
        let concrete = path.replace("{name}", "nosuch").replace("{rest}", "x");
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let body = (method != "GET" && method != "DELETE").then_some(("application/json", "{}"));
            let reply = s.request(&method, &concrete, body);
            assert_ne!(reply.status, 405, "{method} {path}: {}", reply.body);
            // A HEAD reply has no body to tell the fallback's 404 by.
            if reply.status == 404 && method != "HEAD" {
                assert_ne!(reply.error_kind().1, "NotFound", "{method} {path}: {}", reply.body);
            }
        }
    }
}

#[test]
fn batch_runs_items_independently_in_order() {
    let s = Server::start("batch");
    let body = json!({"items": [
        {"script": "addParam(n, n)\naddResult(n)\n", "params": {"n": 7}},
        {"script": "x = 1 / 0\naddResult(x)\n"},
        {"script": "if(\n"},
        {"scirpt": "typo"},
    ]});
    let r = s.post_json("/api/v1/execute/batch", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 4, "{results:?}");
    let statuses: Vec<&Value> = results.iter().map(|r| &r["status"]).collect();
    assert_eq!(
        statuses,
        [&json!(200), &json!(400), &json!(400), &json!(400)],
        "{results:?}"
    );
    assert_eq!(results[0]["body"]["result"], json!({"n": 7}));
    assert_eq!(results[1]["body"]["status"], false);
    assert_ne!(results[1]["body"]["error"]["kind"], "CompileError", "{results:?}");
    assert_eq!(results[2]["body"]["error"]["kind"], "CompileError", "{results:?}");
    assert_eq!(results[3]["body"]["error"]["kind"], "InvalidRequest", "{results:?}");

    let too_many = json!({"items": vec![json!({"script": ""}); 65]});
    assert_eq!(
        s.post_json("/api/v1/execute/batch", &too_many).error_kind(),
        (400, "InvalidRequest".to_owned())
    );
    assert_eq!(
        s.post_json("/api/v1/execute/batch", &json!({"items": [], "extra": 1}))
            .error_kind(),
        (400, "InvalidRequest".to_owned())
    );
    let empty = s.post_json("/api/v1/execute/batch", &json!({"items": []}));
    assert_eq!(empty.json(), json!({"results": []}));
    // The bare array is the same batch, without a transaction.
    let bare = s.post_json("/api/v1/execute/batch", &body["items"]);
    assert_eq!(bare.status, 200, "{}", bare.body);
    let outcomes = |reply: &Value| -> Vec<(Value, Value)> {
        let results = reply["results"].as_array().expect("results").clone();
        results
            .iter()
            .map(|r| (r["status"].clone(), r["body"]["error"]["kind"].clone()))
            .collect()
    };
    assert_eq!(outcomes(&bare.json()), outcomes(&r.json()));
    let neither = s.post_json("/api/v1/execute/batch", &json!("items"));
    assert_eq!(neither.error_kind(), (400, "InvalidRequest".to_owned()));
    assert!(
        neither.body.contains("an array of execute requests"),
        "{}",
        neither.body
    );
}
