//! Command-line interface.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use avap_codegen::check::{CheckOptions, IncludeError, LoadedSource, SourceLoader, check_file};
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
    #[command(flatten)]
    includes: IncludeArgs,
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

/// Reads the files scripts `include` from disk, and only files a script
/// may see: regular files (no devices, FIFOs or directories: `/dev/zero`
/// would never end, a FIFO would block), under the script's own directory
/// or an `--include-path` directory, at most [`MAX_INCLUDE_BYTES`] each.
/// A script from elsewhere must not be able to pull `/etc/passwd` into its
/// diagnostics, or hang the compiler.
///
/// Includes resolve relative to the including file's directory; the
/// allowed directories are fixed for the whole script (its own directory
/// and `--include-path`), so a helper in `lib/` may include `../common/x.avap`
/// of the same project. Paths are checked after canonicalising (symlinks
/// and `..` resolved), so neither can lead out. A file's identity is its
/// canonical path, so `a.avap`, `./a.avap` and `sub/../a.avap` are one file.
#[derive(Debug, Clone)]
pub(crate) struct FsLoader {
    /// The script's own directory, canonical.
    script_dir: PathBuf,
    /// The `--include-path` directories, canonical.
    include_paths: Vec<PathBuf>,
}

/// The largest file `include` reads: the largest script `avap serve`
/// accepts by default (`max_script_bytes`); the CLI has no config file to
/// change it.
pub(crate) const MAX_INCLUDE_BYTES: u64 = crate::server::DEFAULT_MAX_SCRIPT_BYTES as u64;

impl FsLoader {
    /// The loader for the script at `script`, allowing also `include_paths`
    /// (canonical, from [`IncludeArgs::resolve`]).
    pub fn for_script(script: &Path, include_paths: &[PathBuf]) -> Result<FsLoader> {
        let dir = match script.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let script_dir = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot resolve the directory of {}", script.display()))?;
        Ok(FsLoader {
            script_dir,
            include_paths: include_paths.to_vec(),
        })
    }

    fn allows(&self, canonical: &Path) -> bool {
        std::iter::once(&self.script_dir)
            .chain(&self.include_paths)
            .any(|dir| canonical.starts_with(dir))
    }

    /// Where includes may come from, for messages.
    fn allowed_dirs(&self) -> String {
        let dir = format!("the script's directory {}", self.script_dir.display());
        if self.include_paths.is_empty() {
            return dir;
        }
        let extra: Vec<String> = self.include_paths.iter().map(|d| d.display().to_string()).collect();
        format!("{dir} and --include-path {}", extra.join(", "))
    }
}

/// What kind of file a non-regular file is, for messages.
fn file_kind(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

impl SourceLoader for FsLoader {
    fn load(&self, from: &str, path: &str) -> std::result::Result<LoadedSource, IncludeError> {
        use std::io::Read;

        let base = Path::new(from).parent().unwrap_or(Path::new("."));
        let full = base.join(path);
        let canonical = std::fs::canonicalize(&full).map_err(|e| format!("{}: {e}", full.display()))?;
        let shown = canonical.display();
        // Where the written path leads, when that is not obvious from it.
        let leads = if canonical == full {
            format!("include path {shown}")
        } else {
            format!("`{path}` resolves to {shown}, which")
        };
        if !self.allows(&canonical) {
            let dir = canonical.parent().unwrap_or(&canonical);
            return Err(IncludeError::with_help(
                format!("{leads} is outside {}", self.allowed_dirs()),
                format!(
                    "pass --include-path {} to allow it (include reads only under the script's directory and the --include-path directories)",
                    dir.display()
                ),
            ));
        }
        let too_large = |size: String| {
            IncludeError::with_help(
                format!("{leads} is larger than the {MAX_INCLUDE_BYTES} bytes a script may have ({size})"),
                "split it into smaller files (the same limit as `max_script_bytes` of avap serve)",
            )
        };
        let not_regular = |kind: &str| {
            IncludeError::with_help(
                format!("{leads} is {kind}: include reads only regular files"),
                "include a .avap file",
            )
        };
        // Refuse by the path's metadata first: opening a FIFO would block.
        let meta = std::fs::metadata(&canonical).map_err(|e| format!("{shown}: {e}"))?;
        if !meta.is_file() {
            return Err(not_regular(file_kind(meta.file_type())));
        }
        if meta.len() > MAX_INCLUDE_BYTES {
            return Err(too_large(format!("{} bytes", meta.len())));
        }
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            // Should the file be swapped for a FIFO after the check above,
            // the open still returns at once, and the check below refuses it.
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NONBLOCK);
        }
        let file = options.open(&canonical).map_err(|e| format!("{shown}: {e}"))?;
        let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
        if !meta.is_file() {
            return Err(not_regular(file_kind(meta.file_type())));
        }
        // `take`: a file that grows after the size check is still bounded.
        let mut bytes = Vec::new();
        file.take(MAX_INCLUDE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{shown}: {e}"))?;
        if bytes.len() as u64 > MAX_INCLUDE_BYTES {
            return Err(too_large("it grew while being read".to_owned()));
        }
        Ok(LoadedSource {
            identity: shown.to_string(),
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
    let include_paths = args.includes.resolve()?;
    for path in &args.files {
        let file = read_source(path)?;
        let checked = check_file(file, &FsLoader::for_script(path, &include_paths)?);
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
