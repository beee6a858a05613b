//! The HTTP execution server, `avap serve`: a thin axum layer over the
//! shared [`Executor`].
//!
//! * [`app`] is the whole router for an [`AppState`]; [`serve`] binds the
//!   listener, prints the address and serves until SIGINT/SIGTERM, letting
//!   in-flight requests finish. Connections are bounded (header-read and
//!   idle timeouts, total and per-IP caps) by the accept loop in [`listen`].
//! * Every error that is not a run outcome is an [`ApiError`]:
//!   `{"error": {"kind", "message"}}` with its status.
//! * At most `max_concurrent_runs` requests compile or run at once; one
//!   that waits longer than `queue_wait` for a slot gets 503 `Overloaded`.
//!
//! * The script registry lives in the embedded database ([`store`], all the
//!   SQL): sources are compiled and signed with the server key ([`keys`])
//!   on upload; stored scripts run as endpoints under `/api/v1/run/{name}`
//!   ([`run`]), each describing its own routes at
//!   `/api/v1/run/{name}/openapi.json` ([`script_api`]).
//!
//! * API keys ([`auth`]) guard the registry (`admin`) and runs (`execute`);
//!   keys made with `--signed` must also HMAC-sign each request
//!   ([`request_signing`], secrets sealed at rest by [`signing_secrets`]).
//!
//! * Rate limits, the request timeout, CORS and security headers: [`protect`].
//!
//! * Settings come from defaults, a TOML file, `AVAP_*` variables and flags
//!   ([`config`]); every request gets an id, a span and an access line
//!   ([`request_id`]), logged as JSON or text on stderr or to a rotated
//!   file ([`logs`]), secrets filtered out; spans of requests, compiles,
//!   runs and host calls carry W3C trace ids and go to an OTLP collector
//!   when one is configured ([`telemetry`]). Admins look inside with the
//!   debug endpoints ([`debug`]: runs in progress, caches, config, CPU profile).
//!
//! * Registry writes and runs are recorded in the audit trail ([`audit`]);
//!   `POST /api/v1/execute/file` runs an uploaded source or signed artifact
//!   ([`upload`]); responses are gzipped for clients that accept it.
//!
//! * Edge nodes follow another node's registry through its read API
//!   ([`registry_sync`], `registry` scope) and serve a verified disk mirror
//!   of it ([`edge`]), also while the registry is unreachable.
//!
//! * Work that outlives a request is a job ([`jobs`], `jobs` scope): a
//!   durable queue in the registry database, or NATS `JetStream` for a
//!   cluster; `avap worker` ([`worker`]) runs only the consuming side.

mod api_key_cache;
mod args;
mod audit;
pub mod auth;
pub mod backup;
mod batch;
mod cache;
mod check;
mod cluster;
pub mod config;
mod debug;
mod edge;
mod error;
pub mod exec;
mod execute;
mod extract;
pub mod fs_loader;
pub mod http_client;
pub mod jobs;
pub mod key_files;
mod keys;
mod l2;
mod libraries;
mod listen;
mod logs;
mod meta;
mod metrics;
mod openapi;
mod playground;
mod process_stats;
mod protect;
mod redis;
mod registry;
mod registry_sync;
pub mod reload;
mod request_id;
mod request_signing;
mod run;
mod script_api;
pub mod signing_secrets;
mod store;
mod telemetry;
mod upload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use avap_codegen::{SourceFile, check_file, compile_with_libraries};
use avap_hostfns::Request;
use avap_hostfns::artifact::{RunPolicy, SigningKey, TrustedKeys, key_id};
use avap_runtime::{CapabilityPolicy, Limits, LoadError, LoadedModule, RunInput, RunReport, Runtime, RuntimeConfig};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

pub use error::ApiError;

use crate::exec::{RunSettings, compile_error_report};
pub use args::{ServeArgs, WorkerArgs};
pub use cache::StoredScript;
use cache::{Compiled, ScriptCache, StoredCache};
pub use store::{Actor, AuditRow, Location, Store};

