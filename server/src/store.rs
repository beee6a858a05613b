//! [`Store`]: the server's database, and all of its SQL.
//!
//! Two backends behind one sqlx `AnyPool` ([`Location`]): the embedded
//! default, an `SQLite` file `<data-dir>/avap.sqlite` in WAL mode, and
//! `PostgreSQL` for clusters of nodes sharing one registry. Each is migrated
//! at start (and by `avap migrate`) from its own directory,
//! `migrations/sqlite` or `migrations/postgres`: the same logical schema.
//! Every statement here runs unchanged on both: `$1, $2, …` placeholders
//! (sqlx-sqlite binds `$N` by number; a test checks it), no dialect-only
//! syntax or functions, `ON CONFLICT … DO UPDATE` upserts, integers read as
//! `i64` (`BIGINT`), artifacts as bytes (`BYTEA`), and timestamps written by
//! us as RFC 3339 UTC text, so both backends store the same thing. The unit
//! tests run on both.
//!
//! Registry invariants: versions of a name count up from 1 and are never
//! rewritten; `scripts.current_version` always names an existing version;
//! deleting a script deletes its versions; every change commits together
//! with its `audit_log` row.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use avap_hostfns::artifact::LibraryMeta;
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, AnyPool};

use super::metrics::PoolWatch;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "avap.sqlite";

/// How many times a registry write is retried when a concurrent writer got
/// there first (busy database or a version number taken meanwhile).
const WRITE_ATTEMPTS: usize = 3;

/// How long a statement waits for a connection from the pool. Short: when
/// the database is down, a registry write fails fast with 503 rather than
/// holding the request, and runs of cached scripts never wait for it.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long [`Store::connect`] keeps retrying a database that does not
/// answer at start (a node starting before its database, a restart).
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Where the server's database is (`database_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An `SQLite` file, created if missing.
    Sqlite(PathBuf),
    /// A `postgres://` URL.
    Postgres(String),
}

impl Location {
    pub fn backend(&self) -> Backend {
        match self {
            Location::Sqlite(_) => Backend::Sqlite,
            Location::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL sqlx connects to.
    fn url(&self) -> String {
        match self {
            // `mode=rwc`: create the file if missing. The path is
            // percent-encoded: sqlx decodes it, so `?`, `#` and `%` in a
            // file name stay part of the name.
            Location::Sqlite(path) => format!("sqlite://{}?mode=rwc", percent_encode_path(path)),
            Location::Postgres(url) => url.clone(),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&avap_hostfns::redact::url(url)),
        }
    }
}

fn percent_encode_path(path: &Path) -> String {
    let mut out = String::new();
    for byte in path.to_string_lossy().bytes() {
        if byte.is_ascii_alphanumeric() || b"/._-~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Create the `SQLite` file owner-only (`0600`) if it does not exist yet:
/// it holds API key hashes, the audit trail and every script's source.
/// `SQLite` gives its `-wal` and `-shm` files the same mode.
fn create_private(path: &Path) -> Result<(), sqlx::Error> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // Not `Io`: that reads as "unreachable" and would be retried.
        Err(e) => Err(sqlx::Error::Configuration(
            format!("cannot create the database file {}: {e}", path.display()).into(),
        )),
    }
}

/// The kind of database behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn migrator(self) -> &'static Migrator {
        match self {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Waiting for the pool's connections, counted and timed (the metrics).
    watch: Arc<PoolWatch>,
}

/// One migration as [`Store::migrations`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// One line of the script list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ScriptSummary {
    pub name: String,
    pub version: i64,
    pub updated_at: String,
}

/// What identifies one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VersionMeta {
    pub version: i64,
    pub source_sha256: String,
    pub artifact_sha256: String,
    pub created_at: String,
}

/// A script's current version with its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentScript {
    pub name: String,
    pub meta: VersionMeta,
    pub source: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A compiled, signed version about to be stored.
#[derive(Debug)]
pub struct NewVersion<'a> {
    pub name: &'a str,
    pub source: &'a str,
    pub source_sha256: &'a str,
    pub artifact: &'a [u8],
    pub artifact_sha256: &'a str,
    /// The libraries it was built with (its artifact's meta says the same).
    pub libraries: &'a [LibraryMeta],
    /// The audit action: `store`, or `rebuild`.
    pub action: &'static str,
    /// A rebuild: the version it rebuilt, which must still be current (a
    /// store or rollback in between wins: [`Put::Superseded`]). `None`: a store.
    pub rebuilds: Option<i64>,
}

/// A current version of a stored script that includes a library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Dependent {
    /// The including script.
    pub name: String,
    /// Its current version.
    pub version: i64,
    /// The library's version it was built with.
    pub library_version: i64,
    /// SHA-256 of that version's source (a library deleted and stored
    /// again numbers its versions from 1 again).
    pub library_source_sha256: String,
}

/// What [`Store::delete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    Done,
    NoScript,
    /// A library that these current versions include: nothing deleted.
    InUse(Vec<Dependent>),
}

/// What [`Store::put`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// The source is the current version's: nothing stored.
    Unchanged(VersionMeta),
    Created(VersionMeta),
    /// A rebuild of a version that is no longer current: nothing stored.
    Superseded,
}

/// Who asked for a change or a run, for its audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The API key id, or `anonymous`.
    pub actor: String,
    /// The request's `X-Request-Id`, when the server knows it.
    pub request_id: Option<String>,
}

/// One row of the audit trail (`audit_log`, migration 0003) to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    /// RFC 3339 UTC: when it happened (not when it was written).
    pub at: String,
    pub actor: String,
    /// `store`, `delete`, `rollback`, `run`, or an administrative action:
    /// `apikey_create`, `apikey_create_signed`, `apikey_revoke`, `restore`.
    pub action: &'static str,
    /// The script's name; `None` for inline runs, uploads and administrative rows.
    pub script: Option<String>,
    pub version: Option<i64>,
    pub artifact_sha256: Option<String>,
    /// `ok`, `unchanged`, or the error kind of a refused write or failed run.
    pub outcome: String,
    pub request_id: Option<String>,
    /// What an administrative row is about: an API key id, a backup's SHA-256.
    pub subject: Option<String>,
}

impl AuditRow {
    /// A row stamped now, for `actor` doing `action` (fill in the rest).
    pub fn new(actor: &Actor, action: &'static str, outcome: impl Into<String>) -> AuditRow {
        AuditRow {
            at: now(),
            actor: actor.actor.clone(),
            action,
            script: None,
            version: None,
            artifact_sha256: None,
            outcome: outcome.into(),
            request_id: actor.request_id.clone(),
            subject: None,
        }
    }
}

