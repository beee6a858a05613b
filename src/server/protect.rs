//! Protection middleware of `avap serve`:
//!
//! * [`edge`] (outermost): CORS for the configured origins (preflights
//!   answered with 204) and security headers on every response. HSTS only
//!   when `hsts_max_age` is set: the server speaks plain HTTP, so HSTS is
//!   for deployments behind a TLS-terminating proxy (browsers ignore it
//!   over plain HTTP anyway).
//! * [`rate_limit`]: an in-memory token bucket per client: the `avap_<id>`
//!   of a presented API key, else the peer IP. Over the limit → 429
//!   `RateLimited` with `Retry-After`. Health, info, metrics and the
//!   `OpenAPI` document are exempt.
//! * [`timeout`]: the outer bound of a request (504 `RequestTimeout`); runs
//!   have their own, tighter wall-time limit.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Entries idle this long (at least) are dropped from the rate-limit map.
const IDLE: Duration = Duration::from_mins(1);
/// The most clients tracked at once.
const MAX_CLIENTS: usize = 100_000;
/// How often the map is swept for idle entries.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
const ALLOW_HEADERS: &str = "authorization, content-type, x-api-key";
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
    /// The `Strict-Transport-Security` value, when configured.
    hsts: Option<HeaderValue>,
    limiter: Mutex<Limiter>,
}

impl Protect {
    pub fn new(config: ProtectConfig) -> Protect {
        Protect {
            inner: Arc::new(Inner {
                hsts: (config.hsts_max_age > 0)
                    .then(|| format!("max-age={}; includeSubDomains", config.hsts_max_age))
                    .and_then(|v| HeaderValue::try_from(v).ok()),
                config,
                limiter: Mutex::new(Limiter::new(Instant::now())),
            }),
        }
    }

    fn config(&self) -> &ProtectConfig {
        &self.inner.config
    }

    /// Take one token for `client`, or the whole seconds to wait.
    fn check(&self, client: &str, now: Instant) -> Result<(), u64> {
        let config = self.config();
        if config.rate_limit == 0 {
            return Ok(());
        }
        let rate = f64::from(config.rate_limit);
        let burst = f64::from(config.rate_burst.max(1));
        let mut limiter = self
            .inner
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        limiter.take(client, now, rate, burst)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct Limiter {
    buckets: HashMap<String, Bucket>,
    last_sweep: Instant,
}

impl Limiter {
    fn new(now: Instant) -> Limiter {
        Limiter {
            buckets: HashMap::new(),
            last_sweep: now,
        }
    }

    fn take(&mut self, client: &str, now: Instant, rate: f64, burst: f64) -> Result<(), u64> {
        // An entry is only dropped once its bucket would have refilled anyway.
        let idle = IDLE.max(Duration::from_secs_f64(burst / rate));
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY || self.buckets.len() >= MAX_CLIENTS {
            self.buckets.retain(|_, b| now.duration_since(b.last) < idle);
            self.last_sweep = now;
        }
        // Still full of active clients: let a newcomer through untracked
        // rather than grow without bound.
        if self.buckets.len() >= MAX_CLIENTS && !self.buckets.contains_key(client) {
            return Ok(());
        }
        let bucket = self.buckets.entry(client.to_owned()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / rate).ceil();
            // `wait` is a small positive whole number of seconds.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let wait = wait as u64;
            Err(wait.max(1))
        }
    }
}

/// Paths never rate limited.
fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/health" | "/api/v1/info" | "/api/v1/metrics" | "/api/v1/openapi.json"
    )
}

/// `key:<id>` for a request presenting an `avap_<id>_…` key, else `ip:<peer>`.
fn client_of(request: &Request) -> String {
    let headers = request.headers();
    if let Some(id) = presented_key_id(headers) {
        return format!("key:{id}");
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
        None => "ip:unknown".to_owned(),
    }
}

