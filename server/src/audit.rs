//! The audit trail: who stored, deleted, rolled back or ran which script
//! version, when, and how it ended (`audit_log`, migration 0003).
//!
//! * Registry writes commit their row in the same transaction as the change
//!   ([`Store::put`](super::store::Store::put) and friends); refused writes
//!   are written here with [`refused`], outside any transaction.
//! * Runs never wait on the database: [`record_run`] queues the row in a
//!   bounded in-memory queue and a background task writes what is queued
//!   every [`FLUSH_EVERY`] (transactions of at most [`BATCH_ROWS`] rows).
//!   When the queue is full the row is dropped and counted in
//!   `avap_audit_dropped_total`: auditing never slows or fails a run.
//!   [`AuditLog::close`] writes what is queued at shutdown. A run whose
//!   request is cancelled (client gone, request timeout) is recorded as
//!   `Cancelled` ([`RunRecord`]).
//! * `GET /api/v1/audit` ([`list`], admin scope) reads the rows back;
//!   `GET /api/v1/audit/export` ([`export`]) hands them to a SIEM as JSON
//!   lines, oldest first, in pages it pulls with `after`.
//! * With `audit_retention_days`, a background task deletes older rows
//!   every hour ([`prune`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use avap_runtime::RunReport;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::Extensions;
use axum::http::request::Parts;
use axum::response::IntoResponse as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::cache::{self, Compiled, SourceHash};
use super::error::ApiError;
use super::openapi::ApiErrorBody;
use super::request_id::RequestId;
use super::store::{Actor, AuditEntry, AuditQuery, AuditRow, Store, audit_time};

/// How many rows wait for the writer before new ones are dropped (a row
/// is a few hundred bytes: at most a few MiB).
const QUEUE_ROWS: usize = 32 * 1024;
/// Queued rows that wake the writer before its timer: under load it
/// writes as fast as the database takes rows instead of at most
/// `QUEUE_ROWS` per [`FLUSH_EVERY`] (the old cap, 20k rows a second, and a
/// writer slower than its timer on `PostgreSQL` dropped up to 40% of the
/// rows at 8k requests a second).
const WAKE_ROWS: usize = 4096;
/// The most rows one write transaction holds: a commit (a WAL flush) per
/// batch, not per row.
const BATCH_ROWS: usize = 4096;
/// How long a queued row waits for more to share its transaction.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Rows `GET /api/v1/audit` returns unless `limit` says otherwise, and the most it may ask.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// Rows one export answer holds unless `limit` says otherwise, and the most.
const EXPORT_LIMIT: i64 = 1000;
const MAX_EXPORT_LIMIT: i64 = 10_000;
/// How often old rows are pruned (the first time a minute after start).
const PRUNE_EVERY: Duration = Duration::from_hours(1);

/// The queue of run rows and its writer task; cheap to clone.
///
/// Runs push onto a plain locked vector and nobody is woken: the writer
/// wakes up on its own every [`FLUSH_EVERY`] and takes the lot, or when
/// [`WAKE_ROWS`] are waiting (one wake-up per that many runs). A channel
/// would wake the writer (a cross-thread futex) on every run.
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Queue>,
}

#[derive(Debug)]
struct Queue {
    store: Store,
    pending: std::sync::Mutex<Vec<AuditRow>>,
    closed: AtomicBool,
    /// One writer at a time, so a flush returns only after every row queued
    /// before it is written, even when the timer's write is under way.
    writing: tokio::sync::Mutex<()>,
    /// Wakes the writer before its timer ([`WAKE_ROWS`]).
    full: tokio::sync::Notify,
    /// How often that happened.
    early_writes: AtomicU64,
    /// `audit_retention_days` in seconds (0: rows are kept); a reload may change it.
    retention_secs: AtomicU64,
}

