//! Protection middleware of `avap serve`:
//!
//! * [`cors_layer`] and [`security_headers`] (outermost, tower-http layers):
//!   CORS for the configured origins (preflights answered by the layer)
//!   and security headers on every response. HSTS only when
//!   `hsts_max_age` is set: the server speaks plain HTTP, so HSTS is for
//!   deployments behind a TLS-terminating proxy (browsers ignore it over
//!   plain HTTP anyway).
//! * [`rate_limit`]: GCRA per client (`governor`) on this node: the
//!   `avap_<id>` of a presented API key, else the peer IP. Its keyed
//!   state is ours ([`BoundedStore`]): at most 100,000 clients, newcomers
//!   sharing one bucket while it is full, so a flood of addresses can
//!   neither grow memory without bound nor pass unlimited. Over the limit → 429
//!   `RateLimited` with `Retry-After`. Health, info, metrics and the
//!   `OpenAPI` document are exempt. With Redis (`redis_url`) the limit is
//!   one for the whole cluster ([`SharedLimit`]: GCRA in one Lua script,
//!   one round trip per request); while Redis is unreachable each node
//!   falls back to its own bucket.
//! * [`timeout`]: the outer bound of a request (504 `RequestTimeout`); runs
//!   have their own, tighter wall-time limit.
//!
//! Rate, burst, request timeout and CORS origins change while serving
//! ([`Protect::reconfigure`], called by a reload).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::api_key_cache::ApiKeyCache;
use super::error::ApiError;
use super::playground::PlaygroundAsset;
use super::redis::{Redis, RedisError, Reply};

/// The most clients tracked at once.
const MAX_CLIENTS: usize = 100_000;
/// The most distinct route and script quotas with buckets of their own.
const MAX_QUOTAS: usize = 1024;
/// How often the map is swept for idle entries.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

const CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// The protection settings (`avap serve --rate-limit …`).
#[derive(Debug, Clone)]
pub struct ProtectConfig {
    /// Requests per second per client; 0 turns rate limiting off.
    pub rate_limit: u32,
    /// Requests a client may make at once before the rate applies.
    pub rate_burst: u32,
    /// The outer bound of a request; zero turns it off.
    pub request_timeout: Duration,
    /// Origins allowed to call the API from a browser (exact match).
    pub cors_origins: Vec<String>,
    /// `Strict-Transport-Security` max-age in seconds; 0 = not sent.
    pub hsts_max_age: u64,
    /// `[route_rate_limits]`: a path prefix → its own quota per client, on
    /// top of `rate_limit` (the longest matching prefix applies).
    pub route_limits: Vec<RouteLimit>,
}

/// One `[route_rate_limits]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLimit {
    /// A path prefix, matched on whole segments (`/api/v1/run/report`
    /// covers `/api/v1/run/report/x`, not `/api/v1/run/reports`).
    pub prefix: String,
    pub per_second: u32,
    pub burst: u32,
}

impl Default for ProtectConfig {
    fn default() -> ProtectConfig {
        ProtectConfig {
            rate_limit: 50,
            rate_burst: 100,
            request_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            hsts_max_age: 0,
            route_limits: Vec::new(),
        }
    }
}

/// The middleware state: the settings and the buckets. Cheap to clone; a
/// reload ([`Protect::reconfigure`]) changes the settings of every clone.
#[derive(Debug, Clone)]
pub struct Protect {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The settings in force and what is built from them.
    rules: ArcSwap<Rules>,
    /// When the limiter last dropped clients whose buckets are full again.
    last_sweep: Mutex<Instant>,
    /// The cluster-wide limit, when Redis is configured.
    shared: Option<SharedLimit>,
    /// API keys the server has verified: a request is charged to its key
    /// only when the key is one of them ([`client_of`]).
    known_keys: Option<Arc<ApiKeyCache>>,
    /// This node's buckets for the quotas of routes and stored scripts, one
    /// limiter per distinct quota (clients are keyed by route or script).
    quotas: Mutex<HashMap<(u32, u32), Arc<Limiter>>>,
}