/// How long shutdown waits for in-flight requests before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The default of `max_script_bytes`, the largest script the server
/// accepts; also the largest file `include` reads in the CLI.
pub const DEFAULT_MAX_SCRIPT_BYTES: usize = 256 << 10;

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The most a run may use; also what a run gets when it asks for nothing.
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub max_script_bytes: usize,
    /// Requests compiling or running at once (also the wasmtime pool size).
    pub max_concurrent_runs: usize,
    /// Compilations at once (Cranelift, on blocking threads), whatever
    /// happened to the requests that asked for them: each holds its slot
    /// until it finishes.
    pub max_concurrent_compiles: usize,
    /// `go_async` blocks one run may hold started and not gathered.
    pub max_async_blocks: u32,
    /// Instances for `go_async` blocks across the process, besides the
    /// runs' own (a block waits for a free one).
    pub async_block_slots: u32,
    /// Instances of finished runs kept, reset, for the next run of the same
    /// script (`avap_runtime`'s `recycle`; 0 = none).
    pub warm_instances: u32,
    /// How long a request waits for a run slot before 503.
    pub queue_wait: Duration,
    /// Inline scripts whose compiled form is kept.
    pub cache_entries: usize,
    /// Cached scripts and modules unused this long are dropped (`None`: kept
    /// until the entry bound evicts them).
    pub cache_ttl: Option<Duration>,
    /// Stored scripts loaded at start, most-run first ([`cluster`]).
    pub prewarm: usize,
    /// The Redis shared by the nodes of a cluster: module cache (L2),
    /// invalidations, rate limits ([`cluster`]). `None`: a single node.
    pub redis_url: Option<redis::RedisUrl>,
    /// CA certificates (PEM) for a `rediss://` Redis; `None`: the system's.
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// The namespace of this cluster's Redis keys.
    pub redis_prefix: String,
    /// Audit rows older than this are deleted every hour; `None`: kept.
    pub audit_retention: Option<Duration>,
    pub policy: CapabilityPolicy,
    /// Requests without an API key get every scope ([`auth`]); `avap serve`
    /// turns this on only for a loopback listener unless told otherwise.
    pub allow_anonymous: bool,
    /// Serve the browser playground at `/playground` ([`playground`]);
    /// `avap serve` turns it on by default only for a loopback listener.
    pub playground: bool,
    /// How far a signed request's timestamp may be from this server's clock
    /// ([`request_signing`]).
    pub signing_window: Duration,
    /// Rate limits, request timeout, CORS ([`protect`]).
    pub protect: protect::ProtectConfig,
    /// Header-read and idle timeouts, connection caps ([`listen`]).
    pub connections: listen::ConnectionLimits,
    /// What effect commands may reach (outbound HTTP policy, databases,
    /// model endpoint); built from the config keys `outbound_*`,
    /// `ai_endpoint`, … Default: nothing (those commands are denied).
    pub effects: avap_runtime::Effects,
    /// Edge mode ([`edge`]): stored scripts come from a disk mirror of
    /// another node's registry, which is read-only here. `None`: a normal node.
    pub edge: Option<edge::EdgeConfig>,
    /// The effective configuration as `--print-config` shows it (secrets
    /// hidden), for `GET /api/v1/debug/config` ([`debug`]); `None` when the
    /// server was not started from a resolved configuration.
    pub effective_config: Option<Arc<str>>,
    /// The data directory, whose filesystem's free space the metrics show.
    pub data_dir: Option<std::path::PathBuf>,
    /// The job queue's backend and workers ([`jobs`]).
    pub jobs: jobs::JobsConfig,
}

impl ServerConfig {
    /// Per-run maximums: tighter than [`Limits::CLI`].
    pub const LIMITS: Limits = Limits {
        fuel: 1_000_000_000,
        time_ms: 10_000,
        memory_bytes: 128 << 20,
        stack_bytes: 256 << 10,
        output_bytes: 4 << 20,
    };

    /// The defaults, with two run slots per core.
    pub fn for_this_machine() -> ServerConfig {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        ServerConfig {
            limits: ServerConfig::LIMITS,
            max_body_bytes: 1 << 20,
            max_script_bytes: DEFAULT_MAX_SCRIPT_BYTES,
            max_concurrent_runs: 2 * cores,
            max_concurrent_compiles: cores,
            max_async_blocks: RuntimeConfig::default().max_async_blocks,
            async_block_slots: u32::try_from(4 * cores).unwrap_or(u32::MAX),
            warm_instances: u32::try_from(cores).unwrap_or(u32::MAX),
            queue_wait: Duration::from_secs(2),
            cache_entries: 256,
            cache_ttl: Some(Duration::from_hours(1)),
            prewarm: 16,
            redis_url: None,
            redis_ca_file: None,
            redis_prefix: "avap".to_owned(),
            audit_retention: None,
            policy: CapabilityPolicy::allow_all(),
            allow_anonymous: false,
            playground: false,
            signing_window: request_signing::DEFAULT_WINDOW,
            protect: protect::ProtectConfig::default(),
            connections: listen::ConnectionLimits::default(),
            effects: avap_runtime::Effects::default(),
            edge: None,
            effective_config: None,
            data_dir: None,
            jobs: jobs::JobsConfig::default(),
        }
    }
}

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    config: ServerConfig,
    /// One runtime for inline and stored scripts; it trusts `key`.
    runtime: Runtime,
    /// The server key: signs inline and stored scripts.
    key: SigningKey,
    scripts: ScriptCache,
    stored: StoredCache,
    store: Store,
    runs: Arc<Semaphore>,
    /// The compile pool ([`ServerConfig::max_concurrent_compiles`]).
    compiles: Arc<Semaphore>,
    metrics: metrics::Metrics,
    /// Run rows of the audit trail, written in the background.
    audit: audit::AuditLog,
    /// Whose signatures the runtime accepts: the server key and
    /// `<data-dir>/trusted_keys/*.pub` (checked first for uploads).
    trusted_keys: TrustedKeys,
    /// API key records read recently ([`api_key_cache`]).
    api_keys: Arc<api_key_cache::ApiKeyCache>,
    /// Checks the requests of signing keys ([`request_signing`]).
    signatures: request_signing::Verifier,
    /// The registry mirror of an edge node ([`edge`]).
    edge: Option<Arc<edge::Edge>>,
    /// Redis: L2, invalidations, the shared rate limit; `None` for a single node.
    cluster: Option<cluster::Cluster>,
    /// Runs in progress, for `GET /api/v1/debug/runs` ([`debug`]).
    active_runs: debug::ActiveRuns,
    /// The job queue ([`jobs`]).
    jobs: jobs::Jobs,
    /// Rate limits, request timeout, CORS: changed in place by a reload.
    protect: protect::Protect,
    /// What runs read at their start; a reload swaps it ([`reload`]).
    live: ArcSwap<reload::Live>,
    /// How to read the configuration again; set by `avap serve`.
    reloader: OnceLock<reload::Reloader>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("runtime", &self.runtime)
            .field("key_id", &key_id(&self.key.verifying_key()))
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// What a run executes.
#[derive(Debug)]
pub enum Program {
    /// Source sent with the request (compiled, or taken from the cache).
    Inline(String),
    /// A signed artifact (verified by the runtime's `load`, which caches
    /// compiled modules by sha256).
    Artifact(Vec<u8>),
    /// A module already loaded (a stored script from [`AppState::stored`]).
    Loaded(Arc<LoadedModule>),
}