impl AuditLog {
    /// Start the writer and the pruner on the current tokio runtime; rows
    /// are kept for at most `retention` (`None`: forever).
    pub fn start(store: Store, retention: Option<Duration>) -> Result<AuditLog> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("the audit log writer needs a tokio runtime (start the server inside one)")?;
        let log = AuditLog {
            inner: Arc::new(Queue {
                store,
                pending: std::sync::Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                writing: tokio::sync::Mutex::new(()),
                full: tokio::sync::Notify::new(),
                early_writes: AtomicU64::new(0),
                retention_secs: AtomicU64::new(0),
            }),
        };
        log.set_retention(retention);
        let queue = Arc::downgrade(&log.inner);
        runtime.spawn(async move {
            tokio::time::sleep(Duration::from_mins(1)).await;
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            loop {
                tick.tick().await;
                let Some(queue) = queue.upgrade() else { return };
                if queue.closed.load(Ordering::Acquire) {
                    return;
                }
                if let Some(keep) = queue.retention() {
                    prune(&queue.store, keep, chrono::Utc::now()).await;
                }
            }
        });
        // The task holds only a weak reference: it ends with the last log handle.
        let queue = Arc::downgrade(&log.inner);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Held for one wait (a tick at most): once the last log
                // handle is gone, the next round ends the task.
                let Some(waiting) = queue.upgrade() else { return };
                let full = async {
                    waiting.full.notified().await;
                };
                tokio::select! {
                    _ = tick.tick() => {}
                    () = full => {
                        waiting.early_writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(waiting);
                let Some(queue) = queue.upgrade() else { return };
                if queue.closed.load(Ordering::Acquire) {
                    return;
                }
                queue.write_pending().await;
            }
        });
        Ok(log)
    }

    /// Keep rows for at most `retention` from the pruner's next round on
    /// (`None`: forever).
    pub fn set_retention(&self, retention: Option<Duration>) {
        let secs = retention.map_or(0, |keep| keep.as_secs().max(1));
        self.inner.retention_secs.store(secs, Ordering::Relaxed);
    }

    /// How long rows are kept; `None`: forever.
    pub fn retention(&self) -> Option<Duration> {
        self.inner.retention()
    }

    /// Queue `row` without waiting; `false` if it was dropped (queue full, or
    /// the log is closed).
    pub fn record(&self, row: AuditRow) -> bool {
        if self.inner.closed.load(Ordering::Acquire) {
            return false;
        }
        let mut pending = self.inner.pending();
        if pending.len() >= QUEUE_ROWS {
            return false;
        }
        pending.push(row);
        if pending.len() >= WAKE_ROWS {
            // Stored as one permit if the writer is busy: it comes back at once.
            self.inner.full.notify_one();
        }
        true
    }

    /// Wait until every row queued so far is written (or failed to write).
    pub async fn flush(&self) {
        self.inner.write_pending().await;
    }

    /// Write every queued row and stop the writer; later rows are dropped.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.write_pending().await;
    }
}

impl Queue {
    fn retention(&self) -> Option<Duration> {
        match self.retention_secs.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<AuditRow>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn write_pending(&self) {
        let _writer = self.writing.lock().await;
        let rows = std::mem::take(&mut *self.pending());
        for batch in rows.chunks(BATCH_ROWS) {
            write(&self.store, batch).await;
        }
    }
}

async fn write(store: &Store, batch: &[AuditRow]) {
    if let Err(e) = store.append_audit(batch).await {
        tracing::error!(rows = batch.len(), error = %format!("{e:#}"), "audit rows lost: cannot write them");
    }
}

/// Who is asking: the [`Caller`] that `auth::require_key` found (anonymous
/// when there is none) and the request id when the request has one.
impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Actor, Infallible> {
        Ok(actor_of(&parts.extensions))
    }
}

pub fn actor_of(extensions: &Extensions) -> Actor {
    Actor {
        actor: extensions.get::<Caller>().map_or("anonymous", Caller::actor).to_owned(),
        request_id: extensions.get::<RequestId>().map(|id| id.0.clone()),
    }
}

/// Write the row of a refused registry write (compile error, not found, …)
/// now; a failure to write it is logged, never the client's problem.
pub async fn refused(state: &AppState, row: AuditRow) {
    if let Err(e) = state.store().append_audit(std::slice::from_ref(&row)).await {
        tracing::error!(action = row.action, error = %format!("{e:#}"), "cannot write an audit row");
    }
}

