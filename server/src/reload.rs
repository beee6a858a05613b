//! Configuration changes while serving: SIGHUP and `POST
//! /api/v1/admin/reload` read the file and the environment again (the
//! flags stay as given at start), validate the result whole, and put the
//! keys that can change live in force for the next requests and runs.
//!
//! * Live ([`applies_live`]): rate limits (also per route), request timeout and CORS
//!   origins ([`protect::Protect::reconfigure`]), `deny_capabilities` (the
//!   runtime's policy, which every run checks again, so modules cached
//!   before the reload are refused too), the `[limits]` maximums, the
//!   outbound policy and its breakers, the application databases and their
//!   breakers (new pools; runs already started keep the old ones),
//!   `ai_endpoint`, `audit_retention_days` and `log_level`.
//! * Everything else (listen address, databases of the server, Redis,
//!   pools, jobs, …) is reported as "needs restart" and left as it is.
//! * A file that does not parse or validate changes nothing: the running
//!   configuration stays in force and the error says why.
//!
//! Every reload, applied or refused, writes an audit row (`config_reload`)
//! and a log line, and counts in `avap_config_reloads_total`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use avap_runtime::{Effects, Limits};
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::audit;
use super::config::{self, LogLevel, Settings};
use super::error::ApiError;
use super::openapi::ApiErrorBody;
use super::store::Actor;
use super::store::AuditRow;
use super::{AppState, ServeArgs};

/// What requests and runs read when they start; a reload swaps it whole.
#[derive(Debug, Clone)]
pub struct Live {
    /// The most one run may use (`[limits]`).
    pub limits: Limits,
    /// Outbound HTTP, databases, model endpoint.
    pub effects: Effects,
    /// `GET /api/v1/debug/config`: the configuration in force.
    pub effective_config: Option<Arc<str>>,
}

/// Sets the level of the log lines (given by whoever installed the logger).
pub type SetLogLevel = Box<dyn Fn(LogLevel) -> Result<(), String> + Send + Sync>;

