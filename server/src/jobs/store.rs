//! The job queue's SQL (tables `jobs` and `job_attempts`, migration 0006),
//! written once for `SQLite` and `PostgreSQL` like the registry's
//! (`store.rs`: `$N` placeholders, no dialect-only syntax).
//!
//! Every change of a job is a compare-and-set: the `UPDATE` names the state
//! (and, for a running job, the attempt) it expects, and only the writer
//! that changed one row goes on. Each commits with its audit row. Times are
//! epoch milliseconds.

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{Backoff, JobState, Priority, now_ms};
use crate::store::{Actor, AuditRow, Store, insert_audit_rows};

/// What a submission stores.
#[derive(Debug)]
pub struct NewJob {
    pub id: String,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the submitted body: a key reused for other work is refused.
    pub request_sha256: String,
    pub priority: Priority,
    /// The stored script it runs (`None`: inline source).
    pub script: Option<String>,
    /// The run as an execute request (JSON).
    pub spec: String,
    pub max_attempts: i64,
    pub backoff: Backoff,
    pub run_at: i64,
}

/// What [`JobStore::submit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Created,
    /// A job with this idempotency key and body exists: this one.
    Existing {
        id: String,
        state: JobState,
    },
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no job {id}")]
    NotFound { id: String },
    #[error("job {id} is {state}: {why}", state = state.as_str())]
    Conflict {
        id: String,
        state: JobState,
        why: &'static str,
    },
    #[error("the idempotency key {key:?} belongs to job {id}, submitted with a different body")]
    IdempotencyConflict { key: String, id: String },
    #[error(transparent)]
    Database(#[from] anyhow::Error),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> JobError {
        JobError::Database(e.into())
    }
}

/// A job a worker now holds.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    /// This attempt's number (1 for the first).
    pub attempt: i64,
    pub spec: String,
    pub script: Option<String>,
    /// When it became due: queue-to-start latency is measured from here.
    pub due_at: i64,
}

/// What a claim by id found.
#[derive(Debug)]
pub enum Claim {
    Claimed(Claimed),
    /// Still waiting: due at this time.
    NotYet(i64),
    /// Taken, finished, cancelled, or at another attempt: nothing to do.
    Gone,
}

/// How an attempt ended.
#[derive(Debug)]
pub enum Finish {
    Succeeded {
        result: Value,
    },
    Failed {
        /// `{"kind", "message"}`.
        error: Value,
        /// The run's response, when it ran.
        result: Option<Value>,
        /// Whether another attempt could end otherwise.
        retryable: bool,
    },
}

/// One job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: String,
    pub state: JobState,
    pub priority: Priority,
    pub script: Option<String>,
    pub idempotency_key: Option<String>,
    pub max_attempts: i64,
    pub attempts: i64,
    pub backoff: Backoff,
    pub run_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    pub result: Option<Value>,
}

/// One attempt as stored.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: i64,
    pub worker: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: String,
    pub error: Option<Value>,
}

const JOB_COLUMNS: &str = "id, state, priority, script, idempotency_key, max_attempts, attempts, \
     backoff_initial_ms, backoff_factor, backoff_max_ms, run_at, created_at, updated_at, finished_at, result";

type JobRow = (
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    f64,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<String>,
);

type AttemptRow = (i64, String, i64, Option<i64>, String, Option<String>);

fn job_record(row: JobRow) -> JobRecord {
    let (
        id,
        state,
        priority,
        script,
        idempotency_key,
        max_attempts,
        attempts,
        initial_ms,
        factor,
        max_ms,
        run_at,
        created_at,
        updated_at,
        finished_at,
        result,
    ) = row;
    JobRecord {
        id,
        // Only this module writes `state`, always one of these.
        state: JobState::parse(&state).unwrap_or(JobState::Dead),
        priority: Priority::from_rank(priority),
        script,
        idempotency_key,
        max_attempts,
        attempts,
        backoff: Backoff {
            initial_ms: u64::try_from(initial_ms).unwrap_or(0),
            factor,
            max_ms: u64::try_from(max_ms).unwrap_or(0),
        },
        run_at,
        created_at,
        updated_at,
        finished_at,
        result: result.and_then(|text| serde_json::from_str(&text).ok()),
    }
}

/// The audit row of a job's change.
fn audit(actor: &Actor, action: &'static str, id: &str, script: Option<&str>, outcome: &str) -> AuditRow {
    let mut row = AuditRow::new(actor, action, outcome);
    row.script = script.map(str::to_owned);
    row.subject = Some(id.to_owned());
    row
}

