//! The edge node's copy of the registry on local disk, under
//! `<data-dir>/edge/`:
//!
//! * `artifacts/<sha256>.wasm`: signed artifacts, content-addressed. Each is
//!   written only after its hash and signature were checked (by the sync),
//!   as a temporary file that is flushed to disk and then renamed, so a
//!   file under its final name is always complete.
//! * `index.json`: which artifact is the current version of which name
//!   ([`Index`]), replaced the same way (write a temporary file, fsync,
//!   rename, fsync the directory): after a crash it is the old index or
//!   the new one, never a mix.
//!
//! A damaged index (it cannot be, short of a disk fault or a hand edit) is
//! a clear start-up error naming the file and what to do, not a guess: the
//! artifacts alone do not say which version is current.
//!
//! Files can change behind our back (a disk fault, an operator, an
//! attacker). Reading an artifact checks its hash every time; besides,
//! [`Mirror::scrub`] notices a changed size or modification time of any
//! mirrored file and re-hashes it, so a damaged file is refused even while
//! a loaded copy of it would otherwise stay cached.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::super::registry::valid_name;
use super::super::registry_sync::valid_sha256;

pub const INDEX_FILE: &str = "index.json";
pub const ARTIFACTS_DIR: &str = "artifacts";
/// The version of the index file's layout.
const INDEX_FORMAT: u32 = 1;
/// Temporary files start with this; left-overs of a crash are removed at start.
const TEMP_PREFIX: &str = ".tmp-";

/// What `index.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    /// The registry's generation this index reflects (sent as `If-None-Match`),
    /// or `None` when the last sync left something out and must list again.
    pub generation: Option<String>,
    /// Name → its current version.
    pub scripts: BTreeMap<String, Mirrored>,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            format: INDEX_FORMAT,
            generation: None,
            scripts: BTreeMap::new(),
        }
    }
}

/// One mirrored script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirrored {
    pub version: i64,
    pub artifact_sha256: String,
    pub updated_at: String,
}

impl Index {
    /// The names whose entry differs between `self` and `other`.
    pub fn changed_names(&self, other: &Index) -> Vec<String> {
        let names: HashSet<&String> = self.scripts.keys().chain(other.scripts.keys()).collect();
        let mut changed: Vec<String> = names
            .into_iter()
            .filter(|name| self.scripts.get(*name) != other.scripts.get(*name))
            .cloned()
            .collect();
        changed.sort();
        changed
    }

    /// Every artifact hash the index refers to.
    pub fn hashes(&self) -> HashSet<String> {
        self.scripts.values().map(|m| m.artifact_sha256.clone()).collect()
    }

