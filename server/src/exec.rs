//! Compile-and-run glue shared by `avap run`, `avap conformance` and the
//! server: source or artifact in, response envelope out.
//!
//! Sources compiled in this process are signed with an ephemeral key that
//! only this process trusts, so the runtime never needs `--allow-unsigned`
//! for them; `.wasm` files must carry a signature from a trusted key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use avap_codegen::diag::Diagnostic;
use avap_codegen::{CheckedProgram, check_file, compile};
use avap_hostfns::Request;
use avap_hostfns::artifact::{SigningKey, TrustedKeys, generate_key};
use avap_runtime::module_cache::{CacheOutcome, DiskCache};
use avap_runtime::{
    CapabilityPolicy, Effects, Limits, LoadError, LoadedModule, RunInput, RunReport, Runtime, RuntimeConfig,
};
use serde_json::json;

use crate::fs_loader::{FsLoader, read_source};

/// How runs are set up, besides the program and the request.
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    pub limits: Limits,
    /// IANA time zone; `None` = UTC.
    pub time_zone: Option<avap_hostfns::zone::Zone>,
    /// A fixed clock; `None` = the real clock.
    pub now: Option<chrono::DateTime<chrono::Utc>>,
}

/// Process-wide executor: one runtime, one ephemeral signing key.
pub struct Executor {
    runtime: Arc<Runtime>,
    key: SigningKey,
    /// What effect commands may reach in [`Executor::run`] (default: nothing).
    effects: Effects,
    /// Directories `include` may read besides the script's own
    /// (`--include-path`, canonical).
    include_paths: Vec<PathBuf>,
    /// Native code of earlier processes' compilations (`avap run`); `None`
    /// compiles every module in this process.
    disk_cache: Option<DiskCache>,
    /// Where the last module [`Executor::prepare`] loaded came from.
    last_load: std::sync::Mutex<Option<CacheOutcome>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

/// What one file became: a loaded module, or the compile error response.
pub enum Prepared {
    Module(Arc<LoadedModule>),
    CompileError(Box<RunReport>),
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prepared::Module(_) => f.write_str("Prepared::Module(..)"),
            Prepared::CompileError(report) => f.debug_tuple("Prepared::CompileError").field(report).finish(),
        }
    }
}

impl Executor {
    /// `trusted` are the keys `.wasm` artifacts may be signed with.
    pub fn new(trusted: TrustedKeys, allow_unsigned: bool, policy: CapabilityPolicy) -> Result<Executor> {
        Executor::with_config(RuntimeConfig {
            trusted_keys: trusted,
            allow_unsigned,
            policy,
            ..RuntimeConfig::default()
        })
    }

    /// A runtime with `config`, also trusting this process's session key.
    pub fn with_config(mut config: RuntimeConfig) -> Result<Executor> {
        let key = generate_key().context("cannot create the session signing key")?;
        config.trusted_keys.add(key.verifying_key());
        Ok(Executor {
            runtime: Arc::new(Runtime::new(config)?),
            key,
            effects: Effects::default(),
            include_paths: Vec::new(),
            disk_cache: None,
            last_load: std::sync::Mutex::new(None),
        })
    }

    /// Let runs reach what `effects` configures (outbound HTTP, databases,
    /// model endpoint).
    pub fn set_effects(&mut self, effects: Effects) {
        self.effects = effects;
    }

    /// Let includes also read under these directories (canonical, from
    /// `IncludeArgs::resolve`).
    pub fn set_include_paths(&mut self, dirs: Vec<PathBuf>) {
        self.include_paths = dirs;
    }

    /// Load modules through this on-disk cache of native code (see
    /// `avap_runtime::module_cache`).
    pub fn set_disk_cache(&mut self, cache: DiskCache) {
        self.disk_cache = Some(cache);
    }

