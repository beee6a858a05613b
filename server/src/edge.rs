//! Edge mode: `avap serve --edge --registry URL` follows a registry node
//! over HTTP and serves its scripts from a mirror on local disk, so it keeps
//! serving when the registry or the network is gone.
//!
//! * [`Edge`] holds the mirror ([`mirror`]: `<data-dir>/edge/`), the
//!   registry client ([`client`]) and the sync state health reports.
//! * On start the index is read from disk and served at once; nothing
//!   waits for the registry.
//! * [`spawn_sync`] polls the registry every `registry_sync_ms`: the list
//!   (a 304 when nothing changed), then each artifact not already on disk
//!   and intact. Every downloaded artifact must hash to the SHA-256 the
//!   list names and carry a valid signature by a key this node trusts (its
//!   own, or `<data-dir>/trusted_keys/*.pub`: copy the registry node's
//!   `keys/server.pub` there) *before* it is written; one that does not is
//!   never written, and its script keeps the version already mirrored, if
//!   any. Then the index is replaced and the changed names dropped from the
//!   stored-script cache. Names deleted upstream disappear.
//! * The list itself is not signed, so each artifact must also name its
//!   script: the registry compiles script `NAME` as `NAME.avap`, and the
//!   signed `avap.meta` records that as `source_name`. An artifact listed
//!   under another name (a list rewritten on the way pointing `payments`
//!   at some other signed artifact) is refused like a bad signature: not
//!   written, the name keeps its mirrored version, counted in health's
//!   `rejected`, logged once. This holds for artifacts already on disk too.
//! * Lower version numbers are followed: a rollback on the registry makes
//!   an older version current again (`Store::rollback`), and a script
//!   deleted and stored again starts at version 1. Nothing in the list
//!   tells those from a forged downgrade, so the protection against
//!   downgrades is the transport: with `registry_api_key` set, a plain
//!   `http://` registry must be on this host ([`check_transport`], checked
//!   at start); anywhere else it is `https://`. (Remembering which versions
//!   were seen would refuse a rollback to a version this node never
//!   mirrored, as on a node started after it was replaced.)
//! * Failures never remove what is mirrored. They are logged once per
//!   outage (a warning when the registry is lost, an info line when the
//!   mirror has caught up again) and retried with a capped backoff (up to
//!   8 sync periods).
//! * Runs load the mirrored file, check its hash and let the runtime verify
//!   its signature (`Runtime::load`). Every sync period the mirrored files
//!   are also checked for changes on disk (size, inode or modification
//!   time: then re-hashed), so a loaded copy of a damaged file leaves the
//!   cache too. A damaged file is refused with `ArtifactRejected` and
//!   fetched again at the next sync that reaches the registry.
//! * The registry is read-only here: writes answer `EdgeReadOnly` (409)
//!   naming the registry to write to; listing and showing scripts reflect
//!   the mirror; only current versions are mirrored.
//!
//! API keys and the audit trail stay in the node's own embedded database,
//! as on any node; an edge node needs no `PostgreSQL` or Redis.

mod client;
mod mirror;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use avap_hostfns::artifact;
use avap_runtime::LoadError;
use serde_json::{Value, json};

use client::{Listing, RegistryClient};
pub use client::{check_transport, parse_registry_url};
use mirror::{Index, Mirror, Mirrored, sha256_hex};

use super::error::ApiError;
use super::registry::valid_name;
use super::registry_sync::{RegistryEntry, ScriptList, valid_sha256};
use super::{AppState, StoredScript};

/// The mirror's directory inside the data directory.
pub const EDGE_DIR: &str = "edge";

/// The longest wait between two attempts while the registry is unreachable.
const MAX_BACKOFF: Duration = Duration::from_mins(5);
/// Backoff doubles up to this many sync periods.
const BACKOFF_PERIODS: u32 = 8;

