//! Circuit breakers and bulkheads for outbound hosts (`RequestGet`,
//! `RequestPost`, `functionAI`), one of each per `host:port`, and for
//! databases (the `orm*` commands and connectors), one of each per
//! configured database. [`Keys`] says which configuration keys the
//! messages name.
//!
//! * **Breaker.** Each host keeps the outcomes of its last [`WINDOW`] calls.
//!   A call fails when it cannot connect, times out, answers 5xx, or takes
//!   `slow_ms` or longer. Once `min_calls` are known and `failure_pct` % of
//!   them failed, the circuit **opens**: calls to that host fail at once
//!   with `HttpError` ("circuit open …") for `open_ms`, holding no run slot
//!   and no socket. Then it is **half open**: one probe at a time goes
//!   through; [`PROBES`] successes close it, a failure opens it again.
//! * **Bulkhead.** At most `max_concurrent` calls to one host at once; one
//!   more fails at once with `HttpError` ("too many calls at once …"), so
//!   one slow upstream cannot hold every run slot of the server.
//!
//! Every state change is logged; [`Breakers::stats`] counts them for the
//! metrics. The host table is bounded ([`MAX_HOSTS`]): closed, idle hosts
//! are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Outcomes kept per host.
pub const WINDOW: usize = 20;
/// Successful probes that close a half-open circuit.
pub const PROBES: u32 = 3;
/// Hosts tracked at once.
const MAX_HOSTS: usize = 10_000;

/// The `outbound_breaker_*` and `outbound_max_concurrent_per_host` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failed calls among the last ones, in percent, that open the
    /// circuit; 0 turns breakers off.
    pub failure_pct: u8,
    /// A call this slow (ms) counts as failed; 0: only errors count.
    pub slow_ms: u64,
    /// Calls known before the failure rate is judged (1 to [`WINDOW`]).
    pub min_calls: u32,
    /// How long an open circuit refuses calls, in ms.
    pub open_ms: u64,
    /// Calls to one host at once; 0: no cap.
    pub max_concurrent: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_pct: 50,
            slow_ms: 10_000,
            min_calls: 10,
            open_ms: 30_000,
            max_concurrent: 32,
        }
    }
}

impl BreakerConfig {
    fn is_off(&self) -> bool {
        self.failure_pct == 0 && self.max_concurrent == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool, successes: u32 },
}

#[derive(Debug)]
struct Host {
    state: State,
    /// `true` for a failed call, newest last.
    outcomes: VecDeque<bool>,
    in_flight: usize,
}

impl Host {
    fn new() -> Host {
        Host {
            state: State::Closed,
            outcomes: VecDeque::with_capacity(WINDOW),
            in_flight: 0,
        }
    }

    fn failures(&self) -> usize {
        self.outcomes.iter().filter(|&&failed| failed).count()
    }
}

/// The configuration keys a set of breakers answers to, for its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// The breaker's keys (`outbound_breaker_*`).
    pub breaker: &'static str,
    /// The bulkhead's key (`outbound_max_concurrent_per_host`).
    pub bulkhead: &'static str,
}

impl Keys {
    /// Outbound HTTP hosts.
    pub const OUTBOUND: Keys = Keys {
        breaker: "outbound_breaker_*",
        bulkhead: "outbound_max_concurrent_per_host",
    };
    /// Databases.
    pub const DATABASE: Keys = Keys {
        breaker: "db_breaker_*",
        bulkhead: "db_max_concurrent_statements",
    };
}

/// Why a call was refused before it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The circuit is open (or half open with its probe out).
    Open {
        host: String,
        retry_in: Duration,
        keys: Keys,
    },
    /// The host's bulkhead is full.
    Busy { host: String, limit: usize, keys: Keys },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Open { host, retry_in, keys } => write!(
                f,
                "circuit open for {host}: too many of its recent calls failed or were slow, so calls to it \
                 fail at once for another {} s ({})",
                retry_in.as_secs().max(1),
                keys.breaker
            ),
            Refusal::Busy { host, limit, keys } => write!(
                f,
                "too many calls at once to {host}: {limit} are in progress ({})",
                keys.bulkhead
            ),
        }
    }
}

/// Counters for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerStats {
    /// Circuits open or half open now.
    pub open: usize,
    pub opened_total: u64,
    pub closed_total: u64,
    /// Calls refused because a circuit was open.
    pub refused_open_total: u64,
    /// Calls refused because a bulkhead was full.
    pub refused_busy_total: u64,
}

/// The breakers and bulkheads of one process.
#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    keys: Keys,
    hosts: Mutex<HashMap<String, Host>>,
    opened: AtomicU64,
    closed: AtomicU64,
    refused_open: AtomicU64,
    refused_busy: AtomicU64,
}

