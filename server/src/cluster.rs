//! What a node does with Redis (`redis_url`), and its start-up work:
//!
//! * [`Cluster`]: the Redis client, the key prefix (`redis_prefix`), the
//!   shared module cache ([`L2`]) and the shared rate limit.
//! * Invalidation: a registry write publishes the script's name on
//!   `<prefix>:invalidate` ([`AppState::script_changed`]); every node
//!   follows that channel and drops the name's stored-script entries. When
//!   the subscription was lost and comes back, the whole stored-script
//!   cache is dropped, since messages may have been missed meanwhile; and
//!   the names this node could not announce while Redis was unreachable
//!   are announced then. A node's own messages come back to it too and are
//!   applied again, which is harmless (only a reload).
//! * Pre-warming ([`AppState::start_background`]): the `prewarm`
//!   most-run stored scripts (from the audit trail's run rows; the most
//!   recently updated when there are none) are loaded in the background at
//!   start, through L2 when there is one.
//!
//! While Redis is down the node keeps serving: stored scripts from its own
//! caches and the database, compiling what it cannot load, and rate limits
//! per node ([`super::protect`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::AppState;
use super::l2::L2;
use super::protect::SharedLimit;
use super::redis::{Redis, RedisError, RedisUrl, Status};
use super::store::AuditQuery;

/// Retry delays of the invalidation subscription: doubling up to the last.
const RESUBSCRIBE_FIRST: Duration = Duration::from_millis(50);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(1);
/// A subscription that lasted this long resets the retry delay.
const SUBSCRIPTION_STABLE: Duration = Duration::from_secs(10);
/// How often a quiet subscription checks that Redis is still up (a
/// connection that silently died would otherwise wait forever).
const SUBSCRIPTION_CHECK: Duration = Duration::from_millis(500);
/// Audit rows read to find the most-run scripts.
const PREWARM_AUDIT_ROWS: i64 = 10_000;

/// A node's link to the rest of the cluster.
#[derive(Debug)]
pub struct Cluster {
    pub redis: Redis,
    pub prefix: String,
    pub l2: L2,
    pub rate_limit: SharedLimit,
    /// Changed scripts not announced yet (Redis was unreachable).
    unannounced: Mutex<BTreeSet<String>>,
}

impl Cluster {
    /// `errors` counts failed Redis commands (the metrics' counter). Which
    /// keys may seal the modules this node loads from Redis is the
    /// runtime's `precompiled_keys` (see [`L2`]).
    /// The cluster side of a node; `ca_pem` is the CA for a `rediss://` Redis.
    pub fn new(
        url: RedisUrl,
        ca_pem: Option<Vec<u8>>,
        prefix: &str,
        engine_fingerprint: String,
        errors: prometheus_client::metrics::counter::Counter,
    ) -> Result<Cluster, String> {
        let redis = Redis::new(url, ca_pem, errors)?;
        Ok(Cluster {
            l2: L2::new(redis.clone(), prefix, engine_fingerprint),
            rate_limit: SharedLimit::new(redis.clone(), prefix),
            prefix: prefix.to_owned(),
            redis,
            unannounced: Mutex::default(),
        })
    }

    /// Publish that `name` changed; kept for later when Redis cannot take it.
    async fn announce(&self, name: &str) {
        let channel = self.invalidation_channel();
        if let Err(e) = self
            .redis
            .call(&[b"PUBLISH", channel.as_bytes(), name.as_bytes()])
            .await
        {
            if !matches!(e, RedisError::Unavailable) {
                tracing::warn!(script = %name, error = %e, "could not announce a script change to the other nodes; will retry");
            }
            self.unannounced().insert(name.to_owned());
        }
    }

    /// Announce what could not be announced before.
    async fn announce_pending(&self) {
        let pending = std::mem::take(&mut *self.unannounced());
        for name in pending {
            self.announce(&name).await;
        }
    }

    fn unannounced(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.unannounced.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The channel registry writes are announced on.
    pub fn invalidation_channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }

    /// `ok`, or `degraded` while Redis is unreachable (or not reached yet).
    pub fn health(&self) -> &'static str {
        match self.redis.status() {
            Status::Up => "ok",
            Status::Down | Status::Unknown => "degraded",
        }
    }
}

impl AppState {
    /// Start a node's background work: the Redis monitor (after a first
    /// probe, so the status is known when this returns: at most one
    /// command timeout), the invalidation subscriber, then pre-warming.
    pub async fn start_background(&self) {
        tokio::spawn(super::keys::warn_untrusted_signers(self.clone()));
        let Some(cluster) = &self.shared.cluster else {
            tokio::spawn(self.clone().prewarm());
            return;
        };
        cluster.redis.probe().await;
        tokio::spawn(cluster.redis.clone().monitor());
        tokio::spawn(self.clone().follow_invalidations());
    }

