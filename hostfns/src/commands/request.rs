//! The request, the response and the run: `addResult`, `addParam`,
//! `getQueryParamList`, `registerEndpoint`, `gather`, `raise`.

use std::sync::Arc;

use super::{Args, Outcome, charge, value};
use crate::context::{AsyncState, Endpoint, HostContext};
use crate::error::{AvapError, ErrorKind, HostError};
use crate::json::{self, JsonError};
use crate::memory::{self, MemoryBudget};
use crate::value::{Dict, Value};

/// `addResult(name)`: records the variable's current value (a snapshot;
/// undefined → `null`) under its name. Fuel: the value's size.
pub(super) fn add_result(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let name = memory::text_within(a.get(0), ctx.memory())?;
    let v = a.get(1);
    // The context measures the value (its JSON size, its memory) and
    // charges fuel for it; this is the name's share.
    charge(ctx, name.len())?;
    ctx.add_result(&name, v)?;
    value(Value::None)
}

/// Does a request key name `param`? Quotes around the key are ignored, as
/// in the reference (which stripped them from query keys).
fn key_matches(key: &str, param: &str) -> bool {
    key == param || key.trim_matches(['"', '\'']) == param
}

/// Coercion of a query or form string (spec §7): `""` → `None`; optionally
/// signed ASCII digits → int (when it fits; `-4` is an int, `+4` and `4.0`
/// are not digits only); else a finite float if it parses; else JSON text of
/// an array, object, string, `true`, `false` or `null` is decoded (`"Ada"`
/// with its quotes → `Ada`); else the string itself. What it builds is
/// claimed from `mem`.
pub(crate) fn coerce_param(raw: &str, mem: &mut MemoryBudget) -> Result<Value, HostError> {
    if raw.is_empty() {
        return Ok(Value::None);
    }
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if !digits.is_empty()
        && digits.bytes().all(|c| c.is_ascii_digit())
        && let Ok(i) = raw.parse::<i64>()
    {
        return Ok(Value::Int(i));
    }
    if let Ok(f) = raw.parse::<f64>()
        && f.is_finite()
    {
        return Ok(Value::Float(f));
    }
    let t = raw.trim();
    let json_string = t.len() >= 2 && t.starts_with('"') && t.ends_with('"');
    if t.starts_with(['[', '{']) || json_string || matches!(t, "true" | "false" | "null") {
        match json::parse(t, mem) {
            Ok(v) => return Ok(v),
            Err(JsonError::Limit(hit)) => return Err(hit.into()),
            Err(JsonError::Invalid(_)) => {}
        }
    }
    mem.claim_str(raw.len())?;
    Ok(Value::Str(raw.to_owned()))
}

/// `addParam(param, target)` (spec §7): the first query value named
/// `param`, else the JSON body object's key (JSON types kept), else the
/// first form field; query and form strings go through [`coerce_param`].
/// Missing → `None`. Fuel: the request parts scanned plus the value's size.
pub(super) fn add_param(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let param = a.literal(ctx, 0)?;
    let (request, mem) = ctx.request_and_memory();
    let scanned = request.query.len() + request.form.len() + 1;
    let found = if let Some((_, raw)) = request.query.iter().find(|(k, _)| key_matches(k, &param)) {
        coerce_param(raw, mem)?
    } else if let Some(v) = request
        .json
        .as_ref()
        .and_then(|json| json.as_object())
        .and_then(|obj| obj.get(&param))
    {
        json::from_json_value(v, mem)?
    } else if let Some((_, raw)) = request.form.iter().find(|(k, _)| key_matches(k, &param)) {
        coerce_param(raw, mem)?
    } else {
        Value::None
    };
    charge(ctx, scanned + found.heap_bytes())?;
    value(found)
}

/// `getQueryParamList(target)`: one single-key dict per distinct query
/// parameter, in order of first appearance, holding its first value as the
/// raw string (spec §10). Fuel: the query's size.
pub(super) fn get_query_param_list(ctx: &mut dyn HostContext) -> Result<Outcome, HostError> {
    let (request, mem) = ctx.request_and_memory();
    let mut seen = std::collections::HashSet::new();
    let mut list = Vec::new();
    let mut bytes = 0;
    for (k, v) in &request.query {
        bytes += k.len() + v.len();
        if seen.insert(k.as_str()) {
            let mut one = Dict::new();
            mem.claim_str(k.len())?;
            mem.claim_str(v.len())?;
            memory::insert(&mut one, k.clone(), Value::Str(v.clone()), mem)?;
            memory::push(&mut list, Value::dict(one), mem)?;
        }
    }
    charge(ctx, bytes + list.len())?;
    value(Value::list(list))
}

