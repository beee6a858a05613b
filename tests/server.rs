//! `avap serve` as a client sees it: the real binary on a loopback port,
//! spoken to with raw HTTP/1.1 over `TcpStream` (one request per
//! connection, `Connection: close`): what needs the process — the data
//! directory, the registry backend (`.ci/run` runs this file again on
//! `PostgreSQL`), signals. Requests and responses themselves are tested in
//! process, through the router: `server/tests/router.rs`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Reply, Server, fresh_dir, post_request};

#[test]
fn health_reports_ok_and_the_cache() {
    let s = Server::start("health");
    assert!(s.data_dir.is_dir(), "the data directory is created");
    let r = s.get("/api/v1/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    // `.ci/run` runs this file a second time with the registry in PostgreSQL.
    let backend = if std::env::var("TEST_SERVER_DATABASE").as_deref() == Ok("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(
        r.json(),
        json!({
            "status": "ok",
            "degraded": [],
            "version": env!("CARGO_PKG_VERSION"),
            "database": {"status": "ok", "backend": backend},
            "redis": "off",
            "jobs": "database",
            "cache": {
                "inline_scripts": 0, "stored_scripts": 0, "modules": 0, "modules_compiled": 0,
                "capacity": 256, "runs": {"active": 0, "slots": 2 * cores},
                "warm_instances": {"idle": 0, "cap": cores},
            },
        })
    );
    for _ in 0..2 {
        assert_eq!(s.execute(&json!({"script": "x = 1\naddResult(x)\n"})).status, 200);
    }
    let cache = s.get("/api/v1/health").json()["cache"].clone();
    assert_eq!((&cache["inline_scripts"], &cache["modules"]), (&json!(1), &json!(1)));
    // The second run took the instance the first gave back, and gave it back.
    assert_eq!(cache["warm_instances"]["idle"], json!(1), "{cache}");
    let stored = s.post_json(
        "/api/v1/scripts",
        &json!({"name": "hi", "source": "x = 2\naddResult(x)\n"}),
    );
    assert_eq!(stored.status, 201, "{:?}", stored.json());
    for _ in 0..2 {
        assert_eq!(s.execute(&json!({"name": "hi"})).status, 200);
    }
    let cache = s.get("/api/v1/health").json()["cache"].clone();
    assert_eq!((&cache["stored_scripts"], &cache["modules"]), (&json!(1), &json!(2)));
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let mut s = Server::start("shutdown");
    assert_eq!(s.get("/api/v1/health").status, 200);
    // A request in flight: headers and half of the body sent.
    let body = json!({"script": "addParam(n, n)\naddResult(n)\n", "params": {"n": 5}}).to_string();
    let request = post_request("/api/v1/execute", body.as_bytes());
    let split = request.len() - body.len() / 2;
    let mut open = TcpStream::connect(&s.addr).expect("connect");
    open.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    open.write_all(&request[..split]).expect("write the first half");
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    open.write_all(&request[split..]).expect("write the rest");
    let mut raw = Vec::new();
    open.read_to_end(&mut raw).expect("read the reply");
    let r = Reply::parse(&raw);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"]["n"], 5);
    let code = wait_exit(&mut s.child, Duration::from_secs(5));
    assert_eq!(code, Some(0));
}

#[test]
fn default_data_dir_is_under_xdg_data_home() {
    let home = fresh_dir("default-data-dir");
    let data_dir = home.join("avap");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("XDG_DATA_HOME", &home);
    let s = Server::spawn(cmd, data_dir.clone());
    assert!(Path::new(&data_dir).is_dir());
    assert_eq!(s.get("/api/v1/health").status, 200);
}

/// The exit code once the process ends, or `None` if it is still running after `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
