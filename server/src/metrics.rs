//! `GET /api/v1/metrics`: the [`Metrics`] every handler shares, in a
//! `prometheus-client` registry, exposed as `OpenMetrics` text (which
//! Prometheus scrapes as it does its own text format; the sample names are
//! the same).
//!
//! * `avap_requests_total{route,status}`: every response, by route template
//!   (matched against [`ROUTES`](super::openapi::ROUTES); `unmatched` for the
//!   404 fallback) and status, and `avap_request_duration_seconds{route,status}`
//!   (histogram), time from the request's arrival at the middleware to its
//!   response head. Counted by the [`count_requests`] middleware.
//! * `avap_runs_total{outcome}`: runs by `ok` or the envelope's or the API
//!   error's kind; `avap_limit_hits_total{kind}` for the limit kinds.
//! * `avap_compile_cache_hits_total` / `avap_compile_cache_misses_total`;
//!   `avap_compiles_shed_total`: compiles and loads refused with 503 because
//!   the compile pool (`max_concurrent_compiles`) stayed full.
//! * `avap_run_duration_seconds` (histogram) and `avap_runs_in_flight` (gauge);
//!   `avap_run_slots` (gauge), the run slots, for saturation.
//! * `avap_fuel_used_total`: fuel burnt by finished runs.
//! * `avap_audit_dropped_total`: audit rows of runs dropped because the
//!   audit queue was full ([`audit`](super::audit)).
//! * `avap_connections_open` (gauge), `avap_connections_refused_total{reason}`
//!   (closed at once over `max_connections` or `max_connections_per_ip`) and
//!   `avap_connections_timed_out_total{timeout}` (`header_read` or `idle`):
//!   the client connections ([`listen`](super::listen)), counted in
//!   [`ConnectionCounters`].
//! * Jobs ([`jobs`](super::jobs)): `avap_jobs{state,priority}` (gauge, read
//!   from the database at each scrape: the queue's depth per priority,
//!   running, failed waiting for a retry, the dead-letter queue; shared by
//!   the nodes of a cluster, so every node shows the same),
//!   `avap_jobs_submitted_total`, `avap_job_attempts_total{outcome}`
//!   (`succeeded`, `failed`, `dead`, `lost`, `stopped`),
//!   `avap_job_retries_total`, `avap_jobs_finished_total{state}`,
//!   `avap_job_queue_seconds` (due to started) and `avap_job_run_seconds`
//!   (histograms), `avap_job_workers` and `avap_job_runs_in_flight` on this node.
//! * `avap_signed_requests_refused_total{reason}`: requests of signing API
//!   keys refused with 401 ([`request_signing`](super::request_signing)), by
//!   `reason` (`signature_replayed` and `signature_mismatch` are worth an alert).
//! * With Redis: `avap_l2_hits_total` / `avap_l2_misses_total` /
//!   `avap_l2_refused_total` (stored modules loaded from, not found in, or
//!   refused from Redis: [`l2`](super::l2)), `avap_redis_errors_total`,
//!   `avap_invalidations_received_total` ([`cluster`](super::cluster)).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use avap_hostfns::effects::breaker::{BreakerStats, Breakers};
use avap_hostfns::effects::db::{PoolStats, Waiters};
use avap_runtime::RunReport;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::AppState;
use super::error::ApiError;
use super::listen::{Refusal, Timeout};
use super::openapi::ROUTES;
use super::process_stats::ProcessStats;

