-- The job queue (PostgreSQL dialect of sqlite/0006_jobs.sql): work that outlives a request.
-- One row per job; `job_attempts` keeps every attempt with its outcome.
-- The NATS JetStream backend keeps its job state here too (the messages in
-- JetStream only point at rows), so both backends share this schema.
--
-- Times are milliseconds since the Unix epoch (the queue compares and
-- orders them on every claim). `priority` is 0 high, 1 normal, 2 low.
-- `state` is queued, running, succeeded, failed (waiting for its retry),
-- dead or cancelled. A running job belongs to `worker` until
-- `lease_until`; a lease that runs out puts the job back in the queue.

CREATE TABLE jobs (
    id                 TEXT PRIMARY KEY,
    idempotency_key    TEXT UNIQUE,
    request_sha256     TEXT NOT NULL,
    state              TEXT NOT NULL,
    priority           BIGINT NOT NULL,
    script             TEXT,
    spec               TEXT NOT NULL,
    max_attempts       BIGINT NOT NULL,
    attempt_floor      BIGINT NOT NULL DEFAULT 0,
    backoff_initial_ms BIGINT NOT NULL,
    backoff_factor     DOUBLE PRECISION NOT NULL,
    backoff_max_ms     BIGINT NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    run_at             BIGINT NOT NULL,
    lease_until        BIGINT,
    worker             TEXT,
    dispatched_at      BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    finished_at        BIGINT,
    result             TEXT,
    actor              TEXT NOT NULL
);

CREATE INDEX jobs_claim ON jobs (state, priority, run_at);
CREATE INDEX jobs_finished ON jobs (finished_at);

CREATE TABLE job_attempts (
    job_id      TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    worker      TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    outcome     TEXT NOT NULL,
    error       TEXT,
    PRIMARY KEY (job_id, attempt)
);
