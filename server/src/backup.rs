//! The `avap backup` file format, and writing and restoring it.
//!
//! A backup is JSON lines, one record per line, so it streams, diffs and
//! greps well:
//!
//! ```text
//! {"type":"header","format":"avap-backup","version":1,"created_at":"…","backend":"postgres"}
//! {"type":"script","name":"hello","current_version":2,…}
//! {"type":"version","name":"hello","version":1,"source":"…","artifact":"<base64>",…}
//! {"type":"api_key","id":"0000abcd","key_hash":"…","scopes":"execute",…}
//! {"type":"audit","at":"…","actor":"…","action":"run",…}
//! {"type":"end","scripts":1,"versions":2,"api_keys":1,"audit_rows":1,"sha256":"…"}
//! ```
//!
//! The last line counts the records and carries the SHA-256 of every byte
//! before it, so a truncated or edited file is refused as a whole. API keys
//! are stored as hashes only (as in the database); the server's signing key
//! lives in the data directory and is not part of a backup. Everything is
//! read in one [`Snapshot`](super::store::Snapshot), so a backup taken while
//! servers write is consistent: every script's current version is in it.

use std::collections::HashSet;
use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::store::{ApiKeyRecord, AuditEntry, Contents, ScriptRecord, Store, VersionRecord};

const FORMAT: &str = "avap-backup";
const VERSION: u32 = 1;
/// Audit rows read per query.
const AUDIT_PAGE: i64 = 1000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    Header {
        format: String,
        version: u32,
        created_at: String,
        backend: String,
    },
    Script(ScriptRecord),
    Version(VersionRecord),
    ApiKey(ApiKeyRecord),
    Audit(AuditEntry),
    End {
        scripts: usize,
        versions: usize,
        api_keys: usize,
        audit_rows: usize,
        sha256: String,
    },
}

/// What a backup held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupSummary {
    pub scripts: usize,
    pub versions: usize,
    pub api_keys: usize,
    pub audit_rows: usize,
}

/// Writes records and hashes every byte written.
struct RecordWriter<'a, W: Write> {
    out: &'a mut W,
    hash: Sha256,
}

impl<W: Write> RecordWriter<'_, W> {
    fn put(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.hash.update(&line);
        self.out.write_all(&line).context("cannot write the backup")
    }
}

/// Write a backup of `store` to `out`.
pub async fn write(store: &Store, out: &mut impl Write) -> Result<BackupSummary> {
    let mut snapshot = store.snapshot().await?;
    let mut writer = RecordWriter {
        out,
        hash: Sha256::new(),
    };
    writer.put(&Record::Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        backend: format!("{:?}", store.backend()).to_lowercase(),
    })?;
    let mut summary = BackupSummary::default();
    let scripts = snapshot.scripts().await?;
    for script in &scripts {
        writer.put(&Record::Script(script.clone()))?;
        summary.scripts += 1;
    }
    for name in snapshot.version_names().await? {
        for version in snapshot.versions(&name).await? {
            writer.put(&Record::Version(version))?;
            summary.versions += 1;
        }
    }
    for key in snapshot.api_keys().await? {
        writer.put(&Record::ApiKey(key))?;
        summary.api_keys += 1;
    }
    let mut after = 0;
    loop {
        let page = snapshot.audit_after(after, AUDIT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for row in page {
            writer.put(&Record::Audit(row))?;
            summary.audit_rows += 1;
        }
    }
    let sha256 = hex::encode(writer.hash.clone().finalize());
    writer.put(&Record::End {
        scripts: summary.scripts,
        versions: summary.versions,
        api_keys: summary.api_keys,
        audit_rows: summary.audit_rows,
        sha256,
    })?;
    Ok(summary)
}