/// One row of the audit trail as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// RFC 3339 UTC.
    pub at: String,
    /// The API key id, or `anonymous`.
    pub actor: String,
    /// `store`, `delete`, `rollback`, `run`, `apikey_create`, `apikey_create_signed`, `apikey_revoke` or `restore`.
    pub action: String,
    /// Null for inline runs, uploads and administrative rows.
    pub script: Option<String>,
    pub version: Option<i64>,
    pub artifact_sha256: Option<String>,
    /// `ok`, `unchanged`, or an error kind.
    pub outcome: String,
    pub request_id: Option<String>,
    /// What an administrative row is about: the API key id of
    /// `apikey_create`/`apikey_create_signed`/`apikey_revoke`, the backup's SHA-256 of `restore`.
    /// (Absent in backups made before it existed.)
    #[serde(default)]
    pub subject: Option<String>,
}

/// Which rows [`Store::audit_entries`] returns, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub script: Option<String>,
    /// Only rows with a smaller id (the previous page's last id).
    pub before: Option<i64>,
    pub limit: i64,
}

/// What [`Store::rollback`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollback {
    Done,
    NoScript,
    NoVersion,
}

type VersionRow = (i64, String, String, String);

fn version_meta((version, source_sha256, artifact_sha256, created_at): VersionRow) -> VersionMeta {
    VersionMeta {
        version,
        source_sha256,
        artifact_sha256,
        created_at,
    }
}

fn now() -> String {
    audit_time(chrono::Utc::now())
}

/// The database could not be reached (down, restarting, network), as
/// opposed to refusing a statement: worth retrying, and a 503 for clients.
fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
        // PostgreSQL starting up or shutting down (SQLSTATE class 57P).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("57P")),
        _ => false,
    }
}

/// Whether `e` (from any [`Store`] method) means the database is unreachable.
pub fn is_unavailable(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .any(is_unreachable)
}