/// One version of the settings, swapped whole by a reload.
#[derive(Debug)]
struct Rules {
    config: ProtectConfig,
    /// `None` when rate limiting is off.
    limiter: Option<Arc<Limiter>>,
    /// `None` when no origin is allowed.
    cors: Option<CorsLayer>,
}

impl Protect {
    /// The middleware state; the rate limit goes through Redis when
    /// `shared` is given (this node's buckets are the fallback). With
    /// `known_keys`, requests with a key that cache knows as valid are
    /// charged to that key (each key its own budget); every other request
    /// to its peer address.
    pub fn new(config: ProtectConfig, shared: Option<SharedLimit>, known_keys: Option<Arc<ApiKeyCache>>) -> Protect {
        Protect {
            inner: Arc::new(Inner {
                rules: ArcSwap::from_pointee(Rules::new(config, None)),
                shared,
                known_keys,
                last_sweep: Mutex::new(Instant::now()),
                quotas: Mutex::default(),
            }),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> ProtectConfig {
        self.inner.rules.load().config.clone()
    }

    /// Put `config` in force for the next requests. This node's buckets are
    /// kept unless the rate or the burst changed (then every client starts
    /// with a full bucket); the cluster's buckets in Redis always carry on.
    pub fn reconfigure(&self, config: ProtectConfig) {
        let old = self.inner.rules.load();
        self.inner.rules.store(Arc::new(Rules::new(config, Some(&old))));
    }

    /// Admit one request of `client`, or the whole seconds to wait: by the
    /// cluster-wide limit when Redis answers, else by this node's bucket.
    async fn admit(&self, rules: &Rules, client: &str) -> Result<(), u64> {
        let config = &rules.config;
        if let Some(shared) = &self.inner.shared
            && let Ok(verdict) = shared.take(client, config.rate_limit, config.rate_burst.max(1)).await
        {
            return verdict;
        }
        self.check(rules, client, Instant::now())
    }

    /// Admit one request of `client` under a quota of its own (a route's, a
    /// script's): through Redis when it answers, else this node's limiter
    /// of that quota.
    async fn admit_quota(&self, client: &str, per_second: u32, burst: u32) -> Result<(), u64> {
        if let Some(shared) = &self.inner.shared
            && let Ok(verdict) = shared.take(client, per_second, burst.max(1)).await
        {
            return verdict;
        }
        let limiter = {
            let mut quotas = self.inner.quotas.lock().unwrap_or_else(PoisonError::into_inner);
            if quotas.len() >= MAX_QUOTAS && !quotas.contains_key(&(per_second, burst)) {
                // So many distinct quotas only come from a registry full of
                // them; start over rather than grow (buckets refill anyway).
                quotas.clear();
            }
            let config = ProtectConfig {
                rate_limit: per_second,
                rate_burst: burst,
                ..ProtectConfig::default()
            };
            let Some(quota) = quota(&config) else { return Ok(()) };
            quotas
                .entry((per_second, burst))
                .or_insert_with(|| Arc::new(Limiter::new(quota, BoundedStore::default(), MonotonicClock)))
                .clone()
        };
        limiter.retain_recent();
        take(&limiter, client)
    }

    /// Admit one request to stored script `name` under its own `rate_limit`,
    /// charged to the client of the request being served ([`current_client`]);
    /// work without a client (a job) is not limited here.
    pub async fn admit_script(&self, name: &str, per_second: u32, burst: u32) -> Result<(), ApiError> {
        let Some(client) = current_client() else {
            return Ok(());
        };
        self.admit_quota(&format!("script:{name}|{client}"), per_second, burst)
            .await
            .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })
    }

    /// Admit one request of `client` by this node's limiter, or the whole seconds to wait.
    fn check(&self, rules: &Rules, client: &str, now: Instant) -> Result<(), u64> {
        let Some(limiter) = &rules.limiter else {
            return Ok(());
        };
        {
            let mut last_sweep = self.inner.last_sweep.lock().unwrap_or_else(PoisonError::into_inner);
            if now.duration_since(*last_sweep) >= SWEEP_EVERY || limiter.len() >= MAX_CLIENTS {
                *last_sweep = now;
                limiter.retain_recent();
            }
        }
        take(limiter, client)
    }
}