/// A source compiled, signed and loaded.
#[derive(Debug)]
pub struct Built {
    /// The signed `.wasm` artifact.
    pub artifact: Vec<u8>,
    module: Arc<LoadedModule>,
    /// The stored scripts its includes resolved to (also in its meta).
    pub libraries: Vec<avap_hostfns::artifact::LibraryMeta>,
}

impl AppState {
    /// Trusting only `key` (`avap serve` adds the data directory's trusted
    /// keys); what an embedder or an in-process test starts from.
    pub fn new(config: ServerConfig, store: Store, key: SigningKey) -> Result<AppState> {
        AppState::with_trusted_keys(config, store, key, TrustedKeys::new(), TrustedKeys::new())
    }

    /// As [`AppState::new`], also trusting artifacts signed by `extra` keys;
    /// `cluster_keys` (the other nodes) are trusted for artifacts (stored
    /// scripts they signed) and, unlike `extra`, for the compiled modules
    /// they seal in Redis ([`l2`]).
    pub fn with_trusted_keys(
        config: ServerConfig,
        store: Store,
        key: SigningKey,
        extra: TrustedKeys,
        cluster_keys: TrustedKeys,
    ) -> Result<AppState> {
        let mut module_sealers = cluster_keys;
        module_sealers.add(key.verifying_key());
        let mut trusted_keys = extra;
        for sealer in module_sealers.ids().filter_map(|id| module_sealers.get(id)) {
            trusted_keys.add(*sealer);
        }
        let runtime = RuntimeConfig {
            max_concurrent_runs: u32::try_from(config.max_concurrent_runs)
                .context("max_concurrent_runs is too large")?,
            cache_entries: config.cache_entries,
            cache_time_to_idle: config.cache_ttl,
            max_async_blocks: config.max_async_blocks,
            async_block_slots: config.async_block_slots,
            warm_instances: config.warm_instances,
            policy: config.policy.clone(),
            trusted_keys: trusted_keys.clone(),
            // Native code from Redis: only what a cluster key sealed ([`l2`]).
            precompiled_keys: module_sealers,
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::new(runtime).context("cannot start the wasm runtime")?;
        let api_keys: Arc<api_key_cache::ApiKeyCache> = Arc::default();
        let mut metrics = metrics::Metrics::default();
        metrics.watch_registry_pool(store.pool_watch());
        if let Some(db) = &config.effects.db {
            db.set_acquire_observer(metrics.app_db_acquire_observer());
        }
        metrics.set_run_slots(config.max_concurrent_runs);
        let cluster = match config.redis_url.clone() {
            None => None,
            Some(url) => {
                let ca_pem = match &config.redis_ca_file {
                    None => None,
                    Some(path) => Some(
                        std::fs::read(path).with_context(|| format!("cannot read redis_ca_file {}", path.display()))?,
                    ),
                };
                let cluster = cluster::Cluster::new(
                    url,
                    ca_pem,
                    &config.redis_prefix,
                    runtime.engine_fingerprint(),
                    metrics.redis_errors(),
                )
                .map_err(anyhow::Error::msg)?;
                metrics.watch_redis(cluster.redis.commands());
                Some(cluster)
            }
        };
        let protect = protect::Protect::new(
            config.protect.clone(),
            cluster.as_ref().map(|c| c.rate_limit.clone()),
            Some(api_keys.clone()),
        );
        let live = ArcSwap::from_pointee(reload::Live {
            limits: config.limits,
            effects: config.effects.clone(),
            effective_config: config.effective_config.clone(),
        });
        let signatures = request_signing::Verifier::new(
            config.signing_window,
            config.data_dir.clone(),
            cluster.as_ref().map(|c| (c.redis.clone(), c.prefix.clone())),
        );
        Ok(AppState {
            shared: Arc::new(Shared {
                protect,
                live,
                reloader: OnceLock::new(),
                scripts: ScriptCache::new(config.cache_entries, config.cache_ttl),
                stored: StoredCache::new(config.cache_entries, config.cache_ttl),
                runs: Arc::new(Semaphore::new(config.max_concurrent_runs)),
                compiles: Arc::new(Semaphore::new(config.max_concurrent_compiles)),
                metrics,
                cluster,
                audit: audit::AuditLog::start(store.clone(), config.audit_retention)?,
                trusted_keys,
                api_keys,
                signatures,
                active_runs: debug::ActiveRuns::default(),
                edge: config.edge.as_ref().map(edge::Edge::open).transpose()?.map(Arc::new),
                jobs: jobs::Jobs::new(store.clone(), config.jobs.clone()),
                config,
                runtime,
                key,
                store,
            }),
        })
    }

    /// The configuration the server started with. What a reload can change
    /// is read from [`AppState::live`], [`AppState::protect`] and the
    /// runtime's policy instead.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// The settings in force now (limits, effects, the effective
    /// configuration); hold the returned `Arc` for one request or run.
    pub fn live(&self) -> Arc<reload::Live> {
        self.shared.live.load_full()
    }

    pub(crate) fn set_live(&self, live: reload::Live) {
        self.shared.live.store(Arc::new(live));
    }

    /// The protection layer's settings and buckets.
    pub(crate) fn protect(&self) -> &protect::Protect {
        &self.shared.protect
    }

    pub fn runtime(&self) -> &Runtime {
        &self.shared.runtime
    }

    /// Let [`reload`] read the configuration again from `reloader`; only
    /// the first call counts.
    pub fn set_reloader(&self, reloader: reload::Reloader) {
        let _ = self.shared.reloader.set(reloader);
    }

    pub(crate) fn reloader(&self) -> Option<&reload::Reloader> {
        self.shared.reloader.get()
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.shared.metrics
    }

    pub fn audit(&self) -> &audit::AuditLog {
        &self.shared.audit
    }

    /// The job queue ([`jobs`]).
    pub fn jobs(&self) -> &jobs::Jobs {
        &self.shared.jobs
    }

    /// The mirror and registry of an edge node; `None` on a normal node.
    pub fn edge(&self) -> Option<&Arc<edge::Edge>> {
        self.shared.edge.as_ref()
    }

    pub fn trusted_keys(&self) -> &TrustedKeys {
        &self.shared.trusted_keys
    }

    /// The stored record of API key `id` (cached for a few seconds; see
    /// [`api_key_cache`]).
    pub async fn api_key(&self, id: &str) -> Result<Option<store::ApiKeyRecord>, ApiError> {
        Ok(self.shared.api_keys.get(&self.shared.store, id).await?)
    }

    /// The signature check of signing keys ([`request_signing`]).
    pub(crate) fn signatures(&self) -> &request_signing::Verifier {
        &self.shared.signatures
    }

    /// What the health endpoint reports of the caches and run slots.
    pub fn cache_state(&self) -> serde_json::Value {
        let shared = &self.shared;
        let slots = shared.config.max_concurrent_runs;
        serde_json::json!({
            "inline_scripts": shared.scripts.len(),
            "stored_scripts": shared.stored.len(),
            "modules": shared.runtime.cached_modules(),
            "modules_compiled": shared.runtime.modules_compiled(),
            "capacity": shared.config.cache_entries,
            "runs": {"active": slots - shared.runs.available_permits(), "slots": slots},
            "warm_instances": {"idle": shared.runtime.idle_instances(), "cap": shared.config.warm_instances},
        })
    }

    /// A run slot, or 503 after `queue_wait` (load shedding).
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        let wait = self.config().queue_wait;
        match tokio::time::timeout(wait, self.shared.runs.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(ApiError::Internal(closed.into())),
            Err(_) => Err(ApiError::Overloaded { waited: wait }),
        }
    }

