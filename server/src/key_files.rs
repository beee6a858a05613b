//! Key files: the signing key `avap keygen` writes, and trusted public keys.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use avap_hostfns::artifact::{self, SigningKey, TrustedKeys};

/// Extension of public key files.
pub const PUBLIC_EXT: &str = "pub";

/// Reads a secret key file written by `avap keygen`.
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read signing key {}", path.display()))?;
    let key = artifact::decode_secret_key(&text).with_context(|| format!("{}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: signing key {} is readable by other users; restrict it with `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    Ok(key)
}

/// Reads trusted public keys: each path is a `.pub` file or a directory
/// whose `.pub` files are all read (other files are ignored).
pub fn load_trusted_keys(paths: &[PathBuf]) -> Result<TrustedKeys> {
    let mut trusted = TrustedKeys::new();
    for path in paths {
        let meta = fs::metadata(path).with_context(|| format!("cannot read trusted key path {}", path.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            for entry in fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))? {
                let file = entry.with_context(|| format!("cannot list {}", path.display()))?.path();
                if file.extension().is_some_and(|e| e == PUBLIC_EXT) && file.is_file() {
                    files.push(file);
                }
            }
            if files.is_empty() {
                bail!("{} contains no .{PUBLIC_EXT} public key files", path.display());
            }
            files.sort();
            for file in files {
                add_public_key(&mut trusted, &file)?;
            }
        } else {
            add_public_key(&mut trusted, path)?;
        }
    }
    Ok(trusted)
}

fn add_public_key(trusted: &mut TrustedKeys, path: &Path) -> Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read public key {}", path.display()))?;
    let key = artifact::decode_public_key(&text).with_context(|| format!("{}", path.display()))?;
    trusted.add(key);
    Ok(())
}
