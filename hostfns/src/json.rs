//! JSON text into values, claiming memory as the value is built.
//!
//! Going through `serde_json::Value` first would allocate the whole document
//! twice, and several times its text size (a 30 MB text of `[]`s is
//! gigabytes of values), before any limit could look at it. These parsers
//! build [`Value`]s directly, claim every string and table from the run's
//! [`MemoryBudget`] before allocating it, and skip (without allocating)
//! whatever the caller does not need: [`field`] keeps one key of an object,
//! [`array_len`] only counts, [`array_item`] keeps one item. Nesting is
//! bounded by `serde_json`'s recursion limit (128 levels).

use std::cell::RefCell;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::limits::LimitHit;
use crate::memory::{self, MemoryBudget};
use crate::value::{Dict, Value};

/// Why a text did not give a value.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonError {
    /// Not valid JSON (or nested deeper than 128 levels).
    Invalid(String),
    /// The value would not fit in the run's memory.
    Limit(LimitHit),
}

/// The whole document as a value.
pub fn parse(text: &str, budget: &mut MemoryBudget) -> Result<Value, JsonError> {
    run(text, budget, |de, cx| ValueSeed(cx).deserialize(de))
}

/// `document[key]` when the document is an object; `Ok(None)` when it is
/// another JSON value or has no such key. Other keys' values are skipped.
pub fn field(text: &str, key: &str, budget: &mut MemoryBudget) -> Result<Option<Value>, JsonError> {
    run(text, budget, |de, cx| de.deserialize_any(FieldVisitor { cx, key }))
}

/// Number of items when the document is an array (nothing is kept).
pub fn array_len(text: &str) -> Result<Option<usize>, JsonError> {
    let mut budget = MemoryBudget::new(0);
    run(text, &mut budget, |de, _| de.deserialize_any(CountVisitor))
}

/// `document[index]` when the document is an array (`Ok(None)` when it is
/// not); out of range is `Ok(Some(None))`. Other items are skipped.
pub fn array_item(text: &str, index: usize, budget: &mut MemoryBudget) -> Result<Option<Option<Value>>, JsonError> {
    run(text, budget, |de, cx| de.deserialize_any(ItemVisitor { cx, index }))
}

/// A `serde_json::Value` (a request body already parsed) as a value,
/// claimed as it is built.
pub fn from_json_value(v: &serde_json::Value, budget: &mut MemoryBudget) -> Result<Value, LimitHit> {
    let cx = Cx::new(*budget);
    let out = ValueSeed(&cx).deserialize(v);
    let limit = cx.limit.into_inner();
    *budget = cx.budget.into_inner();
    match (out, limit) {
        (_, Some(hit)) => Err(hit),
        (Ok(v), None) => Ok(v),
        // A `serde_json::Value` always deserializes; keep whatever it was.
        (Err(e), None) => Err(LimitHit::new(crate::LimitKind::MemoryLimit, e.to_string())),
    }
}

/// The shared state of one parse: the budget, and the limit that stopped
/// it (serde errors cannot carry it through).
struct Cx {
    budget: RefCell<MemoryBudget>,
    limit: RefCell<Option<LimitHit>>,
}

impl Cx {
    fn new(budget: MemoryBudget) -> Cx {
        Cx {
            budget: RefCell::new(budget),
            limit: RefCell::new(None),
        }
    }

    fn claim<E: de::Error>(&self, f: impl FnOnce(&mut MemoryBudget) -> Result<(), LimitHit>) -> Result<(), E> {
        let result = f(&mut self.budget.borrow_mut());
        result.map_err(|hit| {
            let message = hit.message.clone();
            *self.limit.borrow_mut() = Some(hit);
            E::custom(message)
        })
    }
}

fn run<T>(
    text: &str,
    budget: &mut MemoryBudget,
    f: impl FnOnce(&mut serde_json::Deserializer<serde_json::de::StrRead<'_>>, &Cx) -> Result<T, serde_json::Error>,
) -> Result<T, JsonError> {
    let cx = Cx::new(*budget);
    let mut de = serde_json::Deserializer::from_str(text);
    let out = f(&mut de, &cx).and_then(|v| de.end().map(|()| v));
    let limit = cx.limit.into_inner();
    *budget = cx.budget.into_inner();
    match (out, limit) {
        (_, Some(hit)) => Err(JsonError::Limit(hit)),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(JsonError::Invalid(e.to_string())),
    }
}

/// Builds a [`Value`], claiming each piece.
struct ValueSeed<'c>(&'c Cx);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor(self.0))
    }
}

struct ValueVisitor<'c>(&'c Cx);

