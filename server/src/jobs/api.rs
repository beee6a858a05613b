//! The jobs API (`jobs` scope): submit, look at, cancel, list and retry.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::store::{AttemptRecord, JobError, JobRecord, NewJob, Submitted};
use super::{Backoff, JobState, Priority, new_id, now_ms, rfc3339};
use crate::AppState;
use crate::error::ApiError;
use crate::execute::{LimitsSpec, RequestSpec};
use crate::extract::{object, parse, read_body, whole};
use crate::openapi::ApiErrorBody;
use crate::store::Actor;

/// The most attempts a job may ask for.
const MAX_ATTEMPTS: u32 = 100;
/// The longest `delay_s`: one year (`run_at` may name any time).
const MAX_DELAY_S: f64 = 365.0 * 24.0 * 3600.0;
/// Jobs `GET /api/v1/jobs` returns unless `limit` says otherwise, and the most.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// The body of `POST /api/v1/jobs`: what to run (as `POST /api/v1/execute`:
/// exactly one of `script` and `name`) and how to schedule it.
// The `OpenAPI` document adds the one-of rule to the derived schema (openapi.rs).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// AVAP source to run.
    #[serde(default)]
    pub script: Option<String>,
    /// A stored script, run at its current version when the job runs, or at `version`.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(minimum = 1)]
    pub version: Option<i64>,
    /// The JSON body the script sees (`addParam`): an object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    /// The rest of the HTTP request the script sees.
    #[serde(default, deserialize_with = "object::opt")]
    pub request: Option<RequestSpec>,
    /// Per-run limits, each clamped to the server's maximum; `time_ms` to
    /// `jobs_max_time_ms` instead (default 5 minutes).
    #[serde(default, deserialize_with = "object::opt")]
    pub limits: Option<LimitsSpec>,
    /// Default `normal`.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Attempts before the job is dead (default 3).
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// The wait between attempts.
    #[serde(default, deserialize_with = "object::opt")]
    pub backoff: Option<BackoffSpec>,
    /// When to run it, RFC 3339 (default: now; a past time is now); not with `delay_s`.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// Run it this many seconds from now (default 0); not with `run_at`.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 31_536_000)]
    pub delay_s: Option<f64>,
    /// Submissions with the same key are one job (1 to 200 visible ASCII
    /// characters); kept as long as the job is.
    #[serde(default)]
    #[schema(pattern = r"^[!-~]{1,200}$")]
    pub idempotency_key: Option<String>,
}

/// `initial_ms × factor^(n-1)` after the n-th failed attempt, at most
/// `max_ms`; half of each wait is random (jitter).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    /// Default 1000.
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(minimum = 0, maximum = 86_400_000)]
    pub initial_ms: Option<u64>,
    /// Default 2.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub factor: Option<f64>,
    /// Default 300000 (5 minutes).
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(minimum = 0, maximum = 86_400_000)]
    pub max_ms: Option<u64>,
}

/// A job accepted: `202`, or `200` for a submission whose idempotency key
/// names an existing job (that job).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmittedJob {
    pub id: String,
    pub state: JobState,
}

/// A job: its state, attempts and, once it ran, its result.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub state: JobState,
    pub priority: Priority,
    /// The stored script it runs; `null` for inline source.
    pub script: Option<String>,
    pub idempotency_key: Option<String>,
    pub max_attempts: i64,
    pub backoff: BackoffView,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<JobAttemptView>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    /// When it is (or was) due to run next.
    pub run_at: String,
    pub finished_at: Option<String>,
    /// The last run's response, `{"status": HTTP status, "body": envelope}`,
    /// once the job succeeded, or failed for good after running.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// The wait between a job's attempts, as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackoffView {
    pub initial_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
}

/// One attempt of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobAttemptView {
    pub attempt: i64,
    /// Which worker ran it (`host-pid-random`).
    pub worker: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// `running`, `succeeded`, `failed`, `lost` (its worker stopped
    /// renewing its lease) or `cancelled`.
    pub outcome: String,
    /// `{"kind", "message"}` of a failed or lost attempt.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

/// One line of a job list.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobSummary {
    pub id: String,
    pub state: JobState,
    pub priority: Priority,
    pub script: Option<String>,
    /// Attempts started.
    pub attempts: i64,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