/// A worker as an audit actor.
pub fn worker_actor(worker: &str) -> Actor {
    Actor {
        actor: format!("worker:{worker}"),
        request_id: None,
    }
}

#[derive(Debug, Clone)]
pub struct JobStore {
    store: Store,
}

impl JobStore {
    pub fn new(store: Store) -> JobStore {
        JobStore { store }
    }

    /// Store a new job, or find the one its idempotency key names.
    pub async fn submit(&self, job: &NewJob, actor: &Actor) -> Result<Submitted, JobError> {
        let mut tx = self.store.begin_write().await?;
        if let Some(key) = &job.idempotency_key {
            let found: Option<(String, String, String)> =
                sqlx::query_as("SELECT id, state, request_sha256 FROM jobs WHERE idempotency_key = $1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((id, state, sha256)) = found {
                if sha256 != job.request_sha256 {
                    return Err(JobError::IdempotencyConflict { key: key.clone(), id });
                }
                let state = JobState::parse(&state).unwrap_or(JobState::Dead);
                return Ok(Submitted::Existing { id, state });
            }
        }
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, idempotency_key, request_sha256, state, priority, script, spec, max_attempts, \
             backoff_initial_ms, backoff_factor, backoff_max_ms, run_at, created_at, updated_at, actor) \
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13)",
        )
        .bind(&job.id)
        .bind(job.idempotency_key.as_deref())
        .bind(&job.request_sha256)
        .bind(job.priority.rank())
        .bind(job.script.as_deref())
        .bind(&job.spec)
        .bind(job.max_attempts)
        .bind(i64::try_from(job.backoff.initial_ms).unwrap_or(i64::MAX))
        .bind(job.backoff.factor)
        .bind(i64::try_from(job.backoff.max_ms).unwrap_or(i64::MAX))
        .bind(job.run_at)
        .bind(now)
        .bind(&actor.actor)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // Another node (PostgreSQL) stored the same key between our
            // SELECT and INSERT: that job is this one.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() && job.idempotency_key.is_some() => {
                drop(tx);
                return Box::pin(self.submit(job, actor)).await;
            }
            Err(e) => return Err(e.into()),
        }
        insert_audit_rows(
            &mut tx,
            &[audit(actor, "job_submit", &job.id, job.script.as_deref(), "ok")],
        )
        .await?;
        tx.commit().await?;
        Ok(Submitted::Created)
    }

    /// The next due job by priority, claimed for `worker` until `lease_until`.
    pub async fn claim_next(&self, worker: &str, lease_ms: i64) -> Result<Option<Claimed>> {
        let now = now_ms();
        self.claim_where(
            worker,
            now,
            lease_ms,
            "id = (SELECT id FROM jobs WHERE state IN ('queued', 'failed') AND run_at <= $3 \
             ORDER BY priority, run_at, created_at, id LIMIT 1)",
            None,
        )
        .await
    }

    /// Claim job `id` at attempt count `attempts` (a NATS message's pointer).
    pub async fn claim(&self, id: &str, attempts: i64, worker: &str, lease_ms: i64) -> Result<Claim> {
        let now = now_ms();
        if let Some(claimed) = self
            .claim_where(
                worker,
                now,
                lease_ms,
                "id = $4 AND attempts = $5 AND run_at <= $3",
                Some((id, attempts)),
            )
            .await?
        {
            return Ok(Claim::Claimed(claimed));
        }
        let found: Option<(String, i64, i64)> =
            sqlx::query_as("SELECT state, attempts, run_at FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *self.store.conn().await?)
                .await?;
        Ok(match found {
            Some((state, at, run_at))
                if at == attempts && matches!(JobState::parse(&state), Some(JobState::Queued | JobState::Failed)) =>
            {
                Claim::NotYet(run_at)
            }
            _ => Claim::Gone,
        })
    }

    async fn claim_where(
        &self,
        worker: &str,
        now: i64,
        lease_ms: i64,
        which: &str,
        by_id: Option<(&str, i64)>,
    ) -> Result<Option<Claimed>> {
        let mut tx = self.store.begin_write().await?;
        // `state IN (…)` again outside the subquery: on PostgreSQL a worker
        // that lost the race for the row re-checks it after the winner's
        // commit and updates nothing.
        let sql = format!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = $1, worker = $2, \
             updated_at = $3, dispatched_at = NULL \
             WHERE {which} AND state IN ('queued', 'failed') \
             RETURNING id, attempts, spec, script, run_at"
        );
        let mut query = sqlx::query_as(&sql).bind(now + lease_ms).bind(worker).bind(now);
        if let Some((id, attempts)) = by_id {
            query = query.bind(id).bind(attempts);
        }
        let row: Option<(String, i64, String, Option<String>, i64)> = query.fetch_optional(&mut *tx).await?;
        let Some((id, attempt, spec, script, run_at)) = row else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO job_attempts (job_id, attempt, worker, started_at, outcome) VALUES ($1, $2, $3, $4, 'running')",
        )
        .bind(&id)
        .bind(attempt)
        .bind(worker)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let outcome = format!("attempt {attempt}");
        insert_audit_rows(
            &mut tx,
            &[audit(
                &worker_actor(worker),
                "job_start",
                &id,
                script.as_deref(),
                &outcome,
            )],
        )
        .await?;
        tx.commit().await.context("cannot commit a job claim")?;
        Ok(Some(Claimed {
            id,
            attempt,
            spec,
            script,
            due_at: run_at,
        }))
    }

    /// Renew the lease of a running attempt; `false` when the job is no
    /// longer this attempt's (cancelled, or its lease ran out and it was
    /// queued again): the worker stops the run.
    pub async fn extend_lease(&self, id: &str, attempt: i64, lease_ms: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE jobs SET lease_until = $1 WHERE id = $2 AND state = 'running' AND attempts = $3")
                .bind(now_ms() + lease_ms)
                .bind(id)
                .bind(attempt)
                .execute(&mut *self.store.conn().await?)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Record how attempt `claimed` ended; the job's new state, or `None`
    /// when the job was no longer this attempt's (the outcome is dropped).
    pub async fn finish(&self, claimed: &Claimed, worker: &str, finish: Finish) -> Result<Option<JobState>> {
        let mut tx = self.store.begin_write().await?;
        let row: Option<(i64, i64, i64, f64, i64)> = sqlx::query_as(
            "SELECT max_attempts, attempt_floor, backoff_initial_ms, backoff_factor, backoff_max_ms \
             FROM jobs WHERE id = $1 AND state = 'running' AND attempts = $2",
        )
        .bind(&claimed.id)
        .bind(claimed.attempt)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((max_attempts, floor, initial_ms, factor, max_ms)) = row else {
            return Ok(None);
        };
        let now = now_ms();
        let (state, run_at, result, error, outcome) = match finish {
            Finish::Succeeded { result } => (JobState::Succeeded, now, Some(result), None, "ok".to_owned()),
            Finish::Failed {
                error,
                result,
                retryable,
            } => {
                let kind = error["kind"].as_str().unwrap_or("InternalError").to_owned();
                if retryable && claimed.attempt - floor < max_attempts {
                    let backoff = Backoff {
                        initial_ms: u64::try_from(initial_ms).unwrap_or(0),
                        factor,
                        max_ms: u64::try_from(max_ms).unwrap_or(0),
                    };
                    let failed = u64::try_from(claimed.attempt - floor).unwrap_or(1);
                    let wait = i64::try_from(backoff.delay_ms(failed, super::unit_random())).unwrap_or(i64::MAX);
                    (JobState::Failed, now.saturating_add(wait), result, Some(error), kind)
                } else {
                    (JobState::Dead, now, result, Some(error), kind)
                }
            }
        };
        let finished_at = state.is_finished().then_some(now);
        sqlx::query(
            "UPDATE jobs SET state = $1, run_at = $2, result = $3, finished_at = $4, updated_at = $5, \
             lease_until = NULL, worker = NULL, dispatched_at = NULL \
             WHERE id = $6 AND state = 'running' AND attempts = $7",
        )
        .bind(state.as_str())
        .bind(run_at)
        .bind(result.as_ref().map(Value::to_string))
        .bind(finished_at)
        .bind(now)
        .bind(&claimed.id)
        .bind(claimed.attempt)
        .execute(&mut *tx)
        .await?;
        let attempt_outcome = if state == JobState::Succeeded {
            "succeeded"
        } else {
            "failed"
        };
        self.end_attempt(
            &mut tx,
            &claimed.id,
            claimed.attempt,
            attempt_outcome,
            error.as_ref(),
            now,
        )
        .await?;
        let action = match state {
            JobState::Succeeded => "job_succeed",
            JobState::Failed => "job_fail",
            _ => "job_dead",
        };
        insert_audit_rows(
            &mut tx,
            &[audit(
                &worker_actor(worker),
                action,
                &claimed.id,
                claimed.script.as_deref(),
                &outcome,
            )],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(state))
    }

    async fn end_attempt(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        id: &str,
        attempt: i64,
        outcome: &str,
        error: Option<&Value>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE job_attempts SET finished_at = $1, outcome = $2, error = $3 WHERE job_id = $4 AND attempt = $5",
        )
        .bind(now)
        .bind(outcome)
        .bind(error.map(Value::to_string))
        .bind(id)
        .bind(attempt)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Running jobs whose lease ran out (their worker died or lost the
    /// database): the attempt is `lost` and the job queued again at once,
    /// or dead when that was its last attempt. Returns what changed.
    pub async fn expire_leases(&self, sweeper: &str) -> Result<Vec<(String, JobState)>> {
        let now = now_ms();
        let expired: Vec<(String, i64, i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, attempts, max_attempts, attempt_floor, script FROM jobs \
             WHERE state = 'running' AND lease_until < $1 ORDER BY lease_until LIMIT 100",
        )
        .bind(now)
        .fetch_all(&mut *self.store.conn().await?)
        .await?;
        let mut changed = Vec::new();
        for (id, attempt, max_attempts, floor, script) in expired {
            let state = if attempt - floor >= max_attempts {
                JobState::Dead
            } else {
                JobState::Queued
            };
            let mut tx = self.store.begin_write().await?;
            let done = sqlx::query(
                "UPDATE jobs SET state = $1, run_at = $2, finished_at = $3, updated_at = $2, lease_until = NULL, \
                 worker = NULL, dispatched_at = NULL \
                 WHERE id = $4 AND state = 'running' AND attempts = $5 AND lease_until < $2",
            )
            .bind(state.as_str())
            .bind(now)
            .bind(state.is_finished().then_some(now))
            .bind(&id)
            .bind(attempt)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                continue;
            }
            let error = serde_json::json!({
                "kind": "WorkerLost",
                "message": "the worker stopped renewing its lease (it died, or lost the database) before the attempt ended",
            });
            self.end_attempt(&mut tx, &id, attempt, "lost", Some(&error), now)
                .await?;
            let action = if state == JobState::Dead {
                "job_dead"
            } else {
                "job_lost"
            };
            insert_audit_rows(
                &mut tx,
                &[audit(
                    &worker_actor(sweeper),
                    action,
                    &id,
                    script.as_deref(),
                    "WorkerLost",
                )],
            )
            .await?;
            tx.commit().await?;
            changed.push((id, state));
        }
        Ok(changed)
    }

    /// Cancel a job that has not finished; its new state.
    pub async fn cancel(&self, id: &str, actor: &Actor) -> Result<JobState, JobError> {
        let mut tx = self.store.begin_write().await?;
        let found: Option<(String, i64, Option<String>)> =
            sqlx::query_as("SELECT state, attempts, script FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((state, attempts, script)) = found else {
            return Err(JobError::NotFound { id: id.to_owned() });
        };
        let state = JobState::parse(&state).unwrap_or(JobState::Dead);
        if state.is_finished() {
            return Err(JobError::Conflict {
                id: id.to_owned(),
                state,
                why: "only queued, failed or running jobs can be cancelled",
            });
        }
        let now = now_ms();
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $1, updated_at = $1, lease_until = NULL, \
             worker = NULL WHERE id = $2 AND state = $3 AND attempts = $4",
        )
        .bind(now)
        .bind(id)
        .bind(state.as_str())
        .bind(attempts)
        .execute(&mut *tx)
        .await?;
        if state == JobState::Running {
            self.end_attempt(&mut tx, id, attempts, "cancelled", None, now).await?;
        }
        insert_audit_rows(&mut tx, &[audit(actor, "job_cancel", id, script.as_deref(), "ok")]).await?;
        tx.commit().await?;
        Ok(JobState::Cancelled)
    }

    /// Queue a dead job again with a fresh set of attempts.
    pub async fn requeue_dead(&self, id: &str, actor: &Actor) -> Result<(), JobError> {
        let mut tx = self.store.begin_write().await?;
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempt_floor = attempts, run_at = $1, updated_at = $1, \
             finished_at = NULL, dispatched_at = NULL WHERE id = $2 AND state = 'dead'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            let state: Option<(String,)> = sqlx::query_as("SELECT state FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match state {
                None => JobError::NotFound { id: id.to_owned() },
                Some((state,)) => JobError::Conflict {
                    id: id.to_owned(),
                    state: JobState::parse(&state).unwrap_or(JobState::Dead),
                    why: "only dead jobs can be retried",
                },
            });
        }
        let script: Option<(Option<String>,)> = sqlx::query_as("SELECT script FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let script = script.and_then(|(s,)| s);
        insert_audit_rows(&mut tx, &[audit(actor, "job_retry", id, script.as_deref(), "ok")]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Due jobs not yet handed to NATS (or handed over so long ago that the
    /// message may be gone), most urgent first: `(id, attempts, priority)`.
    pub async fn undispatched(&self, redispatch_ms: i64, limit: i64) -> Result<Vec<(String, i64, Priority)>> {
        let now = now_ms();
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT id, attempts, priority FROM jobs WHERE state IN ('queued', 'failed') AND run_at <= $1 \
             AND (dispatched_at IS NULL OR dispatched_at < $2) ORDER BY priority, run_at LIMIT $3",
        )
        .bind(now)
        .bind(now - redispatch_ms)
        .bind(limit)
        .fetch_all(&mut *self.store.conn().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, attempts, priority)| (id, attempts, Priority::from_rank(priority)))
            .collect())
    }

    /// NATS has the message for `(id, attempts)`.
    pub async fn mark_dispatched(&self, id: &str, attempts: i64) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET dispatched_at = $1 WHERE id = $2 AND attempts = $3 AND state IN ('queued', 'failed')",
        )
        .bind(now_ms())
        .bind(id)
        .bind(attempts)
        .execute(&mut *self.store.conn().await?)
        .await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<(JobRecord, Vec<AttemptRecord>)>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let Some(row) = sqlx::query_as::<_, JobRow>(&sql)
            .bind(id)
            .fetch_optional(&mut *self.store.conn().await?)
            .await?
        else {
            return Ok(None);
        };
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT attempt, worker, started_at, finished_at, outcome, error FROM job_attempts \
             WHERE job_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&mut *self.store.conn().await?)
        .await?;
        let attempts = attempts
            .into_iter()
            .map(
                |(attempt, worker, started_at, finished_at, outcome, error)| AttemptRecord {
                    attempt,
                    worker,
                    started_at,
                    finished_at,
                    outcome,
                    error: error.and_then(|text| serde_json::from_str(&text).ok()),
                },
            )
            .collect();
        Ok(Some((job_record(row), attempts)))
    }

    /// Jobs newest first, in `state` if given.
    pub async fn list(&self, state: Option<JobState>, limit: i64) -> Result<Vec<JobRecord>> {
        let rows: Vec<JobRow> = match state {
            Some(state) => {
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
                );
                sqlx::query_as(&sql)
                    .bind(state.as_str())
                    .bind(limit)
                    .fetch_all(&mut *self.store.conn().await?)
                    .await?
            }
            None => {
                let sql = format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT $1");
                sqlx::query_as(&sql)
                    .bind(limit)
                    .fetch_all(&mut *self.store.conn().await?)
                    .await?
            }
        };
        Ok(rows.into_iter().map(job_record).collect())
    }

    /// How many jobs are not finished: queued, waiting for a retry, running.
    pub async fn unfinished(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'failed', 'running')")
            .fetch_one(&mut *self.store.conn().await?)
            .await?;
        Ok(n)
    }

    /// How many jobs there are by state and priority.
    pub async fn counts(&self) -> Result<Vec<(JobState, Priority, i64)>> {
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT state, priority, COUNT(*) FROM jobs GROUP BY state, priority")
                .fetch_all(&mut *self.store.conn().await?)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(state, priority, n)| Some((JobState::parse(&state)?, Priority::from_rank(priority), n)))
            .collect())
    }

    /// Delete jobs that finished before `cutoff`, with their attempts.
    pub async fn prune(&self, cutoff: i64) -> Result<u64> {
        let mut tx = self.store.begin_write().await?;
        sqlx::query(
            "DELETE FROM job_attempts WHERE job_id IN (SELECT id FROM jobs WHERE finished_at < $1 \
             AND state IN ('succeeded', 'dead', 'cancelled'))",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let done =
            sqlx::query("DELETE FROM jobs WHERE finished_at < $1 AND state IN ('succeeded', 'dead', 'cancelled')")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}