impl Rules {
    /// The rules of `config`, keeping `old`'s buckets when the quota is the same.
    fn new(config: ProtectConfig, old: Option<&Rules>) -> Rules {
        let same_quota = old.is_some_and(|old| {
            (old.config.rate_limit, old.config.rate_burst) == (config.rate_limit, config.rate_burst)
        });
        let limiter = match old {
            Some(old) if same_quota => old.limiter.clone(),
            _ => quota(&config).map(|quota| Arc::new(Limiter::new(quota, BoundedStore::default(), MonotonicClock))),
        };
        Rules {
            cors: cors(&config),
            limiter,
            config,
        }
    }
}

/// `rate_limit` per second with bursts of `rate_burst`; `None` when off.
fn quota(config: &ProtectConfig) -> Option<Quota> {
    let rate = NonZeroU32::new(config.rate_limit)?;
    let burst = NonZeroU32::new(config.rate_burst).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// One request of `client`, or the whole seconds to wait (at least 1).
fn take<C: Clock>(limiter: &Limiter<C>, client: &str) -> Result<(), u64> {
    limiter.check_key(&client.to_owned()).map_err(|not_until| {
        let wait = not_until.wait_time_from(limiter.clock().now());
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
    })
}

/// This node's rate limiter: `governor`'s GCRA over [`BoundedStore`].
type Limiter<C = MonotonicClock> = RateLimiter<String, BoundedStore, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The bucket newcomers share while the table is full of active clients.
const OVERFLOW_CLIENT: &str = "overflow";

/// The limiter's state (each client's theoretical arrival time), bounded:
/// while [`MAX_CLIENTS`] clients are tracked, newcomers share one bucket
/// rather than grow the table without bound (or pass untracked, which would
/// let a flood from many addresses through unlimited). Clients whose
/// buckets are full again are dropped by `retain_recent` (every
/// [`SWEEP_EVERY`], and whenever the table is full).
#[derive(Debug, Default)]
struct BoundedStore(Mutex<HashMap<String, Nanos>>);

impl BoundedStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Nanos>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StateStore for BoundedStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut states = self.lock();
        let key = if states.len() >= MAX_CLIENTS && !states.contains_key(key) {
            OVERFLOW_CLIENT
        } else {
            key
        };
        let (outcome, next) = f(states.get(key).copied())?;
        match states.get_mut(key) {
            Some(state) => *state = next,
            None => {
                states.insert(key.to_owned(), next);
            }
        }
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<String> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.lock().retain(|_, tat| *tat >= drop_below);
    }

    fn shrink_to_fit(&self) {
        self.lock().shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// GCRA over one key per client holding the "theoretical arrival time" of
/// its next request, in milliseconds of Redis' clock (one clock for every
/// node). A client may send `burst` requests at once, then one per
/// `1/rate` s. Returns `{1, 0}` (allowed) or `{0, seconds to wait}`.
const GCRA: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local interval = 1000 / rate
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - burst * interval
if allowed_at > now then
  return {0, math.ceil((allowed_at - now) / 1000)}
end
redis.call('SET', KEYS[1], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return {1, 0}
";

/// The rate limit shared by every node through Redis.
#[derive(Debug, Clone)]
pub struct SharedLimit {
    redis: Redis,
    prefix: String,
    /// [`GCRA`], sent by its SHA-1 (and whole after a Redis restart).
    script: Arc<::redis::Script>,
}

impl SharedLimit {
    pub fn new(redis: Redis, prefix: &str) -> SharedLimit {
        SharedLimit {
            redis,
            prefix: prefix.to_owned(),
            script: Arc::new(::redis::Script::new(GCRA)),
        }
    }

    /// Take one request for `client`: `Ok(Ok(()))`, `Ok(Err(seconds to
    /// wait))`, or `Err` when Redis cannot say (the caller falls back).
    /// One round trip once Redis knows the script.
    async fn take(&self, client: &str, rate: u32, burst: u32) -> Result<Result<(), u64>, RedisError> {
        let key = format!("{}:rate:{client}", self.prefix);
        let (rate, burst) = (rate.to_string(), burst.to_string());
        let reply = self
            .redis
            .script(&self.script, &[&key], &[rate.as_bytes(), burst.as_bytes()])
            .await?;
        match reply {
            Reply::Array(items) => match items.as_slice() {
                [Reply::Int(1), _] => Ok(Ok(())),
                [Reply::Int(0), Reply::Int(wait)] => Ok(Err(u64::try_from(*wait).unwrap_or(1).max(1))),
                _ => Err(RedisError::Protocol(format!(
                    "the rate-limit script answered {items:?}"
                ))),
            },
            other => Err(RedisError::Protocol(format!(
                "the rate-limit script answered {other:?}"
            ))),
        }
    }
}

/// Paths never rate limited; the reload too, so a limit set too tight can
/// always be undone (it needs the `admin` scope).
pub(crate) fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/health" | "/api/v1/info" | "/api/v1/metrics" | "/api/v1/openapi.json" | "/api/v1/admin/reload"
    )
}