    /// Compile or load `program` and run it once, in a run slot.
    ///
    /// The run itself happens on this task: wasm execution yields to the
    /// executor at every epoch tick (see `avap_runtime`), so a long run does
    /// not hold a worker thread, and short runs skip a thread hand-off.
    /// Only compilation, which cannot yield, moves to a blocking thread.
    /// Dropping the future (client gone, request timeout) cancels the run
    /// and frees its slot.
    pub async fn execute(
        &self,
        program: Program,
        request: Request,
        settings: RunSettings,
    ) -> Result<RunReport, ApiError> {
        let script = match &program {
            Program::Inline(_) => "inline",
            Program::Artifact(_) => "upload",
            Program::Loaded(_) => "stored",
        };
        self.execute_script(script, program, request, settings).await
    }

    /// [`AppState::execute`] of the script called `script` (its registry
    /// name, or `inline`): the `run` span ([`telemetry`]) and the list of
    /// runs in progress ([`debug`]) name it.
    pub async fn execute_script(
        &self,
        script: &str,
        program: Program,
        request: Request,
        settings: RunSettings,
    ) -> Result<RunReport, ApiError> {
        self.execute_script_with(script, program, request, settings, None).await
    }

    /// [`AppState::execute_script`] reaching `effects` instead of the
    /// configured ones when given (a transactional batch's runs share one
    /// database transaction, [`batch`]).
    pub async fn execute_script_with(
        &self,
        script: &str,
        program: Program,
        request: Request,
        settings: RunSettings,
        effects: Option<avap_runtime::Effects>,
    ) -> Result<RunReport, ApiError> {
        self.execute_traced(script, None, program, request, settings, effects)
            .await
    }

    /// Run a prepared job run in `slot`, a run slot its worker already holds
    /// ([`AppState::run_slot`]).
    pub(crate) async fn execute_in_slot(
        &self,
        slot: OwnedSemaphorePermit,
        run: execute::PreparedRun,
    ) -> Result<RunReport, ApiError> {
        self.execute_traced(
            &run.script_name,
            Some(slot),
            run.program,
            run.request,
            run.settings,
            None,
        )
        .await
    }

    /// A run slot, however long it takes (job workers wait; requests are
    /// shed after `queue_wait` by [`AppState::admit`]).
    pub(crate) async fn run_slot(&self) -> OwnedSemaphorePermit {
        self.shared
            .runs
            .clone()
            .acquire_owned()
            .await
            .expect("the run semaphore is never closed")
    }

