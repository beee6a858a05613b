//! `avap apikey create|list|revoke`: the API keys of `avap serve`, in the
//! server's database (found as `avap serve` finds it: `--database-url`,
//! `--config`, `--data-dir`, `AVAP_*` variables). Running servers see a new
//! key at once and a revocation within 5 s (they keep a key's record for
//! that long).

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::server::auth::{self, Scope};
use crate::server::{Actor, AuditRow, Store};

#[derive(Debug, clap::Args)]
pub struct ApikeyArgs {
    #[command(subcommand)]
    command: ApikeyCommand,
    #[command(flatten)]
    database: crate::cmd_db::DatabaseArgs,
}

#[derive(Debug, clap::Subcommand)]
enum ApikeyCommand {
    /// Create a key and print it (once: only its hash is kept)
    Create {
        /// What the key may do (repeatable; `admin` implies `execute` and `registry`; `registry` is for edge nodes)
        #[arg(long = "scope", value_enum, required = true)]
        scopes: Vec<Scope>,
        /// A label for `avap apikey list`
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never the keys themselves)
    List,
    /// Revoke a key by its id
    Revoke {
        /// The key's id (the 8 hex digits after `avap_`)
        id: String,
    },
}

pub fn apikey(args: &ApikeyArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = args.database.open().await?;
        let code = match &args.command {
            ApikeyCommand::Create { scopes, name } => create(&store, scopes, name.as_deref()).await,
            ApikeyCommand::List => list(&store).await,
            ApikeyCommand::Revoke { id } => revoke(&store, id).await,
        };
        store.close().await;
        code
    })
}

async fn create(store: &Store, scopes: &[Scope], name: Option<&str>) -> Result<ExitCode> {
    let new = auth::generate()?;
    let scopes = auth::scopes_text(scopes);
    store.create_api_key(&new.id, name, &new.hash, &scopes).await?;
    audit(store, "apikey_create", &new.id, "ok").await;
    outln!("{}", new.key)?;
    eprintln!(
        "Created API key {} (scopes: {scopes}). This is the only time it is shown: keep it now.\n\
         Send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`; revoke it with `avap apikey revoke {}`.",
        new.id, new.id
    );
    Ok(ExitCode::SUCCESS)
}

/// Who the audit trail names for the command line: `cli:<user>`.
pub fn cli_actor() -> Actor {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty() && u.len() <= 64 && u.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "unknown".to_owned());
    Actor {
        actor: format!("cli:{user}"),
        request_id: None,
    }
}

/// Note an administrative action in the audit trail; a failure to write it
/// is said on stderr (the action itself is done).
async fn audit(store: &Store, action: &'static str, key_id: &str, outcome: &str) {
    let row = AuditRow {
        subject: Some(key_id.to_owned()),
        ..AuditRow::new(&cli_actor(), action, outcome)
    };
    if let Err(e) = store.append_audit(&[row]).await {
        eprintln!("warning: the audit row of {action} {key_id} could not be written: {e:#}");
    }
}

async fn list(store: &Store) -> Result<ExitCode> {
    let keys = store.api_keys().await?;
    if keys.is_empty() {
        eprintln!("no API keys (create one with `avap apikey create --scope execute`)");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<8}  {:<20}  {:<16}  {:<24}  REVOKED",
        "ID",
        "NAME",
        "SCOPES",
        "CREATED"
    )?;
    for k in keys {
        outln!(
            "{:<8}  {:<20}  {:<16}  {:<24}  {}",
            k.id,
            k.name.as_deref().unwrap_or("-"),
            k.scopes,
            k.created_at,
            k.revoked_at.as_deref().unwrap_or("-")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(store: &Store, id: &str) -> Result<ExitCode> {
    if store.revoke_api_key(id).await? {
        audit(store, "apikey_revoke", id, "ok").await;
        eprintln!("revoked API key {id}");
        return Ok(ExitCode::SUCCESS);
    }
    match store.api_key(id).await? {
        Some(_) => {
            audit(store, "apikey_revoke", id, "unchanged").await;
            eprintln!("API key {id} was already revoked");
        }
        None => {
            audit(store, "apikey_revoke", id, "NotFound").await;
            eprintln!("error: no API key with id {id} (see `avap apikey list`)");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
