//! The configuration of `avap serve`, in layers: built-in defaults, then a
//! TOML file, then `AVAP_<KEY>` environment variables, then command-line
//! flags; each layer wins over the ones before it. [`resolve`] reads and
//! validates them once at start; [`Resolved::to_toml`] is `--print-config`.
//!
//! One key set serves the file, the environment and `--print-config`: the
//! fields of [`Settings`]. Each layer is a `figment` provider; figment
//! merges them and remembers which one set each value (the origin that
//! errors and `--print-config` name). Each layer is checked alone first,
//! so an unknown key or a wrong type is reported with its own place: the
//! file and line, or the variable. In the environment a nested key joins its table
//! and name with `_` (`[limits] fuel` is `AVAP_LIMITS_FUEL`) and a list is
//! comma-separated (`AVAP_CORS_ORIGINS=https://a.example,https://b.example`).
//! Unknown keys and variables are errors, so a typo never silently falls
//! back to a default.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use avap_hostfns::effects::breaker::{BreakerConfig, WINDOW};
use avap_hostfns::effects::db::{Databases, DbConfigError, DbLimits};
use avap_hostfns::effects::http::{AiEndpoint, Outbound, OutboundConfig};
use avap_hostfns::effects::policy::OutboundPolicy;
use avap_hostfns::redact::url as redact_url;
use avap_runtime::{CapabilityPolicy, Limits};
use serde::{Deserialize, Serialize};

use super::jobs::{JobsBackend, JobsConfig};
use super::redis::RedisUrl;
use super::telemetry::{OtlpEndpoint, OtlpProtocol};
use super::{ServerConfig, auth, edge, listen, protect, store};
use crate::ServeArgs;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Variables with our prefix that belong to other tools (the test suites,
/// `avap run`'s module cache), not to the server: a shell that sets them
/// must still start it.
const FOREIGN_VARS: [&str; 2] = ["AVAP_CONFORMANCE_DIR", "AVAP_CACHE_DIR"];

const ENV_PREFIX: &str = "AVAP_";

/// The longest time any setting may name, in milliseconds.
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// The application database's file in `data_dir` (default `app_database_url`).
pub const APP_DATABASE_FILE: &str = "app.sqlite";

/// A configuration problem; the message names the key and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn problem(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON lines when stderr is not a terminal, text otherwise.
    Auto,
    Json,
    Text,
}

/// Whether `avap serve` serves the browser playground at `/playground`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PlaygroundMode {
    /// Only when every address `listen` names is a loopback one
    Auto,
    /// Always (its API calls still need a key where anonymous requests are not let in)
    On,
    /// Never: `/playground` is a 404
    Off,
}

/// The least severe log events written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn level(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// The effective configuration: every key with its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `ADDRESS:PORT` to listen on (port 0 picks a free one).
    pub listen: String,
    /// The embedded database (unless `database_url` names another) and the server key.
    pub data_dir: PathBuf,
    /// `sqlite:PATH` (or a bare path) for the embedded database, or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` for a cluster of
    /// nodes sharing one registry.
    pub database_url: String,
    /// Let requests without an API key in even on a non-loopback address.
    pub allow_anonymous: bool,
    /// Require an API key even on a loopback address.
    pub require_api_key: bool,
    /// Serve the browser playground at `/playground`: `auto` (only on a
    /// loopback listener), `on` or `off`.
    pub playground: PlaygroundMode,
    /// How far (seconds, either way) the `X-Avap-Timestamp` of a signed
    /// request may be from the server's clock; a signature is remembered
    /// (replays refused) for as long as its timestamp is inside.
    pub request_signing_window_s: u64,
    /// Requests per second per client (API key, else IP); 0 turns rate limiting off.
    pub rate_limit: u32,
    /// Requests a client may send at once before the rate applies.
    pub rate_burst: u32,
    /// The outer time limit of a request (504 after it; 0 = none).
    pub request_timeout_ms: u64,
    /// Time a client has to send a whole request head: from connecting, or
    /// from the first byte of a later request on a kept-alive connection.
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection with no new request this long after its
    /// last response is closed.
    pub idle_timeout_ms: u64,
    /// Client connections open at once (more are closed at once); lowered
    /// at start to fit the open-files limit.
    pub max_connections: usize,
    /// Client connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Origins allowed to call the API from a browser (CORS).
    pub cors_origins: Vec<String>,
    /// `Strict-Transport-Security: max-age=…` on every response; 0 = not
    /// sent. The server speaks plain HTTP: set this when clients reach it
    /// only through a TLS-terminating proxy.
    pub hsts_max_age: u64,
    pub max_body_bytes: usize,
    pub max_script_bytes: usize,
    /// Requests compiling or running at once.
    pub max_concurrent_runs: usize,
    /// Compilations (Cranelift) at once, across all requests.
    pub max_concurrent_compiles: usize,
    /// `go_async` blocks one run may hold started and not yet gathered
    /// (one more ends the run with `MemoryLimit`).
    pub max_async_blocks: u32,
    /// Instances for `go_async` blocks across the server, besides the
    /// runs' own; a block waits (within its run's deadline) for a free one.
    pub async_block_slots: u32,
    /// Instances of finished runs kept, reset, for the next run of the same
    /// script (0 = every run instantiates afresh).
    pub warm_instances: u32,
    /// How long a request waits for a run slot before 503.
    pub queue_wait_ms: u64,
    /// Compiled inline scripts kept.
    pub cache_entries: usize,
    /// Cached scripts and modules unused this many seconds are dropped
    /// (0 = kept until the entry bound evicts them).
    pub cache_ttl_s: u64,
    /// Stored scripts loaded at start, most-run first (0 = none).
    pub prewarm: usize,
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]` (`rediss://` for TLS), shared
    /// by the nodes of a cluster: compiled-module cache, script
    /// invalidations, rate limits. Empty: none (a single node).
    pub redis_url: String,
    /// A PEM file of the CA certificates that sign the `rediss://` server's
    /// certificate, instead of the system's trust store. Empty: the system's.
    pub redis_ca_file: String,
    /// The namespace of this cluster's Redis keys (`PREFIX:…`), so several
    /// clusters can share one Redis.
    pub redis_prefix: String,
    /// Audit rows older than this many days are deleted (every hour); 0 = kept forever.
    pub audit_retention_days: u32,
    /// `nats://HOST:PORT` (`tls://` for TLS): jobs go through NATS
    /// `JetStream`, shared by the nodes and `avap worker` processes of a
    /// cluster (their state stays in `database_url`, `PostgreSQL` for a
    /// cluster). Empty: the queue in the server database (a single node).
    pub jobs_url: String,
    /// Jobs this process runs at once (0 = it accepts jobs but runs none).
    pub jobs_workers: usize,
    /// The longest one job's run may take (its time limit's maximum).
    pub jobs_max_time_ms: u64,
    /// How long a running job stays its worker's without a heartbeat (every
    /// third of it): a worker that dies loses its jobs this long after.
    pub jobs_lease_ms: u64,
    /// Finished jobs and their results are deleted this many seconds after they finished.
    pub jobs_retention_s: u64,
    /// The namespace of the NATS stream (`PREFIX_jobs`), subjects and
    /// consumers, so several clusters can share one NATS.
    pub jobs_prefix: String,
    /// Unfinished jobs (queued, waiting for a retry, running) the queue
    /// holds at most; one more submission is refused with 503 `JobQueueFull`.
    pub jobs_max_queued: u64,
    /// Capability classes scripts may not use (refused at load with 403).
    pub deny_capabilities: Vec<String>,
    /// Non-public destinations `RequestGet`/`RequestPost`/`functionAI` may
    /// reach anyway: `host`, `host:port`, `IP`, `IP:port`, `[IPv6]:port` or
    /// a CIDR block. Public addresses are always allowed.
    pub outbound_allow: Vec<String>,
    /// Timeout of one outbound HTTP call, redirects and body included.
    pub outbound_timeout_ms: u64,
    /// Largest outbound HTTP response body accepted.
    pub outbound_max_response_kb: u64,
    /// Redirects one outbound HTTP call follows.
    pub outbound_max_redirects: u32,
    /// Failed (or slow) calls among one host's last 20, in percent, that
    /// open its circuit: calls to it then fail at once; 0 = no breakers.
    pub outbound_breaker_failure_pct: u8,
    /// A call to a host this slow counts as failed (0 = only errors count).
    pub outbound_breaker_slow_ms: u64,
    /// Calls to a host known before its failure rate is judged (1 to 20).
    pub outbound_breaker_min_calls: u32,
    /// How long an open circuit refuses calls before it probes the host again.
    pub outbound_breaker_open_ms: u64,
    /// Calls to one host at once (more fail at once); 0 = no cap.
    pub outbound_max_concurrent_per_host: usize,
    /// The model endpoint of `functionAI` (an http(s) URL; empty = none, and
    /// `functionAI` is refused with `CapabilityDenied`).
    pub ai_endpoint: String,
    /// The application database of the `orm*` commands: `sqlite:PATH`, a
    /// bare path or `postgres://…` (not the server's own `database_url`;
    /// empty = none, and the commands are refused with `CapabilityDenied`).
    pub app_database_url: String,
    /// Refuse writes through the `orm*` commands and connectors.
    pub db_read_only: bool,
    /// Most rows one database result may hold (more is a `DatabaseError`).
    pub db_max_rows: usize,
    /// Longest one database statement may run.
    pub db_statement_timeout_ms: u64,
    /// Largest one database result may be, in KiB (more is a
    /// `DatabaseError`, counted while rows are read).
    pub db_max_result_kb: u64,
    /// Statements among one database's last 20 that could not reach it
    /// (no connection, a broken one, the statement timeout) or were slow,
    /// in percent, that open its circuit; 0 = no breakers.
    pub db_breaker_failure_pct: u8,
    /// A statement this slow counts as failed (0 = only failures count).
    pub db_breaker_slow_ms: u64,
    /// Statements on a database known before its failure rate is judged (1 to 20).
    pub db_breaker_min_calls: u32,
    /// How long an open circuit refuses statements before it probes again.
    pub db_breaker_open_ms: u64,
    /// Statements on one database at once (more fail at once); 0 = no cap.
    pub db_max_concurrent_statements: usize,
    /// A statement this slow is logged (its shape, literals replaced, never
    /// its values) and counted in `avap_db_slow_statements_total`; 0 = off.
    pub db_slow_statement_ms: u64,
    /// Run as an edge node: serve a disk mirror of `registry_url`'s scripts,
    /// read-only (see `edge.rs`).
    pub edge: bool,
    /// The registry node an edge node follows: `http(s)://HOST[:PORT]`.
    pub registry_url: String,
    /// A `registry`-scoped API key made on the registry node (a secret:
    /// shown redacted; no flag, so it never shows in a process list).
    pub registry_api_key: String,
    /// How often an edge node asks the registry for changes.
    pub registry_sync_ms: u64,
    pub log_format: LogFormat,
    pub log_level: LogLevel,
    /// Write log lines to this file instead of stderr (empty = stderr);
    /// rotated past `log_max_mb`, reopened on SIGHUP.
    pub log_file: String,
    /// Rotate the log file when it would pass this size, in MiB (decimals allowed).
    pub log_max_mb: f64,
    /// Rotated log files kept: `FILE.1` (newest) … `FILE.<log_keep>`; 0 = truncate instead.
    pub log_keep: usize,
    /// Send traces to this OTLP collector (`http://` or `https://HOST:PORT`;
    /// over HTTP spans are posted to `…/v1/traces`); empty = no export.
    pub otlp_endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub otlp_protocol: OtlpProtocol,
    /// A PEM CA bundle for an `https://` collector with a private CA;
    /// empty = the webpki roots.
    pub otlp_ca_file: String,
    /// `service.name` of the exported traces.
    pub otlp_service_name: String,
    /// The most one run may use; also what a run gets when it asks for nothing.
    pub limits: LimitSettings,
    /// `[connectors]`: `avapConnector` token → database URL.
    pub connectors: BTreeMap<String, String>,
    /// `[route_rate_limits]`: a path prefix (`/api/v1/…`) → its own quota
    /// per client, on top of `rate_limit` (the longest prefix applies).
    pub route_rate_limits: BTreeMap<String, RouteRate>,
}

