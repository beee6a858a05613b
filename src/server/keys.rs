//! The server's signing key: `<data-dir>/keys/server.key` (mode 0600) and
//! `server.pub`, created on first start. Stored scripts are signed with it
//! and the server's runtime trusts it, so artifacts in the database keep
//! verifying across restarts.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use avap_hostfns::artifact::{SigningKey, decode_secret_key, encode_public_key, encode_secret_key, generate_key};

/// Read the server key, or create it (and its `.pub`) if there is none.
pub fn load_or_create(data_dir: &Path) -> Result<SigningKey> {
    let dir = data_dir.join("keys");
    let secret = dir.join("server.key");
    if secret.exists() {
        let mode = std::fs::metadata(&secret).map_or(0o600, |m| m.permissions().mode());
        if mode & 0o077 != 0 {
            eprintln!(
                "avap serve: warning: the server key {} is readable by others (mode {:o}); chmod 600 it",
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
}
