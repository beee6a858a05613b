//! The process-wide [`Runtime`]: one wasmtime `Engine` (pooling allocator,
//! fuel, epoch interruption), one `Linker`, an epoch ticker thread and the
//! cache of loaded artifacts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use avap_hostfns::artifact::{self, TrustedKeys};
use sha2::{Digest as _, Sha256};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Linker, Module, OptLevel, PoolingAllocationConfig};

use crate::error::LoadError;
use crate::load::LoadedModule;
use crate::policy::CapabilityPolicy;
use crate::state::RunState;

/// First bytes of a `.cwasm` file written by [`Runtime::precompile`].
const CWASM_MAGIC: &[u8] = b"AVAP-CWASM-1\n";

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
    pub trusted_keys: TrustedKeys,
    pub allow_unsigned: bool,
    pub policy: CapabilityPolicy,
    /// Turn fuel metering and epoch checks off (for measuring their cost).
    pub unmetered: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_concurrent_runs: 64,
            max_linear_memory: 16 << 20,
            max_wasm_stack: 2 << 20,
            epoch_tick: Duration::from_millis(2),
            cache_entries: 256,
            trusted_keys: TrustedKeys::default(),
            allow_unsigned: false,
            policy: CapabilityPolicy::default(),
            unmetered: false,
        }
    }
}

/// Shared by every run in the process. Cheap to share behind an `Arc`.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<RunState>,
    pub(crate) config: RuntimeConfig,
    cache: Mutex<HashMap<String, Arc<LoadedModule>>>,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
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
                    while !s.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        e.increment_epoch();
                    }
                })
                .expect("spawn the epoch ticker thread");
            (stop, handle)
        });
        Ok(Runtime {
            engine,
            linker,
            config,
            cache: Mutex::new(HashMap::new()),
            ticker,
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiled modules held in the load cache.
    pub fn cached_modules(&self) -> usize {
        self.cache.lock().expect("cache lock").len()
    }

    /// Verify, check against the policy, compile (or take from the cache).
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedModule>, LoadError> {
        // Identical bytes were verified when they were cached (the trust
        // configuration is fixed for the runtime's life).
        let key = hex::encode(Sha256::digest(bytes));
        if let Some(m) = self.cache.lock().expect("cache lock").get(&key) {
            return Ok(m.clone());
        }
        let verified = artifact::verify(bytes, &self.config.trusted_keys, self.config.allow_unsigned)?;
        crate::load::check_policy(&verified.info.meta, &self.config.policy)?;
        let module = Module::new(&self.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let loaded = Arc::new(LoadedModule::new(&self.linker, &module, verified)?);
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= self.config.cache_entries {
            cache.clear();
        }
        cache.insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Compile an artifact ahead of time for this engine (`.cwasm`). The
    /// result starts with a header binding it to the artifact's SHA-256, so
    /// it is only ever used together with the signed artifact it came from.
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
        let info = artifact::inspect(bytes)?;
        let native = self
            .engine
            .precompile_module(bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let mut out = CWASM_MAGIC.to_vec();
        out.extend_from_slice(info.sha256.as_bytes());
        out.extend_from_slice(&native);
        Ok(out)
    }

    /// [`Runtime::load`] using a `.cwasm` from [`Runtime::precompile`]
    /// instead of compiling. The artifact is verified as usual; the `.cwasm`
    /// must name that artifact's SHA-256 and match this engine's
    /// configuration, or it is refused.
    ///
    /// A `.cwasm` is native code: only pass files from a location the
    /// operator controls (the artifact's signature does not cover it).
    pub fn load_precompiled(&self, bytes: &[u8], cwasm: &[u8]) -> Result<Arc<LoadedModule>, LoadError> {
        let verified = artifact::verify(bytes, &self.config.trusted_keys, self.config.allow_unsigned)?;
        crate::load::check_policy(&verified.info.meta, &self.config.policy)?;
        let rest = cwasm
            .strip_prefix(CWASM_MAGIC)
            .ok_or_else(|| LoadError::Precompiled("not an AVAP .cwasm file (bad header)".into()))?;
        let sha = verified.info.sha256.as_bytes();
        let native = rest.strip_prefix(sha).ok_or_else(|| {
            LoadError::Precompiled(
                "the .cwasm was made from a different artifact; run `avap compile --precompile` again".into(),
            )
        })?;
        // SAFETY: `deserialize` trusts its input to be wasmtime output. The
        // bytes come from an operator-controlled file produced by
        // `precompile` (documented above); wasmtime itself refuses output of
        // another version or engine configuration.
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize(&self.engine, native) }.map_err(|e| {
            LoadError::Precompiled(format!(
                "{e:#}; the .cwasm is tied to the wasmtime version and engine configuration — recompile it"
            ))
        })?;
        Ok(Arc::new(LoadedModule::new(&self.linker, &module, verified)?))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

/// Bytes of each pooled linear memory and table kept resident between runs.
const KEEP_RESIDENT: usize = 64 << 10;

fn engine_config(c: &RuntimeConfig) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_memories(c.max_concurrent_runs)
        .total_core_instances(c.max_concurrent_runs)
        .total_tables(c.max_concurrent_runs)
        .total_stacks(c.max_concurrent_runs)
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
        // "maximum concurrent limit … reached").
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT);
    let mut cfg = Config::new();
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .consume_fuel(!c.unmetered)
        .epoch_interruption(!c.unmetered)
        .max_wasm_stack(c.max_wasm_stack)
        .async_stack_size(c.max_wasm_stack + (1 << 20))
        .cranelift_opt_level(OptLevel::Speed);
    cfg
}
