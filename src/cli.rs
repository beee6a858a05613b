//! Command-line interface.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use avap_codegen::check::{CheckOptions, LoadedSource, SourceLoader, check_file};
use avap_codegen::diag::{render_text, to_json};
use avap_codegen::{SourceFile, Sources, parse};
use clap::{Parser, Subcommand, ValueEnum};

/// AVAP sandbox runtime: compile AVAP scripts to signed WebAssembly and run
/// them under hard limits.
#[derive(Debug, Parser)]
#[command(name = "avap", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check scripts for errors and warnings (exit 1 on errors)
    Check(CheckArgs),
    /// Print the syntax tree of a script
    Parse(ParseArgs),
    /// Compile and run a script (or run a signed .wasm) once; print the response envelope
    Run(Box<crate::cmd_run::RunArgs>),
    /// Compile a script to a (signed) WebAssembly artifact
    Compile(crate::cmd_run::CompileArgs),
    /// Show an artifact's metadata, imports, endpoints and signature status
    Inspect(crate::cmd_inspect::InspectArgs),
    /// Run a directory of conformance cases (NAME.avap + NAME.expected.json)
    Conformance(crate::conformance::ConformanceArgs),
    /// Create an ed25519 key pair for signing artifacts
    Keygen(crate::cmd_keys::KeygenArgs),
    /// Start the HTTP execution server
    Serve(ServeArgs),
    /// Create, list and revoke the API keys of `avap serve`
    Apikey(crate::cmd_apikey::ApikeyArgs),
    /// Show the host surface scripts can reach under the deployment's policy, or whether it admits one artifact
    Audit(crate::cmd_audit::AuditArgs),
    /// Ask a running `avap serve` whether it is healthy (exit 0 on 200, else 1); for container health checks
    Health(crate::cmd_health::HealthArgs),
    /// Apply the server database's pending migrations (`avap serve` also does at start), or list them
    Migrate(crate::cmd_db::MigrateArgs),
    /// Write a consistent backup of the server database (scripts, artifacts, API key records, audit trail)
    Backup(crate::cmd_db::BackupArgs),
    /// Restore a backup written by `avap backup` into the server database
    Restore(crate::cmd_db::RestoreArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Source lines with carets (colored on a terminal)
    Human,
    /// One JSON document: {"files": [{"file", "errors", "warnings", "diagnostics": […]}]}
    Json,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Script files to check
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Treat warnings (unknown commands, …) as errors
    #[arg(long)]
    deny_warnings: bool,
    /// Never color the output
    #[arg(long)]
    no_color: bool,
}

#[derive(Debug, clap::Args)]
struct ParseArgs {
    /// Script file to parse
    file: PathBuf,
    /// Print the syntax tree as JSON (the stable form; the default is Rust debug form)
    #[arg(long)]
    json: bool,
}

/// `avap serve`. Every setting can also come from a TOML config file or an
/// `AVAP_<KEY>` environment variable (see `--print-config`); a flag given
/// here wins over both.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (default: `$XDG_CONFIG_HOME/avap/config.toml` or `~/.config/avap/config.toml`, if it exists)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML, with where each value came from, and exit
    #[arg(long)]
    pub print_config: bool,
    /// Address and port to listen on [default: 127.0.0.1:8080] (port 0 picks a free port; the startup line shows it)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Directory for the embedded database and the server key (default: `$XDG_DATA_HOME/avap` or `~/.local/share/avap`)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Require an API key on every guarded route, even on a loopback address
    #[arg(long, conflicts_with = "allow_anonymous")]
    pub require_api_key: bool,
    /// Let requests without an API key in even on a non-loopback address
    #[arg(long)]
    pub allow_anonymous: bool,
    /// Requests per second per client (API key, else IP) [default: 50]; 0 turns rate limiting off
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Requests a client may send at once before the rate applies [default: 100]
    #[arg(long, value_name = "N")]
    pub rate_burst: Option<u32>,
    /// The outer time limit of a request, in milliseconds (504 after it; 0 = none) [default: 30000]
    #[arg(long, value_name = "N")]
    pub request_timeout_ms: Option<u64>,
    /// An origin allowed to call the API from a browser (CORS); repeatable
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// Run as an edge node: serve a verified disk mirror of the registry at `--registry`, read-only, also while it is unreachable
    #[arg(long)]
    pub edge: bool,
    /// The registry node an edge node follows, as `http(s)://HOST[:PORT]` (its API key: `registry_api_key` / `AVAP_REGISTRY_API_KEY`)
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// How often an edge node asks the registry for changes, in milliseconds [default: 5000]
    #[arg(long, value_name = "N")]
    pub registry_sync_ms: Option<u64>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check(&args),
        Command::Parse(args) => parse_cmd(&args),
        Command::Run(args) => crate::cmd_run::run(&args),
        Command::Compile(args) => crate::cmd_run::compile(&args),
        Command::Inspect(args) => crate::cmd_inspect::inspect(&args),
        Command::Keygen(args) => crate::cmd_keys::keygen(&args),
        Command::Conformance(args) => crate::conformance::conformance(&args),
        Command::Serve(args) => crate::server::serve(&args),
        Command::Apikey(args) => crate::cmd_apikey::apikey(&args),
        Command::Audit(args) => crate::cmd_audit::audit(&args),
        Command::Health(args) => Ok(crate::cmd_health::health(&args)),
        Command::Migrate(args) => crate::cmd_db::migrate(&args),
        Command::Backup(args) => crate::cmd_db::backup(&args),
        Command::Restore(args) => crate::cmd_db::restore(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub(crate) fn read_source(path: &Path) -> Result<SourceFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(SourceFile::from_bytes(path.display().to_string(), &bytes))
}