/// One `[route_rate_limits]` entry: `"/api/v1/execute" = { per_second = 5, burst = 10 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRate {
    pub per_second: u32,
    /// Default: `per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// `[limits]`: the server's per-run maximums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub fuel: u64,
    pub time_ms: u64,
    pub memory_mb: u64,
    pub stack_kb: u64,
    pub output_kb: u64,
}

/// One layer (file, environment or flags): only the keys it sets.
#[derive(Debug, Clone, Default)]
struct Layer(toml::Table);

/// Where a key's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

impl Source {
    /// The name of its figment provider.
    fn name(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "environment",
            Source::Flag => "flag",
        }
    }

    fn named(name: &str) -> Source {
        [Source::File, Source::Env, Source::Flag]
            .into_iter()
            .find(|source| source.name() == name)
            .unwrap_or(Source::Default)
    }
}

/// A layer as a figment provider, named by its source.
struct Provide<'a>(Source, &'a toml::Table);

impl figment::Provider for Provide<'_> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.0.name())
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        figment::providers::Serialized::defaults(self.1).data()
    }
}

impl Layer {
    /// The layer if every key it sets is a key of [`Settings`] with a value
    /// of the key's type; else the first problem, its place said by
    /// `place(key path)`.
    fn checked(self, source: Source, place: impl Fn(&[String]) -> String) -> Result<Layer, ConfigError> {
        let template = Settings::defaults(PathBuf::from("/"));
        let result = figment::Figment::from(figment::providers::Serialized::defaults(template))
            .merge(Provide(source, &self.0))
            .extract::<Settings>();
        match result {
            Ok(_) => Ok(self),
            Err(e) => {
                let mut path = e.path.clone();
                let what = match &e.kind {
                    figment::error::Kind::UnknownField(name, expected) => {
                        if path.last() != Some(name) {
                            path.push(name.clone());
                        }
                        let known: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
                        format!("unknown field `{name}`, expected one of {}", known.join(", "))
                    }
                    figment::error::Kind::UnknownVariant(name, expected) => {
                        let known: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
                        format!("unknown variant `{name}`, expected one of {}", known.join(", "))
                    }
                    kind => kind.to_string(),
                };
                Err(problem(format!("{}: {what}", place(&path))))
            }
        }
    }
}

/// The settings with the origin of every value.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub settings: Settings,
    /// The merged layers; it knows which layer set each value.
    merged: figment::Figment,
    /// The config file read, if any.
    file: Option<PathBuf>,
    /// The line of each key set in that file (`limits.fuel` for `[limits] fuel`).
    file_lines: BTreeMap<String, usize>,
}

/// Read the file, the environment and the flags of `avap serve` and validate the result.
pub fn resolve(args: &ServeArgs) -> Result<Resolved, ConfigError> {
    let file = match &args.config {
        Some(path) => Some(path.clone()),
        None => default_config_file().filter(|path| path.is_file()),
    };
    let (file_layer, file_lines) = match &file {
        Some(path) => read_file(path)?,
        None => (Layer::default(), BTreeMap::new()),
    };
    let env_layer = env_layer(std::env::vars_os())?;
    let mut resolved = Resolved::from_layers(&flag_layer(args), &env_layer, &file_layer, file, || {
        super::default_data_dir().map_err(|e| problem(format!("{e:#}")))
    })?;
    resolved.file_lines = file_lines;
    resolved.validate()?;
    Ok(resolved)
}

/// `$XDG_CONFIG_HOME/avap/config.toml`, else `~/.config/avap/config.toml`.
pub fn default_config_file() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let home = || {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".config"))
    };
    Some(xdg.or_else(home)?.join("avap/config.toml"))
}

/// The file's keys, and the line each is set on.
fn read_file(path: &Path) -> Result<(Layer, BTreeMap<String, usize>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| problem(format!("cannot read the config file {}: {e}", path.display())))?;
    Ok((parse_file(path, &text)?, key_lines(&text)))
}

/// `dotted.key → line` of every value in a (valid) TOML text.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    fn walk(prefix: &str, table: &toml::de::DeTable<'_>, text: &str, out: &mut BTreeMap<String, usize>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            match value.get_ref() {
                toml::de::DeValue::Table(sub) => walk(&path, sub, text, out),
                _ => {
                    out.insert(path, line_of(text, key.span().start));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(table) = toml::de::DeTable::parse(text) {
        walk("", table.get_ref(), text, &mut out);
    }
    out
}

fn parse_file(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| format!(" line {}", line_of(text, span.start)))
            .unwrap_or_default();
        problem(format!("{}{line}: {}", path.display(), e.message().trim()))
    })?;
    let lines = key_lines(text);
    Layer(table).checked(Source::File, |key| {
        // A table named wrongly has no line of its own: its first key's.
        let prefix = key.join(".");
        let line = lines
            .get(&prefix)
            .or_else(|| lines.iter().find(|(k, _)| k.starts_with(&prefix)).map(|(_, n)| n));
        let line = line.map(|n| format!(" line {n}")).unwrap_or_default();
        format!("{}{line}", path.display())
    })
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// The flags given on the command line (a flag left out sets nothing).
fn flag_layer(args: &ServeArgs) -> Layer {
    // Every flag's value is a string, number, bool, path or list: TOML has them all.
    let mut table = toml::Table::try_from(args).unwrap_or_default();
    // Either access flag settles both keys, so it beats the file and the environment.
    if args.allow_anonymous || args.require_api_key {
        table.insert("allow_anonymous".to_owned(), args.allow_anonymous.into());
        table.insert("require_api_key".to_owned(), args.require_api_key.into());
    }
    Layer(table)
}

/// The kind of value a key holds, which says how its variable's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    /// A number that may have decimals (`log_max_mb = 0.5`).
    Float,
    Boolean,
    List,
}

/// Every key as `(path, kind)`, from the serialized defaults, so the
/// environment cannot drift from [`Settings`].
fn keys() -> Vec<(Vec<String>, Kind)> {
    fn walk(prefix: &[String], table: &toml::Table, out: &mut Vec<(Vec<String>, Kind)>) {
        for (name, value) in table {
            let mut path = prefix.to_vec();
            path.push(name.clone());
            let kind = match value {
                toml::Value::Table(sub) => {
                    walk(&path, sub, out);
                    continue;
                }
                toml::Value::Integer(_) => Kind::Integer,
                toml::Value::Float(_) => Kind::Float,
                toml::Value::Boolean(_) => Kind::Boolean,
                toml::Value::Array(_) => Kind::List,
                _ => Kind::Text,
            };
            out.push((path, kind));
        }
    }
    let template = Settings::defaults(PathBuf::from("/"));
    let table = toml::Table::try_from(&template).expect("the default settings serialize to TOML");
    let mut out = Vec::new();
    walk(&[], &table, &mut out);
    out
}

/// `AVAP_LIMITS_FUEL` for `["limits", "fuel"]`.
fn env_name(path: &[impl AsRef<str>]) -> String {
    let joined: Vec<&str> = path.iter().map(AsRef::as_ref).collect();
    format!("{ENV_PREFIX}{}", joined.join("_").to_ascii_uppercase())
}

/// The `AVAP_*` variables among `vars`.
fn env_layer(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<Layer, ConfigError> {
    let keys = keys();
    let mut table = toml::Table::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) || FOREIGN_VARS.contains(&name) {
            continue;
        }
        let Some((path, kind)) = keys.iter().find(|(path, _)| env_name(path) == name) else {
            let known: Vec<String> = keys.iter().map(|(path, _)| env_name(path)).collect();
            return Err(problem(format!(
                "unknown environment variable {name}; the server reads {}",
                known.join(", ")
            )));
        };
        let value = value
            .to_str()
            .ok_or_else(|| problem(format!("environment variable {name}: the value is not UTF-8")))?;
        let value = env_value(name, value, *kind)?;
        // Each variable is checked alone, so a wrong type names it.
        let alone = Layer(nested(path, value)).checked(Source::Env, |_| format!("environment variable {name}"))?;
        merge_into(&mut table, alone.0);
    }
    Ok(Layer(table))
}

/// A variable's text as a value of `kind`.
fn env_value(name: &str, text: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    Ok(match kind {
        Kind::Text => toml::Value::String(text.to_owned()),
        Kind::Integer => toml::Value::Integer(
            text.trim()
                .parse()
                .map_err(|_| problem(format!("environment variable {name}: `{text}` is not a whole number")))?,
        ),
        Kind::Float => toml::Value::Float(
            text.trim()
                .parse()
                .map_err(|_| problem(format!("environment variable {name}: `{text}` is not a number")))?,
        ),
        Kind::Boolean => toml::Value::Boolean(match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(problem(format!(
                    "environment variable {name}: `{text}` is not true or false"
                )));
            }
        }),
        Kind::List => toml::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        ),
    })
}