/// What a run ran, as far as is known before it starts.
#[derive(Debug, Default)]
pub struct RunTarget {
    /// The stored script's name; `None` for inline runs and uploads.
    pub script: Option<String>,
    pub version: Option<i64>,
    pub artifact_sha256: Option<String>,
    /// An inline source: its artifact comes from the compile cache after the run.
    inline_source: Option<SourceHash>,
}

impl RunTarget {
    pub fn stored(name: &str, version: Option<i64>) -> RunTarget {
        RunTarget {
            script: Some(name.to_owned()),
            version,
            ..RunTarget::default()
        }
    }

    pub fn inline(source: &str) -> RunTarget {
        RunTarget {
            inline_source: Some(cache::source_hash(source)),
            ..RunTarget::default()
        }
    }

    pub fn artifact(sha256: String) -> RunTarget {
        RunTarget {
            artifact_sha256: Some(sha256),
            ..RunTarget::default()
        }
    }

    /// The version that actually ran, once resolved.
    pub fn resolved(&mut self, version: i64, artifact_sha256: &str) {
        self.version = Some(version);
        self.artifact_sha256 = Some(artifact_sha256.to_owned());
    }
}

/// The outcome of a run whose request ended first (client gone, request
/// timeout): dropping the request's future cancels the run.
pub const CANCELLED: &str = "Cancelled";

/// A run's audit row in the making: [`RunRecord::finish`] queues it with
/// the run's outcome; dropped unfinished (the request was cancelled), it
/// queues it as [`CANCELLED`], so no run goes unrecorded.
#[derive(Debug)]
pub struct RunRecord<'a> {
    state: &'a AppState,
    actor: &'a Actor,
    /// What ran; the run fills in the version it resolved to.
    pub target: RunTarget,
    finished: bool,
}

impl<'a> RunRecord<'a> {
    pub fn new(state: &'a AppState, actor: &'a Actor, target: RunTarget) -> RunRecord<'a> {
        RunRecord {
            state,
            actor,
            target,
            finished: false,
        }
    }

    pub fn finish(mut self, result: &Result<RunReport, ApiError>) {
        self.finished = true;
        record_run(self.state, self.actor, std::mem::take(&mut self.target), result);
    }
}

impl Drop for RunRecord<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let target = std::mem::take(&mut self.target);
            record_outcome(self.state, self.actor, target, CANCELLED.to_owned());
        }
    }
}

/// `ok`, or the kind of the run's error (envelope or API error).
pub fn outcome(result: &Result<RunReport, ApiError>) -> String {
    match result {
        Ok(report) => report.envelope.error_kind().unwrap_or("ok").to_owned(),
        Err(e) => e.kind().to_owned(),
    }
}

/// Queue the row of a finished run; never waits.
pub fn record_run(state: &AppState, actor: &Actor, target: RunTarget, result: &Result<RunReport, ApiError>) {
    record_outcome(state, actor, target, outcome(result));
}

/// Queue the row of a run that ended with `outcome`; never waits.
pub fn record_outcome(state: &AppState, actor: &Actor, target: RunTarget, outcome: String) {
    let artifact_sha256 = target.artifact_sha256.or_else(|| {
        // The compile cache holds the module an inline run just used (unless
        // it was a compile error, or was evicted meanwhile).
        let hash = target.inline_source?;
        match state.shared.scripts.get(&hash)? {
            Compiled::Module(module) => Some(module.sha256().to_owned()),
            Compiled::CompileError(_) => None,
        }
    });
    let row = AuditRow {
        script: target.script,
        version: target.version,
        artifact_sha256,
        ..AuditRow::new(actor, "run", outcome)
    };
    if !state.audit().record(row) {
        state.metrics().audit_dropped();
    }
}

/// The query of `GET /api/v1/audit`; any other parameter is a 400.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only rows of this stored script.
    script: Option<String>,
    /// Rows per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only rows with a smaller id: the previous page's `next_before`.
    before: Option<i64>,
}