    /// Where the module of the last [`Executor::prepare`] came from (with a
    /// disk cache: memory, a cache hit or a compilation); `None` before any
    /// load or without a disk cache.
    pub fn last_load(&self) -> Option<CacheOutcome> {
        *self.last_load.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Verify and load an artifact, through the disk cache when there is one.
    fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedModule>, LoadError> {
        let Some(cache) = &self.disk_cache else {
            return self.runtime.load(bytes);
        };
        let (module, outcome) = self.runtime.load_cached(bytes, cache)?;
        *self.last_load.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(outcome);
        Ok(module)
    }

    /// Compile a `.avap` file (or load a `.wasm` artifact).
    pub fn prepare(&self, path: &Path) -> Result<Prepared> {
        if path.extension().is_some_and(|e| e == "wasm") {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let module = self
                .load(&bytes)
                .with_context(|| format!("cannot load {}", path.display()))?;
            return Ok(Prepared::Module(module));
        }
        let source = read_source(path)?;
        let checked = check_file(source, &FsLoader::for_script(path, &self.include_paths)?);
        self.prepare_checked(&checked)
    }

    /// Compile an already checked program.
    pub fn prepare_checked(&self, checked: &CheckedProgram) -> Result<Prepared> {
        if checked.error_count() > 0 {
            return Ok(Prepared::CompileError(Box::new(compile_error_report(checked))));
        }
        let artifact = compile(checked, Some(&self.key));
        let module = self.load(&artifact.bytes)?;
        Ok(Prepared::Module(module))
    }

    /// Run a prepared module once.
    pub async fn run(&self, module: &LoadedModule, request: Request, settings: &RunSettings) -> RunReport {
        self.run_with(module, request, settings, &self.effects).await
    }

    /// Run a prepared module once with `effects` instead of the executor's.
    pub async fn run_with(
        &self,
        module: &LoadedModule,
        request: Request,
        settings: &RunSettings,
        effects: &Effects,
    ) -> RunReport {
        let input = RunInput {
            request,
            limits: settings.limits,
            time_zone: settings.time_zone.clone(),
            now: settings.now,
            effects: effects.clone(),
        };
        self.runtime.run(module, input).await
    }

    /// Load a signed artifact with its sealed `.cwasm` (see
    /// `Runtime::load_precompiled`; the seal must be by one of the config's
    /// `precompiled_keys`, never by the session key).
    pub fn load_precompiled(&self, artifact: &[u8], cwasm: &[u8]) -> Result<Arc<LoadedModule>, LoadError> {
        self.runtime.load_precompiled(artifact, cwasm)
    }

    /// Compile (or load) `path` and run it once. Compile errors come back as
    /// a 400 report with kind `CompileError`; `Err` means the run could not
    /// be attempted at all (unreadable file, untrusted artifact).
    pub async fn execute_file(&self, path: &Path, request: Request, settings: &RunSettings) -> Result<RunReport> {
        match self.prepare(path)? {
            Prepared::Module(m) => Ok(self.run(&m, request, settings).await),
            Prepared::CompileError(r) => Ok(*r),
        }
    }
}

/// The 400 envelope for a program with compile errors: the first error's
/// message and position, all errors under `diagnostics`.
pub fn compile_error_report(checked: &CheckedProgram) -> RunReport {
    let errors: Vec<&Diagnostic> = checked.diagnostics.iter().filter(|d| d.is_error()).collect();
    let mut error = json!({"kind": "CompileError", "message": "compile error"});
    if let Some(first) = errors.first() {
        let file = checked.sources.get(first.file);
        let lc = file.line_col(first.span.start as usize);
        error = json!({
            "kind": "CompileError",
            "message": format!("{}: {}", first.code.as_str(), first.message),
            "line": lc.line,
            "column": lc.column,
        });
        if first.file != 0 {
            error["file"] = json!(file.name());
        }
    }
    error["diagnostics"] = avap_codegen::diag::to_json(&checked.sources, &checked.diagnostics);
    RunReport {
        http_status: 400,
        envelope: avap_runtime::Envelope::failed(0.0, error),
        usage: avap_runtime::Usage::default(),
    }
}
