//! `avap run` and `avap compile`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use avap_codegen::check_file;
use avap_codegen::diag::render_text;
use avap_hostfns::Request;
use avap_runtime::module_cache::{CacheOutcome, DiskCache};
use avap_runtime::precompiled::SealError;
use avap_runtime::{CapabilityPolicy, Limits, LoadError, Runtime, RuntimeConfig};

use crate::cli::IncludeArgs;
use crate::cmd_keys::{load_signing_key, load_trusted_keys};
use crate::conformance::{self, RequestSpec};
use crate::exec::{Executor, RunSettings};
use avap_server::fs_loader::{FsLoader, read_source};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A `.avap` script (compiled in memory) or a signed `.wasm` artifact
    pub file: PathBuf,
    /// The request as JSON: {"method", "path", "query": {…}, "json": …, "form": {…}, "headers": {…}}
    #[arg(long, value_name = "FILE")]
    pub request: Option<PathBuf>,
    /// A query parameter (repeatable)
    #[arg(long = "query", short = 'q', value_name = "K=V")]
    pub query: Vec<String>,
    /// The JSON body the script reads with addParam (`--json` is its older spelling)
    #[arg(long, visible_alias = "json", value_name = "JSON")]
    pub body: Option<String>,
    /// HTTP method the script sees (routing of registerEndpoint)
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request path the script sees
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Per-run limits, e.g. `fuel=1000000,time_ms=500,memory_mb=64,stack_kb=256,output_kb=1024`
    #[arg(long, value_name = "K=V,…")]
    pub limits: Option<String>,
    /// Public keys (files or directories of .pub files) trusted for .wasm artifacts
    #[arg(long, value_name = "PATH")]
    pub trust: Vec<PathBuf>,
    /// Run .wasm artifacts without a trusted signature (development only)
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Time zone the date commands use (IANA name)
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// Use this sealed `.cwasm` (from `avap compile --precompile --key`) for the `.wasm` artifact instead of
    /// compiling it; its seal must be by a `--trust-precompiled` key
    #[arg(long, value_name = "CWASM")]
    pub precompiled: Option<PathBuf>,
    /// Public keys (files or directories of .pub files) trusted to seal `.cwasm` native code; `--trust` keys
    /// are not (they are trusted for sandboxed artifacts only)
    #[arg(long, value_name = "PATH")]
    pub trust_precompiled: Vec<PathBuf>,
    /// Also print the usage report (fuel, wall time, peak memory, where the compiled module came from) to stderr
    #[arg(long)]
    pub usage: bool,
    /// Compile the module in this process instead of using the on-disk cache of compiled modules
    /// (`$AVAP_CACHE_DIR`, else `$XDG_CACHE_HOME/avap/modules` or `~/.cache/avap/modules`)
    #[arg(long)]
    pub no_cache: bool,
    /// Turn fuel metering and epoch checks off (measures their overhead; never use in production)
    #[arg(long, hide = true)]
    pub unmetered: bool,
    /// Let RequestGet/RequestPost reach this non-public HOST, HOST:PORT, IP[:PORT] or CIDR block
    /// (repeatable; public addresses are always allowed, private/loopback/link-local ones are refused)
    #[arg(long = "allow-outbound", value_name = "HOST|CIDR")]
    pub allow_outbound: Vec<String>,
    /// The model endpoint functionAI posts to (http(s) URL; without it functionAI is refused)
    #[arg(long, value_name = "URL")]
    pub ai_endpoint: Option<String>,
    /// The application database of the orm* commands: `sqlite:PATH`, a file path or `postgres://…`
    /// (without it the orm* commands are refused)
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
    /// A named connection for `avapConnector(TOKEN)` (repeatable)
    #[arg(long = "connector", value_name = "TOKEN=URL")]
    pub connector: Vec<String>,
    #[command(flatten)]
    pub includes: IncludeArgs,
}

#[derive(Debug, clap::Args)]
pub struct CompileArgs {
    /// The `.avap` script
    pub file: PathBuf,
    /// Output artifact (default: the script's name with `.wasm`)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Secret key to sign with (from `avap keygen`); without it the artifact is unsigned
    #[arg(long, value_name = "KEY")]
    pub key: Option<PathBuf>,
    /// Also write a wasmtime-precompiled `.cwasm` for this machine and engine configuration, sealed with
    /// `--key` (required) so that `avap run --precompiled` loads it only with this artifact
    #[arg(long)]
    pub precompile: bool,
    /// Treat warnings as errors
    #[arg(long)]
    pub deny_warnings: bool,
    #[command(flatten)]
    pub includes: IncludeArgs,
}