    /// The body of [`AppState::execute_script_with`]: the `run` span and
    /// the list of runs in progress around [`AppState::run_program`].
    async fn execute_traced(
        &self,
        script: &str,
        slot: Option<OwnedSemaphorePermit>,
        program: Program,
        request: Request,
        settings: RunSettings,
        effects: Option<avap_runtime::Effects>,
    ) -> Result<RunReport, ApiError> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "run",
            script.name = script,
            outcome = tracing::field::Empty,
            fuel = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let _active = self
            .shared
            .active_runs
            .start(request_id::current().map(|id| id.0), script);
        let result = self
            .run_program(slot, program, request, settings, effects)
            .instrument(span.clone())
            .await;
        telemetry::record_run(&span, &result);
        result
    }

    /// The body of [`AppState::execute_script`].
    async fn run_program(
        &self,
        slot: Option<OwnedSemaphorePermit>,
        program: Program,
        request: Request,
        settings: RunSettings,
        effects: Option<avap_runtime::Effects>,
    ) -> Result<RunReport, ApiError> {
        let _slot = match slot {
            Some(slot) => slot,
            None => self.admit().await?,
        };
        let module = match program {
            Program::Inline(script) => match self.compiled(script).await? {
                Compiled::Module(module) => module,
                Compiled::CompileError(report) => return Ok(RunReport::clone(&report)),
            },
            // Boxed: the slow paths' futures would otherwise bloat every
            // run's future, which the middleware stack moves around.
            Program::Artifact(artifact) => {
                Box::pin(self.off_thread(move |shared| {
                    shared
                        .runtime
                        .load(&artifact)
                        .map_err(|e| load_error(e, "loading an artifact"))
                }))
                .await?
            }
            Program::Loaded(module) => module,
        };
        // Cached modules were loaded under the policy of their time; a reload may have changed it.
        self.shared
            .runtime
            .check_policy(&module)
            .map_err(|e| load_error(e, "checking the capability policy"))?;
        let input = RunInput {
            request,
            limits: settings.limits,
            time_zone: settings.time_zone,
            now: settings.now,
            effects: effects.unwrap_or_else(|| self.live().effects.clone()),
        };
        Ok(self.shared.runtime.run(&module, input).await)
    }

    /// The compiled form of an inline script, from the cache or compiled now.
    async fn compiled(&self, script: String) -> Result<Compiled, ApiError> {
        let resolved = Box::pin(self.resolve_includes(None, &script)).await?;
        // Keyed by the source and the library versions it resolved to, so
        // a library update is never answered with a module built before it.
        let key = cache::resolved_hash(&script, &resolved.used());
        let shared = &self.shared;
        if let Some(hit) = shared.scripts.get(&key) {
            shared.metrics.cache_hit();
            return Ok(hit);
        }
        shared.metrics.cache_miss();
        let built =
            Box::pin(self.off_thread(move |shared| {
                shared.build("inline.avap".to_owned(), script, RunPolicy::default(), &resolved)
            }))
            .await?;
        let compiled = match built {
            Ok(built) => Compiled::Module(built.module),
            Err(report) => Compiled::CompileError(Arc::new(report)),
        };
        shared.scripts.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// A stored script, loaded: from the cache, else read from the
    /// database and loaded. `None` when there is no such script (or version).
    pub async fn stored(&self, name: &str, version: Option<i64>) -> Result<Option<StoredScript>, ApiError> {
        let cache = &self.shared.stored;
        if let Some(hit) = cache.get(name, version) {
            return Ok(Some(hit));
        }
        Box::pin(self.load_stored(name, version)).await
    }

    /// [`AppState::stored`] on a cache miss.
    async fn load_stored(&self, name: &str, version: Option<i64>) -> Result<Option<StoredScript>, ApiError> {
        if let Some(edge) = &self.shared.edge {
            // An edge node runs what its disk mirror holds, not its database's registry.
            return Box::pin(edge::load_stored(self, edge, name, version)).await;
        }
        let cache = &self.shared.stored;
        let generation = cache.generation();
        let Some((found, artifact)) = self.store().artifact(name, version).await? else {
            return Ok(None);
        };
        let module = self.load_shared(artifact).await?;
        let script = StoredScript { version: found, module };
        cache.insert(generation, name, version, script.clone());
        Ok(Some(script))
    }

    /// Forget the cached versions of `name`: call after every registry
    /// write of it (once committed). With Redis, the other nodes are told too.
    pub fn script_changed(&self, name: &str) {
        self.shared.stored.invalidate(name);
        self.publish_invalidation(name);
    }

    /// `"ok"`, `"degraded"` (unreachable) or `"off"` (no `redis_url`).
    pub fn redis_health(&self) -> &'static str {
        self.shared.cluster.as_ref().map_or("off", cluster::Cluster::health)
    }

    /// Check, compile and sign `source` for the registry, and make sure this
    /// server can load it (policy included). `Err(report)` inside is the
    /// 400 `CompileError` report.
    pub async fn build(
        &self,
        name: &str,
        source: String,
        policy: RunPolicy,
    ) -> Result<Result<Built, RunReport>, ApiError> {
        let file_name = format!("{name}.avap");
        let resolved = self.resolve_includes(Some(name), &source).await?;
        let built = self
            .blocking(move |shared| shared.build(file_name, source, policy, &resolved))
            .await?;
        if let Ok(built) = &built {
            // The other nodes will run it soon: give them the compiled module.
            self.share_module(built.module.clone(), built.artifact.clone());
        }
        Ok(built)
    }

    /// The stored scripts `source` includes (the stored script `root`, or an
    /// inline script), at their current versions. An edge node mirrors
    /// artifacts, not sources: its inline scripts include nothing.
    pub(crate) async fn resolve_includes(
        &self,
        root: Option<&str>,
        source: &str,
    ) -> Result<libraries::Resolved, ApiError> {
        if self.shared.edge.is_some() {
            return Ok(libraries::Resolved::without_sources(
                "an edge node mirrors compiled scripts, not the sources of libraries",
            ));
        }
        libraries::resolve(self.store(), root, source).await
    }

    /// Run `work` in a run slot on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Shared) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _slot = self.admit().await?;
        self.off_thread(work).await
    }

    /// Run CPU-bound `work` that cannot yield (compiling, loading) on a
    /// blocking thread, so accepting, health checks and queue timeouts stay
    /// live — in a slot of the compile pool.
    ///
    /// The slot moves into the blocking task and is released only when the
    /// work ends, so compiles whose requests timed out still count against
    /// the pool; work whose request is gone before a slot frees up is never
    /// started. Waiting for a slot is bounded by `queue_wait` (503, like a
    /// run slot) and by the request's own deadline.
    async fn off_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Shared) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let wait = self.config().queue_wait;
        let permit = match tokio::time::timeout(wait, self.shared.compiles.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(closed)) => return Err(ApiError::Internal(closed.into())),
            Err(_) => {
                self.shared.metrics.compile_shed();
                return Err(ApiError::Overloaded { waited: wait });
            }
        };
        let wanted = WantedGuard::new();
        let still_wanted = wanted.flag();
        let shared = self.shared.clone();
        // The work's spans (compile) belong to the request's trace.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if !still_wanted.load(std::sync::atomic::Ordering::Acquire) {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "the request went away before compiling"
                )));
            }
            span.in_scope(|| work(&shared))
        })
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("compile task failed: {e}")))?
    }
}

