//! The Redis side of `avap serve` against the machine's real Redis
//! (127.0.0.1:6379) and `PostgreSQL` (the shared registry): two nodes, each
//! with its own signing key and listing the other's in `cluster_keys/`,
//! share compiled modules (L2), script invalidations and one rate limit; a
//! module sealed by a key that may only sign artifacts is refused; a node
//! whose Redis is unreachable keeps serving and says it is degraded.
//!
//! Every test uses its own `redis_prefix`, so tests running in parallel
//! (and earlier runs) never meet.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use avap_hostfns::artifact::{decode_secret_key, encode_public_key, encode_secret_key, generate_key, key_id};
use avap_runtime::precompiled;
use serde_json::{Value, json};

mod support;

use support::{PgDatabase, Server, fresh_dir};

const REDIS: &str = "redis://127.0.0.1:6379";

/// A key namespace no other test or run uses.
fn unique_prefix(tag: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random bytes");
    format!("avaptest-{tag}-{}", hex::encode(bytes))
}

/// Data directories of two nodes, each with its own server key and
/// listing the other's in `cluster_keys/` (as an operator sets up a
/// cluster whose nodes keep their own keys).
fn two_node_dirs(tag: &str) -> [PathBuf; 2] {
    let root = fresh_dir(tag);
    let dirs = [root.join("a"), root.join("b")];
    let keys = [generate_key().expect("key"), generate_key().expect("key")];
    for (i, dir) in dirs.iter().enumerate() {
        let own = dir.join("keys");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("server.key"), encode_secret_key(&keys[i])).unwrap();
        std::fs::set_permissions(own.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(own.join("server.pub"), encode_public_key(&keys[i].verifying_key())).unwrap();
        let cluster = dir.join("cluster_keys");
        std::fs::create_dir_all(&cluster).unwrap();
        std::fs::write(
            cluster.join("peer.pub"),
            encode_public_key(&keys[1 - i].verifying_key()),
        )
        .unwrap();
    }
    dirs
}

/// `avap serve` on `data_dir` with the registry in `db`, Redis under `prefix`.
fn node(data_dir: &Path, db: &PgDatabase, prefix: &str, env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("AVAP_DATABASE_URL", &db.url)
        .env("AVAP_REDIS_URL", REDIS)
        .env("AVAP_REDIS_PREFIX", prefix)
        .envs(env.iter().copied());
    Server::spawn(cmd, data_dir.to_path_buf())
}

