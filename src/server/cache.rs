//! [`ScriptCache`]: inline scripts by SHA-256 of their source, so a repeated
//! script skips checking, lowering and wasmtime compilation. Compile errors
//! are cached too (they are a pure function of the source). Bounded: when
//! full it is cleared, which is simple and good enough until the L1 cache of
//! the storage work replaces it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SourceHash, Compiled>> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
