//! Registry sync and edge mode, end to end with real `avap serve`
//! processes: a registry node, edge nodes following it over HTTP, the
//! registry killed and restarted, a mirrored file tampered with on disk, a
//! script list rewritten on the way, a rollback on the registry.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

mod support;

use support::{Reply, Server, create_api_key, fresh_dir, server_database};

const HELLO: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";
const ANSWER: &str = "x = 6 * 7\naddResult(x)\n";
const ANSWER_V2: &str = "x = 6 * 9\naddResult(x)\n";
const SHOUT: &str = "addParam(name, who)\nmessage = who + \"!\"\naddResult(message)\n";
const FRESH: &str = "y = \"new\"\naddResult(y)\n";

/// Sync period of the edge nodes under test.
const SYNC_MS: &str = "200";
/// How long a change may take to show on an edge node (a few sync periods,
/// with room for a slow machine).
const CATCH_UP: Duration = Duration::from_secs(20);

/// A registry node on `listen` with `data_dir`; keys required, so the edge
/// node's `registry` key is what lets it in.
fn start_registry(data_dir: &Path, listen: &str) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--require-api-key", "--listen", listen, "--data-dir"])
        .arg(data_dir);
    if let Some(url) = server_database(data_dir) {
        cmd.env("AVAP_DATABASE_URL", url);
    }
    Server::spawn(cmd, data_dir.to_path_buf())
}

/// An edge node with its own data directory (embedded `SQLite` only)
/// following the registry node at `registry` (`HOST:PORT`).
fn start_edge(data_dir: &Path, registry: &str, key: &str) -> Server {
    Server::spawn(edge_command(data_dir, registry, key), data_dir.to_path_buf())
}

fn edge_command(data_dir: &Path, registry: &str, key: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--edge",
        "--registry-sync-ms",
        SYNC_MS,
    ])
    .arg("--registry")
    .arg(format!("http://{registry}"))
    .arg("--data-dir")
    .arg(data_dir)
    .env("AVAP_REGISTRY_API_KEY", key);
    cmd
}

/// Make `edge_dir` trust the signing key of the registry in `registry_dir`
/// (as an operator does: copy its `keys/server.pub` into `trusted_keys/`).
fn trust(edge_dir: &Path, registry_dir: &Path) {
    let trusted = edge_dir.join("trusted_keys");
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::copy(registry_dir.join("keys/server.pub"), trusted.join("registry.pub")).unwrap();
}