/// How to read the configuration again, and what is in force now.
pub struct Reloader {
    /// The flags `avap serve` started with (a reload keeps them).
    args: ServeArgs,
    /// The settings in force; held while a reload runs, so reloads take turns.
    in_force: Mutex<Settings>,
    set_log_level: Option<SetLogLevel>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for a server started from `args`, whose settings are `in_force`.
    pub fn new(args: ServeArgs, in_force: Settings, set_log_level: Option<SetLogLevel>) -> Reloader {
        Reloader {
            args,
            in_force: Mutex::new(in_force),
            set_log_level,
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReloadReport {
    /// Keys whose new values are in force now.
    pub applied: Vec<String>,
    /// Keys whose new values wait for a restart (the old ones stay in force).
    pub needs_restart: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "the configuration was not reloaded, the running one stays in force: {0}; fix the file or the environment and reload again"
    )]
    Invalid(config::ConfigError),
    #[error("this server was not started from a configuration file or environment, so there is nothing to read again")]
    Unavailable,
}

/// Whether a change of `key` (a path such as `limits.fuel`) takes effect
/// without a restart.
pub fn applies_live(key: &str) -> bool {
    const KEYS: &[&str] = &[
        "rate_limit",
        "rate_burst",
        "request_timeout_ms",
        "cors_origins",
        "deny_capabilities",
        "ai_endpoint",
        "app_database_url",
        "audit_retention_days",
        "log_level",
    ];
    const PREFIXES: &[&str] = &["limits.", "connectors", "route_rate_limits", "outbound_", "db_"];
    KEYS.contains(&key) || PREFIXES.iter().any(|prefix| key.starts_with(prefix))
}

/// The key paths whose values differ between `old` and `new` (`limits.fuel`;
/// other tables, such as `connectors`, as a whole).
fn changed_keys(old: &Settings, new: &Settings) -> Vec<String> {
    let (old, new) = (table(old), table(new));
    let mut changed = Vec::new();
    for (key, value) in &new {
        match (old.get(key), value) {
            (Some(toml::Value::Table(before)), toml::Value::Table(after)) if key == "limits" => {
                let keys = before.keys().chain(after.keys().filter(|k| !before.contains_key(*k)));
                for inner in keys {
                    if before.get(inner) != after.get(inner) {
                        changed.push(format!("{key}.{inner}"));
                    }
                }
            }
            (before, after) if before != Some(after) => changed.push(key.clone()),
            _ => {}
        }
    }
    changed.sort();
    changed
}

fn table(settings: &Settings) -> toml::Table {
    toml::Table::try_from(settings).expect("the settings serialize to TOML")
}

/// Read the configuration again and put what can change live in force.
pub fn reload(state: &AppState) -> Result<ReloadReport, ReloadError> {
    let reloader = state.reloader().ok_or(ReloadError::Unavailable)?;
    let mut in_force = reloader.in_force.lock().unwrap_or_else(PoisonError::into_inner);
    let mut resolved = config::resolve(&reloader.args).map_err(ReloadError::Invalid)?;
    let changed = changed_keys(&in_force, &resolved.settings);
    let (applied, needs_restart): (Vec<String>, Vec<String>) = changed.into_iter().partition(|key| applies_live(key));
    // The settings in force from now on: the new values of the live keys,
    // the old ones of the rest (top-level keys, as `applies_live` says).
    let mut merged = table(&resolved.settings);
    let old = table(&in_force);
    for key in &needs_restart {
        if let Some(value) = old.get(key) {
            merged.insert(key.clone(), value.clone());
        }
    }
    resolved.settings = merged
        .try_into()
        .map_err(|e| ReloadError::Invalid(config::problem(format!("cannot merge the settings: {e}"))))?;
    let new = &resolved.settings;
    apply(state, reloader, &applied, new);
    let mut live = Live::clone(&state.live());
    let touched = |prefix: &str| applied.iter().any(|key| key.starts_with(prefix));
    if touched("limits.") {
        live.limits = new.limits();
    }
    if touched("outbound_") {
        live.effects.http = new.outbound();
    }
    if touched("db_") || touched("app_database_url") || touched("connectors") {
        live.effects.db = new.databases().ok().map(|db| {
            db.set_acquire_observer(state.metrics().app_db_acquire_observer());
            Arc::new(db)
        });
    }
    if touched("ai_endpoint") {
        live.effects.ai = new.ai();
    }
    live.effective_config = resolved.to_toml().ok().map(|mut text| {
        if !needs_restart.is_empty() {
            let _ = write!(
                text,
                "\n# Changed in the configuration, in force after a restart: {}\n",
                needs_restart.join(", ")
            );
        }
        Arc::from(text)
    });
    state.set_live(live);
    *in_force = resolved.settings;
    Ok(ReloadReport { applied, needs_restart })
}

/// The live keys kept outside [`Live`]: the protection layer, the runtime's
/// policy, the audit pruner, the log level.
fn apply(state: &AppState, reloader: &Reloader, applied: &[String], new: &Settings) {
    let touched = |keys: &[&str]| applied.iter().any(|key| keys.contains(&key.as_str()));
    if touched(&[
        "rate_limit",
        "rate_burst",
        "request_timeout_ms",
        "cors_origins",
        "route_rate_limits",
    ]) {
        state.protect().reconfigure(new.protect_config());
    }
    if touched(&["deny_capabilities"]) {
        state.runtime().set_policy(new.policy());
    }
    if touched(&["audit_retention_days"]) {
        state.audit().set_retention(new.audit_retention());
    }
    if touched(&["log_level"]) {
        match &reloader.set_log_level {
            Some(set) => {
                if let Err(e) = set(new.log_level) {
                    tracing::warn!("cannot change the log level: {e}");
                }
            }
            None => tracing::warn!("log_level changed, but this process has no logger to change"),
        }
    }
}

/// Reload, then log, count and audit the outcome as done by `actor`.
pub async fn reload_audited(state: &AppState, actor: &Actor) -> Result<ReloadReport, ReloadError> {
    // Reading files and building clients and pools blocks: not on an async worker.
    let reloading = state.clone();
    let result = tokio::task::spawn_blocking(move || reload(&reloading))
        .await
        .unwrap_or_else(|e| {
            Err(ReloadError::Invalid(config::problem(format!(
                "the reload stopped unexpectedly: {e}"
            ))))
        });
    let (outcome, subject) = match &result {
        Ok(report) => {
            tracing::info!(
                applied = %report.applied.join(","),
                needs_restart = %report.needs_restart.join(","),
                "configuration reloaded"
            );
            ("ok", Some(summary(report)))
        }
        Err(e) => {
            tracing::warn!("{e}");
            ("ConfigInvalid", None)
        }
    };
    state.metrics().config_reloaded(result.is_ok());
    if !matches!(result, Err(ReloadError::Unavailable)) {
        let row = AuditRow {
            subject,
            ..AuditRow::new(actor, "config_reload", outcome)
        };
        audit::refused(state, row).await;
    }
    result
}

/// The audit row's subject: which keys changed, cut to a sane length.
fn summary(report: &ReloadReport) -> String {
    let mut keys = report.applied.clone();
    keys.extend(report.needs_restart.iter().map(|key| format!("{key} (restart)")));
    if keys.is_empty() {
        return "unchanged".to_owned();
    }
    let mut text = keys.join(",");
    if text.len() > 500 {
        let cut = (0..=500).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// `POST /api/v1/admin/reload`: read the configuration file and the
/// environment again and put what can change live in force.
#[utoipa::path(
    post,
    path = "/api/v1/admin/reload",
    tag = "debug",
    summary = "Read the configuration file and environment again; apply what can change live",
    responses(
        (status = 200, description = "Reloaded: which changed keys are in force, which wait for a restart", body = ReloadReport),
        (status = 409, description = "Not started from a configuration (`ReloadUnavailable`)", body = ApiErrorBody),
        (status = 422, description = "The configuration does not validate; nothing changed (`ConfigInvalid`)", body = ApiErrorBody),
    )
)]
pub async fn reload_handler(State(state): State<AppState>, actor: Actor) -> Result<Json<ReloadReport>, ApiError> {
    match reload_audited(&state, &actor).await {
        Ok(report) => Ok(Json(report)),
        Err(e @ ReloadError::Invalid(_)) => Err(ApiError::ConfigInvalid(e.to_string())),
        Err(e @ ReloadError::Unavailable) => Err(ApiError::ReloadUnavailable(e.to_string())),
    }
}

/// SIGHUP: reload, as the `signal` actor.
pub async fn on_signal(state: &AppState) {
    let actor = Actor {
        actor: "signal:SIGHUP".to_owned(),
        request_id: None,
    };
    // The outcome is logged and audited by `reload_audited`.
    let _ = reload_audited(state, &actor).await;
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn changed_keys_name_nested_limits_and_whole_connectors() {
        let old = Settings::defaults(PathBuf::from("/tmp/x"));
        let mut new = old.clone();
        assert!(changed_keys(&old, &new).is_empty());
        new.rate_limit += 1;
        new.limits.fuel += 1;
        new.listen = "127.0.0.1:1".to_owned();
        new.connectors.insert("token".to_owned(), "sqlite:/tmp/a.db".to_owned());
        let changed = changed_keys(&old, &new);
        assert_eq!(changed, ["connectors", "limits.fuel", "listen", "rate_limit"]);
        let live: Vec<bool> = changed.iter().map(|key| applies_live(key)).collect();
        assert_eq!(live, [true, true, false, true]);
    }

    #[test]
    fn the_summary_is_bounded() {
        let report = ReloadReport {
            applied: (0..200).map(|i| format!("key_{i}")).collect(),
            needs_restart: vec!["listen".to_owned()],
        };
        let text = summary(&report);
        assert!(text.chars().count() <= 501, "{}", text.len());
        assert_eq!(
            summary(&ReloadReport {
                applied: vec![],
                needs_restart: vec![]
            }),
            "unchanged"
        );
    }
}