/// Marks blocking work unwanted when the request that asked for it is
/// dropped (client gone, request timeout) before the work started.
struct WantedGuard(Arc<std::sync::atomic::AtomicBool>);

impl WantedGuard {
    fn new() -> WantedGuard {
        WantedGuard(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }

    fn flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.0)
    }
}

impl Drop for WantedGuard {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Shared {
    /// Check, compile, sign with the server key and load, in a `compile` span.
    fn build(
        &self,
        file_name: String,
        source: String,
        policy: RunPolicy,
        includes: &libraries::Resolved,
    ) -> Result<Result<Built, RunReport>, ApiError> {
        let span = tracing::info_span!(
            "compile",
            script.file = %file_name,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let _in = span.enter();
        let built = self.compile_and_load(file_name, source, policy, includes);
        let outcome = match &built {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "CompileError",
            Err(e) => e.kind(),
        };
        span.record("outcome", outcome);
        if outcome != "ok" {
            span.record("otel.status_code", "error");
        }
        built
    }

    fn compile_and_load(
        &self,
        file_name: String,
        source: String,
        policy: RunPolicy,
        includes: &libraries::Resolved,
    ) -> Result<Result<Built, RunReport>, ApiError> {
        let checked = check_file(SourceFile::new(file_name, source), includes);
        if checked.error_count() > 0 {
            return Ok(Err(compile_error_report(&checked)));
        }
        let libraries = includes.used();
        let artifact = compile_with_libraries(&checked, Some(&self.key), policy, libraries.clone()).bytes;
        let module = self
            .runtime
            .load(&artifact)
            .map_err(|e| load_error(e, "loading a freshly compiled script"))?;
        Ok(Ok(Built {
            artifact,
            module,
            libraries,
        }))
    }
}

/// A policy denial is the client's business (403); anything else is ours.
fn load_error(e: LoadError, doing: &'static str) -> ApiError {
    match e {
        denied @ LoadError::CapabilityDenied { .. } => ApiError::CapabilityDenied(denied.to_string()),
        LoadError::Artifact(avap_hostfns::artifact::ArtifactError::UntrustedKey { key_id }) => {
            ApiError::ClusterKeyMismatch { key_id }
        }
        other => ApiError::Internal(anyhow::Error::new(other).context(doing)),
    }
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    let protect = state.protect().clone();
    let mut router = Router::new()
        .route("/api/v1/execute", post(execute::execute))
        .route("/api/v1/check", post(check::check))
        .route("/api/v1/execute/batch", post(batch::execute_batch))
        .route("/api/v1/execute/file", post(upload::execute_file))
        .route("/api/v1/scripts", get(registry::list).post(registry::create))
        .route("/api/v1/scripts/{name}", get(registry::show).delete(registry::delete))
        .route("/api/v1/scripts/{name}/rollback", post(registry::rollback))
        .route("/api/v1/scripts/{name}/rebuild", post(registry::rebuild))
        .route("/api/v1/jobs", get(jobs::api::list).post(jobs::api::submit))
        .route("/api/v1/jobs/{id}", get(jobs::api::show).delete(jobs::api::cancel))
        .route("/api/v1/jobs/{id}/retry", post(jobs::api::retry))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/audit/export", get(audit::export))
        .route("/api/v1/registry/scripts", get(registry_sync::scripts))
        .route("/api/v1/registry/artifacts/{sha256}", get(registry_sync::artifact))
        .route("/api/v1/run/{name}", any(run::run_stored))
        // A static segment beats the wildcard: GET (and HEAD) describe the
        // script; other methods still run its endpoint at `/openapi.json`.
        .route(
            "/api/v1/run/{name}/openapi.json",
            get(script_api::script_openapi).fallback(script_api::run_at_openapi_path),
        )
        .route("/api/v1/run/{name}/{*rest}", any(run::run_stored_at))
        .route("/api/v1/health", get(meta::health))
        .route("/api/v1/info", get(meta::info))
        .route("/api/v1/metrics", get(metrics::metrics))
        .route("/api/v1/openapi.json", get(openapi::openapi))
        .route("/api/v1/debug/runs", get(debug::runs))
        .route("/api/v1/debug/cache", get(debug::cache))
        .route("/api/v1/debug/config", get(debug::config))
        .route("/api/v1/debug/profile", post(debug::profile))
        .route("/api/v1/admin/reload", post(reload::reload_handler));
    if state.config().playground {
        router = router
            .route("/playground", get(playground::page))
            .route("/playground/", get(playground::trailing_slash))
            .route("/playground/{file}", get(playground::asset));
    }
    // The middleware, outermost first, as one stack applied once: every
    // `Router::layer` boxes the routes again, and each layer's service is
    // cloned per request together with everything it wraps (with a layer
    // per concern that was ~80 boxed clones and ~100 allocations per
    // request, more than the script's run). The rate limits and the
    // request timeout are one layer (`gate`) for the same reason.
    let headers = protect::SecurityHeaders::new(&state.config().protect);
    let middleware = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn(request_id::request_id))
        // gzip for clients that accept it (tower-http skips bodies under 32 bytes).
        .layer(tower_http::compression::CompressionLayer::new())
        .map_response(move |response| headers.apply(response))
        .layer(axum::middleware::from_fn_with_state(
            protect.clone(),
            protect::cors_layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .layer(DefaultBodyLimit::max(state.config().max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(protect, protect::gate))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_key));
    router
        .fallback(meta::not_found)
        .method_not_allowed_fallback(meta::method_not_allowed)
        .layer(middleware)
        .with_state(state)
}

/// What a long-running command (`serve`, `worker`) starts with: the async
/// runtime first (the trace exporter's connections live on it), then
/// tracing, then logging. `Err(code)` after printing why `command` cannot
/// start.
fn start_process(
    settings: &config::Settings,
    command: &str,
) -> Result<Result<(tokio::runtime::Runtime, telemetry::TracesGuard, logs::LogGuard), ExitCode>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (trace_layer, trace_exporter) = match runtime.block_on(async { telemetry::start(&settings.telemetry_config()) })
    {
        Ok(started) => started,
        Err(e) => {
            eprintln!("{command}: {e}");
            return Ok(Err(ExitCode::from(2)));
        }
    };
    match logs::init(&settings.log_options(), trace_layer) {
        Ok(log_writer) => Ok(Ok((runtime, trace_exporter, log_writer))),
        Err(e) => {
            eprintln!("{command}: {e}");
            Ok(Err(ExitCode::from(2)))
        }
    }
}

/// `avap serve`: resolve the configuration ([`config`]), then serve until
/// SIGINT or SIGTERM and let in-flight requests finish. A configuration
/// problem exits with 2 before anything starts.
pub fn serve(args: &ServeArgs) -> Result<ExitCode> {
    let config_error = |e: config::ConfigError| {
        eprintln!("avap serve: config error: {e}");
        ExitCode::from(2)
    };
    let resolved = match config::resolve(args) {
        Ok(resolved) => resolved,
        Err(e) => return Ok(config_error(e)),
    };
    if args.print_config {
        return Ok(match resolved.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => config_error(e),
        });
    }
    let settings = &resolved.settings;
    let database = match settings.database() {
        Ok(location) => location,
        Err(e) => return Ok(config_error(e)),
    };
    let (runtime, trace_exporter, log_writer) = match start_process(settings, "avap serve")? {
        Ok(started) => started,
        Err(code) => return Ok(code),
    };
    let mut server_config = settings.server_config();
    server_config.effective_config = resolved.to_toml().ok().map(Arc::from);
    server_config.data_dir = Some(settings.data_dir.clone());
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let key = keys::load_or_create(data_dir)?;
    runtime.block_on(async {
        let store = Store::connect(&database).await?;
        let trusted = keys::load_trusted(data_dir)?;
        let cluster_keys = keys::load_cluster_keys(data_dir)?;
        let state = AppState::with_trusted_keys(server_config, store, key, trusted, cluster_keys)?;
        follow_hangups(&state, args.clone(), settings, &log_writer);
        // An edge node serves its mirror at once and follows the registry in the background.
        edge::spawn_sync(&state);
        run(&settings.listen, data_dir, state).await
    })?;
    // The last spans first: the exporter may still log.
    drop(trace_exporter);
    drop(log_writer);
    Ok(ExitCode::SUCCESS)
}

