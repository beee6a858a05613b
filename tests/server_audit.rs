//! The audit trail of `avap serve` (`GET /api/v1/audit`): registry writes
//! and runs, who did them and how they ended, against the real binary.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::{Reply, Server, create_api_key, fresh_dir};

const HELLO: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";
const HOWDY: &str = "addParam(name, who)\nmessage = \"Howdy, \" + who\naddResult(message)\n";

fn post(s: &Server, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    s.request_with_headers("POST", path, headers, Some(("application/json", &body.to_string())))
}

/// The audit rows for `query`, newest first.
fn audit(s: &Server, query: &str, headers: &[(&str, &str)]) -> Vec<Value> {
    let r = s.request_with_headers("GET", &format!("/api/v1/audit{query}"), headers, None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["entries"].as_array().cloned().unwrap_or_default()
}

/// Run rows are written in the background: wait until `want` rows match.
fn audit_until(s: &Server, query: &str, headers: &[(&str, &str)], want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = audit(s, query, headers);
        if rows.len() >= want || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(action, script, version, outcome)` of each row.
fn summary(rows: &[Value]) -> Vec<(String, Value, Value, String)> {
    rows.iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("?").to_owned(),
                r["script"].clone(),
                r["version"].clone(),
                r["outcome"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

fn row(action: &str, script: Option<&str>, version: Option<i64>, outcome: &str) -> (String, Value, Value, String) {
    (action.to_owned(), json!(script), json!(version), outcome.to_owned())
}

#[test]
fn registry_writes_and_runs_are_audited() {
    let s = Server::start("audit-trail");
    let store1 = [("X-Request-Id", "audit-test-store-1")];
    let r = post(
        &s,
        "/api/v1/scripts",
        &json!({"name": "hello", "source": HELLO}),
        &store1,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v1_sha = r.json()["artifact_sha256"].clone();
    post(&s, "/api/v1/scripts", &json!({"name": "hello", "source": HELLO}), &[]);
    let r = post(&s, "/api/v1/scripts", &json!({"name": "hello", "source": "if(\n"}), &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post(&s, "/api/v1/scripts", &json!({"name": "hello", "source": HOWDY}), &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post(&s, "/api/v1/scripts/hello/rollback", &json!({"version": 1}), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(&s, "/api/v1/scripts/nope/rollback", &json!({"version": 1}), &[]);
    assert_eq!(r.status, 404, "{}", r.body);

    // Runs: by name (execute, batch, run endpoint), inline, and a failing one.
    let run1 = [("X-Request-Id", "audit-test-run-1")];
    let r = s.request_with_headers("GET", "/api/v1/run/hello?name=Lin", &run1, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &s,
        "/api/v1/execute",
        &json!({"name": "hello", "version": 2, "params": {"name": "Ed"}}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let batch = json!({"items": [{"name": "hello", "params": {"name": "Bo"}}, {"name": "ghost"}]});
    let r = post(&s, "/api/v1/execute/batch", &batch, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &s,
        "/api/v1/execute",
        &json!({"script": "x = 1\ny = x + missing\n"}),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);

    let r = s.delete("/api/v1/scripts/hello");
    assert_eq!(r.status, 204, "{}", r.body);
    let r = s.delete("/api/v1/scripts/hello");
    assert_eq!(r.status, 404, "{}", r.body);

    let rows = audit_until(&s, "", &[], 13);
    let mut got = summary(&rows);
    // Run rows are written in batches, so they may land after later registry
    // rows: compare registry rows and run rows each in their own order.
    got.reverse();
    let (runs, writes): (Vec<_>, Vec<_>) = got.into_iter().partition(|r| r.0 == "run");
    assert_eq!(
        writes,
        [
            row("store", Some("hello"), Some(1), "ok"),
            row("store", Some("hello"), Some(1), "unchanged"),
            row("store", Some("hello"), None, "CompileError"),
            row("store", Some("hello"), Some(2), "ok"),
            row("rollback", Some("hello"), Some(1), "ok"),
            row("rollback", Some("nope"), Some(1), "ScriptNotFound"),
            row("delete", Some("hello"), Some(1), "ok"),
            row("delete", Some("hello"), None, "ScriptNotFound"),
        ]
    );
    let mut runs_sorted = runs.clone();
    runs_sorted.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    let mut want = vec![
        row("run", Some("hello"), Some(1), "ok"),
        row("run", Some("hello"), Some(2), "ok"),
        row("run", Some("hello"), Some(1), "ok"),
        row("run", Some("ghost"), None, "ScriptNotFound"),
        row("run", None, None, "NameError"),
    ];
    want.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    assert_eq!(runs_sorted, want, "{rows:#?}");

    assert!(rows.iter().all(|r| r["actor"] == "anonymous"), "{rows:#?}");
    let by_request = |rid: &str| rows.iter().find(|r| r["request_id"] == rid).cloned();
    let stored = by_request("audit-test-store-1").expect("the store row has its request id");
    assert_eq!(
        (stored["action"].clone(), stored["artifact_sha256"].clone()),
        (json!("store"), v1_sha.clone())
    );
    let ran = by_request("audit-test-run-1").expect("the run row has its request id");
    assert_eq!(
        (ran["action"].clone(), ran["artifact_sha256"].clone()),
        (json!("run"), v1_sha)
    );
    let inline = rows.iter().find(|r| r["outcome"] == "NameError").expect("inline run");
    assert_eq!(inline["artifact_sha256"].as_str().map(str::len), Some(64), "{inline}");
    assert!(
        rows.iter().all(|r| r["at"].as_str().is_some_and(|t| t.ends_with('Z'))),
        "{rows:#?}"
    );

    // Filter by script and page with `before`.
    let hello = audit(&s, "?script=hello", &[]);
    assert!(hello.iter().all(|r| r["script"] == "hello"), "{hello:#?}");
    let r = s.get("/api/v1/audit?script=hello&limit=3");
    let page = r.json();
    assert_eq!(page["entries"].as_array().map(Vec::len), Some(3), "{page}");
    let next = page["next_before"].as_i64().expect("a full page has a next_before");
    let rest = audit(&s, &format!("?script=hello&before={next}"), &[]);
    assert_eq!(rest.len(), hello.len() - 3);
    assert!(rest.iter().all(|r| r["id"].as_i64() < Some(next)));

    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?scrip=hello"] {
        let r = s.get(&format!("/api/v1/audit{bad}"));
        assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{bad}: {}", r.body);
    }
    let metrics = s.get("/api/v1/metrics").body;
    assert!(metrics.contains("avap_audit_dropped_total 0\n"), "{metrics}");
}

#[test]
fn the_actor_is_the_api_key_and_reading_needs_admin() {
    let data_dir = fresh_dir("audit-keys").join("data");
    let admin = create_api_key(&data_dir, "admin");
    let runner = create_api_key(&data_dir, "execute");
    let id = |key: &str| key["avap_".len().."avap_".len() + 8].to_owned();
    let mut cmd = support::serve_command(&data_dir);
    cmd.arg("--require-api-key");
    let s = Server::spawn(cmd, data_dir.clone());
    let as_admin = [("Authorization", format!("Bearer {admin}"))];
    let as_admin: Vec<(&str, &str)> = as_admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let as_runner = [("X-API-Key", runner.as_str())];

    let r = post(
        &s,
        "/api/v1/scripts",
        &json!({"name": "hello", "source": HELLO}),
        &as_admin,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post(
        &s,
        "/api/v1/execute",
        &json!({"name": "hello", "params": {"name": "Ed"}}),
        &as_runner,
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let r = s.request_with_headers("GET", "/api/v1/audit", &as_runner, None);
    assert_eq!(r.error_kind(), (403, "Forbidden".to_owned()), "{}", r.body);
    assert_eq!(s.get("/api/v1/audit").status, 401);

    let rows = audit_until(&s, "", &as_admin, 4);
    let actors: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("?"),
                r["actor"].as_str().unwrap_or("?").to_owned(),
                r["subject"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    // The keys were made with `avap apikey create`: the command line is the actor.
    let cli = format!(
        "cli:{}",
        std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or("unknown".into())
    );
    assert_eq!(
        actors,
        [
            ("run", id(&runner), "-".to_owned()),
            ("store", id(&admin), "-".to_owned()),
            ("apikey_create", cli.clone(), id(&runner)),
            ("apikey_create", cli.clone(), id(&admin)),
        ],
        "{rows:#?}"
    );
    // Revoking is audited too, found or not.
    let revoke = |key_id: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_avap"));
        cmd.args(["apikey", "revoke", key_id, "--data-dir"]).arg(&data_dir);
        if let Some(url) = support::server_database(&data_dir) {
            cmd.arg("--database-url").arg(url);
        }
        cmd.output().expect("run avap apikey revoke").status
    };
    assert!(revoke(&id(&runner)).success());
    assert!(!revoke("00000000").success());
    let rows = audit_until(&s, "", &as_admin, 6);
    let latest: Vec<(&str, &str, &str)> = rows[..2]
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("?"),
                r["subject"].as_str().unwrap_or("?"),
                r["outcome"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    let runner_id = id(&runner);
    assert_eq!(
        latest,
        [
            ("apikey_revoke", "00000000", "NotFound"),
            ("apikey_revoke", runner_id.as_str(), "ok")
        ],
        "{rows:#?}"
    );
}

#[test]
fn queued_run_rows_are_written_at_shutdown() {
    let s = Server::start("audit-shutdown");
    let r = s.execute(&json!({"script": "if(\n"}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s.execute(&json!({"script": "x = 1\naddResult(x)\n"}));
    assert_eq!(r.status, 200, "{}", r.body);
    // SIGTERM right away, before the writer's timer: graceful shutdown flushes.
    let pid = s.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let data_dir = s.data_dir.clone();
    let mut s = s;
    let exit = s.child.wait().expect("wait for the server");
    assert!(exit.success(), "{exit:?}");
    drop(s);

    let s = Server::start_on(&data_dir);
    let rows = audit(&s, "", &[]);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(
        rows.iter().all(|r| r["action"] == "run" && r["script"].is_null()),
        "{rows:#?}"
    );
}

#[test]
fn runs_cut_off_by_the_request_timeout_are_audited_as_cancelled() {
    // Fuel far beyond what 50 ms can burn: the request timeout, not the
    // fuel limit, must end the run, on however fast a machine.
    let data_dir = support::fresh_dir("audit-cancel").join("data");
    let mut cmd = support::serve_command(&data_dir);
    cmd.args(["--request-timeout-ms", "50"])
        .env("AVAP_LIMITS_FUEL", "1000000000000000")
        .env("AVAP_LIMITS_TIME_MS", "60000");
    let s = Server::spawn(cmd, data_dir);
    let endless = "s = 0\nstartLoop(i, 1, 9000000000000)\n  s = s + 1\nendLoop()\naddResult(s)\n";
    let r = s.execute(&json!({"script": endless}));
    assert_eq!(r.error_kind(), (504, "RequestTimeout".to_owned()), "{}", r.body);
    let rows = audit_until(&s, "", &[], 1);
    assert_eq!(summary(&rows), [row("run", None, None, "Cancelled")], "{rows:#?}");
    // The cancelled run no longer counts as in flight, and its slot is free.
    let metrics = s.get("/api/v1/metrics").body;
    assert!(metrics.contains("\navap_runs_in_flight 0\n"), "{metrics}");
    assert_eq!(s.get("/api/v1/health").json()["cache"]["runs"]["active"], 0);
}