/// `{"limits": {"fuel": value}}` for `["limits", "fuel"]`.
fn nested(path: &[String], value: toml::Value) -> toml::Table {
    let (last, parents) = path.split_last().expect("a key has a name");
    let mut table = toml::Table::new();
    table.insert(last.clone(), value);
    for parent in parents.iter().rev() {
        let mut outer = toml::Table::new();
        outer.insert(parent.clone(), toml::Value::Table(table));
        table = outer;
    }
    table
}

fn merge_into(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(more)) => merge_into(inner, more),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

impl Settings {
    /// The built-in defaults, with the database in `data_dir`.
    pub fn defaults(data_dir: PathBuf) -> Settings {
        let server = ServerConfig::for_this_machine();
        let protect = protect::ProtectConfig::default();
        let connections = listen::ConnectionLimits::default();
        let outbound = OutboundConfig::default();
        let db = DbLimits::default();
        let app_database_url = format!("sqlite:{}", data_dir.join(APP_DATABASE_FILE).display());
        Settings {
            listen: DEFAULT_LISTEN.to_owned(),
            database_url: default_database_url(&data_dir),
            data_dir,
            allow_anonymous: false,
            require_api_key: false,
            playground: PlaygroundMode::Auto,
            request_signing_window_s: server.signing_window.as_secs(),
            rate_limit: protect.rate_limit,
            rate_burst: protect.rate_burst,
            request_timeout_ms: millis(protect.request_timeout),
            header_read_timeout_ms: millis(connections.header_read_timeout),
            idle_timeout_ms: millis(connections.idle_timeout),
            max_connections: connections.max_connections,
            max_connections_per_ip: connections.max_connections_per_ip,
            cors_origins: protect.cors_origins,
            hsts_max_age: protect.hsts_max_age,
            max_body_bytes: server.max_body_bytes,
            max_script_bytes: server.max_script_bytes,
            max_concurrent_runs: server.max_concurrent_runs,
            max_concurrent_compiles: server.max_concurrent_compiles,
            max_async_blocks: server.max_async_blocks,
            async_block_slots: server.async_block_slots,
            warm_instances: server.warm_instances,
            queue_wait_ms: millis(server.queue_wait),
            cache_entries: server.cache_entries,
            cache_ttl_s: server.cache_ttl.map_or(0, |idle| idle.as_secs()),
            prewarm: server.prewarm,
            redis_url: String::new(),
            redis_ca_file: String::new(),
            redis_prefix: server.redis_prefix,
            audit_retention_days: 0,
            jobs_url: String::new(),
            jobs_workers: server.jobs.workers,
            jobs_max_time_ms: millis(server.jobs.max_time),
            jobs_lease_ms: millis(server.jobs.lease),
            jobs_retention_s: server.jobs.retention.as_secs(),
            jobs_prefix: server.jobs.prefix.clone(),
            jobs_max_queued: server.jobs.max_unfinished,
            deny_capabilities: Vec::new(),
            outbound_allow: outbound.allow,
            outbound_timeout_ms: outbound.timeout_ms,
            outbound_max_response_kb: outbound.max_response_kb,
            outbound_max_redirects: outbound.max_redirects,
            outbound_breaker_failure_pct: outbound.breaker.failure_pct,
            outbound_breaker_slow_ms: outbound.breaker.slow_ms,
            outbound_breaker_min_calls: outbound.breaker.min_calls,
            outbound_breaker_open_ms: outbound.breaker.open_ms,
            outbound_max_concurrent_per_host: outbound.breaker.max_concurrent,
            ai_endpoint: String::new(),
            app_database_url,
            db_read_only: db.read_only,
            db_max_rows: db.max_rows,
            db_statement_timeout_ms: millis(db.statement_timeout),
            db_max_result_kb: u64::try_from(db.max_result_bytes / 1024).unwrap_or(u64::MAX),
            db_breaker_failure_pct: db.breaker.failure_pct,
            db_breaker_slow_ms: db.breaker.slow_ms,
            db_breaker_min_calls: db.breaker.min_calls,
            db_breaker_open_ms: db.breaker.open_ms,
            db_max_concurrent_statements: db.breaker.max_concurrent,
            db_slow_statement_ms: db.slow_statement.map_or(0, millis),
            edge: false,
            registry_url: String::new(),
            registry_api_key: String::new(),
            registry_sync_ms: 5000,
            log_format: LogFormat::Auto,
            log_level: LogLevel::Info,
            log_file: String::new(),
            log_max_mb: 100.0,
            log_keep: 5,
            otlp_endpoint: String::new(),
            otlp_protocol: OtlpProtocol::default(),
            otlp_ca_file: String::new(),
            otlp_service_name: "avap".to_owned(),
            limits: LimitSettings {
                fuel: server.limits.fuel,
                time_ms: server.limits.time_ms,
                memory_mb: server.limits.memory_bytes >> 20,
                stack_kb: server.limits.stack_bytes >> 10,
                output_kb: server.limits.output_bytes >> 10,
            },
            connectors: BTreeMap::new(),
            route_rate_limits: BTreeMap::new(),
        }
    }

    /// The server's settings; call after [`Resolved::validate`].
    pub fn server_config(&self) -> ServerConfig {
        // Field by field, so keys added to `ServerConfig` later keep their defaults.
        let mut config = ServerConfig::for_this_machine();
        config.limits = self.limits();
        config.max_body_bytes = self.max_body_bytes;
        config.max_script_bytes = self.max_script_bytes;
        config.max_concurrent_runs = self.max_concurrent_runs;
        config.max_concurrent_compiles = self.max_concurrent_compiles;
        config.max_async_blocks = self.max_async_blocks;
        config.async_block_slots = self.async_block_slots;
        config.warm_instances = self.warm_instances;
        config.queue_wait = Duration::from_millis(self.queue_wait_ms);
        config.cache_entries = self.cache_entries;
        config.cache_ttl = (self.cache_ttl_s > 0).then(|| Duration::from_secs(self.cache_ttl_s));
        config.prewarm = self.prewarm;
        config.redis_url = RedisUrl::parse(&self.redis_url).ok();
        config.redis_ca_file = (!self.redis_ca_file.is_empty()).then(|| self.redis_ca_file.clone().into());
        config.redis_prefix.clone_from(&self.redis_prefix);
        config.audit_retention = self.audit_retention();
        config.jobs = JobsConfig {
            backend: if self.jobs_url.is_empty() {
                JobsBackend::Database
            } else {
                JobsBackend::Nats(self.jobs_url.clone())
            },
            workers: self.jobs_workers,
            max_time: Duration::from_millis(self.jobs_max_time_ms),
            lease: Duration::from_millis(self.jobs_lease_ms),
            retention: Duration::from_secs(self.jobs_retention_s),
            prefix: self.jobs_prefix.clone(),
            max_unfinished: self.jobs_max_queued,
        };
        config.policy = self.policy();
        config.allow_anonymous = auth::anonymous_allowed(self);
        config.playground = match self.playground {
            PlaygroundMode::On => true,
            PlaygroundMode::Off => false,
            PlaygroundMode::Auto => listens_on_loopback_only(&self.listen),
        };
        config.signing_window = Duration::from_secs(self.request_signing_window_s);
        config.protect = self.protect_config();
        config.connections = listen::ConnectionLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        };
        config.effects.http = self.outbound();
        config.effects.ai = self.ai();
        config.effects.db = self.databases().ok().map(Arc::new);
        config.edge = self.edge_config();
        config
    }

    /// `[limits]`: the per-run maximums.
    pub fn limits(&self) -> Limits {
        let l = self.limits;
        Limits {
            fuel: l.fuel,
            time_ms: l.time_ms,
            memory_bytes: l.memory_mb << 20,
            stack_bytes: l.stack_kb << 10,
            output_bytes: l.output_kb << 10,
        }
    }

    /// `deny_capabilities` as a policy (validated names).
    pub fn policy(&self) -> CapabilityPolicy {
        self.deny_capabilities
            .iter()
            .filter_map(|name| CapabilityPolicy::class_by_name(name))
            .fold(CapabilityPolicy::allow_all(), CapabilityPolicy::deny)
    }

    /// `audit_retention_days`; `None` keeps rows forever.
    pub fn audit_retention(&self) -> Option<Duration> {
        (self.audit_retention_days > 0).then(|| Duration::from_hours(24 * u64::from(self.audit_retention_days)))
    }

    /// Rate limits, request timeout, CORS and HSTS.
    pub fn protect_config(&self) -> protect::ProtectConfig {
        protect::ProtectConfig {
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            cors_origins: self.cors_origins.clone(),
            hsts_max_age: self.hsts_max_age,
            route_limits: self
                .route_rate_limits
                .iter()
                .map(|(prefix, rate)| protect::RouteLimit {
                    prefix: prefix.clone(),
                    per_second: rate.per_second,
                    burst: rate.burst.unwrap_or(rate.per_second),
                })
                .collect(),
        }
    }

    /// The outbound HTTP client and its policy (`outbound_*`).
    pub fn outbound(&self) -> Option<Arc<Outbound>> {
        Outbound::new(&self.outbound_config())
            .ok()
            .map(|outbound| Arc::new(outbound.with_trace_headers(Arc::new(super::telemetry::outbound_headers))))
    }

    /// The model endpoint of `functionAI` (`ai_endpoint`).
    pub fn ai(&self) -> Option<Arc<AiEndpoint>> {
        AiEndpoint::new(&self.ai_endpoint).ok().map(Arc::new)
    }

    /// The application database and connectors of the `orm*` commands and
    /// `avapConnector` (nothing connects until a script uses them).
    pub fn databases(&self) -> Result<Databases, DbConfigError> {
        let app = Some(self.app_database_url.as_str()).filter(|u| !u.is_empty());
        Databases::new(app, self.connectors.clone(), self.db_limits())
    }

    /// The `db_*` keys.
    pub fn db_limits(&self) -> DbLimits {
        DbLimits {
            read_only: self.db_read_only,
            max_rows: self.db_max_rows,
            statement_timeout: Duration::from_millis(self.db_statement_timeout_ms),
            max_result_bytes: usize::try_from(self.db_max_result_kb.saturating_mul(1024)).unwrap_or(usize::MAX),
            breaker: BreakerConfig {
                failure_pct: self.db_breaker_failure_pct,
                slow_ms: self.db_breaker_slow_ms,
                min_calls: self.db_breaker_min_calls,
                open_ms: self.db_breaker_open_ms,
                max_concurrent: self.db_max_concurrent_statements,
            },
            slow_statement: (self.db_slow_statement_ms > 0).then(|| Duration::from_millis(self.db_slow_statement_ms)),
        }
    }

    /// Edge mode's settings, when `edge` is on; the mirror lives in `<data_dir>/edge`.
    pub fn edge_config(&self) -> Option<edge::EdgeConfig> {
        self.edge.then(|| edge::EdgeConfig {
            registry_url: self.registry_url.clone(),
            api_key: Some(self.registry_api_key.clone()).filter(|k| !k.is_empty()),
            sync_interval: Duration::from_millis(self.registry_sync_ms),
            dir: self.data_dir.join(edge::EDGE_DIR),
        })
    }

    /// The `outbound_*` keys for the HTTP client.
    pub fn outbound_config(&self) -> OutboundConfig {
        OutboundConfig {
            allow: self.outbound_allow.clone(),
            timeout_ms: self.outbound_timeout_ms,
            max_response_kb: self.outbound_max_response_kb,
            max_redirects: self.outbound_max_redirects,
            breaker: BreakerConfig {
                failure_pct: self.outbound_breaker_failure_pct,
                slow_ms: self.outbound_breaker_slow_ms,
                min_calls: self.outbound_breaker_min_calls,
                open_ms: self.outbound_breaker_open_ms,
                max_concurrent: self.outbound_max_concurrent_per_host,
            },
        }
    }

    /// The database `database_url` names, or why the server cannot use it.
    pub fn database(&self) -> Result<store::Location, ConfigError> {
        match database_kind(&self.database_url) {
            DatabaseKind::Sqlite(path) => Ok(store::Location::Sqlite(path)),
            DatabaseKind::Postgres => Ok(store::Location::Postgres(self.database_url.clone())),
            DatabaseKind::Unsupported(why) => Err(problem(format!(
                "database_url {}: {why}",
                redact_url(&self.database_url)
            ))),
        }
    }
}

