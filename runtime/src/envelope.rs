//! The response envelope of spec §7, kept as the JSON text a server sends.
//!
//! A run's results are written as JSON text once, when `addResult` takes
//! its snapshot; the envelope is those texts joined. Nothing on
//! the way to the response builds a `serde_json::Value` tree: for a result
//! of 10,000 rows, the tree and its serialisation were a quarter of the run.
//! Callers that want to look inside (tests, the conformance runner, a job's
//! stored outcome) ask for [`Envelope::json`], parsed on first use.

use std::sync::OnceLock;

use serde::ser::{Serialize, Serializer};

/// `{"status": true, "elapsed": …, "result": {…}}` or
/// `{"status": false, "elapsed": …, "error": {"kind", "message", …}}`.
#[derive(Debug, Clone)]
pub struct Envelope {
    text: String,
    elapsed: f64,
    /// The error object of a failed run (small; kept parsed for callers
    /// that classify outcomes).
    error: Option<serde_json::Value>,
    parsed: OnceLock<serde_json::Value>,
}

impl Envelope {
    /// A successful run's envelope over its result snapshots (JSON texts),
    /// in the order they were first added.
    pub(crate) fn succeeded<'a>(elapsed: f64, results: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Envelope {
        let size = results.clone().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>();
        let mut text = String::with_capacity(size + 64);
        text.push_str(r#"{"status":true,"elapsed":"#);
        text.push_str(&json_text(&elapsed));
        text.push_str(r#","result":{"#);
        for (i, (key, value)) in results.enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&json_text(key));
            text.push(':');
            text.push_str(value);
        }
        text.push_str("}}");
        Envelope {
            text,
            elapsed,
            error: None,
            parsed: OnceLock::new(),
        }
    }

    /// A failed run's envelope; `error` is the object with `kind` and
    /// `message` (and `line`, `column`, `file`, `diagnostics` when known).
    pub fn failed(elapsed: f64, error: serde_json::Value) -> Envelope {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            status: bool,
            elapsed: f64,
            error: &'a serde_json::Value,
        }
        let text = json_text(&Body {
            status: false,
            elapsed,
            error: &error,
        });
        Envelope {
            text,
            elapsed,
            error: Some(error),
            parsed: OnceLock::new(),
        }
    }

    /// Whether the run succeeded (`"status": true`).
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    /// The error object of a failed run.
    pub fn error(&self) -> Option<&serde_json::Value> {
        self.error.as_ref()
    }

    /// The error's `kind` (`TypeError`, `FuelExhausted`, `CompileError`…).
    pub fn error_kind(&self) -> Option<&str> {
        self.error.as_ref().and_then(|e| e["kind"].as_str())
    }

    /// Seconds the run took, as the envelope says.
    pub fn elapsed(&self) -> f64 {
        self.elapsed
    }

    /// The envelope as compact JSON text: what a server sends.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The envelope's text, owned.
    pub fn into_text(self) -> String {
        self.text
    }

    /// The envelope as a JSON tree, parsed from the text on first use.
    pub fn json(&self) -> &serde_json::Value {
        self.parsed.get_or_init(|| {
            // serde_json refuses input nested over 128 levels, but a result
            // may be 127 deep (`memory::MAX_DEPTH`) under the envelope's
            // two: the depth is bounded by the heap, not by the parser.
            let mut parser = serde_json::Deserializer::from_str(&self.text);
            parser.disable_recursion_limit();
            // The text was written by serde_json from values that are JSON.
            serde::Deserialize::deserialize(&mut parser).expect("an envelope is valid JSON")
        })
    }
}

impl PartialEq for Envelope {
    fn eq(&self, other: &Envelope) -> bool {
        self.text == other.text
    }
}

/// The compact JSON text.
impl std::fmt::Display for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Written as its JSON tree (parsed on first use: a server sends
/// [`Envelope::text`] instead).
impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json().serialize(s)
    }
}

/// `value` as compact JSON text. Every value written here is JSON (`serde_json`
/// writes a non-finite float as `null`), so this cannot fail.
pub(crate) fn json_text<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("serialising to JSON text cannot fail")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_successful_envelope_keeps_the_results_in_order_and_parses_back() {
        let a = json_text(&json!({"z": 1, "a": [1.5, "x"]}));
        let e = Envelope::succeeded(0.25, [("second", a.as_str()), ("fir\"st", "null")].into_iter());
        assert_eq!(
            e.text(),
            r#"{"status":true,"elapsed":0.25,"result":{"second":{"z":1,"a":[1.5,"x"]},"fir\"st":null}}"#
        );
        assert!(e.is_ok());
        assert_eq!(e.error_kind(), None);
        assert_eq!(e.json()["result"]["second"]["a"][1], "x");
        assert_eq!(serde_json::to_string(&e).unwrap(), e.text());
        assert_eq!(serde_json::to_value(&e).unwrap(), *e.json());
    }

    #[test]
    fn a_result_at_the_nesting_limit_parses_back() {
        let depth = avap_hostfns::memory::MAX_DEPTH as usize;
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let e = Envelope::succeeded(0.0, [("d", deep.as_str())].into_iter());
        let mut v = &e.json()["result"]["d"];
        for _ in 0..depth {
            v = &v[0];
        }
        assert_eq!(*v, 1);
    }

    #[test]
    fn a_failed_envelope_exposes_its_error() {
        let e = Envelope::failed(0.0, json!({"kind": "TypeError", "message": "no", "line": 3}));
        assert_eq!(
            e.text(),
            r#"{"status":false,"elapsed":0.0,"error":{"kind":"TypeError","message":"no","line":3}}"#
        );
        assert!(!e.is_ok());
        assert_eq!(e.error_kind(), Some("TypeError"));
        assert_eq!(e.json()["error"]["line"], 3);
        assert_eq!(e, e.clone());
    }
}