/// A page of `GET /api/v1/audit` (described only: built as JSON).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct AuditPage {
    /// Newest first.
    entries: Vec<AuditEntry>,
    /// Pass as `before` for the next page; null on the last page.
    next_before: Option<i64>,
}

/// `GET /api/v1/audit?script=NAME&limit=N&before=ID`: queued rows are
/// written first, then the rows are returned newest first,
/// `{"entries": [...], "next_before": ID|null}` (pass `next_before` as
/// `before` for the next page).
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "registry",
    summary = "The audit trail, newest first",
    params(ListParams),
    responses(
        (status = 200, description = "Audit rows.", body = AuditPage),
        (status = 400, description = "A bad query: an unknown or repeated parameter, a number that is not one, `limit` out of range (`InvalidRequest`).", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query(params)?;
    let limit = page_limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let query = AuditQuery {
        script: params.script,
        before: params.before,
        limit,
    };
    // Read what was run until now, not what the writer's timer got to.
    state.audit().flush().await;
    let entries = state.store().audit_entries(&query).await?;
    let full_page = i64::try_from(entries.len()).is_ok_and(|n| n == limit);
    let next_before = entries.last().filter(|_| full_page).map(|e| e.id);
    Ok(Json(json!({"entries": entries, "next_before": next_before})))
}

/// The query string of an audit route, or a 400 saying what is wrong with it.
pub(crate) fn query<T>(params: Result<Query<T>, QueryRejection>) -> Result<Query<T>, ApiError> {
    params.map_err(|e| ApiError::invalid(format!("bad query string: {}", e.body_text())))
}

/// `limit` (else `default`) when it is 1 to `max`, else a 400.
fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid(format!("`limit` must be 1 to {max}, not {limit}")))
    }
}

/// Delete the rows older than `keep` before `now`; a failure is logged
/// (the next round tries again).
pub async fn prune(store: &Store, keep: Duration, now: chrono::DateTime<chrono::Utc>) -> u64 {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let cutoff = audit_time(
        now.checked_sub_signed(keep)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC),
    );
    match store.prune_audit(&cutoff).await {
        Ok(0) => 0,
        Ok(pruned) => {
            tracing::info!(pruned, before = %cutoff, "audit rows older than audit_retention_days deleted");
            pruned
        }
        Err(e) => {
            tracing::warn!("cannot prune the audit trail: {e:#}");
            0
        }
    }
}

/// The query of `GET /api/v1/audit/export`; any other parameter is a 400.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// Only rows with a larger id: the last id of the previous answer (default 0: from the start).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Only rows at or after this time, RFC 3339 (`2026-12-01T00:00:00Z`).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Rows in this answer (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

