//! Commands with outside effects (spec §9): outbound HTTP (`RequestGet`,
//! `RequestPost`), the model endpoint (`functionAI`), and the application and
//! connector databases (`orm*`, `avapConnector`).
//!
//! Built only with the `effects` feature. Unlike [`crate::commands`], these
//! are `async` and take owned arguments: the runtime reads the argument
//! slots out of the run's heap, awaits [`call`] (other runs keep their
//! threads meanwhile) and writes the [`EffectOutcome`] back.
//!
//! [`Effects`] holds what a deployment configured — the outbound policy and
//! HTTP client, the databases, the model endpoint — built once per process
//! and shared by every run (cloning it clones three `Arc`s). A part that is
//! not configured makes its commands fail with a catchable
//! `CapabilityDenied` that says what to configure.
//!
//! Calling convention: `args` holds the value of every non-target parameter
//! of form `form`, in order (as in [`crate::commands`], minus the target).
//!
//! Every error leaves [`call`] through [`Effects::scrub`]: a configured
//! secret (connector token, database URL, password or file, the model
//! endpoint's URL and key) never reaches the script, and so never its
//! caller, whatever a database server or a remote body said. Messages are
//! written without them in the first place ([`db`], [`http`]).

pub mod breaker;
pub mod db;
pub mod http;
pub mod policy;

use std::sync::Arc;

use crate::error::{ErrorKind, HostError};
use crate::memory::MemoryBudget;
use crate::signature::{self, Capability, ParamKind};
use crate::value::Value;

/// What an effect command produced: the value for its target variable
/// (`Value::None` for commands that yield nothing).
#[derive(Debug, Clone, PartialEq)]
pub enum EffectOutcome {
    Value(Value),
}

/// The outside world a run may reach, as configured by the deployment.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// Outbound HTTP (`RequestGet`, `RequestPost`): policy and client.
    pub http: Option<Arc<http::Outbound>>,
    /// Application database and named connector connections.
    pub db: Option<Arc<db::Databases>>,
    /// The model endpoint of `functionAI`.
    pub ai: Option<Arc<http::AiEndpoint>>,
}

impl Effects {
    /// `e` with every configured secret in its message replaced: the
    /// databases' tokens, URLs, passwords and files, the model endpoint's
    /// URL and key.
    pub fn scrub(&self, e: HostError) -> HostError {
        let sets = [
            self.db.as_deref().map(db::Databases::secrets),
            self.ai.as_deref().map(http::AiEndpoint::secrets),
        ];
        let hide = |message: String| {
            sets.iter()
                .flatten()
                .fold(message, |text, secrets| match secrets.scrub(&text) {
                    std::borrow::Cow::Borrowed(_) => text,
                    std::borrow::Cow::Owned(hidden) => hidden,
                })
        };
        match e {
            HostError::Script(mut e) => {
                e.message = hide(e.message);
                HostError::Script(e)
            }
            HostError::Limit(mut l) => {
                l.message = hide(l.message);
                HostError::Limit(l)
            }
        }
    }
}

/// Whether `name` is a command implemented here (and not in
/// [`crate::commands`]).
pub fn is_effect(name: &str) -> bool {
    signature::command(name)
        .is_some_and(|sig| matches!(sig.capability, Capability::Net | Capability::Db | Capability::Ai))
}

/// Run effect command `name` (form `form`) with the values of its
/// non-target parameters. Errors come out [scrubbed](Effects::scrub).
/// `memory` is what is left of the run's memory: a response body is decoded
/// under it (a hostile upstream may answer with a JSON bomb).
pub async fn call(
    name: &str,
    form: usize,
    args: Vec<Value>,
    fx: &Effects,
    memory: MemoryBudget,
) -> Result<EffectOutcome, HostError> {
    dispatch(name, form, args, fx, memory).await.map_err(|e| fx.scrub(e))
}

async fn dispatch(
    name: &str,
    form: usize,
    args: Vec<Value>,
    fx: &Effects,
    memory: MemoryBudget,
) -> Result<EffectOutcome, HostError> {
    let Some(sig) = signature::command(name).filter(|_| is_effect(name)) else {
        return Err(HostError::script(
            ErrorKind::NotAvailable,
            format!("{name} is not a command with outside effects"),
        ));
    };
    let Some(params) = sig.forms.get(form) else {
        return Err(HostError::script(
            ErrorKind::TypeError,
            format!("{name}: no form #{form} (it has {})", sig.forms.len()),
        ));
    };
    let expected = params.iter().filter(|p| p.kind != ParamKind::Target).count();
    if args.len() != expected {
        return Err(HostError::script(
            ErrorKind::TypeError,
            format!("{name}: expected {expected} argument(s), got {}", args.len()),
        ));
    }
    match sig.name {
        "RequestGet" | "RequestPost" | "functionAI" => http::call(sig.name, args, fx, memory).await,
        "ormDirect" | "ormCheckTable" | "ormAccessSelect" | "ormAccessInsert" | "ormAccessUpdate" | "avapConnector" => {
            match &fx.db {
                Some(dbs) => db::call(sig.name, form, args, dbs).await,
                None => Err(HostError::script(
                    ErrorKind::CapabilityDenied,
                    format!(
                        "{name}: no application database is configured for this runtime \
                         (set `database_url`/connectors in the server config, or run under `avap serve`)"
                    ),
                )),
            }
        }
        other => Err(HostError::script(
            ErrorKind::NotAvailable,
            format!("command not available yet: {other}"),
        )),
    }
}