impl<'de> Visitor<'de> for ValueVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    #[allow(clippy::cast_precision_loss)] // JSON integers past i64 become floats (spec §2)
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.claim(|b| b.claim_str(v.len()))?;
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        ValueSeed(self.0).deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(ValueSeed(self.0))? {
            self.0.claim(|b| memory::push(&mut items, item, b))?;
        }
        Ok(Value::list(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Dict::new();
        while let Some(key) = map.next_key::<String>()? {
            self.0.claim(|b| b.claim_str(key.len()))?;
            let item = map.next_value_seed(ValueSeed(self.0))?;
            self.0.claim(|b| memory::insert(&mut out, key, item, b))?;
        }
        Ok(Value::dict(out))
    }
}

/// The scalar `visit_*` methods of a visitor that looks only at arrays or
/// objects: any other document gives `Ok(None)`.
macro_rules! not_a_container {
    () => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    };
}

/// The top level of [`field`]: keeps one key's value.
struct FieldVisitor<'c, 'k> {
    cx: &'c Cx,
    key: &'k str,
}

impl<'de> Visitor<'de> for FieldVisitor<'_, '_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.key {
                // A repeated key: the last one wins, as in serde_json.
                found = Some(map.next_value_seed(ValueSeed(self.cx))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    not_a_container!();
}

/// The top level of [`array_len`].
struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<usize>, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Some(n))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<usize>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    not_a_container!();
}

/// The top level of [`array_item`].
struct ItemVisitor<'c> {
    cx: &'c Cx,
    index: usize,
}

impl<'de> Visitor<'de> for ItemVisitor<'_> {
    type Value = Option<Option<Value>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut at = 0;
        loop {
            if at == self.index {
                match seq.next_element_seed(ValueSeed(self.cx))? {
                    Some(v) => found = Some(v),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            at += 1;
        }
        Ok(Some(found))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    not_a_container!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LimitKind;

    fn value(text: &str) -> Value {
        parse(text, &mut MemoryBudget::unlimited()).unwrap()
    }

    #[test]
    fn parses_like_serde_json_value() {
        for text in [
            r#"{"a": [1, -2, 3.5, "x", null, true], "b": {"c": 18446744073709551615}, "a": 2}"#,
            "[]",
            "\"s\"",
            "1e400",
        ] {
            let reference = serde_json::from_str::<serde_json::Value>(text).map(|v| Value::from_json(&v));
            assert_eq!(
                parse(text, &mut MemoryBudget::unlimited()).ok(),
                reference.ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn a_bomb_stops_at_the_budget() {
        let text = format!("[{}[]]", "[],".repeat(1_000_000));
        let mut budget = MemoryBudget::new(10 << 20);
        match parse(&text, &mut budget) {
            Err(JsonError::Limit(hit)) => assert_eq!(hit.kind, LimitKind::MemoryLimit),
            other => panic!("expected a memory limit, got {other:?}"),
        }
        assert!(budget.net() <= 10 << 20);
        // Counting it allocates nothing.
        assert_eq!(array_len(&text), Ok(Some(1_000_001)));
    }

    #[test]
    fn field_and_item_keep_only_what_is_asked_for() {
        let text = format!(r#"{{"big": [{}0], "k": {{"x": 1}}}}"#, "0,".repeat(100_000));
        let mut budget = MemoryBudget::new(4096);
        let got = field(&text, "k", &mut budget).unwrap();
        assert_eq!(got, Some(value(r#"{"x": 1}"#)));
        assert_eq!(field("[1]", "k", &mut budget), Ok(None));
        let mut budget = MemoryBudget::new(4096);
        let list = format!("[{}\"last\"]", "[1, 2],".repeat(100_000));
        assert_eq!(
            array_item(&list, 100_000, &mut budget),
            Ok(Some(Some(Value::Str("last".into()))))
        );
        assert_eq!(array_item(&list, 200_000, &mut budget), Ok(Some(None)));
    }

    #[test]
    fn values_at_the_nesting_limit_round_trip_as_json() {
        let deep = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        let limit = crate::memory::MAX_DEPTH as usize;
        let v = value(&deep(limit));
        assert_eq!(v.footprint().depth, crate::memory::MAX_DEPTH);
        assert_eq!(v.to_json_text(), deep(limit));
        assert!(matches!(
            parse(&deep(limit + 1), &mut MemoryBudget::unlimited()),
            Err(JsonError::Invalid(_))
        ));
    }

    #[test]
    fn deep_documents_are_invalid_not_a_crash() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            parse(&text, &mut MemoryBudget::unlimited()),
            Err(JsonError::Invalid(_))
        ));
    }
}