impl Breakers {
    /// Breakers for outbound hosts; `None` when the configuration turns
    /// both off.
    pub fn new(config: BreakerConfig) -> Option<Arc<Breakers>> {
        Breakers::named(config, Keys::OUTBOUND)
    }

    /// Breakers whose messages name `keys`; `None` when the configuration
    /// turns both off.
    pub fn named(config: BreakerConfig, keys: Keys) -> Option<Arc<Breakers>> {
        (!config.is_off()).then(|| {
            Arc::new(Breakers {
                config,
                keys,
                hosts: Mutex::new(HashMap::new()),
                opened: AtomicU64::new(0),
                closed: AtomicU64::new(0),
                refused_open: AtomicU64::new(0),
                refused_busy: AtomicU64::new(0),
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Host>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Let one call to `host` (`host:port`) start, or say why not.
    pub fn admit(self: &Arc<Self>, host: &str) -> Result<Permit, Refusal> {
        self.admit_at(host, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, host: &str, now: Instant) -> Result<Permit, Refusal> {
        let mut hosts = self.lock();
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(host) {
            hosts.retain(|_, h| h.in_flight > 0 || h.state != State::Closed);
        }
        let entry = hosts.entry(host.to_owned()).or_insert_with(Host::new);
        let mut probe = false;
        match entry.state {
            State::Open { until } if now < until => {
                self.refused_open.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Open {
                    host: host.to_owned(),
                    retry_in: until - now,
                    keys: self.keys,
                });
            }
            State::Open { .. } => {
                tracing::info!(host, "circuit half open: one call at a time probes {host}");
                entry.state = State::HalfOpen {
                    probing: true,
                    successes: 0,
                };
                probe = true;
            }
            State::HalfOpen { probing: true, .. } => {
                self.refused_open.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Open {
                    host: host.to_owned(),
                    retry_in: Duration::from_secs(1),
                    keys: self.keys,
                });
            }
            State::HalfOpen {
                probing: false,
                successes,
            } => {
                entry.state = State::HalfOpen {
                    probing: true,
                    successes,
                };
                probe = true;
            }
            State::Closed => {}
        }
        let limit = self.config.max_concurrent;
        if limit > 0 && entry.in_flight >= limit {
            if probe && let State::HalfOpen { successes, .. } = entry.state {
                entry.state = State::HalfOpen {
                    probing: false,
                    successes,
                };
            }
            self.refused_busy.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Busy {
                host: host.to_owned(),
                limit,
                keys: self.keys,
            });
        }
        entry.in_flight += 1;
        Ok(Permit {
            breakers: Arc::clone(self),
            host: host.to_owned(),
            started: now,
            finished: false,
        })
    }

    /// Note how a call ended.
    fn finish(&self, host: &str, failed: bool, now: Instant) {
        let mut hosts = self.lock();
        let Some(entry) = hosts.get_mut(host) else { return };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if self.config.failure_pct == 0 {
            return;
        }
        match entry.state {
            State::Closed => {
                if entry.outcomes.len() == WINDOW {
                    entry.outcomes.pop_front();
                }
                entry.outcomes.push_back(failed);
                let calls = entry.outcomes.len();
                let failures = entry.failures();
                let min_calls = usize::try_from(self.config.min_calls)
                    .unwrap_or(WINDOW)
                    .clamp(1, WINDOW);
                if calls >= min_calls && failures * 100 >= usize::from(self.config.failure_pct) * calls {
                    self.open(
                        host,
                        entry,
                        now,
                        &format!("{failures} of its last {calls} calls failed or were slow"),
                    );
                }
            }
            State::HalfOpen { successes, .. } => {
                if failed {
                    self.open(host, entry, now, "the probe failed");
                } else if successes + 1 >= PROBES {
                    entry.state = State::Closed;
                    entry.outcomes.clear();
                    self.closed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(host, "circuit closed: {host} answers again");
                } else {
                    entry.state = State::HalfOpen {
                        probing: false,
                        successes: successes + 1,
                    };
                }
            }
            // A call admitted before the circuit opened.
            State::Open { .. } => {}
        }
    }

    fn open(&self, host: &str, entry: &mut Host, now: Instant, why: &str) {
        let open_for = Duration::from_millis(self.config.open_ms);
        entry.state = State::Open { until: now + open_for };
        entry.outcomes.clear();
        self.opened.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            host,
            "circuit open for {host}: {why}; calls to it fail at once for {} ms",
            self.config.open_ms
        );
    }

    /// How many circuits are open, and what happened so far.
    pub fn stats(&self) -> BreakerStats {
        let open = self.lock().values().filter(|h| h.state != State::Closed).count();
        BreakerStats {
            open,
            opened_total: self.opened.load(Ordering::Relaxed),
            closed_total: self.closed.load(Ordering::Relaxed),
            refused_open_total: self.refused_open.load(Ordering::Relaxed),
            refused_busy_total: self.refused_busy.load(Ordering::Relaxed),
        }
    }

    /// The slowness threshold, if any.
    pub fn slow(&self) -> Option<Duration> {
        (self.config.slow_ms > 0).then(|| Duration::from_millis(self.config.slow_ms))
    }
}

/// One admitted call. [`Permit::finish`] reports its outcome; dropped
/// unfinished (the call was abandoned: the run's timeout, a cancelled
/// run), it counts as failed only when it had already been slow.
#[derive(Debug)]
pub struct Permit {
    breakers: Arc<Breakers>,
    host: String,
    started: Instant,
    finished: bool,
}

impl Permit {
    /// The call ended; `failed` when it could not connect or answered 5xx.
    /// A slow call counts as failed either way.
    pub fn finish(mut self, failed: bool) {
        self.finished = true;
        let now = Instant::now();
        let failed = failed || self.was_slow(now);
        self.breakers.finish(&self.host, failed, now);
    }

    fn was_slow(&self, now: Instant) -> bool {
        self.breakers
            .slow()
            .is_some_and(|slow| now.duration_since(self.started) >= slow)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.finished {
            let now = Instant::now();
            let slow = self.was_slow(now);
            self.breakers.finish(&self.host, slow, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(config: BreakerConfig) -> Arc<Breakers> {
        Breakers::new(config).expect("on")
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_pct: 50,
            slow_ms: 0,
            min_calls: 4,
            open_ms: 1000,
            max_concurrent: 2,
        }
    }

    /// One call at `now` that fails or not.
    fn call(b: &Arc<Breakers>, now: Instant, failed: bool) -> Result<(), Refusal> {
        let permit = b.admit_at("h:80", now)?;
        b.finish("h:80", failed, now);
        std::mem::forget(permit);
        Ok(())
    }

    #[test]
    fn failures_open_the_circuit_then_probes_close_it() {
        let b = breakers(config());
        let t0 = Instant::now();
        for failed in [false, true, false] {
            call(&b, t0, failed).unwrap();
        }
        call(&b, t0, true).unwrap();
        // 2 of 4 failed: 50 % opens it.
        let refused = call(&b, t0, false).unwrap_err();
        assert!(matches!(refused, Refusal::Open { .. }), "{refused:?}");
        assert!(refused.to_string().starts_with("circuit open for h:80"), "{refused}");
        assert_eq!(b.stats().open, 1);
        // After open_ms: one probe at a time.
        let later = t0 + Duration::from_secs(1);
        let probe = b.admit_at("h:80", later).unwrap();
        assert!(
            matches!(b.admit_at("h:80", later), Err(Refusal::Open { .. })),
            "one probe at a time"
        );
        b.finish("h:80", false, later);
        std::mem::forget(probe);
        for _ in 1..PROBES {
            call(&b, later, false).unwrap();
        }
        assert_eq!(b.stats().open, 0, "closed after {PROBES} good probes");
        assert_eq!((b.stats().opened_total, b.stats().closed_total), (1, 1));
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let b = breakers(BreakerConfig {
            min_calls: 1,
            ..config()
        });
        let t0 = Instant::now();
        call(&b, t0, true).unwrap();
        let later = t0 + Duration::from_secs(1);
        call(&b, later, true).unwrap();
        assert!(matches!(call(&b, later, false), Err(Refusal::Open { .. })));
        assert_eq!(b.stats().opened_total, 2);
    }

    #[test]
    fn the_bulkhead_caps_calls_at_once() {
        let b = breakers(config());
        let t0 = Instant::now();
        let one = b.admit_at("h:80", t0).unwrap();
        let _two = b.admit_at("h:80", t0).unwrap();
        let refused = b.admit_at("h:80", t0).unwrap_err();
        assert_eq!(
            refused,
            Refusal::Busy {
                host: "h:80".into(),
                limit: 2,
                keys: Keys::OUTBOUND,
            }
        );
        assert!(b.admit_at("other:80", t0).is_ok(), "per host");
        drop(one);
        assert!(b.admit_at("h:80", t0).is_ok(), "a slot is free again");
        assert_eq!(b.stats().refused_busy_total, 1);
    }

    #[test]
    fn slow_calls_count_as_failures_and_abandoned_fast_ones_do_not() {
        let b = breakers(BreakerConfig {
            slow_ms: 1,
            min_calls: 1,
            ..config()
        });
        b.admit("fast:80").unwrap().finish(false);
        drop(b.admit("quick-abandon:80").unwrap());
        assert_eq!(b.stats().open, 0);
        let slow = b.admit("slow:80").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        slow.finish(false);
        assert_eq!(b.stats().open, 1, "a slow success is a failure");
        assert!(b.admit("slow:80").is_err());
    }

    #[test]
    fn off_when_configured_off() {
        assert!(
            Breakers::new(BreakerConfig {
                failure_pct: 0,
                max_concurrent: 0,
                ..config()
            })
            .is_none()
        );
    }
}