/// The settings of edge mode (config keys `edge`, `registry_url`,
/// `registry_api_key`, `registry_sync_ms`).
#[derive(Clone)]
pub struct EdgeConfig {
    pub registry_url: String,
    /// A `registry`-scoped key made on the registry node.
    pub api_key: Option<String>,
    pub sync_interval: Duration,
    /// Where the mirror lives: `<data-dir>/edge`.
    pub dir: PathBuf,
}

impl fmt::Debug for EdgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeConfig")
            .field("registry_url", &self.registry_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("sync_interval", &self.sync_interval)
            .field("dir", &self.dir)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncState {
    /// No sync has finished since start (the mirror on disk is served).
    Starting,
    Ok,
    Unreachable,
}

impl SyncState {
    fn as_str(self) -> &'static str {
        match self {
            SyncState::Starting => "starting",
            SyncState::Ok => "ok",
            SyncState::Unreachable => "unreachable",
        }
    }
}

#[derive(Debug)]
struct Status {
    state: SyncState,
    /// RFC 3339 UTC: the last sync that reached the registry.
    last_sync: Option<String>,
    /// Why the last attempt failed (while unreachable).
    last_error: Option<String>,
}

/// An artifact the registry offered that failed verification: never
/// written, not downloaded again by this process (trust is fixed at start).
#[derive(Debug, Clone)]
struct Rejection {
    name: String,
    reason: String,
}

/// The edge node: its mirror, its registry and how following it goes.
#[derive(Debug)]
pub struct Edge {
    mirror: Arc<Mirror>,
    client: RegistryClient,
    sync_interval: Duration,
    status: Mutex<Status>,
    /// By artifact SHA-256.
    rejected: Mutex<BTreeMap<String, Rejection>>,
    /// The signed `source_name` of artifacts verified or read (content-
    /// addressed, so never stale), by SHA-256: what binds them to a name.
    sources: Mutex<HashMap<String, String>>,
    /// Listed pairs (name, artifact SHA-256) whose artifact names another
    /// script, with the source name it does name; only pairs still listed.
    misnamed: Mutex<BTreeMap<(String, String), String>>,
}

