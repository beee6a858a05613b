//! Fault test: the machine's Redis is stopped in the middle of a load and
//! started again. No request may fail and no answer may be wrong; the node
//! reports `degraded` meanwhile and `ok` again afterwards.
//!
//! One test in its own binary, because it stops the shared Redis (cargo
//! runs test binaries one at a time). A guard restarts Redis, with the
//! machine's own command, even when the test fails.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

mod support;

use support::{PgDatabase, Server};

/// Exactly how the machine starts its Redis.
const REDIS_ARGS: [&str; 15] = [
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
];

fn redis_answers() -> bool {
    Command::new("redis-cli")
        .args(["-p", "6379", "ping"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "PONG")
}

fn stop_redis() {
    // `shutdown nosave` closes the connection instead of answering.
    let _ = Command::new("redis-cli")
        .args(["-p", "6379", "shutdown", "nosave"])
        .output();
    let started = Instant::now();
    while redis_answers() {
        assert!(started.elapsed() < Duration::from_secs(10), "Redis did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_redis() {
    if redis_answers() {
        return;
    }
    let status = Command::new("redis-server")
        .args(REDIS_ARGS)
        .status()
        .expect("run redis-server");
    assert!(status.success(), "redis-server failed: {status}");
    let started = Instant::now();
    while !redis_answers() {
        assert!(started.elapsed() < Duration::from_secs(10), "Redis did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts Redis again when dropped (the test failed with it stopped).
struct RestartRedis;

impl Drop for RestartRedis {
    fn drop(&mut self) {
        if !redis_answers() {
            let _ = Command::new("redis-server").args(REDIS_ARGS).status();
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
}

impl Tally {
    fn check(&self, what: &str, status: u16, body: &str, right: bool) {
        if status == 200 && right {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut failed = self.failed.lock().unwrap();
            failed.push(format!("{what}: {status} {body}"));
        }
    }
}

#[test]
fn redis_stopped_and_restarted_mid_load_fails_no_request() {
    assert!(redis_answers(), "this test needs the machine's Redis on 6379");
    let _restart = RestartRedis;
    let prefix = {
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes).unwrap();
        format!("avaptest-fault-{}", hex::encode(bytes))
    };
    // The registry in PostgreSQL, as in a cluster.
    let db = PgDatabase::create("fault");
    let data_dir = support::fresh_dir("fault").join("data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("AVAP_DATABASE_URL", &db.url)
        .env("AVAP_REDIS_URL", "redis://127.0.0.1:6379")
        .env("AVAP_REDIS_PREFIX", &prefix)
        // The shared limit is checked on every request, but never reached.
        .env("AVAP_RATE_LIMIT", "100000")
        .env("AVAP_RATE_BURST", "100000");
    let server = Arc::new(Server::spawn(cmd, data_dir));
    assert_eq!(server.get("/api/v1/health").json()["redis"], "ok");
    for n in 0..4 {
        let source = format!("addParam(x, x)\ny = int(x) * {n}\naddResult(y)\n");
        let r = server.post_json(
            "/api/v1/scripts",
            &json!({"name": format!("times{n}"), "source": source}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();
    // Runners: stored scripts (L1, rate limit through Redis) and inline
    // scripts, a fresh one now and then (compiled on the spot).
    for worker in 0..3u64 {
        let (server, stop, tally) = (server.clone(), stop.clone(), tally.clone());
        workers.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let n = i % 4;
                let x = worker * 1000 + i;
                let r = server.get(&format!("/api/v1/run/times{n}?x={x}"));
                let right = r.status == 200 && r.json()["result"]["y"] == x * n;
                tally.check("stored run", r.status, &r.body, right);
                let unique = if i.is_multiple_of(5) { x } else { 0 };
                let r = server.execute(&json!({"script": format!("a = {unique} + 1\naddResult(a)\n")}));
                let right = r.status == 200 && r.json()["result"]["a"] == unique + 1;
                tally.check("inline run", r.status, &r.body, right);
            }
        }));
    }
    // A writer: new versions of one script (invalidation, L2 sharing), each
    // run right after it is stored, which must give the new version.
    {
        let (server, stop, tally) = (server.clone(), stop.clone(), tally.clone());
        workers.push(std::thread::spawn(move || {
            let (mut next, mut stored) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                next += 1;
                let source = format!("v = {next}\naddResult(v)\n");
                let r = server.post_json("/api/v1/scripts", &json!({"name": "moving", "source": source}));
                if r.status == 201 {
                    stored = next;
                }
                tally.check("store", if r.status == 201 { 200 } else { r.status }, &r.body, true);
                let r = server.get("/api/v1/run/moving");
                let right = r.status == 200 && r.json()["result"]["v"] == stored;
                tally.check("run after store", r.status, &r.body, right);
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    std::thread::sleep(Duration::from_secs(2));
    let before_stop = tally.ok.load(Ordering::Relaxed);
    stop_redis();
    let stopped_at = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let degraded = server.get("/api/v1/health").json();
    std::thread::sleep(Duration::from_millis(2500));
    let during = tally.ok.load(Ordering::Relaxed) - before_stop;
    start_redis();
    let down_for = stopped_at.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("a load thread panicked");
    }

    let failed = tally.failed.lock().unwrap();
    let ok = tally.ok.load(Ordering::Relaxed);
    eprintln!(
        "{ok} requests answered right ({during} while Redis was down for {down_for:?}), {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed or wrong: {:#?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(during > 20, "the load went on while Redis was down ({during})");
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    assert_eq!(degraded["redis"], "degraded", "{degraded}");

    // Back to ok within a few seconds, and Redis is used again.
    let started = Instant::now();
    while server.get("/api/v1/health").json()["redis"] != "ok" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "health did not return to ok"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = server.get("/api/v1/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("avap_redis_errors_total ") && !l.ends_with(" 0")),
        "Redis errors were counted: {metrics}"
    );
    let r = server.post_json(
        "/api/v1/scripts",
        &json!({"name": "after", "source": "z = 5\naddResult(z)\n"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let sha = r.json()["artifact_sha256"].as_str().unwrap().to_owned();
    let started = Instant::now();
    loop {
        let out = Command::new("redis-cli")
            .args(["-p", "6379", "--scan", "--pattern", &format!("{prefix}:cwasm:*:{sha}")])
            .output()
            .expect("redis-cli");
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "modules are not shared again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
