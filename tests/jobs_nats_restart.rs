//! nats-server stopped and restarted while jobs are submitted and run: no
//! accepted job is lost. Jobs are accepted into the database also while
//! NATS is down; the dispatcher hands them over once it is back, and what
//! the stream held survives the restart (file storage).
//!
//! This stops the machine's nats-server on 127.0.0.1:4222 (only that
//! process) and starts it again with the command the machine uses, so it
//! is its own test binary: nothing else in it uses NATS meanwhile.

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Server, fresh_dir, serve_command};

/// The pid of the process listening on 127.0.0.1:4222.
fn nats_pid() -> Option<u32> {
    let out = Command::new("ss").args(["-ltnpH", "sport = :4222"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("pid=")? + 4;
    text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn nats_answers() -> bool {
    std::net::TcpStream::connect("127.0.0.1:4222").is_ok()
}

fn wait_until(what: &str, within: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start nats-server as the machine does.
fn start_nats() {
    let status = Command::new("start-stop-daemon")
        .args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/nats-server",
            "--",
            "-a",
            "127.0.0.1",
            "-p",
            "4222",
            "-js",
            "-sd",
            "/var/lib/nats-server",
            "-l",
            "/var/log/nats-server.log",
        ])
        .status()
        .expect("run start-stop-daemon");
    assert!(status.success(), "start-stop-daemon failed: {status}");
    wait_until("nats-server listening again", Duration::from_secs(20), nats_answers);
}

/// Starts nats-server again if the test fails while it is stopped.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        if !nats_answers() {
            start_nats();
        }
    }
}

#[test]
fn no_accepted_job_is_lost_when_nats_server_restarts_under_load() {
    if !nats_answers() {
        start_nats();
    }
    let mut random = [0u8; 5];
    getrandom::fill(&mut random).expect("random");
    let prefix = format!("r{}", hex::encode(random));
    let dir = fresh_dir("nats-restart").join("data");
    let mut cmd = serve_command(&dir);
    cmd.args(["--jobs-url", "nats://127.0.0.1:4222", "--jobs-workers", "2"])
        .env("AVAP_JOBS_PREFIX", &prefix)
        .env("AVAP_JOBS_LEASE_MS", "2000")
        .env("AVAP_RATE_LIMIT", "0")
        .env("AVAP_LOG_LEVEL", "error");
    let server = Arc::new(Server::spawn(cmd, dir));
    let _guard = RestartGuard;

    // The load: 150 jobs over about 3 s, each recorded once accepted.
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let submitter = {
        let (server, accepted, refused) = (server.clone(), accepted.clone(), refused.clone());
        std::thread::spawn(move || {
            for n in 0..150 {
                let body =
                    json!({"script": format!("x = {n}\naddResult(x)\n"), "idempotency_key": format!("load-{n}")});
                let reply = server.post_json("/api/v1/jobs", &body);
                if reply.status == 202 {
                    let id = reply.json()["id"].as_str().unwrap().to_owned();
                    accepted.lock().unwrap().push((Instant::now(), id));
                } else {
                    refused.lock().unwrap().push((reply.status, reply.body));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    let pid = nats_pid().expect("nats-server listens on 4222");
    let stopped_at = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_until("nats-server stopped", Duration::from_secs(10), || !nats_answers());
    let jobs_health = || server.get("/api/v1/health").json()["jobs"].clone();
    wait_until("health showing the jobs degraded", Duration::from_secs(5), || {
        jobs_health() == "degraded"
    });
    std::thread::sleep(Duration::from_secs(1));
    start_nats();
    wait_until("health showing the jobs ok", Duration::from_secs(15), || {
        jobs_health() == "ok"
    });
    let restarted_at = Instant::now();
    submitter.join().expect("the submitter");

    let refused = refused.lock().unwrap().clone();
    assert!(refused.is_empty(), "submissions refused: {refused:?}");
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 150);
    let while_down = accepted
        .iter()
        .filter(|(at, _)| *at > stopped_at && *at < restarted_at)
        .count();
    assert!(
        while_down > 10,
        "only {while_down} jobs were submitted while NATS was down"
    );

    // Every accepted job runs.
    let wanted: HashSet<String> = accepted.into_iter().map(|(_, id)| id).collect();
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let reply = server.get("/api/v1/jobs?state=succeeded&limit=1000");
        assert_eq!(reply.status, 200, "{}", reply.body);
        let done: HashSet<String> = reply.json()["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect();
        let missing: Vec<&String> = wanted.difference(&done).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted jobs never ran, e.g. {}",
            missing.len(),
            server.get(&format!("/api/v1/jobs/{}", missing[0])).body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing ran twice: one attempt each.
    let reply = server.get("/api/v1/jobs?limit=1000");
    for job in reply.json()["jobs"].as_array().unwrap() {
        assert_eq!(job["attempts"], 1, "{job}");
    }
    Arc::try_unwrap(server).ok().expect("the only reference").kill();
    delete_stream(&prefix);
}

/// Delete the test's stream (plain NATS protocol; the reply is not needed).
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
