//! The commands that work on the server's database without a server:
//! `avap migrate`, `avap backup`, `avap restore` (and the database choice
//! that `avap apikey` shares with them). They find the database exactly as
//! `avap serve` does: `--database-url`, else `AVAP_DATABASE_URL`, else the
//! config file's `database_url`, else `<data-dir>/avap.sqlite`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::server::backup::{self, BackupSummary};
use crate::server::config;
use crate::server::{AuditRow, Location, Store};
use avap_server::ServeArgs;

/// Which database a command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// TOML config file of `avap serve` (its `database_url` and `data_dir` are used)
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The server's data directory (default: as `avap serve`)
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The server's database: `sqlite:PATH` or `postgres://USER@HOST:PORT/DATABASE` (default: as `avap serve`)
    #[arg(long, value_name = "URL", global = true)]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    /// Where the database is, resolved like `avap serve` resolves it.
    pub fn location(&self) -> Result<(Location, PathBuf)> {
        let serve = ServeArgs {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            ..ServeArgs::default()
        };
        let mut settings = config::resolve(&serve)
            .map_err(|e| anyhow::anyhow!("config error: {e}"))?
            .settings;
        if let Some(url) = &self.database_url {
            settings.database_url.clone_from(url);
        }
        let location = settings.database().map_err(|e| anyhow::anyhow!("config error: {e}"))?;
        Ok((location, settings.data_dir))
    }

    /// Connect (creating an `SQLite` file and its directory if missing) and migrate.
    pub async fn open(&self) -> Result<Store> {
        let (location, data_dir) = self.location()?;
        if matches!(location, Location::Sqlite(_)) {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        }
        Store::connect(&location).await
    }
}

fn block_on<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(work)
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Only show which migrations the database has; change nothing
    #[arg(long)]
    status: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// `avap migrate`: apply the migrations the database has not seen (the
/// server also does this at start), or with `--status` list them.
pub fn migrate(args: &MigrateArgs) -> Result<ExitCode> {
    block_on(async {
        let (location, _) = args.database.location()?;
        let store = Store::connect_with_patience(&location, std::time::Duration::from_secs(10)).await?;
        let before = store.migrations().await?;
        if !args.status {
            store.migrate().await?;
        }
        let after = store.migrations().await?;
        outln!("database: {location} ({:?})", store.backend())?;
        for (old, new) in before.iter().zip(&after) {
            let state = match (old.applied, new.applied) {
                (true, _) => "applied",
                (false, true) => "applied now",
                (false, false) => "pending",
            };
            outln!("{:>4}  {:<12} {}", new.version, state, new.description)?;
        }
        let pending = after.iter().filter(|m| !m.applied).count();
        if pending > 0 {
            eprintln!("{pending} migration(s) pending: run `avap migrate` to apply them");
        }
        store.close().await;
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Where to write the backup (JSON lines; `-` for standard output). An
    /// existing file is replaced only when the backup is complete.
    output: PathBuf,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// `avap backup FILE`: scripts with every version (source and signed
/// artifact), API key records (hashes, never keys) and the audit trail, read
/// in one consistent snapshot while servers keep running.
pub fn backup(args: &BackupArgs) -> Result<ExitCode> {
    block_on(async {
        let store = args.database.open().await?;
        let summary = if args.output == Path::new("-") {
            let mut out = std::io::stdout().lock();
            let summary = backup::write(&store, &mut out).await?;
            out.flush()?;
            summary
        } else {
            write_atomically(&store, &args.output).await?
        };
        store.close().await;
        eprintln!("backup: {}", describe(&summary));
        Ok(ExitCode::SUCCESS)
    })
}

/// Write to `FILE.partial`, sync, then rename over `FILE`: a failed or
/// interrupted backup never leaves a truncated file under the real name.
async fn write_atomically(store: &Store, path: &Path) -> Result<BackupSummary> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    // Owner-only (the backup holds API key hashes, the audit trail and every
    // script's source), and never through a file or symlink planted at the
    // temporary name: remove what is there, then create it new.
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(anyhow::Error::new(e).context(format!("cannot remove the stale {}", partial.display())));
        }
        _ => {}
    }
    let file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?
    };
    let mut out = std::io::BufWriter::new(file);
    let written = backup::write(store, &mut out).await;
    let finished = written.and_then(|summary| {
        let file = out.into_inner().map_err(std::io::IntoInnerError::into_error)?;
        file.sync_all()?;
        Ok(summary)
    });
    match finished {
        Ok(summary) => {
            std::fs::rename(&partial, path)
                .with_context(|| format!("cannot move the backup into place at {}", path.display()))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e.context(format!("cannot write the backup {}", path.display())))
        }
    }
}

fn describe(summary: &BackupSummary) -> String {
    format!(
        "{} scripts, {} versions, {} API keys, {} audit rows",
        summary.scripts, summary.versions, summary.api_keys, summary.audit_rows
    )
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A file written by `avap backup` (`-` for standard input)
    input: PathBuf,
    /// Replace what the database holds (by default restore refuses a database that is not empty)
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// `avap restore FILE`: check the whole backup (format, checksums, every
/// artifact's SHA-256), then write it in one transaction: all or nothing.
pub fn restore(args: &RestoreArgs) -> Result<ExitCode> {
    let reader: Box<dyn BufRead> = if args.input == Path::new("-") {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot open the backup {}", args.input.display()))?;
        Box::new(BufReader::new(file))
    };
    let contents = backup::read(reader).with_context(|| format!("{} is not a usable backup", args.input.display()))?;
    block_on(async {
        let store = args.database.open().await?;
        if !args.replace && !store.is_empty().await? {
            bail!(
                "the database already holds scripts, API keys or audit rows; \
                 restore into an empty database, or pass --replace to overwrite them"
            );
        }
        store.restore(&contents, args.replace).await?;
        let restored = AuditRow {
            subject: Some(args.input.display().to_string()),
            ..AuditRow::new(&crate::cmd_apikey::cli_actor(), "restore", "ok")
        };
        // The restore is done: a failure to note it is said, not fatal.
        if let Err(e) = store.append_audit(&[restored]).await {
            eprintln!("warning: the restore is done, but its audit row could not be written: {e:#}");
        }
        let summary = BackupSummary::of(&contents);
        store.close().await;
        eprintln!(
            "restored: {}. Restart running servers (or let their caches expire) to see it.",
            describe(&summary)
        );
        Ok(ExitCode::SUCCESS)
    })
}