impl Store {
    /// Connect to `location` and migrate it. A database that does not
    /// answer is retried with backoff for up to 30 s (logged each time), so
    /// nodes may start before their database.
    pub async fn connect(location: &Location) -> Result<Store> {
        let store = Store::connect_with_patience(location, CONNECT_PATIENCE).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connect to `location` without migrating (`avap migrate --status`).
    pub async fn connect_with_patience(location: &Location, patience: Duration) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            match Store::connect_once(location).await {
                Ok(store) => return Ok(store),
                Err(e) if started.elapsed() + backoff < patience && is_unreachable(&e) => {
                    tracing::warn!(database = %location, "the database does not answer ({e}); retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(4));
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("cannot open the database {location}")));
                }
            }
        }
    }

    async fn connect_once(location: &Location) -> Result<Store, sqlx::Error> {
        if let Location::Sqlite(path) = location {
            create_private(path)?;
        }
        let backend = location.backend();
        let options = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        let pool = match backend {
            // Writers queue on SQLite's file lock: a few connections suffice.
            Backend::Sqlite => {
                options
                    .max_connections(4)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            use sqlx::Executor as _;
                            conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000")
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(&location.url())
                    .await?
            }
            // Every connection is a PostgreSQL backend process; runs of
            // cached scripts never touch the pool, so this bounds writes,
            // listings and the audit writer.
            Backend::Postgres => options.max_connections(10).connect(&location.url()).await?,
        };
        Ok(Store {
            pool,
            backend,
            watch: Arc::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Every connection of the pool is open and busy: a timeout waiting for
    /// one then means load (perhaps a client's doing), not a database that
    /// went away.
    pub fn is_saturated(&self) -> bool {
        self.pool.num_idle() == 0 && self.pool.size() >= self.pool.options().get_max_connections()
    }

    /// A transaction that writes. On `SQLite` it takes the write lock at
    /// once (`BEGIN IMMEDIATE`, waiting up to the busy timeout): a deferred
    /// transaction that reads first and writes later fails with "database
    /// is locked" whenever another writer committed in between, without
    /// waiting, which under concurrent registry writes meant 500s.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.watch.acquiring(self.pool.begin_with("BEGIN IMMEDIATE")).await,
            Backend::Postgres => self.watch.acquiring(self.pool.begin()).await,
        }
    }

    /// A connection of the pool, the wait counted and timed.
    pub(crate) async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, sqlx::Error> {
        self.watch.acquiring(self.pool.acquire()).await
    }

    /// The pool's waiters and acquire times, for the metrics.
    pub fn pool_watch(&self) -> &PoolWatch {
        &self.watch
    }

    /// Apply the migrations this database has not seen (at start, and by
    /// `avap migrate`). Concurrent starts of several nodes are safe: sqlx
    /// takes an advisory lock on `PostgreSQL`.
    pub async fn migrate(&self) -> Result<()> {
        self.backend
            .migrator()
            .run(&self.pool)
            .await
            .context("cannot migrate the database")
    }

    /// Every migration this binary knows, and whether the database has it.
    pub async fn migrations(&self) -> Result<Vec<MigrationState>> {
        let applied: Vec<(i64,)> = match sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success = $1")
            .bind(true)
            .fetch_all(&mut *self.conn().await?)
            .await
        {
            Ok(rows) => rows,
            // A database never migrated has no bookkeeping table yet.
            Err(sqlx::Error::Database(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(self
            .backend
            .migrator()
            .iter()
            .map(|m| MigrationState {
                version: m.version,
                description: m.description.to_string(),
                applied: applied.iter().any(|(v,)| *v == m.version),
            })
            .collect())
    }

    /// Readiness: the database answers a trivial query.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await.context("the database does not answer")?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .context("the database does not answer")?;
        Ok(())
    }

    /// Close the pool: in-flight statements finish, new ones fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A private in-memory `SQLite` database (unit tests).
    #[cfg(test)]
    pub async fn in_memory() -> Result<Store> {
        sqlx::any::install_default_drivers();
        // Every connection to `:memory:` is its own database: keep exactly one, forever.
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect("sqlite::memory:")
            .await?;
        let store = Store {
            pool,
            backend: Backend::Sqlite,
            watch: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn list(&self) -> Result<Vec<ScriptSummary>> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT name, current_version, updated_at FROM scripts ORDER BY name")
                .fetch_all(&mut *self.conn().await?)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(name, version, updated_at)| ScriptSummary {
                name,
                version,
                updated_at,
            })
            .collect())
    }

    /// The current version of `name`, with its source.
    pub async fn current(&self, name: &str) -> Result<Option<CurrentScript>> {
        let row: Option<(i64, String, String, String, String, String, String)> = sqlx::query_as(
            "SELECT v.version, v.source_sha256, v.artifact_sha256, v.created_at, v.source, s.created_at, s.updated_at \
             FROM scripts s JOIN script_versions v ON v.name = s.name AND v.version = s.current_version \
             WHERE s.name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(row.map(
            |(version, ssha, asha, vcreated, source, created_at, updated_at)| CurrentScript {
                name: name.to_owned(),
                meta: version_meta((version, ssha, asha, vcreated)),
                source,
                created_at,
                updated_at,
            },
        ))
    }

    /// Every version of `name`, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionMeta>> {
        let rows: Vec<VersionRow> = sqlx::query_as(
            "SELECT version, source_sha256, artifact_sha256, created_at FROM script_versions \
             WHERE name = $1 ORDER BY version",
        )
        .bind(name)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows.into_iter().map(version_meta).collect())
    }

    /// The signed artifact of `name` at `version` (the current one if `None`).
    pub async fn artifact(&self, name: &str, version: Option<i64>) -> Result<Option<(i64, Vec<u8>)>> {
        let query = match version {
            None => sqlx::query_as(
                "SELECT v.version, v.artifact FROM scripts s \
                 JOIN script_versions v ON v.name = s.name AND v.version = s.current_version WHERE s.name = $1",
            )
            .bind(name),
            Some(n) => sqlx::query_as("SELECT version, artifact FROM script_versions WHERE name = $1 AND version = $2")
                .bind(name)
                .bind(n),
        };
        Ok(query.fetch_optional(&mut *self.conn().await?).await?)
    }

    /// Store `new` as the next version and make it current, unless its
    /// source is already the current version's.
    /// The change and its audit row commit together.
    pub async fn put(&self, new: &NewVersion<'_>, actor: &Actor) -> Result<Put> {
        let mut attempt = 1;
        loop {
            match self.try_put(new, actor).await {
                Err(sqlx::Error::Database(e)) if attempt < WRITE_ATTEMPTS => {
                    // Busy, or another writer took this version number: read again.
                    tracing::warn!("retrying a registry write: {e}");
                    attempt += 1;
                }
                other => return other.with_context(|| format!("cannot store script `{}`", new.name)),
            }
        }
    }

    async fn try_put(&self, new: &NewVersion<'_>, actor: &Actor) -> Result<Put, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        let current: Option<VersionRow> = sqlx::query_as(
            "SELECT v.version, v.source_sha256, v.artifact_sha256, v.created_at \
             FROM scripts s JOIN script_versions v ON v.name = s.name AND v.version = s.current_version \
             WHERE s.name = $1",
        )
        .bind(new.name)
        .fetch_optional(&mut *tx)
        .await?;
        // The same source and the same artifact (the same policy, signed by
        // the same compiler): nothing new. Another policy makes a new version.
        if let Some(rebuilt) = new.rebuilds
            && current.as_ref().is_none_or(|row| row.0 != rebuilt)
        {
            return Ok(Put::Superseded);
        }
        if let Some(row) = current
            && row.1 == new.source_sha256
            && row.2 == new.artifact_sha256
        {
            return Ok(Put::Unchanged(version_meta(row)));
        }
        let (last,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM script_versions WHERE name = $1")
            .bind(new.name)
            .fetch_one(&mut *tx)
            .await?;
        let version = last + 1;
        let at = now();
        sqlx::query(
            "INSERT INTO script_versions \
             (name, version, source, source_sha256, artifact, artifact_sha256, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(new.name)
        .bind(version)
        .bind(new.source)
        .bind(new.source_sha256)
        .bind(new.artifact)
        .bind(new.artifact_sha256)
        .bind(&at)
        .execute(&mut *tx)
        .await?;
        insert_libraries(&mut tx, new.name, version, new.libraries).await?;
        sqlx::query(
            "INSERT INTO scripts (name, current_version, created_at, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET current_version = excluded.current_version, updated_at = excluded.updated_at",
        )
        .bind(new.name)
        .bind(version)
        .bind(&at)
        .bind(&at)
        .execute(&mut *tx)
        .await?;
        let row = AuditRow {
            script: Some(new.name.to_owned()),
            version: Some(version),
            artifact_sha256: Some(new.artifact_sha256.to_owned()),
            at: at.clone(),
            ..AuditRow::new(actor, new.action, "ok")
        };
        insert_audit(&mut tx, &[AuditValues::from(&row)]).await?;
        tx.commit().await?;
        Ok(Put::Created(VersionMeta {
            version,
            source_sha256: new.source_sha256.to_owned(),
            artifact_sha256: new.artifact_sha256.to_owned(),
            created_at: at,
        }))
    }

    /// Delete `name` and all its versions; `false` if there was no such
    /// script. The audit row (with the version that was current) commits
    /// with the change.
    /// Unless `force`, a library that current versions of other scripts
    /// include is not deleted ([`Deleted::InUse`]), checked in the same
    /// transaction.
    pub async fn delete(&self, name: &str, actor: &Actor, force: bool) -> Result<Deleted> {
        let mut tx = self.begin_write().await?;
        let current: Option<(i64, String)> = sqlx::query_as(
            "SELECT v.version, v.artifact_sha256 FROM scripts s \
             JOIN script_versions v ON v.name = s.name AND v.version = s.current_version WHERE s.name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((version, artifact_sha256)) = current else {
            return Ok(Deleted::NoScript);
        };
        if !force {
            let dependents = dependents_of(&mut tx, name).await?;
            if !dependents.is_empty() {
                return Ok(Deleted::InUse(dependents));
            }
        }
        sqlx::query("DELETE FROM script_versions WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM script_libraries WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM scripts WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let row = AuditRow {
            script: Some(name.to_owned()),
            version: Some(version),
            artifact_sha256: Some(artifact_sha256),
            ..AuditRow::new(actor, "delete", "ok")
        };
        insert_audit(&mut tx, &[AuditValues::from(&row)]).await?;
        tx.commit().await?;
        Ok(if deleted > 0 { Deleted::Done } else { Deleted::NoScript })
    }

    /// The current versions of other stored scripts that include `library`, by name.
    pub async fn dependents(&self, library: &str) -> Result<Vec<Dependent>> {
        let mut conn = self.conn().await?;
        Ok(dependents_of(&mut conn, library).await?)
    }

    /// Make `version` the current version of `name`; the audit row commits
    /// with the change.
    pub async fn rollback(&self, name: &str, version: i64, actor: &Actor) -> Result<Rollback> {
        let mut tx = self.begin_write().await?;
        let exists: Option<(String,)> =
            sqlx::query_as("SELECT artifact_sha256 FROM script_versions WHERE name = $1 AND version = $2")
                .bind(name)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        let updated = sqlx::query("UPDATE scripts SET current_version = $1, updated_at = $2 WHERE name = $3")
            .bind(version)
            .bind(now())
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Ok(Rollback::NoScript);
        }
        let Some((artifact_sha256,)) = exists else {
            // Dropping the transaction rolls the update back.
            return Ok(Rollback::NoVersion);
        };
        let row = AuditRow {
            script: Some(name.to_owned()),
            version: Some(version),
            artifact_sha256: Some(artifact_sha256),
            ..AuditRow::new(actor, "rollback", "ok")
        };
        insert_audit(&mut tx, &[AuditValues::from(&row)]).await?;
        tx.commit().await?;
        Ok(Rollback::Done)
    }
}

