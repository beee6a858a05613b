//! The `NAME.expected.json` format of the conformance corpus and the
//! [`Request`] a case describes.

use std::collections::BTreeMap;

use avap_hostfns::Request;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// One `NAME.expected.json`. Keys not named here (`sources`, `notes`,
/// `exercises`, `confidence`, …) are information for readers and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseFile {
    /// The program, relative to the corpus directory (default `NAME.avap`).
    #[serde(default)]
    pub program: Option<String>,
    pub cases: Vec<Case>,
    #[serde(default)]
    pub fixtures: Option<Fixtures>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub request: Option<RequestSpec>,
    pub expected: Expected,
    /// Replaces the file-level fixtures kind by kind.
    #[serde(default)]
    pub fixtures: Option<Fixtures>,
}

/// The request as the file spells it; missing or `null` fields are empty.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestSpec {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub query: Option<Value>,
    /// `null` means no body, not a JSON `null` body.
    #[serde(default)]
    pub json: Option<Value>,
    #[serde(default)]
    pub form: Option<Value>,
    #[serde(default)]
    pub headers: Option<Value>,
}

/// A value given once or as a list of acceptable values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

/// What must come back. Only what is given is checked.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Expected {
    #[serde(default)]
    pub http_status: Option<OneOrMany<u16>>,
    #[serde(default)]
    pub result: Option<Map<String, Value>>,
    #[serde(default)]
    pub result_patterns: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub result_types: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub error: Option<ExpectedError>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExpectedError {
    #[serde(default)]
    pub kind: Option<OneOrMany<String>>,
    #[serde(default)]
    pub line: Option<u64>,
}

/// Tables by name, each a list of row objects.
pub type Tables = BTreeMap<String, Vec<Map<String, Value>>>;

/// The fixtures a case needs (file level, or a case's own overrides).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Fixtures {
    #[serde(default)]
    pub http: Option<Vec<HttpFixture>>,
    #[serde(default)]
    pub db: Option<Tables>,
    #[serde(default)]
    pub connector: Option<BTreeMap<String, Tables>>,
    #[serde(default)]
    pub clock: Option<String>,
    #[serde(default)]
    pub tz: Option<String>,
    /// Kinds this runner does not know; a case that names one fails.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

impl Fixtures {
    /// `case`'s own entries replace `file`'s, kind by kind.
    pub fn merged(file: Option<&Fixtures>, case: Option<&Fixtures>) -> Fixtures {
        let empty = Fixtures::default();
        let file = file.unwrap_or(&empty);
        let Some(case) = case else {
            return file.clone();
        };
        let mut unknown = file.unknown.clone();
        unknown.extend(case.unknown.iter().map(|(k, v)| (k.clone(), v.clone())));
        Fixtures {
            http: case.http.clone().or_else(|| file.http.clone()),
            db: case.db.clone().or_else(|| file.db.clone()),
            connector: case.connector.clone().or_else(|| file.connector.clone()),
            clock: case.clock.clone().or_else(|| file.clock.clone()),
            tz: case.tz.clone().or_else(|| file.tz.clone()),
            unknown,
        }
    }
}

/// One canned upstream response of the mock HTTP server.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpFixture {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default = "default_status")]
    pub status: u16,
    /// Present (even as `null`) → a JSON body.
    #[serde(default, deserialize_with = "present")]
    pub json: Option<Value>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub headers: Option<Map<String, Value>>,
    /// Present (even as `null`) → the script must send exactly this JSON body.
    #[serde(default, deserialize_with = "present")]
    pub expect_json_body: Option<Value>,
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_status() -> u16 {
    200
}

/// A key that is present deserializes to `Some`, even when it is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The text of a scalar as a request sees it: strings as they are, other
/// values as their JSON text.
fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Name/value pairs from an object (a list value repeats the key) or from a
/// list of `[name, value]` pairs; `null` or missing → none.
pub fn pairs(field: &str, v: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                match v {
                    Value::Array(items) => out.extend(items.iter().map(|i| (k.clone(), scalar_text(i)))),
                    other => out.push((k.clone(), scalar_text(other))),
                }
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                match item.as_array().map(Vec::as_slice) {
                    Some([k, v]) => out.push((scalar_text(k), scalar_text(v))),
                    _ => {
                        return Err(format!(
                            "request.{field}: list items must be [name, value] pairs, got {item}"
                        ));
                    }
                }
            }
        }
        Some(other) => return Err(format!("request.{field}: expected an object, got {other}")),
    }
    Ok(out)
}

