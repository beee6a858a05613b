//! The server's signing key: `<data-dir>/keys/server.key` (mode 0600) and
//! `server.pub`, created on first start. Stored scripts are signed with it
//! and the server's runtime trusts it, so artifacts in the database keep
//! verifying across restarts.
//!
//! `<data-dir>/trusted_keys/*.pub` (`avap keygen` public keys), when that
//! directory exists, are trusted too: artifacts signed with them may be
//! uploaded to `POST /api/v1/execute/file`. They are read once, at start.
//!
//! `<data-dir>/cluster_keys/*.pub` are the other nodes of a cluster: with
//! the server key, the only keys whose compiled modules (native code) this
//! node loads from Redis ([`super::l2`]). That list is separate from
//! `trusted_keys/` on purpose: signing artifacts must not be enough to get
//! native code run. Read once, at start.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use avap_hostfns::artifact::{
    SigningKey, TrustedKeys, decode_secret_key, encode_public_key, encode_secret_key, generate_key,
};

/// The directory of extra trusted public keys, inside the data directory.
pub const TRUSTED_KEYS_DIR: &str = "trusted_keys";
/// The directory of the other cluster nodes' public keys.
pub const CLUSTER_KEYS_DIR: &str = "cluster_keys";

/// Read the server key, or create it (and its `.pub`) if there is none.
pub fn load_or_create(data_dir: &Path) -> Result<SigningKey> {
    let dir = data_dir.join("keys");
    let secret = dir.join("server.key");
    if secret.exists() {
        let mode = std::fs::metadata(&secret).map_or(0o600, |m| m.permissions().mode());
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the server key {} is readable by others (mode {:o}); chmod 600 it",
                secret.display(),
                mode & 0o777
            );
        }
        let text = std::fs::read_to_string(&secret)
            .with_context(|| format!("cannot read the server key {}", secret.display()))?;
        return decode_secret_key(&text).map_err(|e| anyhow!("the server key {} is not usable: {e}", secret.display()));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = generate_key().map_err(|e| anyhow!("cannot create the server signing key: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("cannot create the server key {}", secret.display()))?;
    file.write_all(encode_secret_key(&key).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the server key {}", secret.display()))?;
    let public = dir.join("server.pub");
    std::fs::write(&public, encode_public_key(&key.verifying_key()))
        .with_context(|| format!("cannot write {}", public.display()))?;
    Ok(key)
}

/// The public keys in `<data_dir>/trusted_keys/*.pub`; none when the
/// directory does not exist or holds no `.pub` file. A key file that does
/// not parse stops the start (naming the file), never silently ignored.
pub fn load_trusted(data_dir: &Path) -> Result<TrustedKeys> {
    load_key_dir(data_dir, TRUSTED_KEYS_DIR, "trusted keys")
}

/// The public keys in `<data_dir>/cluster_keys/*.pub`, whose sealed
/// modules this node loads from Redis (the server key is added by the
/// caller); read as [`load_trusted`] reads its directory.
pub fn load_cluster_keys(data_dir: &Path) -> Result<TrustedKeys> {
    load_key_dir(data_dir, CLUSTER_KEYS_DIR, "cluster keys")
}

/// The `.pub` files in `<data_dir>/<dir_name>`, sorted; `what` names them in errors.
fn load_key_dir(data_dir: &Path, dir_name: &str, what: &str) -> Result<TrustedKeys> {
    let dir = data_dir.join(dir_name);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TrustedKeys::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list the {what} in {}", dir.display())),
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list the {what} in {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "pub") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    crate::key_files::load_trusted_keys(&files).with_context(|| {
        format!(
            "cannot read the {what} in {} (each .pub file must be an `avap keygen` public key)",
            dir.display()
        )
    })
}

/// The most stored scripts whose signers are checked at start.
const SIGNERS_CHECKED: usize = 10_000;

/// Warn, once per key, when the registry holds current versions signed by
/// a key this node does not trust: nodes sharing one database with
/// different server keys fail each other's scripts (500
/// `ClusterKeyMismatch`). Runs in the background at start; edge nodes
/// check their mirror instead.
pub(crate) async fn warn_untrusted_signers(state: super::AppState) {
    if state.shared.edge.is_some() {
        return;
    }
    let current = match state.store().current_artifacts().await {
        Ok(current) => current,
        Err(e) => {
            tracing::debug!("cannot list the registry's artifacts for the signer check: {e:#}");
            return;
        }
    };
    let mut untrusted: std::collections::BTreeMap<String, (usize, String)> = std::collections::BTreeMap::new();
    for (name, version, _, _) in current.into_iter().take(SIGNERS_CHECKED) {
        let Ok(Some((_, artifact))) = state.store().artifact(&name, Some(version)).await else {
            continue;
        };
        // The section headers only: this is a report, loading verifies.
        if let Ok(Some(key_id)) = avap_hostfns::artifact::signer_key_id(&artifact)
            && state.trusted_keys().get(&key_id).is_none()
        {
            let entry = untrusted.entry(key_id).or_insert((0, name));
            entry.0 += 1;
        }
    }
    for (key_id, (scripts, example)) in untrusted {
        tracing::warn!(
            key_id,
            scripts,
            example,
            "{scripts} stored script(s) (for example {example}) are signed by key {key_id}, which this node \
             does not trust: their runs here fail with 500 ClusterKeyMismatch. Give every node the same \
             keys/server.key, or copy the signing node's keys/server.pub into trusted_keys/, and restart"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back() {
        let dir = std::env::temp_dir().join(format!("avap-keys-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create(&dir).unwrap();
        let mode = std::fs::metadata(dir.join("keys/server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.join("keys/server.pub").is_file());
        let again = load_or_create(&dir).unwrap();
        assert_eq!(first.to_bytes(), again.to_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trusted_keys_come_from_the_data_dir() {
        let dir = std::env::temp_dir().join(format!("avap-trusted-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load_trusted(&dir).unwrap().is_empty(), "no directory, no keys");
        let keys = dir.join(TRUSTED_KEYS_DIR);
        std::fs::create_dir_all(&keys).unwrap();
        let key = generate_key().unwrap();
        std::fs::write(keys.join("ci.pub"), encode_public_key(&key.verifying_key())).unwrap();
        std::fs::write(keys.join("README"), "not a key").unwrap();
        let trusted = load_trusted(&dir).unwrap();
        let id = avap_hostfns::artifact::key_id(&key.verifying_key());
        assert_eq!(trusted.ids().collect::<Vec<_>>(), [id.as_str()]);
        std::fs::write(keys.join("broken.pub"), "avap-public-key nope").unwrap();
        let err = format!("{:#}", load_trusted(&dir).unwrap_err());
        assert!(err.contains("broken.pub"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cluster_keys_are_a_separate_list() {
        let dir = std::env::temp_dir().join(format!("avap-cluster-keys-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load_cluster_keys(&dir).unwrap().is_empty(), "no directory, no keys");
        let artifact_signer = generate_key().unwrap();
        let peer = generate_key().unwrap();
        std::fs::create_dir_all(dir.join(TRUSTED_KEYS_DIR)).unwrap();
        std::fs::create_dir_all(dir.join(CLUSTER_KEYS_DIR)).unwrap();
        std::fs::write(
            dir.join(TRUSTED_KEYS_DIR).join("ci.pub"),
            encode_public_key(&artifact_signer.verifying_key()),
        )
        .unwrap();
        std::fs::write(
            dir.join(CLUSTER_KEYS_DIR).join("node2.pub"),
            encode_public_key(&peer.verifying_key()),
        )
        .unwrap();
        let cluster = load_cluster_keys(&dir).unwrap();
        let peer_id = avap_hostfns::artifact::key_id(&peer.verifying_key());
        assert_eq!(cluster.ids().collect::<Vec<_>>(), [peer_id.as_str()]);
        std::fs::write(dir.join(CLUSTER_KEYS_DIR).join("bad.pub"), "nope").unwrap();
        let err = format!("{:#}", load_cluster_keys(&dir).unwrap_err());
        assert!(err.contains("cluster keys") && err.contains("bad.pub"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