/// `GET /api/v1/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobSummary>,
}

/// The query of `GET /api/v1/jobs`; any other parameter is a 400.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs in this state (`dead`: the dead-letter queue).
    state: Option<JobState>,
    /// Jobs per answer (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        match e {
            JobError::NotFound { id } => ApiError::JobNotFound { id },
            conflict @ JobError::Conflict { .. } => ApiError::JobStateConflict(conflict.to_string()),
            conflict @ JobError::IdempotencyConflict { .. } => ApiError::IdempotencyConflict(conflict.to_string()),
            JobError::Database(e) => e.into(),
        }
    }
}

/// The JSON text of `value` with object keys sorted: equal bodies hash
/// equal whatever their key order.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect::<Map<_, _>>(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// When a job is due: now, `run_at`, or `delay_s` from now.
fn due_at(body: &SubmitJob, now: i64) -> Result<i64, ApiError> {
    match (&body.run_at, body.delay_s) {
        (Some(_), Some(_)) => Err(ApiError::invalid("give `run_at` or `delay_s`, not both")),
        (Some(at), None) => chrono::DateTime::parse_from_rfc3339(at)
            .map(|t| t.timestamp_millis().max(now))
            .map_err(|e| {
                ApiError::invalid(format!(
                    "`run_at` {at:?} is not an RFC 3339 time ({e}); write it as 2030-01-02T03:04:05Z"
                ))
            }),
        (None, Some(delay)) if !(0.0..=MAX_DELAY_S).contains(&delay) => Err(ApiError::invalid(format!(
            "`delay_s` must be 0 to {MAX_DELAY_S} (a year), not {delay}"
        ))),
        #[allow(clippy::cast_possible_truncation)] // at most a year in ms
        (None, Some(delay)) => Ok(now + (delay * 1000.0).round() as i64),
        (None, None) => Ok(now),
    }
}

/// The scheduling settings of a submission, checked.
fn backoff_of(spec: Option<&BackoffSpec>) -> Result<Backoff, ApiError> {
    let none = BackoffSpec::default();
    let spec = spec.unwrap_or(&none);
    let backoff = Backoff {
        initial_ms: spec.initial_ms.unwrap_or(Backoff::DEFAULT.initial_ms),
        factor: spec.factor.unwrap_or(Backoff::DEFAULT.factor),
        max_ms: spec.max_ms.unwrap_or(Backoff::DEFAULT.max_ms),
    };
    let day_ms = 86_400_000;
    if backoff.initial_ms > day_ms || backoff.max_ms > day_ms {
        return Err(ApiError::invalid(
            "`backoff.initial_ms` and `backoff.max_ms` must be 0 to 86400000 (a day)",
        ));
    }
    if !(1.0..=100.0).contains(&backoff.factor) {
        return Err(ApiError::invalid(format!(
            "`backoff.factor` must be 1 to 100, not {}",
            backoff.factor
        )));
    }
    Ok(backoff)
}

/// The run part of a submission, as the execute request a worker runs.
fn run_spec(raw: &Value) -> Value {
    let mut spec = Map::new();
    for key in ["script", "name", "version", "params", "request", "limits"] {
        if let Some(value) = raw.get(key).filter(|v| !v.is_null()) {
            spec.insert(key.to_owned(), value.clone());
        }
    }
    Value::Object(spec)
}

/// Check what the job will run now, so a bad submission is a 4xx, not a dead job.
async fn check_target(state: &AppState, body: &SubmitJob) -> Result<(), ApiError> {
    match (&body.script, &body.name) {
        (Some(script), None) => {
            if body.version.is_some() {
                return Err(ApiError::invalid("`version` goes with `name` (a stored script)"));
            }
            let limit = state.config().max_script_bytes;
            if script.len() > limit {
                return Err(ApiError::ScriptTooLarge {
                    size: script.len(),
                    limit,
                });
            }
        }
        (None, Some(name)) => {
            if state.stored(name, body.version).await?.is_none() {
                return Err(ApiError::ScriptNotFound {
                    name: name.clone(),
                    version: body.version,
                });
            }
        }
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of `script` (AVAP source) and `name` (a stored script)",
            ));
        }
    }
    match &body.params {
        None | Some(Value::Null | Value::Object(_)) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "`params` must be a JSON object (the body addParam reads)",
            ));
        }
    }
    let bad_key = |key: &String| !(1..=200).contains(&key.len()) || key.bytes().any(|b| !b.is_ascii_graphic());
    if body.idempotency_key.as_ref().is_some_and(bad_key) {
        return Err(ApiError::invalid(
            "`idempotency_key` must be 1 to 200 visible ASCII characters (no spaces)",
        ));
    }
    if body.max_attempts.is_some_and(|n| !(1..=MAX_ATTEMPTS).contains(&n)) {
        return Err(ApiError::invalid(format!("`max_attempts` must be 1 to {MAX_ATTEMPTS}")));
    }
    Ok(())
}

