//! Request ids and the access log.
//!
//! [`request_id`] (the outermost middleware) gives every request an id: the
//! client's `X-Request-Id` when it is 1 to 128 visible ASCII characters,
//! else 16 random hex digits. The id goes back in the `X-Request-Id`
//! response header (errors, 404s, 429s and CORS preflights included), to
//! handlers as a [`RequestId`] extension, and into a `request` span, so
//! every event logged while the request is handled carries it.
//!
//! Then it writes one access line: method, path, route, status, latency and
//! the API key id of the caller. Never headers, the query string or the
//! body: they may hold keys, secrets and script params.
//!
//! The `request` span is also the request's trace span
//! ([`telemetry`](super::telemetry)): it continues the trace of a valid
//! W3C `traceparent` header, or starts one, and the response names it in its
//! own `traceparent` header. Handlers find the request id with [`current`].
//!
//! Not tower-http's `SetRequestIdLayer`/`PropagateRequestIdLayer`: they
//! keep whatever id a client sends (any length, any bytes, straight into
//! the log) and make one only when the header is absent; here an id that
//! cannot be logged safely is replaced, and the id, its span, the task-local
//! and the access line are made in one place, in one layer.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::auth::Caller;
use super::telemetry;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-sent id kept.
const MAX_LEN: usize = 128;

/// The id of the request being handled (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

tokio::task_local! {
    /// The id of the request the current task is handling.
    static CURRENT: RequestId;
}

/// The id of the request this task is handling (`None` outside a request).
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Middleware: the request id, its span, the response headers and the access line.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = accepted(request.headers()).unwrap_or_else(generate);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let route = route.as_deref().unwrap_or("-");
    let span_name = format!("{method} {route}");
    // At ERROR level so the span is on whatever `log_level` lets through:
    // a warning logged with `log_level = "warn"` still names its request.
    let span = tracing::error_span!(
        "request",
        request_id = %id,
        otel.name = %span_name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, request.headers());
    request.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    let mut response = CURRENT
        .scope(RequestId(id.clone()), next.run(request))
        .instrument(span.clone())
        .await;
    let latency_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    let key_id = response
        .extensions()
        .get::<Caller>()
        .and_then(|caller| caller.key_id.clone());
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    // In the request span without entering it (an enter and exit cost
    // every subscriber layer a call).
    tracing::info!(
        parent: &span,
        method = %method,
        path = %path,
        route,
        status = status.as_u16(),
        latency_ms,
        key_id = key_id.as_deref(),
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    if let Some((name, value)) = telemetry::traceparent(&span) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// The client's id, if it is one we can echo and log safely.
fn accepted(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(HEADER)?.as_bytes();
    let fits = (1..=MAX_LEN).contains(&value.len()) && value.iter().all(u8::is_ascii_graphic);
    fits.then(|| String::from_utf8_lossy(value).into_owned())
}

/// 16 hex digits, unique within the process and unpredictable across
/// processes: a random 64-bit start (one read of the OS random source per
/// process, not a system call per request) plus a counter, through
/// the `SplitMix64` finalizer (a bijection, so no two requests of a process
/// share an id).
fn generate() -> String {
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness: an id only has to be unique, not secret.
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            bytes = u64::try_from(nanos % (1 << 64)).unwrap_or(0).to_le_bytes();
        }
        u64::from_le_bytes(bytes)
    });
    let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
    hex::encode(splitmix64(n).to_be_bytes())
}

/// The `SplitMix64` output function: a bijection on `u64` that spreads
/// consecutive inputs over the whole range.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_bytes(value).expect("a header value"));
        headers
    }

    #[test]
    fn only_short_visible_ascii_ids_are_accepted() {
        assert_eq!(accepted(&with(b"abc-123_X.y")), Some("abc-123_X.y".to_owned()));
        assert_eq!(accepted(&with(&[b'a'; 128])), Some("a".repeat(128)));
        assert_eq!(accepted(&with(&[b'a'; 129])), None);
        assert_eq!(accepted(&with(b"has space")), None);
        assert_eq!(accepted(&with(b"")), None);
        assert_eq!(accepted(&with("caf\u{e9}".as_bytes())), None);
        assert_eq!(accepted(&HeaderMap::new()), None);
    }

    #[test]
    fn generated_ids_are_sixteen_hex_digits() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn generated_ids_do_not_repeat_and_do_not_count_up() {
        let ids: Vec<String> = (0..10_000).map(|_| generate()).collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Consecutive ids share no long common prefix (they are not a
        // visible counter).
        let common = ids[0].bytes().zip(ids[1].bytes()).take_while(|(a, b)| a == b).count();
        assert!(common < 8, "{} then {}", ids[0], ids[1]);
    }
}
