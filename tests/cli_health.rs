//! `avap health` against a real `avap serve`: exit 0 on 200, exit 1 with a
//! clear message otherwise (another status, nobody listening, no answer in
//! time, a URL it cannot use).

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::Server;

/// `avap health ARGS`: (exit code, stdout, stderr).
fn health(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .arg("health")
        .args(args)
        .output()
        .expect("run avap health");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_healthy_server_exits_0() {
    let s = Server::start("healthy");
    let url = format!("http://{}/api/v1/health", s.addr);
    let (code, out, err) = health(&["--url", &url]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, format!("healthy: {url} answered 200 (ok)\n"));

    // Without a path the health endpoint is asked.
    let bare = format!("http://{}", s.addr);
    let (code, out, err) = health(&["--url", &bare, "--timeout-ms", "5000"]);
    assert_eq!(code, Some(0), "{out}{err}");

    // API keys do not matter: health is open even when keys are required.
    let guarded = Server::start_with_args("healthy-guarded", &["--require-api-key"]);
    let (code, out, err) = health(&["--url", &format!("http://{}", guarded.addr)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(s.stop().code(), Some(0));
    assert_eq!(guarded.stop().code(), Some(0));
}

#[test]
fn another_status_exits_1_with_the_status() {
    let s = Server::start("not-health");
    let url = format!("http://{}/api/v1/nope", s.addr);
    let (code, out, err) = health(&["--url", &url]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!("unhealthy: {url} answered 404: ")),
        "the status and the server's message: {err}"
    );
    assert!(err.contains("/api/v1/nope"), "{err}");
}

#[test]
fn a_stopped_server_exits_1() {
    let s = Server::start("stopped");
    let url = format!("http://{}/api/v1/health", s.addr);
    assert_eq!(health(&["--url", &url]).0, Some(0));
    assert_eq!(s.stop().code(), Some(0));
    let (code, out, err) = health(&["--url", &url]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.starts_with("unhealthy: cannot connect to "), "{err}");
    assert!(err.contains("is avap serve listening there?"), "{err}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    // Connections queue in the backlog, but nobody reads or answers them:
    // a hung server, as a health check sees it.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/api/v1/health", silent.local_addr().unwrap());
    let started = Instant::now();
    let (code, out, err) = health(&["--url", &url, "--timeout-ms", "300"]);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(err, format!("unhealthy: {url} did not answer within 300 ms\n"));
    assert!(took < Duration::from_secs(5), "the deadline holds: {took:?}");
    drop(silent);
}

#[test]
fn bad_urls_exit_1_not_2() {
    // Docker reserves health-check exit code 2; every failure is 1.
    let (code, _, err) = health(&["--url", "https://127.0.0.1:8443/api/v1/health"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("plain HTTP only"), "{err}");
    let (code, _, err) = health(&["--url", "127.0.0.1:8080"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("expected http://HOST:PORT/api/v1/health"), "{err}");
    let (code, _, err) = health(&["--url", "http://127.0.0.1:health/"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`health` is not a port number"), "{err}");
}
