//! Protection middleware of `avap serve`:
//!
//! * [`cors`] and [`security_headers`] (outermost, tower-http layers):
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
//! * [`timeout`]: the outer bound of a request (tower's `Timeout`, 504 `RequestTimeout`); runs
//!   have their own, tighter wall-time limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
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
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use super::api_key_cache::ApiKeyCache;
use super::error::ApiError;
use super::playground::PlaygroundAsset;
use super::redis::{Redis, RedisError, Reply};

/// The most clients tracked at once.
const MAX_CLIENTS: usize = 100_000;
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
}

impl Default for ProtectConfig {
    fn default() -> ProtectConfig {
        ProtectConfig {
            rate_limit: 50,
            rate_burst: 100,
            request_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            hsts_max_age: 0,
        }
    }
}

/// The middleware state: the settings and the buckets.
#[derive(Debug, Clone)]
pub struct Protect {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ProtectConfig,
    /// `None` when rate limiting is off.
    limiter: Option<Limiter>,
    /// When the limiter last dropped clients whose buckets are full again.
    last_sweep: Mutex<Instant>,
    /// The cluster-wide limit, when Redis is configured.
    shared: Option<SharedLimit>,
    /// API keys the server has verified: a request is charged to its key
    /// only when the key is one of them ([`client_of`]).
    known_keys: Option<Arc<ApiKeyCache>>,
}

impl Protect {
    /// The middleware state; the rate limit goes through Redis when
    /// `shared` is given (this node's buckets are the fallback). With
    /// `known_keys`, requests with a key that cache knows as valid are
    /// charged to that key (each key its own budget); every other request
    /// to its peer address.
    pub fn new(config: ProtectConfig, shared: Option<SharedLimit>, known_keys: Option<Arc<ApiKeyCache>>) -> Protect {
        let limiter = quota(&config).map(|quota| Limiter::new(quota, BoundedStore::default(), MonotonicClock));
        Protect {
            inner: Arc::new(Inner {
                shared,
                known_keys,
                config,
                limiter,
                last_sweep: Mutex::new(Instant::now()),
            }),
        }
    }

    fn config(&self) -> &ProtectConfig {
        &self.inner.config
    }

    /// Admit one request of `client`, or the whole seconds to wait: by the
    /// cluster-wide limit when Redis answers, else by this node's bucket.
    async fn admit(&self, client: &str) -> Result<(), u64> {
        let config = self.config();
        if let Some(shared) = &self.inner.shared
            && let Ok(verdict) = shared.take(client, config.rate_limit, config.rate_burst.max(1)).await
        {
            return verdict;
        }
        self.check(client, Instant::now())
    }

    /// Admit one request of `client` by this node's limiter, or the whole seconds to wait.
    fn check(&self, client: &str, now: Instant) -> Result<(), u64> {
        let Some(limiter) = &self.inner.limiter else {
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

/// Paths never rate limited.
pub(crate) fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/health" | "/api/v1/info" | "/api/v1/metrics" | "/api/v1/openapi.json"
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

/// Middleware: the per-client limit, cluster-wide through Redis when it is
/// configured and reachable, else this node's token bucket.
pub async fn rate_limit(State(protect): State<Protect>, request: Request, next: Next) -> Response {
    let config = protect.config();
    if config.rate_limit == 0 || exempt(request.uri().path()) {
        return next.run(request).await;
    }
    match protect
        .admit(&client_of(&request, protect.inner.known_keys.as_deref()))
        .await
    {
        Ok(()) => next.run(request).await,
        Err(retry_after_secs) => ApiError::RateLimited { retry_after_secs }.into_response(),
    }
}

/// `router` under tower's `Timeout`: 504 `RequestTimeout` (our JSON
/// error, not an empty body) when it takes longer than `limit`; zero: no limit.
pub fn timeout<S: Clone + Send + Sync + 'static>(router: Router<S>, limit: Duration) -> Router<S> {
    if limit.is_zero() {
        return router;
    }
    let elapsed = move |_: tower::BoxError| async move { ApiError::RequestTimeout { limit }.into_response() };
    router.layer(
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(elapsed))
            .layer(tower::timeout::TimeoutLayer::new(limit)),
    )
}

/// CORS for the configured origins (exact matches), or none when there
/// are none: browsers then get no cross-origin access. Preflights are
/// answered by the layer itself; every response says `Vary: origin`.
pub fn cors(config: &ProtectConfig) -> Option<CorsLayer> {
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
/// configured.
pub fn security_headers<S: Clone + Send + Sync + 'static>(router: Router<S>, config: &ProtectConfig) -> Router<S> {
    let fixed = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    let mut router = router
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        // Overriding, whatever a handler (or a script's response) set: only
        // the playground's own files, marked by its handler, get its policy.
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            |response: &Response| Some(HeaderValue::from_static(csp_of(response))),
        ));
    for (name, value) in fixed {
        router = router.layer(SetResponseHeaderLayer::overriding(
            name,
            HeaderValue::from_static(value),
        ));
    }
    let hsts = (config.hsts_max_age > 0)
        .then(|| format!("max-age={}; includeSubDomains", config.hsts_max_age))
        .and_then(|v| HeaderValue::try_from(v).ok());
    match hsts {
        Some(hsts) => router.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            hsts,
        )),
        None => router,
    }
}

#[cfg(test)]
mod tests {
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
            verdicts.push(protect.admit("ip:1.2.3.4").await);
        }
        assert_eq!(verdicts, [Ok(()), Ok(()), Err(1)], "the local bucket (burst 2) applies");
    }

    #[tokio::test]
    async fn slow_requests_time_out() {
        use tower::ServiceExt as _;
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK
        };
        let app = timeout(
            Router::new()
                .route("/slow", axum::routing::get(slow))
                .route("/fast", axum::routing::get(|| async { StatusCode::OK })),
            Duration::from_millis(20),
        );
        let get = |path: &str| axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let response = app.clone().oneshot(get("/slow")).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["kind"], "RequestTimeout");
        assert_eq!(app.oneshot(get("/fast")).await.unwrap().status(), StatusCode::OK);
    }
}
