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

/// `avap apikey create --signed`: the key on line 1, its signing secret on line 2.
fn create_signing_key(data_dir: &Path, scope: &str) -> (String, String) {
    let out = avap(data_dir, &["create", "--signed", "--name", "signer", "--scope", scope]);
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    match lines.as_slice() {
        [key, secret] if key.starts_with("avap_") && secret.starts_with("avapsig_") => {
            ((*key).to_owned(), (*secret).to_owned())
        }
        _ => panic!("expected a key and a secret, got {stdout:?}"),
    }
}

/// The documented client (docs/examples/signed-request.sh: curl and
/// openssl) against `s` with `key` and `secret`: (success, stdout).
fn signed_request(s: &Server, key: &str, secret: &str, args: &[&str]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/signed-request.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .env("AVAP_URL", format!("http://{}", s.addr))
        .env("AVAP_KEY", key)
        .env("AVAP_SECRET", secret)
        .output()
        .expect("run bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("command not found"),
        "curl and openssl are needed: {stderr}"
    );
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_documented_curl_and_openssl_client_signs_requests() {
    let data_dir = fresh_dir("signed").join("data");
    let admin = create_key(&data_dir, &["admin"]);
    let (key, secret) = create_signing_key(&data_dir, "execute");
    // The sealed secret's key file was made beside the server key, private.
    let secrets_key = data_dir.join("keys/api_key_secrets.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secrets_key).expect("made").permissions());
    assert_eq!(mode & 0o777, 0o600);
    let s = start_requiring_keys(&data_dir);
    assert_eq!(store(&s, &[("X-API-Key", &admin)]).status, 201);

    // A body and a query, signed by the script.
    let body = json!({"script": HELLO, "params": {"name": "curl"}}).to_string();
    let (ok, out) = signed_request(&s, &key, &secret, &["POST", "/api/v1/execute", &body]);
    assert!(ok, "{out}");
    assert!(out.contains("Hello, curl"), "{out}");
    let (ok, out) = signed_request(&s, &key, &secret, &["GET", "/api/v1/run/hello?name=open%20ssl"]);
    assert!(ok, "{out}");
    assert!(out.contains("Hello, open ssl"), "{out}");

    // The wrong secret, or none at all: 401 with the reason.
    let (ok, out) = signed_request(&s, &key, &format!("{secret}x"), &["POST", "/api/v1/execute", &body]);
    assert!(!ok && out.contains("signature_mismatch"), "{out}");
    let r = execute(&s, &[("Authorization", &format!("Bearer {key}"))]);
    assert_unauthorized(&r);
    assert_eq!(r.json()["error"]["reason"], "signature_missing", "{}", r.body);

    // Listed as signed, its secret nowhere; created with an audit row that says so.
    let listed = String::from_utf8(avap(&data_dir, &["list"]).stdout).expect("utf-8");
    let line = listed.lines().find(|l| l.starts_with(key_id(&key))).expect("listed");
    assert!(line.contains(" yes "), "{listed}");
    assert!(!listed.contains(&secret), "{listed}");
    let audit = s.request_with_headers("GET", "/api/v1/audit?limit=100", &[("X-API-Key", &admin)], None);
    assert_eq!(audit.status, 200, "{}", audit.body);
    let created = audit.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .any(|e| e["action"] == "apikey_create_signed" && e["subject"] == key_id(&key));
    assert!(created, "{}", audit.body);
}