/// Upper bounds of the duration histograms' buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// Upper bounds of the job histograms' buckets, in seconds: jobs wait and
/// run far longer than requests.
const JOB_BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JobLabels {
    state: &'static str,
    priority: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StaticOutcome {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The envelope error kinds that are limit hits.
const LIMIT_KINDS: [&str; 5] = [
    "FuelExhausted",
    "MemoryLimit",
    "OutputLimit",
    "StackOverflow",
    "TimeLimit",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitKind {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TimeoutLabel {
    timeout: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// One connection pool's waiters and acquire times: counted while a
/// caller waits for a connection (a cancelled wait too), timed when it has
/// one. The registry's [`Store`](super::store::Store) holds one; the
/// application databases report through [`Metrics::app_db_acquire_observer`].
#[derive(Debug)]
pub struct PoolWatch {
    waiting: Waiters,
    acquire_seconds: Histogram,
}

impl Default for PoolWatch {
    fn default() -> PoolWatch {
        PoolWatch {
            waiting: Waiters::default(),
            acquire_seconds: duration_histogram(),
        }
    }
}

impl PoolWatch {
    /// Await `acquire` (a pool's acquire or begin), counted and timed.
    pub async fn acquiring<T>(&self, acquire: impl std::future::Future<Output = T>) -> T {
        let (acquired, waited) = self.waiting.wait(acquire).await;
        self.acquire_seconds.observe(waited.as_secs_f64());
        acquired
    }

    /// Callers waiting for a connection now.
    pub fn waiting(&self) -> usize {
        self.waiting.now()
    }
}

/// The server's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    request_duration: Family<RouteStatus, Histogram, fn() -> Histogram>,
    runs: Family<Outcome, Counter>,
    limit_hits: Family<LimitKind, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    compiles_shed: Counter,
    run_duration: Histogram,
    in_flight: Gauge,
    run_slots: Gauge,
    fuel_used: Counter,
    audit_dropped: Counter,
    l2_hits: Counter,
    l2_misses: Counter,
    l2_refused: Counter,
    invalidations: Counter,
    /// Counted by the Redis client itself.
    redis_errors: Counter,
    /// Counted by the accept loop.
    connections: Arc<ConnectionCounters>,
    /// The outbound hosts' and the databases' breakers and bulkheads, read
    /// at each scrape.
    outbound: BreakerMetrics,
    databases: BreakerMetrics,
    /// The process and its disk, read at each scrape (standard `process_*` names).
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    resident_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    disk_free_bytes: Gauge,
    disk_size_bytes: Gauge,
    memory_limit_bytes: Gauge,
    /// The registry database's pool, by `state` (`in_use`, `idle`, `max`).
    db_pool: Family<PoolState, Gauge>,
    /// The application databases' pools, by database and `state`.
    app_db_pool: Family<DatabasePoolState, Gauge>,
    /// How long application-database statements waited for a connection.
    app_db_acquire_seconds: Family<DatabaseLabel, Histogram>,
    /// Application-database statements over `db_slow_statement_ms`.
    slow_statements: Counter,
    /// Runs of stored scripts and their seconds, by script (bounded).
    script_runs: Family<ScriptOutcome, Counter>,
    script_seconds: Family<ScriptLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    scripts_named: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Jobs by state and priority, read from the database at each scrape.
    jobs: Family<JobLabels, Gauge>,
    jobs_submitted: Counter,
    job_attempts: Family<StaticOutcome, Counter>,
    job_retries: Counter,
    jobs_finished: Family<StateLabel, Counter>,
    job_queue_seconds: Histogram,
    job_run_seconds: Histogram,
    /// Signed requests refused, by reason ([`super::request_signing`]).
    signatures_refused: Family<ReasonLabel, Counter>,
    job_workers: Gauge,
    job_runs_in_flight: Gauge,
    /// Configuration reloads by outcome (`applied`, `failed`).
    config_reloads: Family<StaticOutcome, Counter>,
}

/// Stored scripts with series of their own; later ones count as `other`.
const MAX_SCRIPT_LABELS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ScriptOutcome {
    script: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ScriptLabel {
    script: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PoolState {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DatabaseLabel {
    database: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DatabasePoolState {
    /// `application database (postgresql at HOST:PORT)`, `connector #N (…)`:
    /// bounded by the configuration, never a URL.
    database: String,
    state: &'static str,
}

/// The client connections: open now, refused at a cap, closed by a timeout.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    open: Gauge,
    refused: Family<Reason, Counter>,
    timed_out: Family<TimeoutLabel, Counter>,
}

impl ConnectionCounters {
    pub fn opened(&self) {
        self.open.inc();
    }

    pub fn closed(&self) {
        self.open.dec();
    }

    pub fn open(&self) -> i64 {
        self.open.get()
    }

    pub fn refused(&self, reason: Refusal) {
        self.refused
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Connections refused for `reason` since start.
    pub fn refused_count(&self, reason: Refusal) -> u64 {
        self.refused
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .get()
    }

    pub fn timed_out(&self, timeout: Timeout) {
        self.timed_out
            .get_or_create(&TimeoutLabel {
                timeout: timeout.as_str(),
            })
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        for reason in [Refusal::MaxConnections, Refusal::MaxConnectionsPerIp] {
            drop(self.refused.get_or_create(&Reason {
                reason: reason.as_str(),
            }));
        }
        for timeout in [Timeout::HeaderRead, Timeout::Idle] {
            drop(self.timed_out.get_or_create(&TimeoutLabel {
                timeout: timeout.as_str(),
            }));
        }
        registry.register(
            "avap_connections_open",
            "Client connections open now",
            self.open.clone(),
        );
        registry.register(
            "avap_connections_refused",
            "Client connections closed at once because a cap (max_connections, max_connections_per_ip) was reached",
            self.refused.clone(),
        );
        registry.register(
            "avap_connections_timed_out",
            "Client connections closed because no whole request head came in time (header_read) or a kept-alive connection sent nothing (idle)",
            self.timed_out.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            runs: Family::default(),
            limit_hits: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            compiles_shed: Counter::default(),
            run_duration: duration_histogram(),
            in_flight: Gauge::default(),
            run_slots: Gauge::default(),
            fuel_used: Counter::default(),
            audit_dropped: Counter::default(),
            l2_hits: Counter::default(),
            l2_misses: Counter::default(),
            l2_refused: Counter::default(),
            invalidations: Counter::default(),
            redis_errors: Counter::default(),
            connections: Arc::default(),
            outbound: BreakerMetrics::default(),
            databases: BreakerMetrics::default(),
            cpu_seconds: Counter::default(),
            resident_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            threads: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            disk_size_bytes: Gauge::default(),
            memory_limit_bytes: Gauge::default(),
            db_pool: Family::default(),
            app_db_pool: Family::default(),
            app_db_acquire_seconds: Family::new_with_constructor(duration_histogram),
            slow_statements: Counter::default(),
            script_runs: Family::default(),
            script_seconds: Family::default(),
            scripts_named: std::sync::Mutex::default(),
            jobs: Family::default(),
            jobs_submitted: Counter::default(),
            job_attempts: Family::default(),
            config_reloads: Family::default(),
            job_retries: Counter::default(),
            jobs_finished: Family::default(),
            job_queue_seconds: Histogram::new(JOB_BUCKETS),
            job_run_seconds: Histogram::new(JOB_BUCKETS),
            signatures_refused: Family::default(),
            job_workers: Gauge::default(),
            job_runs_in_flight: Gauge::default(),
        };
        metrics.register();
        metrics
    }
}

impl Metrics {
    /// Every metric into the registry, under its exposed name (counters
    /// get `_total` from the encoder), with its help text.
    fn register(&mut self) {
        // Listed even before any run hits them, so alerts see zeros.
        for kind in LIMIT_KINDS {
            drop(self.limit_hits.get_or_create(&LimitKind { kind }));
        }
        // Zeros for the alert on the dead-letter queue before any job exists.
        for state in crate::jobs::JobState::ALL {
            for priority in crate::jobs::Priority::ALL {
                drop(self.jobs.get_or_create(&JobLabels {
                    state: state.as_str(),
                    priority: priority.as_str(),
                }));
            }
        }
        for state in ["succeeded", "dead", "cancelled"] {
            drop(self.jobs_finished.get_or_create(&StateLabel { state }));
        }
        let r = &mut self.registry;
        r.register(
            "avap_jobs",
            "Jobs in the queue's database by state and priority (the same on every node of a cluster)",
            self.jobs.clone(),
        );
        r.register(
            "avap_signed_requests_refused",
            "Requests of signing API keys refused with 401, by reason: signature_missing, signature_malformed, \
             timestamp_invalid, timestamp_outside_window, signature_mismatch, signature_replayed",
            self.signatures_refused.clone(),
        );
        r.register(
            "avap_jobs_submitted",
            "Jobs accepted by this node (not counting idempotent repeats)",
            self.jobs_submitted.clone(),
        );
        r.register(
            "avap_job_attempts",
            "Job attempts this node ended, by outcome: succeeded, failed (retry due), dead, lost (a worker's lease ran out), stopped (cancelled or lost while running)",
            self.job_attempts.clone(),
        );
        r.register(
            "avap_config_reloads",
            "Configuration reloads (SIGHUP or POST /api/v1/admin/reload) by outcome: applied, or failed (the file did not validate; nothing changed)",
            self.config_reloads.clone(),
        );
        r.register(
            "avap_job_retries",
            "Job attempts that failed or were lost and were queued again",
            self.job_retries.clone(),
        );
        r.register(
            "avap_jobs_finished",
            "Jobs that finished on this node by final state: succeeded, dead, cancelled",
            self.jobs_finished.clone(),
        );
        r.register(
            "avap_job_queue_seconds",
            "Time from a job being due to its attempt starting (queue-to-start latency)",
            self.job_queue_seconds.clone(),
        );
        r.register(
            "avap_job_run_seconds",
            "Time one job attempt ran",
            self.job_run_seconds.clone(),
        );
        r.register(
            "avap_job_workers",
            "Jobs this node may run at once (jobs_workers)",
            self.job_workers.clone(),
        );
        r.register(
            "avap_job_runs_in_flight",
            "Job attempts running on this node now",
            self.job_runs_in_flight.clone(),
        );
        r.register(
            "avap_requests",
            "HTTP responses by route and status",
            self.requests.clone(),
        );
        r.register(
            "avap_request_duration_seconds",
            "HTTP request latency by route and status, up to the response head",
            self.request_duration.clone(),
        );
        r.register(
            "avap_runs",
            "Script runs by outcome (ok or the error kind)",
            self.runs.clone(),
        );
        r.register(
            "avap_limit_hits",
            "Runs stopped by a limit, by kind",
            self.limit_hits.clone(),
        );
        for (name, help, counter) in [
            (
                "avap_compile_cache_hits",
                "Inline scripts found in the compile cache",
                &self.cache_hits,
            ),
            (
                "avap_compile_cache_misses",
                "Inline scripts compiled because they were not cached",
                &self.cache_misses,
            ),
            (
                "avap_compiles_shed",
                "Compiles and loads refused with 503: the compile pool stayed full for queue_wait_ms",
                &self.compiles_shed,
            ),
            (
                "avap_fuel_used",
                "Fuel burnt by finished runs (wasm instructions plus host work)",
                &self.fuel_used,
            ),
            (
                "avap_audit_dropped",
                "Audit rows of runs dropped because the audit queue was full",
                &self.audit_dropped,
            ),
            (
                "avap_l2_hits",
                "Stored modules loaded precompiled from Redis instead of compiled",
                &self.l2_hits,
            ),
            (
                "avap_l2_misses",
                "Stored modules not found in Redis (compiled here, then shared)",
                &self.l2_misses,
            ),
            (
                "avap_l2_refused",
                "Precompiled modules from Redis refused (bad signature, untrusted signer, not loadable)",
                &self.l2_refused,
            ),
            (
                "avap_redis_errors",
                "Redis commands that failed (connection lost, refused or timed out)",
                &self.redis_errors,
            ),
            (
                "avap_invalidations_received",
                "Script invalidations received from the cluster (Redis pub/sub)",
                &self.invalidations,
            ),
        ] {
            r.register(name, help, counter.clone());
        }
        r.register(
            "avap_run_duration_seconds",
            "Run time including the wait for a run slot and compilation",
            self.run_duration.clone(),
        );
        r.register(
            "avap_runs_in_flight",
            "Runs compiling or running now",
            self.in_flight.clone(),
        );
        r.register(
            "avap_run_slots",
            "Runs that may compile or run at once",
            self.run_slots.clone(),
        );
        self.connections.register(r);
        r.register(
            "process_cpu_seconds",
            "CPU time of the avap process, user and system",
            self.cpu_seconds.clone(),
        );
        for (name, help, gauge) in [
            (
                "process_resident_memory_bytes",
                "Resident memory of the avap process",
                &self.resident_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors of the avap process",
                &self.open_fds,
            ),
            (
                "process_max_fds",
                "The open-files limit of the avap process",
                &self.max_fds,
            ),
            ("process_threads", "Threads of the avap process", &self.threads),
            (
                "avap_data_dir_free_bytes",
                "Bytes free to the server on the data directory's filesystem",
                &self.disk_free_bytes,
            ),
            (
                "avap_data_dir_size_bytes",
                "Size of the data directory's filesystem",
                &self.disk_size_bytes,
            ),
            (
                "avap_memory_limit_bytes",
                "The memory limit of the server's cgroup (a container's limit); 0 when there is none",
                &self.memory_limit_bytes,
            ),
        ] {
            r.register(name, help, gauge.clone());
        }
        r.register(
            "avap_script_runs",
            "Runs of stored scripts by script (the first 200 named, then `other`) and outcome (ok or error)",
            self.script_runs.clone(),
        );
        r.register(
            "avap_script_run_seconds",
            "Seconds spent in runs of stored scripts, by script: divided by avap_script_runs_total, the mean run time",
            self.script_seconds.clone(),
        );
        r.register(
            "avap_db_pool_connections",
            "The registry database's connection pool: in_use, idle, its max, and callers waiting for a connection",
            self.db_pool.clone(),
        );
        r.register(
            "avap_app_db_pool_connections",
            "The application databases' connection pools (the orm* commands and connectors): in_use, idle, max, and statements waiting for a connection",
            self.app_db_pool.clone(),
        );
        r.register(
            "avap_app_db_pool_acquire_seconds",
            "How long application-database statements waited for a connection of their database's pool",
            self.app_db_acquire_seconds.clone(),
        );
        r.register(
            "avap_db_slow_statements",
            "Application-database statements that took db_slow_statement_ms or longer (each also logged)",
            self.slow_statements.clone(),
        );
        self.outbound
            .register(r, "avap_outbound", "outbound host", "calls", "to one host");
        self.databases
            .register(r, "avap_db", "database", "statements", "on one database");
    }

    /// Register the registry pool's acquire times (once, at start).
    pub fn watch_registry_pool(&mut self, watch: &PoolWatch) {
        self.registry.register(
            "avap_db_pool_acquire_seconds",
            "How long the server waited for a connection of the registry database's pool",
            watch.acquire_seconds.clone(),
        );
    }

    /// Register Redis' commands in flight and their durations (once, at start).
    pub fn watch_redis(&mut self, commands: &super::redis::CommandWatch) {
        self.registry.register(
            "avap_redis_commands_in_flight",
            "Redis commands waiting for their reply, by lane: command (short commands) and bulk (the module cache); each lane is one multiplexed connection, so there is no pool to wait for",
            commands.in_flight.clone(),
        );
        self.registry.register(
            "avap_redis_command_seconds",
            "How long Redis commands took, by lane, timeouts included",
            commands.seconds.clone(),
        );
    }

    /// What the application databases call with each statement's wait for a connection.
    pub fn app_db_acquire_observer(&self) -> avap_hostfns::effects::db::AcquireObserver {
        let family = self.app_db_acquire_seconds.clone();
        std::sync::Arc::new(move |database: &str, waited: Duration| {
            let label = DatabaseLabel {
                database: database.to_owned(),
            };
            family.get_or_create(&label).observe(waited.as_secs_f64());
        })
    }

    /// The process, its disk and the registry pool, before a scrape.
    pub fn set_process(&self, stats: &ProcessStats, pool: (u32, usize, u32, usize)) {
        let gauge = |gauge: &Gauge, value: Option<u64>| {
            if let Some(value) = value {
                gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        };
        if let Some(total) = stats.cpu_seconds {
            let delta = total - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
        }
        gauge(&self.resident_bytes, stats.resident_bytes);
        gauge(&self.open_fds, stats.open_fds);
        gauge(&self.max_fds, stats.max_fds);
        gauge(&self.threads, stats.threads);
        gauge(&self.disk_free_bytes, stats.disk_free_bytes);
        gauge(&self.disk_size_bytes, stats.disk_size_bytes);
        gauge(&self.memory_limit_bytes, Some(stats.memory_limit_bytes.unwrap_or(0)));
        let (open, idle, max, waiting) = pool;
        let idle = u32::try_from(idle).unwrap_or(u32::MAX);
        let waiting = u32::try_from(waiting).unwrap_or(u32::MAX);
        for (state, value) in [
            ("in_use", open.saturating_sub(idle)),
            ("idle", idle),
            ("max", max),
            ("waiting", waiting),
        ] {
            self.db_pool.get_or_create(&PoolState { state }).set(i64::from(value));
        }
    }

    /// The outbound breakers' state, before a scrape.
    pub fn set_outbound(&self, stats: BreakerStats) {
        self.outbound.set(stats);
    }

    /// The database breakers' state, before a scrape.
    pub fn set_databases(&self, stats: BreakerStats) {
        self.databases.set(stats);
    }

    /// The application databases' pools and slow statements, before a scrape.
    pub fn set_app_databases(&self, pools: &[PoolStats], slow_statements: u64) {
        for pool in pools {
            let idle = u32::try_from(pool.idle).unwrap_or(u32::MAX);
            let waiting = u32::try_from(pool.waiting).unwrap_or(u32::MAX);
            for (state, value) in [
                ("in_use", pool.open.saturating_sub(idle)),
                ("idle", idle),
                ("max", pool.max),
                ("waiting", waiting),
            ] {
                let labels = DatabasePoolState {
                    database: pool.database.clone(),
                    state,
                };
                self.app_db_pool.get_or_create(&labels).set(i64::from(value));
            }
        }
        self.slow_statements
            .inc_by(slow_statements.saturating_sub(self.slow_statements.get()));
    }

    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        let labels = RouteStatus { route, status };
        self.requests.get_or_create(&labels).inc();
        self.request_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn compile_shed(&self) {
        self.compiles_shed.inc();
    }

    pub fn l2_hit(&self) {
        self.l2_hits.inc();
    }

    pub fn l2_miss(&self) {
        self.l2_misses.inc();
    }

    pub fn l2_refused(&self) {
        self.l2_refused.inc();
    }

    pub fn invalidation_received(&self) {
        self.invalidations.inc();
    }

    /// `avap_run_slots`: the run slots (`max_concurrent_runs`), so
    /// dashboards and alerts can divide `avap_runs_in_flight` by it.
    pub fn set_run_slots(&self, slots: usize) {
        self.run_slots.set(i64::try_from(slots).unwrap_or(i64::MAX));
    }

    /// The counters the accept loop keeps ([`listen`](super::listen)).
    pub fn connections(&self) -> Arc<ConnectionCounters> {
        self.connections.clone()
    }

    /// The counter the Redis client adds its failed commands to.
    pub fn redis_errors(&self) -> Counter {
        self.redis_errors.clone()
    }

    /// Await one run, counting it in flight, timing it and recording its outcome.
    /// [`Metrics::run`] of stored script `script` (None: inline or
    /// uploaded), counted per script too.
    pub async fn run(
        &self,
        script: Option<&str>,
        run: impl Future<Output = Result<RunReport, ApiError>>,
    ) -> Result<RunReport, ApiError> {
        // A guard, so a run cancelled mid-way (client gone, request timeout) leaves the gauge too.
        struct InFlight<'a>(&'a Gauge);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.in_flight.inc();
        let in_flight = InFlight(&self.in_flight);
        let started = Instant::now();
        let result = run.await;
        drop(in_flight);
        self.run_duration.observe(started.elapsed().as_secs_f64());
        if let Ok(report) = &result {
            self.fuel_used.inc_by(report.usage.fuel);
        }
        let outcome = super::audit::outcome(&result);
        if let Some(kind) = LIMIT_KINDS.iter().find(|k| **k == outcome) {
            self.limit_hits.get_or_create(&LimitKind { kind }).inc();
        }
        if let Some(script) = script {
            let script = self.script_label(script);
            let ok = outcome == "ok";
            self.script_runs
                .get_or_create(&ScriptOutcome {
                    script: script.clone(),
                    outcome: if ok { "ok" } else { "error" },
                })
                .inc();
            self.script_seconds
                .get_or_create(&ScriptLabel { script })
                .inc_by(started.elapsed().as_secs_f64());
        }
        self.runs.get_or_create(&Outcome { outcome }).inc();
        result
    }

    /// `script`, or `other` once [`MAX_SCRIPT_LABELS`] scripts have series:
    /// the label set stays bounded whatever names are stored.
    fn script_label(&self, script: &str) -> String {
        let mut named = self
            .scripts_named
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if named.contains(script) {
            return script.to_owned();
        }
        if named.len() < MAX_SCRIPT_LABELS {
            named.insert(script.to_owned());
            return script.to_owned();
        }
        "other".to_owned()
    }

    /// Jobs by state and priority, before a scrape (pairs not listed are 0).
    pub fn set_jobs(&self, counts: &[(crate::jobs::JobState, crate::jobs::Priority, i64)]) {
        for state in crate::jobs::JobState::ALL {
            for priority in crate::jobs::Priority::ALL {
                let n = counts
                    .iter()
                    .find(|(s, p, _)| *s == state && *p == priority)
                    .map_or(0, |(_, _, n)| *n);
                self.jobs
                    .get_or_create(&JobLabels {
                        state: state.as_str(),
                        priority: priority.as_str(),
                    })
                    .set(n);
            }
        }
    }

    pub fn job_submitted(&self) {
        self.jobs_submitted.inc();
    }

    /// A job attempt started `waited_s` after the job was due.
    pub fn job_started(&self, waited_s: f64) {
        self.job_queue_seconds.observe(waited_s);
        self.job_runs_in_flight.inc();
    }

    /// A job attempt's run ended after `took`.
    pub fn job_ran(&self, took: Duration) {
        self.job_run_seconds.observe(took.as_secs_f64());
        self.job_runs_in_flight.dec();
    }

    pub fn job_attempt(&self, outcome: &'static str) {
        self.job_attempts.get_or_create(&StaticOutcome { outcome }).inc();
    }

    /// A reload ended: applied, or refused whole.
    pub fn config_reloaded(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "failed" };
        self.config_reloads.get_or_create(&StaticOutcome { outcome }).inc();
    }

    /// A signed request refused for `reason` (a `request_signing::Reason` code).
    pub fn signature_refused(&self, reason: &'static str) {
        self.signatures_refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn job_retried(&self) {
        self.job_retries.inc();
    }

    pub fn job_finished(&self, state: &'static str) {
        self.jobs_finished.get_or_create(&StateLabel { state }).inc();
    }

    pub fn set_job_workers(&self, workers: usize) {
        self.job_workers.set(i64::try_from(workers).unwrap_or(i64::MAX));
    }

    /// The `OpenMetrics` text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The route template of `path` among [`ROUTES`], `/playground` for the
/// playground's files, or `unmatched`.
pub fn route_of(path: &str) -> &'static str {
    if path == "/playground" || path.starts_with("/playground/") {
        // The page and its files: one series.
        return "/playground";
    }
    ROUTES
        .iter()
        .map(|&(_, template)| template)
        .find(|template| matches_template(template, path))
        .unwrap_or("unmatched")
}

fn matches_template(template: &str, path: &str) -> bool {
    let mut want = template.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with("{*") => return !g.is_empty() || got.next().is_some(),
            (Some(w), Some(g)) if w.starts_with('{') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// Middleware: count every response in `avap_requests_total`.
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    let started = Instant::now();
    let response = next.run(req).await;
    state
        .metrics()
        .request(route, response.status().as_u16(), started.elapsed());
    response
}

/// `GET /api/v1/metrics`.
#[utoipa::path(
    get,
    path = "/api/v1/metrics",
    tag = "meta",
    summary = "Prometheus metrics (OpenMetrics text 1.0.0)",
    responses((status = 200, description = "Metrics.", body = String, content_type = "application/openmetrics-text")),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let live = state.live();
    let effects = &live.effects;
    let http = effects.http.as_ref().and_then(|http| http.breakers());
    state
        .metrics()
        .set_outbound(http.map(Breakers::stats).unwrap_or_default());
    if let Some(db) = &effects.db {
        state
            .metrics()
            .set_app_databases(&db.pool_stats(), db.slow_statements());
    }
    let databases = effects.db.as_ref().and_then(|db| db.breakers());
    state
        .metrics()
        .set_databases(databases.map(Breakers::stats).unwrap_or_default());
    let process = ProcessStats::read(state.config().data_dir.as_deref());
    state.metrics().set_process(&process, state.store().pool_stats());
    match state.jobs().counts().await {
        Ok(counts) => state.metrics().set_jobs(&counts),
        // The gauges keep their last values; the database's own metrics say why.
        Err(e) => tracing::debug!("cannot count jobs for the metrics: {e:#}"),
    }
    let mut response = state.metrics().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// One set of circuit breakers and bulkheads (`avap_hostfns::effects::breaker`),
/// as three series: circuits open now, circuits opened, calls refused by reason.
#[derive(Debug, Default)]
struct BreakerMetrics {
    open: Gauge,
    opened: Counter,
    refused: Family<Reason, Counter>,
}

impl BreakerMetrics {
    fn register(&self, r: &mut Registry, prefix: &str, what: &str, calls: &str, per: &str) {
        r.register(
            format!("{prefix}_circuits_open"),
            format!("{what}s whose circuit is open or half open now"),
            self.open.clone(),
        );
        r.register(
            format!("{prefix}_circuits_opened"),
            format!("Times a {what}'s circuit opened (failures or slow {calls})"),
            self.opened.clone(),
        );
        r.register(
            format!("{prefix}_{calls}_refused"),
            format!("{calls} failed at once: circuit_open or bulkhead (too many at once {per})"),
            self.refused.clone(),
        );
    }

    fn set(&self, stats: BreakerStats) {
        self.open.set(i64::try_from(stats.open).unwrap_or(i64::MAX));
        // The breakers count; the counters catch up to them.
        let catch_up = |counter: &Counter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        catch_up(&self.opened, stats.opened_total);
        for (reason, total) in [
            ("circuit_open", stats.refused_open_total),
            ("bulkhead", stats.refused_busy_total),
        ] {
            catch_up(&self.refused.get_or_create(&Reason { reason }), total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stored_scripts_have_their_own_series_up_to_a_bound() {
        let m = Metrics::default();
        let _ = m.run(Some("hello"), async { Err(ApiError::MethodNotAllowed) }).await;
        let _ = m.run(None, async { Err(ApiError::MethodNotAllowed) }).await;
        for n in 0..MAX_SCRIPT_LABELS + 5 {
            let name = format!("s{n}");
            let _ = m.run(Some(&name), async { Err(ApiError::MethodNotAllowed) }).await;
        }
        let text = m.render();
        assert!(
            text.contains("avap_script_runs_total{script=\"hello\",outcome=\"error\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("avap_script_runs_total{script=\"other\",outcome=\"error\"} 6\n"),
            "the label set stays bounded: {text}"
        );
        assert!(
            text.contains("avap_script_run_seconds_total{script=\"hello\"}"),
            "{text}"
        );
        assert_eq!(text.matches("avap_script_runs_total{").count(), MAX_SCRIPT_LABELS + 1);
    }

    #[test]
    fn routes_are_matched_by_template() {
        assert_eq!(route_of("/api/v1/execute"), "/api/v1/execute");
        assert_eq!(route_of("/api/v1/execute/batch"), "/api/v1/execute/batch");
        assert_eq!(route_of("/api/v1/execute/file"), "/api/v1/execute/file");
        assert_eq!(route_of("/api/v1/audit"), "/api/v1/audit");
        assert_eq!(route_of("/api/v1/scripts/hello"), "/api/v1/scripts/{name}");
        assert_eq!(
            route_of("/api/v1/scripts/hello/rollback"),
            "/api/v1/scripts/{name}/rollback"
        );
        assert_eq!(route_of("/api/v1/run/hello"), "/api/v1/run/{name}");
        assert_eq!(route_of("/api/v1/run/hello/users/7"), "/api/v1/run/{name}/{*rest}");
        assert_eq!(
            route_of("/api/v1/run/hello/openapi.json"),
            "/api/v1/run/{name}/openapi.json"
        );
        assert_eq!(route_of("/api/v1/nope"), "unmatched");
        assert_eq!(route_of("/api/v1/scripts/"), "unmatched");
    }

    #[tokio::test]
    async fn render_is_prometheus_text() {
        let m = Metrics::default();
        m.request("/api/v1/execute", 200, Duration::from_millis(3));
        m.cache_miss();
        m.set_run_slots(8);
        let _ = m.run(None, async { Err(ApiError::MethodNotAllowed) }).await;
        let breakers = BreakerStats {
            open: 1,
            opened_total: 3,
            refused_busy_total: 2,
            ..Default::default()
        };
        m.set_outbound(breakers);
        m.set_outbound(breakers);
        m.set_databases(BreakerStats {
            refused_open_total: 4,
            ..Default::default()
        });
        let pools = [PoolStats {
            database: "application database (sqlite)".to_owned(),
            open: 3,
            idle: 1,
            max: 8,
            waiting: 5,
        }];
        m.set_app_databases(&pools, 2);
        m.set_app_databases(&pools, 2);
        let process = ProcessStats {
            cpu_seconds: Some(1.5),
            resident_bytes: Some(1 << 20),
            open_fds: Some(12),
            max_fds: Some(1024),
            threads: Some(5),
            disk_free_bytes: Some(10),
            disk_size_bytes: None,
            memory_limit_bytes: Some(1 << 30),
        };
        m.set_process(&process, (3, 1, 4, 0));
        m.set_process(&process, (3, 1, 4, 7));
        (m.app_db_acquire_observer())("application database (sqlite)", Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("process_cpu_seconds_total 1.5\n"),
            "read twice, counted once: {text}"
        );
        assert!(text.contains("process_resident_memory_bytes 1048576\n"), "{text}");
        assert!(text.contains("avap_memory_limit_bytes 1073741824\n"), "{text}");
        assert!(
            text.contains("process_open_fds 12\n") && text.contains("process_max_fds 1024\n"),
            "{text}"
        );
        assert!(text.contains("avap_data_dir_free_bytes 10\n"), "{text}");
        assert!(
            text.contains("avap_db_pool_connections{state=\"in_use\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("avap_db_pool_connections{state=\"max\"} 4\n"), "{text}");
        assert!(
            text.contains("avap_db_pool_connections{state=\"waiting\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "avap_app_db_pool_connections{database=\"application database (sqlite)\",state=\"waiting\"} 5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "avap_app_db_pool_acquire_seconds_bucket{le=\"0.005\",database=\"application database (sqlite)\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("avap_outbound_circuits_open 1\n"), "{text}");
        assert!(
            text.contains("avap_outbound_circuits_opened_total 3\n"),
            "set twice, counted once: {text}"
        );
        assert!(
            text.contains("avap_outbound_calls_refused_total{reason=\"bulkhead\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("avap_db_statements_refused_total{reason=\"circuit_open\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "avap_app_db_pool_connections{database=\"application database (sqlite)\",state=\"in_use\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("avap_db_slow_statements_total 2\n"),
            "set twice, counted once: {text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE avap_run_slots gauge\navap_run_slots 8\n"),
            "{text}"
        );
        assert!(
            text.contains("avap_limit_hits_total{kind=\"TimeLimit\"} 0\n"),
            "zeros listed: {text}"
        );
        assert!(
            text.contains("avap_connections_refused_total{reason=\"max_connections_per_ip\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("avap_requests_total{route=\"/api/v1/execute\",status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("avap_runs_total{outcome=\"MethodNotAllowed\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("avap_compile_cache_misses_total 1\n"), "{text}");
        assert!(
            text.contains("avap_run_duration_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("avap_run_duration_seconds_count 1\n"), "{text}");
        assert!(text.contains("avap_runs_in_flight 0\n"), "{text}");
        let labels = "route=\"/api/v1/execute\",status=\"200\"";
        let bucket = |le: &str| format!("avap_request_duration_seconds_bucket{{le=\"{le}\",{labels}}}");
        assert!(text.contains(&format!("{} 0\n", bucket("0.0025"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", bucket("0.005"))), "{text}");
        assert!(
            text.contains("# HELP avap_requests HTTP responses by route and status.\n"),
            "{text}"
        );
        assert!(
            text.contains("avap_request_duration_seconds_count{route=\"/api/v1/execute\",status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("avap_fuel_used_total 0\n"), "{text}");
    }
}