/// `key:<id>` for a request presenting a key the server has already
/// verified (`known`), else `ip:<peer>`. The limit runs before the key is
/// checked, so a key that is merely well formed must not choose the bucket:
/// made-up ids would each get a fresh budget (and a database lookup), and a
/// borrowed id would drain its owner's.
fn client_of(request: &Request, known: Option<&ApiKeyCache>) -> String {
    let headers = request.headers();
    if let Some(known) = known
        && let Ok(Some(key)) = super::auth::presented_key(headers)
        && let Some(id) = known.verified_id(key)
    {
        return format!("key:{id}");
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
        None => "ip:unknown".to_owned(),
    }
}

tokio::task_local! {
    /// The rate-limit client (`key:<id>` or `ip:<addr>`) of the request
    /// being served, for the limits handlers apply (stored scripts').
    static CLIENT: String;
}

/// The client of the request this task serves, if any.
pub fn current_client() -> Option<String> {
    CLIENT.try_with(Clone::clone).ok()
}

/// The per-client limit, then the route's own (`[route_rate_limits]`,
/// longest prefix), cluster-wide through Redis when it is configured and
/// reachable, else this node's token buckets; then `inner`. The client is
/// kept for the handlers ([`current_client`]).
async fn limited<F, Fut>(protect: &Protect, request: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let path = request.uri().path();
    if exempt(path) {
        return inner(request).await;
    }
    let rules = protect.inner.rules.load_full();
    let client = client_of(&request, protect.inner.known_keys.as_deref());
    let route = route_limit(&rules.config.route_limits, path);
    let mut verdict = Ok(());
    if rules.config.rate_limit > 0 {
        verdict = protect.admit(&rules, &client).await;
    }
    if verdict.is_ok()
        && let Some(route) = route
    {
        let key = format!("route:{}|{client}", route.prefix);
        verdict = protect.admit_quota(&key, route.per_second, route.burst).await;
    }
    match verdict {
        Ok(()) => CLIENT.scope(client, inner(request)).await,
        Err(retry_after_secs) => ApiError::RateLimited { retry_after_secs }.into_response(),
    }
}

/// Middleware: the rate limits ([`limited`]), then the request timeout
/// ([`bounded`]) around the rest, in one layer: each `from_fn` layer costs
/// every request a clone of the service it wraps and a boxed future.
pub async fn gate(State(protect): State<Protect>, request: Request, next: Next) -> Response {
    limited(&protect, request, |request| bounded(&protect, next.run(request))).await
}

/// The entry of the longest prefix of `path` (on segment boundaries).
fn route_limit<'a>(limits: &'a [RouteLimit], path: &str) -> Option<&'a RouteLimit> {
    limits
        .iter()
        .filter(|limit| {
            let prefix = limit.prefix.trim_end_matches('/');
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|limit| limit.prefix.len())
}

/// The outer bound of a request, `request_timeout_ms` as in force when the
/// request arrives: 504 `RequestTimeout` (our JSON error, not an empty
/// body) when `response` takes longer; zero: no limit.
async fn bounded(protect: &Protect, response: impl std::future::Future<Output = Response>) -> Response {
    let limit = protect.inner.rules.load().config.request_timeout;
    if limit.is_zero() {
        return response.await;
    }
    match tokio::time::timeout(limit, response).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout { limit }.into_response(),
    }
}

