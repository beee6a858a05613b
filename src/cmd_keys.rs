//! `avap keygen`, and loading signing and trusted keys for other commands.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use avap_hostfns::artifact::{self, SigningKey, TrustedKeys};

/// Extension of secret key files.
const SECRET_EXT: &str = "key";
/// Extension of public key files.
const PUBLIC_EXT: &str = "pub";

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Directory to write the key files to (created if missing)
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Base name of the key files: NAME.key (secret) and NAME.pub (public)
    #[arg(long, default_value = "avap")]
    pub name: String,
    /// Overwrite existing key files (artifacts signed with the old key stop verifying)
    #[arg(long)]
    pub force: bool,
}

/// Generates an ed25519 key pair and writes `NAME.key` (mode 0600 on unix)
/// and `NAME.pub`.
pub fn keygen(args: &KeygenArgs) -> Result<ExitCode> {
    if args.name.is_empty() || args.name.contains(['/', '\\']) || args.name == "." || args.name == ".." {
        bail!(
            "invalid key name `{}`: use a plain file name such as `avap` or `prod-2025`",
            args.name
        );
    }
    fs::create_dir_all(&args.out).with_context(|| format!("cannot create directory {}", args.out.display()))?;
    let secret_path = args.out.join(format!("{}.{SECRET_EXT}", args.name));
    let public_path = args.out.join(format!("{}.{PUBLIC_EXT}", args.name));
    for path in [&secret_path, &public_path] {
        // `symlink_metadata`: a dangling symlink counts as existing too.
        if fs::symlink_metadata(path).is_ok() {
            if !args.force {
                bail!(
                    "{} already exists; pass --force to overwrite it (artifacts signed with the old key will no \
                     longer verify) or choose another --name",
                    path.display()
                );
            }
            fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }

    let key = artifact::generate_key()?;
    let public = key.verifying_key();
    let id = artifact::key_id(&public);
    write_new_file(&secret_path, artifact::encode_secret_key(&key).as_bytes(), true)?;
    write_new_file(&public_path, artifact::encode_public_key(&public).as_bytes(), false)?;

    println!("generated signing key {id}");
    println!(
        "  secret key: {} (keep it private; sign with `--key {}`)",
        secret_path.display(),
        secret_path.display()
    );
    println!("  public key: {}", public_path.display());
    println!(
        "to trust it, give the runtime `--trust {}` (or list that file among its trusted keys)",
        public_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` (which must not exist) with `contents`; secret files get
/// mode 0600 on unix from the start, so the key is never readable by others.
fn write_new_file(path: &Path, contents: &[u8], secret: bool) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

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