/// [`Store::dependents`], on a connection or in a transaction.
async fn dependents_of(conn: &mut AnyConnection, library: &str) -> Result<Vec<Dependent>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT l.name, l.version, l.library_version, l.library_source_sha256 FROM script_libraries l \
         JOIN scripts s ON s.name = l.name AND s.current_version = l.version \
         WHERE l.library = $1 AND l.name <> $1 ORDER BY l.name",
    )
    .bind(library)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, version, library_version, library_source_sha256)| Dependent {
            name,
            version,
            library_version,
            library_source_sha256,
        })
        .collect())
}

/// The `script_libraries` rows of version `version` of `name`.
async fn insert_libraries(
    conn: &mut AnyConnection,
    name: &str,
    version: i64,
    libraries: &[LibraryMeta],
) -> Result<(), sqlx::Error> {
    for lib in libraries {
        sqlx::query(
            "INSERT INTO script_libraries (name, version, library, library_version, library_source_sha256) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(version)
        .bind(&lib.name)
        .bind(lib.version)
        .bind(&lib.source_sha256)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The columns of one `audit_log` row to insert, borrowed from a new
/// [`AuditRow`] or a restored [`AuditEntry`] (whose id is not kept).
struct AuditValues<'a> {
    at: &'a str,
    actor: &'a str,
    action: &'a str,
    script: Option<&'a str>,
    version: Option<i64>,
    artifact_sha256: Option<&'a str>,
    outcome: &'a str,
    request_id: Option<&'a str>,
    subject: Option<&'a str>,
}

impl<'a> From<&'a AuditRow> for AuditValues<'a> {
    fn from(r: &'a AuditRow) -> Self {
        AuditValues {
            at: &r.at,
            actor: &r.actor,
            action: r.action,
            script: r.script.as_deref(),
            version: r.version,
            artifact_sha256: r.artifact_sha256.as_deref(),
            outcome: &r.outcome,
            request_id: r.request_id.as_deref(),
            subject: r.subject.as_deref(),
        }
    }
}

impl<'a> From<&'a AuditEntry> for AuditValues<'a> {
    fn from(r: &'a AuditEntry) -> Self {
        AuditValues {
            at: &r.at,
            actor: &r.actor,
            action: &r.action,
            script: r.script.as_deref(),
            version: r.version,
            artifact_sha256: r.artifact_sha256.as_deref(),
            outcome: &r.outcome,
            request_id: r.request_id.as_deref(),
            subject: r.subject.as_deref(),
        }
    }
}

/// Insert new audit rows inside `tx`: a job's state change commits with its row.
pub(crate) async fn insert_audit_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[AuditRow],
) -> Result<(), sqlx::Error> {
    let values: Vec<AuditValues<'_>> = rows.iter().map(AuditValues::from).collect();
    insert_audit(tx, &values).await
}

/// Insert audit rows inside `tx`, in order: the one place that writes
/// `audit_log` (registry changes, the run-row writer, restores). One
/// multi-row INSERT per chunk: a statement is a round trip to the database,
/// and run rows arrive by the thousand.
async fn insert_audit(tx: &mut sqlx::Transaction<'_, sqlx::Any>, rows: &[AuditValues<'_>]) -> Result<(), sqlx::Error> {
    const ROWS_PER_STATEMENT: usize = 64; // 9 parameters each, well under every backend's cap
    // Placeholders written out: sqlx's QueryBuilder writes `?` for the Any
    // driver, which PostgreSQL does not accept; SQLite gets plain `?`,
    // because there `$N` is a *named* parameter, and binding N of them
    // looks each name up in a list (sqlite3_bind_parameter_name): quadratic
    // in the statement's 576 parameters, 6% of a loaded server's CPU.
    let positional = tx.backend_name() == "SQLite";
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO audit_log (at, actor, action, script, version, artifact_sha256, outcome, request_id, subject) \
             VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for column in 1..=9 {
                sql.push_str(if column > 1 { ", " } else { "" });
                if positional {
                    sql.push('?');
                } else {
                    let _ = write!(sql, "${}", i * 9 + column);
                }
            }
            sql.push(')');
        }
        let mut insert = sqlx::query(&sql);
        for row in chunk {
            insert = insert
                .bind(row.at)
                .bind(row.actor)
                .bind(row.action)
                .bind(row.script)
                .bind(row.version)
                .bind(row.artifact_sha256)
                .bind(row.outcome)
                .bind(row.request_id)
                .bind(row.subject);
        }
        insert.execute(&mut **tx).await?;
    }
    Ok(())
}

type AuditEntryRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

fn audit_entry(
    (id, at, actor, action, script, version, artifact_sha256, outcome, request_id, subject): AuditEntryRow,
) -> AuditEntry {
    AuditEntry {
        id,
        at,
        actor,
        action,
        script,
        version,
        artifact_sha256,
        outcome,
        request_id,
        subject,
    }
}

/// The registry's connection pool now: open connections, idle ones, the most it opens.
impl Store {
    pub fn pool_stats(&self) -> (u32, usize, u32, usize) {
        (
            self.pool.size(),
            self.pool.num_idle(),
            self.pool.options().get_max_connections(),
            self.watch.waiting(),
        )
    }
}

