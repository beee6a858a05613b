//! The job queue in process, one suite run on both backends: the embedded
//! queue in the registry database (`SQLite` here) and NATS `JetStream` (the
//! machine's nats-server on 127.0.0.1:4222, each test in its own stream,
//! deleted at the end). Requests go through `app(state)` with `oneshot`;
//! the workers are the real ones ([`avap_server::jobs::start`]). What
//! needs processes (a worker killed with SIGKILL, nats-server restarted, a server
//! restarted) is in the workspace's `tests/jobs_*.rs`. With
//! `TEST_SERVER_DATABASE=postgres` (as `.ci/run` runs it a second time) the
//! registry, and so the jobs' state, is a fresh `PostgreSQL` database per
//! node instead of a `SQLite` file, as in a cluster.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use avap_server::jobs::{JobsBackend, JobsConfig, JobsRuntime};
use avap_server::{AppState, Location, ServerConfig, Store, app};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const NATS_URL: &str = "nats://127.0.0.1:4222";
/// The application database scripts sleep in (`pg_sleep`), to make runs
/// that take a known time.
const APP_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Where a node's `PostgreSQL` registry database is created and dropped.
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// Run one administrative statement (`CREATE DATABASE`, `DROP DATABASE`).
async fn postgres_admin(sql: &str) {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(&format!("{POSTGRES}/test"))
        .await
        .expect("PostgreSQL");
    sqlx::query(sql).execute(&mut admin).await.expect(sql);
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Database,
    Nats,
}

fn unique(tag: &str) -> String {
    let mut random = [0u8; 5];
    getrandom::fill(&mut random).expect("random");
    format!("t{}{tag}", hex::encode(random))
}

/// One node: the router, its state and its running workers.
struct Node {
    app: Router,
    state: AppState,
    workers: Vec<JobsRuntime>,
    prefix: String,
    backend: Backend,
    /// The registry's directory, removed at the end.
    dir: PathBuf,
    /// The registry's `PostgreSQL` database, dropped at the end.
    postgres: Option<String>,
}

struct Options {
    workers: usize,
    retention: Duration,
    /// The server's (request) time limit.
    request_time_ms: u64,
    anonymous: bool,
    /// `jobs_max_queued`.
    max_unfinished: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            workers: 2,
            retention: Duration::from_hours(1),
            request_time_ms: 10_000,
            anonymous: true,
            max_unfinished: 10_000,
        }
    }
}