/// The file name the registry compiles script `name` from (`AppState::build`),
/// which its artifacts' signed metadata records as `source_name`.
fn source_name_for(name: &str) -> String {
    format!("{name}.avap")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What one sync did.
#[derive(Debug, Default)]
struct SyncReport {
    /// Names added, removed, changed or fetched again.
    changed: Vec<String>,
    /// Artifacts downloaded.
    fetched: usize,
}

/// Whether the mirror has a wanted artifact after [`Edge::ensure_artifact`].
enum Have {
    /// Already on disk and intact.
    Intact,
    /// Downloaded, verified and written now.
    Fetched,
    /// The registry's artifact failed verification.
    Refused,
    /// The registry no longer has it (deleted since it listed it).
    Gone,
}

impl Edge {
    /// Open the mirror on disk (served at once) and set up the client.
    pub fn open(config: &EdgeConfig) -> Result<Edge> {
        let mirror = Mirror::open(&config.dir)?;
        let client = RegistryClient::new(&config.registry_url, config.api_key.clone())?;
        Ok(Edge {
            mirror: Arc::new(mirror),
            client,
            sync_interval: config.sync_interval,
            status: Mutex::new(Status {
                state: SyncState::Starting,
                last_sync: None,
                last_error: None,
            }),
            rejected: Mutex::new(BTreeMap::new()),
            sources: Mutex::new(HashMap::new()),
            misnamed: Mutex::new(BTreeMap::new()),
        })
    }

    /// The registry's URL as shown to clients and in logs.
    pub fn registry_url(&self) -> &str {
        self.client.shown_url()
    }

    /// How many scripts are mirrored.
    pub fn script_count(&self) -> usize {
        self.mirror.index().scripts.len()
    }

    /// The refusal of a registry write (or of the registry API) on this node.
    pub fn read_only(&self) -> ApiError {
        ApiError::EdgeReadOnly {
            registry: self.registry_url().to_owned(),
        }
    }

    /// `GET /api/v1/scripts` on an edge node: the mirror, in the shape of
    /// the registry's list (`[{name, version, updated_at}]`).
    pub fn scripts_json(&self) -> Value {
        let index = self.mirror.index();
        let list: Vec<Value> = index
            .scripts
            .iter()
            .map(|(name, m)| json!({"name": name, "version": m.version, "updated_at": m.updated_at}))
            .collect();
        Value::Array(list)
    }

    /// `GET /api/v1/scripts/{name}` on an edge node: what is mirrored of it
    /// (no source and no older versions: an edge node has only artifacts).
    pub fn script_json(&self, name: &str) -> Result<Value, ApiError> {
        let m = self.mirror.entry(name).ok_or_else(|| ApiError::ScriptNotFound {
            name: name.to_owned(),
            version: None,
        })?;
        Ok(json!({
            "name": name,
            "version": m.version,
            "artifact_sha256": m.artifact_sha256,
            "updated_at": m.updated_at,
            "mirrored_from": self.registry_url(),
        }))
    }

    /// The `registry` part of the health answer, and whether the node is
    /// degraded (the registry unreachable: still serving the mirror).
    pub fn health(&self) -> (Value, bool) {
        let status = lock(&self.status);
        let mut rejected: Vec<Value> = lock(&self.rejected)
            .iter()
            .map(|(sha, r)| json!({"name": r.name, "artifact_sha256": sha, "reason": r.reason}))
            .collect();
        rejected.extend(lock(&self.misnamed).iter().map(|((name, sha), source)| {
            json!({
                "name": name,
                "artifact_sha256": sha,
                "reason": format!(
                    "the artifact's signed metadata says it was compiled from `{source}`, not `{}`: it \
                     belongs to another script",
                    source_name_for(name)
                ),
            })
        }));
        let mut health = json!({
            "url": self.registry_url(),
            "state": status.state.as_str(),
            "last_sync": status.last_sync,
            "scripts": self.script_count(),
            "damaged": self.mirror.damaged(),
            "rejected": rejected,
        });
        if let Some(error) = &status.last_error {
            health["error"] = json!(error);
        }
        (health, status.state == SyncState::Unreachable)
    }

    /// Run `work` on the mirror on a blocking thread (file I/O and hashing).
    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce(&Mirror) -> T + Send + 'static) -> Result<T> {
        let mirror = self.mirror.clone();
        tokio::task::spawn_blocking(move || work(&mirror))
            .await
            .context("an edge mirror task failed")
    }

    /// Follow the registry forever (see the module docs).
    async fn follow(&self, state: &AppState) {
        let interval = self.sync_interval;
        let mut failures: u32 = 0;
        let mut next_attempt = tokio::time::Instant::now();
        loop {
            self.scrub(state).await;
            if tokio::time::Instant::now() >= next_attempt {
                let wait = match self.sync_once(state).await {
                    Ok(report) => {
                        self.synced(&report);
                        failures = 0;
                        interval
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        self.failed(&e);
                        backoff(interval, failures)
                    }
                };
                next_attempt = tokio::time::Instant::now() + wait;
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Look for mirrored files that changed on disk; refuse them from now on.
    async fn scrub(&self, state: &AppState) {
        let Ok(names) = self.blocking(Mirror::scrub).await else {
            return;
        };
        if !names.is_empty() {
            tracing::warn!(
                scripts = ?names,
                "mirrored artifacts changed on disk and no longer match their SHA-256; they are refused until \
                 the next sync that reaches the registry fetches them again"
            );
            for name in &names {
                state.script_changed(name);
            }
        }
    }

    /// One round: list, fetch what is missing, replace the index.
    async fn sync_once(&self, state: &AppState) -> Result<SyncReport> {
        let old = self.mirror.index();
        let (generation, wanted) = match self.client.list(old.generation.as_deref()).await? {
            // Nothing changed upstream; still fetch any file found damaged.
            Listing::NotModified => (old.generation.clone(), entries_of(&old)),
            Listing::Changed(list) => {
                check_list(&list).map_err(|why| {
                    anyhow::anyhow!(
                        "the registry {} sent a script list this node cannot use: {why}",
                        self.registry_url()
                    )
                })?;
                (Some(list.generation), list.scripts)
            }
        };
        let listed: HashSet<(String, String)> = wanted
            .iter()
            .map(|e| (e.name.clone(), e.artifact_sha256.clone()))
            .collect();
        let mut scripts = BTreeMap::new();
        let mut complete = true;
        let mut fetched = Vec::new();
        for entry in wanted {
            let have = self.ensure_artifact(state, &entry).await?;
            let mirrored = Mirrored {
                version: entry.version,
                artifact_sha256: entry.artifact_sha256.clone(),
                updated_at: entry.updated_at.clone(),
            };
            match have {
                Have::Intact => {}
                Have::Fetched => fetched.push(entry.artifact_sha256.clone()),
                Have::Refused | Have::Gone => {
                    // Keep serving the version already mirrored, if any; and
                    // list in full next time rather than trust a 304.
                    complete = false;
                    // (An index written before names were checked may hold a
                    // misnamed artifact: that one is not kept.)
                    if let Some(kept) = old.scripts.get(&entry.name)
                        && self
                            .intact_source(&kept.artifact_sha256)
                            .await?
                            .is_some_and(|source| source == source_name_for(&entry.name))
                    {
                        scripts.insert(entry.name, kept.clone());
                    }
                    continue;
                }
            }
            // Followed, not refused: see the module docs on rollbacks and downgrades.
            if let Some(before) = old.scripts.get(&entry.name)
                && entry.version < before.version
            {
                tracing::info!(
                    script = %entry.name,
                    from = before.version,
                    to = entry.version,
                    "following the registry back to an older version number (a rollback, or the script \
                     deleted and stored again)"
                );
            }
            scripts.insert(entry.name, mirrored);
        }
        // Forget what is no longer listed (bounded by the list's size).
        lock(&self.misnamed).retain(|pair, _| listed.contains(pair));
        let in_use: HashSet<&String> = listed
            .iter()
            .map(|(_, sha)| sha)
            .chain(scripts.values().map(|m| &m.artifact_sha256))
            .collect();
        lock(&self.sources).retain(|sha, _| in_use.contains(sha));
        let index = Index {
            generation: generation.filter(|_| complete),
            scripts,
            ..Index::default()
        };
        let mut changed = self.blocking(move |m| m.replace_index(index)).await??;
        let current = self.mirror.index();
        for sha in &fetched {
            changed.extend(current.names_of(sha));
        }
        changed.sort();
        changed.dedup();
        for name in &changed {
            state.script_changed(name);
        }
        // The previous index's files stay one more round for runs that read it.
        let keep = old.hashes();
        self.blocking(move |m| m.remove_unreferenced(&keep)).await?;
        Ok(SyncReport {
            changed,
            fetched: fetched.len(),
        })
    }

    /// Make sure the artifact of `entry` is on disk: download, hash-check
    /// and verify it first if it is not. A transport failure is an error
    /// (the round fails and is retried); a verification failure is not.
    async fn ensure_artifact(&self, state: &AppState, entry: &RegistryEntry) -> Result<Have> {
        let sha = entry.artifact_sha256.clone();
        if lock(&self.rejected).contains_key(&sha) {
            return Ok(Have::Refused);
        }
        // Already known to name another script: not downloaded again.
        let known = lock(&self.sources).get(&sha).cloned();
        if let Some(source) = known
            && !self.binds(entry, &source)
        {
            return Ok(Have::Refused);
        }
        if let Some(source) = self.intact_source(&sha).await? {
            return Ok(if self.binds(entry, &source) {
                Have::Intact
            } else {
                Have::Refused
            });
        }
        let Some(bytes) = self.client.artifact(&sha).await? else {
            // A script changed between the list and this fetch: the next round lists again.
            tracing::debug!(
                script = %entry.name,
                artifact_sha256 = %sha,
                "the registry no longer has this artifact (changed meanwhile); keeping what is mirrored"
            );
            return Ok(Have::Gone);
        };
        let found = sha256_hex(&bytes);
        if found != sha {
            bail!(
                "the registry {} sent bytes with SHA-256 {found} for artifact {sha} of script `{}`; not stored",
                self.registry_url(),
                entry.name
            );
        }
        let trusted = state.trusted_keys().clone();
        let (verdict, bytes) = tokio::task::spawn_blocking(move || {
            let verdict = artifact::verify(&bytes, &trusted, false).map(|v| v.info.meta.source_name);
            (verdict, bytes)
        })
        .await
        .context("an artifact verification task failed")?;
        let source = match verdict {
            Ok(source) => source,
            Err(e) => {
                tracing::warn!(
                    script = %entry.name,
                    artifact_sha256 = %sha,
                    "refusing the registry's artifact, it is not written to disk: {e}"
                );
                lock(&self.rejected).insert(
                    sha,
                    Rejection {
                        name: entry.name.clone(),
                        reason: e.to_string(),
                    },
                );
                return Ok(Have::Refused);
            }
        };
        lock(&self.sources).insert(sha.clone(), source.clone());
        if !self.binds(entry, &source) {
            // Never written: the name keeps the version already mirrored.
            return Ok(Have::Refused);
        }
        self.blocking(move |m| m.store_artifact(&sha, &bytes)).await??;
        Ok(Have::Fetched)
    }

    /// Whether an artifact whose signed metadata records `source` may be
    /// `entry`'s script; if not, the pair counts as rejected (logged once).
    fn binds(&self, entry: &RegistryEntry, source: &str) -> bool {
        let expected = source_name_for(&entry.name);
        if source == expected {
            return true;
        }
        let pair = (entry.name.clone(), entry.artifact_sha256.clone());
        if lock(&self.misnamed).insert(pair, source.to_owned()).is_none() {
            tracing::warn!(
                script = %entry.name,
                artifact_sha256 = %entry.artifact_sha256,
                registry = self.registry_url(),
                "refusing the registry's artifact for this script: its signed metadata says it was compiled \
                 from `{source}`, not `{expected}` (the script list was rewritten on the way, or the registry \
                 holds a hand-made entry); keeping the version already mirrored, if any"
            );
        }
        false
    }

    /// The signed `source_name` of artifact `sha256` when it is on disk and
    /// intact (read and inspected once per process, then remembered).
    async fn intact_source(&self, sha256: &str) -> Result<Option<String>> {
        let known = lock(&self.sources).get(sha256).cloned();
        let wanted = sha256.to_owned();
        let found = self
            .blocking(move |m| {
                if !m.has_intact(&wanted) {
                    return None;
                }
                if known.is_some() {
                    return known;
                }
                let bytes = m.read_checked(&wanted).ok()?;
                // Unreadable metadata: treated as missing, so it is fetched
                // again and verified in full (and refused if still wrong).
                artifact::inspect(&bytes).ok().map(|info| info.meta.source_name)
            })
            .await?;
        if let Some(source) = &found {
            lock(&self.sources).insert(sha256.to_owned(), source.clone());
        }
        Ok(found)
    }

    fn synced(&self, report: &SyncReport) {
        let before = {
            let mut status = lock(&self.status);
            let before = status.state;
            status.state = SyncState::Ok;
            status.last_sync = Some(now());
            status.last_error = None;
            before
        };
        let registry = self.registry_url();
        let scripts = self.script_count();
        match before {
            SyncState::Starting => {
                tracing::info!(registry, scripts, changed = ?report.changed, "edge mirror synced from the registry");
            }
            SyncState::Unreachable => tracing::info!(
                registry,
                scripts,
                changed = ?report.changed,
                "the registry is reachable again; the edge mirror has caught up"
            ),
            SyncState::Ok if !report.changed.is_empty() => tracing::info!(
                registry,
                scripts,
                changed = ?report.changed,
                fetched = report.fetched,
                "mirrored changes from the registry"
            ),
            SyncState::Ok => {}
        }
    }

    fn failed(&self, e: &anyhow::Error) {
        let before = {
            let mut status = lock(&self.status);
            let before = status.state;
            status.state = SyncState::Unreachable;
            status.last_error = Some(format!("{e:#}"));
            before
        };
        let registry = self.registry_url();
        if before == SyncState::Unreachable {
            tracing::debug!(registry, "sync failed again: {e:#}");
        } else {
            tracing::warn!(
                registry,
                scripts = self.script_count(),
                "cannot sync from the registry: {e:#}; serving the mirrored scripts from disk and retrying \
                 with backoff (up to {} ms)",
                backoff(self.sync_interval, u32::MAX).as_millis()
            );
        }
    }
}

/// The wait after `failures` failed attempts in a row: doubling from one
/// sync period up to [`BACKOFF_PERIODS`] of them (and [`MAX_BACKOFF`]).
fn backoff(interval: Duration, failures: u32) -> Duration {
    let periods = 1u32 << failures.saturating_sub(1).min(BACKOFF_PERIODS.trailing_zeros());
    interval.saturating_mul(periods).min(MAX_BACKOFF).max(interval)
}

/// The index's scripts as list entries (for a 304).
fn entries_of(index: &Index) -> Vec<RegistryEntry> {
    index
        .scripts
        .iter()
        .map(|(name, m)| RegistryEntry {
            name: name.clone(),
            version: m.version,
            artifact_sha256: m.artifact_sha256.clone(),
            updated_at: m.updated_at.clone(),
        })
        .collect()
}

/// Refuse a list with names, hashes or versions this node could not store.
fn check_list(list: &ScriptList) -> Result<(), String> {
    let generation_ok = (1..=128).contains(&list.generation.len())
        && list
            .generation
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if !generation_ok {
        return Err(format!("the generation {:?} is not a short token", list.generation));
    }
    let mut names = std::collections::HashSet::new();
    for s in &list.scripts {
        if !valid_name(&s.name) {
            return Err(format!("{:?} is not a script name", s.name));
        }
        if !names.insert(s.name.as_str()) {
            return Err(format!("script `{}` is listed twice", s.name));
        }
        if !valid_sha256(&s.artifact_sha256) {
            return Err(format!("script `{}`: {:?} is not a SHA-256", s.name, s.artifact_sha256));
        }
        if s.version < 1 {
            return Err(format!("script `{}`: version {} is not 1 or more", s.name, s.version));
        }
    }
    Ok(())
}

/// Start following the registry, if this is an edge node.
pub fn spawn_sync(state: &AppState) {
    let Some(edge) = state.edge().cloned() else {
        return;
    };
    tracing::info!(
        registry = edge.registry_url(),
        scripts = edge.script_count(),
        mirror = %edge.mirror.dir().display(),
        "edge node: serving the mirror from disk and following the registry"
    );
    if edge.client.clear_text_remote() {
        tracing::warn!(
            registry = edge.registry_url(),
            "the registry is reached over plain http:// on another host: anyone on the network path can \
             point a script name at an older version of it; use https://"
        );
    }
    let state = state.clone();
    tokio::spawn(async move { edge.follow(&state).await });
}

/// [`AppState::stored`] on a cache miss, on an edge node: the mirrored
/// artifact, hash-checked and verified by the runtime.
pub(super) async fn load_stored(
    state: &AppState,
    edge: &Edge,
    name: &str,
    version: Option<i64>,
) -> Result<Option<StoredScript>, ApiError> {
    let cache = &state.shared.stored;
    let generation = cache.generation();
    let Some(entry) = edge.mirror.entry(name) else {
        return Ok(None);
    };
    if let Some(asked) = version
        && asked != entry.version
    {
        return Err(ApiError::NotMirrored {
            name: name.to_owned(),
            version: asked,
            current: entry.version,
        });
    }
    let mirror = edge.mirror.clone();
    let sha = entry.artifact_sha256.clone();
    // Logged once per damaged file, not once per refused request.
    let known_damaged = mirror.is_damaged(&sha);
    let loaded = state
        .off_thread(move |shared| {
            let bytes = match mirror.read_checked(&sha) {
                Ok(bytes) => bytes,
                Err(why) => return Ok(Err(why)),
            };
            match shared.runtime.load(&bytes) {
                Ok(module) => Ok(Ok(module)),
                Err(LoadError::Artifact(e)) => {
                    mirror.mark_damaged(&sha);
                    Ok(Err(e.to_string()))
                }
                Err(other) => Err(super::load_error(other, "loading a mirrored artifact")),
            }
        })
        .await?;
    let module = loaded.map_err(|reason| {
        if !known_damaged {
            tracing::error!(
                script = name,
                artifact_sha256 = %entry.artifact_sha256,
                "refusing a mirrored artifact until the next sync fetches it again: {reason}"
            );
        }
        ApiError::ArtifactRejected {
            name: name.to_owned(),
            sha256: entry.artifact_sha256.clone(),
            reason,
        }
    })?;
    let script = StoredScript {
        version: entry.version,
        module,
    };
    cache.insert(generation, name, version, script.clone());
    Ok(Some(script))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_eight_periods() {
        let p = Duration::from_millis(100);
        let waits: Vec<u128> = (1..=6).map(|n| backoff(p, n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 800, 800]);
        assert_eq!(backoff(p, u32::MAX), Duration::from_millis(800));
        assert_eq!(backoff(Duration::from_secs(100), 9), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_mins(10), 9),
            Duration::from_mins(10),
            "never below one period"
        );
    }

    fn list(scripts: Vec<RegistryEntry>) -> ScriptList {
        ScriptList {
            generation: "0123abcd".to_owned(),
            scripts,
        }
    }

    fn entry(name: &str, sha: &str, version: i64) -> RegistryEntry {
        RegistryEntry {
            name: name.to_owned(),
            version,
            artifact_sha256: sha.to_owned(),
            updated_at: "2026-11-23T19:00:00.000Z".to_owned(),
        }
    }

    #[test]
    fn artifacts_bind_to_the_script_they_were_compiled_as() {
        let dir = std::env::temp_dir().join(format!("avap-edge-binds-{}", std::process::id()));
        let edge = Edge::open(&EdgeConfig {
            registry_url: "http://127.0.0.1:9".to_owned(),
            api_key: Some("avap_0123abcd_secret".to_owned()),
            sync_interval: Duration::from_secs(1),
            dir: dir.clone(),
        })
        .unwrap();
        let sha = "e".repeat(64);
        assert!(edge.binds(&entry("payments", &sha, 1), "payments.avap"));
        assert!(!edge.binds(&entry("payments", &sha, 2), "refunds.avap"));
        assert!(
            !edge.binds(&entry("payments", &sha, 3), "refunds.avap"),
            "still refused"
        );
        let other = "f".repeat(64);
        assert!(
            !edge.binds(&entry("payments", &other, 1), "payments"),
            "the exact file name only"
        );
        let (health, degraded) = edge.health();
        let rejected = health["rejected"].as_array().unwrap();
        assert!(!degraded);
        assert_eq!(rejected.len(), 2, "each pair counted once: {health}");
        assert_eq!(rejected[0]["name"], "payments");
        assert!(
            rejected[0]["reason"]
                .as_str()
                .unwrap()
                .contains("`refunds.avap`, not `payments.avap`")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lists_are_checked_before_use() {
        let sha = "e".repeat(64);
        assert!(check_list(&list(vec![entry("a", &sha, 1), entry("b", &sha, 3)])).is_ok());
        let err = |l: ScriptList| check_list(&l).unwrap_err();
        assert!(err(list(vec![entry("../x", &sha, 1)])).contains("not a script name"));
        assert!(err(list(vec![entry("a", &sha, 1), entry("a", &sha, 2)])).contains("twice"));
        assert!(err(list(vec![entry("a", "../../etc/passwd", 1)])).contains("SHA-256"));
        assert!(err(list(vec![entry("a", &sha, 0)])).contains("version 0"));
        let mut bad = list(Vec::new());
        bad.generation = "a\"b".to_owned();
        assert!(err(bad).contains("generation"));
    }
}
