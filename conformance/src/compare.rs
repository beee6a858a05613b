//! Checking a response against a case's `expected` block (corpus README).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use regex::Regex;
use serde_json::{Map, Value};

use super::case::Expected;

/// Strict JSON equality: integers and floats never compare equal (`1` is
/// not `1.0`); objects compare by key set, independent of key order.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() || y.is_f64() {
                x.is_f64() && y.is_f64() && x.as_f64() == y.as_f64()
            } else {
                x.as_i64() == y.as_i64() && x.as_u64() == y.as_u64()
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A value for a diff line: compact JSON, shortened when long.
pub fn show(v: &Value) -> String {
    const MAX: usize = 300;
    let text = v.to_string();
    if text.chars().count() <= MAX {
        return text;
    }
    let cut: String = text.chars().take(MAX).collect();
    format!("{cut}… ({} bytes)", text.len())
}

/// The envelope's error, when the run failed: `Kind: message at line N`.
pub fn error_summary(envelope: &Value) -> Option<String> {
    let error = envelope.get("error").filter(|e| !e.is_null())?;
    let kind = error.get("kind").and_then(Value::as_str).unwrap_or("error");
    let mut text = kind.to_string();
    if let Some(message) = error.get("message").and_then(Value::as_str).filter(|m| !m.is_empty()) {
        text.push_str(": ");
        text.push_str(message);
    }
    if let Some(line) = error.get("line").and_then(Value::as_u64) {
        if let Some(file) = error.get("file").and_then(Value::as_str) {
            let _ = write!(text, " at {file} line {line}");
        } else {
            let _ = write!(text, " at line {line}");
        }
    }
    Some(text)
}

/// The envelope's error message, if any.
pub fn error_message(envelope: &Value) -> Option<&str> {
    envelope.get("error")?.get("message")?.as_str()
}

/// Does `v` have the type named by `name` (`number`, `string`, `list`,
/// `dict`, `bool`, `null`; `integer` and `float` narrow `number`; `a|b`
/// accepts either)? `Err` for an unknown type name.
pub fn has_type(v: &Value, name: &str) -> Result<bool, String> {
    let mut any = false;
    for alt in name.split('|').map(str::trim) {
        let ok = match alt {
            "number" => v.is_number(),
            "integer" | "int" => v.is_i64() || v.is_u64(),
            "float" => v.is_f64(),
            "string" | "str" => v.is_string(),
            "list" | "array" => v.is_array(),
            "dict" | "object" => v.is_object(),
            "bool" | "boolean" => v.is_boolean(),
            "null" | "none" => v.is_null(),
            other => {
                return Err(format!(
                    "unknown type `{other}` (use number, integer, float, string, list, dict, bool or null)"
                ));
            }
        };
        any |= ok;
    }
    Ok(any)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "number (float)",
        Value::Number(_) => "number (integer)",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn show_status(list: &[u16]) -> String {
    match list {
        [one] => one.to_string(),
        many => format!(
            "one of {}",
            many.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Every way the response differs from `expected`, one readable line each;
/// empty when the case passes.
pub fn compare(expected: &Expected, http_status: u16, envelope: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let failure = error_summary(envelope);
    let failed_note = failure.as_ref().map(|f| format!(" ({f})")).unwrap_or_default();

    if let Some(status) = &expected.http_status
        && !status.as_slice().contains(&http_status)
    {
        out.push(format!(
            "http_status: expected {}, got {http_status}{failed_note}",
            show_status(status.as_slice())
        ));
    }

    compare_result(expected, envelope, &failed_note, &mut out);

    if let Some(want) = &expected.error {
        let got = envelope.get("error").filter(|e| !e.is_null());
        let want_kind = want
            .kind
            .as_ref()
            .map_or_else(|| "an error".to_string(), |k| show_kinds(k.as_slice()));
        match got {
            None => out.push(format!(
                "error: expected {want_kind}, but the run succeeded (HTTP {http_status})"
            )),
            Some(got) => {
                let got_kind = got.get("kind").and_then(Value::as_str).unwrap_or("");
                if let Some(kinds) = &want.kind
                    && !kinds.as_slice().iter().any(|k| k == got_kind)
                {
                    out.push(format!(
                        "error.kind: expected {want_kind}, got {}{failed_note}",
                        if got_kind.is_empty() { "no kind" } else { got_kind }
                    ));
                }
                if let Some(line) = want.line {
                    match got.get("line").and_then(Value::as_u64) {
                        Some(l) if l == line => {}
                        Some(l) => out.push(format!("error.line: expected {line}, got {l}{failed_note}")),
                        None => out.push(format!("error.line: expected {line}, got no line{failed_note}")),
                    }
                }
            }
        }
    }
    // The run's error is told once, on the first line that mentions it.
    if !failed_note.is_empty()
        && let Some(first) = out.iter().position(|l| l.ends_with(&failed_note))
    {
        for line in &mut out[first + 1..] {
            if let Some(short) = line.strip_suffix(&failed_note) {
                *line = short.to_string();
            }
        }
    }
    out
}

fn show_kinds(kinds: &[String]) -> String {
    match kinds {
        [one] => one.clone(),
        many => format!("one of {}", many.join(", ")),
    }
}

fn compare_result(expected: &Expected, envelope: &Value, failed_note: &str, out: &mut Vec<String>) {
    let patterns = expected.result_patterns.as_ref();
    let types = expected.result_types.as_ref();
    if expected.result.is_none() && patterns.is_none_or(BTreeMap::is_empty) && types.is_none_or(BTreeMap::is_empty) {
        return;
    }
    let Some(got) = envelope.get("result").and_then(Value::as_object) else {
        let what = match envelope.get("result") {
            None | Some(Value::Null) => "no result".to_string(),
            Some(other) => format!("a result that is not an object: {}", show(other)),
        };
        out.push(format!("result: expected a result object, got {what}{failed_note}"));
        return;
    };
    let special = |k: &str| patterns.is_some_and(|p| p.contains_key(k)) || types.is_some_and(|t| t.contains_key(k));

    if let Some(want) = &expected.result {
        compare_exact(want, got, &special, out);
    }
    for (key, pattern) in patterns.into_iter().flatten() {
        let re = match Regex::new(pattern) {
            Ok(re) => re,
            Err(e) => {
                out.push(format!("result_patterns.{key}: invalid regex {pattern:?}: {e}"));
                continue;
            }
        };
        match got.get(key) {
            None => out.push(format!(
                "result.{key}: expected a value matching /{pattern}/, got nothing (missing)"
            )),
            Some(v) => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if !re.is_match(&text) {
                    out.push(format!(
                        "result.{key}: expected a value matching /{pattern}/, got {}",
                        show(v)
                    ));
                }
            }
        }
    }
    for (key, ty) in types.into_iter().flatten() {
        match got.get(key) {
            None => out.push(format!("result.{key}: expected a {ty}, got nothing (missing)")),
            Some(v) => match has_type(v, ty) {
                Ok(true) => {}
                Ok(false) => out.push(format!(
                    "result.{key}: expected a {ty}, got {} {}",
                    type_name(v),
                    show(v)
                )),
                Err(e) => out.push(format!("result_types.{key}: {e}")),
            },
        }
    }
}

fn compare_exact(
    want: &Map<String, Value>,
    got: &Map<String, Value>,
    special: &dyn Fn(&str) -> bool,
    out: &mut Vec<String>,
) {
    for (key, w) in want {
        if special(key) {
            continue;
        }
        match got.get(key) {
            None => out.push(format!("result.{key}: expected {}, got nothing (missing)", show(w))),
            Some(g) if !json_eq(w, g) => {
                let mut line = format!("result.{key}: expected {}, got {}", show(w), show(g));
                if let (Value::Number(_), Value::Number(_)) = (w, g)
                    && w.as_f64() == g.as_f64()
                {
                    line.push_str(" (integer and float differ)");
                }
                out.push(line);
            }
            Some(_) => {}
        }
    }
    for (key, g) in got {
        if !special(key) && !want.contains_key(key) {
            out.push(format!("result.{key}: not expected, got {}", show(g)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expected(v: &Value) -> Expected {
        serde_json::from_value(v.clone()).unwrap()
    }

    fn ok(result: &Value) -> Value {
        json!({"status": true, "elapsed": 0.1, "result": result})
    }

    fn err(kind: &str, message: &str, line: u64) -> Value {
        json!({"status": false, "elapsed": 0.1, "error": {"kind": kind, "message": message, "line": line, "column": 1}})
    }

    #[test]
    fn serde_json_number_equality_separates_int_and_float() {
        // Value's own equality already separates them; `json_eq` does not rely on it.
        assert_ne!(json!(1), json!(1.0));
        assert!(!json_eq(&json!(1), &json!(1.0)));
        assert!(!json_eq(&json!({"a": [1]}), &json!({"a": [1.0]})));
        assert!(json_eq(&json!(1.5), &json!(1.5)));
        assert!(json_eq(&json!(-3), &json!(-3)));
        assert!(json_eq(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!json_eq(&json!(u64::MAX), &json!(-1)));
        assert!(json_eq(
            &json!({"a": 1, "b": [true, null]}),
            &json!({"b": [true, null], "a": 1})
        ));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }

    #[test]
    fn status_number_and_list() {
        let e = expected(&json!({"http_status": 200}));
        assert!(compare(&e, 200, &ok(&json!({}))).is_empty());
        assert_eq!(
            compare(&e, 201, &ok(&json!({}))),
            ["http_status: expected 200, got 201"]
        );
        let e = expected(&json!({"http_status": [200, 201]}));
        assert!(compare(&e, 201, &ok(&json!({}))).is_empty());
        assert_eq!(
            compare(&e, 404, &ok(&json!({}))),
            ["http_status: expected one of 200, 201, got 404"]
        );
    }

    #[test]
    fn status_mismatch_mentions_run_error() {
        let e = expected(&json!({"http_status": 200}));
        let d = compare(&e, 400, &err("NameError", "undefined variable x", 3));
        assert_eq!(
            d,
            ["http_status: expected 200, got 400 (NameError: undefined variable x at line 3)"]
        );
    }

    #[test]
    fn exact_result_per_key_diff() {
        let e = expected(&json!({"result": {"total": 10, "name": "a", "gone": 1}}));
        assert!(compare(&e, 200, &ok(&json!({"name": "a", "total": 10, "gone": 1}))).is_empty());
        let d = compare(&e, 200, &ok(&json!({"total": 9, "name": "a", "extra": [1]})));
        assert_eq!(
            d,
            [
                "result.total: expected 10, got 9",
                "result.gone: expected 1, got nothing (missing)",
                "result.extra: not expected, got [1]",
            ]
        );
    }

    #[test]
    fn exact_result_one_versus_one_point_zero() {
        let e = expected(&json!({"result": {"x": 1}}));
        let d = compare(&e, 200, &ok(&json!({"x": 1.0})));
        assert_eq!(d, ["result.x: expected 1, got 1.0 (integer and float differ)"]);
        let e = expected(&json!({"result": {"x": 1.0}}));
        assert!(compare(&e, 200, &ok(&json!({"x": 1.0}))).is_empty());
    }

    #[test]
    fn no_result_key_is_not_checked() {
        let e = expected(&json!({"http_status": 200}));
        assert!(compare(&e, 200, &ok(&json!({"anything": 1}))).is_empty());
        let e = expected(&json!({}));
        assert!(compare(&e, 400, &err("TypeError", "x", 1)).is_empty());
    }

    #[test]
    fn result_missing_when_run_failed() {
        let e = expected(&json!({"result": {"a": 1}}));
        let d = compare(&e, 400, &err("TypeError", "bad", 2));
        assert_eq!(
            d,
            ["result: expected a result object, got no result (TypeError: bad at line 2)"]
        );
        let e = expected(&json!({"http_status": 200, "result": {"a": 1}}));
        let d = compare(&e, 400, &err("TypeError", "bad", 2));
        assert_eq!(
            d,
            [
                "http_status: expected 200, got 400 (TypeError: bad at line 2)",
                "result: expected a result object, got no result",
            ]
        );
    }

    #[test]
    fn patterns_and_types_exclude_keys_from_exact() {
        let e = expected(&json!({
            "result": {"flow": "continued"},
            "result_patterns": {"today": "^\\d{4}-\\d{2}-\\d{2}$", "n": "^4\\d$"},
            "result_types": {"epoch": "number", "maybe": "string|null"}
        }));
        let got = ok(&json!({"flow": "continued", "today": "2025-01-31", "n": 42, "epoch": 1.7e9, "maybe": null}));
        assert!(compare(&e, 200, &got).is_empty(), "{:?}", compare(&e, 200, &got));
        let bad = ok(&json!({"flow": "continued", "today": "31/01/2025", "n": "x", "epoch": "soon"}));
        assert_eq!(
            compare(&e, 200, &bad),
            [
                "result.n: expected a value matching /^4\\d$/, got \"x\"",
                "result.today: expected a value matching /^\\d{4}-\\d{2}-\\d{2}$/, got \"31/01/2025\"",
                "result.epoch: expected a number, got string \"soon\"",
                "result.maybe: expected a string|null, got nothing (missing)",
            ]
        );
    }

    #[test]
    fn types_each_name() {
        for (v, t) in [
            (json!(1), "number"),
            (json!(1.5), "number"),
            (json!(1), "integer"),
            (json!(1.5), "float"),
            (json!("s"), "string"),
            (json!([1]), "list"),
            (json!({"a": 1}), "dict"),
            (json!(false), "bool"),
            (json!(null), "null"),
        ] {
            assert!(has_type(&v, t).unwrap(), "{v} {t}");
        }
        assert!(!has_type(&json!(1), "string").unwrap());
        assert!(!has_type(&json!(1.0), "integer").unwrap());
        assert!(has_type(&json!(1), "text").is_err());
        let e = expected(&json!({"result_types": {"a": "numbr"}}));
        assert!(compare(&e, 200, &ok(&json!({"a": 1})))[0].starts_with("result_types.a: unknown type `numbr`"));
    }

    #[test]
    fn invalid_pattern_is_reported() {
        let e = expected(&json!({"result_patterns": {"a": "("}}));
        assert!(compare(&e, 200, &ok(&json!({"a": "x"})))[0].starts_with("result_patterns.a: invalid regex"));
    }

    #[test]
    fn error_kind_string_list_and_line() {
        let e = expected(&json!({"http_status": 400, "error": {"kind": "NameError", "line": 2}}));
        assert!(compare(&e, 400, &err("NameError", "x", 2)).is_empty());
        assert_eq!(
            compare(&e, 400, &err("NameError", "x", 3)),
            ["error.line: expected 2, got 3 (NameError: x at line 3)"]
        );
        assert_eq!(
            compare(&e, 400, &err("TypeError", "y", 2)),
            ["error.kind: expected NameError, got TypeError (TypeError: y at line 2)"]
        );
        let e = expected(&json!({"error": {"kind": ["TypeError", "ValueError"]}}));
        assert!(compare(&e, 400, &err("ValueError", "v", 9)).is_empty());
        assert_eq!(
            compare(&e, 400, &err("KeyError", "k", 1)),
            ["error.kind: expected one of TypeError, ValueError, got KeyError (KeyError: k at line 1)"]
        );
    }

    #[test]
    fn expected_error_but_success() {
        let e = expected(&json!({"error": {"kind": "ZeroDivisionError"}}));
        assert_eq!(
            compare(&e, 200, &ok(&json!({}))),
            ["error: expected ZeroDivisionError, but the run succeeded (HTTP 200)"]
        );
        let e = expected(&json!({"error": {}}));
        assert_eq!(
            compare(&e, 200, &ok(&json!({}))),
            ["error: expected an error, but the run succeeded (HTTP 200)"]
        );
        assert!(compare(&e, 400, &err("UserError", "u", 1)).is_empty());
    }

    #[test]
    fn compile_error_report_shape() {
        let envelope = json!({"status": false, "elapsed": 0.0,
            "error": {"kind": "CompileError", "message": "E0020: bad", "line": 1, "column": 3, "diagnostics": []}});
        let e = expected(&json!({"http_status": 400, "error": {"kind": "CompileError", "line": 1}}));
        assert!(compare(&e, 400, &envelope).is_empty());
        assert_eq!(error_summary(&envelope).unwrap(), "CompileError: E0020: bad at line 1");
        assert_eq!(error_message(&envelope), Some("E0020: bad"));
    }
}
