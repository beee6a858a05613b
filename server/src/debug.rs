//! Debug endpoints, admin scope only ([`auth`](super::auth)):
//!
//! * `GET /api/v1/debug/runs` — runs in progress: request id, script,
//!   start time, elapsed milliseconds ([`ActiveRuns`]).
//! * `GET /api/v1/debug/cache` — cache sizes and which registry scripts
//!   are loaded in the stored-script cache.
//! * `GET /api/v1/debug/config` — the effective configuration as TOML, as
//!   `avap serve --print-config` shows it (passwords and tokens hidden),
//!   through the log secrets filter as well.
//! * `POST /api/v1/debug/profile?seconds=N` — a CPU profile of the whole
//!   process (1 to 60 s, default 10) as folded stacks, one
//!   `thread;outer;…;inner count` line per stack: load it in speedscope or
//!   `flamegraph.pl`. One profile at a time (409 otherwise).
//!
//! The profiler samples with `SIGPROF` (pprof-rs) and walks the stack of
//! whatever thread the signal lands on, wasm included: wasmtime registers
//! the unwind tables of the code it compiles, and samples whose innermost
//! frame is in libc, libgcc, libpthread or the vDSO are skipped (the
//! unwinder is not safe to re-enter there). `tests/server_debug.rs`
//! profiles while scripts run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::openapi::ApiErrorBody;
use super::telemetry::redact;

/// The runs in progress, for `GET /api/v1/debug/runs`.
#[derive(Debug, Default)]
pub struct ActiveRuns {
    next: AtomicU64,
    runs: Mutex<BTreeMap<u64, ActiveRun>>,
}

#[derive(Debug)]
struct ActiveRun {
    request_id: Option<String>,
    script: String,
    started_at: chrono::DateTime<chrono::Utc>,
    started: Instant,
}

impl ActiveRuns {
    /// Note a run; it is listed until the guard drops (the run ended, or
    /// its future was dropped: client gone, request timeout).
    pub fn start(&self, request_id: Option<String>, script: &str) -> ActiveRunGuard<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let run = ActiveRun {
            request_id,
            script: script.to_owned(),
            started_at: chrono::Utc::now(),
            started: Instant::now(),
        };
        self.lock().insert(id, run);
        ActiveRunGuard { runs: self, id }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, ActiveRun>> {
        // Entries are inserted and removed whole: a panic cannot leave one half-made.
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Oldest first.
    fn snapshot(&self) -> Vec<Value> {
        self.lock()
            .values()
            .map(|run| {
                json!({
                    "request_id": run.request_id,
                    "script": run.script,
                    "started_at": run.started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "elapsed_ms": u64::try_from(run.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                })
            })
            .collect()
    }
}

/// Removes its run from [`ActiveRuns`] when dropped.
#[derive(Debug)]
pub struct ActiveRunGuard<'a> {
    runs: &'a ActiveRuns,
    id: u64,
}

impl Drop for ActiveRunGuard<'_> {
    fn drop(&mut self) {
        self.runs.lock().remove(&self.id);
    }
}

/// The answer of `GET /api/v1/debug/runs` (described only: built as JSON).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DebugRuns {
    count: u64,
    /// Oldest first.
    runs: Vec<DebugRun>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DebugRun {
    request_id: Option<String>,
    /// The registry name, `inline`, `upload` or `stored`.
    script: String,
    /// RFC 3339 UTC.
    started_at: String,
    elapsed_ms: u64,
}

/// `GET /api/v1/debug/runs`.
#[utoipa::path(
    get,
    path = "/api/v1/debug/runs",
    tag = "debug",
    summary = "Runs in progress: request id, script, start, elapsed",
    responses((status = 200, description = "Oldest first.", body = DebugRuns)),
)]
pub async fn runs(State(state): State<AppState>) -> Json<Value> {
    let runs = state.shared.active_runs.snapshot();
    Json(json!({"count": runs.len(), "runs": runs}))
}

/// Registry scripts listed in `GET /api/v1/debug/cache`, at most.
const LISTED_SCRIPTS: usize = 100;

