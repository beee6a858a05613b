//! `avap keygen`, and loading signing and trusted keys for other commands.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use avap_hostfns::artifact;

/// Extension of secret key files.
const SECRET_EXT: &str = "key";
pub use avap_server::key_files::{PUBLIC_EXT, load_signing_key, load_trusted_keys};

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

    outln!("generated signing key {id}")?;
    outln!(
        "  secret key: {} (keep it private; sign with `--key {}`)",
        secret_path.display(),
        secret_path.display()
    )?;
    outln!("  public key: {}", public_path.display())?;
    outln!(
        "to trust it, give the runtime `--trust {}` (or list that file among its trusted keys)",
        public_path.display()
    )?;
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