/// The middleware argument of `registerEndpoint`: a list of function names,
/// `None`/`""` for none, a JSON array text, or a comma-separated text.
fn middleware_names(ctx: &mut dyn HostContext, a: &Args, v: &Value) -> Result<Vec<String>, HostError> {
    let mem = ctx.memory();
    let list = match v {
        Value::None => return Ok(Vec::new()),
        Value::List(items) => {
            // Claimed as a copy, like every value a command keeps.
            mem.clone_value(v)?;
            items.to_vec()
        }
        Value::Str(s) if s.trim().is_empty() => return Ok(Vec::new()),
        Value::Str(s) => match json::parse(s, mem) {
            Ok(Value::List(items)) => Arc::unwrap_or_clone(items),
            Ok(_) => Vec::new(),
            Err(JsonError::Limit(hit)) => return Err(hit.into()),
            Err(JsonError::Invalid(_)) => {
                mem.claim_str(s.len())?;
                s.split(',').map(|n| Value::Str(n.trim().to_owned())).collect()
            }
        },
        other => {
            return Err(a.error(
                ErrorKind::TypeError,
                format!("middleware must be a list of function names, not {}", other.type_name()),
            ));
        }
    };
    list.into_iter()
        .map(|item| match item {
            Value::Str(name) if !name.trim().is_empty() => Ok(name.trim().to_owned()),
            other => Err(a.error(
                ErrorKind::TypeError,
                format!("middleware names must be strings, not {}", other.repr_short()),
            )),
        })
        .collect()
}

/// `registerEndpoint(path, method, middleware, description, handler,
/// output)`: declares a route. The method is upper-cased; a path without a
/// leading `/` gets one; an empty path, method or handler name is a
/// `ValueError`. `handler` and `output` are *names* (their first slot);
/// an empty output name means none. Fuel: the texts' length.
pub(super) fn register_endpoint(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let mut path = a.text(ctx, 0)?.trim().to_owned();
    let method = a.text(ctx, 1)?.trim().to_ascii_uppercase();
    let middleware = middleware_names(ctx, a, a.get(2))?;
    let description = a.text(ctx, 3)?;
    let handler = a.name(ctx, 4)?.trim().to_owned();
    let output = a.name(ctx, 6)?.trim().to_owned();
    if path.is_empty() {
        return Err(a.error(ErrorKind::ValueError, "the path is empty"));
    }
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if method.is_empty() {
        return Err(a.error(ErrorKind::ValueError, "the method is empty"));
    }
    if handler.is_empty() {
        return Err(a.error(ErrorKind::ValueError, "the handler name is empty"));
    }
    let size = path.len() + method.len() + description.len() + handler.len() + output.len();
    charge(ctx, size + middleware.iter().map(String::len).sum::<usize>())?;
    ctx.register_endpoint(Endpoint {
        path,
        method,
        middleware,
        description,
        handler,
        output: if output.is_empty() { None } else { Some(output) },
    })?;
    value(Value::None)
}

/// `gather(id, timeoutSeconds)`: the dict of variables the `go_async` block
/// `id` assigned, or the error it failed with. Waiting is the runtime's: it
/// waits at most [`gather_timeout`] for the block before this runs, so a
/// block still running here has run out of time → `TimeoutError`. No block
/// with that id → `ValueError`. Fuel: the result's size.
pub(super) fn gather(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let id = a.text(ctx, 0)?;
    charge(ctx, id.len())?;
    let seconds = gather_timeout(a.get(1)).map_err(|m| a.error(ErrorKind::ValueError, m))?;
    match ctx.async_result(&id) {
        AsyncState::Done(Ok(v)) => {
            charge(ctx, v.heap_bytes())?;
            value(v)
        }
        AsyncState::Done(Err(e)) => Err(e),
        AsyncState::Running => Err(a.error(
            ErrorKind::TimeoutError,
            format!("go_async block '{id}' did not finish within {seconds} s"),
        )),
        AsyncState::Unknown => Err(a.error(ErrorKind::ValueError, format!("no go_async block with id '{id}'"))),
    }
}

/// How long `gather` waits, from its `timeoutSeconds` argument: a number of
/// seconds ≥ 0 (an int, a float, or text holding one, as query parameters
/// arrive). The runtime calls this before waiting; [`gather`] reports the
/// same error for a bad value.
///
/// # Errors
/// A message naming the bad value.
pub fn gather_timeout(v: &Value) -> Result<f64, String> {
    let seconds = match v {
        // Seconds: a timeout past 2^53 s loses nothing that matters.
        #[allow(clippy::cast_precision_loss)]
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Str(s) => s.trim().parse::<f64>().map_err(|_| bad_timeout(v))?,
        _ => return Err(bad_timeout(v)),
    };
    if seconds.is_nan() || seconds < 0.0 {
        return Err(bad_timeout(v));
    }
    Ok(seconds)
}

fn bad_timeout(v: &Value) -> String {
    format!("timeoutSeconds must be a number of seconds ≥ 0, not {}", v.repr_short())
}

/// `raise(message)`: a catchable `UserError` whose message is `str(message)`
/// exactly (no prefix).
pub(super) fn raise(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let message = memory::text_within(a.get(0), ctx.memory())?;
    charge(ctx, message.len())?;
    Err(HostError::Script(AvapError::new(ErrorKind::UserError, message)))
}
