//! The signing secrets of API keys created with `avap apikey create
//! --signed` ([`super::request_signing`]), and how they are kept at rest.
//!
//! A signing secret is `avapsig_` and 64 hex digits (32 random bytes); its
//! holder signs requests with it (HMAC-SHA256, the secret's text as the
//! HMAC key). Unlike the API key, whose SHA-256 is enough to check it, the
//! server needs the secret itself to check a signature, so the database
//! keeps it *sealed*: XChaCha20-Poly1305 under the [`SecretsKey`] (32 random
//! bytes in `<data-dir>/keys/api_key_secrets.key`, mode 0600), with the API
//! key's id as associated data, so a sealed secret copied onto another key's
//! row does not open. A database dump or backup alone reveals no secret.
//!
//! Every node of a cluster, and wherever `avap apikey create --signed` runs,
//! needs the same key file, as it needs the same `keys/server.key`: the
//! command creates it on first use; the server only reads it (it never
//! seals), at the first signed request, and reads it again while it is
//! missing. A sealed secret names the id of the key that sealed it, so a
//! node holding another key says so in its log instead of failing vaguely.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// The key file, inside the data directory.
pub const SECRETS_KEY_FILE: &str = "keys/api_key_secrets.key";
/// What a signing secret starts with (so scanners and people can tell it
/// from an API key).
pub const SECRET_PREFIX: &str = "avapsig_";
/// The first line of the key file.
const FILE_HEADER: &str = "avap-api-key-secrets-key v1";
/// The format tag of a sealed secret.
const SEALED_VERSION: &str = "v1";
const NONCE_BYTES: usize = 24;

/// Why a secret could not be made, sealed or opened, or the key file read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "no {file}: the API key secrets key, which opens the signing secrets of `--signed` API keys. \
         Copy it from the machine where `avap apikey create --signed` made it (every node of a \
         cluster needs the same file)",
        file = .0.display()
    )]
    NoKeyFile(PathBuf),
    #[error("cannot read or write {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not an API key secrets key (expected `{FILE_HEADER}` and 64 hex digits); \
         restore the file the signing keys were made with",
        .0.display()
    )]
    BadKeyFile(PathBuf),
    #[error("cannot get random bytes: {0}")]
    Random(String),
    #[error(
        "the signing secret of API key {api_key} was sealed with secrets key {sealed_with}, but this node's \
         {SECRETS_KEY_FILE} is key {have}: give every node (and the machine running `avap apikey create \
         --signed`) the same file"
    )]
    WrongKey {
        api_key: String,
        sealed_with: String,
        have: String,
    },
    #[error("the stored signing secret of API key {0} is damaged or was moved from another key's row")]
    Damaged(String),
}

/// A new signing secret: `avapsig_<64 hex>`.
pub fn generate_secret() -> Result<String, SecretsError> {
    Ok(format!("{SECRET_PREFIX}{}", hex::encode(random::<32>()?)))
}

fn random<const N: usize>() -> Result<[u8; N], SecretsError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| SecretsError::Random(e.to_string()))?;
    Ok(bytes)
}

