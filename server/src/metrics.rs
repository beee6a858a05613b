//! `GET /api/v1/metrics`: Prometheus text exposition (format 0.0.4), written
//! by hand from the [`Metrics`] counters every handler shares.
//!
//! * `avap_requests_total{route,status}`: every response, by route template
//!   (matched against [`ROUTES`](super::openapi::ROUTES); `unmatched` for the
//!   404 fallback) and status, and `avap_request_duration_seconds{route,status}`
//!   (histogram), time from the request's arrival at the middleware to its
//!   response head. Counted by the [`count_requests`] middleware.
//! * `avap_runs_total{outcome}`: runs by `ok` or the envelope's or the API
//!   error's kind; `avap_limit_hits_total{kind}` for the limit kinds.
//! * `avap_compile_cache_hits_total` / `avap_compile_cache_misses_total`;
//!   `avap_compiles_shed_total`: compiles and loads refused with 503 because
//!   the compile pool (`max_concurrent_compiles`) stayed full.
//! * `avap_run_duration_seconds` (histogram) and `avap_runs_in_flight` (gauge);
//!   `avap_run_slots` (gauge), the run slots, for saturation.
//! * `avap_fuel_used_total`: fuel burnt by finished runs.
//! * `avap_audit_dropped_total`: audit rows of runs dropped because the
//!   audit queue was full ([`audit`](super::audit)).
//! * `avap_connections_open` (gauge), `avap_connections_refused_total{reason}`
//!   (closed at once over `max_connections` or `max_connections_per_ip`) and
//!   `avap_connections_timed_out_total{timeout}` (`header_read` or `idle`):
//!   the client connections ([`listen`](super::listen)), counted in
//!   [`ConnectionCounters`].
//! * With Redis: `avap_l2_hits_total` / `avap_l2_misses_total` /
//!   `avap_l2_refused_total` (stored modules loaded from, not found in, or
//!   refused from Redis: [`l2`](super::l2)), `avap_redis_errors_total`,
//!   `avap_invalidations_received_total` ([`cluster`](super::cluster)).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use avap_runtime::RunReport;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::listen::{Refusal, Timeout};
use super::openapi::ROUTES;

/// Upper bounds of the run-duration histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// The envelope error kinds that are limit hits.
const LIMIT_KINDS: [&str; 5] = [
    "FuelExhausted",
    "MemoryLimit",
    "OutputLimit",
    "StackOverflow",
    "TimeLimit",
];

/// The server's counters; lock-free except the labelled maps.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), Histogram>>,
    runs: Mutex<BTreeMap<String, u64>>,
    limit_hits: Mutex<BTreeMap<String, u64>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    compiles_shed: AtomicU64,
    /// Non-cumulative bucket counts; the last one is `+Inf`.
    duration_buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_sum_micros: AtomicU64,
    in_flight: AtomicI64,
    fuel_used: AtomicU64,
    audit_dropped: AtomicU64,
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    l2_refused: AtomicU64,
    invalidations: AtomicU64,
    /// Counted by the Redis client itself.
    redis_errors: Arc<AtomicU64>,
    /// Counted by the accept loop.
    connections: Arc<ConnectionCounters>,
}

/// The client connections: open now, refused at a cap, closed by a timeout.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    open: AtomicI64,
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
    header_read_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
}