/// `GET /api/v1/audit/export?after=ID&since=TIME&limit=N`: audit rows as
/// JSON lines (`application/x-ndjson`), oldest first. A SIEM pulls the
/// trail in turns: the last line's `id` is the next `after`; an answer
/// with fewer than `limit` lines is the end for now.
#[utoipa::path(
    get,
    path = "/api/v1/audit/export",
    tag = "registry",
    summary = "The audit trail as JSON lines, oldest first, for a SIEM",
    params(ExportParams),
    responses(
        (status = 200, description = "One audit row (an `AuditEntry` object) per line.", body = String, content_type = "application/x-ndjson"),
        (status = 400, description = "A bad query: an unknown or repeated parameter, a number that is not one, `limit` out of range, `since` not RFC 3339 (`InvalidRequest`).", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn export(
    State(state): State<AppState>,
    params: Result<Query<ExportParams>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    let Query(params) = query(params)?;
    let limit = page_limit(params.limit, EXPORT_LIMIT, MAX_EXPORT_LIMIT)?;
    let after = params.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::invalid(format!("`after` must be 0 or more, not {after}")));
    }
    let since = match &params.since {
        None => None,
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| audit_time(t.with_timezone(&chrono::Utc)))
                .map_err(|e| {
                    ApiError::invalid(format!(
                        "`since` is not an RFC 3339 time such as 2026-12-01T00:00:00Z: {e}"
                    ))
                })?,
        ),
    };
    state.audit().flush().await;
    let entries = state.store().audit_export(after, since.as_deref(), limit).await?;
    let mut lines = String::new();
    for entry in &entries {
        lines.push_str(&serde_json::to_string(entry).map_err(|e| ApiError::Internal(e.into()))?);
        lines.push('\n');
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(outcome: &str) -> AuditRow {
        let actor = Actor {
            actor: "anonymous".to_owned(),
            request_id: None,
        };
        AuditRow::new(&actor, "run", outcome)
    }

    async fn count(store: &Store) -> usize {
        let query = AuditQuery {
            limit: MAX_LIMIT,
            ..AuditQuery::default()
        };
        store.audit_entries(&query).await.unwrap().len()
    }

    #[tokio::test]
    async fn rows_are_written_in_batches_and_on_flush() {
        let store = Store::in_memory().await.unwrap();
        let log = AuditLog::start(store.clone(), None).unwrap();
        // More than a statement's 64 rows, fewer than `count` reads back.
        for _ in 0..300 {
            assert!(log.record(row("ok")));
        }
        log.flush().await;
        assert_eq!(count(&store).await, 300);
        // Without a flush, the timer writes a lone row.
        assert!(log.record(row("TimeLimit")));
        tokio::time::sleep(FLUSH_EVERY * 3).await;
        assert_eq!(count(&store).await, 301);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_filling_queue_wakes_the_writer_before_its_timer() {
        let store = Store::in_memory().await.unwrap();
        let log = AuditLog::start(store.clone(), None).unwrap();
        // Past the timer's first (immediate) round; the next is 200 ms away.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..WAKE_ROWS - 1 {
            assert!(log.record(row("ok")));
        }
        assert_eq!(log.inner.early_writes.load(Ordering::Relaxed), 0);
        assert!(log.record(row("ok")));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while log.inner.early_writes.load(Ordering::Relaxed) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(log.inner.early_writes.load(Ordering::Relaxed), 1);
        log.flush().await;
        assert_eq!(count(&store).await, usize::try_from(MAX_LIMIT).unwrap());
    }

    #[tokio::test]
    async fn close_writes_what_is_queued_and_later_rows_are_dropped() {
        let store = Store::in_memory().await.unwrap();
        let log = AuditLog::start(store.clone(), None).unwrap();
        assert!(log.record(row("ok")));
        log.close().await;
        assert_eq!(count(&store).await, 1);
        assert!(!log.record(row("ok")), "a closed log takes no rows");
        log.flush().await;
    }

    #[tokio::test]
    async fn old_rows_are_pruned_and_the_export_pages_oldest_first() {
        let store = Store::in_memory().await.unwrap();
        let now = chrono::Utc::now();
        let stamped = |days_ago: i64| AuditRow {
            at: audit_time(now - chrono::Duration::days(days_ago)),
            ..row("ok")
        };
        store
            .append_audit(&[stamped(40), stamped(31), stamped(29), stamped(1), stamped(0)])
            .await
            .unwrap();
        let all = store.audit_export(0, None, 100).await.unwrap();
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
        let page = store.audit_export(all[1].id, None, 2).await.unwrap();
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [all[2].id, all[3].id]);
        let since = audit_time(now - chrono::Duration::days(2));
        assert_eq!(store.audit_export(0, Some(&since), 100).await.unwrap().len(), 2);
        let pruned = prune(&store, Duration::from_hours(24 * 30), now).await;
        assert_eq!(pruned, 2, "the rows of 40 and 31 days ago");
        assert_eq!(count(&store).await, 3);
    }

    #[tokio::test]
    async fn a_full_queue_drops_rows_instead_of_waiting() {
        // On this single-threaded test runtime the writer cannot run while
        // we queue, as if the database had stalled.
        let store = Store::in_memory().await.unwrap();
        let log = AuditLog::start(store.clone(), None).unwrap();
        let accepted = (0..QUEUE_ROWS * 2).filter(|_| log.record(row("ok"))).count();
        assert_eq!(accepted, QUEUE_ROWS);
        log.flush().await;
        assert_eq!(
            count(&store).await,
            usize::try_from(MAX_LIMIT).unwrap(),
            "the first page of what was kept"
        );
    }
}
