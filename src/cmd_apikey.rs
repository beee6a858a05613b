//! `avap apikey create|list|revoke`: the API keys of `avap serve`, in the
//! server's database (found as `avap serve` finds it: `--database-url`,
//! `--config`, `--data-dir`, `AVAP_*` variables). Running servers see a new
//! key at once and a revocation within 5 s (they keep a key's record for
//! that long).
//!
//! `create --signed` also makes a signing secret: requests with that key
//! must then be HMAC-signed with it (docs/security.md, "Request signing").
//! The secret is stored sealed under `<data-dir>/keys/api_key_secrets.key`,
//! made here on first use; every server node needs the same file.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::server::auth::{self, Scope};
use crate::server::signing_secrets::{self, SecretsKey};
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
    /// Create a key and print it (once: only its hash is kept); with --signed, also a signing secret
    Create {
        /// What the key may do (repeatable; `admin` implies `execute` and `registry`; `registry` is for edge nodes)
        #[arg(long = "scope", value_enum, required = true)]
        scopes: Vec<Scope>,
        /// A label for `avap apikey list`
        #[arg(long)]
        name: Option<String>,
        /// Also make a signing secret (printed once, on the line after the key): every request
        /// with this key must then carry `X-Avap-Timestamp` and an `X-Avap-Signature` HMAC made
        /// with it (see docs/security.md, "Request signing"). The secret is stored encrypted with
        /// `<data-dir>/keys/api_key_secrets.key` (made on first use), which every server node needs
        #[arg(long)]
        signed: bool,
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
            ApikeyCommand::Create { scopes, name, signed } => {
                if *signed {
                    create_signed(&store, &args.database, scopes, name.as_deref()).await
                } else {
                    create(&store, scopes, name.as_deref()).await
                }
            }
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

/// `create --signed`: a key and its signing secret, sealed with the data
/// directory's secrets key (made now if there is none).
async fn create_signed(
    store: &Store,
    database: &crate::cmd_db::DatabaseArgs,
    scopes: &[Scope],
    name: Option<&str>,
) -> Result<ExitCode> {
    let (_, data_dir) = database.location()?;
    let (secrets_key, made_now) = SecretsKey::load_or_create(&data_dir)?;
    if made_now {
        eprintln!(
            "Made {}: it encrypts the signing secrets in the database. Every server node \
             (and wherever `avap apikey create --signed` runs) needs this same file; keep it with keys/server.key.",
            data_dir.join(signing_secrets::SECRETS_KEY_FILE).display()
        );
    }
    let new = auth::generate()?;
    let secret = signing_secrets::generate_secret()?;
    let sealed = secrets_key.seal(&new.id, &secret)?;
    let scopes = auth::scopes_text(scopes);
    store
        .create_signing_api_key(&new.id, name, &new.hash, &scopes, &sealed)
        .await?;
    audit(store, "apikey_create_signed", &new.id, "ok").await;
    outln!("{}\n{secret}", new.key)?;
    eprintln!(
        "Created signing API key {} (scopes: {scopes}; secrets key {}). Line 1 is the key, line 2 its signing \
         secret; this is the only time they are shown: keep them now.\n\
         Every request with this key must be signed: `X-Avap-Timestamp: <unix seconds>` and \
         `X-Avap-Signature: <hex HMAC-SHA256 of METHOD\\nPATH?QUERY\\nTIMESTAMP\\nhex(sha256(body)), keyed \
         with the secret>` (docs/security.md, \"Request signing\"; docs/examples/signed-request.sh). \
         Revoke it with `avap apikey revoke {}`.",
        new.id,
        secrets_key.id(),
        new.id
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
        "{:<8}  {:<20}  {:<16}  {:<24}  {:<6}  REVOKED",
        "ID",
        "NAME",
        "SCOPES",
        "CREATED",
        "SIGNED"
    )?;
    for k in keys {
        outln!(
            "{:<8}  {:<20}  {:<16}  {:<24}  {:<6}  {}",
            k.id,
            k.name.as_deref().unwrap_or("-"),
            k.scopes,
            k.created_at,
            if k.signing_secret.is_some() { "yes" } else { "no" },
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
