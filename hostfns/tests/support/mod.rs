//! Tiny value constructors shared by the hostfns tests.

#![allow(dead_code)]

use avap_hostfns::{Dict, Value};

pub fn int(i: i64) -> Value {
    Value::Int(i)
}
pub fn float(f: f64) -> Value {
    Value::Float(f)
}
pub fn s(text: &str) -> Value {
    Value::Str(text.to_owned())
}
pub fn b(v: bool) -> Value {
    Value::Bool(v)
}
pub fn list(items: &[Value]) -> Value {
    Value::list(items.to_vec())
}
pub fn dict(pairs: &[(&str, Value)]) -> Value {
    Value::dict(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<Dict>(),
    )
}
pub fn none() -> Value {
    Value::None
}