/// `GET /api/v1/debug/cache`: [`AppState::cache_state`] and, for the first
/// registry scripts by name, their current version and whether it is
/// loaded in the stored-script cache.
#[utoipa::path(
    get,
    path = "/api/v1/debug/cache",
    tag = "debug",
    summary = "Cache sizes, run slots, and which registry scripts are loaded in the stored-script cache",
    responses(
        (status = 200, description = "The cache summary (as in the health answer) and `registry`: `{scripts, listed: [{name, version, cached, artifact_sha256}]}`, the first 100 scripts by name.", body = Object),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn cache(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut summary = state.cache_state();
    let scripts = state.store().list().await?;
    let total = scripts.len();
    let listed: Vec<Value> = scripts
        .iter()
        .take(LISTED_SCRIPTS)
        .map(|script| {
            let cached = state.shared.stored.get(&script.name, None);
            json!({
                "name": script.name,
                "version": script.version,
                "cached": cached.is_some(),
                "artifact_sha256": cached.as_ref().map(|c| c.module.sha256().to_owned()),
            })
        })
        .collect();
    summary["registry"] = json!({"scripts": total, "listed": listed});
    Ok(Json(summary))
}

/// `GET /api/v1/debug/config`: TOML text.
#[utoipa::path(
    get,
    path = "/api/v1/debug/config",
    tag = "debug",
    summary = "The effective configuration with each value's origin; passwords and tokens hidden",
    responses((status = 200, description = "TOML text, as `avap serve --print-config` prints it.", body = String, content_type = "text/plain")),
)]
pub async fn config(State(state): State<AppState>) -> Response {
    let text = match &state.live().effective_config {
        Some(text) => text.lines().fold(String::new(), |mut out, line| {
            // The secrets filter after `--print-config`'s own redaction:
            // a key pasted into a URL or a list still does not get out.
            let _ = writeln!(out, "{}", redact::scrub(line));
            out
        }),
        None => "# This server was started without a resolved configuration (embedded use).\n".to_owned(),
    };
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// The profile's length when the query names none.
const DEFAULT_SECONDS: u64 = 10;
/// Samples per second: a prime, so sampling does not beat with periodic work.
const FREQUENCY: i32 = 99;
/// Time the profile needs past its length (symbolizing, sending).
const PROFILE_MARGIN: Duration = Duration::from_secs(5);

/// One profile at a time: the profiler is process-wide (one `SIGPROF` timer).
static PROFILING: AtomicBool = AtomicBool::new(false);

/// Clears [`PROFILING`] when dropped, however the request ends.
struct ProfileSlot;

impl ProfileSlot {
    fn take() -> Option<ProfileSlot> {
        PROFILING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then_some(ProfileSlot)
    }
}

impl Drop for ProfileSlot {
    fn drop(&mut self) {
        PROFILING.store(false, Ordering::Release);
    }
}

/// The longest profile that fits in a request timeout of `timeout` (zero:
/// no timeout), at most 60 s.
pub fn max_profile_seconds(timeout: Duration) -> u64 {
    if timeout.is_zero() {
        60
    } else {
        timeout.saturating_sub(PROFILE_MARGIN).as_secs().min(60)
    }
}

/// The profile's length when the query names none: [`DEFAULT_SECONDS`], or
/// the longest that fits in the request timeout when that is shorter.
pub fn default_profile_seconds(timeout: Duration) -> u64 {
    DEFAULT_SECONDS.min(max_profile_seconds(timeout))
}

/// `POST /api/v1/debug/profile?seconds=N`.
///
/// The document served says this server's maximum and default of `seconds`
/// ([`openapi::document`](super::openapi::document)).
#[utoipa::path(
    post,
    path = "/api/v1/debug/profile",
    tag = "debug",
    summary = "A CPU profile of the whole server process, as folded stacks for speedscope or flamegraph.pl",
    params(("seconds" = Option<u64>, Query, minimum = 1, maximum = 60,
            description = "How long to sample (99 Hz): 1 to 60, and at most the request timeout less 5 s; default 10 or that most.")),
    responses(
        (status = 200, description = "One `thread;outermost;…;innermost count` line per distinct stack.", body = String, content_type = "text/plain"),
        (status = 400, description = "An unknown parameter, or `seconds` out of range (`InvalidRequest`).", body = ApiErrorBody),
        (status = 409, description = "A profile is already being taken (`ProfileInProgress`).", body = ApiErrorBody),
    ),
)]
pub async fn profile(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let timeout = state.protect().config().request_timeout;
    let most = max_profile_seconds(timeout);
    let seconds = profile_seconds(query.as_deref(), default_profile_seconds(timeout))?;
    if seconds == 0 || seconds > most {
        return Err(ApiError::invalid(format!(
            "a {seconds} s profile does not fit in this server's request timeout of {} ms \
             (request_timeout_ms); ask for at most {most} s",
            timeout.as_millis(),
        )));
    }
    let Some(slot) = ProfileSlot::take() else {
        let body = json!({"error": {
            "kind": "ProfileInProgress",
            "message": "a CPU profile is already being taken; retry when it is done",
        }});
        return Ok((StatusCode::CONFLICT, Json(body)).into_response());
    };
    let profiler = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("cannot start the CPU profiler: {e}")))?;
    tracing::info!(seconds, "CPU profile started");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Symbolizing reads debug info: not on an async worker.
    let folded = tokio::task::spawn_blocking(move || {
        let report = profiler.report().build();
        drop(profiler);
        drop(slot);
        report.map(|r| folded_stacks(&r))
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("the profile task failed: {e}")))?
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("cannot build the CPU profile: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], folded).into_response())
}

