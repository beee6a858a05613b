//! Scripts and the files they `include`, read from disk: the loader the
//! CLI's commands and [`crate::exec::Executor`] use.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use avap_codegen::SourceFile;
use avap_codegen::check::{IncludeError, LoadedSource, SourceLoader};

/// A script file as a source, whatever its encoding.
pub fn read_source(path: &Path) -> Result<SourceFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(SourceFile::from_bytes(path.display().to_string(), &bytes))
}

/// Reads the files scripts `include` from disk, and only files a script
/// may see: regular files (no devices, FIFOs or directories: `/dev/zero`
/// would never end, a FIFO would block), under the script's own directory
/// or an `--include-path` directory, at most [`MAX_INCLUDE_BYTES`] each.
/// A script from elsewhere must not be able to pull `/etc/passwd` into its
/// diagnostics, or hang the compiler.
///
/// Includes resolve relative to the including file's directory; the
/// allowed directories are fixed for the whole script (its own directory
/// and `--include-path`), so a helper in `lib/` may include `../common/x.avap`
/// of the same project. Paths are checked after canonicalising (symlinks
/// and `..` resolved), so neither can lead out. A file's identity is its
/// canonical path, so `a.avap`, `./a.avap` and `sub/../a.avap` are one file.
#[derive(Debug, Clone)]
pub struct FsLoader {
    /// The script's own directory, canonical.
    script_dir: PathBuf,
    /// The `--include-path` directories, canonical.
    include_paths: Vec<PathBuf>,
}

/// The largest file `include` reads: the largest script `avap serve`
/// accepts by default (`max_script_bytes`); the CLI has no config file to
/// change it.
pub const MAX_INCLUDE_BYTES: u64 = crate::DEFAULT_MAX_SCRIPT_BYTES as u64;

impl FsLoader {
    /// The loader for the script at `script`, allowing also `include_paths`
    /// (canonical, from [`IncludeArgs::resolve`]).
    pub fn for_script(script: &Path, include_paths: &[PathBuf]) -> Result<FsLoader> {
        let dir = match script.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let script_dir = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot resolve the directory of {}", script.display()))?;
        Ok(FsLoader {
            script_dir,
            include_paths: include_paths.to_vec(),
        })
    }

    fn allows(&self, canonical: &Path) -> bool {
        std::iter::once(&self.script_dir)
            .chain(&self.include_paths)
            .any(|dir| canonical.starts_with(dir))
    }

    /// Where includes may come from, for messages.
    fn allowed_dirs(&self) -> String {
        let dir = format!("the script's directory {}", self.script_dir.display());
        if self.include_paths.is_empty() {
            return dir;
        }
        let extra: Vec<String> = self.include_paths.iter().map(|d| d.display().to_string()).collect();
        format!("{dir} and --include-path {}", extra.join(", "))
    }
}

/// What kind of file a non-regular file is, for messages.
fn file_kind(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

impl SourceLoader for FsLoader {
    fn load(&self, from: &str, path: &str) -> std::result::Result<LoadedSource, IncludeError> {
        use std::io::Read;

        let base = Path::new(from).parent().unwrap_or(Path::new("."));
        let full = base.join(path);
        let canonical = std::fs::canonicalize(&full).map_err(|e| format!("{}: {e}", full.display()))?;
        let shown = canonical.display();
        // Where the written path leads, when that is not obvious from it.
        let leads = if canonical == full {
            format!("include path {shown}")
        } else {
            format!("`{path}` resolves to {shown}, which")
        };
        if !self.allows(&canonical) {
            let dir = canonical.parent().unwrap_or(&canonical);
            return Err(IncludeError::with_help(
                format!("{leads} is outside {}", self.allowed_dirs()),
                format!(
                    "pass --include-path {} to allow it (include reads only under the script's directory and the --include-path directories)",
                    dir.display()
                ),
            ));
        }
        let too_large = |size: String| {
            IncludeError::with_help(
                format!("{leads} is larger than the {MAX_INCLUDE_BYTES} bytes a script may have ({size})"),
                "split it into smaller files (the same limit as `max_script_bytes` of avap serve)",
            )
        };
        let not_regular = |kind: &str| {
            IncludeError::with_help(
                format!("{leads} is {kind}: include reads only regular files"),
                "include a .avap file",
            )
        };
        // Refuse by the path's metadata first: opening a FIFO would block.
        let meta = std::fs::metadata(&canonical).map_err(|e| format!("{shown}: {e}"))?;
        if !meta.is_file() {
            return Err(not_regular(file_kind(meta.file_type())));
        }
        if meta.len() > MAX_INCLUDE_BYTES {
            return Err(too_large(format!("{} bytes", meta.len())));
        }
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            // Should the file be swapped for a FIFO after the check above,
            // the open still returns at once, and the check below refuses it.
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NONBLOCK);
        }
        let file = options.open(&canonical).map_err(|e| format!("{shown}: {e}"))?;
        let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
        if !meta.is_file() {
            return Err(not_regular(file_kind(meta.file_type())));
        }
        // `take`: a file that grows after the size check is still bounded.
        let mut bytes = Vec::new();
        file.take(MAX_INCLUDE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{shown}: {e}"))?;
        if bytes.len() as u64 > MAX_INCLUDE_BYTES {
            return Err(too_large("it grew while being read".to_owned()));
        }
        Ok(LoadedSource {
            identity: shown.to_string(),
            // Diagnostics show the path as the author would write it.
            name: full.display().to_string(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    fn identity(&self, name: &str) -> String {
        std::fs::canonicalize(name).map_or_else(|_| name.to_string(), |p| p.display().to_string())
    }
}
