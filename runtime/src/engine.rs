//! The process-wide [`Runtime`]: one wasmtime `Engine` (pooling allocator,
//! fuel, epoch interruption), one `Linker`, an epoch ticker thread and the
//! cache of loaded artifacts (the L1 cache: bounded by entry count and
//! time to idle, keyed by the artifact's SHA-256).

use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use avap_hostfns::artifact::{self, SigningKey, TrustedKeys, Verified};
use moka::sync::Cache;
use sha2::{Digest as _, Sha256};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Linker, Module, OptLevel, PoolingAllocationConfig};

use crate::error::LoadError;
use crate::load::LoadedModule;
use crate::module_cache::{CacheOutcome, DiskCache};
use crate::policy::CapabilityPolicy;
use crate::precompiled;
use crate::state::RunState;

/// Engine-wide settings (per-run limits are [`crate::Limits`]).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Runs that may be in flight at once (pool slots).
    pub max_concurrent_runs: u32,
    /// Largest linear memory a module may declare, in bytes.
    pub max_linear_memory: usize,
    /// Native wasm stack for one run; a backstop behind the AVAP stack budget.
    pub max_wasm_stack: usize,
    /// Epoch tick: the granularity of wall-time limits.
    pub epoch_tick: Duration,
    /// Compiled modules kept in the cache.
    pub cache_entries: usize,
    /// A cached module unused this long is dropped; `None` keeps it until
    /// the entry bound evicts it.
    pub cache_time_to_idle: Option<Duration>,
    /// Keys whose signatures make an artifact loadable (sandboxed wasm).
    pub trusted_keys: TrustedKeys,
    /// Keys whose seals make a `.cwasm` loadable ([`Runtime::load_precompiled`]).
    /// Kept apart from `trusted_keys` on purpose: a `.cwasm` is native code
    /// that runs outside the sandbox, so trusting someone's artifacts must
    /// not mean running their native code. Empty (the default): no `.cwasm`
    /// is ever loaded.
    pub precompiled_keys: TrustedKeys,
    pub allow_unsigned: bool,
    /// The capability classes modules may import (the start value;
    /// [`Runtime::set_policy`] changes it while the runtime lives).
    pub policy: CapabilityPolicy,
    /// Turn fuel metering and epoch checks off (for measuring their cost).
    pub unmetered: bool,
    /// Reserve instance slots up front (wasmtime's pooling allocator: the
    /// cheapest instantiation, for servers). `false` allocates each instance
    /// when it is created, which is what a process that runs one script and
    /// exits wants: the pool's address-space reservation costs more than
    /// the one instantiation it speeds up.
    pub pooling: bool,
    /// `go_async` blocks one run may hold started and not yet gathered;
    /// starting one more ends the run with `MemoryLimit` (each block costs
    /// an instance, a heap and its outcome).
    pub max_async_blocks: u32,
    /// Instance slots for `go_async` blocks across the process, besides the
    /// `max_concurrent_runs` slots of the runs themselves. A block waits
    /// for a free slot (within its run's deadline).
    pub async_block_slots: u32,
    /// Instances of finished runs kept, reset, for the next run of the same
    /// module, across all modules (`crate::recycle`; 0 turns reuse off).
    /// The pool gets this many slots more, so idle instances never take a
    /// run's slot.
    pub warm_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_concurrent_runs: 64,
            max_linear_memory: 16 << 20,
            max_wasm_stack: 2 << 20,
            epoch_tick: Duration::from_millis(2),
            cache_entries: 256,
            cache_time_to_idle: None,
            trusted_keys: TrustedKeys::default(),
            precompiled_keys: TrustedKeys::default(),
            allow_unsigned: false,
            policy: CapabilityPolicy::default(),
            unmetered: false,
            pooling: true,
            max_async_blocks: 32,
            async_block_slots: 64,
            warm_instances: 16,
        }
    }
}