/// Includes resolve relative to the including file's directory; a file's
/// identity is its canonical path, so `a.avap`, `./a.avap` and
/// `sub/../a.avap` are one file.
pub(crate) struct FsLoader;

impl SourceLoader for FsLoader {
    fn load(&self, from: &str, path: &str) -> std::result::Result<LoadedSource, String> {
        let base = Path::new(from).parent().unwrap_or(Path::new("."));
        let full = base.join(path);
        let canonical = std::fs::canonicalize(&full).map_err(|e| format!("{}: {e}", full.display()))?;
        let bytes = std::fs::read(&canonical).map_err(|e| format!("{}: {e}", canonical.display()))?;
        Ok(LoadedSource {
            identity: canonical.display().to_string(),
            // Diagnostics show the path as the author would write it.
            name: full.display().to_string(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    fn identity(&self, name: &str) -> String {
        std::fs::canonicalize(name).map_or_else(|_| name.to_string(), |p| p.display().to_string())
    }
}

fn check(args: &CheckArgs) -> Result<ExitCode> {
    let options = CheckOptions {
        deny_warnings: args.deny_warnings,
    };
    let color = !args.no_color && args.format == Format::Human && std::io::stderr().is_terminal();
    let mut failed = false;
    let mut json_files = Vec::new();
    let (mut errors, mut warnings) = (0, 0);
    for path in &args.files {
        let file = read_source(path)?;
        let checked = check_file(file, &FsLoader);
        failed |= checked.fails(options);
        errors += checked.error_count();
        warnings += checked.warning_count();
        match args.format {
            Format::Human => {
                eprint!("{}", render_text(&checked.sources, &checked.diagnostics, color));
            }
            Format::Json => json_files.push(serde_json::json!({
                "file": path.display().to_string(),
                "errors": checked.error_count(),
                "warnings": checked.warning_count(),
                "diagnostics": to_json(&checked.sources, &checked.diagnostics),
            })),
        }
    }
    match args.format {
        Format::Human => {
            let files = args.files.len();
            let verdict = if failed { "failed" } else { "ok" };
            eprintln!(
                "{verdict}: {files} file{} checked, {errors} error{}, {warnings} warning{}{}",
                if files == 1 { "" } else { "s" },
                if errors == 1 { "" } else { "s" },
                if warnings == 1 { "" } else { "s" },
                if args.deny_warnings && warnings > 0 {
                    " (warnings denied)"
                } else {
                    ""
                },
            );
        }
        Format::Json => {
            let doc = serde_json::json!({ "ok": !failed, "files": json_files });
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn parse_cmd(args: &ParseArgs) -> Result<ExitCode> {
    let file = read_source(&args.file)?;
    let (program, diags) = parse(&file);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &program)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{program:#?}")?;
    }
    if diags.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut sources = Sources::new();
    sources.add(file);
    eprint!("{}", render_text(&sources, &diags, std::io::stderr().is_terminal()));
    Ok(if diags.iter().any(avap_codegen::Diagnostic::is_error) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
