//! `avap audit`: the host surface a deployment exposes to scripts, and
//! whether one artifact is admitted by the deployment's policy.
//!
//! Without a file it lists every command (name, forms with parameter kinds,
//! capability class, whether the policy allows it, what it can reach and the
//! limits that apply) and every runtime helper import. With a file (`.wasm`,
//! or `.avap` compiled on the fly) it lists that artifact's imports — from
//! its `avap.meta` section and from the wasm import section, which must
//! agree — its signature and whether the policy admits it.
//!
//! The policy is read from the same configuration as `avap serve` (file,
//! `AVAP_*` environment, `--config`), plus `--deny CLASS` flags.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use avap_hostfns::abi::{self, Helper, Ty};
use avap_hostfns::artifact::{self, ArtifactError, SignatureStatus};
use avap_hostfns::signature::{Capability, Capability as Class, CommandSig, ParamKind, Returns};
use avap_runtime::{CapabilityPolicy, Limits};
use clap::Parser as _;
use serde::Serialize;
use serde_json::json;

use crate::cli::IncludeArgs;
use crate::cmd_keys::load_trusted_keys;
use avap_server::ServeArgs;
use avap_server::fs_loader::{FsLoader, read_source};

// Host work (bytes produced or copied by a command or helper) costs one fuel
// unit per `HOST_BYTES_PER_FUEL` bytes, on top of one unit per call: the
// rate the runtime's linker charges, taken from the runtime itself.
use avap_runtime::HOST_BYTES_PER_FUEL;

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// An artifact (.wasm) or a script (.avap, compiled on the fly) to audit; without it, print the whole host surface
    pub file: Option<PathBuf>,
    /// The `avap serve` config file whose policy applies (default: the one `avap serve` would read, if it exists)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Deny a capability class on top of the config (repeatable): pure, request, clock, random (or rand), net, db, ai, async
    #[arg(long, value_name = "CLASS")]
    pub deny: Vec<String>,
    /// Trusted public key: a .pub file or a directory of them (repeatable); with it, an artifact must be signed by one of them
    #[arg(long = "trust", value_name = "PATH")]
    pub trust: Vec<PathBuf>,
    /// With --trust: admit unsigned artifacts too (as `avap run --allow-unsigned`)
    #[arg(long)]
    pub allow_unsigned: bool,
    /// With json: one JSON document instead of tables
    #[command(flatten)]
    pub output: crate::cli::OutputArgs,
    #[command(flatten)]
    pub includes: IncludeArgs,
}

/// What the allowed classes can reach under the deployment's per-class
/// allowlists: the outbound policy (`net`, `ai`), the databases and named
/// connectors (`db`) and the model endpoint (`ai`). [`reach_from_config`]
/// fills it in.
#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    /// Outbound allowlist entries (hosts, `host:port`, CIDR blocks) that
    /// reopen non-public addresses; empty = none.
    pub outbound_allow: Vec<String>,
    pub outbound_timeout_ms: u64,
    pub outbound_max_response_kb: u64,
    pub outbound_max_redirects: u32,
    /// The application database of the `orm*` commands (password redacted), if configured.
    pub app_database: Option<String>,
    /// Number of named connections `avapConnector` may open (tokens are secrets: not printed).
    pub connectors: usize,
    pub db_read_only: bool,
    pub db_max_rows: usize,
    pub db_statement_timeout_ms: u64,
    /// The model endpoint of `functionAI`, if configured.
    pub ai_endpoint: Option<String>,
}

/// The deployment's per-class allowlists, from the same settings
/// `avap serve` uses (`outbound_*`, `ai_endpoint`, `app_database_url`,
/// `db_*`, `[connectors]`).
fn reach_from_config(settings: &crate::server::config::Settings) -> Reach {
    let outbound = settings.outbound_config();
    let db = settings.db_limits();
    let non_empty = |s: &str| Some(s).filter(|s| !s.is_empty()).map(avap_hostfns::redact::url);
    Reach {
        outbound_allow: outbound.allow,
        outbound_timeout_ms: outbound.timeout_ms,
        outbound_max_response_kb: outbound.max_response_kb,
        outbound_max_redirects: outbound.max_redirects,
        app_database: non_empty(&settings.app_database_url),
        connectors: settings.connectors.len(),
        db_read_only: db.read_only,
        db_max_rows: db.max_rows,
        db_statement_timeout_ms: u64::try_from(db.statement_timeout.as_millis()).unwrap_or(u64::MAX),
        ai_endpoint: non_empty(&settings.ai_endpoint),
    }
}

