//! Degraded mode when the server's database goes away: a node on the real
//! `PostgreSQL`, reached through a forwarder the test cuts (a network failure;
//! the `PostgreSQL` server itself, which other tests use, keeps running).
//! Cached stored scripts keep running for known API keys, registry writes
//! answer 503 `DatabaseUnavailable` and leave nothing half-written, health
//! says "degraded", and everything recovers when the database is back.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

mod support;

use support::{Cuttable, PgDatabase, Server, avap, fresh_dir};

const V1: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";
const V2: &str = "addParam(name, who)\nmessage = \"Howdy, \" + who\naddResult(message)\n";

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cached_scripts_keep_running_and_writes_fail_cleanly_while_the_database_is_away() {
    let db = PgDatabase::create("dbfault");
    let link = Cuttable::to("127.0.0.1:5432");
    let url = db.url.replace("127.0.0.1:5432", &link.addr.to_string());
    let data_dir = fresh_dir("db-fault").join("data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--require-api-key", "--data-dir"])
        .arg(&data_dir)
        .env("AVAP_DATABASE_URL", &url);
    let node = Server::spawn(cmd, data_dir);
    let admin = avap(&["apikey", "create", "--scope", "admin", "--database-url", &db.url])
        .trim()
        .to_owned();
    for (name, source) in [("greet", V1), ("other", V1)] {
        let r = node.as_key(
            &admin,
            "POST",
            "/api/v1/scripts",
            Some(&json!({"name": name, "source": source})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let greet = || node.as_key(&admin, "GET", "/api/v1/run/greet?name=Ana", None);
    assert_eq!(greet().json()["result"]["message"], "Hello, Ana");

    link.cut();
    // Past the API key cache's freshness, so the key check really needs the database.
    std::thread::sleep(Duration::from_secs(6));
    let r = greet();
    assert_eq!(r.status, 200, "a cached script keeps running: {}", r.body);
    assert_eq!(r.json()["result"]["message"], "Hello, Ana");

    let health = node.get("/api/v1/health");
    assert_eq!(health.status, 200, "{}", health.body);
    let h = health.json();
    assert_eq!(
        (h["status"].as_str(), h["database"]["status"].as_str()),
        (Some("degraded"), Some("error"))
    );
    assert_eq!(h["degraded"], json!(["database"]));

    for (method, path, body) in [
        ("POST", "/api/v1/scripts", Some(json!({"name": "fresh", "source": V1}))),
        ("POST", "/api/v1/scripts", Some(json!({"name": "greet", "source": V2}))),
        ("DELETE", "/api/v1/scripts/other", None),
        ("GET", "/api/v1/run/other?name=Bo", None),
    ] {
        let r = node.as_key(&admin, method, path, body.as_ref());
        assert_eq!(
            r.error_kind(),
            (503, "DatabaseUnavailable".to_owned()),
            "{method} {path}: {}",
            r.body
        );
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("nothing was changed"),
            "{}",
            r.body
        );
        assert!(r.header("retry-after").is_some(), "{method} {path}");
    }

    link.restore();
    wait_for("the database to answer again", || {
        node.get("/api/v1/health").json()["status"] == "ok"
    });
    // Nothing of the refused writes is there; everything else is.
    assert_eq!(node.as_key(&admin, "GET", "/api/v1/scripts/fresh", None).status, 404);
    let greet_versions = db.query("SELECT COUNT(*) FROM script_versions WHERE name = 'greet'");
    assert_eq!(greet_versions, "1");
    assert_eq!(db.query("SELECT COUNT(*) FROM scripts WHERE name = 'other'"), "1");
    let r = node.as_key(
        &admin,
        "POST",
        "/api/v1/scripts",
        Some(&json!({"name": "fresh", "source": V2})),
    );
    assert_eq!(r.status, 201, "writes work again: {}", r.body);
    let r = node.as_key(&admin, "GET", "/api/v1/run/other?name=Bo", None);
    assert_eq!(r.json()["result"]["message"], "Hello, Bo");
}