/// The request a case describes: method default `GET`, path default `/`.
pub fn build_request(spec: Option<&RequestSpec>) -> Result<Request, String> {
    let empty = RequestSpec::default();
    let spec = spec.unwrap_or(&empty);
    Ok(Request {
        method: spec
            .method
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "GET".to_string()),
        path: spec
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string()),
        query: pairs("query", spec.query.as_ref())?,
        json: spec.json.clone().filter(|j| !j.is_null()),
        form: pairs("form", spec.form.as_ref())?,
        headers: pairs("headers", spec.headers.as_ref())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: &Value) -> RequestSpec {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[test]
    fn request_defaults() {
        let r = build_request(None).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/");
        assert!(r.query.is_empty() && r.form.is_empty() && r.headers.is_empty());
        assert_eq!(r.json, None);
        let r = build_request(Some(&spec(
            &json!({"method": null, "path": null, "json": null, "form": null}),
        )))
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str(), r.json), ("GET", "/", None));
    }

    #[test]
    fn request_fields() {
        let s = spec(&json!({
            "method": "POST", "path": "/users",
            "query": {"b": "x", "a": 1, "f": 1.5, "t": true, "many": ["1", 2]},
            "json": {"a": [1, 2]},
            "form": {"f": "x"},
            "headers": {"X-Token": "abc"}
        }));
        let r = build_request(Some(&s)).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/users");
        let q: Vec<(&str, &str)> = r.query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            q,
            [
                ("b", "x"),
                ("a", "1"),
                ("f", "1.5"),
                ("t", "true"),
                ("many", "1"),
                ("many", "2")
            ]
        );
        assert_eq!(r.json, Some(json!({"a": [1, 2]})));
        assert_eq!(r.form, [("f".to_string(), "x".to_string())]);
        assert_eq!(r.headers, [("X-Token".to_string(), "abc".to_string())]);
    }

    #[test]
    fn request_json_body_kept_when_not_null() {
        let r = build_request(Some(&spec(&json!({"json": [1, 2, 3]})))).unwrap();
        assert_eq!(r.json, Some(json!([1, 2, 3])));
        let r = build_request(Some(&spec(&json!({"json": 0})))).unwrap();
        assert_eq!(r.json, Some(json!(0)));
    }

    #[test]
    fn request_pairs_list_and_errors() {
        let r = build_request(Some(&spec(&json!({"query": [["a", "1"], ["a", 2]]})))).unwrap();
        assert_eq!(r.query, [("a".into(), "1".into()), ("a".into(), "2".into())]);
        let e = build_request(Some(&spec(&json!({"query": "a=1"})))).unwrap_err();
        assert!(e.contains("request.query"), "{e}");
        let e = build_request(Some(&spec(&json!({"form": [["a"]]})))).unwrap_err();
        assert!(e.contains("request.form"), "{e}");
    }

    #[test]
    fn file_parses_and_ignores_informational_keys() {
        let f: CaseFile = serde_json::from_value(json!({
            "program": "p.avap", "sources": ["X"], "confidence": "low", "notes": "n",
            "cases": [{
                "name": "default",
                "expected": {"http_status": [200, 201], "result": {"a": 1}, "note": "x",
                             "error": {"kind": ["TypeError", "ValueError"], "line": 3}},
                "expected_lite": {"http_status": 400}
            }],
            "fixtures": {"http": [{"method": "POST", "url": "http://127.0.0.1:8081/x", "status": 201,
                                   "json": null, "expect_json_body": {"a": 1}}],
                         "tz": "Europe/Madrid"}
        }))
        .unwrap();
        let case = &f.cases[0];
        assert_eq!(case.expected.http_status.as_ref().unwrap().as_slice(), &[200, 201]);
        let err = case.expected.error.as_ref().unwrap();
        assert_eq!(
            err.kind.as_ref().unwrap().as_slice(),
            ["TypeError".to_string(), "ValueError".to_string()]
        );
        assert_eq!(err.line, Some(3));
        let http = &f.fixtures.as_ref().unwrap().http.as_ref().unwrap()[0];
        assert_eq!(http.json, Some(Value::Null));
        assert_eq!(http.text, None);
        assert_eq!(http.expect_json_body, Some(json!({"a": 1})));
    }

    #[test]
    fn case_fixtures_replace_kind_by_kind() {
        let file: Fixtures = serde_json::from_value(json!({
            "db": {"t": []}, "tz": "Europe/Madrid", "http": [{"url": "http://127.0.0.1:1/a", "status": 200}]
        }))
        .unwrap();
        let case: Fixtures = serde_json::from_value(json!({"http": [], "clock": "any"})).unwrap();
        let m = Fixtures::merged(Some(&file), Some(&case));
        assert_eq!(m.http.as_ref().map(Vec::len), Some(0));
        assert!(m.db.as_ref().unwrap().contains_key("t"));
        assert_eq!(m.tz.as_deref(), Some("Europe/Madrid"));
        assert_eq!(m.clock.as_deref(), Some("any"));
        let only_file = Fixtures::merged(Some(&file), None);
        assert_eq!(only_file.http.as_ref().map(Vec::len), Some(1));
        assert!(Fixtures::merged(None, None).http.is_none());
    }
}