/// Whether every address `listen` names is a loopback one (an address
/// that does not resolve is not: binding it then fails with its own message).
pub fn listens_on_loopback_only(listen: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    let addrs: Vec<SocketAddr> = listen.to_socket_addrs().map(Iterator::collect).unwrap_or_default();
    !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
}

fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite:{}", data_dir.join(store::DATABASE_FILE).display())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

enum DatabaseKind {
    Sqlite(PathBuf),
    Postgres,
    Unsupported(String),
}

/// `sqlite:PATH`, `sqlite://PATH` or a bare path; `postgres://` or `postgresql://`.
fn database_kind(url: &str) -> DatabaseKind {
    let Some((scheme, rest)) = url.split_once(':').filter(|(scheme, _)| {
        // A Windows-style `C:\…` or a bare path is not a URL scheme.
        scheme.len() > 1 && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+')
    }) else {
        return sqlite_path(url);
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" => sqlite_path(rest.strip_prefix("//").unwrap_or(rest)),
        "postgres" | "postgresql" => DatabaseKind::Postgres,
        other => DatabaseKind::Unsupported(format!(
            "unsupported database `{other}`; use `sqlite:PATH` or `postgres://USER@HOST:PORT/DATABASE`"
        )),
    }
}

fn sqlite_path(path: &str) -> DatabaseKind {
    if path.is_empty() {
        DatabaseKind::Unsupported("no file named; use `sqlite:PATH`".to_owned())
    } else if path.contains('?') || path == ":memory:" {
        DatabaseKind::Unsupported(
            "URL options and in-memory databases are not supported; name a file, as in `sqlite:/var/lib/avap/avap.sqlite`"
                .to_owned(),
        )
    } else {
        DatabaseKind::Sqlite(PathBuf::from(path))
    }
}

impl Resolved {
    fn from_layers(
        flags: &Layer,
        env: &Layer,
        file: &Layer,
        file_path: Option<PathBuf>,
        default_data_dir: impl FnOnce() -> Result<PathBuf, ConfigError>,
    ) -> Result<Resolved, ConfigError> {
        let layers = figment::Figment::new()
            .merge(Provide(Source::File, &file.0))
            .merge(Provide(Source::Env, &env.0))
            .merge(Provide(Source::Flag, &flags.0));
        // The defaults of some keys (the databases) depend on `data_dir`.
        let data_dir = match layers.extract_inner::<PathBuf>("data_dir") {
            Ok(dir) => dir,
            Err(_) => default_data_dir()?,
        };
        let merged = figment::Figment::from(Provide(
            Source::Default,
            &toml::Table::try_from(Settings::defaults(data_dir))
                .map_err(|e| problem(format!("cannot build the defaults: {e}")))?,
        ))
        .merge(layers);
        // Each layer was checked alone, so only a bug fails here.
        let settings = merged
            .extract::<Settings>()
            .map_err(|e| problem(format!("cannot merge the configuration: {e}")))?;
        Ok(Resolved {
            settings,
            merged,
            file: file_path,
            file_lines: BTreeMap::new(),
        })
    }

    /// Where `key`'s value came from, in words.
    pub fn origin(&self, key: &str) -> String {
        // `connectors.X` comes from where the whole `[connectors]` table did.
        let metadata = self.merged.find_metadata(key).or_else(|| {
            key.split_once('.')
                .and_then(|(section, _)| self.merged.find_metadata(section))
        });
        match metadata.map_or(Source::Default, |m| Source::named(&m.name)) {
            Source::Default => "default".to_owned(),
            Source::File => {
                let path = self
                    .file
                    .as_ref()
                    .map(|p| format!(" {}", p.display()))
                    .unwrap_or_default();
                let line = self
                    .file_lines
                    .get(key)
                    .map(|n| format!(" line {n}"))
                    .unwrap_or_default();
                format!("file{path}{line}")
            }
            Source::Env => format!("environment variable {}", env_name(&key.split('.').collect::<Vec<_>>())),
            Source::Flag => format!("flag --{}", flag_name(key)),
        }
    }

    /// `key = value (from …): what is wrong`.
    fn invalid(&self, key: &str, value: impl fmt::Display, why: &str) -> ConfigError {
        problem(format!("{key} = {value} (from {}): {why}", self.origin(key)))
    }

