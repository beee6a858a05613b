//! Implementations of the AVAP commands (one function per command).
//!
//! Calling convention (mirrors [`crate::abi::COMMAND_SIGNATURE`]): `args`
//! holds one entry per argument slot in the form's parameter order — a
//! *value* parameter is its value, a *literal* parameter is its text as a
//! string, a *name* parameter is two entries (the name as a string, then the
//! variable's value or `None`), and the *target* parameter is **not** in
//! `args`: it is passed as `target`, the target variable's current value
//! (`None` when undefined).
//!
//! A command returns [`Outcome::Value`] with its result (written to the
//! target by the compiled code), or [`Outcome::InPlace`] after updating
//! `target` itself (`variableToList`, `AddvariableToJSON`), so that other
//! references to the same list or dict see the change, as in Python.
//!
//! Every command charges fuel through [`HostContext::charge`], roughly one
//! unit per byte or item it reads or writes, and at least one unit.
//!
//! Submodules: `data` (variables, lists, dicts), `text` (regexes, hashes,
//! random strings), `time` (clock and calendars), `request` (request,
//! response, routes, errors and async results).

mod data;
mod request;
mod text;
mod time;

pub use request::gather_timeout;

use crate::context::HostContext;
use crate::error::{AvapError, ErrorKind, HostError};
use crate::signature::{self, ParamKind};
use crate::value::Value;

/// What a command produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The command's value (`None` for commands that yield nothing).
    Value(Value),
    /// `target` was updated in place and is the result.
    InPlace,
}

/// Commands whose effects reach outside the run that this build does not
/// provide yet. Whatever this list says, this synchronous dispatcher never
/// runs a `net`/`db`/`ai` command: those are async and live in
/// `crate::effects` (feature `effects`), which the runtime links instead.
const NOT_AVAILABLE: &[&str] = &[
    "ormDirect",
    "ormCheckTable",
    "ormAccessSelect",
    "ormAccessInsert",
    "ormAccessUpdate",
    "avapConnector",
];

/// Run command `name`. `form` is the index of the form (in
/// [`crate::signature::CommandSig::forms`]) the compiler chose.
/// Unknown names and commands with outside effects that this build does not
/// provide yet fail with `ErrorKind::NotAvailable`.
pub fn call(
    name: &str,
    form: usize,
    ctx: &mut dyn HostContext,
    args: &[&Value],
    target: &mut Value,
) -> Result<Outcome, HostError> {
    let sig = match signature::command(name) {
        Some(sig)
            if !NOT_AVAILABLE.contains(&sig.name)
                && !matches!(
                    sig.capability,
                    signature::Capability::Net | signature::Capability::Db | signature::Capability::Ai
                ) =>
        {
            sig
        }
        _ => {
            return Err(HostError::script(
                ErrorKind::NotAvailable,
                format!("command not available yet: {name}"),
            ));
        }
    };
    let Some(params) = sig.forms.get(form) else {
        return Err(HostError::script(
            ErrorKind::TypeError,
            format!("{name}: no form #{form} (it has {})", sig.forms.len()),
        ));
    };
    let slots: usize = params
        .iter()
        .map(|p| match p.kind {
            ParamKind::Target => 0,
            ParamKind::Name => 2,
            ParamKind::Value | ParamKind::Literal => 1,
        })
        .sum();
    if args.len() != slots {
        return Err(HostError::script(
            ErrorKind::TypeError,
            format!(
                "{name}: expected {slots} argument slot(s) for this form, got {}",
                args.len()
            ),
        ));
    }
    let a = Args {
        name: sig.name,
        items: args,
    };
    match sig.name {
        "addVar" => data::add_var(ctx, &a),
        "getListLen" => data::get_list_len(ctx, &a),
        "itemFromList" => data::item_from_list(ctx, &a),
        "variableToList" => data::variable_to_list(ctx, &a, target),
        "AddvariableToJSON" => data::add_variable_to_json(ctx, &a, target),
        "variableFromJSON" => data::variable_from_json(ctx, &a),
        "addResult" => request::add_result(ctx, &a),
        "addParam" => request::add_param(ctx, &a),
        "getQueryParamList" => request::get_query_param_list(ctx),
        "registerEndpoint" => request::register_endpoint(ctx, &a),
        "gather" => request::gather(ctx, &a),
        "raise" => request::raise(ctx, &a),
        "replace" => text::replace(ctx, &a),
        "getRegex" => text::get_regex(ctx, &a),
        "randomString" => text::random_string(ctx, &a, form),
        "encodeSHA256" => text::encode_sha256(ctx, &a),
        "encodeMD5" => text::encode_md5(ctx, &a),
        "getDateTime" => time::get_date_time(ctx, &a),
        "getTimeStamp" => time::get_time_stamp(ctx, &a),
        "stampToDatetime" => time::stamp_to_datetime(ctx, &a),
        other => Err(HostError::script(
            ErrorKind::NotAvailable,
            format!("command not available yet: {other}"),
        )),
    }
}

static NONE: Value = Value::None;

/// The argument slots of one call, after the arity check.
struct Args<'a> {
    name: &'static str,
    items: &'a [&'a Value],
}

impl<'a> Args<'a> {
    /// Slot `i` (`None` past the end; the arity check makes that unreachable).
    fn get(&self, i: usize) -> &'a Value {
        self.items.get(i).copied().unwrap_or(&NONE)
    }

    /// Slot `i` as text: `str()` of the value, `""` for `None`; its memory
    /// is claimed from the run's budget before it is built.
    fn text(&self, ctx: &mut dyn HostContext, i: usize) -> Result<String, HostError> {
        Ok(crate::ops::template_text_within(self.get(i), ctx.memory())?)
    }

    /// A name slot's text (a name from the source, or a literal): small,
    /// but claimed like any other text.
    fn name(&self, ctx: &mut dyn HostContext, i: usize) -> Result<String, HostError> {
        self.text(ctx, i)
    }

    /// A literal slot's text, without one pair of surrounding quotes.
    fn literal(&self, ctx: &mut dyn HostContext, i: usize) -> Result<String, HostError> {
        let text = self.text(ctx, i)?;
        let unquoted = ['"', '\''].iter().find_map(|q| {
            text.strip_prefix(*q)
                .and_then(|t| t.strip_suffix(*q))
                .filter(|_| text.len() >= 2)
        });
        Ok(unquoted.map_or(text.clone(), str::to_owned))
    }

    /// A catchable error of `kind`, prefixed with the command's name.
    fn error(&self, kind: ErrorKind, message: impl std::fmt::Display) -> HostError {
        HostError::Script(AvapError::new(kind, format!("{}: {message}", self.name)))
    }
}

/// Charge `units` of fuel (at least one).
fn charge(ctx: &mut dyn HostContext, units: usize) -> Result<(), HostError> {
    ctx.charge(u64::try_from(units.max(1)).unwrap_or(u64::MAX))
}

#[allow(clippy::unnecessary_wraps)] // shortens every command's final line
fn value(v: Value) -> Result<Outcome, HostError> {
    Ok(Outcome::Value(v))
}