fn store(server: &Server, name: &str, source: &str) -> Value {
    let r = server.post_json("/api/v1/scripts", &json!({"name": name, "source": source}));
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

fn run(server: &Server, name: &str) -> Value {
    let r = server.get(&format!("/api/v1/run/{name}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["result"].clone()
}

/// A counter's value in the Prometheus text of `/api/v1/metrics`.
fn metric(server: &Server, name: &str) -> u64 {
    let text = server.get("/api/v1/metrics").body;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .expect("a whole number")
}

fn health(server: &Server) -> Value {
    let r = server.get("/api/v1/health");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// One command to the real Redis, for the tests' own look at it (a
/// blocking RESP2 exchange; replies as JSON: bulk strings as byte arrays).
fn redis(args: &[&[u8]]) -> Reply2 {
    let mut stream = TcpStream::connect("127.0.0.1:6379").expect("connect to Redis");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut command = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        command.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        command.extend_from_slice(arg);
        command.extend_from_slice(b"\r\n");
    }
    stream.write_all(&command).unwrap();
    read_reply(&mut BufReader::new(stream))
}

#[derive(Debug, PartialEq)]
enum Reply2 {
    Line(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Many(Vec<Reply2>),
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> Reply2 {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a reply line");
    let (kind, rest) = line.trim_end().split_at(1);
    match kind {
        "+" => Reply2::Line(rest.to_owned()),
        "-" => panic!("Redis refused: {rest}"),
        ":" => Reply2::Int(rest.parse().unwrap()),
        "$" => match rest.parse::<i64>().unwrap() {
            -1 => Reply2::Bulk(None),
            n => {
                let mut data = vec![0; usize::try_from(n).unwrap() + 2];
                reader.read_exact(&mut data).unwrap();
                data.truncate(data.len() - 2);
                Reply2::Bulk(Some(data))
            }
        },
        "*" => Reply2::Many(
            (0..rest.parse::<usize>().unwrap())
                .map(|_| read_reply(reader))
                .collect(),
        ),
        _ => panic!("unexpected reply {line:?}"),
    }
}

/// The keys matching `pattern` (KEYS is fine on a test Redis).
fn keys(pattern: &str) -> Vec<String> {
    match redis(&[b"KEYS", pattern.as_bytes()]) {
        Reply2::Many(items) => items
            .into_iter()
            .map(|item| match item {
                Reply2::Bulk(Some(k)) => String::from_utf8(k).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn get(key: &str) -> Option<Vec<u8>> {
    match redis(&[b"GET", key.as_bytes()]) {
        Reply2::Bulk(value) => value,
        other => panic!("{other:?}"),
    }
}

/// The module cache key of `artifact_sha256`, once some node shared it.
fn wait_for_cwasm(prefix: &str, artifact_sha256: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(key) = keys(&format!("{prefix}:cwasm:*:{artifact_sha256}")).pop() {
            return key;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the module was not shared within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn modules_compiled_on_one_node_are_loaded_from_redis_on_the_other() {
    let db = PgDatabase::create("l2");
    let prefix = unique_prefix("l2");
    let [dir_a, dir_b] = two_node_dirs("l2");
    let a = node(&dir_a, &db, &prefix, &[]);
    let b = node(&dir_b, &db, &prefix, &[]);
    assert_eq!(health(&b)["redis"], "ok");

    let square = store(&a, "square", "x = 7\ny = x * x\naddResult(y)\n");
    let sha = square["artifact_sha256"].as_str().unwrap();
    wait_for_cwasm(&prefix, sha);
    let artifact = get(&format!("{prefix}:artifact:{sha}")).expect("the artifact is in Redis too");
    assert!(artifact.starts_with(b"\0asm"), "a wasm artifact");

    assert_eq!(run(&b, "square")["y"], 49);
    assert_eq!(metric(&b, "avap_l2_hits_total"), 1);
    assert_eq!(metric(&b, "avap_l2_misses_total"), 0);
    assert_eq!(
        health(&b)["cache"]["modules_compiled"],
        0,
        "node B loaded the module node A compiled"
    );

    // A tampered module in Redis is refused; the run is still right.
    let cube = store(&a, "cube", "x = 3\ny = x * x * x\naddResult(y)\n");
    let sha = cube["artifact_sha256"].as_str().unwrap();
    let key = wait_for_cwasm(&prefix, sha);
    let mut entry = get(&key).expect("the shared module");
    let last = entry.len() - 1;
    entry[last] ^= 0x55;
    assert_eq!(
        redis(&[b"SET", key.as_bytes(), &entry, b"PX", b"600000"]),
        Reply2::Line("OK".to_owned())
    );
    assert_eq!(run(&b, "cube")["y"], 27);
    assert_eq!(metric(&b, "avap_l2_refused_total"), 1);
    assert_eq!(health(&b)["cache"]["modules_compiled"], 1, "compiled itself instead");
    // Node B shares its own build, replacing the tampered entry.
    let started = Instant::now();
    while get(&key).as_ref() == Some(&entry) {
        assert!(started.elapsed() < Duration::from_secs(10), "the tampered entry stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Which node A now loads when its own cache has forgotten it (a
    // restart): its module cache is empty, Redis has B's sealed build.
    drop(a);
    let a = node(&dir_a, &db, &prefix, &[("AVAP_PREWARM", "0")]);
    assert_eq!(run(&a, "cube")["y"], 27);
    assert_eq!(
        metric(&a, "avap_l2_hits_total"),
        1,
        "B's module, sealed with B's key, which A lists in cluster_keys/"
    );
    assert_eq!(health(&a)["cache"]["modules_compiled"], 0);
}

/// Where the native code starts in a sealed `.cwasm` (the layout of
/// `avap_runtime::precompiled`: magic, three header lines, a 64-byte
/// signature).
fn native_of(sealed: &[u8]) -> &[u8] {
    let mut at = precompiled::MAGIC.len();
    for _ in 0..3 {
        at += sealed[at..].iter().position(|&b| b == b'\n').expect("a header line") + 1;
    }
    &sealed[at + 64..]
}

#[test]
fn a_module_sealed_by_an_artifact_signer_is_refused() {
    let db = PgDatabase::create("l2seal");
    let prefix = unique_prefix("l2seal");
    let [dir_a, dir_b] = two_node_dirs("l2seal");
    // Node B trusts this key's artifacts, not its compiled modules.
    let artifact_signer = generate_key().expect("key");
    let trusted = dir_b.join("trusted_keys");
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::write(
        trusted.join("ci.pub"),
        encode_public_key(&artifact_signer.verifying_key()),
    )
    .unwrap();
    let a = node(&dir_a, &db, &prefix, &[]);
    let log_path = dir_b.with_extension("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir_b)
        .env("AVAP_DATABASE_URL", &db.url)
        .env("AVAP_REDIS_URL", REDIS)
        .env("AVAP_REDIS_PREFIX", &prefix);
    let b = Server::spawn_with_stderr(
        cmd,
        dir_b.clone(),
        Stdio::from(std::fs::File::create(&log_path).unwrap()),
    );

    // B pre-warms its cache at start: once that is done, only the run
    // below loads the script (else both may ask Redis, and count twice).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("pre-warmed")
    {
        assert!(Instant::now() < deadline, "node B did not pre-warm");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stored = store(&a, "forged", "x = 6\ny = x * 7\naddResult(y)\n");
    let sha = stored["artifact_sha256"].as_str().unwrap();
    let key = wait_for_cwasm(&prefix, sha);
    // The same native code, re-sealed by the artifact signer.
    let sealed_by_a = get(&key).expect("the shared module");
    let fingerprint = key
        .strip_prefix(&format!("{prefix}:cwasm:"))
        .and_then(|rest| rest.strip_suffix(&format!(":{sha}")))
        .expect("<prefix>:cwasm:<fingerprint>:<sha>");
    // The test seals with the function a node uses (ed25519 is
    // deterministic): with A's key it gives A's entry byte for byte.
    let key_a = decode_secret_key(&std::fs::read_to_string(dir_a.join("keys/server.key")).unwrap()).unwrap();
    let native = native_of(&sealed_by_a);
    assert!(precompiled::seal(&key_a, fingerprint, sha, native) == sealed_by_a);
    let forged = precompiled::seal(&artifact_signer, fingerprint, sha, native);
    assert_eq!(
        redis(&[b"SET", key.as_bytes(), &forged, b"PX", b"600000"]),
        Reply2::Line("OK".to_owned())
    );

    assert_eq!(run(&b, "forged")["y"], 42);
    assert_eq!(metric(&b, "avap_l2_refused_total"), 1);
    assert_eq!(metric(&b, "avap_l2_hits_total"), 0);
    assert_eq!(health(&b)["cache"]["modules_compiled"], 1, "compiled itself instead");
    b.stop();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let signer = key_id(&artifact_signer.verifying_key());
    assert!(
        log.contains("not a cluster key") && log.contains(&signer),
        "refused for its key: {log}"
    );
}

#[test]
fn an_update_reaches_the_other_node_within_a_second() {
    let db = PgDatabase::create("invalidate");
    let prefix = unique_prefix("invalidate");
    let [dir_a, dir_b] = two_node_dirs("invalidate");
    let a = node(&dir_a, &db, &prefix, &[]);
    let b = node(&dir_b, &db, &prefix, &[]);
    store(&a, "version", "v = 1\naddResult(v)\n");
    assert_eq!(run(&b, "version")["v"], 1, "now cached on node B");
    assert_eq!(run(&b, "version")["v"], 1);

    store(&a, "version", "v = 2\naddResult(v)\n");
    let changed = Instant::now();
    loop {
        let v = run(&b, "version")["v"].as_i64().unwrap();
        if v == 2 {
            break;
        }
        assert_eq!(v, 1, "only the old or the new version");
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "node B still runs version 1 a second after the update"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = changed.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(metric(&b, "avap_invalidations_received_total") >= 1);
    eprintln!("the update reached node B after {took:?}");
}

#[test]
fn one_rate_limit_holds_across_both_nodes() {
    let db = PgDatabase::create("ratelimit");
    let prefix = unique_prefix("ratelimit");
    let [dir_a, dir_b] = two_node_dirs("ratelimit");
    let limits = [("AVAP_RATE_LIMIT", "1"), ("AVAP_RATE_BURST", "5")];
    let a = node(&dir_a, &db, &prefix, &limits);
    let b = node(&dir_b, &db, &prefix, &limits);
    // Five quick requests on node A use up the client's burst (malformed
    // bodies: fast, and they still count)…
    for _ in 0..5 {
        assert_eq!(a.post("/api/v1/execute", "{").status, 400);
    }
    // …so the sixth, on node B, is over the cluster-wide limit.
    let limited = b.execute(&json!({"script": "x = 1\naddResult(x)\n"}));
    assert_eq!(
        limited.error_kind(),
        (429, "RateLimited".to_owned()),
        "{}",
        limited.body
    );
    let retry: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry >= 1);
    // The limit refills at its rate, for either node.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(b.execute(&json!({"script": "x = 1\naddResult(x)\n"})).status, 200);
    assert_eq!(a.post("/api/v1/execute", "{").status, 429, "one request per second");
}

#[test]
fn without_redis_a_node_serves_and_says_it_is_degraded() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = fresh_dir("degraded");
    let data_dir = dir.join("data");
    let log_path = dir.join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("AVAP_REDIS_URL", format!("redis://:secret-pw@127.0.0.1:{port}"))
        .env("AVAP_LOG_FORMAT", "json");
    let s = Server::spawn_with_stderr(cmd, data_dir, Stdio::from(log));

    let h = health(&s);
    assert_eq!(
        (h["status"].as_str(), h["redis"].as_str()),
        (Some("degraded"), Some("degraded")),
        "{h}"
    );
    assert!(h["degraded"].as_array().unwrap().contains(&json!("redis")), "{h}");
    for i in 0..5 {
        let r = s.execute(&json!({"script": format!("x = {i}\naddResult(x)\n")}));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["result"]["x"], i);
    }
    store(&s, "kept", "k = 40 + 2\naddResult(k)\n");
    for _ in 0..3 {
        assert_eq!(run(&s, "kept")["k"], 42);
    }
    store(&s, "kept", "k = 43\naddResult(k)\n");
    assert_eq!(run(&s, "kept")["k"], 43, "local invalidation still works");
    // The monitor keeps retrying meanwhile; that must not log again.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(metric(&s, "avap_redis_errors_total") >= 2, "retried");
    assert_eq!(health(&s)["redis"], "degraded");
    s.stop();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(
        log.matches("Redis is unreachable").count(),
        1,
        "the loss is logged once: {log}"
    );
    assert!(!log.contains("secret-pw"), "the password never reaches the log: {log}");
    assert!(log.contains(":***@127.0.0.1"), "{log}");
}

#[test]
fn without_redis_url_there_is_no_redis() {
    let s = Server::start("no-redis");
    let h = health(&s);
    assert_eq!(
        (h["status"].as_str(), h["redis"].as_str()),
        (Some("ok"), Some("off")),
        "{h}"
    );
    assert_eq!(metric(&s, "avap_l2_hits_total"), 0);
}

/// A Redis that speaks only TLS, on its own port, with a certificate for
/// `localhost` from a CA made for this test (by `openssl`); stopped on drop.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    ca_file: PathBuf,
}

impl TlsRedis {
    fn start(tag: &str) -> TlsRedis {
        let dir = fresh_dir(tag);
        std::fs::create_dir_all(&dir).unwrap();
        support::test_certificates(&dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", "server.crt", "--tls-key-file", "server.key"])
            .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server with TLS");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the TLS Redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis {
            child,
            port,
            ca_file: dir.join("ca.crt"),
        }
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }

    /// `KEYS pattern`, asked with `redis-cli` over TLS.
    fn keys(&self, pattern: &str) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&self.ca_file)
            .args([
                "-h",
                "localhost",
                "-p",
                &self.port.to_string(),
                "--raw",
                "KEYS",
                pattern,
            ])
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nodes_share_modules_and_updates_over_tls() {
    let tls = TlsRedis::start("tls-redis");
    let db = PgDatabase::create("tls");
    let prefix = unique_prefix("tls");
    let [dir_a, dir_b] = two_node_dirs("tls");
    let url = tls.url();
    let ca = tls.ca_file.to_str().unwrap();
    let env = [("AVAP_REDIS_URL", url.as_str()), ("AVAP_REDIS_CA_FILE", ca)];
    let a = node(&dir_a, &db, &prefix, &env);
    let b = node(&dir_b, &db, &prefix, &env);
    assert_eq!(health(&a)["redis"], "ok");
    assert_eq!(health(&b)["redis"], "ok");

    // L2 over TLS: node B loads what node A compiled and shared.
    let square = store(&a, "square", "x = 7\ny = x * x\naddResult(y)\n");
    let sha = square["artifact_sha256"].as_str().unwrap();
    let started = Instant::now();
    while tls.keys(&format!("{prefix}:cwasm:*:{sha}")).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the module was not shared within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(run(&b, "square")["y"], 49);
    assert_eq!(metric(&b, "avap_l2_hits_total"), 1);
    assert_eq!(health(&b)["cache"]["modules_compiled"], 0, "loaded, not compiled");
    // Pub/sub over TLS: an update on A reaches B's cache within a second.
    assert_eq!(run(&b, "square")["y"], 49);
    store(&a, "square", "y = 50\naddResult(y)\n");
    let started = Instant::now();
    while run(&b, "square")["y"] != 50 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the invalidation did not arrive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shared rate limit's script runs there too.
    assert_eq!(metric(&a, "avap_redis_errors_total"), 0);
    assert_eq!(metric(&b, "avap_redis_errors_total"), 0);
}

#[test]
fn a_tls_redis_whose_certificate_is_not_trusted_is_not_used() {
    let tls = TlsRedis::start("tls-untrusted");
    let dir = fresh_dir("tls-untrusted-node");
    let data_dir = dir.join("data");
    let log_path = dir.join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        // The system's trust store does not hold the test's CA.
        .env("AVAP_REDIS_URL", tls.url())
        .env("AVAP_LOG_FORMAT", "json");
    let s = Server::spawn_with_stderr(cmd, data_dir, Stdio::from(std::fs::File::create(&log_path).unwrap()));
    assert_eq!(health(&s)["redis"], "degraded");
    let r = s.execute(&json!({"script": "x = 1\naddResult(x)\n"}));
    assert_eq!(r.status, 200, "{}", r.body);
    s.stop();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let refused = log
        .lines()
        .find(|line| line.contains("Redis is unreachable"))
        .unwrap_or_else(|| panic!("the refusal is logged: {log}"));
    assert!(
        refused.contains("certificate") || refused.contains("UnknownIssuer"),
        "{refused}"
    );
}