/// Read and check a whole backup: format and version, the closing counts
/// and checksum, every artifact's and source's SHA-256, and that every
/// script's current version is present.
pub fn read(input: impl BufRead) -> Result<Contents> {
    let mut contents = Contents::default();
    let mut hash = Sha256::new();
    let mut header_seen = false;
    let mut end = None;
    for (index, line) in input.split(b'\n').enumerate() {
        let number = index + 1;
        let line = line.context("cannot read the backup")?;
        ensure!(end.is_none(), "line {number}: data after the closing record");
        let record: Record =
            serde_json::from_slice(&line).with_context(|| format!("line {number}: not a backup record"))?;
        if !matches!(record, Record::End { .. }) {
            hash.update(&line);
            hash.update(b"\n");
        }
        match record {
            Record::Header { format, version, .. } => {
                ensure!(number == 1, "line {number}: a second header");
                ensure!(format == FORMAT, "line 1: format `{format}` is not `{FORMAT}`");
                ensure!(
                    version == VERSION,
                    "line 1: backup format version {version}; this avap reads version {VERSION}"
                );
                header_seen = true;
            }
            _ if !header_seen => bail!("line 1: the backup header is missing"),
            Record::Script(script) => contents.scripts.push(script),
            Record::Version(version) => {
                check_version(&version).with_context(|| format!("line {number}"))?;
                contents.versions.push(version);
            }
            Record::ApiKey(key) => contents.api_keys.push(key),
            Record::Audit(row) => contents.audit.push(row),
            Record::End {
                scripts,
                versions,
                api_keys,
                audit_rows,
                sha256,
            } => {
                let counted = (
                    contents.scripts.len(),
                    contents.versions.len(),
                    contents.api_keys.len(),
                    contents.audit.len(),
                );
                ensure!(
                    counted == (scripts, versions, api_keys, audit_rows),
                    "line {number}: the closing record counts {scripts} scripts, {versions} versions, \
                     {api_keys} API keys and {audit_rows} audit rows, but the file holds {counted:?}"
                );
                ensure!(
                    hex::encode(hash.clone().finalize()) == sha256,
                    "the checksum does not match: the file was changed after it was written"
                );
                end = Some(());
            }
        }
    }
    ensure!(
        end.is_some(),
        "the closing record is missing: the backup is incomplete (truncated?)"
    );
    let present: HashSet<(&str, i64)> = contents.versions.iter().map(|v| (v.name.as_str(), v.version)).collect();
    for script in &contents.scripts {
        ensure!(
            present.contains(&(script.name.as_str(), script.current_version)),
            "script `{}` names version {} as current, which the backup does not hold",
            script.name,
            script.current_version
        );
    }
    Ok(contents)
}

fn check_version(version: &VersionRecord) -> Result<()> {
    let artifact = hex::encode(Sha256::digest(&version.artifact));
    ensure!(
        artifact == version.artifact_sha256,
        "the artifact of `{}` version {} does not match its SHA-256",
        version.name,
        version.version
    );
    let source = hex::encode(Sha256::digest(version.source.as_bytes()));
    ensure!(
        source == version.source_sha256,
        "the source of `{}` version {} does not match its SHA-256",
        version.name,
        version.version
    );
    Ok(())
}

impl BackupSummary {
    /// What `contents` holds.
    pub fn of(contents: &Contents) -> BackupSummary {
        BackupSummary {
            scripts: contents.scripts.len(),
            versions: contents.versions.len(),
            api_keys: contents.api_keys.len(),
            audit_rows: contents.audit.len(),
        }
    }
}

