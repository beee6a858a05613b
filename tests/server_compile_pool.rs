//! The compile pool (`max_concurrent_compiles`): a compile keeps its slot
//! until it finishes, even when its request timed out, so abandoned
//! compiles cannot pile up; requests that find the pool full wait at most
//! `queue_wait_ms` and get 503.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Server, fresh_dir, post_request, send_to, serve_command};

/// A script near the compile budget (many small functions: the slowest
/// shape to compile; 2,700 of them are refused, E0082), made distinct by
/// `tag` so the compile cache misses. 2,500 take about 1 s on a quiet
/// 2-core machine.
fn slow_to_compile(tag: u32) -> String {
    use std::fmt::Write as _;
    let mut s = format!("a = {tag}\n");
    for n in 0..2500 {
        let _ = write!(s, "function f{n}() {{\n  return(a + {n})\n}}\n");
    }
    s.push_str("y = f1()\naddResult(y)\n");
    s
}

fn execute(addr: &str, script: &str) -> (u16, String, Duration) {
    let body = json!({"script": script}).to_string();
    let started = Instant::now();
    let reply = send_to(addr, &post_request("/api/v1/execute", body.as_bytes()));
    (reply.status, reply.body, started.elapsed())
}

#[test]
fn a_timed_out_compile_keeps_its_slot_and_the_next_one_is_shed() {
    // How long one such compile takes on this machine (and build): the
    // server's timeouts below are fractions of it, so the test holds on a
    // fast machine as on a slow one.
    let (status, body, alone) = {
        let data_dir = fresh_dir("compile-pool-timing").join("data");
        let timing = Server::spawn(serve_command(&data_dir), data_dir);
        execute(&timing.addr, &slow_to_compile(0))
    };
    assert_eq!(status, 200, "{body}");
    assert!(
        alone > Duration::from_millis(250),
        "the slow script compiled in {alone:?}: too fast to test the pool with"
    );
    // A's request times out at 30% of its compile; B, sent right after,
    // gives up queueing at 50%: both while A still holds the only slot.
    let request_timeout = alone * 3 / 10;
    let queue_wait = alone / 5;

    let data_dir = fresh_dir("compile-pool").join("data");
    let mut cmd = serve_command(&data_dir);
    cmd.env("AVAP_MAX_CONCURRENT_COMPILES", "1")
        .env("AVAP_REQUEST_TIMEOUT_MS", request_timeout.as_millis().to_string())
        .env("AVAP_QUEUE_WAIT_MS", queue_wait.as_millis().to_string());
    let server = Server::spawn(cmd, data_dir);
    let addr = server.addr.clone();

    // A compiles; its request times out (504) long before the compile ends.
    let (status, body, _) = execute(&addr, &slow_to_compile(1));
    assert_eq!(status, 504, "{body}");
    // B arrives while A's compile still holds the only slot: shed with 503
    // after queue_wait_ms, not compiled alongside.
    let (status, body, waited) = execute(&addr, &slow_to_compile(2));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Overloaded"), "{body}");
    assert!(
        waited < queue_wait + Duration::from_millis(90),
        "waited {waited:?} (queue_wait {queue_wait:?})"
    );
    let metrics = server.get("/api/v1/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("avap_compiles_shed_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Once A's compile is done, the pool serves again.
    std::thread::sleep(alone);
    let (status, body, _) = execute(&addr, "x = 1\naddResult(x)\n");
    assert_eq!(status, 200, "{body}");
}
