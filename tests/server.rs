//! `avap serve` as a client sees it: the real binary on a loopback port,
//! spoken to with raw HTTP/1.1 over `TcpStream` (one request per
//! connection, `Connection: close`).

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
            "cache": {
                "inline_scripts": 0, "stored_scripts": 0, "modules": 0, "modules_compiled": 0,
                "capacity": 256, "runs": {"active": 0, "slots": 2 * cores},
            },
        })
    );
    for _ in 0..2 {
        assert_eq!(s.execute(&json!({"script": "x = 1\naddResult(x)\n"})).status, 200);
    }
    let cache = s.get("/api/v1/health").json()["cache"].clone();
    assert_eq!((&cache["inline_scripts"], &cache["modules"]), (&json!(1), &json!(1)));
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
fn info_lists_limits_policy_and_commands() {
    let s = Server::start("info");
    let r = s.get("/api/v1/info");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        v["limits"],
        json!({"fuel": 1_000_000_000u64, "time_ms": 10_000, "memory_mb": 128, "stack_kb": 256, "output_kb": 4096})
    );
    assert_eq!(v["requests"]["max_body_bytes"], 1 << 20);
    assert!(
        v["capabilities"]["allowed"]
            .as_array()
            .unwrap()
            .contains(&json!("pure"))
    );
    let commands = v["commands"].as_array().expect("commands");
    let add_param = commands
        .iter()
        .find(|c| c["name"] == "addParam")
        .expect("addParam listed");
    assert_eq!(add_param["capability"], "request");
}

#[test]
fn execute_hello_returns_the_envelope() {
    let s = Server::start("hello");
    let script = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";
    let r = s.execute(&json!({"script": script, "params": {"name": "Ada"}}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], true);
    assert_eq!(v["result"], json!({"message": "Hello, Ada"}));
    // The query of the simulated request works too.
    let r = s.execute(&json!({"script": script, "request": {"method": "GET", "query": {"name": "Bo"}}}));
    assert_eq!(r.json()["result"]["message"], "Hello, Bo");
}

#[test]
fn status_variable_is_the_http_status() {
    let s = Server::start("status");
    let script = "addParam(code, code)\n_status = code\naddResult(code)\n";
    let r = s.execute(&json!({"script": script, "request": {"query": {"code": "201"}}}));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["result"]["code"], 201);
}

#[test]
fn runtime_error_is_400_with_kind_and_position() {
    let s = Server::start("runtime-error");
    let r = s.execute(&json!({"script": "x = 1\ny = x + missing\n"}));
    assert_eq!(r.error_kind(), (400, "NameError".to_owned()), "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], false);
    assert_eq!(
        (v["error"]["line"].as_u64(), v["error"]["column"].as_u64()),
        (Some(2), Some(9))
    );
}

#[test]
fn compile_error_is_400_compile_error() {
    let s = Server::start("compile-error");
    let r = s.execute(&json!({"script": "if(x, 1, =)\naddVar(y, 2)\n"}));
    assert_eq!(r.error_kind(), (400, "CompileError".to_owned()), "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"]["line"], 1);
    assert_eq!(v["error"]["diagnostics"][0]["code"], "E0020");
}

#[test]
fn limits_are_clamped_to_the_server_maximum() {
    let s = Server::start("limits");
    let endless = "s = 0\nstartLoop(i, 1, 9000000000000)\n  s = s + 1\nendLoop()\naddResult(s)\n";
    let start = Instant::now();
    let r = s.execute(&json!({"script": endless, "limits": {"fuel": 99_999_999_999_999u64, "time_ms": 3_600_000}}));
    let took = start.elapsed();
    // Unclamped, the run would go on to the time limit; clamped, it runs out of fuel first.
    assert_eq!(r.error_kind(), (422, "FuelExhausted".to_owned()), "{}", r.body);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Asking for less than the maximum is honoured.
    let r = s.execute(&json!({"script": endless, "limits": {"fuel": 1000}}));
    assert_eq!(r.error_kind(), (422, "FuelExhausted".to_owned()));
    assert!(r.json()["elapsed"].as_f64().unwrap() < 0.5);
}

#[test]
fn malformed_json_is_400_with_position() {
    let s = Server::start("malformed");
    let r = s.post("/api/v1/execute", "{\"script\": \"x\",\n}");
    assert_eq!(r.error_kind(), (400, "InvalidJson".to_owned()), "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["error"]["line"].as_u64(), v["error"]["column"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("trailing comma"),
        "{v}"
    );
    let r = s.post("/api/v1/execute", "");
    assert_eq!(r.error_kind(), (400, "InvalidJson".to_owned()), "{}", r.body);
}

#[test]
fn unknown_fields_are_rejected() {
    let s = Server::start("unknown-field");
    let r = s.execute(&json!({"script": "x = 1\naddResult(x)\n", "parms": {}}));
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    assert!(r.body.contains("unknown field `parms`"), "{}", r.body);
    let r = s.execute(&json!({"script": "x = 1\naddResult(x)\n", "limits": {"fuel_max": 1}}));
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    let r = s.execute(&json!({"script": "x = 1\naddResult(x)\n", "params": [1, 2]}));
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
}

#[test]
fn oversized_body_and_script_are_413() {
    let s = Server::start("oversized");
    let big = json!({"script": "x".repeat((1 << 20) + 10)}).to_string();
    let r = s.post("/api/v1/execute", &big);
    assert_eq!(r.error_kind(), (413, "BodyTooLarge".to_owned()), "{}", r.body);
    let long_script = json!({"script": "x".repeat(300 << 10)}).to_string();
    let r = s.post("/api/v1/execute", &long_script);
    assert_eq!(r.error_kind(), (413, "ScriptTooLarge".to_owned()), "{}", r.body);
    // The server is fine afterwards.
    assert_eq!(s.execute(&json!({"script": "x = 1\naddResult(x)\n"})).status, 200);
}

#[test]
fn unknown_routes_and_methods_are_json_errors() {
    let s = Server::start("routes");
    let r = s.get("/api/v1/nope");
    assert_eq!(r.error_kind(), (404, "NotFound".to_owned()), "{}", r.body);
    assert!(r.body.contains("/api/v1/nope"));
    let r = s.get("/api/v1/execute");
    assert_eq!(r.error_kind(), (405, "MethodNotAllowed".to_owned()), "{}", r.body);
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