/// `serde(with)` for artifact bytes: standard base64 in JSON.
pub mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Actor, NewVersion};

    fn actor() -> Actor {
        Actor {
            actor: "0000abcd".to_owned(),
            request_id: None,
        }
    }

    async fn filled() -> Store {
        let store = Store::in_memory().await.unwrap();
        for (name, source) in [("a", "x = 1"), ("a", "x = 2"), ("b", "y = 3")] {
            let artifact = format!("\0asm {source}").into_bytes();
            let new = NewVersion {
                name,
                source,
                source_sha256: &hex::encode(Sha256::digest(source.as_bytes())),
                artifact_sha256: &hex::encode(Sha256::digest(&artifact)),
                artifact: &artifact,
                libraries: &[],
                action: "store",
                rebuilds: None,
            };
            store.put(&new, &actor()).await.unwrap();
        }
        store
            .create_api_key("0000abcd", Some("ci"), "h", "admin")
            .await
            .unwrap();
        store
    }

    async fn backup_of(store: &Store) -> Vec<u8> {
        let mut out = Vec::new();
        write(store, &mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_backup_restores_into_an_empty_database() {
        let store = filled().await;
        let bytes = backup_of(&store).await;
        let contents = read(bytes.as_slice()).unwrap();
        assert_eq!(
            (
                contents.scripts.len(),
                contents.versions.len(),
                contents.api_keys.len(),
                contents.audit.len()
            ),
            (2, 3, 1, 3)
        );
        let copy = Store::in_memory().await.unwrap();
        assert!(copy.is_empty().await.unwrap());
        copy.restore(&contents, false).await.unwrap();
        assert_eq!(copy.current("a").await.unwrap().unwrap().source, "x = 2");
        assert_eq!(copy.versions("a").await.unwrap().len(), 2);
        assert_eq!(copy.api_key("0000abcd").await.unwrap().unwrap().key_hash, "h");
        // A backup of the copy holds the same records (the header's time aside).
        let again = backup_of(&copy).await;
        let records = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .unwrap()
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let (first, second) = (records(&bytes), records(&again));
        assert_eq!(first[..first.len() - 1], second[..second.len() - 1]);
    }

    /// A backup does not carry the `script_libraries` index: a restore
    /// rebuilds it from the libraries each signed artifact records.
    #[tokio::test]
    async fn a_restore_rebuilds_the_libraries_index_from_the_artifacts() {
        let store = Store::in_memory().await.unwrap();
        let greet = avap_hostfns::artifact::LibraryMeta {
            name: "greet".to_owned(),
            version: 3,
            source_sha256: "0".repeat(64),
        };
        let checked = avap_codegen::check_file(
            avap_codegen::SourceFile::new("app.avap", "x = 1\naddResult(x)\n".to_owned()),
            &avap_codegen::check::NoIncludes,
        );
        let artifact = avap_codegen::compile_with_libraries(
            &checked,
            None,
            avap_hostfns::artifact::RunPolicy::default(),
            vec![greet.clone()],
        )
        .bytes;
        let new = NewVersion {
            name: "app",
            source: "x = 1\naddResult(x)\n",
            source_sha256: &hex::encode(Sha256::digest(b"x = 1\naddResult(x)\n")),
            artifact_sha256: &hex::encode(Sha256::digest(&artifact)),
            artifact: &artifact,
            libraries: std::slice::from_ref(&greet),
            action: "store",
            rebuilds: None,
        };
        store.put(&new, &actor()).await.unwrap();
        assert_eq!(store.dependents("greet").await.unwrap().len(), 1);
        let contents = read(backup_of(&store).await.as_slice()).unwrap();
        let copy = Store::in_memory().await.unwrap();
        copy.restore(&contents, false).await.unwrap();
        let dependents = copy.dependents("greet").await.unwrap();
        assert_eq!(
            dependents
                .iter()
                .map(|d| (d.name.as_str(), d.version, d.library_version))
                .collect::<Vec<_>>(),
            [("app", 1, 3)]
        );
    }

    #[tokio::test]
    async fn damaged_backups_are_refused_whole() {
        let bytes = backup_of(&filled().await).await;
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let err = |t: &str| format!("{:#}", read(t.as_bytes()).unwrap_err());
        let truncated = lines[..lines.len() - 1].join("\n");
        assert!(
            err(&truncated).contains("closing record is missing"),
            "{}",
            err(&truncated)
        );
        let edited = text.replacen("\"actor\":\"0000abcd\"", "\"actor\":\"intruder\"", 1);
        assert!(err(&edited).contains("checksum does not match"), "{}", err(&edited));
        let headless = lines[1..].join("\n");
        assert!(err(&headless).contains("header is missing"), "{}", err(&headless));
        let garbage = format!("{}\nnot json\n", lines[0]);
        assert!(
            err(&garbage).contains("line 2: not a backup record"),
            "{}",
            err(&garbage)
        );
        // A version whose artifact was swapped is refused even with a fixed-up checksum.
        let swapped = text.replacen("\"artifact\":\"", "\"artifact\":\"AAAA", 1);
        assert!(
            err(&swapped).contains("does not match its SHA-256"),
            "{}",
            err(&swapped)
        );
    }
}
