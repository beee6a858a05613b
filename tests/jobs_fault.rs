//! Jobs across process failures, with the real binaries and services:
//!
//! * a worker killed (SIGKILL) in the middle of a job: another worker runs it
//!   after the lease, and it completes exactly once as seen by its
//!   idempotency key and by its effect (a row it inserts in a `PostgreSQL`
//!   application database) — on the database queue and on NATS;
//! * a server killed with jobs queued (and one running) in its `SQLite`
//!   database: restarted, it runs them.
//!
//! nats-server stopped and restarted under load is `jobs_nats_restart.rs`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{PgDatabase, Server, fresh_dir, serve_command, server_database};

const NATS_URL: &str = "nats://127.0.0.1:4222";

/// Which queue the processes share.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Database,
    Nats,
}

/// The settings every process of one test shares: the queue, a short
/// lease, the application database; as `AVAP_*` variables.
fn shared_env(cmd: &mut Command, backend: Backend, prefix: &str, app_database: &str) {
    cmd.env("AVAP_JOBS_LEASE_MS", "1000")
        .env("AVAP_APP_DATABASE_URL", app_database)
        .env("AVAP_JOBS_PREFIX", prefix)
        .env("AVAP_RATE_LIMIT", "0")
        .env("AVAP_LOG_LEVEL", "warn");
    if let Backend::Nats = backend {
        cmd.env("AVAP_JOBS_URL", NATS_URL);
    }
}

fn unique() -> String {
    let mut random = [0u8; 5];
    getrandom::fill(&mut random).expect("random");
    format!("f{}", hex::encode(random))
}

/// A running `avap worker`, killed (SIGKILL) when dropped.
struct Worker(Child);

impl Worker {
    fn start(data_dir: &Path, backend: Backend, prefix: &str, app_database: &str) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
        cmd.args(["worker", "--jobs-workers", "1", "--data-dir"]).arg(data_dir);
        if let Some(url) = server_database(data_dir) {
            cmd.env("AVAP_DATABASE_URL", url);
        }
        shared_env(&mut cmd, backend, prefix, app_database);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start avap worker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the startup line");
        assert!(line.starts_with("avap worker running 1 jobs at once"), "{line:?}");
        Worker(child)
    }

    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(data_dir: &Path, backend: Backend, prefix: &str, app_database: &str, workers: usize) -> Server {
    let mut cmd = serve_command(data_dir);
    cmd.args(["--jobs-workers", &workers.to_string()]);
    shared_env(&mut cmd, backend, prefix, app_database);
    Server::spawn(cmd, data_dir.to_path_buf())
}

