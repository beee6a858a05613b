//! L2: compiled modules shared between the nodes of a cluster through
//! Redis, so a script compiled on one node is loaded, not compiled, on the
//! others.
//!
//! * `<prefix>:cwasm:<engine fingerprint>:<artifact sha256>`: the module's
//!   `.cwasm` (from `Runtime::serialize`), *sealed*: signed by the node
//!   that compiled it. The fingerprint names the wasmtime version and
//!   engine configuration, so nodes of different builds never mix.
//! * `<prefix>:artifact:<artifact sha256>`: the signed artifact itself.
//!
//! Both expire after [`TTL`]; they are content-addressed, so they are never
//! stale, only absent.
//!
//! Trust: a `.cwasm` is native code that wasmtime loads without checking,
//! so what comes from Redis is treated as hostile. A sealed entry carries
//! the compiling node's key id and an ed25519 signature over (engine
//! fingerprint, artifact sha256, sha256 of the `.cwasm` bytes); it is used
//! only when that key is a *cluster key* (the node's own and
//! `<data-dir>/cluster_keys/*.pub`, see [`super::keys::load_cluster_keys`])
//! and the signature verifies. The artifact trust list
//! (`trusted_keys/`) does not count here: an artifact signer gets
//! sandboxed wasm run, never native code loaded. Anything else is logged,
//! counted (`avap_l2_refused_total`) and ignored: the node compiles the
//! artifact itself and overwrites the entry.
//!
//! A reply larger than [`MAX_VALUE_BYTES`] fails the lookup (the Redis
//! client refuses to buffer it), so larger modules are not shared.

use std::sync::Arc;
use std::time::Duration;

use avap_hostfns::artifact::{Signature, SigningKey, TrustedKeys, key_id};
use avap_runtime::LoadedModule;
use ed25519_dalek::Signer as _;
use sha2::{Digest as _, Sha256};

use super::redis::{MAX_VALUE_BYTES, Redis, RedisError, Reply};
use super::{ApiError, AppState, load_error};

/// How long shared modules and artifacts live in Redis.
pub const TTL: Duration = Duration::from_hours(7 * 24);
/// The bound of a background write of a module (a few MiB).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// First bytes of a sealed entry.
const SEAL_MAGIC: &[u8] = b"AVAP-L2-CWASM-1\n";
/// What the signature covers starts with this, so it can never be mistaken
/// for an artifact signature (those sign a bare SHA-256).
const SIGNED_CONTEXT: &[u8] = b"avap-l2-cwasm-v1\n";
const KEY_ID_LEN: usize = 16;
const SIGNATURE_LEN: usize = 64;
/// Where the `.cwasm` starts in a sealed entry.
const HEADER_LEN: usize = SEAL_MAGIC.len() + KEY_ID_LEN + SIGNATURE_LEN;

/// The Redis side of the module cache.
#[derive(Debug, Clone)]
pub struct L2 {
    redis: Redis,
    prefix: String,
    fingerprint: String,
    /// The keys whose seals this node accepts: its own and the cluster
    /// keys, never the artifact trust list.
    sealers: TrustedKeys,
}