/// Middleware: CORS for the origins in force ([`cors`]); without origins
/// the request passes untouched (no preflight answers, no CORS headers).
pub async fn cors_layer(State(protect): State<Protect>, request: Request, next: Next) -> Response {
    let cors = protect.inner.rules.load().cors.clone();
    match cors {
        None => next.run(request).await,
        Some(cors) => match cors.layer(next).oneshot(request).await {
            Ok(response) => response.map(axum::body::Body::new),
            Err(never) => match never {},
        },
    }
}

/// CORS for the configured origins (exact matches), or none when there
/// are none: browsers then get no cross-origin access. Preflights are
/// answered by the layer itself; every response says `Vary: origin`.
fn cors(config: &ProtectConfig) -> Option<CorsLayer> {
    if config.cors_origins.is_empty() {
        return None;
    }
    // The configuration checked every origin at start.
    let origins = config.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok());
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static(super::execute::USAGE_HEADER),
            ])
            .max_age(Duration::from_mins(10))
            .vary([header::ORIGIN]),
    )
}

/// The content security policy of a response: closed, except for the
/// playground's files ([`PAGE_CSP`](super::playground::PAGE_CSP)).
fn csp_of(response: &Response) -> &'static str {
    if response.extensions().get::<PlaygroundAsset>().is_some() {
        super::playground::PAGE_CSP
    } else {
        CSP
    }
}

/// The security headers of every response: no sniffing, no framing, no
/// referrer, a closed CSP (the playground's files have their own),
/// `Cache-Control: no-store` unless the handler chose (registry reads and
/// the playground send `no-cache` with their `ETag`), and HSTS when
/// configured. One value applied by one layer (`map_response`), not a
/// layer per header: every layer is a service cloned per request.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    hsts: Option<HeaderValue>,
}

impl SecurityHeaders {
    pub fn new(config: &ProtectConfig) -> SecurityHeaders {
        let hsts = (config.hsts_max_age > 0)
            .then(|| format!("max-age={}; includeSubDomains", config.hsts_max_age))
            .and_then(|v| HeaderValue::try_from(v).ok());
        SecurityHeaders { hsts }
    }

