//! `--server URL`: a case as a `POST /api/v1/execute` body, and the run
//! envelope and HTTP status that come back.

use serde_json::{Map, Value, json};

use super::Verdict;
use super::case::{RequestSpec, build_request};
use super::http_client::{BaseUrl, post_json};

/// The endpoint every case goes to.
const EXECUTE: &str = "/api/v1/execute";

/// Does the program call `include(…)`? Its files cannot go over `/execute`,
/// which takes one inline source.
pub fn uses_include(source: &str) -> bool {
    source.lines().any(|line| {
        line.trim_start()
            .strip_prefix("include")
            .is_some_and(|rest| rest.trim_start().starts_with('('))
    })
}

/// Pairs as the execute API's `{"name": "value"}` object; a repeated name
/// becomes a list, in order.
fn pairs_object(pairs: &[(String, String)]) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in pairs {
        match out.get_mut(k) {
            None => {
                out.insert(k.clone(), Value::from(v.as_str()));
            }
            Some(Value::Array(items)) => items.push(Value::from(v.as_str())),
            Some(first) => *first = Value::Array(vec![first.take(), Value::from(v.as_str())]),
        }
    }
    out
}

/// The execute body for `source` run with the case's request, or why the
/// case cannot be run that way (a skip) or is malformed (a failure).
pub fn execute_body(source: &str, spec: Option<&RequestSpec>) -> Result<Value, (Verdict, String)> {
    if uses_include(source) {
        return Err((
            Verdict::Skip,
            "the program uses include(), which /api/v1/execute cannot run (the script is sent inline)".to_string(),
        ));
    }
    let request = build_request(spec).map_err(|e| (Verdict::Fail, e))?;
    if !request.form.is_empty() {
        return Err((
            Verdict::Skip,
            "the execute API has no form body (the case sends request.form)".to_string(),
        ));
    }
    let params = match request.json {
        None => Value::Null,
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err((
                Verdict::Skip,
                "the execute API takes only a JSON object as the body (`params`); the case sends another JSON value"
                    .to_string(),
            ));
        }
    };
    let mut body = json!({
        "script": source,
        "request": {
            "method": request.method,
            "path": request.path,
            "query": pairs_object(&request.query),
            "headers": pairs_object(&request.headers),
        },
    });
    if !params.is_null() {
        body["params"] = params;
    }
    Ok(body)
}

/// Post `body` to the server's execute endpoint: the HTTP status and the
/// envelope. Blocking.
pub fn execute(base: &BaseUrl, body: &Value) -> Result<(u16, Value), String> {
    let reply = post_json(base, EXECUTE, body.to_string().as_bytes())?;
    let envelope = serde_json::from_slice(&reply.body).map_err(|e| {
        format!(
            "the server answered {} with a body that is not JSON ({e}): {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
                .chars()
                .take(200)
                .collect::<String>()
        )
    })?;
    Ok((reply.status, envelope))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: &Value) -> RequestSpec {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[test]
    fn include_is_detected() {
        assert!(uses_include("x = 1\n  include (\"lib.avap\")\n"));
        assert!(!uses_include("addVar(included, 1)\n// include later\n"));
    }

    #[test]
    fn request_maps_to_the_execute_body() {
        let s = spec(&json!({
            "method": "POST", "path": "/p", "query": [["a", "1"], ["a", 2], ["b", "x"]],
            "json": {"k": 1}, "headers": {"X-T": "t"}
        }));
        let body = execute_body("addResult(a)\n", Some(&s)).unwrap();
        assert_eq!(
            body,
            json!({"script": "addResult(a)\n", "params": {"k": 1}, "request": {
                "method": "POST", "path": "/p", "query": {"a": ["1", "2"], "b": "x"}, "headers": {"X-T": "t"}
            }})
        );
        let plain = execute_body("", None).unwrap();
        assert_eq!(plain.get("params"), None);
        assert_eq!(plain["request"]["method"], "GET");
    }

    #[test]
    fn unsupported_cases_are_skipped() {
        let (v, why) = execute_body("", Some(&spec(&json!({"form": {"a": "1"}})))).unwrap_err();
        assert_eq!(v, Verdict::Skip);
        assert!(why.contains("no form body"), "{why}");
        let (v, why) = execute_body("include(\"x.avap\")\n", None).unwrap_err();
        assert_eq!(v, Verdict::Skip);
        assert!(why.contains("include()"), "{why}");
        let (v, _) = execute_body("", Some(&spec(&json!({"json": [1]})))).unwrap_err();
        assert_eq!(v, Verdict::Skip);
        let (v, _) = execute_body("", Some(&spec(&json!({"query": "a=1"})))).unwrap_err();
        assert_eq!(v, Verdict::Fail);
    }
}