/// The policy, limits and reach `avap audit` reports against.
struct Deployment {
    policy: CapabilityPolicy,
    limits: Limits,
    reach: Reach,
}

/// Parse the serve flags through clap, so flags added to `avap serve` later
/// keep their defaults here.
#[derive(Debug, clap::Parser)]
struct ServeFlags {
    #[command(flatten)]
    serve: ServeArgs,
}

fn deployment(args: &AuditArgs) -> Result<Deployment> {
    let mut argv: Vec<std::ffi::OsString> = vec!["avap-serve".into()];
    if let Some(config) = &args.config {
        argv.push("--config".into());
        argv.push(config.into());
    }
    let flags = ServeFlags::try_parse_from(argv).context("cannot read the serve flags")?;
    let resolved = crate::server::config::resolve(&flags.serve).map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = resolved.settings.server_config();
    let mut policy = server.policy;
    for name in &args.deny {
        policy = policy.deny(CapabilityPolicy::parse_class(name).map_err(|e| anyhow::anyhow!("--deny {e}"))?);
    }
    Ok(Deployment {
        policy,
        limits: server.limits,
        reach: reach_from_config(&resolved.settings),
    })
}

pub fn audit(args: &AuditArgs) -> Result<ExitCode> {
    let deployment = deployment(args)?;
    match &args.file {
        None => {
            let out = if args.output.json() {
                pretty(&surface_json(&deployment))
            } else {
                surface_text(&deployment)
            };
            std::io::stdout().lock().write_all(out.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Some(file) => audit_file(args, file, &deployment),
    }
}

fn pretty(doc: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(doc).expect("JSON values always serialize");
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------
// The host surface
// ---------------------------------------------------------------------------

fn kind(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Target => "target",
        ParamKind::Name => "name",
        ParamKind::Value => "value",
        ParamKind::Literal => "literal",
    }
}

fn returns(r: Returns) -> &'static str {
    match r {
        Returns::Nothing => "nothing",
        Returns::Target => "target",
        Returns::Value => "value",
    }
}

fn form_text(form: &[avap_hostfns::signature::Param]) -> String {
    let params: Vec<String> = form.iter().map(|p| format!("{}: {}", p.name, kind(p.kind))).collect();
    format!("({})", params.join(", "))
}

/// What a class can reach under the deployment.
fn reach_text(class: Capability, d: &Deployment) -> String {
    let r = &d.reach;
    if !d.policy.allows(class) {
        return "nothing: denied by policy (artifacts importing it are refused at load)".into();
    }
    let allow = if r.outbound_allow.is_empty() {
        "none".to_owned()
    } else {
        r.outbound_allow.join(", ")
    };
    match class {
        Class::Pure => "its arguments and the run's own variables".into(),
        Class::Request => "the incoming request (query, body, form, headers) and the response".into(),
        Class::Clock => "the wall clock and the time-zone database (read only)".into(),
        Class::Random => "the operating system's CSPRNG".into(),
        Class::Net => format!(
            "public internet addresses; hosts allowed by outbound policy beyond that: {allow} \
             (default deny of loopback/private/link-local/multicast/unspecified; DNS checked before connecting, \
             every redirect re-checked)"
        ),
        Class::Db => {
            let app = r.app_database.as_deref().unwrap_or("none configured");
            format!(
                "application database: {app}; named connectors: {}{}",
                r.connectors,
                if r.db_read_only { "; read-only" } else { "" }
            )
        }
        Class::Ai => match &r.ai_endpoint {
            Some(url) => format!("the model endpoint {url}, under the outbound policy"),
            None => "nothing: no model endpoint configured (functionAI raises CapabilityDenied)".into(),
        },
        Class::Async => "other blocks of the same run (no outside access of its own)".into(),
    }
}

/// The limits that apply to a command of `class` (all commands: fuel for
/// host work and the run's memory; some more).
fn limits_for(sig: &CommandSig, d: &Deployment) -> Vec<String> {
    let r = &d.reach;
    let mut out = vec![format!("fuel: 1 per call + 1 per {HOST_BYTES_PER_FUEL} bytes produced")];
    out.push(format!(
        "memory: {} MiB per run (host heap included)",
        d.limits.memory_bytes >> 20
    ));
    if sig.name == "addResult" {
        out.push(format!("output: {} KiB per response", d.limits.output_bytes >> 10));
    }
    match sig.capability {
        Class::Net | Class::Ai => {
            out.push(format!("outbound timeout: {} ms per call", r.outbound_timeout_ms));
            out.push(format!("response size: {} KiB", r.outbound_max_response_kb));
            out.push(format!("redirects: {}", r.outbound_max_redirects));
            out.push(format!("run time: {} ms (waiting included)", d.limits.time_ms));
        }
        Class::Db => {
            out.push(format!("rows: {} per result", r.db_max_rows));
            out.push(format!("statement time: {} ms", r.db_statement_timeout_ms));
            out.push(format!("run time: {} ms (waiting included)", d.limits.time_ms));
        }
        Class::Async => out.push(format!("run time: {} ms (waiting included)", d.limits.time_ms)),
        Class::Pure | Class::Request | Class::Clock | Class::Random => {}
    }
    out
}

fn ty(t: Ty) -> &'static str {
    match t {
        Ty::I32 => "i32",
        Ty::I64 => "i64",
    }
}