impl ConnectionCounters {
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn refused(&self, reason: Refusal) {
        match reason {
            Refusal::MaxConnections => &self.refused_total,
            Refusal::MaxConnectionsPerIp => &self.refused_per_ip,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn timed_out(&self, timeout: Timeout) {
        match timeout {
            Timeout::HeaderRead => &self.header_read_timeouts,
            Timeout::Idle => &self.idle_timeouts,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// The three connection metrics as Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "avap_connections_open",
            "gauge",
            "Client connections open now.",
        );
        let _ = writeln!(out, "avap_connections_open {}", self.open());
        header(
            &mut out,
            "avap_connections_refused_total",
            "counter",
            "Client connections closed at once because a cap (max_connections, max_connections_per_ip) was reached.",
        );
        for (reason, n) in [
            (Refusal::MaxConnections, &self.refused_total),
            (Refusal::MaxConnectionsPerIp, &self.refused_per_ip),
        ] {
            let _ = writeln!(
                out,
                "avap_connections_refused_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "avap_connections_timed_out_total",
            "counter",
            "Client connections closed because no whole request head came in time (header_read) or a kept-alive connection sent nothing (idle).",
        );
        for (timeout, n) in [
            (Timeout::HeaderRead, &self.header_read_timeouts),
            (Timeout::Idle, &self.idle_timeouts),
        ] {
            let _ = writeln!(
                out,
                "avap_connections_timed_out_total{{timeout=\"{}\"}} {}",
                timeout.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
        out
    }
}

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        lock(&self.requests).entry((route, status)).or_default().observe(took);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn audit_dropped(&self) {
        self.audit_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn compile_shed(&self) {
        self.compiles_shed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn l2_hit(&self) {
        self.l2_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn l2_miss(&self) {
        self.l2_misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn l2_refused(&self) {
        self.l2_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn invalidation_received(&self) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters the accept loop keeps ([`listen`](super::listen)).
    pub fn connections(&self) -> Arc<ConnectionCounters> {
        self.connections.clone()
    }

    /// The counter the Redis client adds its failed commands to.
    pub fn redis_errors(&self) -> Arc<AtomicU64> {
        self.redis_errors.clone()
    }

    /// Await one run, counting it in flight, timing it and recording its outcome.
    pub async fn run(&self, run: impl Future<Output = Result<RunReport, ApiError>>) -> Result<RunReport, ApiError> {
        // A guard, so a run cancelled mid-way (client gone, request timeout) leaves the gauge too.
        struct InFlight<'a>(&'a AtomicI64);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(&self.in_flight);
        let started = Instant::now();
        let result = run.await;
        drop(in_flight);
        let seconds = started.elapsed().as_secs_f64();
        let bucket = BUCKETS.iter().position(|&le| seconds <= le).unwrap_or(BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.duration_sum_micros.fetch_add(micros, Ordering::Relaxed);
        if let Ok(report) = &result {
            self.fuel_used.fetch_add(report.usage.fuel, Ordering::Relaxed);
        }
        let outcome = match &result {
            Ok(report) => report.envelope["error"]["kind"].as_str().unwrap_or("ok").to_owned(),
            Err(e) => e.kind().to_owned(),
        };
        if LIMIT_KINDS.contains(&outcome.as_str()) {
            *lock(&self.limit_hits).entry(outcome.clone()).or_default() += 1;
        }
        *lock(&self.runs).entry(outcome).or_default() += 1;
        result
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "avap_requests_total",
            "counter",
            "HTTP responses by route and status.",
        );
        let requests = lock(&self.requests);
        for ((route, status), h) in requests.iter() {
            let _ = writeln!(
                out,
                "avap_requests_total{{route=\"{}\",status=\"{status}\"}} {}",
                escape(route),
                h.count
            );
        }
        header(
            &mut out,
            "avap_request_duration_seconds",
            "histogram",
            "HTTP request latency by route and status, up to the response head.",
        );
        for ((route, status), h) in requests.iter() {
            h.render(
                &mut out,
                "avap_request_duration_seconds",
                &format!("route=\"{}\",status=\"{status}\"", escape(route)),
            );
        }
        drop(requests);
        header(
            &mut out,
            "avap_runs_total",
            "counter",
            "Script runs by outcome (ok or the error kind).",
        );
        for (outcome, n) in lock(&self.runs).iter() {
            let _ = writeln!(out, "avap_runs_total{{outcome=\"{}\"}} {n}", escape(outcome));
        }
        header(
            &mut out,
            "avap_limit_hits_total",
            "counter",
            "Runs stopped by a limit, by kind.",
        );
        let hits = lock(&self.limit_hits);
        for kind in LIMIT_KINDS {
            let n = hits.get(kind).copied().unwrap_or(0);
            let _ = writeln!(out, "avap_limit_hits_total{{kind=\"{kind}\"}} {n}");
        }
        drop(hits);
        for (name, help, value) in [
            (
                "avap_compile_cache_hits_total",
                "Inline scripts found in the compile cache.",
                &self.cache_hits,
            ),
            (
                "avap_compile_cache_misses_total",
                "Inline scripts compiled because they were not cached.",
                &self.cache_misses,
            ),
            (
                "avap_compiles_shed_total",
                "Compiles and loads refused with 503: the compile pool stayed full for queue_wait_ms.",
                &self.compiles_shed,
            ),
            (
                "avap_fuel_used_total",
                "Fuel burnt by finished runs (wasm instructions plus host work).",
                &self.fuel_used,
            ),
            (
                "avap_audit_dropped_total",
                "Audit rows of runs dropped because the audit queue was full.",
                &self.audit_dropped,
            ),
            (
                "avap_l2_hits_total",
                "Stored modules loaded precompiled from Redis instead of compiled.",
                &self.l2_hits,
            ),
            (
                "avap_l2_misses_total",
                "Stored modules not found in Redis (compiled here, then shared).",
                &self.l2_misses,
            ),
            (
                "avap_l2_refused_total",
                "Precompiled modules from Redis refused (bad signature, untrusted signer, not loadable).",
                &self.l2_refused,
            ),
            (
                "avap_redis_errors_total",
                "Redis commands that failed (connection lost, refused or timed out).",
                &*self.redis_errors,
            ),
            (
                "avap_invalidations_received_total",
                "Script invalidations received from the cluster (Redis pub/sub).",
                &self.invalidations,
            ),
        ] {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        header(
            &mut out,
            "avap_run_duration_seconds",
            "histogram",
            "Run time including the wait for a run slot and compilation.",
        );
        let mut cumulative = 0u64;
        for (i, count) in self.duration_buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), ToString::to_string);
            let _ = writeln!(out, "avap_run_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        #[allow(clippy::cast_precision_loss)] // sums beyond 2^53 µs are far away
        let sum = self.duration_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "avap_run_duration_seconds_sum {sum}");
        let _ = writeln!(out, "avap_run_duration_seconds_count {cumulative}");
        header(
            &mut out,
            "avap_runs_in_flight",
            "gauge",
            "Runs compiling or running now.",
        );
        let _ = writeln!(out, "avap_runs_in_flight {}", self.in_flight.load(Ordering::Relaxed));
        out.push_str(&self.connections.render());
        out
    }
}

/// A histogram over [`BUCKETS`] for use under a lock.
#[derive(Debug, Default)]
struct Histogram {
    /// Non-cumulative bucket counts; the last one is `+Inf`.
    buckets: [u64; BUCKETS.len() + 1],
    sum_seconds: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|&le| seconds <= le).unwrap_or(BUCKETS.len());
        self.buckets[bucket] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }

    /// `name_bucket{labels,le=…}` lines, then `_sum` and `_count`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), ToString::to_string);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The route template of `path` among [`ROUTES`], or `unmatched`.
pub fn route_of(path: &str) -> &'static str {
    ROUTES
        .iter()
        .map(|&(_, template)| template)
        .find(|template| matches_template(template, path))
        .unwrap_or("unmatched")
}

fn matches_template(template: &str, path: &str) -> bool {
    let mut want = template.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with("{*") => return !g.is_empty() || got.next().is_some(),
            (Some(w), Some(g)) if w.starts_with('{') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// Middleware: count every response in `avap_requests_total`.
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    let started = Instant::now();
    let response = next.run(req).await;
    state
        .metrics()
        .request(route, response.status().as_u16(), started.elapsed());
    response
}

/// `avap_run_slots`: the run slots (`max_concurrent_runs`), so dashboards
/// and alerts can divide `avap_runs_in_flight` by it (saturation).
fn render_run_slots(out: &mut String, slots: usize) {
    header(out, "avap_run_slots", "gauge", "Runs that may compile or run at once.");
    let _ = writeln!(out, "avap_run_slots {slots}");
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics().render();
    render_run_slots(&mut text, state.config().max_concurrent_runs);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_matched_by_template() {
        assert_eq!(route_of("/api/v1/execute"), "/api/v1/execute");
        assert_eq!(route_of("/api/v1/execute/batch"), "/api/v1/execute/batch");
        assert_eq!(route_of("/api/v1/execute/file"), "/api/v1/execute/file");
        assert_eq!(route_of("/api/v1/audit"), "/api/v1/audit");
        assert_eq!(route_of("/api/v1/scripts/hello"), "/api/v1/scripts/{name}");
        assert_eq!(
            route_of("/api/v1/scripts/hello/rollback"),
            "/api/v1/scripts/{name}/rollback"
        );
        assert_eq!(route_of("/api/v1/run/hello"), "/api/v1/run/{name}");
        assert_eq!(route_of("/api/v1/run/hello/users/7"), "/api/v1/run/{name}/{*rest}");
        assert_eq!(route_of("/api/v1/nope"), "unmatched");
        assert_eq!(route_of("/api/v1/scripts/"), "unmatched");
    }

    #[tokio::test]
    async fn render_is_prometheus_text() {
        let m = Metrics::default();
        m.request("/api/v1/execute", 200, Duration::from_millis(3));
        m.cache_miss();
        let _ = m.run(async { Err(ApiError::MethodNotAllowed) }).await;
        let text = m.render();
        assert!(
            text.contains("avap_requests_total{route=\"/api/v1/execute\",status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("avap_runs_total{outcome=\"MethodNotAllowed\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("avap_compile_cache_misses_total 1\n"), "{text}");
        assert!(
            text.contains("avap_run_duration_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("avap_run_duration_seconds_count 1\n"), "{text}");
        assert!(text.contains("avap_runs_in_flight 0\n"), "{text}");
        let latency = "avap_request_duration_seconds_bucket{route=\"/api/v1/execute\",status=\"200\",le=";
        assert!(text.contains(&format!("{latency}\"0.0025\"}} 0\n")), "{text}");
        assert!(text.contains(&format!("{latency}\"0.005\"}} 1\n")), "{text}");
        assert!(
            text.contains("avap_request_duration_seconds_count{route=\"/api/v1/execute\",status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("avap_fuel_used_total 0\n"), "{text}");
    }

    #[test]
    fn run_slots_are_a_gauge() {
        let mut text = String::new();
        render_run_slots(&mut text, 8);
        assert_eq!(
            text,
            "# HELP avap_run_slots Runs that may compile or run at once.\n# TYPE avap_run_slots gauge\navap_run_slots 8\n"
        );
    }
}