/// Parse `fuel=N,time_ms=N,memory_mb=N,stack_kb=N,output_kb=N` over `base`.
pub fn parse_limits(text: &str, base: Limits) -> Result<Limits> {
    let mut l = base;
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("limit `{part}` is not KEY=VALUE"))?;
        let n: u64 = v
            .trim()
            .replace('_', "")
            .parse()
            .with_context(|| format!("limit `{k}`: `{v}` is not a number"))?;
        match k.trim() {
            "fuel" => l.fuel = n,
            "time_ms" => l.time_ms = n,
            "memory_mb" => l.memory_bytes = n << 20,
            "memory_bytes" => l.memory_bytes = n,
            "stack_kb" => l.stack_bytes = n << 10,
            "output_kb" => l.output_bytes = n << 10,
            other => {
                bail!("unknown limit `{other}`; known: fuel, time_ms, memory_mb, memory_bytes, stack_kb, output_kb")
            }
        }
    }
    Ok(l)
}

fn build_request(args: &RunArgs) -> Result<Request> {
    let mut req = match &args.request {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))?;
            request_from_json(&v).with_context(|| format!("in {}", p.display()))?
        }
        None => Request {
            method: args.method.to_ascii_uppercase(),
            path: args.path.clone(),
            ..Request::default()
        },
    };
    for q in &args.query {
        let (k, v) = q.split_once('=').with_context(|| format!("--query `{q}` is not K=V"))?;
        req.query.push((k.to_owned(), v.to_owned()));
    }
    if let Some(j) = &args.body {
        req.json = Some(serde_json::from_str(j).context("--body is not valid JSON")?);
    }
    Ok(req)
}

/// A request from its JSON form: the conformance `request` object, read by
/// the conformance runner's own reader so both accept the same input.
pub fn request_from_json(v: &serde_json::Value) -> Result<Request> {
    let spec: RequestSpec = serde_json::from_value(v.clone()).context("not a request object")?;
    let mut request = conformance::build_request(Some(&spec)).map_err(anyhow::Error::msg)?;
    request.method = request.method.to_ascii_uppercase();
    Ok(request)
}

