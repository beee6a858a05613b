//! API keys of `avap serve`: keys made with `avap apikey`, checked by the
//! real server on a loopback port.

use std::path::Path;
use std::process::Command;

use serde_json::json;

mod support;

use support::{Reply, Server, fresh_dir};

const HELLO: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";

fn avap(data_dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.arg("apikey").args(args).arg("--data-dir").arg(data_dir);
    // The server's database when the suite runs on PostgreSQL.
    if let Some(url) = support::server_database(data_dir) {
        cmd.arg("--database-url").arg(url);
    }
    let out = cmd.output().expect("run avap apikey");
    assert!(out.status.success(), "avap apikey {args:?}: {out:?}");
    out
}

/// `avap apikey create --scope S…`: the key is the only line on stdout.
fn create_key(data_dir: &Path, scopes: &[&str]) -> String {
    let mut args = vec!["create", "--name", "test"];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let out = avap(data_dir, &args);
    let key = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
    assert!(key.starts_with("avap_") && !key.contains('\n'), "{key:?}");
    key
}

fn key_id(key: &str) -> &str {
    &key["avap_".len().."avap_".len() + 8]
}

fn start_requiring_keys(data_dir: &Path) -> Server {
    let mut cmd = support::serve_command(data_dir);
    cmd.arg("--require-api-key");
    Server::spawn(cmd, data_dir.to_path_buf())
}

fn execute(s: &Server, headers: &[(&str, &str)]) -> Reply {
    let body = json!({"script": HELLO, "params": {"name": "Key"}}).to_string();
    s.request_with_headers("POST", "/api/v1/execute", headers, Some(("application/json", &body)))
}

fn store(s: &Server, headers: &[(&str, &str)]) -> Reply {
    let body = json!({"name": "hello", "source": HELLO}).to_string();
    s.request_with_headers("POST", "/api/v1/scripts", headers, Some(("application/json", &body)))
}

fn assert_unauthorized(r: &Reply) {
    assert_eq!(r.error_kind(), (401, "Unauthorized".to_owned()), "{}", r.body);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn keys_guard_the_api_when_required() {
    let data_dir = fresh_dir("required").join("data");
    let exec_key = create_key(&data_dir, &["execute"]);
    let admin_key = create_key(&data_dir, &["admin"]);
    let s = start_requiring_keys(&data_dir);
    let bearer = |key: &str| format!("Bearer {key}");

    // Health and info stay open.
    assert_eq!(s.get("/api/v1/health").status, 200);
    assert_eq!(s.get("/api/v1/info").status, 200);

    // No key, a malformed key, an unknown key, a wrong secret: 401.
    assert_unauthorized(&execute(&s, &[]));
    assert_unauthorized(&store(&s, &[]));
    assert_unauthorized(&s.get("/api/v1/run/hello"));
    assert_unauthorized(&execute(&s, &[("Authorization", "Bearer nonsense")]));
    assert_unauthorized(&execute(&s, &[("X-API-Key", "avap_00000000_00")]));
    let wrong_secret = format!("{}0", &exec_key[..exec_key.len() - 1]);
    let wrong_secret = if wrong_secret == exec_key {
        format!("{}1", &exec_key[..exec_key.len() - 1])
    } else {
        wrong_secret
    };
    assert_unauthorized(&execute(&s, &[("Authorization", &bearer(&wrong_secret))]));
    assert_unauthorized(&execute(&s, &[("Authorization", "Basic dXNlcjpwYXNz")]));

    // An execute key runs scripts (either header) but may not store them.
    let r = execute(&s, &[("Authorization", &bearer(&exec_key))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"]["message"], "Hello, Key");
    assert_eq!(execute(&s, &[("X-API-Key", &exec_key)]).status, 200);
    let r = store(&s, &[("X-API-Key", &exec_key)]);
    assert_eq!(r.error_kind(), (403, "Forbidden".to_owned()), "{}", r.body);

    // An admin key stores, and (admin implies execute) runs.
    let r = store(&s, &[("Authorization", &bearer(&admin_key))]);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = s.request_with_headers("GET", "/api/v1/run/hello?name=Ad", &[("X-API-Key", &admin_key)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.request_with_headers("GET", "/api/v1/run/hello?name=Ex", &[("X-API-Key", &exec_key)], None);
    assert_eq!(r.status, 200, "{}", r.body);

    // Keys are listed without the key; a revocation takes effect within the
    // API key cache's 5 s (a new key works at once: unknown ids are not cached).
    let listed = String::from_utf8(avap(&data_dir, &["list"]).stdout).expect("utf-8");
    assert!(
        listed.contains(key_id(&exec_key)) && listed.contains("execute"),
        "{listed}"
    );
    assert!(!listed.contains(&exec_key) && !listed.contains(&admin_key), "{listed}");
    avap(&data_dir, &["revoke", key_id(&exec_key)]);
    let revoked = std::time::Instant::now();
    loop {
        let r = execute(&s, &[("Authorization", &bearer(&exec_key))]);
        if r.status == 401 {
            assert_unauthorized(&r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            revoked.elapsed() < std::time::Duration::from_secs(6),
            "a revoked key still works after {:?}",
            revoked.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(execute(&s, &[("X-API-Key", &admin_key)]).status, 200);
    let listed = String::from_utf8(avap(&data_dir, &["list"]).stdout).expect("utf-8");
    let line = listed
        .lines()
        .find(|l| l.starts_with(key_id(&exec_key)))
        .expect("listed");
    assert!(!line.trim_end().ends_with(" -"), "revoked time expected: {line}");
}

#[test]
fn loopback_allows_anonymous_but_checks_presented_keys() {
    let s = Server::start("loopback");
    let r = execute(&s, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(store(&s, &[]).status, 201);
    // A key that is sent is checked even here.
    assert_unauthorized(&execute(&s, &[("X-API-Key", "avap_12345678_abcdef")]));
    let exec_key = create_key(&s.data_dir, &["execute"]);
    let r = store(&s, &[("X-API-Key", &exec_key)]);
    assert_eq!(r.error_kind(), (403, "Forbidden".to_owned()), "{}", r.body);
}

#[test]
fn unknown_ids_cannot_be_revoked() {
    let data_dir = fresh_dir("revoke-unknown").join("data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["apikey", "revoke", "deadbeef", "--data-dir"]).arg(&data_dir);
    if let Some(url) = support::server_database(&data_dir) {
        cmd.arg("--database-url").arg(url);
    }
    let out = cmd.output().expect("run avap apikey");
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn other_interfaces_need_a_key_unless_anonymous_is_allowed() {
    for (name, flags, anonymous) in [
        ("wildcard", &[][..], 401),
        ("wildcard-anonymous", &["--allow-anonymous"][..], 200),
    ] {
        let data_dir = fresh_dir(name).join("data");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
        cmd.args(["serve", "--listen", "0.0.0.0:0"])
            .args(flags)
            .arg("--data-dir")
            .arg(&data_dir);
        if let Some(url) = support::server_database(&data_dir) {
            cmd.env("AVAP_DATABASE_URL", url);
        }
        let s = Server::spawn(cmd, data_dir);
        assert_eq!(execute(&s, &[]).status, anonymous, "{name}");
        assert_eq!(s.get("/api/v1/health").status, 200);
    }
}
