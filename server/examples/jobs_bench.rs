//! Job throughput and queue-to-start latency, per backend, against a
//! baseline measured in the same run: `POST /api/v1/execute` of the same
//! hello script. Everything goes through the whole router in process
//! (`oneshot`: middleware, auth, handlers; no sockets), so the ratio
//! compares the queue with a direct run, not two HTTP stacks.
//!
//! ```text
//! cargo run --release -p avap-server --example jobs_bench -- [JOBS] [CLIENTS]
//! ```
//!
//! Needs the machine's nats-server on 127.0.0.1:4222 (`JetStream`) for the
//! NATS rows. For each backend:
//! * **burst**: JOBS submissions from CLIENTS concurrent clients, timed
//!   from the first submission to the last job finished (jobs/s), with the
//!   queue-to-start latency of each job (its first attempt's start minus
//!   its creation, from `GET /api/v1/jobs/{id}`): under a backlog this is
//!   mostly time spent waiting in the queue;
//! * **idle**: 200 jobs one at a time, each waited for: the latency of a
//!   job submitted to an idle queue.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use avap_server::jobs::{JobsBackend, JobsConfig};
use avap_server::{AppState, Location, ServerConfig, Store, app};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const HELLO: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";

async fn send(app: &Router, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("a request");
    let response = app.clone().oneshot(request).await.expect("an answer");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn node(backend: JobsBackend, tag: &str) -> (Router, AppState, avap_server::jobs::JobsRuntime, String) {
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).expect("random");
    let prefix = format!("bench{}{tag}", hex::encode(random));
    let dir: PathBuf = std::env::temp_dir().join(format!("avap-jobs-bench-{prefix}"));
    std::fs::create_dir_all(&dir).expect("a directory");
    let store = Store::connect(&Location::Sqlite(dir.join("avap.sqlite")))
        .await
        .expect("the registry");
    let key = avap_hostfns::artifact::generate_key().expect("a key");
    let mut config = ServerConfig {
        allow_anonymous: true,
        ..ServerConfig::for_this_machine()
    };
    // No rate limit: the clients are the load.
    config.protect.rate_limit = 0;
    config.jobs = JobsConfig {
        backend,
        // As many workers as run slots: the queue, not the slots, is measured.
        workers: config.max_concurrent_runs,
        prefix: prefix.clone(),
        max_unfinished: JobsConfig::DEFAULT_MAX_UNFINISHED,
        ..JobsConfig::default()
    };
    let workers = config.jobs.workers;
    let state = AppState::new(config, store, key).expect("the state");
    // The open database keeps working after its directory entry is gone.
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = avap_server::jobs::start(&state, workers);
    (app(state.clone()), state, runtime, prefix)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(text: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp_millis()
}

/// Queue-to-start latency of job `id`, in ms, once it succeeded.
async fn wait_done(app: &Router, id: &str) -> f64 {
    loop {
        let (_, job) = send(app, Method::GET, &format!("/api/v1/jobs/{id}"), None).await;
        match job["state"].as_str() {
            Some("succeeded") => {
                #[allow(clippy::cast_precision_loss)]
                return (ms(&job["attempts"][0]["started_at"]) - ms(&job["created_at"])) as f64;
            }
            Some("queued" | "running" | "failed") => tokio::time::sleep(Duration::from_millis(2)).await,
            other => panic!("job {id} ended {other:?}: {job}"),
        }
    }
}

async fn baseline(app: &Router, n: usize, clients: usize) -> f64 {
    let body = json!({"script": HELLO, "params": {"name": "Ada"}});
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (app, body) = (app.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            for _ in (c..n).step_by(clients) {
                let (status, reply) = send(&app, Method::POST, "/api/v1/execute", Some(&body)).await;
                assert_eq!(status, StatusCode::OK, "{reply}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("a client");
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / started.elapsed().as_secs_f64();
    rate
}

async fn burst(app: &Router, n: usize, clients: usize) -> (f64, Vec<f64>) {
    let body = json!({"script": HELLO, "params": {"name": "Ada"}});
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (app, body) = (app.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in (c..n).step_by(clients) {
                let (status, reply) = send(&app, Method::POST, "/api/v1/jobs", Some(&body)).await;
                assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
                ids.push(reply["id"].as_str().expect("an id").to_owned());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("a client"));
    }
    // Finished when the last one is: wait for each in submission order.
    let mut latencies = Vec::with_capacity(ids.len());
    for id in &ids {
        latencies.push(wait_done(app, id).await);
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (rate, latencies)
}

async fn idle(app: &Router, n: usize) -> Vec<f64> {
    let body = json!({"script": HELLO, "params": {"name": "Ada"}});
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, reply) = send(app, Method::POST, "/api/v1/jobs", Some(&body)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
        latencies.push(wait_done(app, reply["id"].as_str().expect("an id")).await);
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(2000, |a| a.parse().expect("JOBS is a number"));
    let clients: usize = args.next().map_or(8, |a| a.parse().expect("CLIENTS is a number"));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!("jobs_bench: {jobs} jobs, {clients} clients, {cores} cores");
    let (app, _state, runtime, _) = node(JobsBackend::Database, "base").await;
    // Warm the compile cache, then the baseline.
    baseline(&app, 50, 1).await;
    let direct = baseline(&app, jobs, clients).await;
    println!("baseline: POST /api/v1/execute {direct:.0} runs/s");
    runtime.shutdown(Duration::from_secs(5)).await;
    for (name, backend) in [
        ("database (SQLite)", JobsBackend::Database),
        ("NATS JetStream", JobsBackend::Nats("nats://127.0.0.1:4222".to_owned())),
    ] {
        let (app, _state, runtime, prefix) = node(backend.clone(), "run").await;
        baseline(&app, 10, 1).await;
        // Let the NATS connection and stream come up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rate, burst_lat) = burst(&app, jobs, clients).await;
        let idle_lat = idle(&app, 200).await;
        println!(
            "{name}: burst {rate:.0} jobs/s ({:.2}× direct), queue-to-start p50 {:.0} ms p99 {:.0} ms; \
             idle queue-to-start p50 {:.0} ms p99 {:.0} ms",
            rate / direct,
            percentile(&burst_lat, 0.5),
            percentile(&burst_lat, 0.99),
            percentile(&idle_lat, 0.5),
            percentile(&idle_lat, 0.99),
        );
        runtime.shutdown(Duration::from_secs(5)).await;
        if let JobsBackend::Nats(url) = backend {
            let client = async_nats::connect(url).await.expect("NATS");
            let _ = async_nats::jetstream::new(client)
                .delete_stream(format!("{prefix}_jobs"))
                .await;
        }
    }
}
