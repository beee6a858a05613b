//! `go_async` / `gather` (spec §8) end to end: blocks overlap their waits,
//! `gather` times out on time, blocks still running at the end of the run
//! are cancelled (their outbound requests dropped), and every flow of a run
//! draws on the same fuel, memory and output budgets.
//!
//! The upstream is a raw TCP server on loopback that answers after a delay
//! given in the path and notices a client that hangs up before then, so a
//! test can tell "cancelled" from "finished".

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, compile};
use avap_hostfns::Request;
use avap_hostfns::artifact::{SigningKey, TrustedKeys};
use avap_hostfns::effects::db::{Databases, DbLimits};
use avap_hostfns::effects::http::{Outbound, OutboundConfig};
use avap_runtime::{Effects, Limits, RunInput, RunReport, Runtime, RuntimeConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream answering `GET /sleep/<ms>` after `ms` milliseconds.
struct Upstream {
    addr: SocketAddr,
    /// Requests answered in full.
    answered: Arc<AtomicUsize>,
    /// Requests whose client hung up before the answer was due.
    dropped: Arc<AtomicUsize>,
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("upstream binds");
    let addr = listener.local_addr().expect("address");
    let answered = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (a, d) = (Arc::clone(&answered), Arc::clone(&dropped));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (a, d) = (Arc::clone(&a), Arc::clone(&d));
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let ms: u64 = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|path| path.strip_prefix("/sleep/"))
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0);
                // Wait for the delay, or for the client to hang up.
                if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(ms), stream.read(&mut buf)).await
                {
                    d.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let body = format!("{{\"slept\": {ms}}}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(reply.as_bytes()).await.is_ok() {
                    a.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    Upstream {
        addr,
        answered,
        dropped,
    }
}

struct Harness {
    runtime: Runtime,
    key: SigningKey,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_cap(32)
    }

    fn with_cap(max_async_blocks: u32) -> Harness {
        let key = SigningKey::from_bytes(&[17; 32]);
        let mut trusted = TrustedKeys::new();
        trusted.add(key.verifying_key());
        let runtime = Runtime::new(RuntimeConfig {
            trusted_keys: trusted,
            max_concurrent_runs: 4,
            max_async_blocks,
            async_block_slots: 16,
            ..RuntimeConfig::default()
        })
        .expect("runtime starts");
        Harness { runtime, key }
    }

    /// Run `source` (with `{up}` replaced by the upstream's address) under
    /// `limits`, outbound HTTP allowed to `up` only.
    async fn run(&self, source: &str, up: Option<&Upstream>, limits: Limits) -> (RunReport, Duration) {
        let source = match up {
            Some(u) => source.replace("{up}", &u.addr.to_string()),
            None => source.to_owned(),
        };
        let effects = match up {
            Some(u) => Effects {
                http: Some(Arc::new(
                    Outbound::new(&OutboundConfig {
                        allow: vec![u.addr.to_string()],
                        timeout_ms: 10_000,
                        ..OutboundConfig::default()
                    })
                    .expect("valid allowlist"),
                )),
                ..Effects::default()
            },
            None => Effects::default(),
        };
        self.run_with(&source, effects, limits).await
    }

    async fn run_with(&self, source: &str, effects: Effects, limits: Limits) -> (RunReport, Duration) {
        let checked = check_file(SourceFile::new("blocks.avap", source), &NoIncludes);
        assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
        let module = self
            .runtime
            .load(&compile(&checked, Some(&self.key)).bytes)
            .expect("loads");
        let input = RunInput {
            request: Request::default(),
            limits,
            effects,
            ..RunInput::default()
        };
        let start = Instant::now();
        let report = self.runtime.run(&module, input).await;
        (report, start.elapsed())
    }
}

