//! Jobs: work that outlives the request that asked for it. One API, one
//! behaviour, two backends.
//!
//! * **Where a job's state lives: always the registry database** (`jobs`
//!   and `job_attempts`, migration 0006; [`store`]). Every state change is
//!   a compare-and-set on `(id, state, attempts)` in one transaction with
//!   its audit row, so two workers racing for a job, a late heartbeat or a
//!   cancel crossing a finish can never both win.
//! * **How jobs reach workers: the backend** (`jobs_url`).
//!   * Embedded (empty `jobs_url`, the default): workers claim the next due
//!     job straight from the database (`UPDATE … WHERE id = (SELECT …
//!     ORDER BY priority, run_at LIMIT 1) AND state IN (queued, failed)
//!     RETURNING …`), woken at once by local submissions and every
//!     [`POLL`] otherwise (for jobs submitted elsewhere or come due).
//!   * NATS `JetStream` (`jobs_url = "nats://…"`, [`nats`]): one work-queue
//!     stream with a subject and a durable pull consumer per priority;
//!     a message is only a pointer `{id, attempts}` to a due job. A
//!     dispatcher on every node publishes due, undispatched jobs (so a job
//!     is accepted once it is in the database, also while NATS is down, and
//!     delayed jobs and retries wait in the database, not in NATS: the
//!     installed nats-server 2.9 has no per-message delay). Workers fetch
//!     high, then normal, then low, and claim the row as above by id.
//! * **At least once**: a claimed job holds a lease (`jobs_lease_ms`, the
//!   ack deadline) that its worker renews while it runs (and acks NATS
//!   progress); a lease that runs out (worker killed, partitioned) is
//!   found by the sweeper on any node, the attempt is recorded as `lost`
//!   and the job queued again at once. A script may therefore run more than
//!   once: its query has `avap_job_id` and `avap_job_attempt`
//!   (`addParam(avap_job_id, id)`) to make its effects idempotent.
//!   Submissions with the same `idempotency_key` are one job.
//! * **Retries**: a failed attempt waits `initial × factor^(n-1)` (at most
//!   `max`, half of it random jitter) in state `failed`, then runs again,
//!   up to `max_attempts`; then the job is `dead` (the dead-letter queue,
//!   `GET /api/v1/jobs?state=dead`) until someone retries it. Compile
//!   errors, missing scripts and denied capabilities are dead at once:
//!   another attempt would fail the same way.
//! * **Priorities**: `high` before `normal` before `low` among due jobs.
//! * A job's run gets the server's per-run limits except the time limit,
//!   which is `jobs_max_time_ms` (default 5 minutes).
//! * Finished jobs are kept `jobs_retention_s`, then pruned with their
//!   attempts.

pub(crate) mod api;
mod nats;
mod store;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

pub use api::{JobAttemptView, JobList, JobSummary, JobView, SubmitJob, SubmittedJob};
pub use worker::{JobsRuntime, start};

use super::store::Store;

/// How often idle workers (embedded backend) and the dispatcher (NATS) look
/// for due jobs that no local submission announced.
const POLL: Duration = Duration::from_millis(200);

/// How urgent a job is: among due jobs, `high` runs before `normal` before `low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The stored order: lower runs first.
    fn rank(self) -> i64 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    fn from_rank(rank: i64) -> Priority {
        match rank {
            0 => Priority::High,
            1 => Priority::Normal,
            _ => Priority::Low,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to run (due at `run_at`).
    Queued,
    /// A worker holds it.
    Running,
    /// The run ended without an error; `result` holds its envelope.
    Succeeded,
    /// An attempt failed; the next one is due at `run_at`.
    Failed,
    /// Out of attempts, or failed in a way a retry cannot fix: the
    /// dead-letter queue (`POST /api/v1/jobs/{id}/retry` queues it again).
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Nothing more will happen to it (unless a dead job is retried).
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead | JobState::Cancelled)
    }
}

/// How long a job waits before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        initial_ms: 1000,
        factor: 2.0,
        max_ms: 300_000,
    };

    /// The wait after `failed` failed attempts (1 or more): `initial ×
    /// factor^(failed-1)`, at most `max`, with "equal jitter": half of it
    /// fixed, half uniformly random (`random` in `[0, 1)`), so jobs that
    /// failed together do not all come back at the same instant.
    pub fn delay_ms(&self, failed: u64, random: f64) -> u64 {
        let exponent = i32::try_from(failed.saturating_sub(1)).unwrap_or(i32::MAX);
        #[allow(clippy::cast_precision_loss)] // milliseconds far below 2^52
        let full = (self.initial_ms as f64 * self.factor.powi(exponent)).min(self.max_ms as f64);
        let half = full / 2.0;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // within 0..=max_ms
        let delay = (half + half * random.clamp(0.0, 1.0)) as u64;
        delay
    }
}

