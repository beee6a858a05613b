//! Command-line interface.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use avap_codegen::check::{CheckOptions, check_file};
use avap_codegen::diag::render_text;
use avap_codegen::{CheckReport, Sources, parse};
use avap_server::ServeArgs;
use avap_server::fs_loader::{FsLoader, read_source};
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
    Conformance(ConformanceArgs),
    /// Create an ed25519 key pair for signing artifacts
    Keygen(crate::cmd_keys::KeygenArgs),
    /// Start the HTTP execution server
    Serve(ServeArgs),
    /// Run jobs from the server database's queue or NATS (`--jobs-url`), without the HTTP API: a separate worker pool
    Worker(avap_server::WorkerArgs),
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
    /// Start the language server for editors on stdin/stdout (diagnostics, hover, completion, definitions)
    #[command(long_about = crate::cmd_lsp::LONG_ABOUT)]
    Lsp(crate::cmd_lsp::LspArgs),
}

/// Machine-readable or not: every command that can print JSON takes
/// `--format json` (and `--json`, the older spelling of the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// For people: text, tables, source lines with carets (colored on a terminal)
    #[default]
    #[value(alias = "text")]
    Human,
    /// One JSON document on stdout (the command's help says its shape)
    Json,
}

/// `--format human|json` and its older spelling `--json`.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// The same as `--format json`
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

impl OutputArgs {
    /// Whether JSON was asked for.
    pub fn json(self) -> bool {
        self.json || self.format == Format::Json
    }
}

#[derive(Debug, clap::Args)]
struct ConformanceArgs {
    /// Directory of NAME.avap programs with their NAME.expected.json cases
    dir: PathBuf,
    /// With json: case lines to stderr, one JSON summary as the last line of stdout
    #[command(flatten)]
    output: OutputArgs,
    /// Run only the cases whose `name/case` contains this text
    #[arg(long, value_name = "SUBSTRING")]
    filter: Option<String>,
    /// Run every case through a running `avap serve` (`POST /api/v1/execute`) instead of in-process
    #[arg(long, value_name = "URL")]
    server: Option<String>,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Script files to check
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// With json: {"ok", "files": [{"file", "errors", "warnings", "diagnostics": […], "capabilities", "imports"}]}
    #[command(flatten)]
    output: OutputArgs,
    /// Treat warnings (unknown commands, …) as errors
    #[arg(long)]
    deny_warnings: bool,
    /// Never color the output
    #[arg(long)]
    no_color: bool,
    #[command(flatten)]
    includes: IncludeArgs,
}

#[derive(Debug, clap::Args)]
struct ParseArgs {
    /// Script file to parse
    file: PathBuf,
    /// With json: the syntax tree, every node with its byte span (the stable form; the default is Rust debug form)
    #[command(flatten)]
    output: OutputArgs,
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
        Command::Conformance(args) => crate::conformance::conformance(&crate::conformance::Options {
            dir: args.dir,
            json: args.output.json(),
            filter: args.filter,
            server: args.server,
        }),
        Command::Serve(args) => crate::server::serve(&args),
        Command::Worker(args) => crate::server::worker(&args),
        Command::Apikey(args) => crate::cmd_apikey::apikey(&args),
        Command::Audit(args) => crate::cmd_audit::audit(&args),
        Command::Health(args) => Ok(crate::cmd_health::health(&args)),
        Command::Migrate(args) => crate::cmd_db::migrate(&args),
        Command::Backup(args) => crate::cmd_db::backup(&args),
        Command::Restore(args) => crate::cmd_db::restore(&args),
        Command::Lsp(args) => crate::cmd_lsp::lsp(&args),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away (`avap inspect … | head`): end
        // quietly, with the status a process killed by SIGPIPE has.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// `--include-path`, on every command that compiles sources.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IncludeArgs {
    /// A directory `include` may also read files from, besides the script's own directory (repeatable)
    #[arg(long = "include-path", value_name = "DIR")]
    pub include_path: Vec<PathBuf>,
}

impl IncludeArgs {
    /// The directories, canonical (symlinks and `..` resolved), so a prefix
    /// check against them means what it says.
    pub fn resolve(&self) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::with_capacity(self.include_path.len());
        for dir in &self.include_path {
            let canonical = std::fs::canonicalize(dir)
                .with_context(|| format!("--include-path {}: cannot open the directory", dir.display()))?;
            if !canonical.is_dir() {
                anyhow::bail!(
                    "--include-path {}: {} is not a directory; pass the directory that holds the files to include",
                    dir.display(),
                    canonical.display()
                );
            }
            dirs.push(canonical);
        }
        Ok(dirs)
    }
}

fn check(args: &CheckArgs) -> Result<ExitCode> {
    let options = CheckOptions {
        deny_warnings: args.deny_warnings,
    };
    let color = !args.no_color && !args.output.json() && std::io::stderr().is_terminal();
    let mut checked_files = Vec::with_capacity(args.files.len());
    let include_paths = args.includes.resolve()?;
    for path in &args.files {
        let file = read_source(path)?;
        let checked = check_file(file, &FsLoader::for_script(path, &include_paths)?);
        if !args.output.json() {
            eprint!("{}", render_text(&checked.sources, &checked.diagnostics, color));
        }
        checked_files.push((path.display().to_string(), checked));
    }
    let failed = checked_files.iter().any(|(_, checked)| checked.fails(options));
    if args.output.json() {
        // The same document `POST /api/v1/check` answers (one library writes both).
        let report = CheckReport::new(checked_files.iter().map(|(name, c)| (name.clone(), c)), options);
        std::io::stdout().lock().write_all(report.to_json_text().as_bytes())?;
    } else {
        let files = args.files.len();
        let errors: usize = checked_files.iter().map(|(_, c)| c.error_count()).sum();
        let warnings: usize = checked_files.iter().map(|(_, c)| c.warning_count()).sum();
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
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn parse_cmd(args: &ParseArgs) -> Result<ExitCode> {
    let file = read_source(&args.file)?;
    let (program, diags) = parse(&file);
    let mut out = std::io::stdout().lock();
    if args.output.json() {
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