/// `counter` reaches `n` within a second (the upstream counts a reply
/// after writing it, so the run can finish first).
async fn reaches(counter: &AtomicUsize, n: usize) -> bool {
    for _ in 0..100 {
        if counter.load(Ordering::SeqCst) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn kind(report: &RunReport) -> &str {
    report.envelope.json()["error"]["kind"].as_str().unwrap_or("<no error>")
}

fn result(report: &RunReport) -> &Value {
    &report.envelope.json()["result"]
}

/// `n` blocks `b0`, `b1`, … each running `body` (indented lines), then
/// each gathered (into `g0`, `g1`, …), then `tail`.
fn started_and_gathered(n: u32, body: &str, tail: &str) -> String {
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(s, "go_async(\"b{i}\")\n{body}end()\n");
    }
    for i in 0..n {
        let _ = writeln!(s, "g{i} = gather(\"b{i}\", 30)");
    }
    s + tail
}

/// `n` blocks, each waiting `ms` on the upstream, then gathered.
fn waiting_blocks(n: u32, ms: u64) -> String {
    let body = format!("    RequestGet(\"http://{{up}}/sleep/{ms}\", \"\", \"\", r)\n");
    started_and_gathered(n, &body, "addResult(g0)\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_blocks_waiting_one_second_each_take_one_second() {
    let h = Harness::new();
    let up = upstream().await;
    let (report, wall) = h.run(&waiting_blocks(2, 1000), Some(&up), Limits::CLI).await;
    assert_eq!(report.http_status, 200, "{}", report.envelope);
    assert_eq!(result(&report)["g0"], json!({"r": {"slept": 1000}}));
    assert!(reaches(&up.answered, 2).await);
    assert!(wall < Duration::from_millis(1300), "two 1 s waits took {wall:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_blocks_waiting_200_ms_each_take_200_ms() {
    let h = Harness::new();
    let up = upstream().await;
    let (report, wall) = h.run(&waiting_blocks(10, 200), Some(&up), Limits::CLI).await;
    assert_eq!(report.http_status, 200, "{}", report.envelope);
    assert!(reaches(&up.answered, 10).await);
    assert!(wall < Duration::from_millis(500), "ten 200 ms waits took {wall:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gather_raises_a_catchable_timeout_error_on_time_and_the_block_is_cancelled() {
    let h = Harness::new();
    let up = upstream().await;
    let script = "\
go_async(\"slow\")
    RequestGet(\"http://{up}/sleep/3000\", \"\", \"\", r)
end()
try()
    r = gather(\"slow\", 0.2)
exception(e)
    addVar(caught, e)
end()
addResult(caught)
";
    let (report, wall) = h.run(script, Some(&up), Limits::CLI).await;
    assert_eq!(report.http_status, 200, "{}", report.envelope);
    let caught = result(&report)["caught"].as_str().unwrap_or_default().to_owned();
    assert!(
        caught.contains("go_async block 'slow' did not finish within 0.2 s"),
        "{caught}"
    );
    assert!(
        wall >= Duration::from_millis(200) && wall < Duration::from_millis(250),
        "gather(…, 0.2) returned after {wall:?}"
    );
    // The run ended with the block still waiting: its request was dropped.
    assert!(reaches(&up.dropped, 1).await, "the upstream saw the hang-up");
    assert_eq!(up.answered.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_block_never_gathered_does_not_change_the_response() {
    let h = Harness::new();
    let plain = "addVar(x, 1)\nstartLoop(i, 1, 1000)\n    x = x + i\nendLoop()\naddResult(x)\n";
    let with_block = format!(
        "go_async(\"spin\")\n    n = 0\n    startLoop(k, 1, 4000000000)\n        n = n + 1\n    endLoop()\nend()\n{plain}"
    );
    let limits = Limits {
        fuel: 200_000_000,
        time_ms: 5_000,
        ..Limits::CLI
    };
    let (expected, _) = h.run(plain, None, limits).await;
    let (report, wall) = h.run(&with_block, None, limits).await;
    assert_eq!(report.http_status, 200, "{}", report.envelope);
    assert_eq!(result(&report), result(&expected));
    assert!(
        wall < Duration::from_secs(1),
        "cancelled at the end of the run, not run out: {wall:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blocks_share_the_run_memory_limit() {
    let h = Harness::new();
    let up = upstream().await;
    // Each block holds 20 MB while it waits, so the blocks hold them at once.
    let blocks = |n: u32| {
        let body =
            "    big = \"x\" * 20000000\n    RequestGet(\"http://{up}/sleep/300\", \"\", \"\", r)\n    big = \"\"\n";
        started_and_gathered(n, body, "addVar(ok, 1)\naddResult(ok)\n")
    };
    let limits = Limits {
        memory_bytes: 64 << 20,
        ..Limits::CLI
    };
    let (two, _) = h.run(&blocks(2), Some(&up), limits).await;
    assert_eq!(
        two.http_status, 200,
        "two blocks × 20 MB fit in 64 MB: {}",
        two.envelope
    );
    let (ten, _) = h.run(&blocks(10), Some(&up), limits).await;
    assert_eq!(kind(&ten), "MemoryLimit", "{}", ten.envelope);
    // A block's allocation is refused (each block is five lines; `big = …`
    // is its second).
    assert_eq!(
        ten.envelope.json()["error"]["line"].as_u64().map(|l| l % 5),
        Some(2),
        "{}",
        ten.envelope
    );
    assert!(ten.usage.peak_memory_bytes <= 64 << 20, "{:?}", ten.usage);
}

#[tokio::test(flavor = "multi_thread")]
async fn blocks_share_the_run_fuel() {
    let h = Harness::new();
    let burner = |n: u32| {
        let body = "    n = 0\n    startLoop(k, 1, 1000000)\n        n = n + k % 7\n    endLoop()\n";
        started_and_gathered(n, body, "addResult(g0)\n")
    };
    let (one, _) = h.run(&burner(1), None, Limits::CLI).await;
    assert_eq!(one.http_status, 200, "{}", one.envelope);
    let per_block = one.usage.fuel;
    let (four, _) = h.run(&burner(4), None, Limits::CLI).await;
    assert_eq!(four.http_status, 200, "{}", four.envelope);
    // Every block's fuel is counted, once.
    let expected = per_block * 4;
    assert!(
        four.usage.fuel > expected * 9 / 10 && four.usage.fuel < expected * 11 / 10,
        "four blocks used {} fuel, one {per_block}",
        four.usage.fuel
    );
    // A budget that fits two blocks but not four ends the run. (Near the
    // end of a budget a flow may run dry while others hold leases: see
    // runtime/src/shared.rs; so the budget leaves room for that.)
    let limits = Limits {
        fuel: per_block * 3,
        ..Limits::CLI
    };
    let (two, _) = h.run(&burner(2), None, limits).await;
    assert_eq!(two.http_status, 200, "{}", two.envelope);
    let (four, _) = h.run(&burner(4), None, limits).await;
    assert_eq!(kind(&four), "FuelExhausted", "{}", four.envelope);
    assert!(four.usage.fuel <= limits.fuel, "{:?}", four.usage);
}

#[tokio::test(flavor = "multi_thread")]
async fn results_of_every_flow_share_the_output_limit() {
    let h = Harness::new();
    let script = "\
go_async(\"a\")
    a = \"x\" * 600
    addResult(a)
end()
go_async(\"b\")
    b = \"y\" * 600
    addResult(b)
end()
ga = gather(\"a\", 5)
gb = gather(\"b\", 5)
";
    let limits = Limits {
        output_bytes: 1000,
        ..Limits::CLI
    };
    let (report, _) = h.run(script, None, limits).await;
    assert_eq!(kind(&report), "OutputLimit", "{}", report.envelope);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_that_hits_a_limit_ends_the_run_even_ungathered() {
    let h = Harness::new();
    let up = upstream().await;
    let script = "\
go_async(\"spin\")
    n = 0
    startLoop(k, 1, 4000000000)
        n = n + 1
    endLoop()
end()
RequestGet(\"http://{up}/sleep/5000\", \"\", \"\", r)
addResult(r)
";
    let limits = Limits {
        fuel: 20_000_000,
        ..Limits::CLI
    };
    let (report, wall) = h.run(script, Some(&up), limits).await;
    assert_eq!(kind(&report), "FuelExhausted", "{}", report.envelope);
    // At the block's loop, never gathered.
    assert_eq!(report.envelope.json()["error"]["line"], json!(3), "{}", report.envelope);
    assert!(wall < Duration::from_secs(3), "{wall:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_error_is_raised_by_gather_and_catchable() {
    let h = Harness::new();
    let script = "\
go_async(\"bad\")
    raise(\"boom\")
end()
try()
    g = gather(\"bad\", 5)
exception(e)
    addVar(caught, e)
end()
addResult(caught)
";
    let (report, _) = h.run(script, None, Limits::CLI).await;
    assert_eq!(report.http_status, 200, "{}", report.envelope);
    assert_eq!(result(&report)["caught"], json!("boom"));
}

#[tokio::test(flavor = "multi_thread")]
async fn blocks_in_functions_see_a_snapshot_of_the_locals() {
    let h = Harness::new();
    let script = "\
function twice(a) {
    go_async(\"t\")
        b = a * 2
    end()
    a = 100
    r = gather(\"t\", 5)
    return r
}
total = 0
startLoop(i, 1, 3)
    go_async(i)
        total = total + i
    end()
    g = gather(i, 5)
    total = g[\"total\"] + 0
endLoop()
t = twice(21)
addResult(t)
addResult(total)
";
    let (report, _) = h.run(script, None, Limits::CLI).await;
    assert_eq!(report.http_status, 200, "{}", report.envelope);
    assert_eq!(result(&report)["t"], json!({"b": 42}));
    assert_eq!(result(&report)["total"], json!(6));
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_blocks_held_at_once_is_a_clear_error() {
    let h = Harness::with_cap(4);
    // Gathered one by one: never more than one held; any number is fine.
    let gathered = "startLoop(i, 1, 20)\n    go_async(i)\n        x = i\n    end()\n    g = gather(i, 5)\nendLoop()\naddResult(g)\n";
    let (ok, _) = h.run(gathered, None, Limits::CLI).await;
    assert_eq!(ok.http_status, 200, "{}", ok.envelope);
    let held = "startLoop(i, 1, 5)\n    go_async(i)\n        x = i\n    end()\nendLoop()\naddResult(i)\n";
    let (report, _) = h.run(held, None, Limits::CLI).await;
    assert_eq!(kind(&report), "MemoryLimit", "{}", report.envelope);
    let message = report.envelope.json()["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_async_blocks"), "{message}");
    assert_eq!(report.envelope.json()["error"]["line"], json!(2), "{}", report.envelope);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_block_stops_its_sqlite_statement() {
    let h = Harness::new();
    // One pooled connection: a statement still running would hold it.
    let db = Arc::new(
        Databases::new(
            Some("sqlite::memory:"),
            [],
            DbLimits {
                statement_timeout: Duration::from_secs(20),
                ..DbLimits::default()
            },
        )
        .expect("database"),
    );
    let effects = || Effects {
        db: Some(Arc::clone(&db)),
        ..Effects::default()
    };
    // The main flow computes for a few epoch ticks, so the block's
    // statement is running when the run ends.
    let script = "\
addVar(x, 1)
go_async(\"count\")
    ormDirect(\"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 4000000000) SELECT count(*) AS n FROM c\", r)
end()
startLoop(i, 1, 3000000)
    x = x + 1
endLoop()
addResult(x)
";
    let (report, _) = h.run_with(script, effects(), Limits::CLI).await;
    assert_eq!(report.http_status, 200, "{}", report.envelope);
    // The connection is free again at once: the statement was stopped.
    let start = Instant::now();
    let (next, _) = h
        .run_with(
            "ormDirect(\"SELECT 41 + 1 AS n\", r)\naddResult(r)\n",
            effects(),
            Limits::CLI,
        )
        .await;
    assert_eq!(next.http_status, 200, "{}", next.envelope);
    assert_eq!(result(&next)["r"], json!([{"n": 42}]));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "waited {:?} for the connection",
        start.elapsed()
    );
}