fn types(ts: &[Ty]) -> String {
    format!("({})", ts.iter().map(|t| ty(*t)).collect::<Vec<_>>().join(", "))
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

fn limits_json(l: &Limits) -> serde_json::Value {
    json!({
        "fuel": l.fuel,
        "time_ms": l.time_ms,
        "memory_bytes": l.memory_bytes,
        "stack_bytes": l.stack_bytes,
        "output_bytes": l.output_bytes,
        "host_bytes_per_fuel": HOST_BYTES_PER_FUEL,
    })
}

fn policy_json(p: &CapabilityPolicy) -> serde_json::Value {
    json!({
        "allowed": p.allowed().map(Capability::as_str).collect::<Vec<_>>(),
        "denied": p.denied().map(Capability::as_str).collect::<Vec<_>>(),
    })
}

fn surface_json(d: &Deployment) -> serde_json::Value {
    let commands: Vec<serde_json::Value> = avap_hostfns::commands()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "module": abi::COMMAND_MODULE,
                "class": c.capability.as_str(),
                "allowed": d.policy.allows(c.capability),
                "returns": returns(c.returns),
                "summary": c.summary,
                "forms": c.forms.iter().map(|f| f.iter().map(|p| json!({"name": p.name, "kind": kind(p.kind)})).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "reach": reach_text(c.capability, d),
                "limits": limits_for(c, d),
            })
        })
        .collect();
    let classes: Vec<serde_json::Value> = Capability::ALL
        .iter()
        .map(|c| {
            json!({
                "class": c.as_str(),
                "allowed": d.policy.allows(*c),
                "reach": reach_text(*c, d),
                "commands": avap_hostfns::commands().iter().filter(|s| s.capability == *c).map(|s| s.name).collect::<Vec<_>>(),
            })
        })
        .collect();
    let helpers: Vec<serde_json::Value> = Helper::ALL
        .iter()
        .map(|h| {
            let (params, results) = h.signature();
            json!({
                "module": abi::RT_MODULE,
                "name": h.name(),
                "params": params.iter().map(|t| ty(*t)).collect::<Vec<_>>(),
                "results": results.iter().map(|t| ty(*t)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let (cp, cr) = abi::COMMAND_SIGNATURE;
    json!({
        "avap_version": env!("CARGO_PKG_VERSION"),
        "format_version": abi::FORMAT_VERSION,
        "policy": policy_json(&d.policy),
        "limits": limits_json(&d.limits),
        "reach": d.reach,
        "command_abi": {
            "module": abi::COMMAND_MODULE,
            "params": cp.iter().map(|t| ty(*t)).collect::<Vec<_>>(),
            "results": cr.iter().map(|t| ty(*t)).collect::<Vec<_>>(),
        },
        "commands": commands,
        "classes": classes,
        "helpers": helpers,
    })
}

/// Left-aligned columns; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width = vec![0; cols];
    for row in std::iter::once(&header.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).chain(rows) {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cols {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:w$}  ", w = width[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
    out
}

fn surface_text(d: &Deployment) -> String {
    let l = &d.limits;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "avap {} host surface (artifact format {})",
        env!("CARGO_PKG_VERSION"),
        abi::FORMAT_VERSION
    );
    let _ = writeln!(out, "policy:  {}", d.policy);
    let _ = writeln!(
        out,
        "limits:  per run fuel {}, time {} ms, memory {} MiB, stack {} KiB, output {} KiB; \
         host work costs 1 fuel per call + 1 per {HOST_BYTES_PER_FUEL} bytes",
        l.fuel,
        l.time_ms,
        l.memory_bytes >> 20,
        l.stack_bytes >> 10,
        l.output_bytes >> 10
    );
    let (cp, cr) = abi::COMMAND_SIGNATURE;
    let _ = writeln!(
        out,
        "\nCommands (wasm module `{}`, import name = command name, core signature {} -> {}):",
        abi::COMMAND_MODULE,
        types(cp),
        types(cr)
    );
    let rows: Vec<Vec<String>> = avap_hostfns::commands()
        .iter()
        .map(|c| {
            vec![
                c.name.to_owned(),
                c.capability.as_str().to_owned(),
                yes_no(d.policy.allows(c.capability)).to_owned(),
                returns(c.returns).to_owned(),
                c.forms.iter().map(|f| form_text(f)).collect::<Vec<_>>().join(" | "),
            ]
        })
        .collect();
    out.push_str(&table(
        &["COMMAND", "CLASS", "ALLOWED", "RETURNS", "FORMS (parameter: kind)"],
        &rows,
    ));

    out.push_str("\nCapability classes (what each can reach under this policy, and its limits):\n");
    for class in Capability::ALL {
        let sigs: Vec<&CommandSig> = avap_hostfns::commands()
            .iter()
            .filter(|s| s.capability == class)
            .collect();
        let _ = writeln!(
            out,
            "  {} ({}): {}",
            class.as_str(),
            if d.policy.allows(class) { "allowed" } else { "DENIED" },
            sigs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        );
        let _ = writeln!(out, "    reach:  {}", reach_text(class, d));
        // Limits beyond fuel and memory are the same for every command of a
        // class, except `addResult`'s output cap.
        let mut limits: BTreeSet<String> = BTreeSet::new();
        let mut ordered = Vec::new();
        for s in &sigs {
            for lim in limits_for(s, d) {
                if limits.insert(lim.clone()) {
                    ordered.push(if s.name == "addResult" && lim.starts_with("output") {
                        format!("{lim} (addResult)")
                    } else {
                        lim
                    });
                }
            }
        }
        let _ = writeln!(out, "    limits: {}", ordered.join("; "));
    }

    let _ = writeln!(
        out,
        "\nRuntime helpers (wasm module `{}`; no capability class, always linked, compute on the run's own heap):",
        abi::RT_MODULE
    );
    let rows: Vec<Vec<String>> = Helper::ALL
        .iter()
        .map(|h| {
            let (p, r) = h.signature();
            vec![h.name().to_owned(), types(p), types(r)]
        })
        .collect();
    out.push_str(&table(&["HELPER", "PARAMS", "RESULTS"], &rows));
    out
}

// ---------------------------------------------------------------------------
// One artifact
// ---------------------------------------------------------------------------

/// One command import of the audited artifact.
#[derive(Debug, Serialize)]
struct ImportRow {
    name: String,
    /// The class the registry gives the command (`unknown` if none).
    class: String,
    /// The class the artifact's metadata states.
    meta_class: Option<String>,
    line: Option<u32>,
    in_meta: bool,
    in_wasm: bool,
    allowed: bool,
}

fn audit_file(args: &AuditArgs, file: &std::path::Path, d: &Deployment) -> Result<ExitCode> {
    let is_source = file.extension().is_some_and(|e| e == "avap");
    let bytes = if is_source {
        let source = read_source(file)?;
        let loader = FsLoader::for_script(file, &args.includes.resolve()?)?;
        let checked = avap_codegen::check_file(source, &loader);
        if checked.error_count() > 0 {
            let text = avap_codegen::diag::render_text(&checked.sources, &checked.diagnostics, false);
            bail!("{} does not compile, so it cannot be audited:\n{text}", file.display());
        }
        avap_codegen::compile(&checked, None).bytes
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let trusted = load_trusted_keys(&args.trust)?;
    let name = file.display().to_string();

    let info = match artifact::inspect(&bytes) {
        Ok(info) => info,
        Err(e) => {
            let out = if args.output.json() {
                pretty(&json!({"file": name, "admitted": false, "refusals": [e.to_string()]}))
            } else {
                format!("file:      {name}\nverdict:   REFUSED: {e}\n")
            };
            std::io::stdout().lock().write_all(out.as_bytes())?;
            return Ok(ExitCode::FAILURE);
        }
    };

    let mut refusals: Vec<String> = Vec::new();
    // Signature.
    let key_id = info.signature.as_ref().map(|s| s.key_id.clone());
    // (machine status, text)
    let (sig_status, signature) = if is_source {
        (
            "compiled",
            "unsigned (compiled from source by this audit; `avap serve` compiles inline scripts the same way)"
                .to_owned(),
        )
    } else {
        match artifact::check_signature(&info, &trusted) {
            Ok(SignatureStatus::Valid { key_id }) => ("valid", format!("valid, by trusted key {key_id}")),
            Ok(SignatureStatus::Unsigned) => {
                if !trusted.is_empty() && !args.allow_unsigned {
                    refusals.push("the artifact is unsigned (pass --allow-unsigned to admit it)".into());
                }
                ("unsigned", "none (unsigned)".into())
            }
            Err(ArtifactError::UntrustedKey { key_id }) if trusted.is_empty() => (
                "unchecked",
                format!("by key {key_id}, not checked (pass --trust KEY.pub to check it)"),
            ),
            Err(ArtifactError::UntrustedKey { key_id }) => {
                refusals.push(format!(
                    "signed by key {key_id}, which is not among the trusted keys; trust its .pub file or re-sign"
                ));
                ("untrusted", format!("by key {key_id}, NOT TRUSTED"))
            }
            Err(e) => {
                refusals.push(e.to_string());
                ("bad", format!("BAD: {e}"))
            }
        }
    };

    // Imports: metadata vs wasm import section.
    let wasm: BTreeSet<&str> = info
        .wasm_imports
        .iter()
        .filter(|i| i.module == abi::COMMAND_MODULE)
        .map(|i| i.name.as_str())
        .collect();
    let mut rows: Vec<ImportRow> = Vec::new();
    for import in &info.meta.imports {
        let registry = avap_hostfns::command(&import.name).map(|s| s.capability);
        let class = registry.map_or("unknown", Capability::as_str).to_owned();
        rows.push(ImportRow {
            allowed: registry.is_some_and(|c| d.policy.allows(c)),
            name: import.name.clone(),
            class,
            meta_class: Some(import.capability.clone()),
            line: Some(import.line),
            in_meta: true,
            in_wasm: wasm.contains(import.name.as_str()),
        });
    }
    for name in &wasm {
        if !rows.iter().any(|r| r.name == *name) {
            let registry = avap_hostfns::command(name).map(|s| s.capability);
            rows.push(ImportRow {
                allowed: registry.is_some_and(|c| d.policy.allows(c)),
                name: (*name).to_owned(),
                class: registry.map_or("unknown", Capability::as_str).to_owned(),
                meta_class: None,
                line: None,
                in_meta: false,
                in_wasm: true,
            });
        }
    }
    let other_imports: Vec<String> = info
        .wasm_imports
        .iter()
        .filter(|i| i.module != abi::COMMAND_MODULE)
        .filter(|i| i.module != abi::RT_MODULE || !Helper::ALL.iter().any(|h| h.name() == i.name))
        .map(|i| format!("{}.{}", i.module, i.name))
        .collect();
    let helpers: Vec<&str> = info
        .wasm_imports
        .iter()
        .filter(|i| i.module == abi::RT_MODULE && Helper::ALL.iter().any(|h| h.name() == i.name))
        .map(|i| i.name.as_str())
        .collect();
    let imports_agree = match artifact::check_imports(&info) {
        Ok(()) => None,
        Err(e) => {
            refusals.push(e.to_string());
            Some(e.to_string())
        }
    };
    if !other_imports.is_empty() {
        refusals.push(format!(
            "the module imports functions this runtime does not provide: {}",
            other_imports.join(", ")
        ));
    }
    for row in rows.iter().filter(|r| !r.allowed) {
        let line = row.line.map(|l| format!(" (line {l})")).unwrap_or_default();
        refusals.push(if avap_hostfns::command(&row.name).is_none() {
            format!(
                "uses `{}`{line}, which is not a command of this runtime; recompile it with this avap",
                row.name
            )
        } else {
            format!(
                "uses `{}`{line}, which needs the `{}` capability; this deployment's policy denies it",
                row.name, row.class
            )
        });
    }
    let admitted = refusals.is_empty();

    let out = if args.output.json() {
        pretty(&json!({
            "file": name,
            "admitted": admitted,
            "refusals": refusals,
            "policy": policy_json(&d.policy),
            "source_name": info.meta.source_name,
            "sha256": info.sha256,
            "signature": {"status": sig_status, "key_id": key_id, "detail": signature},
            "imports_agree": imports_agree.is_none(),
            "imports": rows,
            "helpers": helpers,
            "unknown_imports": other_imports,
        }))
    } else {
        let mut out = String::new();
        let _ = writeln!(out, "file:       {}", clean(&name));
        let _ = writeln!(out, "source:     {}", clean(&info.meta.source_name));
        let _ = writeln!(out, "sha256:     {}", info.sha256);
        let _ = writeln!(out, "signature:  {}", clean(&signature));
        let _ = writeln!(out, "policy:     {}", d.policy);
        let _ = writeln!(
            out,
            "imports:    {}",
            match &imports_agree {
                None => "avap.meta and the wasm import section agree".to_owned(),
                Some(e) => format!("MISMATCH: {}", clean(e)),
            }
        );
        let table_rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    clean(&r.name),
                    clean(&r.class),
                    r.line.map_or_else(|| "-".into(), |l| l.to_string()),
                    match (r.in_meta, r.in_wasm) {
                        (true, true) => "meta+wasm".into(),
                        (true, false) => "meta only".into(),
                        (false, _) => "wasm only".into(),
                    },
                    yes_no(r.allowed).to_owned(),
                ]
            })
            .collect();
        if table_rows.is_empty() {
            out.push_str("commands:   none\n");
        } else {
            out.push('\n');
            out.push_str(&table(
                &["COMMAND", "CLASS", "LINE", "FOUND IN", "ALLOWED"],
                &table_rows,
            ));
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "helpers:    {}",
            if helpers.is_empty() {
                "none".to_owned()
            } else {
                helpers.join(", ")
            }
        );
        if admitted {
            out.push_str("verdict:    ADMITTED by this deployment's policy\n");
        } else {
            out.push_str("verdict:    REFUSED\n");
            for r in &refusals {
                let _ = writeln!(out, "  - {}", clean(r));
            }
        }
        out
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(if admitted { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Text from the artifact with control characters escaped, so a crafted
/// artifact cannot drive the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