    /// Values every layer could set but the server cannot use.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        let in_range = |key: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(self.invalid(key, value, &format!("must be between {min} and {max}")))
            }
        };
        if !valid_listen(&s.listen) {
            return Err(self.invalid(
                "listen",
                format_args!("{:?}", s.listen),
                "not an ADDRESS:PORT, such as 127.0.0.1:8080 or [::]:8080",
            ));
        }
        if let DatabaseKind::Unsupported(why) = database_kind(&s.database_url) {
            return Err(self.invalid("database_url", format_args!("{:?}", redact_url(&s.database_url)), &why));
        }
        if s.allow_anonymous && s.require_api_key {
            return Err(problem(format!(
                "allow_anonymous (from {}) and require_api_key (from {}) are both on; turn one off",
                self.origin("allow_anonymous"),
                self.origin("require_api_key")
            )));
        }
        in_range("rate_burst", u64::from(s.rate_burst), 1, u64::from(u32::MAX))?;
        in_range("request_signing_window_s", s.request_signing_window_s, 1, 3600)?;
        in_range("request_timeout_ms", s.request_timeout_ms, 0, DAY_MS)?;
        // No zero: a connection bound cannot be turned off. 100 ms at least,
        // or no client could send a head over a real network.
        in_range("header_read_timeout_ms", s.header_read_timeout_ms, 100, DAY_MS)?;
        in_range("idle_timeout_ms", s.idle_timeout_ms, 100, DAY_MS)?;
        in_range("max_connections", to_u64(s.max_connections), 1, 1 << 20)?;
        in_range("max_connections_per_ip", to_u64(s.max_connections_per_ip), 1, 1 << 20)?;
        // Two years, the longest value browsers' preload lists ask for.
        in_range("hsts_max_age", s.hsts_max_age, 0, 2 * 365 * 24 * 60 * 60)?;
        in_range("queue_wait_ms", s.queue_wait_ms, 0, DAY_MS)?;
        for origin in &s.cors_origins {
            let bare = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            if bare.is_none_or(|host| host.is_empty() || host.contains('/')) {
                return Err(self.invalid(
                    "cors_origins",
                    format_args!("{origin:?}"),
                    "an origin is `http(s)://HOST[:PORT]`, without a path or a trailing slash",
                ));
            }
        }
        in_range("max_body_bytes", to_u64(s.max_body_bytes), 1, 1 << 30)?;
        in_range("max_script_bytes", to_u64(s.max_script_bytes), 1, 1 << 30)?;
        in_range("max_concurrent_runs", to_u64(s.max_concurrent_runs), 1, 1024)?;
        in_range("max_concurrent_compiles", to_u64(s.max_concurrent_compiles), 1, 256)?;
        in_range("max_async_blocks", u64::from(s.max_async_blocks), 1, 1024)?;
        in_range("async_block_slots", u64::from(s.async_block_slots), 1, 4096)?;
        in_range("warm_instances", u64::from(s.warm_instances), 0, 4096)?;
        in_range("cache_entries", to_u64(s.cache_entries), 1, 1 << 20)?;
        in_range("cache_ttl_s", s.cache_ttl_s, 0, DAY_MS / 1000 * 30)?;
        in_range("prewarm", to_u64(s.prewarm), 0, to_u64(s.cache_entries))?;
        if !s.redis_url.is_empty()
            && let Err(why) = RedisUrl::parse(&s.redis_url)
        {
            return Err(self.invalid("redis_url", format_args!("{:?}", redact_url(&s.redis_url)), &why));
        }
        if !s.redis_ca_file.is_empty() {
            let shown = format_args!("{:?}", s.redis_ca_file);
            if !s.redis_url.starts_with("rediss://") {
                return Err(self.invalid(
                    "redis_ca_file",
                    shown,
                    "only a `rediss://` (TLS) redis_url uses it; remove it or use rediss://",
                ));
            }
            if let Err(why) = read_pem(&s.redis_ca_file) {
                return Err(self.invalid("redis_ca_file", shown, &why));
            }
        }
        let prefix_ok = (1..=64).contains(&s.redis_prefix.len())
            && s.redis_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !prefix_ok {
            return Err(self.invalid(
                "redis_prefix",
                format_args!("{:?}", s.redis_prefix),
                "1 to 64 letters, digits, `-`, `_`, `.` or `:`, such as `avap` or `avap-staging`",
            ));
        }
        for name in &s.deny_capabilities {
            if CapabilityPolicy::class_by_name(name).is_none() {
                let classes: Vec<&str> = avap_hostfns::Capability::ALL.iter().map(|c| c.as_str()).collect();
                return Err(self.invalid(
                    "deny_capabilities",
                    format_args!("{name:?}"),
                    &format!("not a capability class; the classes are {}", classes.join(", ")),
                ));
            }
        }
        if let Err(e) = OutboundPolicy::new(&s.outbound_allow) {
            return Err(self.invalid("outbound_allow", format_args!("{:?}", e.entry), &e.to_string()));
        }
        in_range("outbound_timeout_ms", s.outbound_timeout_ms, 1, DAY_MS)?;
        in_range("outbound_max_response_kb", s.outbound_max_response_kb, 1, 1 << 20)?;
        in_range("outbound_max_redirects", u64::from(s.outbound_max_redirects), 0, 20)?;
        in_range("audit_retention_days", u64::from(s.audit_retention_days), 0, 36_500)?;
        self.validate_jobs()?;
        in_range(
            "outbound_breaker_failure_pct",
            u64::from(s.outbound_breaker_failure_pct),
            0,
            100,
        )?;
        in_range("outbound_breaker_slow_ms", s.outbound_breaker_slow_ms, 0, DAY_MS)?;
        in_range(
            "outbound_breaker_min_calls",
            u64::from(s.outbound_breaker_min_calls),
            1,
            to_u64(WINDOW),
        )?;
        in_range("outbound_breaker_open_ms", s.outbound_breaker_open_ms, 1, DAY_MS)?;
        in_range(
            "outbound_max_concurrent_per_host",
            to_u64(s.outbound_max_concurrent_per_host),
            0,
            100_000,
        )?;
        if !s.ai_endpoint.is_empty()
            && let Err(why) = AiEndpoint::new(&s.ai_endpoint)
        {
            return Err(self.invalid("ai_endpoint", format_args!("{:?}", redact_url(&s.ai_endpoint)), &why));
        }
        in_range("db_max_rows", to_u64(s.db_max_rows), 1, 1 << 24)?;
        in_range("db_statement_timeout_ms", s.db_statement_timeout_ms, 1, DAY_MS)?;
        in_range("db_max_result_kb", s.db_max_result_kb, 1, 1 << 21)?;
        in_range("db_breaker_failure_pct", u64::from(s.db_breaker_failure_pct), 0, 100)?;
        in_range("db_breaker_slow_ms", s.db_breaker_slow_ms, 0, DAY_MS)?;
        in_range(
            "db_breaker_min_calls",
            u64::from(s.db_breaker_min_calls),
            1,
            to_u64(WINDOW),
        )?;
        in_range("db_breaker_open_ms", s.db_breaker_open_ms, 1, DAY_MS)?;
        in_range("db_slow_statement_ms", s.db_slow_statement_ms, 0, DAY_MS)?;
        in_range(
            "db_max_concurrent_statements",
            to_u64(s.db_max_concurrent_statements),
            0,
            100_000,
        )?;
        self.validate_edge()?;
        if let Err(e) = s.databases() {
            let key = if e.what == "application database" {
                "app_database_url"
            } else {
                "connectors"
            };
            return Err(self.invalid(key, format_args!("{:?}", e.url), &e.to_string()));
        }
        self.validate_observability()?;
        for (prefix, rate) in &s.route_rate_limits {
            let key = format!("route_rate_limits.\"{prefix}\"");
            if !prefix.starts_with("/api/v1/") {
                return Err(self.invalid(
                    &key,
                    format_args!("{{ per_second = {} }}", rate.per_second),
                    "the key is a path prefix under /api/v1/, such as \"/api/v1/execute\" or \"/api/v1/run/report\"",
                ));
            }
            in_range(&format!("{key}.per_second"), u64::from(rate.per_second), 1, 1_000_000)?;
            in_range(
                &format!("{key}.burst"),
                u64::from(rate.burst.unwrap_or(rate.per_second)),
                1,
                1_000_000,
            )?;
        }
        let l = s.limits;
        in_range("limits.fuel", l.fuel, 1, u64::MAX >> 1)?;
        in_range("limits.time_ms", l.time_ms, 1, DAY_MS)?;
        in_range("limits.memory_mb", l.memory_mb, 1, 1 << 20)?;
        in_range("limits.stack_kb", l.stack_kb, 1, 1 << 20)?;
        in_range("limits.output_kb", l.output_kb, 1, 1 << 20)?;
        Ok(())
    }

    /// The `jobs_*` keys.
    fn validate_jobs(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        if !s.jobs_url.is_empty() {
            let parsed = url::Url::parse(&s.jobs_url).ok();
            let fine = parsed
                .as_ref()
                .is_some_and(|u| matches!(u.scheme(), "nats" | "tls") && u.host_str().is_some_and(|h| !h.is_empty()));
            if !fine {
                return Err(self.invalid(
                    "jobs_url",
                    format_args!("{:?}", redact_url(&s.jobs_url)),
                    "a NATS server is `nats://HOST:PORT` (or `tls://HOST:PORT`), such as `nats://127.0.0.1:4222`; \
                     leave it empty for the queue in the server database",
                ));
            }
        }
        let in_range = |key: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(self.invalid(key, value, &format!("must be between {min} and {max}")))
            }
        };
        in_range("jobs_workers", to_u64(s.jobs_workers), 0, 1024)?;
        in_range("jobs_max_time_ms", s.jobs_max_time_ms, 1, DAY_MS)?;
        in_range("jobs_lease_ms", s.jobs_lease_ms, 300, DAY_MS)?;
        in_range("jobs_retention_s", s.jobs_retention_s, 1, 36_500 * 24 * 3600)?;
        in_range("jobs_max_queued", s.jobs_max_queued, 1, 100_000_000)?;
        let prefix_ok = (1..=32).contains(&s.jobs_prefix.len())
            && s.jobs_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !prefix_ok {
            return Err(self.invalid(
                "jobs_prefix",
                format_args!("{:?}", s.jobs_prefix),
                "1 to 32 letters, digits, `-` or `_` (it names a NATS stream), such as `avap`",
            ));
        }
        Ok(())
    }

    /// `edge`, `registry_url`, `registry_api_key`, `registry_sync_ms`.
    fn validate_edge(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        if s.edge && s.registry_url.is_empty() {
            return Err(problem(format!(
                "edge is on (from {}) but no registry_url is set: pass --registry URL with the registry \
                 node's address (as in `--registry https://registry.example:8443`), or set registry_url in the config \
                 file or AVAP_REGISTRY_URL",
                self.origin("edge")
            )));
        }
        if !s.registry_url.is_empty()
            && let Err(why) = edge::parse_registry_url(&s.registry_url)
                .and_then(|url| edge::check_transport(&url, !s.registry_api_key.is_empty()))
        {
            return Err(self.invalid("registry_url", format_args!("{:?}", redact_url(&s.registry_url)), &why));
        }
        let key = &s.registry_api_key;
        if !key.is_empty() && !key.bytes().all(|b| b.is_ascii_graphic()) {
            // Never echo the value: it is a secret.
            return Err(problem(format!(
                "registry_api_key (from {}) is not an API key (it has spaces or non-ASCII characters); \
                 create one on the registry node with `avap apikey create --scope registry`",
                self.origin("registry_api_key")
            )));
        }
        if !(50..=DAY_MS).contains(&s.registry_sync_ms) {
            return Err(self.invalid(
                "registry_sync_ms",
                s.registry_sync_ms,
                &format!("must be between 50 and {DAY_MS}"),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, each key with its origin; URL
    /// passwords and credential query values, connector tokens and the
    /// registry API key hidden.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let mut table = toml::Table::try_from(&self.settings)
            .map_err(|e| problem(format!("cannot show the configuration: {e}")))?;
        for key in [
            "database_url",
            "app_database_url",
            "otlp_endpoint",
            "redis_url",
            "ai_endpoint",
            "registry_url",
            "jobs_url",
        ] {
            if let Some(toml::Value::String(url)) = table.get_mut(key) {
                *url = redact_url(url);
            }
        }
        if let Some(toml::Value::String(key)) = table.get_mut("registry_api_key") {
            *key = redact_api_key(key);
        }
        // Connector tokens are credentials: show their first characters only.
        if let Some(toml::Value::Table(connectors)) = table.get_mut("connectors") {
            let hidden: toml::Table = std::mem::take(connectors)
                .into_iter()
                .enumerate()
                .map(|(i, (token, url))| {
                    // A bare TOML key: letters and digits only, numbered so
                    // tokens with the same start stay apart.
                    let shown: String = token.chars().filter(char::is_ascii_alphanumeric).take(4).collect();
                    let url = url.as_str().map_or_else(|| url.to_string(), redact_url);
                    (format!("{shown}_redacted_{}", i + 1), toml::Value::String(url))
                })
                .collect();
            *connectors = hidden;
        }
        let mut out = String::from(
            "# The effective configuration of `avap serve`; each comment says where the value came from.\n",
        );
        let mut sections = Vec::new();
        for (key, value) in &table {
            match value {
                toml::Value::Table(section) => sections.push((key, section)),
                value => self.write_key(&mut out, key, key, value),
            }
        }
        for (name, section) in sections {
            let _ = write!(out, "\n[{name}]\n");
            for (key, value) in section {
                self.write_key(&mut out, &format!("{name}.{key}"), key, value);
            }
        }
        Ok(out)
    }

    fn write_key(&self, out: &mut String, path: &str, key: &str, value: &toml::Value) {
        let _ = writeln!(out, "{key} = {value}  # {}", self.origin(path));
    }
}

/// The keys of the log output ([`logs`](super::logs)) and the trace export
/// ([`telemetry`](super::telemetry)).
impl Settings {
    /// The `log_*` keys; call after [`Resolved::validate`].
    pub fn log_options(&self) -> super::logs::LogOptions {
        super::logs::LogOptions {
            format: self.log_format,
            level: self.log_level,
            file: (!self.log_file.is_empty()).then(|| PathBuf::from(&self.log_file)),
            max_bytes: mebibytes(self.log_max_mb),
            keep: self.log_keep,
        }
    }

    /// The `otlp_*` keys; call after [`Resolved::validate`].
    pub fn telemetry_config(&self) -> super::telemetry::TelemetryConfig {
        super::telemetry::TelemetryConfig {
            endpoint: self.otlp_endpoint().ok().flatten(),
            service_name: self.otlp_service_name.clone(),
        }
    }

    /// `otlp_endpoint` with its protocol and CA; `None` when it is empty.
    fn otlp_endpoint(&self) -> Result<Option<OtlpEndpoint>, (&'static str, String)> {
        if self.otlp_endpoint.is_empty() {
            return Ok(None);
        }
        let ca_pem = if self.otlp_ca_file.is_empty() {
            None
        } else {
            Some(read_pem(&self.otlp_ca_file).map_err(|why| ("otlp_ca_file", why))?)
        };
        OtlpEndpoint::parse(&self.otlp_endpoint, self.otlp_protocol, ca_pem)
            .map(Some)
            .map_err(|why| ("otlp_endpoint", why))
    }
}

/// A PEM CA bundle file's bytes; the error says why it is not one.
fn read_pem(path: &str) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => Ok(pem),
        Ok(_) => Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned()),
        Err(e) => Err(format!("cannot read it: {e}")),
    }
}

