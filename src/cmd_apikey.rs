//! `avap apikey create|list|revoke`: the API keys of `avap serve`, in the
//! server's database (found as `avap serve` finds it: `--database-url`,
//! `--config`, `--data-dir`, `AVAP_*` variables). Running servers see a new
//! key at once and a revocation within 5 s (they keep a key's record for
//! that long).

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::server::Store;
use crate::server::auth::{self, Scope};

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
    println!("{}", new.key);
    eprintln!(
        "Created API key {} (scopes: {scopes}). This is the only time it is shown: keep it now.\n\
         Send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`; revoke it with `avap apikey revoke {}`.",
        new.id, new.id
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(store: &Store) -> Result<ExitCode> {
    let keys = store.api_keys().await?;
    if keys.is_empty() {
        eprintln!("no API keys (create one with `avap apikey create --scope execute`)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8}  {:<20}  {:<16}  {:<24}  REVOKED",
        "ID", "NAME", "SCOPES", "CREATED"
    );
    for k in keys {
        println!(
            "{:<8}  {:<20}  {:<16}  {:<24}  {}",
            k.id,
            k.name.as_deref().unwrap_or("-"),
            k.scopes,
            k.created_at,
            k.revoked_at.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(store: &Store, id: &str) -> Result<ExitCode> {
    if store.revoke_api_key(id).await? {
        eprintln!("revoked API key {id}");
        return Ok(ExitCode::SUCCESS);
    }
    match store.api_key(id).await? {
        Some(_) => eprintln!("API key {id} was already revoked"),
        None => {
            eprintln!("error: no API key with id {id} (see `avap apikey list`)");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
