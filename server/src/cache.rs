//! In-process (L1) caches of compiled scripts, bounded by entry count
//! (moka's admission and eviction keep the frequently used entries) and by
//! time to idle (`cache_ttl_s`). The runtime's module cache by artifact
//! SHA-256 sits below both (`avap_runtime::Runtime::load`).
//!
//! * [`ScriptCache`]: inline scripts by SHA-256 of their source, so a
//!   repeated script skips checking, lowering and wasmtime compilation.
//!   Compile errors are cached too (they are a pure function of the source).
//! * [`StoredCache`]: registry scripts by name (and asked version), so a run
//!   of a stored script reads nothing from the database. Every registry
//!   write of a name drops its entries, on this node directly and on the
//!   others through the Redis invalidation channel (`cluster.rs`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use avap_runtime::{LoadedModule, RunReport};
use moka::sync::Cache;
use sha2::{Digest as _, Sha256};

/// Versions of one name kept at once (runs of pinned old versions are rare;
/// past this the name's versions are dropped and loaded again).
const VERSIONS_PER_NAME: usize = 8;

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

/// The key of an inline script that includes `libraries`: its source and
/// each library's name and version (the plain source hash when none).
pub fn resolved_hash(source: &str, libraries: &[avap_hostfns::artifact::LibraryMeta]) -> SourceHash {
    if libraries.is_empty() {
        return source_hash(source);
    }
    let mut hasher = Sha256::new();
    hasher.update(source.as_bytes());
    for lib in libraries {
        // NUL never occurs in a name: no two lists hash alike.
        hasher.update(format!("\0{}\0{}\0{}", lib.name, lib.version, lib.source_sha256).as_bytes());
    }
    hasher.finalize().into()
}

/// A moka cache of at most `capacity` entries, each dropped after `idle`
/// without a read or write (`None`: only the bound evicts).
fn bounded<K, V>(capacity: usize, idle: Option<Duration>) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let builder = Cache::builder().max_capacity(u64::try_from(capacity.max(1)).unwrap_or(u64::MAX));
    match idle {
        Some(idle) => builder.time_to_idle(idle).build(),
        None => builder.build(),
    }
}

#[derive(Debug)]
pub struct ScriptCache {
    entries: Cache<SourceHash, Compiled>,
}

impl ScriptCache {
    pub fn new(capacity: usize, idle: Option<Duration>) -> ScriptCache {
        ScriptCache {
            entries: bounded(capacity, idle),
        }
    }

    pub fn get(&self, key: &SourceHash) -> Option<Compiled> {
        self.entries.get(key)
    }

    pub fn insert(&self, key: SourceHash, compiled: Compiled) {
        self.entries.insert(key, compiled);
    }

    pub fn len(&self) -> usize {
        // Evictions are applied lazily; settle them so the count is exact.
        self.entries.run_pending_tasks();
        usize::try_from(self.entries.entry_count()).unwrap_or(usize::MAX)
    }
}

/// A stored script's version, loaded.
#[derive(Debug, Clone)]
pub struct StoredScript {
    pub version: i64,
    pub module: Arc<LoadedModule>,
}

/// The loaded versions of one name, by asked version (`None` is "the
/// current version").
type Versions = Arc<Mutex<HashMap<Option<i64>, StoredScript>>>;

#[derive(Debug)]
pub struct StoredCache {
    /// By name, so dropping a name is one removal whatever versions it has.
    names: Cache<String, Versions>,
    /// Held while an insert checks the generation and while an
    /// invalidation bumps it and removes entries, so the two never
    /// interleave.
    writes: Mutex<()>,
    /// Bumped by every invalidation. A lookup notes it before reading the
    /// database and inserts only if it is unchanged, so a read that raced a
    /// write cannot put the old version back after the write dropped it.
    generation: AtomicU64,
}

