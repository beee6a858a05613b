//! Variables, lists and dicts: `addVar`, `getListLen`, `itemFromList`,
//! `variableToList`, `AddvariableToJSON`, `variableFromJSON`.

use std::sync::Arc;

use super::{Args, Outcome, charge, value};
use crate::context::HostContext;
use crate::error::{ErrorKind, HostError};
use crate::json::{self, JsonError};
use crate::memory;
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
    value(ctx.memory().clone_value(v)?.0)
}

/// Does this string hold a JSON array? (The reference parsed string sources
/// of `getListLen`/`itemFromList` as literals.) Its length when it does;
/// counting keeps nothing.
fn json_array_len(s: &str) -> Option<usize> {
    if !s.trim_start().starts_with('[') {
        return None;
    }
    json::array_len(s).ok().flatten()
}

/// A decoding failure that is not the memory limit reads as "no value".
fn decoded<T>(r: Result<Option<T>, JsonError>) -> Result<Option<T>, HostError> {
    match r {
        Ok(v) => Ok(v),
        Err(JsonError::Limit(hit)) => Err(hit.into()),
        Err(JsonError::Invalid(_)) => Ok(None),
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
            json_array_len(s).unwrap_or_else(|| s.chars().count())
        }
        Value::List(items) => items.len(),
        Value::Dict(map) => map.len(),
        other => {
            return Err(a.error(
                ErrorKind::TypeError,
                format!("'{}' is a {}, which has no length", a.name(ctx, 0)?, other.type_name()),
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
    let out_of_range = |len: usize| {
        a.error(
            ErrorKind::IndexError,
            format!("index {index} out of range for a list of {len} item(s)"),
        )
    };
    let position = |len: usize| {
        let len_i = i64::try_from(len).unwrap_or(i64::MAX);
        let at = if index < 0 { index.saturating_add(len_i) } else { index };
        usize::try_from(at).ok().filter(|&at| at < len)
    };
    let item = match a.get(1) {
        Value::None => return Err(out_of_range(0)),
        Value::List(items) => {
            let item = position(items.len())
                .and_then(|at| items.get(at))
                .ok_or_else(|| out_of_range(items.len()))?;
            ctx.memory().clone_value(item)?.0
        }
        Value::Str(s) => {
            charge(ctx, s.len())?;
            let Some(len) = json_array_len(s) else {
                return Err(a.error(
                    ErrorKind::TypeError,
                    format!("'{}' is a str, not a list", a.name(ctx, 0)?),
                ));
            };
            let at = position(len).ok_or_else(|| out_of_range(len))?;
            // Only the item asked for is decoded; the rest is skipped.
            decoded(json::array_item(s, at, ctx.memory()))?
                .flatten()
                .ok_or_else(|| out_of_range(len))?
        }
        other => {
            return Err(a.error(
                ErrorKind::TypeError,
                format!("'{}' is a {}, not a list", a.name(ctx, 0)?, other.type_name()),
            ));
        }
    };
    charge(ctx, item.heap_bytes())?;
    value(item)
}

/// `variableToList(element, target)`: appends `element` to the list in
/// `target` (in place). When `target` is undefined or holds anything but a
/// list, it becomes the one-item list `[element]` — the reference replaced
/// a non-list value with `[]` before appending (evidence/COMMANDS.md §13).
/// Fuel: the element's size.
pub(super) fn variable_to_list(ctx: &mut dyn HostContext, a: &Args, target: &mut Value) -> Result<Outcome, HostError> {
    let (element, footprint) = ctx.memory().clone_value(a.get(0))?;
    charge(ctx, usize::try_from(footprint.bytes).unwrap_or(usize::MAX))?;
    if let Value::List(items) = target {
        memory::push(Arc::make_mut(items), element, ctx.memory())?;
        return Ok(Outcome::InPlace);
    }
    let mut items = Vec::new();
    memory::push(&mut items, element, ctx.memory())?;
    value(Value::list(items))
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
    let key = memory::text_within(a.get(0), ctx.memory())?;
    let item = a.get(1);
    charge(ctx, key.len() + item.heap_bytes())?;
    let (item, _) = ctx.memory().clone_value(item)?;
    if let Value::Dict(map) = target {
        memory::insert(Arc::make_mut(map), key, item, ctx.memory())?;
        return Ok(Outcome::InPlace);
    }
    let mut map = match target {
        Value::Str(s) => {
            charge(ctx, s.len())?;
            let parsed = match json::parse(s, ctx.memory()) {
                Ok(v) => Some(v),
                Err(JsonError::Limit(hit)) => return Err(hit.into()),
                Err(JsonError::Invalid(_)) => None,
            };
            match parsed {
                Some(Value::Dict(map)) => Arc::unwrap_or_clone(map),
                _ => Dict::new(),
            }
        }
        _ => Dict::new(),
    };
    memory::insert(&mut map, key, item, ctx.memory())?;
    value(Value::dict(map))
}

/// `variableFromJSON(source, key, target)`: `source[key]` where `source` is
/// a dict or a string holding a JSON object. The key is matched exactly
/// (no dotted paths: the reference had none). A missing key, or a source
/// that is neither, gives `None` (the reference turned every error into
/// `None`). Fuel: the source text's length when decoded, plus the result's
/// size.
pub(super) fn variable_from_json(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let key = a.literal(ctx, 1)?;
    let found = match a.get(0) {
        Value::Dict(map) => match map.get(&key) {
            Some(v) => Some(ctx.memory().clone_value(v)?.0),
            None => None,
        },
        Value::Str(s) => {
            charge(ctx, s.len())?;
            // Only the key asked for is decoded; other keys are skipped.
            decoded(json::field(s, &key, ctx.memory()))?
        }
        _ => None,
    };
    let found = found.unwrap_or_default();
    charge(ctx, found.heap_bytes())?;
    value(found)
}