/// The server-side key that seals signing secrets.
pub struct SecretsKey {
    cipher: XChaCha20Poly1305,
    /// The first 8 hex digits of the key's SHA-256: names it in sealed
    /// secrets and errors, reveals nothing of it.
    id: String,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SecretsKey {
    fn from_bytes(bytes: &[u8; 32]) -> SecretsKey {
        SecretsKey {
            cipher: XChaCha20Poly1305::new(bytes.into()),
            id: hex::encode(&Sha256::digest(bytes)[..4]),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Read `<data_dir>/keys/api_key_secrets.key`.
    pub fn load(data_dir: &Path) -> Result<SecretsKey, SecretsError> {
        let path = data_dir.join(SECRETS_KEY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SecretsError::NoKeyFile(path)),
            Err(source) => return Err(SecretsError::Io { path, source }),
        };
        let mode = std::fs::metadata(&path).map_or(0o600, |m| m.permissions().mode());
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the API key secrets key {} is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let bytes = match (lines.next(), lines.next(), lines.next()) {
            (Some(FILE_HEADER), Some(hex_key), None) => hex::decode(hex_key).ok(),
            _ => None,
        };
        let bytes: [u8; 32] = bytes
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| SecretsError::BadKeyFile(path.clone()))?;
        Ok(SecretsKey::from_bytes(&bytes))
    }

    /// [`SecretsKey::load`], or make the file (mode 0600) when there is
    /// none; `true` with a key made now.
    pub fn load_or_create(data_dir: &Path) -> Result<(SecretsKey, bool), SecretsError> {
        match SecretsKey::load(data_dir) {
            Err(SecretsError::NoKeyFile(path)) => {
                let io = |source| SecretsError::Io {
                    path: path.clone(),
                    source,
                };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let bytes = random::<32>()?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                file.write_all(format!("{FILE_HEADER}\n{}\n", hex::encode(bytes)).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                Ok((SecretsKey::from_bytes(&bytes), true))
            }
            other => other.map(|key| (key, false)),
        }
    }

    /// `secret` sealed for the row of API key `api_key_id`:
    /// `v1.<key id>.<base64 of nonce + ciphertext>`.
    pub fn seal(&self, api_key_id: &str, secret: &str) -> Result<String, SecretsError> {
        let nonce = random::<NONCE_BYTES>()?;
        let aad = associated_data(api_key_id);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Damaged(api_key_id.to_owned()))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!("{SEALED_VERSION}.{}.{}", self.id, BASE64.encode(bytes)))
    }

    /// The secret [`SecretsKey::seal`] sealed for `api_key_id`.
    pub fn open(&self, api_key_id: &str, sealed: &str) -> Result<String, SecretsError> {
        let damaged = || SecretsError::Damaged(api_key_id.to_owned());
        let mut parts = sealed.splitn(3, '.');
        let (Some(SEALED_VERSION), Some(sealed_with), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(damaged());
        };
        if sealed_with != self.id {
            return Err(SecretsError::WrongKey {
                api_key: api_key_id.to_owned(),
                sealed_with: sealed_with.to_owned(),
                have: self.id.clone(),
            });
        }
        let bytes = BASE64.decode(data).map_err(|_| damaged())?;
        if bytes.len() <= NONCE_BYTES {
            return Err(damaged());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let aad = associated_data(api_key_id);
        let secret = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| damaged())?;
        String::from_utf8(secret).map_err(|_| damaged())
    }
}

/// What a sealed secret is bound to: its format and its API key.
fn associated_data(api_key_id: &str) -> String {
    format!("avap api key signing secret {SEALED_VERSION} {api_key_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("avap-secrets-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn secrets_seal_and_open_only_for_their_key_row() {
        let dir = temp_dir("seal");
        let (key, created) = SecretsKey::load_or_create(&dir).unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.join(SECRETS_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let secret = generate_secret().unwrap();
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() == SECRET_PREFIX.len() + 64);
        let sealed = key.seal("0000abcd", &secret).unwrap();
        assert!(!sealed.contains(&secret[SECRET_PREFIX.len()..]), "not in the clear");
        assert_ne!(
            key.seal("0000abcd", &secret).unwrap(),
            sealed,
            "a fresh nonce each time"
        );
        // Read back from the file: the same key.
        let (again, created) = SecretsKey::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(again.open("0000abcd", &sealed).unwrap(), secret);
        // On another key's row, or changed: refused.
        assert!(matches!(again.open("0000abce", &sealed), Err(SecretsError::Damaged(_))));
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(matches!(
            again.open("0000abcd", &flipped),
            Err(SecretsError::Damaged(_))
        ));
        // Another node's key: named.
        let other = SecretsKey::from_bytes(&[7; 32]);
        let err = other.open("0000abcd", &sealed).unwrap_err();
        assert!(matches!(err, SecretsError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains(key.id()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_or_broken_key_file_is_named() {
        let dir = temp_dir("broken");
        let err = SecretsKey::load(&dir).unwrap_err();
        assert!(matches!(err, SecretsError::NoKeyFile(_)), "{err}");
        assert!(err.to_string().contains("api_key_secrets.key"), "{err}");
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        std::fs::write(dir.join(SECRETS_KEY_FILE), "not a key\n").unwrap();
        let err = SecretsKey::load(&dir).unwrap_err();
        assert!(matches!(err, SecretsError::BadKeyFile(_)), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