    /// Tell the other nodes that `name` changed (in the background; if
    /// Redis cannot take it now, when this node reaches Redis again).
    pub(super) fn publish_invalidation(&self, name: &str) {
        if self.shared.cluster.is_none() {
            return;
        }
        let (state, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move {
            if let Some(cluster) = &state.shared.cluster {
                cluster.announce(&name).await;
            }
        });
    }

    /// Follow `<prefix>:invalidate` for the life of the server; pre-warm
    /// after the first attempt to subscribe (so a change announced while
    /// pre-warming is not missed).
    async fn follow_invalidations(self) {
        let Some(cluster) = &self.shared.cluster else {
            return;
        };
        let channel = cluster.invalidation_channel();
        let mut prewarm = Some(self.clone().prewarm());
        // Whether messages may have been missed: after any failure.
        let mut missed = false;
        let mut retry = RESUBSCRIBE_FIRST;
        loop {
            let subscription = cluster.redis.subscribe(&channel).await;
            if let Some(prewarm) = prewarm.take() {
                tokio::spawn(prewarm);
            }
            let mut subscription = match subscription {
                Ok(subscription) => subscription,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot subscribe to script invalidations");
                    missed = true;
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RESUBSCRIBE_MAX);
                    continue;
                }
            };
            let subscribed_at = Instant::now();
            if missed {
                self.shared.stored.invalidate_all();
                tracing::info!(
                    "following script invalidations again; dropped the stored-script cache (changes may have been missed)"
                );
                if !cluster.redis.is_up() {
                    // The pool finds out on its own within a second; the
                    // pending announcements need it now.
                    cluster.redis.probe().await;
                }
                cluster.announce_pending().await;
            }
            // `next_message` bounds each message itself; on any error the
            // connection (and whatever it half-read) is dropped here.
            loop {
                match subscription.next_message(SUBSCRIPTION_CHECK).await {
                    Ok(Some(payload)) => {
                        let name = String::from_utf8_lossy(&payload);
                        self.shared.stored.invalidate(&name);
                        self.shared.metrics.invalidation_received();
                        tracing::debug!(script = %name, "script invalidated by another node");
                    }
                    // A Redis sending what no Redis sends: worth a warning.
                    Err(e @ RedisError::Protocol(_)) => {
                        tracing::warn!(error = %e, "dropped the invalidation subscription: unexpected data from Redis");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "the invalidation subscription ended");
                        break;
                    }
                    // Quiet: give up on the connection if Redis is known down.
                    Ok(None) if cluster.redis.status() == Status::Down => break,
                    Ok(None) => {}
                }
            }
            drop(subscription);
            missed = true;
            // Back off unless the subscription had been healthy a while, so
            // a Redis that breaks every subscription at once (or a hostile
            // one) costs a reconnect a second, not a busy loop.
            if subscribed_at.elapsed() < SUBSCRIPTION_STABLE {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RESUBSCRIBE_MAX);
            } else {
                retry = RESUBSCRIBE_FIRST;
            }
        }
    }

    /// Load the `prewarm` most-run stored scripts into the caches.
    async fn prewarm(self) {
        let wanted = self.shared.config.prewarm;
        if wanted == 0 {
            return;
        }
        let started = Instant::now();
        let (names, signal) = match self.prewarm_candidates(wanted).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot choose scripts to pre-warm");
                return;
            }
        };
        let mut loaded = 0usize;
        for name in &names {
            match self.stored(name, None).await {
                Ok(Some(_)) => loaded += 1,
                Ok(None) => {}
                Err(e) => tracing::warn!(script = %name, error = ?e, "cannot pre-warm a stored script"),
            }
        }
        tracing::info!(
            scripts = loaded,
            took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            chosen_by = signal,
            "pre-warmed the stored-script cache"
        );
    }

    /// Up to `wanted` stored script names, most-run first (by the run rows
    /// among the latest audit rows), then the most recently updated; and
    /// which signal chose them.
    async fn prewarm_candidates(&self, wanted: usize) -> anyhow::Result<(Vec<String>, &'static str)> {
        let store = self.store();
        let mut scripts = store.list().await?;
        let query = AuditQuery {
            limit: PREWARM_AUDIT_ROWS,
            ..AuditQuery::default()
        };
        let mut runs: HashMap<String, u64> = HashMap::new();
        for row in store.audit_entries(&query).await? {
            if row.action == "run"
                && let Some(script) = row.script
            {
                *runs.entry(script).or_default() += 1;
            }
        }
        let signal = if runs.is_empty() {
            "most recently updated (no runs in the audit trail yet)"
        } else {
            "run count in the audit trail, then most recently updated"
        };
        // Most runs first; ties (and never-run scripts) by latest update.
        scripts.sort_by(|a, b| {
            let count = |name: &str| runs.get(name).copied().unwrap_or(0);
            count(&b.name)
                .cmp(&count(&a.name))
                .then_with(|| b.updated_at.cmp(&a.updated_at))
        });
        Ok((scripts.into_iter().take(wanted).map(|s| s.name).collect(), signal))
    }
}
