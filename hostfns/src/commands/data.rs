//! Variables, lists and dicts: `addVar`, `getListLen`, `itemFromList`,
//! `variableToList`, `AddvariableToJSON`, `variableFromJSON`.

use super::{Args, Outcome, charge, value};
use crate::context::HostContext;
use crate::error::{ErrorKind, HostError};
use crate::ops;
use crate::value::{Dict, Value};

/// `addVar(target, value)`: the value, except that a string of ASCII
/// decimal digits only becomes an int (spec §4: `addVar(d, "42")` stores
/// `42`). The host cannot tell a quoted literal from a variable holding such
/// a string, so `addVar(d, s)` with `s = "42"` converts too. Digit strings
/// too long for an int stay strings. Fuel: the value's size.
pub(super) fn add_var(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let v = a.get(0);
    charge(ctx, v.heap_bytes())?;
    if let Value::Str(s) = v
        && !s.is_empty()
        && s.bytes().all(|c| c.is_ascii_digit())
        && let Ok(i) = s.parse::<i64>()
    {
        return value(Value::Int(i));
    }
    value(v.clone())
}

/// A string holding a JSON array, decoded (the reference parsed string
/// sources of `getListLen`/`itemFromList` as literals).
fn json_array(s: &str) -> Option<Vec<Value>> {
    if !s.trim_start().starts_with('[') {
        return None;
    }
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(json @ serde_json::Value::Array(_)) => match Value::from_json(&json) {
            Value::List(items) => Some(items),
            _ => None,
        },
        _ => None,
    }
}

/// `getListLen(source, target)`: items of a list or dict, characters of a
/// string — except that a string holding a JSON array counts its items, as
/// in the reference (`"[1, 2]"` → 2), consistently with `itemFromList`;
/// `None`/undefined counts as an empty list (0). Other values are a
/// `TypeError`. Fuel: 1, or the string's length.
pub(super) fn get_list_len(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let source = a.get(1);
    let n = match source {
        Value::None => 0,
        Value::Str(s) => {
            charge(ctx, s.len())?;
            json_array(s).map_or_else(|| s.chars().count(), |items| items.len())
        }
        Value::List(items) => items.len(),
        Value::Dict(map) => map.len(),
        other => {
            return Err(a.error(
                ErrorKind::TypeError,
                format!("'{}' is a {}, which has no length", a.text(0), other.type_name()),
            ));
        }
    };
    charge(ctx, 1)?;
    value(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

/// `itemFromList(source, index, target)`: the list item at `index`
/// (converted like `int()`, negative counts from the end). A string holding
/// a JSON array is decoded first (the reference parsed string sources);
/// `None`/undefined is an empty list. Out of range → `IndexError`; a source
/// that is not a list → `TypeError`. Fuel: the item's size.
pub(super) fn item_from_list(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let index = ops::to_int(a.get(2)).map_err(|e| a.error(e.kind, e.message))?;
    let decoded;
    let items: &[Value] = match a.get(1) {
        Value::None => &[],
        Value::List(items) => items,
        Value::Str(s) => {
            charge(ctx, s.len())?;
            match json_array(s) {
                Some(items) => {
                    decoded = items;
                    &decoded
                }
                None => return Err(a.error(ErrorKind::TypeError, format!("'{}' is a str, not a list", a.text(0)))),
            }
        }
        other => {
            return Err(a.error(
                ErrorKind::TypeError,
                format!("'{}' is a {}, not a list", a.text(0), other.type_name()),
            ));
        }
    };
    let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
    let at = if index < 0 { index.saturating_add(len) } else { index };
    let item = usize::try_from(at).ok().and_then(|at| items.get(at)).ok_or_else(|| {
        a.error(
            ErrorKind::IndexError,
            format!("index {index} out of range for a list of {} item(s)", items.len()),
        )
    })?;
    charge(ctx, item.heap_bytes())?;
    value(item.clone())
}

/// `variableToList(element, target)`: appends `element` to the list in
/// `target` (in place). When `target` is undefined or holds anything but a
/// list, it becomes the one-item list `[element]` — the reference replaced
/// a non-list value with `[]` before appending (evidence/COMMANDS.md §13).
/// Fuel: the element's size.
pub(super) fn variable_to_list(ctx: &mut dyn HostContext, a: &Args, target: &mut Value) -> Result<Outcome, HostError> {
    let element = a.get(0);
    charge(ctx, element.heap_bytes())?;
    if let Value::List(items) = target {
        items.push(element.clone());
        return Ok(Outcome::InPlace);
    }
    value(Value::List(vec![element.clone()]))
}

/// `AddvariableToJSON(key, value, target)`: sets `target[str(key)] = value`.
/// A dict target is updated in place; a string target holding a JSON object
/// is decoded and extended; any other target (undefined included) becomes
/// the new dict `{key: value}`. An existing key keeps its position. Fuel:
/// the key's and value's size.
pub(super) fn add_variable_to_json(
    ctx: &mut dyn HostContext,
    a: &Args,
    target: &mut Value,
) -> Result<Outcome, HostError> {
    let key = a.get(0).to_text();
    let item = a.get(1);
    charge(ctx, key.len() + item.heap_bytes())?;
    if let Value::Dict(map) = target {
        map.insert(key, item.clone());
        return Ok(Outcome::InPlace);
    }
    let mut map = match target {
        Value::Str(s) => {
            charge(ctx, s.len())?;
            match serde_json::from_str::<serde_json::Value>(s) {
                Ok(json @ serde_json::Value::Object(_)) => match Value::from_json(&json) {
                    Value::Dict(map) => map,
                    _ => Dict::new(),
                },
                _ => Dict::new(),
            }
        }
        _ => Dict::new(),
    };
    map.insert(key, item.clone());
    value(Value::Dict(map))
}

/// `variableFromJSON(source, key, target)`: `source[key]` where `source` is
/// a dict or a string holding a JSON object. The key is matched exactly
/// (no dotted paths: the reference had none). A missing key, or a source
/// that is neither, gives `None` (the reference turned every error into
/// `None`). Fuel: the source text's length when decoded, plus the result's
/// size.
pub(super) fn variable_from_json(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let key = a.literal(1);
    let found = match a.get(0) {
        Value::Dict(map) => map.get(&key).cloned(),
        Value::Str(s) => {
            charge(ctx, s.len())?;
            match serde_json::from_str::<serde_json::Value>(s) {
                Ok(serde_json::Value::Object(map)) => map.get(&key).map(Value::from_json),
                _ => None,
            }
        }
        _ => None,
    };
    let found = found.unwrap_or_default();
    charge(ctx, found.heap_bytes())?;
    value(found)
}
