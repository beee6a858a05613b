//! [`ApiKeyCache`]: API key records kept in memory for a few seconds.
//!
//! Every guarded request checks its key. Reading the record from the
//! database each time costs a round trip per request and would make every
//! authenticated request fail while the database is down. So a record read
//! is kept for [`FRESH`]: a key revoked with `avap apikey revoke` (on any
//! node: the CLI writes the shared database) stops working within that
//! time everywhere. While the database does not answer, a record read
//! within [`STALE_LIMIT`] is used anyway (degraded mode: cached stored
//! scripts keep running for known callers); after that the request gets 503.
//! A pool that is merely saturated (every connection busy) is not an
//! outage: then the request gets 503 and no stale record, so nobody can
//! stretch a revoked key's life by keeping the pool busy.
//! Unknown ids are never cached, so random keys cannot fill the cache.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::store::{ApiKeyRecord, Store, is_unavailable};

/// How long a record is trusted without asking the database again.
pub const FRESH: Duration = Duration::from_secs(5);
/// How long a record may serve while the database is unreachable.
pub const STALE_LIMIT: Duration = Duration::from_mins(10);
/// Records kept; the cache is cleared when full (keys are few).
const CAPACITY: usize = 10_000;

#[derive(Debug, Default)]
pub struct ApiKeyCache {
    entries: Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
}

impl ApiKeyCache {
    /// The record of key `id`: cached if fresh, else from `store`; a stale
    /// record when the database is unreachable.
    pub async fn get(&self, store: &Store, id: &str) -> anyhow::Result<Option<ApiKeyRecord>> {
        let cached = self.lock().get(id).cloned();
        if let Some((record, read_at)) = &cached
            && read_at.elapsed() < FRESH
        {
            return Ok(Some(record.clone()));
        }
        // Boxed: the database read's future is kilobytes, and every
        // request's middleware future would otherwise carry (and move) it,
        // cache hits included.
        match Box::pin(store.api_key(id)).await {
            Ok(Some(record)) => {
                let mut entries = self.lock();
                if entries.len() >= CAPACITY {
                    entries.clear();
                }
                entries.insert(id.to_owned(), (record.clone(), Instant::now()));
                Ok(Some(record))
            }
            Ok(None) => {
                self.lock().remove(id);
                Ok(None)
            }
            Err(e) if is_unavailable(&e) && !store.is_saturated() => match cached {
                Some((record, read_at)) if read_at.elapsed() < STALE_LIMIT => {
                    tracing::debug!(key_id = id, "database unavailable: using the cached API key record");
                    Ok(Some(record))
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The id of `key` when this cache already knows it as a valid,
    /// unrevoked key (no database access): the rate limiter charges a
    /// request to its key only then, and to its IP otherwise, so made-up or
    /// borrowed key ids neither escape the limit nor drain someone else's.
    pub fn verified_id(&self, key: &str) -> Option<String> {
        let id = super::auth::key_id(key)?;
        let entries = self.lock();
        let (record, _) = entries.get(id)?;
        let matches = super::auth::constant_time_eq(super::auth::hash(key).as_bytes(), record.key_hash.as_bytes());
        (matches && record.revoked_at.is_none()).then(|| id.to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ApiKeyRecord, Instant)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_cached_briefly_and_survive_an_outage() {
        let store = Store::in_memory().await.unwrap();
        store.create_api_key("0000abcd", None, "h1", "execute").await.unwrap();
        let cache = ApiKeyCache::default();
        assert_eq!(cache.get(&store, "0000abcd").await.unwrap().unwrap().key_hash, "h1");
        assert!(cache.get(&store, "0000ffff").await.unwrap().is_none());
        assert_eq!(cache.lock().len(), 1, "unknown ids are not cached");
        // Revoked in the database: the cached record holds for FRESH at most.
        store.revoke_api_key("0000abcd").await.unwrap();
        let cached = cache.get(&store, "0000abcd").await.unwrap().unwrap();
        assert!(cached.revoked_at.is_none(), "still fresh");
        cache.lock().get_mut("0000abcd").unwrap().1 -= FRESH;
        let reread = cache.get(&store, "0000abcd").await.unwrap().unwrap();
        assert!(reread.revoked_at.is_some(), "read again once stale");
        // The database goes away: the stale record serves, an unknown id fails.
        cache.lock().get_mut("0000abcd").unwrap().1 -= FRESH;
        store.close().await;
        assert!(cache.get(&store, "0000abcd").await.unwrap().is_some());
        let err = cache.get(&store, "0000abce").await.unwrap_err();
        assert!(is_unavailable(&err), "{err:#}");
        cache.lock().get_mut("0000abcd").unwrap().1 -= STALE_LIMIT;
        assert!(cache.get(&store, "0000abcd").await.is_err(), "too old to serve");
    }

    #[tokio::test]
    async fn only_known_valid_keys_are_verified_without_the_database() {
        let store = Store::in_memory().await.unwrap();
        let key = super::super::auth::generate().unwrap();
        store.create_api_key(&key.id, None, &key.hash, "execute").await.unwrap();
        let cache = ApiKeyCache::default();
        assert_eq!(cache.verified_id(&key.key), None, "not read yet");
        cache.get(&store, &key.id).await.unwrap();
        assert_eq!(cache.verified_id(&key.key), Some(key.id.clone()));
        // The right id with a wrong secret, and a made-up id: not verified.
        let forged = format!("avap_{}_{}", key.id, "0".repeat(64));
        assert_eq!(cache.verified_id(&forged), None);
        assert_eq!(cache.verified_id("avap_deadbeef_x"), None);
    }
}
