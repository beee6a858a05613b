//! L2: compiled modules shared between the nodes of a cluster through
//! Redis, so a script compiled on one node is loaded, not compiled, on the
//! others.
//!
//! * `<prefix>:cwasm:<engine fingerprint>:<artifact sha256>`: the module's
//!   sealed `.cwasm` (from `Runtime::serialize`): signed by the node that
//!   compiled it, in the format `avap compile --precompile --key` writes
//!   (`avap_runtime::precompiled`). The fingerprint names the wasmtime
//!   version, engine configuration and `.cwasm` format, so nodes of
//!   different builds never mix.
//! * `<prefix>:artifact:<artifact sha256>`: the signed artifact itself.
//!
//! Both expire after [`TTL`]; they are content-addressed, so they are never
//! stale, only absent.
//!
//! Trust: a `.cwasm` is native code that wasmtime loads without checking,
//! so what comes from Redis is treated as hostile. The seal carries the
//! compiling node's key id and an ed25519 signature over (engine
//! fingerprint, artifact sha256, sha256 of the native code); the runtime
//! loads it only when that key is one of its `precompiled_keys`, which on a
//! server are the *cluster keys* (the node's own and
//! `<data-dir>/cluster_keys/*.pub`, see [`super::keys::load_cluster_keys`])
//! and the signature verifies. The artifact trust list (`trusted_keys/`)
//! does not count here: an artifact signer gets sandboxed wasm run, never
//! native code loaded. Anything else is logged, counted
//! (`avap_l2_refused_total`) and ignored: the node compiles the artifact
//! itself and overwrites the entry.
//!
//! A reply larger than [`MAX_VALUE_BYTES`] fails the lookup, and larger
//! modules are never written, so they are not shared.

use std::sync::Arc;
use std::time::Duration;

use avap_runtime::LoadedModule;
use avap_runtime::{LoadError, precompiled::SealError};
use sha2::{Digest as _, Sha256};

use super::redis::{MAX_VALUE_BYTES, Redis, RedisError, Reply};
use super::{ApiError, AppState, load_error};

/// How long shared modules and artifacts live in Redis.
pub const TTL: Duration = Duration::from_hours(7 * 24);
/// The bound of a background write of a module (a few MiB).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound of a lookup, on a request's path: as any Redis command.
const FETCH_TIMEOUT: Duration = super::redis::COMMAND_TIMEOUT;

/// The Redis side of the module cache.
#[derive(Debug, Clone)]
pub struct L2 {
    redis: Redis,
    prefix: String,
    fingerprint: String,
}

impl L2 {
    pub fn new(redis: Redis, prefix: &str, fingerprint: String) -> L2 {
        L2 {
            redis,
            prefix: prefix.to_owned(),
            fingerprint,
        }
    }

    pub fn cwasm_key(&self, artifact_sha256: &str) -> String {
        format!("{}:cwasm:{}:{artifact_sha256}", self.prefix, self.fingerprint)
    }

    pub fn artifact_key(&self, artifact_sha256: &str) -> String {
        format!("{}:artifact:{artifact_sha256}", self.prefix)
    }

    /// The sealed entry for an artifact, if Redis has one (and is up).
    async fn fetch(&self, artifact_sha256: &str) -> Result<Option<Vec<u8>>, RedisError> {
        match self
            .redis
            .call_bulk(FETCH_TIMEOUT, &[b"GET", self.cwasm_key(artifact_sha256).as_bytes()])
            .await?
        {
            Reply::BulkString(entry) => Ok(Some(entry)),
            Reply::Nil => Ok(None),
            other => Err(RedisError::Protocol(format!("GET answered {other:?}"))),
        }
    }

    /// Write a sealed module and its artifact (in the background: slow is fine).
    async fn publish(&self, artifact_sha256: &str, sealed: &[u8], artifact: &[u8]) -> Result<(), RedisError> {
        if sealed.len() > MAX_VALUE_BYTES {
            // No node would read it back.
            return Err(RedisError::Protocol(format!(
                "the module is {} bytes, over the {MAX_VALUE_BYTES} bytes shared through Redis",
                sealed.len()
            )));
        }
        let ttl = TTL.as_millis().to_string();
        // The artifact first: whoever sees the module can find its artifact.
        for (key, value) in [
            (self.artifact_key(artifact_sha256), artifact),
            (self.cwasm_key(artifact_sha256), sealed),
        ] {
            self.redis
                .call_bulk(WRITE_TIMEOUT, &[b"SET", key.as_bytes(), value, b"PX", ttl.as_bytes()])
                .await?;
        }
        Ok(())
    }
}