/// The audit trail (`audit_log`, migration 0003).
impl Store {
    /// Write `rows` in one transaction: all or none.
    pub async fn append_audit(&self, rows: &[AuditRow]) -> Result<()> {
        let values: Vec<AuditValues<'_>> = rows.iter().map(AuditValues::from).collect();
        let mut tx = self.begin_write().await?;
        insert_audit(&mut tx, &values).await?;
        tx.commit()
            .await
            .with_context(|| format!("cannot write {} audit rows", rows.len()))
    }

    /// Rows matching `query`, newest first.
    pub async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut sql = String::from(
            "SELECT id, at, actor, action, script, version, artifact_sha256, outcome, request_id, subject \
             FROM audit_log",
        );
        let mut conditions = Vec::new();
        if query.script.is_some() {
            conditions.push(format!("script = ${}", conditions.len() + 1));
        }
        if query.before.is_some() {
            conditions.push(format!("id < ${}", conditions.len() + 1));
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY id DESC LIMIT $");
        sql.push_str(&(conditions.len() + 1).to_string());
        let mut select = sqlx::query_as::<_, AuditEntryRow>(&sql);
        if let Some(script) = &query.script {
            select = select.bind(script);
        }
        if let Some(before) = query.before {
            select = select.bind(before);
        }
        let rows = select.bind(query.limit).fetch_all(&mut *self.conn().await?).await?;
        Ok(rows.into_iter().map(audit_entry).collect())
    }

    /// Up to `limit` rows with an id above `after` and a time at or after
    /// `since` (RFC 3339 UTC as written here), oldest first: an export a
    /// SIEM pulls in turns, passing the last id it got as `after`.
    pub async fn audit_export(&self, after: i64, since: Option<&str>, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows: Vec<AuditEntryRow> = sqlx::query_as(
            "SELECT id, at, actor, action, script, version, artifact_sha256, outcome, request_id, subject \
             FROM audit_log WHERE id > $1 AND at >= $2 ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(since.unwrap_or(""))
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows.into_iter().map(audit_entry).collect())
    }

    /// Delete the rows written before `before` (RFC 3339 UTC); how many.
    pub async fn prune_audit(&self, before: &str) -> Result<u64> {
        let mut conn = self.conn().await.context("cannot prune the audit trail")?;
        let done = sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before)
            .execute(&mut *conn)
            .await
            .context("cannot prune the audit trail")?;
        Ok(done.rows_affected())
    }
}

/// RFC 3339 UTC with milliseconds, as audit rows are stamped: text that
/// sorts as time does.
pub fn audit_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A row of `scripts`, as backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptRecord {
    pub name: String,
    pub current_version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// A row of `script_versions`, as backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub name: String,
    pub version: i64,
    pub source: String,
    pub source_sha256: String,
    #[serde(with = "super::backup::base64_bytes")]
    pub artifact: Vec<u8>,
    pub artifact_sha256: String,
    pub created_at: String,
}

/// Everything a backup holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    pub scripts: Vec<ScriptRecord>,
    pub versions: Vec<VersionRecord>,
    pub api_keys: Vec<ApiKeyRecord>,
    /// Oldest first; ids are not kept (the database numbers them again, in order).
    pub audit: Vec<AuditEntry>,
}

/// One read-only transaction that sees the database as it was when it
/// started, whatever servers write meanwhile (`avap backup`): REPEATABLE
/// READ on `PostgreSQL`, a WAL read transaction on `SQLite`.
#[derive(Debug)]
pub struct Snapshot {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

type FullVersionRow = (i64, String, String, Vec<u8>, String, String);

impl Store {
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut tx = self
            .watch
            .acquiring(self.pool.begin())
            .await
            .context("cannot start a read transaction")?;
        match self.backend {
            Backend::Postgres => {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await?;
            }
            // SQLite fixes a read transaction's view at its first read.
            Backend::Sqlite => {}
        }
        Ok(Snapshot { tx })
    }

    /// Whether the registry, the API keys and the audit trail are all empty.
    pub async fn is_empty(&self) -> Result<bool> {
        let (rows,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM scripts) + (SELECT COUNT(*) FROM script_versions) \
             + (SELECT COUNT(*) FROM api_keys) + (SELECT COUNT(*) FROM audit_log)",
        )
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(rows == 0)
    }

    /// Write `contents` in one transaction, after deleting everything when
    /// `replace`: all or nothing.
    pub async fn restore(&self, contents: &Contents, replace: bool) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if replace {
            for table in [
                "audit_log",
                "api_keys",
                "script_libraries",
                "script_versions",
                "scripts",
            ] {
                sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *tx).await?;
            }
        }
        for v in &contents.versions {
            sqlx::query(
                "INSERT INTO script_versions \
                 (name, version, source, source_sha256, artifact, artifact_sha256, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&v.name)
            .bind(v.version)
            .bind(&v.source)
            .bind(&v.source_sha256)
            .bind(&v.artifact)
            .bind(&v.artifact_sha256)
            .bind(&v.created_at)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("cannot restore version {} of `{}`", v.version, v.name))?;
            // The libraries index is not in a backup: the signed artifacts are its record.
            let libraries =
                avap_hostfns::artifact::inspect(&v.artifact).map_or_else(|_| Vec::new(), |i| i.meta.libraries);
            insert_libraries(&mut tx, &v.name, v.version, &libraries)
                .await
                .with_context(|| format!("cannot restore the libraries of version {} of `{}`", v.version, v.name))?;
        }
        for s in &contents.scripts {
            sqlx::query("INSERT INTO scripts (name, current_version, created_at, updated_at) VALUES ($1, $2, $3, $4)")
                .bind(&s.name)
                .bind(s.current_version)
                .bind(&s.created_at)
                .bind(&s.updated_at)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("cannot restore script `{}`", s.name))?;
        }
        for k in &contents.api_keys {
            sqlx::query(
                "INSERT INTO api_keys (id, name, key_hash, scopes, created_at, revoked_at, signing_secret) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&k.id)
            .bind(&k.name)
            .bind(&k.key_hash)
            .bind(&k.scopes)
            .bind(&k.created_at)
            .bind(&k.revoked_at)
            .bind(&k.signing_secret)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("cannot restore API key {}", k.id))?;
        }
        let audit: Vec<AuditValues<'_>> = contents.audit.iter().map(AuditValues::from).collect();
        insert_audit(&mut tx, &audit)
            .await
            .context("cannot restore the audit trail")?;
        tx.commit().await.context("cannot commit the restore")?;
        Ok(())
    }
}