    /// The names whose current version is artifact `sha256`.
    pub fn names_of(&self, sha256: &str) -> Vec<String> {
        self.scripts
            .iter()
            .filter(|(_, m)| m.artifact_sha256 == sha256)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Refuse an index that does not make sense (names, hashes, versions).
    fn check(&self) -> Result<(), String> {
        if self.format != INDEX_FORMAT {
            return Err(format!(
                "format {} is not the format {INDEX_FORMAT} this avap writes",
                self.format
            ));
        }
        for (name, m) in &self.scripts {
            if !valid_name(name) {
                return Err(format!("{name:?} is not a script name"));
            }
            if !valid_sha256(&m.artifact_sha256) {
                return Err(format!("script `{name}`: {:?} is not a SHA-256", m.artifact_sha256));
            }
            if m.version < 1 {
                return Err(format!("script `{name}`: version {} is not 1 or more", m.version));
            }
        }
        Ok(())
    }
}

/// What identifies a file's content cheaply: a change in any part means
/// "hash it again" (a file replaced by a rename has a new inode; one
/// written in place a new modification time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Fingerprint {
        Fingerprint {
            inode: std::os::unix::fs::MetadataExt::ino(meta),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// The on-disk mirror: the index in memory, and which files are known intact.
#[derive(Debug)]
pub struct Mirror {
    dir: PathBuf,
    index: RwLock<Arc<Index>>,
    /// Artifacts whose content was hashed and found right, with the
    /// fingerprint the file had before it was read.
    intact: Mutex<HashMap<String, Fingerprint>>,
    /// Artifacts of the index found missing or damaged, until fetched again.
    damaged: Mutex<HashSet<String>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Mirror {
    /// Open the mirror in `dir` (created if missing) and read its index; an
    /// absent index is an empty mirror.
    pub fn open(dir: &Path) -> Result<Mirror> {
        let artifacts = dir.join(ARTIFACTS_DIR);
        fs::create_dir_all(&artifacts)
            .with_context(|| format!("cannot create the edge mirror directory {}", artifacts.display()))?;
        for folder in [dir, artifacts.as_path()] {
            remove_temp_files(folder);
        }
        let index = read_index(&dir.join(INDEX_FILE))?;
        Ok(Mirror {
            dir: dir.to_path_buf(),
            index: RwLock::new(Arc::new(index)),
            intact: Mutex::new(HashMap::new()),
            damaged: Mutex::new(HashSet::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index as it is now (a snapshot: a sync swaps in a new one).
    pub fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn entry(&self, name: &str) -> Option<Mirrored> {
        self.index().scripts.get(name).cloned()
    }

    pub fn artifact_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(ARTIFACTS_DIR).join(format!("{sha256}.wasm"))
    }

    /// The bytes of artifact `sha256`, if the file is there and hashes to
    /// it; else why not (and the artifact counts as damaged from now on).
    pub fn read_checked(&self, sha256: &str) -> Result<Vec<u8>, String> {
        let path = self.artifact_path(sha256);
        let problem = match fs::read(&path) {
            Ok(bytes) => {
                let found = sha256_hex(&bytes);
                if found == sha256 {
                    return Ok(bytes);
                }
                format!("the file's SHA-256 is {found}: it changed on disk")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "the file is missing".to_owned(),
            Err(e) => format!("cannot read {}: {e}", path.display()),
        };
        self.mark_damaged(sha256);
        Err(problem)
    }

    /// Whether artifact `sha256` is on disk and intact: trusted from its
    /// fingerprint when the file looks as it did when last hashed, else
    /// hashed again.
    pub fn has_intact(&self, sha256: &str) -> bool {
        let path = self.artifact_path(sha256);
        let Ok(meta) = fs::metadata(&path) else {
            lock(&self.intact).remove(sha256);
            return false;
        };
        let fingerprint = Fingerprint::of(&meta);
        if lock(&self.intact).get(sha256) == Some(&fingerprint) {
            return true;
        }
        // The fingerprint is taken before reading: a change during or after
        // the read gives a different one, and a new hash next time.
        let ok = fs::read(&path).is_ok_and(|bytes| sha256_hex(&bytes) == sha256);
        if ok {
            lock(&self.intact).insert(sha256.to_owned(), fingerprint);
            lock(&self.damaged).remove(sha256);
        } else {
            lock(&self.intact).remove(sha256);
        }
        ok
    }

    /// Count `sha256` as damaged (`true` if it was not already).
    pub fn mark_damaged(&self, sha256: &str) -> bool {
        lock(&self.intact).remove(sha256);
        lock(&self.damaged).insert(sha256.to_owned())
    }

    pub fn is_damaged(&self, sha256: &str) -> bool {
        lock(&self.damaged).contains(sha256)
    }

    /// Hashes of the index found missing or damaged, not yet fetched again.
    pub fn damaged(&self) -> Vec<String> {
        let mut damaged: Vec<String> = lock(&self.damaged).iter().cloned().collect();
        damaged.sort();
        damaged
    }

    /// Check every artifact of the index (re-hashing only files whose size
    /// or modification time changed); the names of the artifacts newly found
    /// missing or damaged.
    pub fn scrub(&self) -> Vec<String> {
        let index = self.index();
        let mut names = Vec::new();
        for sha256 in index.hashes() {
            if !self.has_intact(&sha256) && self.mark_damaged(&sha256) {
                names.extend(index.names_of(&sha256));
            }
        }
        names.sort();
        names
    }

    /// Write artifact `sha256` (already checked by the caller) atomically.
    pub fn store_artifact(&self, sha256: &str, bytes: &[u8]) -> Result<()> {
        let path = self.artifact_path(sha256);
        write_atomically(&path, bytes).with_context(|| format!("cannot write the artifact {}", path.display()))?;
        lock(&self.damaged).remove(sha256);
        // Hash what is now on disk, so the fingerprint is the final file's.
        self.has_intact(sha256);
        Ok(())
    }

    /// Make `index` the mirror's index: written to disk first (atomically),
    /// then swapped in. Returns the names whose entry changed. Nothing is
    /// written when nothing changed.
    pub fn replace_index(&self, index: Index) -> Result<Vec<String>> {
        index
            .check()
            .map_err(|why| anyhow::anyhow!("refusing to write an invalid index: {why}"))?;
        let old = self.index();
        if *old == index {
            return Ok(Vec::new());
        }
        let path = self.dir.join(INDEX_FILE);
        let mut text = serde_json::to_vec_pretty(&index).context("cannot encode the edge index")?;
        text.push(b'\n');
        write_atomically(&path, &text).with_context(|| format!("cannot write the edge index {}", path.display()))?;
        let changed = old.changed_names(&index);
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
        Ok(changed)
    }

    /// Delete artifact files that neither `keep` nor the current index
    /// names. (The sync passes the previous index's hashes too, so a run
    /// that read the old index just before a swap still finds its file.)
    pub fn remove_unreferenced(&self, keep: &HashSet<String>) {
        let current = self.index().hashes();
        let dir = self.dir.join(ARTIFACTS_DIR);
        let Ok(entries) = fs::read_dir(&dir) else { return };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(sha256) = file_name.to_str().and_then(|n| n.strip_suffix(".wasm")) else {
                continue;
            };
            if !valid_sha256(sha256) || keep.contains(sha256) || current.contains(sha256) {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    lock(&self.intact).remove(sha256);
                }
                Err(e) => tracing::warn!("cannot remove the unused artifact {}: {e}", entry.path().display()),
            }
        }
    }
}

/// The index in `path`; an empty one when there is no file.
fn read_index(path: &Path) -> Result<Index> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read the edge index {}", path.display())),
    };
    let index = serde_json::from_slice::<Index>(&text)
        .map_err(|e| e.to_string())
        .and_then(|index| index.check().map(|()| index));
    match index {
        Ok(index) => Ok(index),
        Err(why) => bail!(
            "the edge index {} is damaged ({why}); it is only ever replaced whole, so the disk or a hand \
             edit changed it. Remove the file to start with an empty mirror: the next sync lists the \
             registry again and reuses the artifacts already on disk whose hashes match",
            path.display()
        ),
    }
}

/// Write `bytes` to `path` so that `path` is always either the old file or
/// the complete new one: a temporary file in the same directory, flushed to
/// disk, renamed over `path`, and the directory flushed (the rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = dir.join(format!("{TEMP_PREFIX}{}-{name}", std::process::id()));
    let written = write_then_rename(&temp, path, bytes).and_then(|()| fs::File::open(dir)?.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

fn write_then_rename(temp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(temp, path)
}

/// Remove left-over temporary files of a write that crashed.
fn remove_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("avap-edge-mirror-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn entry(sha256: &str, version: i64) -> Mirrored {
        Mirrored {
            version,
            artifact_sha256: sha256.to_owned(),
            updated_at: "2026-11-23T19:00:00.000Z".to_owned(),
        }
    }

    fn index(scripts: &[(&str, Mirrored)]) -> Index {
        Index {
            format: INDEX_FORMAT,
            generation: Some("g1".to_owned()),
            scripts: scripts.iter().map(|(n, m)| ((*n).to_owned(), m.clone())).collect(),
        }
    }

    #[test]
    fn the_index_is_replaced_whole_and_read_back() {
        let dir = temp_dir("replace");
        let mirror = Mirror::open(&dir).unwrap();
        assert_eq!(*mirror.index(), Index::default(), "no file: an empty mirror");
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let first = index(&[("one", entry(&a, 1)), ("two", entry(&b, 1))]);
        assert_eq!(mirror.replace_index(first.clone()).unwrap(), ["one", "two"]);
        let second = index(&[("one", entry(&b, 2))]);
        assert_eq!(mirror.replace_index(second.clone()).unwrap(), ["one", "two"]);
        assert!(mirror.replace_index(second.clone()).unwrap().is_empty(), "unchanged");
        // A crash mid-write leaves at most a temporary file; the index is
        // the last complete one, and the left-over goes at the next start.
        fs::write(
            dir.join(format!("{TEMP_PREFIX}999-{INDEX_FILE}")),
            b"{\"format\": 1, \"scr",
        )
        .unwrap();
        let reopened = Mirror::open(&dir).unwrap();
        assert_eq!(*reopened.index(), second);
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(TEMP_PREFIX)), "{names:?}");
        assert!(mirror.replace_index(index(&[("bad/name", entry(&a, 1))])).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_index_is_a_clear_error() {
        let dir = temp_dir("damaged");
        fs::create_dir_all(&dir).unwrap();
        for text in [
            "{\"format\": 1, \"generation\": null, \"scri",
            "{\"format\": 1, \"generation\": null, \"scripts\": {\"x\": {\"version\": 1, \
             \"artifact_sha256\": \"../../etc/passwd\", \"updated_at\": \"\"}}}",
            "{\"format\": 7, \"generation\": null, \"scripts\": {}}",
        ] {
            fs::write(dir.join(INDEX_FILE), text).unwrap();
            let err = format!("{:#}", Mirror::open(&dir).unwrap_err());
            assert!(err.contains(&dir.join(INDEX_FILE).display().to_string()), "{err}");
            assert!(err.contains("is damaged") && err.contains("Remove the file"), "{err}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn artifacts_are_checked_on_every_read_and_scrubbed() {
        let dir = temp_dir("artifacts");
        let mirror = Mirror::open(&dir).unwrap();
        let bytes = b"\0asm artifact bytes".to_vec();
        let sha = sha256_hex(&bytes);
        mirror.store_artifact(&sha, &bytes).unwrap();
        mirror.replace_index(index(&[("s", entry(&sha, 1))])).unwrap();
        assert_eq!(mirror.read_checked(&sha).unwrap(), bytes);
        assert!(mirror.scrub().is_empty());

        // Flip one byte: the next read and the scrub both notice. (Written
        // in place, a later modification time is what tells: let the clock move.)
        std::thread::sleep(std::time::Duration::from_millis(30));
        let mut tampered = bytes.clone();
        tampered[5] ^= 1;
        fs::write(mirror.artifact_path(&sha), &tampered).unwrap();
        assert_eq!(mirror.scrub(), ["s"]);
        assert!(mirror.scrub().is_empty(), "reported once");
        assert_eq!(mirror.damaged(), std::slice::from_ref(&sha));
        assert!(mirror.read_checked(&sha).unwrap_err().contains("changed on disk"));
        assert!(!mirror.has_intact(&sha));

        // Fetched again: intact, no longer damaged.
        mirror.store_artifact(&sha, &bytes).unwrap();
        assert!(mirror.has_intact(&sha) && mirror.damaged().is_empty());

        // Files nothing refers to go; referenced and kept ones stay.
        let (old, other) = ("c".repeat(64), "d".repeat(64));
        fs::write(mirror.artifact_path(&old), b"old").unwrap();
        fs::write(mirror.artifact_path(&other), b"other").unwrap();
        mirror.remove_unreferenced(&HashSet::from([old.clone()]));
        assert!(mirror.artifact_path(&old).exists() && mirror.artifact_path(&sha).exists());
        assert!(!mirror.artifact_path(&other).exists());

        fs::remove_file(mirror.artifact_path(&sha)).unwrap();
        assert!(mirror.read_checked(&sha).unwrap_err().contains("missing"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