fn auth(key: &str) -> [(&'static str, String); 1] {
    [("Authorization", format!("Bearer {key}"))]
}

fn get(s: &Server, path: &str, key: &str) -> Reply {
    let [(name, value)] = auth(key);
    s.request_with_headers("GET", path, &[(name, &value)], None)
}

fn store(s: &Server, admin: &str, name: &str, source: &str) -> Value {
    let [(h, v)] = auth(admin);
    let body = json!({"name": name, "source": source}).to_string();
    let r = s.request_with_headers("POST", "/api/v1/scripts", &[(h, &v)], Some(("application/json", &body)));
    assert!(matches!(r.status, 200 | 201), "{}", r.body);
    r.json()
}

/// `result` of running `name` on `s` (anonymous: loopback), or the error reply.
fn run(s: &Server, name: &str, query: &str) -> Result<Value, Reply> {
    let r = s.get(&format!("/api/v1/run/{name}{query}"));
    if r.status == 200 {
        Ok(r.json()["result"].clone())
    } else {
        Err(r)
    }
}

fn expect_runs(s: &Server, answers: &[(&str, &str, Value)]) {
    for (name, query, want) in answers {
        match run(s, name, query) {
            Ok(got) => assert_eq!(&got, want, "{name}"),
            Err(r) => panic!("{name}: {} {}", r.status, r.body),
        }
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn health(s: &Server) -> Value {
    let r = s.get("/api/v1/health");
    assert_eq!(r.status, 200, "an edge node serving its mirror is healthy: {}", r.body);
    r.json()
}

/// A GET with the raw body bytes (`Reply` holds text).
fn get_bytes(addr: &str, path: &str, key: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn mirrored_files(edge_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(edge_dir.join("edge/artifacts"))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "wasm"));
    files.sort();
    files
}

#[test]
fn registry_read_api_lists_fetches_and_checks_scopes() {
    let dir = fresh_dir("registry-api").join("data");
    let registry = start_registry(&dir, "127.0.0.1:0");
    let admin = create_api_key(&dir, "admin");
    let follower = create_api_key(&dir, "registry");
    let runner = create_api_key(&dir, "execute");
    let hello = store(&registry, &admin, "hello", HELLO);
    store(&registry, &admin, "answer", ANSWER);

    let r = get(&registry, "/api/v1/registry/scripts", &follower);
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json();
    let generation = list["generation"].as_str().unwrap().to_owned();
    assert_eq!(r.header("etag"), Some(format!("\"{generation}\"").as_str()));
    let scripts = list["scripts"].as_array().unwrap();
    let names: Vec<&str> = scripts.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["answer", "hello"]);
    assert_eq!(scripts[1]["version"], 1);
    assert_eq!(scripts[1]["artifact_sha256"], hello["artifact_sha256"]);
    assert!(scripts[1]["updated_at"].as_str().unwrap().ends_with('Z'));

    // Unchanged: 304 without a body; changed: the new generation.
    let etag = format!("\"{generation}\"");
    let [(h, v)] = auth(&follower);
    let headers = [(h, v.as_str()), ("If-None-Match", etag.as_str())];
    let r = registry.request_with_headers("GET", "/api/v1/registry/scripts", &headers, None);
    assert_eq!((r.status, r.body.as_str()), (304, ""), "{}", r.body);
    let v2 = store(&registry, &admin, "hello", HELLO.replace("Hello", "Hi").as_str());
    let r = registry.request_with_headers("GET", "/api/v1/registry/scripts", &headers, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(r.json()["generation"].as_str(), Some(generation.as_str()));
    assert_eq!(r.json()["scripts"][1]["version"], 2);

    // Artifacts by hash: the current and older versions, byte for byte.
    for version in [&hello, &v2] {
        let sha = version["artifact_sha256"].as_str().unwrap();
        let (status, bytes) = get_bytes(&registry.addr, &format!("/api/v1/registry/artifacts/{sha}"), &follower);
        assert_eq!(status, 200);
        assert_eq!(sha256(&bytes), sha);
        assert!(bytes.starts_with(b"\0asm"));
    }
    let r = get(
        &registry,
        &format!("/api/v1/registry/artifacts/{}", "0".repeat(64)),
        &follower,
    );
    assert_eq!(r.error_kind(), (404, "ArtifactNotFound".to_owned()), "{}", r.body);
    for bad in ["xyz", &"A".repeat(64), &"0".repeat(63)] {
        let r = get(&registry, &format!("/api/v1/registry/artifacts/{bad}"), &follower);
        assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{bad}: {}", r.body);
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("64 lowercase hex digits")
        );
    }

    // `registry` reads the registry and nothing else; `execute` cannot read it; `admin` can.
    let [(h, v)] = auth(&follower);
    let body = json!({"name": "x", "source": ANSWER}).to_string();
    let r = registry.request_with_headers("POST", "/api/v1/scripts", &[(h, &v)], Some(("application/json", &body)));
    assert_eq!(r.error_kind(), (403, "Forbidden".to_owned()), "{}", r.body);
    for path in ["/api/v1/scripts", "/api/v1/run/hello", "/api/v1/audit"] {
        assert_eq!(get(&registry, path, &follower).error_kind().0, 403, "{path}");
    }
    let r = registry.request_with_headers(
        "POST",
        "/api/v1/execute",
        &[(h, &v)],
        Some(("application/json", "{\"script\": \"x = 1\\naddResult(x)\\n\"}")),
    );
    assert_eq!(r.error_kind(), (403, "Forbidden".to_owned()), "{}", r.body);
    let r = get(&registry, "/api/v1/registry/scripts", &runner);
    assert_eq!(r.error_kind(), (403, "Forbidden".to_owned()), "{}", r.body);
    assert!(r.body.contains("`registry` scope"), "{}", r.body);
    assert_eq!(get(&registry, "/api/v1/registry/scripts", &admin).status, 200);
    assert_eq!(registry.get("/api/v1/registry/scripts").error_kind().0, 401);
    registry.stop();
}

#[test]
fn an_edge_node_serves_its_mirror_without_the_registry_and_catches_up() {
    let root = fresh_dir("edge-e2e");
    let registry_dir = root.join("registry");
    let edge_dir = root.join("edge");
    let registry = start_registry(&registry_dir, "127.0.0.1:0");
    let registry_addr = registry.addr.clone();
    let admin = create_api_key(&registry_dir, "admin");
    let follower = create_api_key(&registry_dir, "registry");
    store(&registry, &admin, "hello", HELLO);
    store(&registry, &admin, "answer", ANSWER);
    store(&registry, &admin, "shout", SHOUT);
    trust(&edge_dir, &registry_dir);

    let all_three = [
        ("hello", "?name=Lin", json!({"message": "Hello, Lin"})),
        ("answer", "", json!({"x": 42})),
        ("shout", "?name=Ada", json!({"message": "Ada!"})),
    ];
    let edge = start_edge(&edge_dir, &registry.addr, &follower);
    wait_until("the edge syncs three scripts", CATCH_UP, || {
        let h = health(&edge);
        h["registry"]["state"] == "ok" && h["registry"]["scripts"] == 3
    });
    expect_runs(&edge, &all_three);
    let h = health(&edge);
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["registry"]["url"], format!("http://{registry_addr}"));
    assert!(h["registry"]["last_sync"].is_string(), "{h}");
    assert_eq!(mirrored_files(&edge_dir).len(), 3);
    assert!(edge_dir.join("edge/index.json").is_file());

    // The registry is read-only here; listing reflects the mirror.
    let r = edge.post_json("/api/v1/scripts", &json!({"name": "x", "source": ANSWER}));
    assert_eq!(r.error_kind(), (409, "EdgeReadOnly".to_owned()), "{}", r.body);
    assert!(r.body.contains(&format!("http://{registry_addr}")), "{}", r.body);
    assert_eq!(edge.delete("/api/v1/scripts/hello").error_kind().1, "EdgeReadOnly");
    let r = edge.post_json("/api/v1/scripts/hello/rollback", &json!({"version": 1}));
    assert_eq!(r.error_kind().1, "EdgeReadOnly");
    assert_eq!(edge.get("/api/v1/registry/scripts").error_kind().1, "EdgeReadOnly");
    let list = edge.get("/api/v1/scripts").json();
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    let shown = edge.get("/api/v1/scripts/answer").json();
    assert_eq!(
        (shown["version"].as_i64(), shown["mirrored_from"].as_str()),
        (Some(1), Some(format!("http://{registry_addr}").as_str()))
    );
    let r = edge.post_json("/api/v1/execute", &json!({"name": "answer", "version": 7}));
    assert_eq!(r.error_kind(), (404, "ScriptNotFound".to_owned()), "{}", r.body);
    assert!(r.body.contains("current versions only"), "{}", r.body);
    let r = edge.post_json("/api/v1/execute", &json!({"name": "answer", "version": 1}));
    assert_eq!(r.status, 200, "{}", r.body);

    // The registry dies: the edge keeps serving every synced script…
    registry.kill();
    expect_runs(&edge, &all_three);
    // …and describes each from its mirrored artifact's meta.
    let doc = edge.get("/api/v1/run/hello/openapi.json").json();
    assert_eq!(
        (&doc["info"]["title"], &doc["info"]["version"]),
        (&json!("hello"), &json!("1")),
        "{doc}"
    );
    assert_eq!(doc["paths"]["/"]["get"]["parameters"][0]["name"], "name", "{doc}");
    wait_until("the edge notices the registry is gone", CATCH_UP, || {
        health(&edge)["registry"]["state"] == "unreachable"
    });
    let h = health(&edge);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["degraded"].as_array().unwrap().contains(&json!("registry")), "{h}");
    assert!(h["registry"]["error"].as_str().unwrap().contains(&registry_addr), "{h}");
    expect_runs(&edge, &all_three);

    // A new edge process on the same data dir serves from disk at once.
    edge.kill();
    let log = root.join("edge.log");
    let edge = Server::spawn_with_stderr(
        edge_command(&edge_dir, &registry_addr, &follower),
        edge_dir.clone(),
        std::fs::File::create(&log).unwrap().into(),
    );
    expect_runs(&edge, &all_three);

    // One mirrored file flipped on disk: that script is refused, the others run.
    let hello_sha = edge.get("/api/v1/scripts/hello").json()["artifact_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = edge_dir.join(format!("edge/artifacts/{hello_sha}.wasm"));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    wait_until("the tampered script is refused", CATCH_UP, || {
        run(&edge, "hello", "?name=Lin").is_err()
    });
    let refused = run(&edge, "hello", "?name=Lin").unwrap_err();
    assert_eq!(
        refused.error_kind(),
        (502, "ArtifactRejected".to_owned()),
        "{}",
        refused.body
    );
    let message = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("`hello`") && message.contains("failed verification") && message.contains("fetched again"),
        "{message}"
    );
    expect_runs(&edge, &all_three[1..]);
    assert!(
        health(&edge)["registry"]["damaged"]
            .as_array()
            .unwrap()
            .contains(&json!(hello_sha))
    );

    // The registry returns on the same data dir and port, with a new script
    // and a new version of an old one: the edge catches up, and fetches the
    // tampered artifact again.
    let registry = start_registry(&registry_dir, &registry_addr);
    store(&registry, &admin, "fresh", FRESH);
    store(&registry, &admin, "answer", ANSWER_V2);
    wait_until("the edge catches up", CATCH_UP, || {
        run(&edge, "fresh", "").is_ok_and(|r| r == json!({"y": "new"}))
            && run(&edge, "answer", "").is_ok_and(|r| r == json!({"x": 54}))
            && run(&edge, "hello", "?name=Lin").is_ok()
    });
    expect_runs(
        &edge,
        &[
            ("hello", "?name=Lin", json!({"message": "Hello, Lin"})),
            ("answer", "", json!({"x": 54})),
            ("shout", "?name=Ada", json!({"message": "Ada!"})),
            ("fresh", "", json!({"y": "new"})),
        ],
    );
    assert_eq!(
        sha256(&std::fs::read(&file).unwrap()),
        hello_sha,
        "fetched again, intact"
    );
    let h = health(&edge);
    assert_eq!(
        (h["status"].as_str(), h["registry"]["state"].as_str()),
        (Some("ok"), Some("ok")),
        "{h}"
    );
    assert_eq!(h["registry"]["damaged"], json!([]), "{h}");

    // A script deleted upstream disappears from the edge (and its file goes).
    let [(name, value)] = auth(&admin);
    let r = registry.request_with_headers("DELETE", "/api/v1/scripts/shout", &[(name, &value)], None);
    assert_eq!(r.status, 204, "{}", r.body);
    wait_until("the deletion reaches the edge", CATCH_UP, || {
        run(&edge, "shout", "?name=Ada").is_err_and(|r| r.status == 404)
    });
    assert_eq!(edge.get("/api/v1/scripts").json().as_array().map(Vec::len), Some(3));
    edge.stop();
    registry.stop();

    // One outage, one warning and one "caught up" line, however many retries.
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.matches("cannot sync from the registry").count(), 1, "{log}");
    assert_eq!(log.matches("the registry is reachable again").count(), 1, "{log}");
    assert!(!log.contains(&follower), "the API key is never logged");
}