async fn run(listen: &str, data_dir: &Path, state: AppState) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (is another server using it? pass --listen ADDR:PORT)"))?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    // Redis reached (or known down) before the first request; pre-warming
    // goes on in the background.
    state.start_background().await;
    let jobs = jobs::start(&state, state.config().jobs.workers);
    // Scripts and tests read this exact line from stdout; logs go to stderr.
    println!(
        "avap serve listening on http://{addr} (data dir {})",
        data_dir.display()
    );
    tracing::info!(%addr, data_dir = %data_dir.display(), "listening");
    if state.config().playground {
        tracing::info!("playground at http://{addr}/playground");
    }
    if !addr.ip().is_loopback() && state.config().allow_anonymous {
        tracing::warn!(
            %addr,
            "not a loopback address and allow_anonymous is on: anyone who can reach it can store and run scripts"
        );
    }
    let stopping = Arc::new(Notify::new());
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down; finishing in-flight requests");
            stopping.notify_one();
        }
    };
    let audit = state.audit().clone();
    let limits = state.config().connections.clone();
    let counters = state.metrics().connections();
    let server = listen::serve(listener, app(state), limits, counters, signal);
    tokio::select! {
        () = server => {}
        () = async { stopping.notified().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("requests still open after {} s; stopping anyway", SHUTDOWN_GRACE.as_secs());
        }
    }
    jobs.shutdown(SHUTDOWN_GRACE).await;
    audit.close().await;
    Ok(())
}