impl L2 {
    pub fn new(redis: Redis, prefix: &str, fingerprint: String, sealers: TrustedKeys) -> L2 {
        L2 {
            redis,
            prefix: prefix.to_owned(),
            fingerprint,
            sealers,
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
            .call(&[b"GET", self.cwasm_key(artifact_sha256).as_bytes()])
            .await?
        {
            Reply::Bulk(entry) => Ok(entry),
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
        for (key, value) in [
            (self.cwasm_key(artifact_sha256), sealed),
            (self.artifact_key(artifact_sha256), artifact),
        ] {
            self.redis
                .call_within(WRITE_TIMEOUT, &[b"SET", key.as_bytes(), value, b"PX", ttl.as_bytes()])
                .await?;
        }
        Ok(())
    }
}

/// What the seal's signature covers.
fn signed_message(fingerprint: &str, artifact_sha256: &str, cwasm: &[u8]) -> Vec<u8> {
    let mut message = SIGNED_CONTEXT.to_vec();
    for part in [fingerprint, artifact_sha256, &hex::encode(Sha256::digest(cwasm))] {
        message.extend_from_slice(part.as_bytes());
        message.push(b'\n');
    }
    message
}

/// `SEAL_MAGIC`, the signer's key id (16 hex digits), the signature, the `.cwasm`.
pub fn seal(key: &SigningKey, fingerprint: &str, artifact_sha256: &str, cwasm: &[u8]) -> Vec<u8> {
    let signature = key.sign(&signed_message(fingerprint, artifact_sha256, cwasm));
    let mut out = Vec::with_capacity(HEADER_LEN + cwasm.len());
    out.extend_from_slice(SEAL_MAGIC);
    out.extend_from_slice(key_id(&key.verifying_key()).as_bytes());
    out.extend_from_slice(&signature.to_bytes());
    out.extend_from_slice(cwasm);
    out
}

/// The `.cwasm` inside a sealed entry, if one of `trusted` (the cluster
/// keys) signed it for this engine and artifact; else why not.
pub fn unseal<'a>(
    entry: &'a [u8],
    trusted: &TrustedKeys,
    fingerprint: &str,
    artifact_sha256: &str,
) -> Result<&'a [u8], String> {
    let rest = entry
        .strip_prefix(SEAL_MAGIC)
        .ok_or("not a sealed module (bad header)")?;
    if entry.len() < HEADER_LEN {
        return Err("the entry is truncated".to_owned());
    }
    let (id, rest) = rest.split_at(KEY_ID_LEN);
    let (signature, cwasm) = rest.split_at(SIGNATURE_LEN);
    let id = std::str::from_utf8(id).map_err(|_| "the signer's key id is not text")?;
    let key = trusted.get(id).ok_or_else(|| {
        format!("signed by key {id:?}, which is not a cluster key of this node (its own key or one in cluster_keys/)")
    })?;
    let signature = Signature::from_slice(signature).map_err(|_| "the signature is malformed")?;
    key.verify_strict(&signed_message(fingerprint, artifact_sha256, cwasm), &signature)
        .map_err(|_| format!("the signature of key {id} does not match the module (tampered or corrupt)"))?;
    Ok(cwasm)
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
    /// is refused or does not load.
    async fn load_sealed(
        &self,
        l2: &L2,
        sha256: &str,
        artifact: Arc<Vec<u8>>,
        entry: Vec<u8>,
    ) -> Option<Arc<LoadedModule>> {
        if let Err(why) = unseal(&entry, &l2.sealers, &l2.fingerprint, sha256) {
            tracing::warn!(
                key = %l2.cwasm_key(sha256),
                "refused a precompiled module from Redis: {why}; compiling the artifact instead"
            );
            return None;
        }
        let loaded = self
            .off_thread(move |shared| {
                // `unseal` checked the layout and the signature over these bytes.
                Ok(shared.runtime.load_precompiled(&artifact, &entry[HEADER_LEN..]))
            })
            .await;
        match loaded {
            Ok(Ok(module)) => Some(module),
            Ok(Err(e)) => {
                tracing::warn!(
                    key = %l2.cwasm_key(sha256),
                    error = %e,
                    "a precompiled module from Redis does not load; compiling the artifact instead"
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
            let fingerprint = l2.fingerprint.clone();
            let sealed = state
                .off_thread(move |shared| {
                    let cwasm = shared
                        .runtime
                        .serialize(&module)
                        .map_err(|e| load_error(e, "serializing a module for Redis"))?;
                    Ok((
                        module.sha256().to_owned(),
                        seal(&shared.key, &fingerprint, module.sha256(), &cwasm),
                    ))
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

#[cfg(test)]
mod tests {
    use avap_hostfns::artifact::generate_key;

    use super::*;

    #[test]
    fn seals_open_only_for_trusted_keys_and_intact_bytes() {
        let key = generate_key().unwrap();
        let mut trusted = TrustedKeys::new();
        trusted.add(key.verifying_key());
        let cwasm = b"native code".to_vec();
        let sealed = seal(&key, "fp1", "abc", &cwasm);
        assert_eq!(unseal(&sealed, &trusted, "fp1", "abc"), Ok(&cwasm[..]));

        let refused =
            |entry: &[u8], fingerprint: &str, sha: &str| unseal(entry, &trusted, fingerprint, sha).unwrap_err();
        assert!(
            refused(&sealed, "fp2", "abc").contains("does not match"),
            "another engine"
        );
        assert!(
            refused(&sealed, "fp1", "abd").contains("does not match"),
            "another artifact"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(refused(&tampered, "fp1", "abc").contains("tampered"));
        let stranger = seal(&generate_key().unwrap(), "fp1", "abc", &cwasm);
        assert!(refused(&stranger, "fp1", "abc").contains("not a cluster key"));
        assert!(refused(&sealed[..20], "fp1", "abc").contains("truncated"));
        assert!(refused(b"garbage", "fp1", "abc").contains("bad header"));
        assert!(refused(b"", "fp1", "abc").contains("bad header"));
    }
}