impl AppState {
    /// Load a stored artifact through the cache levels: the runtime's
    /// module cache (L1); else a sealed module from Redis (L2), verified;
    /// else compile it here and share the result in the background.
    pub(super) async fn load_shared(&self, artifact: Vec<u8>) -> Result<Arc<LoadedModule>, ApiError> {
        let shared = &self.shared;
        let sha256 = hex::encode(Sha256::digest(&artifact));
        // Shared with the blocking loaders, not copied for each.
        let artifact = Arc::new(artifact);
        if let Some(module) = shared.runtime.cached_module(&sha256) {
            return Ok(module);
        }
        if let Some(l2) = shared.cluster.as_ref().map(|c| &c.l2) {
            match l2.fetch(&sha256).await {
                Ok(Some(entry)) => {
                    if let Some(module) = Box::pin(self.load_sealed(l2, &sha256, Arc::clone(&artifact), entry)).await {
                        shared.metrics.l2_hit();
                        return Ok(module);
                    }
                    shared.metrics.l2_refused();
                }
                Ok(None) => shared.metrics.l2_miss(),
                // Down (or just lost): the Redis client has logged it.
                Err(e) => tracing::debug!(error = %e, "no L2 lookup"),
            }
        }
        let module = {
            let artifact = Arc::clone(&artifact);
            self.off_thread(move |shared| {
                shared
                    .runtime
                    .load(&artifact)
                    .map_err(|e| load_error(e, "loading a stored artifact"))
            })
            .await?
        };
        // The loaders are done with it: normally no copy.
        self.share_module(module.clone(), Arc::unwrap_or_clone(artifact));
        Ok(module)
    }

    /// A module from a sealed L2 entry, or `None` (logged) when the entry
    /// is refused or does not load. The runtime checks the seal against
    /// its `precompiled_keys` (this node's cluster keys) before it
    /// deserializes anything.
    async fn load_sealed(
        &self,
        l2: &L2,
        sha256: &str,
        artifact: Arc<Vec<u8>>,
        entry: Vec<u8>,
    ) -> Option<Arc<LoadedModule>> {
        let loaded = self
            .off_thread(move |shared| Ok(shared.runtime.load_precompiled(&artifact, &entry)))
            .await;
        match loaded {
            Ok(Ok(module)) => Some(module),
            Ok(Err(LoadError::Seal(SealError::UntrustedKey { key_id }))) => {
                tracing::warn!(
                    key = %l2.cwasm_key(sha256),
                    "refused a precompiled module from Redis: signed by key {key_id:?}, which is not a cluster key of this node (its own key or one in cluster_keys/); compiling the artifact instead"
                );
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    key = %l2.cwasm_key(sha256),
                    error = %e,
                    "refused a precompiled module from Redis; compiling the artifact instead"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = ?e, "loading a precompiled module failed; compiling instead");
                None
            }
        }
    }

    /// Put a module this node compiled into L2 for the other nodes, in the
    /// background (serializing and sealing on a blocking thread). Nothing
    /// happens without Redis, or while it is down.
    pub(super) fn share_module(&self, module: Arc<LoadedModule>, artifact: Vec<u8>) {
        let Some(cluster) = &self.shared.cluster else {
            return;
        };
        if !cluster.redis.is_up() {
            return;
        }
        let l2 = cluster.l2.clone();
        let state = self.clone();
        tokio::spawn(async move {
            let sealed = state
                .off_thread(move |shared| {
                    let sealed = shared
                        .runtime
                        .serialize(&module, &shared.key)
                        .map_err(|e| load_error(e, "serializing a module for Redis"))?;
                    Ok((module.sha256().to_owned(), sealed))
                })
                .await;
            let (sha256, sealed) = match sealed {
                Ok(sealed) => sealed,
                Err(e) => {
                    tracing::warn!(error = ?e, "cannot share a compiled module through Redis");
                    return;
                }
            };
            if let Err(e) = l2.publish(&sha256, &sealed, &artifact).await {
                tracing::debug!(error = %e, "a compiled module was not shared through Redis");
            }
        });
    }
}