impl Snapshot {
    pub async fn scripts(&mut self) -> Result<Vec<ScriptRecord>> {
        let rows: Vec<(String, i64, String, String)> =
            sqlx::query_as("SELECT name, current_version, created_at, updated_at FROM scripts ORDER BY name")
                .fetch_all(&mut *self.tx)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(name, current_version, created_at, updated_at)| ScriptRecord {
                name,
                current_version,
                created_at,
                updated_at,
            })
            .collect())
    }

    /// Every version of `name` (artifacts are large: one script at a time).
    pub async fn versions(&mut self, name: &str) -> Result<Vec<VersionRecord>> {
        let rows: Vec<FullVersionRow> = sqlx::query_as(
            "SELECT version, source, source_sha256, artifact, artifact_sha256, created_at \
             FROM script_versions WHERE name = $1 ORDER BY version",
        )
        .bind(name)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(version, source, source_sha256, artifact, artifact_sha256, created_at)| VersionRecord {
                    name: name.to_owned(),
                    version,
                    source,
                    source_sha256,
                    artifact,
                    artifact_sha256,
                    created_at,
                },
            )
            .collect())
    }

    /// Names with versions but no `scripts` row (none, by the registry's
    /// invariants; a backup still checks).
    pub async fn version_names(&mut self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT name FROM script_versions ORDER BY name")
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(rows.into_iter().map(|(name,)| name).collect())
    }

    pub async fn api_keys(&mut self) -> Result<Vec<ApiKeyRecord>> {
        let rows: Vec<ApiKeyRow> = sqlx::query_as(
            "SELECT id, name, key_hash, scopes, created_at, revoked_at, signing_secret FROM api_keys ORDER BY created_at, id",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(api_key_record).collect())
    }

    /// Up to `limit` audit rows with an id above `after`, oldest first.
    pub async fn audit_after(&mut self, after: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows: Vec<AuditEntryRow> = sqlx::query_as(
            "SELECT id, at, actor, action, script, version, artifact_sha256, outcome, request_id, subject \
             FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(audit_entry).collect())
    }
}

/// One API key as stored: never the key itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: Option<String>,
    /// Lowercase hex SHA-256 of the whole key.
    pub key_hash: String,
    /// Comma-separated scopes.
    pub scopes: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// A signing key's secret, sealed (`signing_secrets`); `None`: requests
    /// with this key are not signed. Absent from backups of keys without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

type ApiKeyRow = (
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

fn api_key_record((id, name, key_hash, scopes, created_at, revoked_at, signing_secret): ApiKeyRow) -> ApiKeyRecord {
    ApiKeyRecord {
        id,
        name,
        key_hash,
        scopes,
        created_at,
        revoked_at,
        signing_secret,
    }
}

/// API keys (`api_keys`, migrations 0002 and 0007).
impl Store {
    /// Store a new key's hash; returns its `created_at`.
    pub async fn create_api_key(&self, id: &str, name: Option<&str>, key_hash: &str, scopes: &str) -> Result<String> {
        self.insert_api_key(id, name, key_hash, scopes, None).await
    }

    /// Store a new signing key: its hash and its signing secret, sealed
    /// (`signing_secrets::SecretsKey::seal`); returns its `created_at`.
    pub async fn create_signing_api_key(
        &self,
        id: &str,
        name: Option<&str>,
        key_hash: &str,
        scopes: &str,
        sealed_secret: &str,
    ) -> Result<String> {
        self.insert_api_key(id, name, key_hash, scopes, Some(sealed_secret))
            .await
    }

    async fn insert_api_key(
        &self,
        id: &str,
        name: Option<&str>,
        key_hash: &str,
        scopes: &str,
        sealed_secret: Option<&str>,
    ) -> Result<String> {
        let at = now();
        let mut conn = self
            .conn()
            .await
            .with_context(|| format!("cannot store API key {id}"))?;
        sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, scopes, created_at, signing_secret) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(name)
        .bind(key_hash)
        .bind(scopes)
        .bind(&at)
        .bind(sealed_secret)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("cannot store API key {id}"))?;
        Ok(at)
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let rows: Vec<ApiKeyRow> = sqlx::query_as(
            "SELECT id, name, key_hash, scopes, created_at, revoked_at, signing_secret FROM api_keys ORDER BY created_at, id",
        )
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows.into_iter().map(api_key_record).collect())
    }

    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        let row: Option<ApiKeyRow> = sqlx::query_as(
            "SELECT id, name, key_hash, scopes, created_at, revoked_at, signing_secret FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(row.map(api_key_record))
    }

    /// Revoke `id`; `false` if there is no such key or it was already revoked.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool> {
        let revoked = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now())
            .bind(id)
            .execute(&mut *self.conn().await?)
            .await?
            .rows_affected();
        Ok(revoked > 0)
    }
}