/// The largest `log_max_mb`: 1 TiB.
const MAX_LOG_MB: f64 = 1_048_576.0;

/// `mb` MiB in bytes, at least 1.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // validated: 0 < mb <= MAX_LOG_MB
fn mebibytes(mb: f64) -> u64 {
    ((mb * 1_048_576.0).round() as u64).max(1)
}

impl Resolved {
    /// The `log_*` and `otlp_*` keys.
    fn validate_observability(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        if !(s.log_max_mb.is_finite() && s.log_max_mb > 0.0 && s.log_max_mb <= MAX_LOG_MB) {
            return Err(self.invalid(
                "log_max_mb",
                s.log_max_mb,
                &format!("must be more than 0 and at most {MAX_LOG_MB} (MiB); decimals are fine, as in 0.5"),
            ));
        }
        if s.log_keep > 1000 {
            return Err(self.invalid("log_keep", s.log_keep, "must be between 0 and 1000"));
        }
        if !s.otlp_ca_file.is_empty() && s.otlp_endpoint.is_empty() {
            return Err(self.invalid(
                "otlp_ca_file",
                format_args!("{:?}", s.otlp_ca_file),
                "only an https:// otlp_endpoint uses it; remove it or set otlp_endpoint",
            ));
        }
        if let Err((key, why)) = s.otlp_endpoint() {
            let shown = match key {
                "otlp_ca_file" => format!("{:?}", s.otlp_ca_file),
                _ => format!("{:?}", redact_url(&s.otlp_endpoint)),
            };
            return Err(self.invalid(key, shown, &why));
        }
        let name = &s.otlp_service_name;
        if name.trim().is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(self.invalid(
                "otlp_service_name",
                format_args!("{name:?}"),
                "must be 1 to 255 printable characters",
            ));
        }
        Ok(())
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The flag that sets `key` (most are the key with dashes).
fn flag_name(key: &str) -> String {
    match key {
        "cors_origins" => "cors-origin".to_owned(),
        "registry_url" => "registry".to_owned(),
        other => other.replace('_', "-"),
    }
}

/// An API key as `--print-config` shows it: the id (not secret), never the secret.
fn redact_api_key(key: &str) -> String {
    if key.is_empty() {
        return String::new();
    }
    match key.strip_prefix("avap_").and_then(|rest| rest.split_once('_')) {
        Some((id, _)) if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) => format!("avap_{id}_***"),
        _ => "***".to_owned(),
    }
}

