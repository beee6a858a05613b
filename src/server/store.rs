//! [`Store`]: the server's database, and all of its SQL.
//!
//! The embedded default is an `SQLite` file, `<data-dir>/avap.sqlite`, in WAL
//! mode, migrated at start from `migrations/sqlite`. The SQL here is plain
//! (no SQLite-only functions, `ON CONFLICT … DO UPDATE` upserts, timestamps
//! written by us as RFC 3339 text) so a `PostgreSQL` backend only has to swap
//! the `?` placeholders for `$n`.
//!
//! Registry invariants: versions of a name count up from 1 and are never
//! rewritten; `scripts.current_version` always names an existing version;
//! deleting a script deletes its versions.

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
        let path = data_dir.join(DATABASE_FILE);
        let options = SqliteConnectOptions::new()
            .filename(&path)
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
             WHERE s.name = ?",
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
             WHERE name = ? ORDER BY version",
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
                 JOIN script_versions v ON v.name = s.name AND v.version = s.current_version WHERE s.name = ?",
            )
            .bind(name),
            Some(n) => sqlx::query_as("SELECT version, artifact FROM script_versions WHERE name = ? AND version = ?")
                .bind(name)
                .bind(n),
        };
        Ok(query.fetch_optional(&self.pool).await?)
    }

    /// Store `new` as the next version and make it current, unless its
    /// source is already the current version's.
    pub async fn put(&self, new: &NewVersion<'_>) -> Result<Put> {
        let mut attempt = 1;
        loop {
            match self.try_put(new).await {
                Err(sqlx::Error::Database(e)) if attempt < WRITE_ATTEMPTS => {
                    // Busy, or another writer took this version number: read again.
                    eprintln!("avap serve: retrying a registry write: {e}");
                    attempt += 1;
                }
                other => return other.with_context(|| format!("cannot store script `{}`", new.name)),
            }
        }
    }

    async fn try_put(&self, new: &NewVersion<'_>) -> Result<Put, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let current: Option<VersionRow> = sqlx::query_as(
            "SELECT v.version, v.source_sha256, v.artifact_sha256, v.created_at \
             FROM scripts s JOIN script_versions v ON v.name = s.name AND v.version = s.current_version \
             WHERE s.name = ?",
        )
        .bind(new.name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = current
            && row.1 == new.source_sha256
        {
            return Ok(Put::Unchanged(version_meta(row)));
        }
        let (last,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM script_versions WHERE name = ?")
            .bind(new.name)
            .fetch_one(&mut *tx)
            .await?;
        let version = last + 1;
        let at = now();
        sqlx::query(
            "INSERT INTO script_versions \
             (name, version, source, source_sha256, artifact, artifact_sha256, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            "INSERT INTO scripts (name, current_version, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET current_version = excluded.current_version, updated_at = excluded.updated_at",
        )
        .bind(new.name)
        .bind(version)
        .bind(&at)
        .bind(&at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Put::Created(VersionMeta {
            version,
            source_sha256: new.source_sha256.to_owned(),
            artifact_sha256: new.artifact_sha256.to_owned(),
            created_at: at,
        }))
    }

    /// Delete `name` and all its versions; `false` if there was no such script.
    pub async fn delete(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM script_versions WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM scripts WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// Make `version` the current version of `name`.
    pub async fn rollback(&self, name: &str, version: i64) -> Result<Rollback> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM script_versions WHERE name = ? AND version = ?")
                .bind(name)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        let updated = sqlx::query("UPDATE scripts SET current_version = ?, updated_at = ? WHERE name = ?")
            .bind(version)
            .bind(now())
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Ok(Rollback::NoScript);
        }
        if exists.is_none() {
            // Dropping the transaction rolls the update back.
            return Ok(Rollback::NoVersion);
        }
        tx.commit().await?;
        Ok(Rollback::Done)
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
        sqlx::query("INSERT INTO api_keys (id, name, key_hash, scopes, created_at) VALUES (?, ?, ?, ?, ?)")
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
            sqlx::query_as("SELECT id, name, key_hash, scopes, created_at, revoked_at FROM api_keys WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(api_key_record))
    }

    /// Revoke `id`; `false` if there is no such key or it was already revoked.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool> {
        let revoked = sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
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

    fn version(put: &Put) -> (bool, i64) {
        match put {
            Put::Created(m) => (true, m.version),
            Put::Unchanged(m) => (false, m.version),
        }
    }

    #[tokio::test]
    async fn versions_count_up_and_roll_back() {
        let store = Store::in_memory().await.unwrap();
        assert_eq!(version(&store.put(&new("s", "one", "1")).await.unwrap()), (true, 1));
        assert_eq!(version(&store.put(&new("s", "one", "1")).await.unwrap()), (false, 1));
        assert_eq!(version(&store.put(&new("s", "two", "2")).await.unwrap()), (true, 2));
        assert_eq!(store.rollback("s", 1).await.unwrap(), Rollback::Done);
        assert_eq!(store.current("s").await.unwrap().unwrap().source, "one");
        // A new source after a rollback is a new version, never a rewrite.
        assert_eq!(version(&store.put(&new("s", "three", "3")).await.unwrap()), (true, 3));
        assert_eq!(store.rollback("s", 9).await.unwrap(), Rollback::NoVersion);
        assert_eq!(store.rollback("nope", 1).await.unwrap(), Rollback::NoScript);
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
        store.put(&new("s", "one", "1")).await.unwrap();
        store.put(&new("s", "two", "2")).await.unwrap();
        assert!(store.delete("s").await.unwrap());
        assert!(!store.delete("s").await.unwrap());
        assert!(store.current("s").await.unwrap().is_none());
        assert!(store.versions("s").await.unwrap().is_empty());
        assert!(store.artifact("s", Some(1)).await.unwrap().is_none());
    }
}