/// Shared by every run in the process. Cheap to share behind an `Arc`.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<RunState>,
    pub(crate) config: RuntimeConfig,
    /// [`Runtime::engine_fingerprint`], computed once.
    fingerprint: String,
    /// Loaded modules by the hex SHA-256 of their artifact.
    cache: Cache<String, Arc<LoadedModule>>,
    /// Modules compiled by wasmtime (not taken from a cache or a `.cwasm`).
    compiled: AtomicU64,
    /// The capability policy now in force (a reload may change it).
    policy: RwLock<CapabilityPolicy>,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// Free instance slots for `go_async` blocks
    /// ([`RuntimeConfig::async_block_slots`]).
    pub(crate) block_slots: Arc<tokio::sync::Semaphore>,
    /// Idle recycled instances across the loaded modules
    /// ([`RuntimeConfig::warm_instances`]).
    warm_total: Arc<AtomicU32>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Runtime, LoadError> {
        let engine = Engine::new(&engine_config(&config)).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let linker = crate::linker::build(&engine).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let ticker = (!config.unmetered).then(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let (e, s, tick) = (engine.clone(), stop.clone(), config.epoch_tick);
            let handle = std::thread::Builder::new()
                .name("avap-epoch".into())
                .spawn(move || {
                    // Parked rather than asleep, so dropping the runtime
                    // wakes it at once: a one-shot `avap run` would
                    // otherwise wait up to a tick to exit.
                    while !s.load(Ordering::Relaxed) {
                        std::thread::park_timeout(tick);
                        e.increment_epoch();
                    }
                })
                .expect("spawn the epoch ticker thread");
            (stop, handle)
        });
        let block_slots = Arc::new(tokio::sync::Semaphore::new(config.async_block_slots as usize));
        Ok(Runtime {
            fingerprint: fingerprint(&engine),
            engine,
            linker,
            cache: module_cache(&config),
            policy: RwLock::new(config.policy.clone()),
            config,
            compiled: AtomicU64::new(0),
            ticker,
            block_slots,
            warm_total: Arc::default(),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The capability policy now in force.
    pub fn policy(&self) -> CapabilityPolicy {
        self.policy.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Put `policy` in force: loads check against it from now on, and so
    /// does [`Runtime::check_policy`], which callers run before every run
    /// of a module, however long it was cached.
    pub fn set_policy(&self, policy: CapabilityPolicy) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// Refuse `module` if the policy now in force denies a class it imports
    /// (it may have been loaded under an older policy).
    pub fn check_policy(&self, module: &LoadedModule) -> Result<(), LoadError> {
        module.allowed_by(&self.policy.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiled modules held in the load cache.
    pub fn cached_modules(&self) -> usize {
        // Evictions are applied lazily; settle them so the count is exact.
        self.cache.run_pending_tasks();
        usize::try_from(self.cache.entry_count()).unwrap_or(usize::MAX)
    }

    /// The loaded module of the artifact with this (hex) SHA-256, if cached.
    pub fn cached_module(&self, sha256: &str) -> Option<Arc<LoadedModule>> {
        self.cache.get(sha256)
    }

    /// Instances of finished runs kept, reset, for the next run of their
    /// module ([`RuntimeConfig::warm_instances`]).
    pub fn idle_instances(&self) -> u32 {
        self.warm_total.load(Ordering::Relaxed)
    }

    /// How many modules wasmtime compiled since start (cache hits and
    /// `.cwasm` loads are not compilations).
    pub fn modules_compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Identifies what a `.cwasm` made by this runtime is compatible with:
    /// the wasmtime version and engine configuration (wasmtime's
    /// compatibility hash) and our `.cwasm` format version. Engines with the
    /// same fingerprint can load each other's `.cwasm` files.
    pub fn engine_fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Verify, check against the policy, compile (or take from the cache).
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedModule>, LoadError> {
        Ok(self.load_with(bytes, |_| Ok((self.compile(bytes)?, ())))?.0)
    }

    /// What every load shares: the loaded module of identical bytes from
    /// the cache (verified when they were cached: the trust configuration
    /// is fixed for the runtime's life; `None` for `T` then), else verify,
    /// check against the policy, let `native` make the module (compile it,
    /// or deserialize sealed native code) and cache the result.
    fn load_with<T>(
        &self,
        bytes: &[u8],
        native: impl FnOnce(&Verified) -> Result<(Module, T), LoadError>,
    ) -> Result<(Arc<LoadedModule>, Option<T>), LoadError> {
        let key = hex::encode(Sha256::digest(bytes));
        if let Some(m) = self.cache.get(&key) {
            return Ok((m, None));
        }
        let verified = artifact::verify(bytes, &self.config.trusted_keys, self.config.allow_unsigned)?;
        crate::load::check_policy(&verified.info.meta, &self.policy())?;
        let (module, made) = native(&verified)?;
        let loaded = Arc::new(LoadedModule::new(
            &self.linker,
            &module,
            bytes,
            verified,
            Arc::clone(&self.warm_total),
            self.config.warm_instances,
        )?);
        self.cache.insert(key, loaded.clone());
        Ok((loaded, Some(made)))
    }

    /// Cranelift, counted in [`Runtime::modules_compiled`].
    fn compile(&self, bytes: &[u8]) -> Result<Module, LoadError> {
        let module = Module::new(&self.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        Ok(module)
    }

    /// The sealed `.cwasm` form (as [`Runtime::precompile`] writes it) of a
    /// module this runtime already compiled, sealed with `key`: wasmtime
    /// serializes the compiled code instead of compiling the artifact again.
    pub fn serialize(&self, module: &LoadedModule, key: &SigningKey) -> Result<Vec<u8>, LoadError> {
        let native = module
            .pre
            .module()
            .serialize()
            .map_err(|e| LoadError::Compile(format!("cannot serialize the compiled module: {e:#}")))?;
        Ok(precompiled::seal(key, &self.fingerprint, module.sha256(), &native))
    }

    /// Compile an artifact ahead of time for this engine: a `.cwasm` sealed
    /// with `key` for this engine and this artifact's SHA-256 (see
    /// [`precompiled`](crate::precompiled)), so it is only ever used with the
    /// signed artifact it came from, by a runtime that trusts `key` for
    /// native code.
    pub fn precompile(&self, bytes: &[u8], key: &SigningKey) -> Result<Vec<u8>, LoadError> {
        let info = artifact::inspect(bytes)?;
        let native = self
            .engine
            .precompile_module(bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        Ok(precompiled::seal(key, &self.fingerprint, &info.sha256, &native))
    }

    /// [`Runtime::load`] using a sealed `.cwasm` (from [`Runtime::precompile`]
    /// or [`Runtime::serialize`]) instead of compiling.
    ///
    /// This is the one place that turns outside bytes into native code. Its
    /// contract: the artifact is verified and checked against the policy as
    /// in [`Runtime::load`]; the `.cwasm` is deserialized only when a key in
    /// [`RuntimeConfig::precompiled_keys`] sealed it for this engine
    /// fingerprint, this artifact's SHA-256 and these exact native bytes
    /// ([`precompiled::open`]). Anything else is a [`LoadError::Seal`].
    ///
    /// The loaded module joins the cache; an artifact already cached is
    /// returned as it is, without looking at `cwasm`.
    pub fn load_precompiled(&self, bytes: &[u8], cwasm: &[u8]) -> Result<Arc<LoadedModule>, LoadError> {
        let loaded = self.load_with(bytes, |verified| {
            let native = precompiled::open(
                cwasm,
                &self.config.precompiled_keys,
                &self.fingerprint,
                &verified.info.sha256,
            )?;
            // SAFETY: `deserialize` trusts its input to be wasmtime output.
            // These bytes are exactly what a key the operator trusts for
            // native code (`precompiled_keys`) signed as wasmtime's output
            // for this engine fingerprint and this verified artifact
            // (`precompiled::open` checked the signature over them);
            // wasmtime itself also refuses output of another version or
            // engine configuration.
            #[allow(unsafe_code)]
            let module = unsafe { Module::deserialize(&self.engine, native) }.map_err(|e| {
                LoadError::Precompiled(format!(
                    "{e:#}; the .cwasm is tied to the wasmtime version and engine configuration — recompile it"
                ))
            })?;
            Ok((module, ()))
        })?;
        Ok(loaded.0)
    }

    /// [`Runtime::load`] through the on-disk cache of native code `cache`
    /// ([`crate::module_cache`]): the artifact is verified and checked
    /// against the policy exactly as there; then its native code comes from
    /// the cache when an entry sealed by the cache's key for this engine and
    /// this artifact's signed region is there, and is compiled (and written
    /// to the cache) otherwise. A broken or foreign entry is never loaded:
    /// it is compiled again and overwritten. Failing to write the cache is
    /// not an error (the next run compiles again).
    pub fn load_cached(&self, bytes: &[u8], cache: &DiskCache) -> Result<(Arc<LoadedModule>, CacheOutcome), LoadError> {
        let (loaded, outcome) = self.load_with(bytes, |verified| {
            let signed_sha256 = &verified.info.signed_sha256;
            let entry = cache.entry(&self.fingerprint, signed_sha256);
            let from_disk = std::fs::read(&entry).ok().and_then(|sealed| {
                let native = precompiled::open(&sealed, cache.trusted(), &self.fingerprint, signed_sha256).ok()?;
                // SAFETY: as in `load_precompiled`: these bytes are what the
                // cache's own key sealed as wasmtime's output for this engine
                // fingerprint and this verified artifact's signed region (the
                // wasm the native code was compiled from); wasmtime also
                // refuses output of another version or configuration.
                #[allow(unsafe_code)]
                let module = unsafe { Module::deserialize(&self.engine, native) };
                module.ok()
            });
            if let Some(module) = from_disk {
                DiskCache::touch(&entry);
                return Ok((module, CacheOutcome::Hit));
            }
            let module = self.compile(bytes)?;
            let written = module.serialize().map_err(std::io::Error::other).and_then(|native| {
                let sealed = precompiled::seal(cache.key(), &self.fingerprint, signed_sha256, &native);
                cache.store(&entry, &sealed)
            });
            if let Err(e) = written {
                tracing::debug!(path = %entry.display(), "module cache not written: {e}");
            }
            Ok((module, CacheOutcome::Miss))
        })?;
        Ok((loaded, outcome.unwrap_or(CacheOutcome::Memory)))
    }
}

/// See [`Runtime::engine_fingerprint`].
fn fingerprint(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    hasher.write(precompiled::MAGIC);
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    let digest = hasher.0.finalize();
    hex::encode(&digest[..16])
}

/// The load cache: at most `cache_entries` modules (moka's admission and
/// eviction keep the frequently used ones), each dropped after
/// `cache_time_to_idle` without use.
fn module_cache(config: &RuntimeConfig) -> Cache<String, Arc<LoadedModule>> {
    let builder = Cache::builder().max_capacity(u64::try_from(config.cache_entries.max(1)).unwrap_or(u64::MAX));
    match config.cache_time_to_idle {
        Some(idle) => builder.time_to_idle(idle).build(),
        None => builder.build(),
    }
}

/// Feeds what a `Hash` implementation writes into SHA-256, for a digest
/// that is the same in every process (std's hashers promise no such thing).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

/// Bytes of each pooled linear memory and table kept resident between runs.
const KEEP_RESIDENT: usize = 64 << 10;

fn engine_config(c: &RuntimeConfig) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    let slots = c
        .max_concurrent_runs
        .saturating_add(c.async_block_slots)
        .saturating_add(c.warm_instances);
    pool.total_memories(slots)
        .total_core_instances(slots)
        .total_tables(slots)
        .total_stacks(slots)
        .max_memory_size(c.max_linear_memory)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        // A run touches the argument area and the global slots at the bottom
        // of its linear memory (values live on the host heap). Resetting that
        // with memset instead of madvise spares every run the page faults
        // and the cross-core TLB shootdowns of an madvise. Decommits are not
        // batched (the default batch size of 1): a batched slot stays taken
        // until some later flush, so a run admitted by the server's run-slot
        // semaphore could find the pool full (seen under load as
        // "maximum concurrent limit … reached"). PAGEMAP_SCAN (reset only
        // the pages a run wrote) was measured too: its ioctl per run cost
        // more than the memset of 64 KiB (4.4 µs against 3.6 µs a hello run).
        // Format 4 modules size their memory in bytes (4 KiB for a small
        // script), so only that much is reset.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT);
    let strategy = if c.pooling {
        InstanceAllocationStrategy::Pooling(pool)
    } else {
        InstanceAllocationStrategy::OnDemand
    };
    let mut cfg = Config::new();
    cfg.allocation_strategy(strategy)
        // Modules of format 4 size their memory in bytes (one-byte pages,
        // whole 4 KiB host pages): what is reset after a run is that, not a
        // 64 KiB wasm page. Their memory accesses get explicit bounds checks
        // (no guard-page elision below the host page size); the hot loops
        // keep their variables in locals, so that costs nothing measurable
        // (BENCHMARKS.md, part 8).
        .wasm_custom_page_sizes(true)
        .consume_fuel(!c.unmetered)
        .epoch_interruption(!c.unmetered)
        .max_wasm_stack(c.max_wasm_stack)
        .async_stack_size(c.max_wasm_stack + (1 << 20))
        .cranelift_opt_level(OptLevel::Speed);
    cfg
}