/// Outbound HTTP with the default policy plus `--allow-outbound`, and the
/// `--ai-endpoint`.
fn cli_effects(args: &RunArgs) -> Result<avap_runtime::Effects> {
    use avap_hostfns::effects::http::{AiEndpoint, Outbound, OutboundConfig};
    let outbound = Outbound::new(&OutboundConfig {
        allow: args.allow_outbound.clone(),
        ..OutboundConfig::default()
    })
    .context("--allow-outbound")?;
    let ai = match &args.ai_endpoint {
        Some(url) => Some(std::sync::Arc::new(
            AiEndpoint::new(url).map_err(|e| anyhow::anyhow!("--ai-endpoint: {e}"))?,
        )),
        None => None,
    };
    let mut connectors = Vec::new();
    for c in &args.connector {
        let (token, url) = c
            .split_once('=')
            .with_context(|| format!("--connector {c:?}: expected TOKEN=URL"))?;
        connectors.push((token.to_owned(), url.to_owned()));
    }
    let db = if args.db.is_some() || !connectors.is_empty() {
        let dbs = avap_hostfns::effects::db::Databases::new(
            args.db.as_deref(),
            connectors,
            avap_hostfns::effects::db::DbLimits::default(),
        )
        .map_err(|e| anyhow::anyhow!("--db/--connector: {e}"))?;
        Some(std::sync::Arc::new(dbs))
    } else {
        None
    };
    Ok(avap_runtime::Effects {
        http: Some(std::sync::Arc::new(outbound)),
        ai,
        db,
    })
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    let limits = match &args.limits {
        Some(t) => parse_limits(t, Limits::CLI)?,
        None => Limits::CLI,
    };
    let tz = avap_hostfns::zone::Zone::named(&args.tz).context("--tz")?;
    let request = build_request(args)?;
    let trusted = load_trusted_keys(&args.trust)?;
    let config = RuntimeConfig {
        trusted_keys: trusted,
        precompiled_keys: load_trusted_keys(&args.trust_precompiled)?,
        allow_unsigned: args.allow_unsigned,
        policy: CapabilityPolicy::allow_all(),
        unmetered: args.unmetered,
        // One run and exit: instances are allocated when created instead of
        // reserving a pool of slots for runs that never come.
        pooling: false,
        // Nothing would take an instance back after the one run.
        warm_instances: 0,
        max_concurrent_runs: 4,
        ..RuntimeConfig::default()
    };
    let mut executor = Executor::with_config(config)?;
    if !args.no_cache && args.precompiled.is_none() {
        match module_cache_dir().map(|dir| DiskCache::open(&dir)) {
            Some(Ok(cache)) => executor.set_disk_cache(cache),
            Some(Err(e)) => eprintln!("warning: {e}; compiling without the module cache (--no-cache silences this)"),
            None => {}
        }
    }
    executor.set_effects(cli_effects(args)?);
    executor.set_include_paths(args.includes.resolve()?);
    let settings = RunSettings {
        limits,
        time_zone: Some(tz),
        now: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = match &args.precompiled {
        Some(cwasm) => {
            let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
            let sealed = std::fs::read(cwasm).with_context(|| format!("cannot read {}", cwasm.display()))?;
            let module = executor
                .load_precompiled(&bytes, &sealed)
                .map_err(|e| precompiled_error(&e, &args.file, cwasm))?;
            rt.block_on(executor.run(&module, request, &settings))
        }
        None => rt.block_on(executor.execute_file(&args.file, request, &settings))?,
    };
    outln!("{}", serde_json::to_string_pretty(report.envelope.json())?)?;
    if args.usage {
        let module = match (&args.precompiled, executor.last_load()) {
            (Some(_), _) => "precompiled",
            (None, Some(CacheOutcome::Hit)) => "from the module cache",
            (None, Some(CacheOutcome::Miss)) => "compiled, cached",
            (None, Some(CacheOutcome::Memory) | None) => "compiled",
        };
        eprintln!(
            "status {} · fuel {} · wall {:.3} ms · peak memory {} bytes · module {module}",
            report.http_status, report.usage.fuel, report.usage.wall_ms, report.usage.peak_memory_bytes
        );
    }
    Ok(if report.envelope.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The module cache's directory: `$AVAP_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/avap/modules`, else `~/.cache/avap/modules`; `None`
/// when none of those is set (the run compiles without a cache).
fn module_cache_dir() -> Option<PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty("AVAP_CACHE_DIR") {
        return Some(dir);
    }
    let cache_home = non_empty("XDG_CACHE_HOME").or_else(|| non_empty("HOME").map(|h| h.join(".cache")))?;
    Some(cache_home.join("avap").join("modules"))
}

/// Why `avap run --precompiled` refused, with what to do about it.
fn precompiled_error(error: &LoadError, artifact: &Path, cwasm: &Path) -> anyhow::Error {
    let hint = match error {
        LoadError::Seal(SealError::UntrustedKey { .. }) => {
            "; pass --trust-precompiled with the public key of the key that sealed it (`avap compile --precompile \
             --key K` seals with K). --trust keys do not count: they are trusted for sandboxed artifacts, and a \
             .cwasm is native code that runs outside the sandbox"
        }
        _ => "",
    };
    anyhow::anyhow!(
        "cannot run {} with {}: {error}{hint}",
        artifact.display(),
        cwasm.display()
    )
}

pub fn compile(args: &CompileArgs) -> Result<ExitCode> {
    if args.precompile && args.key.is_none() {
        bail!(
            "--precompile needs --key KEY: a .cwasm is native code, and runtimes load one only when it is sealed by \
             a key they trust for it (`avap run --trust-precompiled KEY.pub`)"
        );
    }
    let include_paths = args.includes.resolve()?;
    let source = read_source(&args.file)?;
    let checked = check_file(source, &FsLoader::for_script(&args.file, &include_paths)?);
    if !checked.diagnostics.is_empty() {
        let color = std::io::IsTerminal::is_terminal(&std::io::stderr());
        eprint!("{}", render_text(&checked.sources, &checked.diagnostics, color));
    }
    let options = avap_codegen::CheckOptions {
        deny_warnings: args.deny_warnings,
    };
    if checked.fails(options) {
        eprintln!("error: {} not compiled", args.file.display());
        return Ok(ExitCode::FAILURE);
    }
    let key = args.key.as_deref().map(load_signing_key).transpose()?;
    let start = std::time::Instant::now();
    let artifact = avap_codegen::compile(&checked, key.as_ref());
    let compile_time = start.elapsed();
    let out = args.output.clone().unwrap_or_else(|| args.file.with_extension("wasm"));
    write_file(&out, &artifact.bytes)?;
    let sign_note = match &key {
        Some(k) => format!("signed by key {}", avap_hostfns::artifact::key_id(&k.verifying_key())),
        None => "UNSIGNED (pass --key KEY to sign; runtimes refuse unsigned artifacts unless --allow-unsigned)".into(),
    };
    eprintln!(
        "wrote {} ({} bytes, {} commands imported, {:.2} ms), {sign_note}",
        out.display(),
        artifact.bytes.len(),
        artifact.meta.imports.len(),
        compile_time.as_secs_f64() * 1000.0
    );
    if let (true, Some(key)) = (args.precompile, &key) {
        let runtime = Runtime::new(RuntimeConfig {
            allow_unsigned: true,
            ..RuntimeConfig::default()
        })?;
        let start = std::time::Instant::now();
        let cwasm = runtime.precompile(&artifact.bytes, key)?;
        let cpath = out.with_extension("cwasm");
        write_file(&cpath, &cwasm)?;
        eprintln!(
            "wrote {} ({} bytes, wasmtime compile {:.2} ms), sealed by key {} for this artifact; only valid for this \
             wasmtime version and engine configuration",
            cpath.display(),
            cwasm.len(),
            start.elapsed().as_secs_f64() * 1000.0,
            avap_hostfns::artifact::key_id(&key.verifying_key()),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