/// Queue a job.
///
/// The job is stored before the answer: once accepted it runs at least
/// once, whatever happens to this node or to NATS.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    request_body = SubmitJob,
    responses(
        (status = 202, description = "Queued.", body = SubmittedJob),
        (status = 200, description = "A job with this `idempotency_key` and the same body exists: that job.", body = SubmittedJob),
        (status = 400, description = "An invalid request (`InvalidJson`, `InvalidRequest`).", body = ApiErrorBody),
        (status = 404, description = "No such stored script or version (`ScriptNotFound`).", body = ApiErrorBody),
        (status = 409, description = "The `idempotency_key` belongs to a job submitted with another body (`IdempotencyConflict`).", body = ApiErrorBody),
        (status = 413, description = "The body (`BodyTooLarge`) or the script (`ScriptTooLarge`) is over the server's limit.", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`), or the queue holds `jobs_max_queued` unfinished jobs (`JobQueueFull`): nothing was queued.", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn submit(State(state): State<AppState>, actor: Actor, request: Request) -> Result<Response, ApiError> {
    let bytes = read_body(request, &state).await?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::invalid("the body must be a JSON object, not an array"));
    }
    let body: SubmitJob = parse(&bytes)?;
    let raw: Value = parse(&bytes)?;
    check_target(&state, &body).await?;
    let now = now_ms();
    let job = NewJob {
        id: new_id()?,
        idempotency_key: body.idempotency_key.clone(),
        request_sha256: hex::encode(Sha256::digest(canonical(&raw).as_bytes())),
        priority: body.priority.unwrap_or_default(),
        script: body.name.clone().filter(|_| body.script.is_none()),
        spec: run_spec(&raw).to_string(),
        max_attempts: i64::from(body.max_attempts.unwrap_or(3)),
        backoff: backoff_of(body.backoff.as_ref())?,
        run_at: due_at(&body, now)?,
    };
    let jobs = state.jobs();
    // The queue is bounded: past the cap a submission is refused (it is
    // counted before it is written, so two racing submissions may both
    // pass at the cap: the bound holds to within the concurrent ones).
    let limit = jobs.config().max_unfinished;
    if u64::try_from(jobs.store().unfinished().await?).unwrap_or(0) >= limit {
        return Err(ApiError::JobQueueFull { limit });
    }
    match jobs.store().submit(&job, &actor).await? {
        Submitted::Created => {
            jobs.announce();
            state.metrics().job_submitted();
            let reply = SubmittedJob {
                id: job.id,
                state: JobState::Queued,
            };
            Ok((StatusCode::ACCEPTED, Json(reply)).into_response())
        }
        Submitted::Existing { id, state } => Ok((StatusCode::OK, Json(SubmittedJob { id, state })).into_response()),
    }
}

fn attempt_view(a: AttemptRecord) -> JobAttemptView {
    JobAttemptView {
        attempt: a.attempt,
        worker: a.worker,
        started_at: rfc3339(a.started_at),
        finished_at: a.finished_at.map(rfc3339),
        outcome: a.outcome,
        error: a.error,
    }
}

fn job_view(job: JobRecord, attempts: Vec<AttemptRecord>) -> JobView {
    JobView {
        id: job.id,
        state: job.state,
        priority: job.priority,
        script: job.script,
        idempotency_key: job.idempotency_key,
        max_attempts: job.max_attempts,
        backoff: BackoffView {
            initial_ms: job.backoff.initial_ms,
            factor: job.backoff.factor,
            max_ms: job.backoff.max_ms,
        },
        attempts: attempts.into_iter().map(attempt_view).collect(),
        created_at: rfc3339(job.created_at),
        updated_at: rfc3339(job.updated_at),
        run_at: rfc3339(job.run_at),
        finished_at: job.finished_at.map(rfc3339),
        result: job.result,
    }
}

async fn view(state: &AppState, id: &str) -> Result<JobView, ApiError> {
    let (job, attempts) = state
        .jobs()
        .store()
        .get(id)
        .await?
        .ok_or_else(|| ApiError::JobNotFound { id: id.to_owned() })?;
    Ok(job_view(job, attempts))
}

/// A job's state, attempts and result.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 404, description = "No such job, or it finished longer than `jobs_retention_s` ago (`JobNotFound`).", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    view(&state, &id).await.map(Json)
}

/// Cancel a job that has not finished: a queued one never runs, a running
/// one is stopped at its worker's next heartbeat.
#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "Cancelled: the job now.", body = JobView),
        (status = 404, description = "No such job (`JobNotFound`).", body = ApiErrorBody),
        (status = 409, description = "It already finished: succeeded, dead or cancelled (`JobStateConflict`).", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    state.jobs().store().cancel(&id, &actor).await?;
    state.metrics().job_finished("cancelled");
    view(&state, &id).await.map(Json)
}

/// Jobs, newest first; `?state=dead` is the dead-letter queue.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "Jobs.", body = JobList),
        (status = 400, description = "A bad query: an unknown or repeated parameter, an unknown state, `limit` out of range (`InvalidRequest`).", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid(format!("bad query string: {}", e.body_text())))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "`limit` must be 1 to {MAX_LIMIT}, not {limit}"
        )));
    }
    let jobs = state.jobs().store().list(params.state, limit).await?;
    let jobs = jobs
        .into_iter()
        .map(|job| JobSummary {
            id: job.id,
            state: job.state,
            priority: job.priority,
            script: job.script,
            attempts: job.attempts,
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            finished_at: job.finished_at.map(rfc3339),
        })
        .collect();
    Ok(Json(JobList { jobs }))
}

/// Queue a dead job again, with a fresh set of `max_attempts`.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/retry",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 202, description = "Queued again.", body = SubmittedJob),
        (status = 404, description = "No such job (`JobNotFound`).", body = ApiErrorBody),
        (status = 409, description = "The job is not dead (`JobStateConflict`).", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn retry(
    State(state): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<SubmittedJob>), ApiError> {
    let jobs = state.jobs();
    jobs.store().requeue_dead(&id, &actor).await?;
    jobs.announce();
    Ok((
        StatusCode::ACCEPTED,
        Json(SubmittedJob {
            id,
            state: JobState::Queued,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bodies_hash_equal_whatever_the_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"script": "x", "params": {"a": 1, "b": [1, {"d": 1, "c": 2}]}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"params": {"b": [1, {"c": 2, "d": 1}], "a": 1}, "script": "x"}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
    }

    #[test]
    fn due_times_and_backoff_are_checked() {
        let body = |v: Value| serde_json::from_value::<SubmitJob>(v).unwrap();
        let now = 1_000_000;
        assert_eq!(
            due_at(&body(serde_json::json!({"delay_s": 1.5})), now).unwrap(),
            now + 1500
        );
        assert_eq!(due_at(&body(serde_json::json!({})), now).unwrap(), now);
        assert_eq!(
            due_at(&body(serde_json::json!({"run_at": "1970-01-01T00:16:41Z"})), now).unwrap(),
            1_001_000
        );
        assert_eq!(
            due_at(&body(serde_json::json!({"run_at": "1970-01-01T00:00:00Z"})), now).unwrap(),
            now,
            "a past time is now"
        );
        assert!(due_at(&body(serde_json::json!({"run_at": "tomorrow"})), now).is_err());
        assert!(due_at(&body(serde_json::json!({"delay_s": -1})), now).is_err());
        assert!(
            due_at(
                &body(serde_json::json!({"delay_s": 1, "run_at": "1970-01-01T00:00:00Z"})),
                now
            )
            .is_err()
        );
        assert!(
            backoff_of(Some(&BackoffSpec {
                factor: Some(0.5),
                ..BackoffSpec::default()
            }))
            .is_err()
        );
        assert_eq!(backoff_of(None).unwrap(), Backoff::DEFAULT);
    }
}
