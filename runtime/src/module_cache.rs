//! An on-disk cache of compiled modules, for processes that run a script
//! once and exit (`avap run`): without it every start pays Cranelift
//! (2–3 ms for a small script) before the script's first instruction.
//!
//! An entry is wasmtime's native code for one artifact, in the sealed
//! `.cwasm` format of [`crate::precompiled`], at
//! `<root>/<engine fingerprint>/<signed SHA-256 of the artifact>.cwasm`.
//!
//! * **Key.** The SHA-256 of the artifact's *signed region* (everything
//!   before `avap.sig`), not of the whole file: `avap run script.avap`
//!   signs each in-memory artifact with a fresh session key, so the same
//!   source gives the same signed region but never the same file. Native
//!   code depends on the wasm only, so the signer does not matter to it;
//!   which signers a runtime accepts is still checked on every load
//!   ([`crate::Runtime::load_cached`] verifies the artifact first).
//! * **Trust.** Native code runs outside the sandbox, so an entry is used
//!   only when the cache's own key sealed it for this engine and this
//!   signed region; anything else (a corrupt, truncated or foreign file) is
//!   compiled again and overwritten. The key lives in the cache root
//!   (`cache.key`, mode 0600, in a 0700 directory), so the cache is as
//!   trustworthy as the account that owns it, like wasmtime's own cache and
//!   the user's `~/.cargo`.
//! * **Writes** go to a temporary file renamed into place, so a reader
//!   never sees half an entry and concurrent runs of the same script are
//!   harmless. A failed write only costs the next run a compilation.
//! * **Size.** After each write the cache is trimmed to [`MAX_BYTES`],
//!   least recently used entries first (a hit refreshes its entry's
//!   modification time); entries of other engines (an older avap) age out
//!   the same way.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use avap_hostfns::artifact::{SigningKey, TrustedKeys, decode_secret_key, encode_secret_key, generate_key};

/// The file in the cache root holding the key that seals its entries.
pub const KEY_FILE: &str = "cache.key";

/// The most the entries may take together; a write that goes over trims
/// the cache to three quarters of it.
pub const MAX_BYTES: u64 = 256 << 20;

/// Why the cache could not be opened (the caller runs without it).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot use the module cache directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the module cache key {path} is not a key written by avap ({reason}); delete the cache directory to start afresh"
    )]
    BadKey { path: PathBuf, reason: String },
}

/// Where a module came from (for `--usage` and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Already loaded in this process.
    Memory,
    /// Native code read from the disk cache.
    Hit,
    /// Compiled now (and written to the cache).
    Miss,
}

/// An opened cache directory (see the module docs).
pub struct DiskCache {
    root: PathBuf,
    key: SigningKey,
    trusted: TrustedKeys,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl DiskCache {
    /// Open the cache under `root`, creating it (and its key) if needed.
    pub fn open(root: &Path) -> Result<DiskCache, CacheError> {
        let io = |source| CacheError::Io {
            path: root.to_path_buf(),
            source,
        };
        create_private_dir(root).map_err(io)?;
        let key_path = root.join(KEY_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(text) => decode_secret_key(text.trim()).map_err(|e| CacheError::BadKey {
                path: key_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(&key_path).map_err(io)?,
            Err(e) => return Err(io(e)),
        };
        let mut trusted = TrustedKeys::new();
        trusted.add(key.verifying_key());
        Ok(DiskCache {
            root: root.to_path_buf(),
            key,
            trusted,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn key(&self) -> &SigningKey {
        &self.key
    }

    pub(crate) fn trusted(&self) -> &TrustedKeys {
        &self.trusted
    }

    /// The entry's path for this engine and signed region.
    pub(crate) fn entry(&self, fingerprint: &str, signed_sha256: &str) -> PathBuf {
        self.root.join(fingerprint).join(format!("{signed_sha256}.cwasm"))
    }

    /// Write `sealed` as the entry at `path`, atomically. Errors are
    /// returned for the caller to ignore or report: the cache is an
    /// optimisation.
    pub(crate) fn store(&self, path: &Path, sealed: &[u8]) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(&self.root);
        create_private_dir(dir)?;
        // tempfile creates it 0600 and removes it if anything fails.
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(sealed)?;
        tmp.as_file().sync_data()?;
        tmp.persist(path).map(drop).map_err(|e| e.error)?;
        self.trim(MAX_BYTES)
    }

    /// Mark the entry at `path` as just used (best effort).
    pub(crate) fn touch(path: &Path) {
        if let Ok(file) = std::fs::File::options().write(true).open(path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }

    /// Remove the least recently used entries while they take more than
    /// `max` bytes, down to three quarters of `max`.
    fn trim(&self, max: u64) -> std::io::Result<()> {
        let mut entries = Vec::new();
        for engine_dir in std::fs::read_dir(&self.root)? {
            let engine_dir = engine_dir?.path();
            if !engine_dir.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&engine_dir)? {
                let entry = entry?;
                let metadata = entry.metadata()?;
                if metadata.is_file() && entry.path().extension().is_some_and(|e| e == "cwasm") {
                    entries.push((metadata.modified()?, metadata.len(), entry.path()));
                }
            }
        }
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        if total <= max {
            return Ok(());
        }
        entries.sort_unstable();
        for (_, len, path) in entries {
            if total <= max / 4 * 3 {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}

/// `dir` and its parents, the last one private to this account.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A new key at `path` (0600), or the one a concurrent process wrote first.
fn create_key(path: &Path) -> std::io::Result<SigningKey> {
    let key = generate_key().map_err(std::io::Error::other)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(encode_secret_key(&key).as_bytes())?;
            file.sync_data()?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path)?;
            decode_secret_key(text.trim()).map_err(std::io::Error::other)
        }
        Err(e) => Err(e),
    }
}
