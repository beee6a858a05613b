//! [`Store`]: the server's database, and all of its SQL.
//!
//! The embedded default is an `SQLite` file, `<data-dir>/avap.sqlite`, in WAL
//! mode, migrated at start from `migrations/sqlite`. Every statement here
//! runs unchanged on `PostgreSQL` too (its schema is `migrations/postgres`,
//! the backend comes with issue 7): `$1, $2, …` placeholders (sqlx-sqlite
//! binds `$N` by number; a test checks it), no SQLite-only syntax or
//! functions, `ON CONFLICT … DO UPDATE` upserts, integers read as `i64`
//! (`BIGINT`), artifacts as bytes (`BYTEA`), and timestamps written by us as
//! RFC 3339 UTC text, so both backends store the same thing.
//!
//! Registry invariants: versions of a name count up from 1 and are never
//! rewritten; `scripts.current_version` always names an existing version;
//! deleting a script deletes its versions; every change commits together
//! with its `audit_log` row.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "avap.sqlite";

/// How many times a registry write is retried when a concurrent writer got
/// there first (busy database or a version number taken meanwhile).
const WRITE_ATTEMPTS: usize = 3;

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// One line of the script list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScriptSummary {
    pub name: String,
    pub version: i64,
    pub updated_at: String,
}

/// What identifies one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

/// What [`Store::put`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// The source is the current version's: nothing stored.
    Unchanged(VersionMeta),
    Created(VersionMeta),
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
    /// `store`, `delete`, `rollback` or `run`.
    pub action: &'static str,
    /// The script's name; `None` for inline runs and uploads.
    pub script: Option<String>,
    pub version: Option<i64>,
    pub artifact_sha256: Option<String>,
    /// `ok`, `unchanged`, or the error kind of a refused write or failed run.
    pub outcome: String,
    pub request_id: Option<String>,
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
        }
    }
}

/// One row of the audit trail as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub script: Option<String>,
    pub version: Option<i64>,
    pub artifact_sha256: Option<String>,
    pub outcome: String,
    pub request_id: Option<String>,
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
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Open (creating if missing) `<data_dir>/avap.sqlite` and migrate it.
    pub async fn open(data_dir: &Path) -> Result<Store> {
        Store::open_file(&data_dir.join(DATABASE_FILE)).await
    }

    /// Open (creating if missing) the `SQLite` file at `path` and migrate it.
    pub async fn open_file(path: &Path) -> Result<Store> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        Store::migrated(pool).await
    }

    /// Readiness: the database answers a trivial query.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("the database does not answer")?;
        Ok(())
    }

    /// A private in-memory database (unit tests).
    #[cfg(test)]
    pub async fn in_memory() -> Result<Store> {
        // Every connection to `:memory:` is its own database: keep exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(<SqliteConnectOptions as std::str::FromStr>::from_str(
                "sqlite::memory:",
            )?)
            .await?;
        Store::migrated(pool).await
    }

    async fn migrated(pool: SqlitePool) -> Result<Store> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .context("cannot migrate the database")?;
        Ok(Store { pool })
    }

    pub async fn list(&self) -> Result<Vec<ScriptSummary>> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT name, current_version, updated_at FROM scripts ORDER BY name")
                .fetch_all(&self.pool)
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
        .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
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
        Ok(query.fetch_optional(&self.pool).await?)
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
        let mut tx = self.pool.begin().await?;
        let current: Option<VersionRow> = sqlx::query_as(
            "SELECT v.version, v.source_sha256, v.artifact_sha256, v.created_at \
             FROM scripts s JOIN script_versions v ON v.name = s.name AND v.version = s.current_version \
             WHERE s.name = $1",
        )
        .bind(new.name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = current
            && row.1 == new.source_sha256
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
            ..AuditRow::new(actor, "store", "ok")
        };
        insert_audit(&mut tx, &row).await?;
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
    pub async fn delete(&self, name: &str, actor: &Actor) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let current: Option<(i64, String)> = sqlx::query_as(
            "SELECT v.version, v.artifact_sha256 FROM scripts s \
             JOIN script_versions v ON v.name = s.name AND v.version = s.current_version WHERE s.name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((version, artifact_sha256)) = current else {
            return Ok(false);
        };
        sqlx::query("DELETE FROM script_versions WHERE name = $1")
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
        insert_audit(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// Make `version` the current version of `name`; the audit row commits
    /// with the change.
    pub async fn rollback(&self, name: &str, version: i64, actor: &Actor) -> Result<Rollback> {
        let mut tx = self.pool.begin().await?;
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
        insert_audit(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(Rollback::Done)
    }
}

async fn insert_audit(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, row: &AuditRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, script, version, artifact_sha256, outcome, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&row.at)
    .bind(&row.actor)
    .bind(row.action)
    .bind(&row.script)
    .bind(row.version)
    .bind(&row.artifact_sha256)
    .bind(&row.outcome)
    .bind(&row.request_id)
    .execute(&mut **tx)
    .await?;
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
);