impl StoredCache {
    pub fn new(capacity: usize, idle: Option<Duration>) -> StoredCache {
        StoredCache {
            names: bounded(capacity, idle),
            writes: Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    pub fn get(&self, name: &str, version: Option<i64>) -> Option<StoredScript> {
        let versions = self.names.get(name)?;
        lock(&versions).get(&version).cloned()
    }

    /// The generation to hand back to [`StoredCache::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keep `script` unless the registry changed since `generation`.
    pub fn insert(&self, generation: u64, name: &str, version: Option<i64>, script: StoredScript) {
        let _writes = lock(&self.writes);
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let versions = self.names.get_with(name.to_owned(), Versions::default);
        let mut versions = lock(&versions);
        if versions.len() >= VERSIONS_PER_NAME && !versions.contains_key(&version) {
            versions.clear();
        }
        versions.insert(version, script);
    }

    /// Drop every entry of `name` (after a registry write of it, here or on
    /// another node).
    pub fn invalidate(&self, name: &str) {
        let _writes = lock(&self.writes);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.names.invalidate(name);
    }

    /// Drop everything (invalidations may have been missed).
    pub fn invalidate_all(&self) {
        let _writes = lock(&self.writes);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.names.invalidate_all();
    }

    /// Cached `(name, version)` entries.
    pub fn len(&self) -> usize {
        self.names.run_pending_tasks();
        self.names.iter().map(|(_, versions)| lock(&versions).len()).sum()
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
            envelope: avap_runtime::Envelope::failed(0.0, serde_json::json!({"kind": "CompileError"})),
            usage: avap_runtime::Usage::default(),
        }))
    }

    fn status(compiled: Option<Compiled>) -> Option<u16> {
        match compiled? {
            Compiled::CompileError(report) => Some(report.http_status),
            Compiled::Module(_) => None,
        }
    }

    #[test]
    fn stays_within_its_bound() {
        let cache = ScriptCache::new(4, None);
        for i in 0..50 {
            cache.insert(source_hash(&i.to_string()), report(400));
        }
        assert!(cache.len() <= 4, "{} entries", cache.len());
        cache.insert(source_hash("b"), report(400));
        cache.insert(source_hash("b"), report(401));
        assert_eq!(status(cache.get(&source_hash("b"))), Some(401), "replaced in place");
    }

    #[test]
    fn idle_entries_expire() {
        let cache = ScriptCache::new(16, Some(Duration::from_millis(50)));
        cache.insert(source_hash("a"), report(400));
        assert!(cache.get(&source_hash("a")).is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert!(cache.get(&source_hash("a")).is_none());
        assert_eq!(cache.len(), 0);
    }

    fn module() -> Arc<LoadedModule> {
        let key = avap_hostfns::artifact::generate_key().unwrap();
        let checked = avap_codegen::check_file(
            avap_codegen::SourceFile::new("t.avap", "x = 1\naddResult(x)\n".to_owned()),
            &avap_codegen::check::NoIncludes,
        );
        let artifact = avap_codegen::compile(&checked, Some(&key)).bytes;
        let mut trusted = avap_hostfns::artifact::TrustedKeys::new();
        trusted.add(key.verifying_key());
        let runtime = avap_runtime::Runtime::new(avap_runtime::RuntimeConfig {
            trusted_keys: trusted,
            max_concurrent_runs: 1,
            ..avap_runtime::RuntimeConfig::default()
        })
        .unwrap();
        runtime.load(&artifact).unwrap()
    }

    #[tokio::test]
    async fn stored_entries_respect_invalidations() {
        let module = module();
        let script = |version| StoredScript {
            version,
            module: module.clone(),
        };
        let cache = StoredCache::new(16, None);
        let g = cache.generation();
        cache.insert(g, "a", None, script(1));
        cache.insert(g, "a", Some(1), script(1));
        cache.insert(g, "b", None, script(3));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("a", Some(1)).map(|s| s.version), Some(1));

        // A read that started before the invalidation must not re-insert.
        let before = cache.generation();
        cache.invalidate("a");
        cache.insert(before, "a", None, script(1));
        assert!(cache.get("a", None).is_none() && cache.get("a", Some(1)).is_none());
        assert_eq!(cache.get("b", None).map(|s| s.version), Some(3), "other names stay");

        cache.insert(cache.generation(), "a", None, script(2));
        assert_eq!(cache.get("a", None).map(|s| s.version), Some(2));
        cache.invalidate_all();
        assert!(cache.get("a", None).is_none() && cache.get("b", None).is_none());
        assert_eq!(cache.len(), 0);
    }
}