/// The registry read API of edge nodes (`registry_sync.rs`).
impl Store {
    /// The current version of every script, by name: `(name, version,
    /// artifact_sha256, updated_at)`.
    pub async fn current_artifacts(&self) -> Result<Vec<(String, i64, String, String)>> {
        let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
            "SELECT s.name, v.version, v.artifact_sha256, s.updated_at FROM scripts s \
             JOIN script_versions v ON v.name = s.name AND v.version = s.current_version ORDER BY s.name",
        )
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows)
    }

    /// The signed artifact whose SHA-256 is `sha256`, of any version.
    pub async fn artifact_by_sha256(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT artifact FROM script_versions WHERE artifact_sha256 = $1 LIMIT 1")
                .bind(sha256)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        Ok(row.map(|(artifact,)| artifact))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh `PostgreSQL` database for one test (on the machine's server,
    /// `$TEST_POSTGRES_URL` or `postgres://postgres@127.0.0.1:5432`),
    /// dropped when the test ends.
    pub(crate) struct PgDatabase {
        pub name: String,
        pub url: String,
        admin: String,
    }

    impl PgDatabase {
        pub fn create() -> PgDatabase {
            let base =
                std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
            let mut random = [0_u8; 6];
            getrandom::fill(&mut random).unwrap();
            let name = format!("avap_unit_{}", hex::encode(random));
            let db = PgDatabase {
                url: format!("{base}/{name}"),
                admin: format!("{base}/test"),
                name,
            };
            db.psql(&format!("CREATE DATABASE {}", db.name));
            db
        }

        fn psql(&self, sql: &str) {
            let out = std::process::Command::new("psql")
                .args([self.admin.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
                .output()
                .expect("psql runs (PostgreSQL client tools are needed for the tests)");
            assert!(
                out.status.success(),
                "psql {sql}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    impl Drop for PgDatabase {
        fn drop(&mut self) {
            self.psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }

    /// `name` runs once on an in-memory `SQLite` database and once on a fresh
    /// `PostgreSQL` database: the store's SQL must mean the same on both.
    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            mod on_sqlite {
                $(
                    #[tokio::test]
                    async fn $name() {
                        super::$name(super::Store::in_memory().await.unwrap()).await;
                    }
                )*
            }
            mod on_postgres {
                $(
                    #[tokio::test]
                    async fn $name() {
                        let db = super::PgDatabase::create();
                        let location = super::Location::Postgres(db.url.clone());
                        let store = super::Store::connect(&location).await.unwrap();
                        super::$name(store.clone()).await;
                        store.close().await;
                    }
                )*
            }
        };
    }

    on_both_backends!(
        versions_count_up_and_roll_back,
        api_keys_are_stored_hashed_and_revoked_once,
        signing_keys_keep_their_sealed_secret_through_a_restore,
        ping_answers_until_the_pool_is_closed,
        delete_removes_every_version,
        dependents_follow_current_versions_and_hold_back_a_delete,
        registry_changes_write_their_audit_rows,
        appended_audit_rows_read_back
    );

    fn new<'a>(name: &'a str, source: &'a str, sha: &'a str) -> NewVersion<'a> {
        NewVersion {
            name,
            source,
            source_sha256: sha,
            artifact: b"\0asm",
            artifact_sha256: "a",
            libraries: &[],
            action: "store",
            rebuilds: None,
        }
    }

    /// The names of `library`'s dependents.
    async fn dependent_names(store: &Store, library: &str) -> Vec<String> {
        store
            .dependents(library)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect()
    }

    fn library(name: &str, version: i64) -> LibraryMeta {
        LibraryMeta {
            name: name.to_owned(),
            version,
            source_sha256: String::new(),
        }
    }

    async fn dependents_follow_current_versions_and_hold_back_a_delete(store: Store) {
        store.put(&new("lib", "l1", "l1"), &actor()).await.unwrap();
        store.put(&new("lib", "l2", "l2"), &actor()).await.unwrap();
        let on_v1 = [library("lib", 1)];
        let on_v2 = [library("lib", 2)];
        for (name, sha, libraries) in [("b", "b1", &on_v1[..]), ("a", "a1", &on_v2[..]), ("a", "a2", &[][..])] {
            let version = NewVersion {
                libraries,
                ..new(name, sha, sha)
            };
            store.put(&version, &actor()).await.unwrap();
        }
        // `a` no longer includes it at its current version; `b` does, built with version 1.
        let dependents = store.dependents("lib").await.unwrap();
        let expected = Dependent {
            name: "b".to_owned(),
            version: 1,
            library_version: 1,
            library_source_sha256: String::new(),
        };
        assert_eq!(dependents, [expected]);
        store.rollback("a", 1, &actor()).await.unwrap();
        let names = dependent_names(&store, "lib").await;
        assert_eq!(names, ["a", "b"], "a rollback brings back what that version included");

        let held = store.delete("lib", &actor(), false).await.unwrap();
        assert!(matches!(&held, Deleted::InUse(d) if d.len() == 2), "{held:?}");
        assert!(store.current("lib").await.unwrap().is_some(), "nothing deleted");
        assert_eq!(store.delete("lib", &actor(), true).await.unwrap(), Deleted::Done);
        assert_eq!(store.delete("b", &actor(), false).await.unwrap(), Deleted::Done);
        let names = dependent_names(&store, "lib").await;
        assert_eq!(names, ["a"], "a deleted dependent's rows go with it");

        // A rebuild of a version that is no longer current stores nothing.
        let rebuild = NewVersion {
            action: "rebuild",
            rebuilds: Some(2),
            ..new("a", "a3", "a3")
        };
        assert_eq!(store.put(&rebuild, &actor()).await.unwrap(), Put::Superseded);
        store.rollback("a", 2, &actor()).await.unwrap();
        let rebuild = NewVersion {
            rebuilds: Some(1),
            ..rebuild
        };
        assert_eq!(store.put(&rebuild, &actor()).await.unwrap(), Put::Superseded);
        assert_eq!(store.current("a").await.unwrap().unwrap().meta.version, 2);
    }

    fn actor() -> Actor {
        Actor {
            actor: "0000abcd".to_owned(),
            request_id: Some("req-1".to_owned()),
        }
    }

    fn version(put: &Put) -> (bool, i64) {
        match put {
            Put::Created(m) => (true, m.version),
            Put::Unchanged(m) => (false, m.version),
            Put::Superseded => panic!("only a rebuild is superseded"),
        }
    }

    async fn versions_count_up_and_roll_back(store: Store) {
        assert_eq!(
            version(&store.put(&new("s", "one", "1"), &actor()).await.unwrap()),
            (true, 1)
        );
        assert_eq!(
            version(&store.put(&new("s", "one", "1"), &actor()).await.unwrap()),
            (false, 1)
        );
        assert_eq!(
            version(&store.put(&new("s", "two", "2"), &actor()).await.unwrap()),
            (true, 2)
        );
        assert_eq!(store.rollback("s", 1, &actor()).await.unwrap(), Rollback::Done);
        assert_eq!(store.current("s").await.unwrap().unwrap().source, "one");
        // A new source after a rollback is a new version, never a rewrite.
        assert_eq!(
            version(&store.put(&new("s", "three", "3"), &actor()).await.unwrap()),
            (true, 3)
        );
        assert_eq!(store.rollback("s", 9, &actor()).await.unwrap(), Rollback::NoVersion);
        assert_eq!(store.rollback("nope", 1, &actor()).await.unwrap(), Rollback::NoScript);
        assert_eq!(store.current("s").await.unwrap().unwrap().meta.version, 3);
        assert_eq!(store.versions("s").await.unwrap().len(), 3);
        assert_eq!(store.artifact("s", Some(2)).await.unwrap().unwrap().0, 2);
        assert_eq!(store.list().await.unwrap()[0].version, 3);
    }

    async fn api_keys_are_stored_hashed_and_revoked_once(store: Store) {
        store
            .create_api_key("0000abcd", Some("ci"), "h1", "execute")
            .await
            .unwrap();
        store.create_api_key("0000abce", None, "h2", "admin").await.unwrap();
        assert!(
            store.create_api_key("0000abcf", None, "h1", "admin").await.is_err(),
            "hashes are unique"
        );
        let key = store.api_key("0000abcd").await.unwrap().unwrap();
        assert_eq!((key.name.as_deref(), key.key_hash.as_str()), (Some("ci"), "h1"));
        assert!(key.revoked_at.is_none());
        assert!(store.revoke_api_key("0000abcd").await.unwrap());
        assert!(!store.revoke_api_key("0000abcd").await.unwrap());
        assert!(!store.revoke_api_key("nope").await.unwrap());
        assert!(store.api_key("0000abcd").await.unwrap().unwrap().revoked_at.is_some());
        assert_eq!(store.api_keys().await.unwrap().len(), 2);
    }

    async fn signing_keys_keep_their_sealed_secret_through_a_restore(store: Store) {
        store.create_api_key("0000abcd", None, "h1", "execute").await.unwrap();
        store
            .create_signing_api_key("0000abce", Some("signer"), "h2", "execute", "v1.1234abcd.c2VhbGVk")
            .await
            .unwrap();
        let plain = store.api_key("0000abcd").await.unwrap().unwrap();
        let signing = store.api_key("0000abce").await.unwrap().unwrap();
        assert_eq!(plain.signing_secret, None);
        assert_eq!(signing.signing_secret.as_deref(), Some("v1.1234abcd.c2VhbGVk"));
        // A backup line of a key without a secret has no such field (older
        // backups read the same), and a restore writes the sealed secret back.
        let line = serde_json::to_string(&plain).unwrap();
        assert!(!line.contains("signing_secret"), "{line}");
        let contents = Contents {
            api_keys: store.api_keys().await.unwrap(),
            ..Contents::default()
        };
        store.restore(&contents, true).await.unwrap();
        assert_eq!(store.api_key("0000abce").await.unwrap().unwrap(), signing);
        assert_eq!(store.api_key("0000abcd").await.unwrap().unwrap(), plain);
    }

    async fn ping_answers_until_the_pool_is_closed(store: Store) {
        assert!(store.ping().await.is_ok());
        store.pool.close().await;
        let err = store.ping().await.unwrap_err();
        assert!(format!("{err:#}").contains("the database does not answer"), "{err:#}");
    }

    #[tokio::test]
    async fn concurrent_writers_on_an_sqlite_file_all_succeed() {
        // A file (not `:memory:`) so the pool has several connections that
        // contend for SQLite's write lock, as a server under load does.
        let mut random = [0_u8; 6];
        getrandom::fill(&mut random).unwrap();
        let dir = std::env::temp_dir().join(format!("avap-store-{}", hex::encode(random)));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::connect(&Location::Sqlite(dir.join("avap.sqlite")))
            .await
            .unwrap();
        let writers: Vec<_> = (0..24)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (name, source) = (format!("s{}", i % 3), format!("v{i}"));
                    store.put(&new(&name, &source, &source), &actor()).await
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().expect("every write succeeds");
        }
        let versions: usize = version_count(&store).await;
        assert_eq!(versions, 24);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn version_count(store: &Store) -> usize {
        let mut total = 0;
        for name in ["s0", "s1", "s2"] {
            total += store.versions(name).await.unwrap().len();
        }
        total
    }

    async fn delete_removes_every_version(store: Store) {
        store.put(&new("s", "one", "1"), &actor()).await.unwrap();
        store.put(&new("s", "two", "2"), &actor()).await.unwrap();
        assert_eq!(store.delete("s", &actor(), false).await.unwrap(), Deleted::Done);
        assert_eq!(store.delete("s", &actor(), false).await.unwrap(), Deleted::NoScript);
        assert!(store.current("s").await.unwrap().is_none());
        assert!(store.versions("s").await.unwrap().is_empty());
        assert!(store.artifact("s", Some(1)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn dollar_placeholders_bind_by_number() {
        // The SQL is written for PostgreSQL's `$N`; SQLite must bind them by
        // number too, not in order of appearance.
        let store = Store::in_memory().await.unwrap();
        let row: (String, String, String, i64) = sqlx::query_as("SELECT $2, $1, $2, $3")
            .bind("first")
            .bind("second")
            .bind(3_i64)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(row, ("second".to_owned(), "first".to_owned(), "second".to_owned(), 3));
    }

    async fn audit(store: &Store, script: Option<&str>, before: Option<i64>, limit: i64) -> Vec<AuditEntry> {
        let query = AuditQuery {
            script: script.map(str::to_owned),
            before,
            limit,
        };
        store.audit_entries(&query).await.unwrap()
    }

    async fn registry_changes_write_their_audit_rows(store: Store) {
        store.put(&new("s", "one", "1"), &actor()).await.unwrap();
        store.put(&new("s", "one", "1"), &actor()).await.unwrap();
        store.put(&new("s", "two", "2"), &actor()).await.unwrap();
        store.rollback("s", 1, &actor()).await.unwrap();
        store.rollback("s", 9, &actor()).await.unwrap();
        store.delete("s", &actor(), false).await.unwrap();
        store.delete("s", &actor(), false).await.unwrap();
        let rows = audit(&store, Some("s"), None, 100).await;
        let seen: Vec<_> = rows.iter().map(|r| (r.action.as_str(), r.version)).collect();
        // Newest first; unchanged stores and refused changes write nothing here.
        assert_eq!(
            seen,
            [
                ("delete", Some(1)),
                ("rollback", Some(1)),
                ("store", Some(2)),
                ("store", Some(1))
            ]
        );
        assert!(rows.iter().all(|r| r.actor == "0000abcd" && r.outcome == "ok"));
        assert!(rows.iter().all(|r| r.request_id.as_deref() == Some("req-1")));
        assert_eq!(rows[0].artifact_sha256.as_deref(), Some("a"));
        let page = audit(&store, None, Some(rows[1].id), 2).await;
        assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), [rows[2].id, rows[3].id]);
        assert!(audit(&store, Some("other"), None, 100).await.is_empty());
    }

    async fn appended_audit_rows_read_back(store: Store) {
        let run = AuditRow {
            artifact_sha256: Some("f00d".to_owned()),
            ..AuditRow::new(&actor(), "run", "FuelExhausted")
        };
        store.append_audit(&[run.clone(), run]).await.unwrap();
        let rows = audit(&store, None, None, 1).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].action.as_str(),
                rows[0].script.as_deref(),
                rows[0].outcome.as_str()
            ),
            ("run", None, "FuelExhausted")
        );
        assert_eq!(audit(&store, None, None, 10).await.len(), 2);
    }
}