#[test]
fn artifacts_signed_by_an_untrusted_key_are_never_written() {
    let root = fresh_dir("edge-untrusted");
    let registry_dir = root.join("registry");
    let edge_dir = root.join("edge");
    let registry = start_registry(&registry_dir, "127.0.0.1:0");
    let admin = create_api_key(&registry_dir, "admin");
    let follower = create_api_key(&registry_dir, "registry");
    let stored = store(&registry, &admin, "hello", HELLO);
    // No `trust(…)`: this edge node does not trust the registry's key.
    let edge = start_edge(&edge_dir, &registry.addr, &follower);
    wait_until("the edge refuses the artifact", CATCH_UP, || {
        health(&edge)["registry"]["rejected"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    let h = health(&edge);
    assert_eq!(h["registry"]["state"], "ok", "the registry answered: {h}");
    let rejected = &h["registry"]["rejected"][0];
    assert_eq!(rejected["name"], "hello");
    assert_eq!(rejected["artifact_sha256"], stored["artifact_sha256"]);
    assert!(
        rejected["reason"].as_str().unwrap().contains("not trusted"),
        "{rejected}"
    );
    assert!(mirrored_files(&edge_dir).is_empty(), "{:?}", mirrored_files(&edge_dir));
    let r = edge.get("/api/v1/run/hello");
    assert_eq!(r.error_kind(), (404, "ScriptNotFound".to_owned()), "{}", r.body);
    // Still nothing on disk a few sync periods later.
    std::thread::sleep(Duration::from_secs(1));
    assert!(mirrored_files(&edge_dir).is_empty());
    edge.stop();
    registry.stop();
}

#[test]
fn edge_mode_needs_a_registry_url() {
    let dir = fresh_dir("edge-config").join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(["serve", "--edge", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("avap serve: config error: edge is on (from flag --edge) but no registry_url is set"),
        "{stderr}"
    );
    assert!(stderr.contains("--registry URL"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args([
            "serve",
            "--edge",
            "--registry",
            "ftp://x",
            "--print-config",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("registry_url = \"ftp://x\" (from flag --registry)"));
}

/// Script list rewrites: (name, artifact SHA-256) to list instead of what the registry says.
type Swaps = Arc<Mutex<Vec<(String, String)>>>;

/// A man in the middle between an edge node and its registry `registry`
/// (`HOST:PORT`), on loopback as a tunnel would be: it passes requests
/// through, and rewrites the script list with the swaps set at the time
/// (the artifacts stay the registry's own, signed bytes).
fn intercept(registry: &str) -> (String, Swaps) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let swaps: Swaps = Arc::default();
    let (registry, shared) = (registry.to_owned(), swaps.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let swaps = shared.lock().unwrap().clone();
            let _ = relay(&mut client, &registry, &swaps);
        }
    });
    (addr, swaps)
}

fn relay(client: &mut TcpStream, registry: &str, swaps: &[(String, String)]) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let rewrite = !swaps.is_empty() && path == "/api/v1/registry/scripts";
    let mut upstream = TcpStream::connect(registry)?;
    write!(
        upstream,
        "GET {path} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n"
    )?;
    for line in head.lines().skip(1) {
        let lower = line.to_ascii_lowercase();
        // A 304 would leave nothing to rewrite.
        if lower.starts_with("authorization:") || (!rewrite && lower.starts_with("if-none-match:")) {
            write!(upstream, "{line}\r\n")?;
        }
    }
    write!(upstream, "\r\n")?;
    let mut raw = Vec::new();
    upstream.read_to_end(&mut raw)?;
    if rewrite {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let mut list: Value = serde_json::from_slice(&raw[split + 4..]).unwrap();
        let scripts = list["scripts"].as_array_mut().unwrap();
        for (name, sha) in swaps {
            match scripts.iter_mut().find(|s| s["name"] == name.as_str()) {
                Some(script) => {
                    script["artifact_sha256"] = json!(sha);
                    script["version"] = json!(script["version"].as_i64().unwrap() + 1);
                }
                None => scripts.push(json!({
                    "name": name, "version": 1, "artifact_sha256": sha,
                    "updated_at": "2026-11-23T20:00:00.000Z",
                })),
            }
        }
        scripts.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        list["generation"] = json!("rewritten");
        let body = list.to_string();
        raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
    }
    client.write_all(&raw)?;
    client.flush()
}

fn sha_of(stored: &Value) -> String {
    stored["artifact_sha256"].as_str().unwrap().to_owned()
}

#[test]
fn an_artifact_whose_signed_meta_names_another_script_is_not_mirrored() {
    let root = fresh_dir("edge-misnamed");
    let registry_dir = root.join("registry");
    let edge_dir = root.join("edge");
    let registry = start_registry(&registry_dir, "127.0.0.1:0");
    let admin = create_api_key(&registry_dir, "admin");
    let follower = create_api_key(&registry_dir, "registry");
    let hello = sha_of(&store(&registry, &admin, "hello", HELLO));
    let answer_v1 = sha_of(&store(&registry, &admin, "answer", ANSWER));
    trust(&edge_dir, &registry_dir);
    let (proxy, swaps) = intercept(&registry.addr);
    let log = root.join("edge.log");
    let edge = Server::spawn_with_stderr(
        edge_command(&edge_dir, &proxy, &follower),
        edge_dir.clone(),
        std::fs::File::create(&log).unwrap().into(),
    );
    wait_until("the edge syncs through the interceptor", CATCH_UP, || {
        health(&edge)["registry"]["scripts"] == 2
    });
    // answer v2 on the registry: v1's file leaves the edge's disk, so a
    // list pointing at v1 means a download.
    let answer_v2 = sha_of(&store(&registry, &admin, "answer", ANSWER_V2));
    let v1_file = edge_dir.join(format!("edge/artifacts/{answer_v1}.wasm"));
    wait_until("the edge follows answer v2 and drops v1", CATCH_UP, || {
        run(&edge, "answer", "").is_ok_and(|r| r == json!({"x": 54})) && !v1_file.exists()
    });

    // The list is rewritten: `hello` points at answer v1 (signed, by the
    // trusted key, not on disk), and a new name `payments` at answer v2
    // (on disk, mirrored for `answer`).
    *swaps.lock().unwrap() = vec![
        ("hello".to_owned(), answer_v1.clone()),
        ("payments".to_owned(), answer_v2.clone()),
    ];
    wait_until("both pairings are refused", CATCH_UP, || {
        health(&edge)["registry"]["rejected"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
    });
    // A few more sync periods: still refused, never written, logged once each.
    std::thread::sleep(Duration::from_secs(1));
    let h = health(&edge);
    assert_eq!(h["registry"]["state"], "ok", "{h}");
    let rejected = h["registry"]["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{h}");
    for (entry, (name, sha)) in rejected.iter().zip([("hello", &answer_v1), ("payments", &answer_v2)]) {
        assert_eq!(
            (entry["name"].as_str(), entry["artifact_sha256"].as_str()),
            (Some(name), Some(sha.as_str())),
            "{h}"
        );
        let reason = entry["reason"].as_str().unwrap();
        assert!(
            reason.contains("`answer.avap`") && reason.contains(&format!("`{name}.avap`")),
            "{reason}"
        );
    }
    assert!(!v1_file.exists(), "a refused artifact is never written");
    let shown = edge.get("/api/v1/scripts/hello").json();
    assert_eq!(
        (shown["version"].as_i64(), shown["artifact_sha256"].as_str()),
        (Some(1), Some(hello.as_str())),
        "{shown}"
    );
    expect_runs(
        &edge,
        &[
            ("hello", "?name=Lin", json!({"message": "Hello, Lin"})),
            ("answer", "", json!({"x": 54})),
        ],
    );
    assert_eq!(run(&edge, "payments", "").unwrap_err().status, 404);

    // The list is honest again: nothing is left rejected.
    swaps.lock().unwrap().clear();
    wait_until("the rejections clear", CATCH_UP, || {
        health(&edge)["registry"]["rejected"] == json!([])
    });
    edge.stop();
    registry.stop();
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.matches("refusing the registry's artifact for this script").count(),
        2,
        "{log}"
    );
}

#[test]
fn a_rollback_on_the_registry_is_followed() {
    let root = fresh_dir("edge-rollback");
    let registry_dir = root.join("registry");
    let edge_dir = root.join("edge");
    let registry = start_registry(&registry_dir, "127.0.0.1:0");
    let admin = create_api_key(&registry_dir, "admin");
    let follower = create_api_key(&registry_dir, "registry");
    let v1 = sha_of(&store(&registry, &admin, "answer", ANSWER));
    store(&registry, &admin, "answer", ANSWER_V2);
    trust(&edge_dir, &registry_dir);
    let edge = start_edge(&edge_dir, &registry.addr, &follower);
    wait_until("the edge mirrors answer v2", CATCH_UP, || {
        run(&edge, "answer", "").is_ok_and(|r| r == json!({"x": 54}))
    });
    let [(h, v)] = auth(&admin);
    let body = json!({"version": 1}).to_string();
    let r = registry.request_with_headers(
        "POST",
        "/api/v1/scripts/answer/rollback",
        &[(h, &v)],
        Some(("application/json", &body)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until("the edge follows the rollback to v1", CATCH_UP, || {
        run(&edge, "answer", "").is_ok_and(|r| r == json!({"x": 42}))
    });
    let shown = edge.get("/api/v1/scripts/answer").json();
    assert_eq!(
        (shown["version"].as_i64(), shown["artifact_sha256"].as_str()),
        (Some(1), Some(v1.as_str())),
        "{shown}"
    );
    assert_eq!(health(&edge)["registry"]["rejected"], json!([]));
    edge.stop();
    registry.stop();
}

#[test]
fn a_registry_api_key_is_never_sent_over_plain_http_to_another_host() {
    let dir = fresh_dir("edge-clear-text").join("data");
    let serve = |registry: &str, key: Option<&str>, extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
        cmd.args(["serve", "--edge", "--listen", "127.0.0.1:0", "--registry", registry])
            .args(extra)
            .arg("--data-dir")
            .arg(&dir)
            .env_remove("AVAP_REGISTRY_API_KEY");
        if let Some(key) = key {
            cmd.env("AVAP_REGISTRY_API_KEY", key);
        }
        cmd.output().unwrap()
    };
    let key = Some("avap_0123abcd_supersecret");
    let out = serve("http://10.0.0.5:8080", key, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config error: registry_url = \"http://10.0.0.5:8080\" (from flag --registry)")
            && stderr.contains("registry_api_key unencrypted")
            && stderr.contains("https://")
            && stderr.contains("http://127.0.0.1:PORT"),
        "{stderr}"
    );
    assert!(!stderr.contains("supersecret"), "{stderr}");
    // A name is not a loopback address: it could resolve anywhere.
    assert_eq!(serve("http://localhost:8080", key, &[]).status.code(), Some(2));
    // https, loopback, or no key at all: accepted.
    for (registry, key) in [
        ("https://10.0.0.5:8443", key),
        ("http://127.0.0.1:8080", key),
        ("http://10.0.0.5:8080", None),
    ] {
        let out = serve(registry, key, &["--print-config"]);
        assert_eq!(out.status.code(), Some(0), "{registry}: {out:?}");
    }
}

/// Issue 18: libraries are stored scripts, mirrored like any other; an
/// including script's artifact holds the library's code, so an edge node
/// runs it as built, and follows a rebuild on the registry.
#[test]
fn an_edge_node_serves_scripts_that_include_libraries() {
    const GREET_V1: &str = "function greet(who) {\n  m = \"Hello, \" + who\n  return(m)\n}\n";
    const GREET_V2: &str = "function greet(who) {\n  m = \"Howdy, \" + who\n  return(m)\n}\n";
    const APP: &str = "include(\"greet\")\naddParam(name, who)\nmessage = greet(who)\naddResult(message)\n";
    let root = fresh_dir("edge-libraries");
    let registry_dir = root.join("registry");
    let edge_dir = root.join("edge");
    let registry = start_registry(&registry_dir, "127.0.0.1:0");
    let admin = create_api_key(&registry_dir, "admin");
    let follower = create_api_key(&registry_dir, "registry");
    store(&registry, &admin, "greet", GREET_V1);
    store(&registry, &admin, "app", APP);
    trust(&edge_dir, &registry_dir);
    let edge = start_edge(&edge_dir, &registry.addr, &follower);
    wait_until("the edge mirrors app", CATCH_UP, || {
        run(&edge, "app", "?name=Lin").is_ok()
    });
    expect_runs(&edge, &[("app", "?name=Lin", json!({"message": "Hello, Lin"}))]);
    assert_eq!(edge.get("/api/v1/scripts").json().as_array().map(Vec::len), Some(2));

    // The library changes on the registry: the edge keeps app as built ...
    store(&registry, &admin, "greet", GREET_V2);
    wait_until("the edge mirrors greet v2", CATCH_UP, || {
        edge.get("/api/v1/scripts/greet").json()["version"] == 2
    });
    expect_runs(&edge, &[("app", "?name=Lin", json!({"message": "Hello, Lin"}))]);
    // ... until app is rebuilt there.
    let [(h, v)] = auth(&admin);
    let r = registry.request_with_headers("POST", "/api/v1/scripts/app/rebuild", &[(h, &v)], None);
    assert_eq!(r.status, 201, "{}", r.body);
    wait_until("the edge follows the rebuild", CATCH_UP, || {
        run(&edge, "app", "?name=Lin").is_ok_and(|r| r == json!({"message": "Howdy, Lin"}))
    });
    // An edge node shows the mirror: no sources, so no `libraries`/`dependents`.
    let shown = edge.get("/api/v1/scripts/app").json();
    assert_eq!(shown["version"], 2, "{shown}");
    assert!(
        shown.get("libraries").is_none() && shown.get("dependents").is_none(),
        "{shown}"
    );
    // Inline scripts there have no library sources to include: said so.
    let r = edge.post_json(
        "/api/v1/execute",
        &json!({"script": "include(\"greet\")\nm = greet(\"x\")\naddResult(m)\n"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("E0060") && r.body.contains("edge node"), "{}", r.body);
    edge.stop();
    registry.stop();
}