/// `avap worker`: run jobs from the configured queue (`jobs_url`) with
/// `jobs_workers` at once, and no HTTP API, until SIGINT or SIGTERM; then
/// let running jobs finish (for up to 30 s). The same configuration as
/// `avap serve` (file, `AVAP_*`, flags).
pub fn worker(args: &WorkerArgs) -> Result<ExitCode> {
    let config_error = |e: &dyn std::fmt::Display| {
        eprintln!("avap worker: config error: {e}");
        ExitCode::from(2)
    };
    let resolved = match config::resolve(&args.serve_args()) {
        Ok(resolved) => resolved,
        Err(e) => return Ok(config_error(&e)),
    };
    let settings = &resolved.settings;
    if settings.jobs_workers == 0 {
        return Ok(config_error(&format!(
            "jobs_workers is 0 (from {}): a worker with no job slots would run nothing; pass --jobs-workers N",
            resolved.origin("jobs_workers")
        )));
    }
    let database = match settings.database() {
        Ok(location) => location,
        Err(e) => return Ok(config_error(&e)),
    };
    let (runtime, trace_exporter, log_writer) = match start_process(settings, "avap worker")? {
        Ok(started) => started,
        Err(code) => return Ok(code),
    };
    let mut server_config = settings.server_config();
    server_config.data_dir = Some(settings.data_dir.clone());
    let data_dir = settings.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    // The server key signs inline job scripts compiled here; stored ones
    // were signed by the nodes that stored them (trusted as for `serve`).
    let key = keys::load_or_create(&data_dir)?;
    runtime.block_on(async {
        let store = Store::connect(&database).await?;
        let trusted = keys::load_trusted(&data_dir)?;
        let cluster_keys = keys::load_cluster_keys(&data_dir)?;
        let state = AppState::with_trusted_keys(server_config, store, key, trusted, cluster_keys)?;
        follow_hangups(&state, args.serve_args(), settings, &log_writer);
        state.start_background().await;
        let workers = state.config().jobs.workers;
        let jobs = jobs::start(&state, workers);
        // Scripts and tests read this exact line from stdout; logs go to stderr.
        println!(
            "avap worker running {workers} jobs at once (data dir {})",
            data_dir.display()
        );
        shutdown_signal().await;
        tracing::info!("shutting down; letting running jobs finish");
        jobs.shutdown(SHUTDOWN_GRACE).await;
        state.audit().close().await;
        anyhow::Ok(())
    })?;
    drop(trace_exporter);
    drop(log_writer);
    Ok(ExitCode::SUCCESS)
}

/// Let `state` be reloaded from `args` (whose resolved settings are
/// `settings`), on `POST /api/v1/admin/reload` and on every SIGHUP, which
/// also reopens the log file.
fn follow_hangups(state: &AppState, args: ServeArgs, settings: &config::Settings, log_writer: &logs::LogGuard) {
    state.set_reloader(reload::Reloader::new(
        args,
        settings.clone(),
        Some(log_writer.level_setter()),
    ));
    let on_signal = state.clone();
    tokio::spawn(logs::on_hangup(log_writer.reopener(), move || {
        let state = on_signal.clone();
        async move { reload::on_signal(&state).await }
    }));
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// `$XDG_DATA_HOME/avap`, else `$HOME/.local/share/avap`.
pub fn default_data_dir() -> Result<PathBuf> {
    let xdg = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let home = || {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".local/share"))
    };
    let base = xdg
        .or_else(home)
        .context("no data directory: neither XDG_DATA_HOME nor HOME is set; pass --data-dir DIR")?;
    Ok(base.join("avap"))
}

#[cfg(test)]
mod tests {
    use axum::extract::State;

    use super::execute::{ExecuteRequest, execute};
    use super::extract::JsonBody;
    use super::*;

    async fn state(max_concurrent_runs: usize, queue_wait: Duration) -> AppState {
        let config = ServerConfig {
            max_concurrent_runs,
            queue_wait,
            ..ServerConfig::for_this_machine()
        };
        let store = Store::in_memory().await.expect("store");
        let key = avap_hostfns::artifact::generate_key().expect("key");
        AppState::new(config, store, key).expect("state")
    }

    fn anonymous() -> store::Actor {
        store::Actor {
            actor: "anonymous".to_owned(),
            request_id: None,
        }
    }

    fn body(script: &str) -> JsonBody<ExecuteRequest> {
        JsonBody(serde_json::from_value(serde_json::json!({ "script": script })).expect("body"))
    }

    #[tokio::test]
    async fn sheds_load_when_every_slot_is_busy() {
        let state = state(1, Duration::from_millis(20)).await;
        let busy = state.admit().await.expect("the only slot");
        let err = execute(State(state.clone()), anonymous(), body("x = 1\naddResult(x)\n"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "Overloaded");
        assert_eq!(err.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        drop(busy);
        let ok = execute(State(state.clone()), anonymous(), body("x = 1\naddResult(x)\n"))
            .await
            .expect("runs");
        assert_eq!(ok.status(), axum::http::StatusCode::OK);
    }

    #[tokio::test]
    async fn repeated_scripts_compile_once() {
        let state = state(2, Duration::from_secs(1)).await;
        for _ in 0..3 {
            execute(State(state.clone()), anonymous(), body("x = 2\naddResult(x)\n"))
                .await
                .expect("runs");
        }
        execute(State(state.clone()), anonymous(), body("if(\n"))
            .await
            .expect("compile error is a response");
        assert_eq!(state.cache_state()["inline_scripts"], 2);
    }
}