fn job(server: &Server, id: &str) -> Value {
    let reply = server.get(&format!("/api/v1/jobs/{id}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn wait_for(server: &Server, id: &str, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let job = job(server, id);
        if job["state"] == state {
            return job;
        }
        assert!(Instant::now() < deadline, "job never became {state}: {job:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh application database with the table jobs write their effect to.
fn effects_database() -> PgDatabase {
    let db = PgDatabase::create("jobs");
    db.query("CREATE TABLE effects (job_key TEXT PRIMARY KEY)");
    db
}

/// Sleeps (so it can be killed mid-run), then records its key.
const EFFECT: &str = "ormDirect(\"SELECT pg_sleep(2)::text\", s)\naddParam(key, k)\n\
                      ormAccessInsert(\"job_key\", \"effects\", [k], n)\naddResult(n)\n";

/// Delete a test's NATS stream (plain NATS protocol: the `JetStream` API is
/// request subjects; the reply is not needed).
fn delete_stream(prefix: &str) {
    use std::io::{Read as _, Write as _};
    let Ok(mut tcp) = std::net::TcpStream::connect("127.0.0.1:4222") else {
        return;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let mut info = [0u8; 4096];
    let _ = tcp.read(&mut info);
    let _ = write!(
        tcp,
        "CONNECT {{}}\r\nPUB $JS.API.STREAM.DELETE.{prefix}_jobs 0\r\n\r\nPING\r\n"
    );
    let _ = tcp.read(&mut info);
}

fn a_worker_killed_mid_job(backend: Backend) {
    let dir: PathBuf = fresh_dir(&format!("killed-{backend:?}")).join("data");
    let prefix = unique();
    let app = effects_database();
    // The API node runs no jobs: only the workers do.
    let server = serve(&dir, backend, &prefix, &app.url, 0);
    let first = Worker::start(&dir, backend, &prefix, &app.url);
    let body = json!({"script": EFFECT, "params": {"key": "order-1"}, "idempotency_key": "order-1",
                      "backoff": {"initial_ms": 100}});
    let submitted = server.post_json("/api/v1/jobs", &body);
    assert_eq!(submitted.status, 202, "{}", submitted.body);
    let id = submitted.json()["id"].as_str().unwrap().to_owned();
    wait_for(&server, &id, "running", Duration::from_secs(10));
    first.kill();
    let second = Worker::start(&dir, backend, &prefix, &app.url);
    let done = wait_for(&server, &id, "succeeded", Duration::from_secs(20));
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{done:#}");
    assert_eq!(attempts[0]["outcome"], "lost", "{done:#}");
    assert_eq!(attempts[0]["error"]["kind"], "WorkerLost");
    assert_eq!(attempts[1]["outcome"], "succeeded");
    assert_ne!(attempts[0]["worker"], attempts[1]["worker"]);
    assert_eq!(app.query("SELECT job_key FROM effects"), "order-1");
    // The same submission again is the same job: nothing runs twice.
    let again = server.post_json("/api/v1/jobs", &body);
    assert_eq!((again.status, &again.json()["id"]), (200, &json!(id)), "{}", again.body);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(app.query("SELECT COUNT(*) FROM effects"), "1");
    assert_eq!(job(&server, &id)["attempts"].as_array().unwrap().len(), 2);
    drop(second);
    server.kill();
    if let Backend::Nats = backend {
        delete_stream(&prefix);
    }
}

#[test]
fn a_worker_killed_mid_job_on_the_database_queue_is_replaced_and_the_job_runs_once() {
    a_worker_killed_mid_job(Backend::Database);
}

#[test]
fn a_worker_killed_mid_job_on_nats_is_replaced_and_the_job_runs_once() {
    a_worker_killed_mid_job(Backend::Nats);
}

#[test]
fn jobs_queued_in_sqlite_run_after_the_server_is_killed_and_restarted() {
    let dir: PathBuf = fresh_dir("restarted").join("data");
    let prefix = unique();
    let app = effects_database();
    let server = serve(&dir, Backend::Database, &prefix, &app.url, 1);
    let mut ids = Vec::new();
    let sleeper = json!({"script": EFFECT, "params": {"key": "sleeper"}});
    let reply = server.post_json("/api/v1/jobs", &sleeper);
    assert_eq!(reply.status, 202, "{}", reply.body);
    let running = reply.json()["id"].as_str().unwrap().to_owned();
    wait_for(&server, &running, "running", Duration::from_secs(10));
    // The only worker is busy: these wait in the queue.
    for n in 0..4 {
        let reply = server.post_json(
            "/api/v1/jobs",
            &json!({"script": EFFECT, "params": {"key": format!("queued-{n}")}}),
        );
        assert_eq!(reply.status, 202, "{}", reply.body);
        ids.push(reply.json()["id"].as_str().unwrap().to_owned());
    }
    server.kill();
    let server = serve(&dir, Backend::Database, &prefix, &app.url, 4);
    for id in &ids {
        let done = wait_for(&server, id, "succeeded", Duration::from_secs(20));
        assert_eq!(done["attempts"].as_array().unwrap().len(), 1, "{done:#}");
    }
    let done = wait_for(&server, &running, "succeeded", Duration::from_secs(20));
    let outcomes: Vec<&Value> = done["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["outcome"])
        .collect();
    assert_eq!(outcomes, [&json!("lost"), &json!("succeeded")], "{done:#}");
    assert_eq!(app.query("SELECT COUNT(*) FROM effects"), "5");
    server.kill();
}