/// The audit trail (`audit_log`, migration 0003).
impl Store {
    /// Write `rows` in one transaction: all or none.
    pub async fn append_audit(&self, rows: &[AuditRow]) -> Result<()> {
        // One multi-row INSERT per chunk: a statement is a round trip to the
        // database's worker thread, and runs arrive by the thousand.
        const ROWS_PER_STATEMENT: usize = 64; // 8 parameters each, well under every backend's cap
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO audit_log (at, actor, action, script, version, artifact_sha256, outcome, request_id) ",
            );
            insert.push_values(chunk, |mut values, row| {
                values
                    .push_bind(&row.at)
                    .push_bind(&row.actor)
                    .push_bind(row.action)
                    .push_bind(&row.script)
                    .push_bind(row.version)
                    .push_bind(&row.artifact_sha256)
                    .push_bind(&row.outcome)
                    .push_bind(&row.request_id);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit()
            .await
            .with_context(|| format!("cannot write {} audit rows", rows.len()))
    }

    /// Rows matching `query`, newest first.
    pub async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut sql = String::from(
            "SELECT id, at, actor, action, script, version, artifact_sha256, outcome, request_id FROM audit_log",
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
        let rows = select.bind(query.limit).fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, at, actor, action, script, version, artifact_sha256, outcome, request_id)| AuditEntry {
                    id,
                    at,
                    actor,
                    action,
                    script,
                    version,
                    artifact_sha256,
                    outcome,
                    request_id,
                },
            )
            .collect())
    }
}

/// One API key as stored: never the key itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: Option<String>,
    /// Lowercase hex SHA-256 of the whole key.
    pub key_hash: String,
    /// Comma-separated scopes.
    pub scopes: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

type ApiKeyRow = (String, Option<String>, String, String, String, Option<String>);

fn api_key_record((id, name, key_hash, scopes, created_at, revoked_at): ApiKeyRow) -> ApiKeyRecord {
    ApiKeyRecord {
        id,
        name,
        key_hash,
        scopes,
        created_at,
        revoked_at,
    }
}

/// API keys (`api_keys`, migration 0002).
impl Store {
    /// Store a new key's hash; returns its `created_at`.
    pub async fn create_api_key(&self, id: &str, name: Option<&str>, key_hash: &str, scopes: &str) -> Result<String> {
        let at = now();
        sqlx::query("INSERT INTO api_keys (id, name, key_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(name)
            .bind(key_hash)
            .bind(scopes)
            .bind(&at)
            .execute(&self.pool)
            .await
            .with_context(|| format!("cannot store API key {id}"))?;
        Ok(at)
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let rows: Vec<ApiKeyRow> = sqlx::query_as(
            "SELECT id, name, key_hash, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(api_key_record).collect())
    }

    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        let row: Option<ApiKeyRow> =
            sqlx::query_as("SELECT id, name, key_hash, scopes, created_at, revoked_at FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(api_key_record))
    }

    /// Revoke `id`; `false` if there is no such key or it was already revoked.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool> {
        let revoked = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(revoked > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(name: &'a str, source: &'a str, sha: &'a str) -> NewVersion<'a> {
        NewVersion {
            name,
            source,
            source_sha256: sha,
            artifact: b"\0asm",
            artifact_sha256: "a",
        }
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
        }
    }

    #[tokio::test]
    async fn versions_count_up_and_roll_back() {
        let store = Store::in_memory().await.unwrap();
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

    #[tokio::test]
    async fn api_keys_are_stored_hashed_and_revoked_once() {
        let store = Store::in_memory().await.unwrap();
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

    #[tokio::test]
    async fn ping_answers_until_the_pool_is_closed() {
        let store = Store::in_memory().await.unwrap();
        assert!(store.ping().await.is_ok());
        store.pool.close().await;
        let err = store.ping().await.unwrap_err();
        assert!(format!("{err:#}").contains("the database does not answer"), "{err:#}");
    }

    #[tokio::test]
    async fn delete_removes_every_version() {
        let store = Store::in_memory().await.unwrap();
        store.put(&new("s", "one", "1"), &actor()).await.unwrap();
        store.put(&new("s", "two", "2"), &actor()).await.unwrap();
        assert!(store.delete("s", &actor()).await.unwrap());
        assert!(!store.delete("s", &actor()).await.unwrap());
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

    #[tokio::test]
    async fn registry_changes_write_their_audit_rows() {
        let store = Store::in_memory().await.unwrap();
        store.put(&new("s", "one", "1"), &actor()).await.unwrap();
        store.put(&new("s", "one", "1"), &actor()).await.unwrap();
        store.put(&new("s", "two", "2"), &actor()).await.unwrap();
        store.rollback("s", 1, &actor()).await.unwrap();
        store.rollback("s", 9, &actor()).await.unwrap();
        store.delete("s", &actor()).await.unwrap();
        store.delete("s", &actor()).await.unwrap();
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

    #[tokio::test]
    async fn appended_audit_rows_read_back() {
        let store = Store::in_memory().await.unwrap();
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