/// `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`.
fn valid_listen(listen: &str) -> bool {
    if listen.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = listen.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok()
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Layer {
        parse_file(Path::new("avap.toml"), text).expect("a valid file")
    }

    fn env(vars: &[(&str, &str)]) -> Result<Layer, ConfigError> {
        env_layer(vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))))
    }

    fn resolved(flags: &Layer, env: &Layer, file: &Layer) -> Resolved {
        let r = Resolved::from_layers(flags, env, file, Some(PathBuf::from("avap.toml")), || {
            Ok(PathBuf::from("/data"))
        })
        .expect("resolves");
        r.validate().expect("valid");
        r
    }

    #[test]
    fn the_playground_is_on_by_default_only_on_a_loopback_listener() {
        let none = Layer::default();
        let playground = |file_text: &str| {
            let r = resolved(&none, &none, &file(file_text));
            (r.settings.playground, r.settings.server_config().playground)
        };
        assert_eq!(playground(""), (PlaygroundMode::Auto, true), "127.0.0.1:8080");
        assert_eq!(playground("listen = \"[::1]:0\"\n"), (PlaygroundMode::Auto, true));
        assert_eq!(playground("listen = \"0.0.0.0:8080\"\n"), (PlaygroundMode::Auto, false));
        assert_eq!(
            playground("listen = \"0.0.0.0:8080\"\nplayground = \"on\"\n"),
            (PlaygroundMode::On, true)
        );
        assert_eq!(playground("playground = \"off\"\n"), (PlaygroundMode::Off, false));
        let from_env = resolved(&none, &env(&[("AVAP_PLAYGROUND", "off")]).unwrap(), &none);
        assert!(!from_env.settings.server_config().playground);
        assert_eq!(from_env.origin("playground"), "environment variable AVAP_PLAYGROUND");
        let wrong = parse_file(Path::new("avap.toml"), "playground = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains("unknown variant `yes`") && wrong.contains("`auto`"),
            "{wrong}"
        );
    }

    fn invalid(file_text: &str) -> String {
        let r = Resolved::from_layers(&Layer::default(), &Layer::default(), &file(file_text), None, || {
            Ok(PathBuf::from("/data"))
        })
        .expect("resolves");
        r.validate().unwrap_err().to_string()
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file = file("rate_limit = 1\nrate_burst = 2\nqueue_wait_ms = 3\n[limits]\nfuel = 4\n");
        let env = env(&[("AVAP_RATE_BURST", "20"), ("AVAP_QUEUE_WAIT_MS", "30")]).unwrap();
        let flags = Layer(toml::from_str("queue_wait_ms = 300").unwrap());
        let r = resolved(&flags, &env, &file);
        let s = &r.settings;
        assert_eq!(
            (s.rate_limit, s.rate_burst, s.queue_wait_ms, s.limits.fuel),
            (1, 20, 300, 4)
        );
        assert_eq!(s.limits.time_ms, ServerConfig::LIMITS.time_ms);
        assert_eq!(r.origin("rate_limit"), "file avap.toml");
        assert_eq!(r.origin("rate_burst"), "environment variable AVAP_RATE_BURST");
        assert_eq!(r.origin("queue_wait_ms"), "flag --queue-wait-ms");
        assert_eq!(r.origin("limits.time_ms"), "default");
        assert_eq!(s.data_dir, PathBuf::from("/data"));
        assert_eq!(s.database_url, "sqlite:/data/avap.sqlite");
    }

    #[test]
    fn environment_variables_follow_the_key_names() {
        let layer = env(&[
            ("AVAP_LIMITS_FUEL", "77"),
            ("AVAP_CORS_ORIGINS", "https://a.example, https://b.example"),
            ("AVAP_REQUIRE_API_KEY", "yes"),
            ("AVAP_LOG_FORMAT", "json"),
            ("AVAP_CONFORMANCE_DIR", "/not/ours"),
            ("AVAP_CACHE_DIR", "/home/u/.cache/avap-modules"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        let r = resolved(&Layer::default(), &layer, &Layer::default());
        assert_eq!(r.settings.limits.fuel, 77);
        assert_eq!(r.settings.cors_origins, ["https://a.example", "https://b.example"]);
        assert!(r.settings.require_api_key);
        assert_eq!(r.settings.log_format, LogFormat::Json);
        assert_eq!(r.origin("limits.fuel"), "environment variable AVAP_LIMITS_FUEL");
    }

    #[test]
    fn bad_environment_variables_are_named() {
        let err = |vars: &[(&str, &str)]| env(vars).unwrap_err().to_string();
        let unknown = err(&[("AVAP_KAFKA_URL", "kafka://x")]);
        assert!(
            unknown.starts_with("unknown environment variable AVAP_KAFKA_URL;"),
            "{unknown}"
        );
        assert!(unknown.contains("AVAP_LIMITS_FUEL"), "{unknown}");
        assert_eq!(
            err(&[("AVAP_RATE_LIMIT", "fast")]),
            "environment variable AVAP_RATE_LIMIT: `fast` is not a whole number"
        );
        let negative = err(&[("AVAP_MAX_BODY_BYTES", "-1")]);
        assert!(
            negative.starts_with("environment variable AVAP_MAX_BODY_BYTES: "),
            "{negative}"
        );
        let variant = err(&[("AVAP_LOG_LEVEL", "loud")]);
        assert!(
            variant.contains("AVAP_LOG_LEVEL") && variant.contains("`warn`"),
            "{variant}"
        );
        assert!(err(&[("AVAP_ALLOW_ANONYMOUS", "maybe")]).contains("not true or false"));
    }

    #[test]
    fn file_errors_name_the_file_and_line() {
        let err = |text: &str| parse_file(Path::new("/etc/avap.toml"), text).unwrap_err().to_string();
        let unknown = err("listen = \"127.0.0.1:1\"\nkafka_url = \"kafka://x\"\n");
        assert!(
            unknown.starts_with("/etc/avap.toml line 2: unknown field `kafka_url`"),
            "{unknown}"
        );
        let nested = err("[limits]\nfuel = 1\nfeul = 2\n");
        assert!(
            nested.starts_with("/etc/avap.toml line 3: unknown field `feul`"),
            "{nested}"
        );
        let wrong_type = err("rate_limit = \"many\"\n");
        assert!(wrong_type.starts_with("/etc/avap.toml line 1: "), "{wrong_type}");
        assert!(wrong_type.contains("expected u32"), "{wrong_type}");
        let syntax = err("\n\nlisten = \n");
        assert!(syntax.starts_with("/etc/avap.toml line 3: "), "{syntax}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_origin() {
        assert_eq!(
            invalid("max_concurrent_runs = 0\n"),
            "max_concurrent_runs = 0 (from file): must be between 1 and 1024"
        );
        assert!(invalid("[limits]\nmemory_mb = 0\n").starts_with("limits.memory_mb = 0"));
        assert!(invalid("listen = \"8080\"\n").contains("not an ADDRESS:PORT"));
        assert!(invalid("listen = \"bad host:80\"\n").contains("not an ADDRESS:PORT"));
        assert!(invalid("deny_capabilities = [\"network\"]\n").contains("the classes are pure, "));
        assert!(invalid("cors_origins = [\"https://a.example/\"]\n").contains("trailing slash"));
        assert!(invalid("database_url = \"mysql://u:pw@h/db\"\n").contains("\"mysql://u:***@h/db\""));
        let both = invalid("allow_anonymous = true\nrequire_api_key = true\n");
        assert!(both.contains("are both on"), "{both}");
    }

    #[test]
    fn file_values_know_their_lines() {
        let text = "# comment\nmax_concurrent_runs = 0\n\n[limits]\nfuel = 5\n";
        let mut r = Resolved::from_layers(
            &Layer::default(),
            &Layer::default(),
            &file(text),
            Some(PathBuf::from("/etc/avap.toml")),
            || Ok(PathBuf::from("/data")),
        )
        .unwrap();
        r.file_lines = key_lines(text);
        assert_eq!(r.origin("limits.fuel"), "file /etc/avap.toml line 5");
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "max_concurrent_runs = 0 (from file /etc/avap.toml line 2): must be between 1 and 1024"
        );
    }

    #[test]
    fn flags_serialize_to_their_keys() {
        let args = ServeArgs {
            listen: Some("0.0.0.0:1".into()),
            cors_origin: vec!["https://a.example".into()],
            registry: Some("https://registry.example".into()),
            require_api_key: true,
            rate_limit: Some(3),
            ..ServeArgs::default()
        };
        let flags = flag_layer(&args);
        let mut keys: Vec<&str> = flags.0.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "allow_anonymous",
                "cors_origins",
                "listen",
                "rate_limit",
                "registry_url",
                "require_api_key"
            ]
        );
        let r = resolved(&flags, &Layer::default(), &Layer::default());
        assert!(!r.settings.allow_anonymous && r.settings.require_api_key);
        assert_eq!(r.origin("registry_url"), "flag --registry");
        assert_eq!(r.origin("cors_origins"), "flag --cors-origin");
        assert_eq!(r.origin("rate_burst"), "default");
        assert!(flag_layer(&ServeArgs::default()).0.is_empty(), "no flag, no key");
    }

    #[test]
    fn an_access_flag_settles_both_access_keys() {
        let file = file("allow_anonymous = true\n");
        let flags = Layer(toml::from_str("require_api_key = true\nallow_anonymous = false").unwrap());
        let r = resolved(&flags, &Layer::default(), &file);
        assert!(r.settings.require_api_key && !r.settings.allow_anonymous);
        assert!(!r.settings.server_config().allow_anonymous);
    }

    #[test]
    fn the_settings_become_the_server_config() {
        let file = file(
            "listen = \"[::1]:0\"\ndeny_capabilities = [\"net\"]\nmax_concurrent_runs = 3\n\
             [limits]\nmemory_mb = 8\nstack_kb = 64\noutput_kb = 2\n",
        );
        let config = resolved(&Layer::default(), &Layer::default(), &file)
            .settings
            .server_config();
        assert_eq!(config.limits.memory_bytes, 8 << 20);
        assert_eq!(config.limits.stack_bytes, 64 << 10);
        assert_eq!(config.limits.output_bytes, 2 << 10);
        assert_eq!(config.max_concurrent_runs, 3);
        assert!(!config.policy.allows(avap_hostfns::Capability::Net));
        assert!(config.policy.allows(avap_hostfns::Capability::Clock));
        assert!(config.allow_anonymous, "loopback");
    }

    #[test]
    fn outbound_keys_are_layered_validated_and_built() {
        let file = file("outbound_allow = [\"127.0.0.1:8081\", \"10.0.0.0/8\"]\noutbound_timeout_ms = 500\n");
        let env = env(&[
            ("AVAP_OUTBOUND_MAX_REDIRECTS", "2"),
            ("AVAP_AI_ENDPOINT", "http://127.0.0.1:9999/v1/ask"),
        ])
        .unwrap();
        let r = resolved(&Layer::default(), &env, &file);
        let s = &r.settings;
        assert_eq!(s.outbound_allow, ["127.0.0.1:8081", "10.0.0.0/8"]);
        assert_eq!((s.outbound_timeout_ms, s.outbound_max_redirects), (500, 2));
        assert_eq!(s.outbound_max_response_kb, OutboundConfig::default().max_response_kb);
        assert_eq!(r.origin("ai_endpoint"), "environment variable AVAP_AI_ENDPOINT");
        let config = s.server_config();
        let http = config.effects.http.expect("outbound client");
        assert_eq!(http.policy().allowlist(), ["127.0.0.1:8081", "10.0.0.0/8"]);
        assert_eq!(
            config.effects.ai.expect("ai endpoint").url.as_str(),
            "http://127.0.0.1:9999/v1/ask"
        );
        let printed = r.to_toml().unwrap();
        assert!(
            printed.contains("outbound_timeout_ms = 500  # file avap.toml"),
            "{printed}"
        );
        let bad = invalid("outbound_allow = [\"10.0.0.0/40\"]\n");
        assert!(bad.contains("outbound_allow") && bad.contains("CIDR block"), "{bad}");
        let bad = invalid("ai_endpoint = \"ftp://x\"\n");
        assert!(bad.starts_with("ai_endpoint") && bad.contains("http"), "{bad}");
        let bad = invalid("outbound_max_redirects = 50\n");
        assert!(bad.contains("between 0 and 20"), "{bad}");
        let bad = invalid("outbound_breaker_min_calls = 30\n");
        assert!(bad.contains("between 1 and 20"), "{bad}");
        assert!(invalid("outbound_breaker_failure_pct = 101\n").contains("between 0 and 100"));
        assert!(http.breakers().is_some(), "on by default");
        let off = self::file("outbound_breaker_failure_pct = 0\noutbound_max_concurrent_per_host = 0\n");
        let off = resolved(&Layer::default(), &Layer::default(), &off)
            .settings
            .server_config();
        assert!(off.effects.http.expect("outbound client").breakers().is_none());
        let on = resolved(&Layer::default(), &Layer::default(), &Layer::default());
        let db = on.settings.server_config().effects.db.expect("databases");
        assert!(db.breakers().is_some(), "database breakers on by default");
        let off = self::file("db_breaker_failure_pct = 0\ndb_max_concurrent_statements = 0\n");
        let off = resolved(&Layer::default(), &Layer::default(), &off)
            .settings
            .server_config();
        assert!(off.effects.db.expect("databases").breakers().is_none());
        assert!(invalid("db_breaker_min_calls = 0\n").contains("between 1 and 20"));
        let none = resolved(&Layer::default(), &Layer::default(), &Layer::default());
        assert!(none.settings.server_config().effects.ai.is_none());
    }

    #[test]
    fn database_urls() {
        let with = |url: &str| {
            let mut s = Settings::defaults(PathBuf::from("/data"));
            s.database_url = url.to_owned();
            s.database().map_err(|e| e.to_string())
        };
        let sqlite = |path: &str| Ok(store::Location::Sqlite(PathBuf::from(path)));
        assert_eq!(with("sqlite:/var/a.db"), sqlite("/var/a.db"));
        assert_eq!(with("sqlite:///var/a.db"), sqlite("/var/a.db"));
        assert_eq!(with("sqlite://rel.db"), sqlite("rel.db"));
        assert_eq!(with("/plain/path.sqlite"), sqlite("/plain/path.sqlite"));
        let pg = "postgres://avap:hunter2@db:5432/avap";
        assert_eq!(with(pg), Ok(store::Location::Postgres(pg.to_owned())));
        assert_eq!(
            store::Location::Postgres(pg.to_owned()).to_string(),
            "postgres://avap:***@db:5432/avap"
        );
        let mysql = with("mysql://avap:hunter2@db:3306/avap").unwrap_err();
        assert!(mysql.contains("unsupported database `mysql`"), "{mysql}");
        assert!(
            mysql.contains("mysql://avap:***@db:3306/avap") && !mysql.contains("hunter2"),
            "{mysql}"
        );
        assert!(with("sqlite::memory:").is_err());
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite:/a:b@c"), "sqlite:/a:b@c");
    }

    #[test]
    fn printed_config_names_origins_and_hides_passwords() {
        let file = file("database_url = \"postgres://avap:hunter2@db/avap\"\n[limits]\nfuel = 5\n");
        let printed = resolved(&Layer::default(), &Layer::default(), &file).to_toml().unwrap();
        assert!(
            printed.contains("database_url = \"postgres://avap:***@db/avap\"  # file avap.toml\n"),
            "{printed}"
        );
        assert!(!printed.contains("hunter2"));
        assert!(
            printed.contains("\n[limits]\nfuel = 5  # file avap.toml\n"),
            "{printed}"
        );
        assert!(
            printed.contains("listen = \"127.0.0.1:8080\"  # default\n"),
            "{printed}"
        );
        // What is printed reads back as a config file with the same values.
        let again = parse_file(Path::new("printed.toml"), &printed.replace("***", "pw")).unwrap();
        assert_eq!(again.0["limits"]["fuel"].as_integer(), Some(5));
    }

    #[test]
    fn log_file_and_trace_keys() {
        let file = file("log_file = \"/var/log/avap.log\"\nlog_keep = 2\notlp_endpoint = \"http://127.0.0.1:4318\"\n");
        let vars = env(&[("AVAP_LOG_MAX_MB", "0.5"), ("AVAP_OTLP_SERVICE_NAME", "edge-1")]).unwrap();
        let r = resolved(&Layer::default(), &vars, &file);
        let options = r.settings.log_options();
        assert_eq!(options.file, Some(PathBuf::from("/var/log/avap.log")));
        assert_eq!((options.max_bytes, options.keep), (512 << 10, 2));
        let traces = r.settings.telemetry_config();
        assert_eq!(traces.service_name, "edge-1");
        assert_eq!(
            traces.endpoint.map(|e| e.to_string()).as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        let printed = r.to_toml().unwrap();
        assert!(
            printed.contains("log_max_mb = 0.5  # environment variable AVAP_LOG_MAX_MB"),
            "{printed}"
        );
        let defaults = resolved(&Layer::default(), &Layer::default(), &Layer::default()).settings;
        assert_eq!(defaults.log_options().file, None);
        assert_eq!(defaults.log_options().max_bytes, 100 << 20);
        assert!(defaults.telemetry_config().endpoint.is_none());
        assert!(invalid("log_max_mb = 0\n").starts_with("log_max_mb = 0 (from file): must be more than 0"));
        assert!(invalid("log_keep = 5000\n").contains("between 0 and 1000"));
        let grpc_file = self::file("otlp_endpoint = \"https://collector:4317\"\notlp_protocol = \"grpc\"\n");
        let grpc = resolved(&Layer::default(), &Layer::default(), &grpc_file)
            .settings
            .telemetry_config();
        assert_eq!(
            grpc.endpoint.map(|e| e.to_string()).as_deref(),
            Some("https://collector:4317 (gRPC)")
        );
        let path = invalid("otlp_endpoint = \"http://collector:4317/x\"\notlp_protocol = \"grpc\"\n");
        assert!(
            path.starts_with("otlp_endpoint = \"http://collector:4317/x\" (from file)"),
            "{path}"
        );
        let no_ca = invalid("otlp_endpoint = \"https://collector:4318\"\notlp_ca_file = \"/nonexistent.pem\"\n");
        assert!(
            no_ca.starts_with("otlp_ca_file = \"/nonexistent.pem\" (from file): cannot read it"),
            "{no_ca}"
        );
        assert!(invalid("otlp_ca_file = \"/x.pem\"\n").contains("set otlp_endpoint"));
        assert!(invalid("otlp_service_name = \"\"\n").contains("printable"));
        let not_a_number = env(&[("AVAP_LOG_MAX_MB", "big")]).unwrap_err().to_string();
        assert_eq!(
            not_a_number,
            "environment variable AVAP_LOG_MAX_MB: `big` is not a number"
        );
    }

    #[test]
    fn redis_and_cache_keys() {
        let from_file =
            file("redis_url = \"redis://:hunter2@cache:6380/1\"\nredis_prefix = \"blue\"\ncache_ttl_s = 0\n");
        let env = env(&[("AVAP_PREWARM", "3")]).unwrap();
        let r = resolved(&Layer::default(), &env, &from_file);
        let config = r.settings.server_config();
        assert_eq!(
            config.redis_url.as_ref().map(ToString::to_string).as_deref(),
            Some("redis://:***@cache:6380/1")
        );
        assert_eq!(
            (config.redis_prefix.as_str(), config.cache_ttl, config.prewarm),
            ("blue", None, 3)
        );
        let printed = r.to_toml().unwrap();
        assert!(
            printed.contains("redis_url = \"redis://:***@cache:6380/1\"  # file avap.toml"),
            "{printed}"
        );
        assert!(!printed.contains("hunter2"), "{printed}");
        let defaults = resolved(&Layer::default(), &Layer::default(), &Layer::default());
        let config = defaults.settings.server_config();
        assert!(config.redis_url.is_none(), "no Redis unless configured");
        assert_eq!((config.redis_prefix.as_str(), config.prewarm), ("avap", 16));
        assert_eq!(config.cache_ttl, Some(Duration::from_hours(1)));
        let bad = invalid("redis_url = \"http://:hunter2@cache\"\n");
        assert!(bad.starts_with("redis_url = \"http://:***@cache\""), "{bad}");
        assert!(
            bad.contains("not a redis:// or rediss://") && !bad.contains("hunter2"),
            "{bad}"
        );
        assert!(invalid("redis_url = \"redis://cache:99999\"\n").contains("not a port number"));
        // TLS: `rediss://`, with a CA file that must hold certificates.
        let dir = std::env::temp_dir().join(format!("avap-config-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, junk) = (dir.join("ca.pem"), dir.join("junk.pem"));
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        std::fs::write(&junk, "not a certificate").unwrap();
        let tls = format!(
            "redis_url = \"rediss://cache:6380\"\nredis_ca_file = {:?}\n",
            ca.display().to_string()
        );
        let config = resolved(&Layer::default(), &Layer::default(), &file(&tls))
            .settings
            .server_config();
        assert_eq!(
            config.redis_url.as_ref().map(ToString::to_string).as_deref(),
            Some("rediss://cache:6380/0")
        );
        assert_eq!(config.redis_ca_file.as_deref(), Some(ca.as_path()));
        let plain = format!(
            "redis_url = \"redis://cache\"\nredis_ca_file = {:?}\n",
            ca.display().to_string()
        );
        assert!(invalid(&plain).contains("only a `rediss://`"), "{}", invalid(&plain));
        let junk = format!(
            "redis_url = \"rediss://cache\"\nredis_ca_file = {:?}\n",
            junk.display().to_string()
        );
        assert!(invalid(&junk).contains("holds no PEM certificate"));
        assert!(
            invalid("redis_url = \"rediss://cache\"\nredis_ca_file = \"/nonexistent/ca.pem\"\n")
                .contains("cannot read it")
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(invalid("redis_prefix = \"a b\"\n").contains("1 to 64 letters"));
        assert!(invalid("redis_prefix = \"\"\n").contains("1 to 64 letters"));
        assert!(invalid("prewarm = 300\ncache_entries = 10\n").starts_with("prewarm = 300"));
    }

    #[test]
    fn connection_keys_are_layered_validated_and_built() {
        let file = file("header_read_timeout_ms = 2500\nmax_connections = 100\n");
        let env = env(&[("AVAP_IDLE_TIMEOUT_MS", "90000"), ("AVAP_MAX_CONNECTIONS_PER_IP", "8")]).unwrap();
        let r = resolved(&Layer::default(), &env, &file);
        let limits = r.settings.server_config().connections;
        assert_eq!(
            limits,
            listen::ConnectionLimits {
                header_read_timeout: Duration::from_millis(2500),
                idle_timeout: Duration::from_secs(90),
                max_connections: 100,
                max_connections_per_ip: 8,
            }
        );
        let printed = r.to_toml().unwrap();
        assert!(
            printed.contains("idle_timeout_ms = 90000  # environment variable AVAP_IDLE_TIMEOUT_MS"),
            "{printed}"
        );
        let defaults = resolved(&Layer::default(), &Layer::default(), &Layer::default());
        assert_eq!(
            defaults.settings.server_config().connections,
            listen::ConnectionLimits::default()
        );
        assert!(invalid("header_read_timeout_ms = 0\n").contains("must be between 100 and"));
        assert!(invalid("idle_timeout_ms = 5\n").contains("must be between 100 and"));
        assert!(invalid("max_connections = 0\n").starts_with("max_connections = 0 (from file)"));
        assert!(invalid("max_connections_per_ip = 0\n").starts_with("max_connections_per_ip = 0"));
    }

    #[test]
    fn every_key_has_a_variable() {
        let names: Vec<String> = keys().iter().map(|(path, _)| env_name(path)).collect();
        for expected in [
            "AVAP_LISTEN",
            "AVAP_DATABASE_URL",
            "AVAP_LIMITS_FUEL",
            "AVAP_DENY_CAPABILITIES",
            "AVAP_LOG_LEVEL",
            "AVAP_OUTBOUND_ALLOW",
            "AVAP_OUTBOUND_TIMEOUT_MS",
            "AVAP_OUTBOUND_MAX_RESPONSE_KB",
            "AVAP_OUTBOUND_MAX_REDIRECTS",
            "AVAP_AI_ENDPOINT",
            "AVAP_MAX_CONCURRENT_COMPILES",
            "AVAP_MAX_ASYNC_BLOCKS",
            "AVAP_ASYNC_BLOCK_SLOTS",
            "AVAP_WARM_INSTANCES",
            "AVAP_REDIS_CA_FILE",
            "AVAP_OTLP_PROTOCOL",
            "AVAP_OTLP_CA_FILE",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
        }
        assert_eq!(
            names.len(),
            22 + 5 + 5 + 1 + 4 + 5 + 4 + 4 + 1 + 1 + 2 + 5 + 1 + 2 + 6 + 7 + 1 + 1 + 1,
            "22 before issue 6, 5 outbound/ai keys, 5 database keys, hsts_max_age, 4 edge keys, \
             5 log file/trace keys, 4 Redis/cache keys, 4 connection keys, max_concurrent_compiles, \
             redis_ca_file, otlp_protocol and otlp_ca_file, 5 breaker/bulkhead keys, audit_retention_days, \
             max_async_blocks and async_block_slots, 5 database breaker/bulkhead keys, db_slow_statement_ms, \
             7 jobs keys, playground, request_signing_window_s, warm_instances"
        );
    }

    #[test]
    fn edge_keys_are_layered_validated_and_redacted() {
        let env = env(&[
            ("AVAP_REGISTRY_URL", "https://10.0.0.5:8080"),
            ("AVAP_REGISTRY_API_KEY", "avap_0123abcd_supersecret"),
        ])
        .unwrap();
        let flags = Layer(toml::from_str("edge = true\nregistry_sync_ms = 250").unwrap());
        let r = resolved(&flags, &env, &Layer::default());
        let edge = r.settings.server_config().edge.expect("edge mode");
        assert_eq!(edge.registry_url, "https://10.0.0.5:8080");
        assert_eq!(edge.api_key.as_deref(), Some("avap_0123abcd_supersecret"));
        assert_eq!(edge.sync_interval, Duration::from_millis(250));
        assert_eq!(edge.dir, PathBuf::from("/data/edge"));
        assert!(!format!("{edge:?}").contains("supersecret"));
        let printed = r.to_toml().unwrap();
        assert!(!printed.contains("supersecret"), "{printed}");
        assert!(
            printed.contains("registry_api_key = \"avap_0123abcd_***\"  # environment variable AVAP_REGISTRY_API_KEY"),
            "{printed}"
        );
        assert!(printed.contains("edge = true  # flag --edge"), "{printed}");
        assert!(
            resolved(&Layer::default(), &Layer::default(), &Layer::default())
                .settings
                .server_config()
                .edge
                .is_none()
        );

        let missing = invalid("edge = true\n");
        assert!(
            missing.contains("no registry_url") && missing.contains("--registry URL"),
            "{missing}"
        );
        assert!(invalid("edge = true\nregistry_url = \"ftp://x\"\n").starts_with("registry_url = \"ftp://x\""));
        assert!(invalid("registry_sync_ms = 1\n").contains("between 50 and"));
        let clear_text = invalid("registry_url = \"http://10.0.0.5:8080\"\nregistry_api_key = \"avap_0123abcd_x\"\n");
        assert!(
            clear_text.starts_with("registry_url = \"http://10.0.0.5:8080\"")
                && clear_text.contains("registry_api_key unencrypted")
                && clear_text.contains("https://"),
            "{clear_text}"
        );
        let bad_key = invalid("registry_api_key = \"avap_0123abcd secret\"\n");
        assert!(
            bad_key.contains("registry_api_key") && !bad_key.contains("avap_0123abcd"),
            "{bad_key}"
        );
        assert_eq!(redact_api_key("avap_0123abcd_x"), "avap_0123abcd_***");
        assert_eq!(redact_api_key("whatever"), "***");
    }
}