    /// Set the headers on `response`. All but `Cache-Control` override
    /// whatever a handler (or a script's response) set: only the
    /// playground's own files, marked by its handler, get its policy.
    pub fn apply(&self, mut response: Response) -> Response {
        let csp = HeaderValue::from_static(csp_of(&response));
        let headers = response.headers_mut();
        if !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        if let Some(hsts) = &self.hsts {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::StatusCode;
    use governor::clock::FakeRelativeClock;

    use super::*;

    /// A limiter on a clock the test moves.
    fn limiter(rate: u32, burst: u32) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let config = ProtectConfig {
            rate_limit: rate,
            rate_burst: burst,
            ..ProtectConfig::default()
        };
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::new(quota(&config).unwrap(), BoundedStore::default(), clock.clone());
        (limiter, clock)
    }

    #[test]
    fn buckets_refill_at_the_rate() {
        let (limiter, clock) = limiter(2, 2);
        assert_eq!(take(&limiter, "a"), Ok(()));
        assert_eq!(take(&limiter, "a"), Ok(()));
        assert_eq!(take(&limiter, "a"), Err(1));
        assert_eq!(take(&limiter, "b"), Ok(()), "clients are separate");
        clock.advance(Duration::from_millis(500));
        assert_eq!(take(&limiter, "a"), Ok(()));
        assert_eq!(take(&limiter, "a"), Err(1));
        // A slow rate asks for a longer wait.
        let (slow, _) = limiter_per(Quota::with_period(Duration::from_secs(10)).unwrap());
        assert_eq!(take(&slow, "c"), Ok(()));
        assert_eq!(take(&slow, "c"), Err(10));
    }

    fn limiter_per(quota: Quota) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Limiter::new(quota, BoundedStore::default(), clock.clone()), clock)
    }

    #[test]
    fn clients_with_full_buckets_are_dropped() {
        let (limiter, clock) = limiter(1, 1);
        take(&limiter, "a").unwrap();
        assert_eq!(limiter.len(), 1);
        // governor keeps a state one emission interval past its refill.
        clock.advance(Duration::from_secs(3));
        take(&limiter, "b").unwrap();
        limiter.retain_recent();
        assert_eq!(limiter.len(), 1, "only b still owes time");
        assert_eq!(take(&limiter, "a"), Ok(()), "a starts over with a full bucket");
    }

    #[tokio::test]
    async fn clients_are_verified_keys_or_addresses() {
        let store = super::super::store::Store::in_memory().await.unwrap();
        let key = super::super::auth::generate().unwrap();
        store.create_api_key(&key.id, None, &key.hash, "execute").await.unwrap();
        let known = ApiKeyCache::default();
        let mut request = Request::new(axum::body::Body::empty());
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 5000))));
        assert_eq!(client_of(&request, Some(&known)), "ip:10.0.0.1");
        // A made-up id, and a real key not verified yet: charged to the address.
        request
            .headers_mut()
            .insert("x-api-key", HeaderValue::from_static("avap_0123abcd_secret"));
        assert_eq!(client_of(&request, Some(&known)), "ip:10.0.0.1");
        let bearer = HeaderValue::try_from(format!("Bearer {}", key.key)).unwrap();
        request.headers_mut().insert(header::AUTHORIZATION, bearer);
        assert_eq!(client_of(&request, Some(&known)), "ip:10.0.0.1");
        // Once the server has verified it, the key has its own budget.
        known.get(&store, &key.id).await.unwrap();
        assert_eq!(client_of(&request, Some(&known)), format!("key:{}", key.id));
        // Its id with another secret is someone else: the address again.
        let forged = HeaderValue::try_from(format!("Bearer avap_{}_{}", key.id, "0".repeat(64))).unwrap();
        request.headers_mut().insert(header::AUTHORIZATION, forged);
        assert_eq!(client_of(&request, Some(&known)), "ip:10.0.0.1");
        assert!(exempt("/api/v1/health"));
        assert!(!exempt("/api/v1/execute"));
    }

    #[test]
    fn newcomers_share_one_bucket_while_the_table_is_full() {
        let (limiter, _) = limiter(1, 1);
        for i in 0..MAX_CLIENTS {
            take(&limiter, &format!("c{i}")).unwrap();
        }
        assert_eq!(take(&limiter, "new-1"), Ok(()), "the overflow bucket's first token");
        assert_eq!(take(&limiter, "new-2"), Err(1), "newcomers share it");
        assert_eq!(take(&limiter, "c7"), Err(1), "known clients keep their own bucket");
        assert_eq!(
            limiter.len(),
            MAX_CLIENTS + 1,
            "the table does not grow past the overflow bucket"
        );
    }

    /// Two limiters on one prefix: two nodes of a cluster.
    async fn two_nodes(prefix: &str) -> (SharedLimit, SharedLimit) {
        let node = || {
            let url = super::super::redis::RedisUrl::parse("redis://127.0.0.1:6379").unwrap();
            let redis = Redis::new(url, None, prometheus_client::metrics::counter::Counter::default()).unwrap();
            SharedLimit::new(redis, prefix)
        };
        let (a, b) = (node(), node());
        assert!(a.redis.probe().await && b.redis.probe().await, "the test Redis answers");
        (a, b)
    }

    fn prefix(tag: &str) -> String {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        format!("avap-test-{tag}-{}", hex::encode(bytes))
    }

    #[tokio::test]
    async fn the_shared_limit_holds_across_nodes() {
        let (a, b) = two_nodes(&prefix("gcra")).await;
        for _ in 0..5 {
            assert_eq!(a.take("ip:10.0.0.1", 1, 5).await, Ok(Ok(())));
        }
        assert_eq!(
            b.take("ip:10.0.0.1", 1, 5).await,
            Ok(Err(1)),
            "the burst is spent cluster-wide"
        );
        assert_eq!(b.take("ip:10.0.0.2", 1, 5).await, Ok(Ok(())), "clients are separate");
        // A slow rate asks for a longer wait.
        assert_eq!(a.take("key:slow", 1, 1).await, Ok(Ok(())));
        let wait = a.take("key:slow", 1, 1).await;
        assert_eq!(wait, Ok(Err(1)));
        tokio::time::sleep(Duration::from_millis(1050)).await;
        assert_eq!(b.take("key:slow", 1, 1).await, Ok(Ok(())), "refilled at the rate");
    }

    #[tokio::test]
    async fn a_forgotten_script_is_sent_again() {
        let (a, _) = two_nodes(&prefix("noscript")).await;
        assert_eq!(a.take("ip:10.0.0.3", 10, 2).await, Ok(Ok(())));
        // As after a Redis restart: Redis no longer knows the script.
        a.redis.call(&[b"SCRIPT", b"FLUSH"]).await.unwrap();
        assert_eq!(a.take("ip:10.0.0.3", 10, 2).await, Ok(Ok(())));
        assert_eq!(a.take("ip:10.0.0.3", 10, 2).await, Ok(Err(1)));
    }

    #[tokio::test]
    async fn without_redis_the_local_bucket_decides() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = super::super::redis::RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        let redis = Redis::new(url, None, prometheus_client::metrics::counter::Counter::default()).unwrap();
        assert!(!redis.probe().await);
        let shared = SharedLimit::new(redis, "x");
        assert_eq!(shared.take("ip:1.2.3.4", 1, 1).await, Err(RedisError::Unavailable));
        let protect = Protect::new(
            ProtectConfig {
                rate_limit: 1,
                rate_burst: 2,
                ..ProtectConfig::default()
            },
            Some(shared),
            None,
        );
        let mut verdicts = Vec::new();
        for _ in 0..3 {
            verdicts.push(protect.admit(&protect.inner.rules.load(), "ip:1.2.3.4").await);
        }
        assert_eq!(verdicts, [Ok(()), Ok(()), Err(1)], "the local bucket (burst 2) applies");
    }

    /// Three requests of one client under the rules in force.
    fn three_takes(protect: &Protect) -> Vec<Result<(), u64>> {
        let rules = protect.inner.rules.load();
        (0..3)
            .map(|_| protect.check(&rules, "ip:10.9.9.9", Instant::now()))
            .collect()
    }

    #[test]
    fn a_reconfigured_quota_applies_to_the_next_request() {
        let config = |rate_limit, rate_burst| ProtectConfig {
            rate_limit,
            rate_burst,
            ..ProtectConfig::default()
        };
        let protect = Protect::new(config(1, 1), None, None);
        assert_eq!(three_takes(&protect), [Ok(()), Err(1), Err(1)]);
        // The same quota with another timeout keeps the buckets (still empty).
        protect.reconfigure(ProtectConfig {
            request_timeout: Duration::from_secs(1),
            ..config(1, 1)
        });
        assert_eq!(three_takes(&protect)[0], Err(1), "buckets kept");
        assert_eq!(protect.config().request_timeout, Duration::from_secs(1));
        // A larger burst: fresh buckets under the new quota.
        protect.reconfigure(config(1, 3));
        assert_eq!(three_takes(&protect), [Ok(()), Ok(()), Ok(())]);
        protect.reconfigure(config(0, 3));
        assert!(protect.inner.rules.load().limiter.is_none(), "0 turns the limit off");
    }

    #[tokio::test]
    async fn slow_requests_time_out() {
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK
        };
        let protect = Protect::new(
            ProtectConfig {
                request_timeout: Duration::from_millis(20),
                ..ProtectConfig::default()
            },
            None,
            None,
        );
        let app: Router = Router::new()
            .route("/slow", axum::routing::get(slow))
            .route("/fast", axum::routing::get(|| async { StatusCode::OK }))
            .layer(axum::middleware::from_fn_with_state(protect, gate));
        let get = |path: &str| axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let response = app.clone().oneshot(get("/slow")).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["kind"], "RequestTimeout");
        assert_eq!(app.oneshot(get("/fast")).await.unwrap().status(), StatusCode::OK);
    }
}