impl Node {
    async fn start(backend: Backend, name: &str, options: Options) -> Node {
        let prefix = unique(name);
        let dir: PathBuf = std::env::temp_dir().join(format!("avap-jobs-{prefix}"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let (location, postgres) = if std::env::var("TEST_SERVER_DATABASE").as_deref() == Ok("postgres") {
            let database = format!("avap_it_jobs_{prefix}");
            postgres_admin(&format!("CREATE DATABASE {database}")).await;
            (Location::Postgres(format!("{POSTGRES}/{database}")), Some(database))
        } else {
            (Location::Sqlite(dir.join("avap.sqlite")), None)
        };
        let store = Store::connect(&location).await.expect("the registry");
        let key = avap_hostfns::artifact::generate_key().expect("a key");
        let mut config = ServerConfig {
            allow_anonymous: options.anonymous,
            ..ServerConfig::for_this_machine()
        };
        config.limits.time_ms = options.request_time_ms;
        let databases = avap_hostfns::effects::db::Databases::new(
            Some(APP_DATABASE),
            Vec::new(),
            avap_hostfns::effects::db::DbLimits::default(),
        )
        .expect("the application database");
        config.effects.db = Some(Arc::new(databases));
        config.jobs = JobsConfig {
            backend: match backend {
                Backend::Database => JobsBackend::Database,
                Backend::Nats => JobsBackend::Nats(NATS_URL.to_owned()),
            },
            workers: options.workers,
            max_time: Duration::from_secs(20),
            lease: Duration::from_millis(1500),
            retention: options.retention,
            prefix: prefix.clone(),
            max_unfinished: options.max_unfinished,
        };
        let state = AppState::new(config, store, key).expect("the state");
        let workers = vec![avap_server::jobs::start(&state, options.workers)];
        Node {
            app: app(state.clone()),
            state,
            workers,
            prefix,
            backend,
            dir,
            postgres,
        }
    }

    /// Start `n` more workers on this node (after a backlog was queued).
    fn add_workers(&mut self, n: usize) {
        self.workers.push(avap_server::jobs::start(&self.state, n));
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send_as(method, path, body, None).await
    }

    async fn send_as(&self, method: Method, path: &str, body: Option<Value>, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("a request");
        let response = self.app.clone().oneshot(request).await.expect("an answer");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body");
        let json =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, json)
    }

    /// Submit a job; its id.
    async fn submit(&self, job: Value) -> String {
        let (status, body) = self.send(Method::POST, "/api/v1/jobs", Some(job)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["state"], "queued");
        body["id"].as_str().expect("an id").to_owned()
    }

    async fn job(&self, id: &str) -> Value {
        let (status, body) = self.send(Method::GET, &format!("/api/v1/jobs/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Wait until job `id` is in `state` (panics after 20 s).
    async fn wait_for(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let job = self.job(id).await;
            if job["state"] == state {
                return job;
            }
            assert!(Instant::now() < deadline, "job never became {state}: {job:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop the workers, delete this test's NATS stream and its directory.
    async fn finish(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        for workers in self.workers {
            workers.shutdown(Duration::from_secs(5)).await;
        }
        if let Backend::Nats = self.backend {
            let client = async_nats::connect(NATS_URL).await.expect("NATS");
            let js = async_nats::jetstream::new(client);
            js.delete_stream(format!("{}_jobs", self.prefix))
                .await
                .expect("delete the test stream");
        }
        if let Some(database) = self.postgres {
            drop(self.state);
            postgres_admin(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
        }
    }
}

fn ms(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().expect("a time"))
        .expect("an RFC 3339 time")
        .timestamp_millis()
}

const HELLO: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";

async fn a_job_runs_once_and_keeps_its_result(backend: Backend) {
    let node = Node::start(backend, "result", Options::default()).await;
    let id = node
        .submit(json!({"script": HELLO, "params": {"name": "Ada"}, "priority": "high"}))
        .await;
    let job = node.wait_for(&id, "succeeded").await;
    assert_eq!(job["result"]["status"], 200, "{job:#}");
    assert_eq!(job["result"]["body"]["result"]["message"], "Hello, Ada");
    assert_eq!(job["priority"], "high");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(job["attempts"][0]["outcome"], "succeeded");
    assert!(job["finished_at"].is_string());
    // The script sees its job id and attempt in the query.
    let script = "addParam(avap_job_id, id)\naddParam(avap_job_attempt, n)\naddResult(id)\naddResult(n)\n";
    let id = node.submit(json!({"script": script})).await;
    let job = node.wait_for(&id, "succeeded").await;
    assert_eq!(job["result"]["body"]["result"]["id"], id.as_str());
    assert_eq!(job["result"]["body"]["result"]["n"], 1);
    let (_, metrics) = node.send(Method::GET, "/api/v1/metrics", None).await;
    let text = metrics.as_str().unwrap().to_owned();
    assert!(
        text.contains("avap_jobs{state=\"succeeded\",priority=\"high\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("avap_job_attempts_total{outcome=\"succeeded\"} 2"),
        "{text}"
    );
    assert!(text.contains("avap_job_queue_seconds_count 2"), "{text}");
    node.finish().await;
}

async fn idempotency_keys_make_one_job(backend: Backend) {
    let node = Node::start(backend, "idem", Options::default()).await;
    let body = json!({"script": HELLO, "params": {"name": "Lin"}, "idempotency_key": "order-17"});
    let id = node.submit(body.clone()).await;
    // The same body with its keys in another order is the same submission.
    let reordered = json!({"idempotency_key": "order-17", "params": {"name": "Lin"}, "script": HELLO});
    let (status, again) = node.send(Method::POST, "/api/v1/jobs", Some(reordered)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], id.as_str());
    node.wait_for(&id, "succeeded").await;
    let (status, again) = node.send(Method::POST, "/api/v1/jobs", Some(body)).await;
    assert_eq!(
        (status, &again["id"], &again["state"]),
        (StatusCode::OK, &json!(id), &json!("succeeded"))
    );
    let other = json!({"script": HELLO, "params": {"name": "Bo"}, "idempotency_key": "order-17"});
    let (status, refused) = node.send(Method::POST, "/api/v1/jobs", Some(other)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["kind"], "IdempotencyConflict");
    assert!(refused["error"]["message"].as_str().unwrap().contains(&id));
    let (_, list) = node.send(Method::GET, "/api/v1/jobs", None).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
    node.finish().await;
}

async fn failures_back_off_then_die_and_can_be_retried(backend: Backend) {
    let node = Node::start(backend, "retry", Options::default()).await;
    let id = node
        .submit(json!({"script": "x = 1 / 0\naddResult(x)\n", "max_attempts": 3,
                       "backoff": {"initial_ms": 200, "factor": 2, "max_ms": 10000}}))
        .await;
    let job = node.wait_for(&id, "dead").await;
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{job:#}");
    for attempt in attempts {
        assert_eq!(attempt["outcome"], "failed");
        assert_eq!(attempt["error"]["kind"], "ZeroDivisionError", "{attempt}");
    }
    // Equal jitter: at least half of 200 ms, then of 400 ms, between attempts.
    let gap = |i: usize| ms(&attempts[i + 1]["started_at"]) - ms(&attempts[i]["finished_at"]);
    assert!(gap(0) >= 100, "first wait {} ms", gap(0));
    assert!(gap(1) >= 200, "second wait {} ms", gap(1));
    assert_eq!(job["result"]["status"], 400, "the last run's envelope is kept");
    let (_, dead) = node.send(Method::GET, "/api/v1/jobs?state=dead", None).await;
    assert_eq!(dead["jobs"][0]["id"], id.as_str(), "{dead}");
    // Retrying a dead job gives it max_attempts more.
    let (status, retried) = node.send(Method::POST, &format!("/api/v1/jobs/{id}/retry"), None).await;
    assert_eq!(
        (status, &retried["state"]),
        (StatusCode::ACCEPTED, &json!("queued")),
        "{retried}"
    );
    let job = node.wait_for(&id, "dead").await;
    assert_eq!(job["attempts"].as_array().unwrap().len(), 6, "{job:#}");
    // A compile error is dead at the first attempt: another would fail the same way.
    let id = node.submit(json!({"script": "if(\n", "max_attempts": 5})).await;
    let job = node.wait_for(&id, "dead").await;
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1, "{job:#}");
    assert_eq!(job["attempts"][0]["error"]["kind"], "CompileError");
    let ok = node.submit(json!({"script": HELLO, "params": {"name": "Ada"}})).await;
    node.wait_for(&ok, "succeeded").await;
    let (status, refused) = node.send(Method::POST, &format!("/api/v1/jobs/{ok}/retry"), None).await;
    assert_eq!(
        (status, &refused["error"]["kind"]),
        (StatusCode::CONFLICT, &json!("JobStateConflict"))
    );
    node.finish().await;
}

async fn a_backlog_runs_high_then_normal_then_low(backend: Backend) {
    // No workers at first: the backlog builds up, then one worker drains it.
    let mut node = Node::start(
        backend,
        "prio",
        Options {
            workers: 0,
            ..Options::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    for round in 0..3 {
        for priority in ["low", "normal", "high"] {
            let id = node
                .submit(json!({"script": format!("x = {round}\naddResult(x)\n"), "priority": priority}))
                .await;
            ids.push((priority, id));
        }
    }
    // Every job is queued (with NATS: dispatched to the stream) before the worker starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.add_workers(1);
    let mut started = Vec::new();
    for (priority, id) in &ids {
        let job = node.wait_for(id, "succeeded").await;
        started.push((ms(&job["attempts"][0]["started_at"]), *priority));
    }
    started.sort_unstable();
    let order: Vec<&str> = started.iter().map(|(_, p)| *p).collect();
    assert_eq!(
        order,
        [
            "high", "high", "high", "normal", "normal", "normal", "low", "low", "low"
        ],
        "{started:?}"
    );
    node.finish().await;
}

async fn delayed_jobs_wait_for_their_time(backend: Backend) {
    let node = Node::start(backend, "delay", Options::default()).await;
    let id = node
        .submit(json!({"script": HELLO, "params": {"name": "Ada"}, "delay_s": 0.8}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.job(&id).await["state"], "queued");
    let job = node.wait_for(&id, "succeeded").await;
    let waited = ms(&job["attempts"][0]["started_at"]) - ms(&job["created_at"]);
    assert!(waited >= 790, "ran after {waited} ms");
    // A time in the past is now.
    let id = node
        .submit(json!({"script": HELLO, "params": {"name": "Ada"}, "run_at": "2001-01-01T00:00:00Z"}))
        .await;
    node.wait_for(&id, "succeeded").await;
    node.finish().await;
}

async fn cancelled_jobs_stop_or_never_run(backend: Backend) {
    let node = Node::start(backend, "cancel", Options::default()).await;
    let later = node
        .submit(json!({"script": HELLO, "params": {"name": "Ada"}, "delay_s": 30}))
        .await;
    let (status, job) = node.send(Method::DELETE, &format!("/api/v1/jobs/{later}"), None).await;
    assert_eq!((status, &job["state"]), (StatusCode::OK, &json!("cancelled")), "{job}");
    assert_eq!(job["attempts"], json!([]));
    // A running job is stopped at its worker's next heartbeat (a third of the 1.5 s lease).
    let long = node
        .submit(json!({"script": "ormDirect(\"SELECT pg_sleep(10)::text\", r)\naddResult(r)\n"}))
        .await;
    node.wait_for(&long, "running").await;
    let (status, job) = node.send(Method::DELETE, &format!("/api/v1/jobs/{long}"), None).await;
    assert_eq!((status, &job["state"]), (StatusCode::OK, &json!("cancelled")), "{job}");
    assert_eq!(job["attempts"][0]["outcome"], "cancelled");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, metrics) = node.send(Method::GET, "/api/v1/metrics", None).await;
        if metrics.as_str().unwrap().contains("avap_job_runs_in_flight 0") {
            break;
        }
        assert!(Instant::now() < deadline, "the cancelled run is still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, refused) = node.send(Method::DELETE, &format!("/api/v1/jobs/{long}"), None).await;
    assert_eq!(
        (status, &refused["error"]["kind"]),
        (StatusCode::CONFLICT, &json!("JobStateConflict"))
    );
    node.finish().await;
}

async fn jobs_get_the_job_time_limit(backend: Backend) {
    // Requests may run 200 ms here; jobs up to 20 s.
    let node = Node::start(
        backend,
        "limit",
        Options {
            request_time_ms: 200,
            ..Options::default()
        },
    )
    .await;
    let script = "ormDirect(\"SELECT pg_sleep(0.5)::text\", r)\nx = 1\naddResult(x)\n";
    let (status, run) = node
        .send(Method::POST, "/api/v1/execute", Some(json!({"script": script})))
        .await;
    assert_eq!(
        (status, &run["error"]["kind"]),
        (StatusCode::GATEWAY_TIMEOUT, &json!("TimeLimit")),
        "{run}"
    );
    let id = node.submit(json!({"script": script})).await;
    let job = node.wait_for(&id, "succeeded").await;
    assert_eq!(job["result"]["body"]["result"]["x"], 1);
    // A job's own limit is honoured (and a limit hit is retried, then dead).
    let id = node
        .submit(json!({"script": script, "limits": {"time_ms": 100}, "max_attempts": 2,
                       "backoff": {"initial_ms": 10}}))
        .await;
    let job = node.wait_for(&id, "dead").await;
    assert_eq!(job["attempts"][1]["error"]["kind"], "TimeLimit", "{job:#}");
    node.finish().await;
}

async fn finished_jobs_are_pruned_after_their_retention(backend: Backend) {
    let node = Node::start(
        backend,
        "prune",
        Options {
            retention: Duration::from_secs(1),
            ..Options::default()
        },
    )
    .await;
    let id = node.submit(json!({"script": HELLO, "params": {"name": "Ada"}})).await;
    node.wait_for(&id, "succeeded").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = node.send(Method::GET, &format!("/api/v1/jobs/{id}"), None).await;
        if status == StatusCode::NOT_FOUND {
            assert_eq!(body["error"]["kind"], "JobNotFound");
            break;
        }
        assert!(Instant::now() < deadline, "the job was kept: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.finish().await;
}

async fn bad_requests_are_clear_errors(backend: Backend) {
    let node = Node::start(backend, "bad", Options::default()).await;
    let cases = [
        (
            json!({"script": HELLO, "params": {"name": "Ada"}, "name": "x"}),
            400,
            "InvalidRequest",
            "exactly one of",
        ),
        (json!({}), 400, "InvalidRequest", "exactly one of"),
        (json!({"name": "nope"}), 404, "ScriptNotFound", "nope"),
        (
            json!({"script": HELLO, "params": {"name": "Ada"}, "priority": "urgent"}),
            400,
            "InvalidRequest",
            "unknown variant",
        ),
        (
            json!({"script": HELLO, "params": {"name": "Ada"}, "max_attempts": 0}),
            400,
            "InvalidRequest",
            "max_attempts",
        ),
        (
            json!({"script": HELLO, "params": {"name": "Ada"}, "run_at": "soon"}),
            400,
            "InvalidRequest",
            "RFC 3339",
        ),
        (
            json!({"script": HELLO, "params": {"name": "Ada"}, "delay_s": -2}),
            400,
            "InvalidRequest",
            "delay_s",
        ),
        (
            json!({"script": HELLO, "params": {"name": "Ada"}, "backoff": {"factor": 0}}),
            400,
            "InvalidRequest",
            "factor",
        ),
        (
            json!({"script": HELLO, "params": {"name": "Ada"}, "idempotency_key": "a b"}),
            400,
            "InvalidRequest",
            "idempotency_key",
        ),
        (json!({"script": HELLO, "params": [1]}), 400, "InvalidRequest", "params"),
        (
            json!({"script": HELLO, "params": {"name": "Ada"}, "colour": 1}),
            400,
            "InvalidRequest",
            "unknown field",
        ),
    ];
    for (body, status, kind, says) in cases {
        let (got, reply) = node.send(Method::POST, "/api/v1/jobs", Some(body.clone())).await;
        assert_eq!(
            (got.as_u16(), reply["error"]["kind"].as_str().unwrap_or("")),
            (status, kind),
            "{body} → {reply}"
        );
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(says),
            "{body} → {reply}"
        );
    }
    for (method, path, status, kind) in [
        (Method::GET, "/api/v1/jobs/nope", 404, "JobNotFound"),
        (Method::DELETE, "/api/v1/jobs/nope", 404, "JobNotFound"),
        (Method::POST, "/api/v1/jobs/nope/retry", 404, "JobNotFound"),
        (Method::GET, "/api/v1/jobs?state=stuck", 400, "InvalidRequest"),
        (Method::GET, "/api/v1/jobs?limit=0", 400, "InvalidRequest"),
    ] {
        let (got, reply) = node.send(method, path, None).await;
        assert_eq!(
            (got.as_u16(), reply["error"]["kind"].as_str().unwrap_or("")),
            (status, kind),
            "{path} → {reply}"
        );
    }
    node.finish().await;
}

async fn the_jobs_scope_guards_the_routes(backend: Backend) {
    let node = Node::start(
        backend,
        "scope",
        Options {
            anonymous: false,
            ..Options::default()
        },
    )
    .await;
    let mut keys = Vec::new();
    for scope in ["execute", "jobs"] {
        let new = avap_server::auth::generate().expect("a key");
        node.state
            .store()
            .create_api_key(&new.id, None, &new.hash, scope)
            .await
            .expect("store the key");
        keys.push(new.key);
    }
    let body = json!({"script": HELLO, "params": {"name": "Ada"}});
    let (status, reply) = node
        .send_as(Method::POST, "/api/v1/jobs", Some(body.clone()), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reply}");
    let (status, reply) = node
        .send_as(Method::POST, "/api/v1/jobs", Some(body.clone()), Some(&keys[0]))
        .await;
    assert_eq!(
        (status, &reply["error"]["kind"]),
        (StatusCode::FORBIDDEN, &json!("Forbidden")),
        "{reply}"
    );
    let (status, reply) = node
        .send_as(Method::POST, "/api/v1/jobs", Some(body), Some(&keys[1]))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    node.finish().await;
}

async fn a_full_queue_refuses_more_jobs(backend: Backend) {
    let node = Node::start(
        backend,
        "full",
        Options {
            workers: 0,
            max_unfinished: 2,
            ..Options::default()
        },
    )
    .await;
    let job = |n: u32| json!({"script": HELLO, "params": {"name": format!("n{n}")}});
    let first = node.submit(job(1)).await;
    node.submit(job(2)).await;
    let (status, reply) = node.send(Method::POST, "/api/v1/jobs", Some(job(3))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(reply["error"]["kind"], "JobQueueFull", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("jobs_max_queued"), "{message}");
    // A finished (here: cancelled) job makes room.
    let (status, reply) = node.send(Method::DELETE, &format!("/api/v1/jobs/{first}"), None).await;
    assert!(status.is_success(), "{reply}");
    node.submit(job(3)).await;
    node.finish().await;
}

/// Each test once per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_database {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Database).await;
                }
            )*
        }
        mod on_nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Nats).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_job_runs_once_and_keeps_its_result,
    idempotency_keys_make_one_job,
    failures_back_off_then_die_and_can_be_retried,
    a_backlog_runs_high_then_normal_then_low,
    delayed_jobs_wait_for_their_time,
    cancelled_jobs_stop_or_never_run,
    jobs_get_the_job_time_limit,
    finished_jobs_are_pruned_after_their_retention,
    bad_requests_are_clear_errors,
    the_jobs_scope_guards_the_routes,
    a_full_queue_refuses_more_jobs,
);