/// Which backend carries jobs to workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobsBackend {
    /// The registry database itself (`jobs_url` empty).
    Database,
    /// NATS `JetStream` at this `nats://` URL.
    Nats(String),
}

/// The `jobs_*` settings.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    pub backend: JobsBackend,
    /// Jobs this node runs at once (0: it runs none, only accepts them).
    pub workers: usize,
    /// The most a job's run may take (its time limit's maximum).
    pub max_time: Duration,
    /// How long a claimed job stays its worker's without a heartbeat (the
    /// ack deadline): a worker that dies loses its jobs this long after.
    pub lease: Duration,
    /// Finished jobs are deleted this long after they finished.
    pub retention: Duration,
    /// The namespace of the NATS stream, subjects and consumers.
    pub prefix: String,
    /// Jobs not finished (queued, waiting for a retry, running) the queue
    /// holds at most: one more submission is refused (503 `JobQueueFull`),
    /// so a client cannot fill the registry's disk.
    pub max_unfinished: u64,
}

impl JobsConfig {
    pub const DEFAULT_MAX_TIME: Duration = Duration::from_mins(5);
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
    pub const DEFAULT_RETENTION: Duration = Duration::from_hours(24 * 7);
    pub const DEFAULT_MAX_UNFINISHED: u64 = 100_000;
}

impl Default for JobsConfig {
    fn default() -> JobsConfig {
        JobsConfig {
            backend: JobsBackend::Database,
            workers: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            max_time: JobsConfig::DEFAULT_MAX_TIME,
            lease: JobsConfig::DEFAULT_LEASE,
            retention: JobsConfig::DEFAULT_RETENTION,
            prefix: "avap".to_owned(),
            max_unfinished: JobsConfig::DEFAULT_MAX_UNFINISHED,
        }
    }
}

/// The job queue a node shares between its API handlers and its workers.
#[derive(Debug, Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: store::JobStore,
    config: JobsConfig,
    /// Bumped on every submission or requeue here: local workers (embedded
    /// backend) and the dispatcher (NATS) look at once instead of at the
    /// next poll.
    submitted: watch::Sender<u64>,
    /// The `JetStream` queue once connected (NATS backend).
    nats: tokio::sync::OnceCell<nats::Queue>,
}

impl Jobs {
    pub fn new(store: Store, config: JobsConfig) -> Jobs {
        Jobs {
            inner: Arc::new(Inner {
                store: store::JobStore::new(store),
                config,
                submitted: watch::Sender::new(0),
                nats: tokio::sync::OnceCell::new(),
            }),
        }
    }

    pub fn config(&self) -> &JobsConfig {
        &self.inner.config
    }

    fn store(&self) -> &store::JobStore {
        &self.inner.store
    }

    /// Wake whoever moves due jobs along on this node.
    fn announce(&self) {
        self.inner.submitted.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `ok`, `degraded` (NATS not reachable now) or `database` (the
    /// embedded backend): for the health endpoint.
    pub fn health(&self) -> &'static str {
        match &self.inner.config.backend {
            JobsBackend::Database => "database",
            JobsBackend::Nats(_) => match self.inner.nats.get() {
                Some(queue) if queue.is_connected() => "ok",
                _ => "degraded",
            },
        }
    }

    /// Jobs by state and priority, for the metrics.
    pub async fn counts(&self) -> anyhow::Result<Vec<(JobState, Priority, i64)>> {
        self.store().counts().await
    }
}

/// Milliseconds since the Unix epoch: how the queue stores times.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 UTC with milliseconds, for the API.
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A uniformly random number in `[0, 1)` (the backoff's jitter).
fn unit_random() -> f64 {
    #[allow(clippy::cast_precision_loss)] // 53 random bits fit exactly
    let r = (getrandom::u64().unwrap_or(0) >> 11) as f64 / (1u64 << 53) as f64;
    r
}

/// A new job id: 128 random bits as 32 hex digits.
fn new_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("cannot get random bytes for a job id: {e}"))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_within_half() {
        let b = Backoff {
            initial_ms: 100,
            factor: 3.0,
            max_ms: 1000,
        };
        assert_eq!(b.delay_ms(1, 0.0), 50);
        assert_eq!(b.delay_ms(1, 0.999_999), 99);
        assert_eq!(b.delay_ms(2, 0.0), 150);
        assert_eq!(b.delay_ms(3, 1.0), 900);
        assert_eq!(b.delay_ms(4, 0.0), 500, "capped at max: 2700 → 1000, half fixed");
        assert_eq!(b.delay_ms(u64::MAX, 1.0), 1000);
        let r = unit_random();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn states_and_priorities_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        for p in Priority::ALL {
            assert_eq!(Priority::from_rank(p.rank()), p);
        }
        assert!(JobState::Dead.is_finished() && !JobState::Failed.is_finished());
    }
}
