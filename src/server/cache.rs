//! In-process caches of compiled scripts. Both are bounded: when full they
//! are cleared, which is simple and good enough until the L1 cache of the
//! storage work replaces them.
//!
//! * [`ScriptCache`]: inline scripts by SHA-256 of their source, so a
//!   repeated script skips checking, lowering and wasmtime compilation.
//!   Compile errors are cached too (they are a pure function of the source).
//! * [`StoredCache`]: registry scripts by name (and asked version), so a run
//!   of a stored script reads nothing from the database. Every registry
//!   write of a name drops its entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use avap_runtime::{LoadedModule, RunReport};
use sha2::{Digest as _, Sha256};

/// What a source compiled to.
#[derive(Debug, Clone)]
pub enum Compiled {
    Module(Arc<LoadedModule>),
    /// The 400 `CompileError` report.
    CompileError(Arc<RunReport>),
}

pub type SourceHash = [u8; 32];

pub fn source_hash(source: &str) -> SourceHash {
    Sha256::digest(source.as_bytes()).into()
}

#[derive(Debug)]
pub struct ScriptCache {
    entries: Mutex<HashMap<SourceHash, Compiled>>,
    capacity: usize,
}

impl ScriptCache {
    pub fn new(capacity: usize) -> ScriptCache {
        ScriptCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, key: &SourceHash) -> Option<Compiled> {
        self.lock().get(key).cloned()
    }

    pub fn insert(&self, key: SourceHash, compiled: Compiled) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, compiled);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SourceHash, Compiled>> {
        lock(&self.entries)
    }
}

/// A stored script's version, loaded.
#[derive(Debug, Clone)]
pub struct StoredScript {
    pub version: i64,
    pub module: Arc<LoadedModule>,
}

/// `(name, asked version)`; `None` is "the current version".
type StoredKey = (String, Option<i64>);

#[derive(Debug)]
pub struct StoredCache {
    entries: Mutex<HashMap<StoredKey, StoredScript>>,
    capacity: usize,
    /// Bumped by every invalidation. A lookup notes it before reading the
    /// database and inserts only if it is unchanged, so a read that raced a
    /// write cannot put the old version back after the write dropped it.
    generation: AtomicU64,
}

impl StoredCache {
    pub fn new(capacity: usize) -> StoredCache {
        StoredCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            generation: AtomicU64::new(0),
        }
    }

    pub fn get(&self, name: &str, version: Option<i64>) -> Option<StoredScript> {
        lock(&self.entries).get(&(name.to_owned(), version)).cloned()
    }

    /// The generation to hand back to [`StoredCache::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keep `script` unless the registry changed since `generation`.
    pub fn insert(&self, generation: u64, name: &str, version: Option<i64>, script: StoredScript) {
        let mut entries = lock(&self.entries);
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let key = (name.to_owned(), version);
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, script);
    }

    /// Drop every entry of `name` (after a registry write of it).
    pub fn invalidate(&self, name: &str) {
        let mut entries = lock(&self.entries);
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.retain(|(n, _), _| n != name);
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-updated.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: u16) -> Compiled {
        Compiled::CompileError(Arc::new(RunReport {
            http_status: status,
            envelope: serde_json::Value::Null,
            usage: avap_runtime::Usage::default(),
        }))
    }

    #[test]
    fn clears_when_full() {
        let cache = ScriptCache::new(2);
        cache.insert(source_hash("a"), report(400));
        cache.insert(source_hash("b"), report(400));
        cache.insert(source_hash("b"), report(401));
        assert_eq!(cache.len(), 2, "replacing an entry does not clear");
        cache.insert(source_hash("c"), report(400));
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&source_hash("c")).is_some());
        assert!(cache.get(&source_hash("a")).is_none());
    }
}