/// `seconds=N` from the query: 1 to 60, else `default`.
fn profile_seconds(query: Option<&str>, default: u64) -> Result<u64, ApiError> {
    let mut seconds = default;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "seconds" {
            return Err(ApiError::invalid(format!(
                "unknown query parameter `{name}`; the only one is `seconds` (1 to 60)"
            )));
        }
        seconds = value
            .parse()
            .ok()
            .filter(|s| (1..=60).contains(s))
            .ok_or_else(|| ApiError::invalid(format!("seconds={value}: give a whole number from 1 to 60")))?;
    }
    Ok(seconds)
}

/// Folded stacks: `thread;outermost;…;innermost count`, one line per
/// distinct stack, sorted.
fn folded_stacks(report: &pprof::Report) -> String {
    let mut lines: Vec<String> = report
        .data
        .iter()
        .map(|(frames, count)| {
            let mut line = if frames.thread_name.is_empty() {
                format!("thread-{}", frames.thread_id)
            } else {
                frame_name(&frames.thread_name)
            };
            // `frames` is innermost first; each frame lists its inlined calls innermost first.
            for frame in frames.frames.iter().rev() {
                // No symbol: code compiled at run time (the scripts' wasm)
                // or a library without symbols.
                if frame.is_empty() {
                    line.push_str(";[unknown]");
                }
                for symbol in frame.iter().rev() {
                    line.push(';');
                    line.push_str(&frame_name(&symbol.name()));
                }
            }
            let _ = write!(line, " {count}");
            line
        })
        .collect();
    lines.sort_unstable();
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// A name as one folded frame: no `;` (the separator) and no newline.
fn frame_name(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_lengths() {
        assert_eq!(profile_seconds(None, DEFAULT_SECONDS).unwrap(), DEFAULT_SECONDS);
        assert_eq!(profile_seconds(Some("seconds=1"), 7).unwrap(), 1);
        assert_eq!(profile_seconds(Some("seconds=60"), 7).unwrap(), 60);
        assert_eq!(max_profile_seconds(Duration::ZERO), 60);
        assert_eq!(max_profile_seconds(Duration::from_secs(30)), 25);
        assert_eq!(max_profile_seconds(Duration::from_millis(12_500)), 7);
        assert_eq!(max_profile_seconds(Duration::from_secs(3)), 0);
        assert_eq!(default_profile_seconds(Duration::from_secs(30)), DEFAULT_SECONDS);
        assert_eq!(default_profile_seconds(Duration::from_secs(12)), 7);
        for bad in ["seconds=0", "seconds=61", "seconds=x", "seconds=", "secs=5"] {
            assert_eq!(
                profile_seconds(Some(bad), DEFAULT_SECONDS).unwrap_err().kind(),
                "InvalidRequest",
                "{bad}"
            );
        }
    }

    #[test]
    fn active_runs_leave_when_their_guard_drops() {
        let runs = ActiveRuns::default();
        let first = runs.start(Some("r1".into()), "inline");
        {
            let _second = runs.start(None, "hello");
            assert_eq!(runs.snapshot().len(), 2);
        }
        let listed = runs.snapshot();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0]["request_id"].as_str(), listed[0]["script"].as_str()),
            (Some("r1"), Some("inline"))
        );
        drop(first);
        assert!(runs.snapshot().is_empty());
    }

    #[test]
    fn one_profile_at_a_time() {
        let slot = ProfileSlot::take().expect("free");
        assert!(ProfileSlot::take().is_none());
        drop(slot);
        assert!(ProfileSlot::take().is_some());
    }
}