/// The id of the API key in `Authorization: Bearer` or `X-API-Key`, if well formed.
fn presented_key_id(headers: &HeaderMap) -> Option<&str> {
    let value = match headers.get(header::AUTHORIZATION) {
        Some(auth) => {
            let (scheme, key) = auth.to_str().ok()?.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(key)?
        }
        None => headers.get("x-api-key")?.to_str().ok()?,
    };
    let (id, _) = value.trim().strip_prefix("avap_")?.split_once('_')?;
    (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Middleware: the per-client token bucket.
pub async fn rate_limit(State(protect): State<Protect>, request: Request, next: Next) -> Response {
    if protect.config().rate_limit == 0 || exempt(request.uri().path()) {
        return next.run(request).await;
    }
    match protect.check(&client_of(&request), Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(retry_after_secs) => ApiError::RateLimited { retry_after_secs }.into_response(),
    }
}

/// Middleware: 504 when the rest of the stack takes longer than the timeout.
pub async fn timeout(State(protect): State<Protect>, request: Request, next: Next) -> Response {
    bounded(protect.config().request_timeout, next.run(request)).await
}

/// `work`, or 504 `RequestTimeout` once `limit` passes (zero: no limit).
async fn bounded(limit: Duration, work: impl Future<Output = Response>) -> Response {
    if limit.is_zero() {
        return work.await;
    }
    match tokio::time::timeout(limit, work).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout { limit }.into_response(),
    }
}

/// Middleware: CORS and security headers.
pub async fn edge(State(protect): State<Protect>, request: Request, next: Next) -> Response {
    let origins = &protect.config().cors_origins;
    let allowed = request
        .headers()
        .get(header::ORIGIN)
        .filter(|o| o.to_str().is_ok_and(|o| origins.iter().any(|a| a == o)))
        .cloned();
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let health = request.uri().path() == "/api/v1/health";
    let mut response = match (&allowed, preflight) {
        (Some(_), true) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let h = response.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            response
        }
        _ => next.run(request).await,
    };
    let h = response.headers_mut();
    if let Some(origin) = allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }
    if !origins.is_empty() {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Some(hsts) = &protect.inner.hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    if !health {
        h.entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(t0);
        assert_eq!(limiter.take("a", t0, 2.0, 2.0), Ok(()));
        assert_eq!(limiter.take("a", t0, 2.0, 2.0), Ok(()));
        assert_eq!(limiter.take("a", t0, 2.0, 2.0), Err(1));
        assert_eq!(limiter.take("b", t0, 2.0, 2.0), Ok(()), "clients are separate");
        let later = t0 + Duration::from_millis(500);
        assert_eq!(limiter.take("a", later, 2.0, 2.0), Ok(()));
        assert_eq!(limiter.take("a", later, 2.0, 2.0), Err(1));
        // A slow rate asks for a longer wait.
        assert_eq!(limiter.take("c", t0, 0.1, 1.0), Ok(()));
        assert_eq!(limiter.take("c", t0, 0.1, 1.0), Err(10));
    }

    #[test]
    fn idle_clients_are_evicted() {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(t0);
        limiter.take("a", t0, 1.0, 1.0).unwrap();
        assert_eq!(limiter.buckets.len(), 1);
        let later = t0 + IDLE + SWEEP_EVERY;
        limiter.take("b", later, 1.0, 1.0).unwrap();
        assert_eq!(limiter.buckets.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn clients_are_keys_or_addresses() {
        let mut request = Request::new(axum::body::Body::empty());
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 5000))));
        assert_eq!(client_of(&request), "ip:10.0.0.1");
        request
            .headers_mut()
            .insert("x-api-key", HeaderValue::from_static("avap_0123abcd_secret"));
        assert_eq!(client_of(&request), "key:0123abcd");
        request.headers_mut().insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer avap_deadbeef_secret"),
        );
        assert_eq!(client_of(&request), "key:deadbeef");
        assert!(exempt("/api/v1/health"));
        assert!(!exempt("/api/v1/execute"));
    }

    #[tokio::test]
    async fn slow_requests_time_out() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK.into_response()
        };
        let response = bounded(Duration::from_millis(20), slow).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["kind"], "RequestTimeout");

        let fast = async { StatusCode::OK.into_response() };
        assert_eq!(bounded(Duration::from_millis(20), fast).await.status(), StatusCode::OK);
    }
}
