//! A client for the real `avap serve` binary, shared by the server tests:
//! start it on a free loopback port, speak raw HTTP/1.1 to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A running `avap serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    _stdout: BufReader<ChildStdout>,
}

/// A fresh directory under the target directory.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(concat!("server-tests-", env!("CARGO_CRATE_NAME")))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir
}

/// A CA made for a test (`ca.crt`, `ca.key`) and a certificate it signed
/// for `localhost` and 127.0.0.1 (`server.crt`, `server.key`), written into
/// `dir` by `openssl`.
pub fn test_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let ca = [
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=avap test CA",
    ];
    openssl(&[&["req", "-x509"][..], &ec, &ca].concat());
    let csr = ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"];
    openssl(&[&["req"][..], &ec, &csr].concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

impl Server {
    /// Start on a free port with the data directory `<tmp>/<name>/data`.
    pub fn start(name: &str) -> Server {
        let data_dir = fresh_dir(name).join("data");
        Server::spawn(serve_command(&data_dir), data_dir)
    }

    pub fn spawn(cmd: Command, data_dir: PathBuf) -> Server {
        Server::spawn_with_stderr(cmd, data_dir, Stdio::inherit())
    }

    /// As [`Server::spawn`], with the server's stderr (its log) going to `stderr`.
    pub fn spawn_with_stderr(mut cmd: Command, data_dir: PathBuf, stderr: Stdio) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start avap serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the startup line");
        // "avap serve listening on http://127.0.0.1:PORT (data dir DIR)"
        let addr = line
            .strip_prefix("avap serve listening on http://")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected startup line {line:?}"))
            .to_owned();
        assert!(
            line.trim_end().ends_with(&format!("(data dir {})", data_dir.display())),
            "{line}"
        );
        Server {
            child,
            addr,
            data_dir,
            _stdout: stdout,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes())
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.send(&post_request(path, body.as_bytes()))
    }

    pub fn execute(&self, body: &Value) -> Reply {
        self.post("/api/v1/execute", &body.to_string())
    }

    /// Send a raw request and read the reply. The request is written on
    /// another thread so a server that answers before reading it all (413)
    /// cannot deadlock us; a reset after the reply is fine.
    pub fn send(&self, request: &[u8]) -> Reply {
        send_to(&self.addr, request)
    }
}

/// Send a raw request to `addr` and read the reply (see [`Server::send`]).
pub fn send_to(addr: &str, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut writer = stream.try_clone().expect("clone stream");
    let request = request.to_vec();
    let writing = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    writing.join().expect("writer thread");
    Reply::parse(&raw)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn post_request(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn parse(raw: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(raw);
        // Skip interim 1xx responses (e.g. 100 Continue).
        let mut rest: &str = &text;
        loop {
            let (head, body) = rest
                .split_once("\r\n\r\n")
                .unwrap_or_else(|| panic!("no complete response in {text:?}"));
            let mut lines = head.lines();
            let status: u16 = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line in {text:?}"));
            if (100..200).contains(&status) {
                rest = body;
                continue;
            }
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            return Reply {
                status,
                headers,
                body: body.to_owned(),
            };
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `(status, error.kind)` of an error reply.
    pub fn error_kind(&self) -> (u16, String) {
        let kind = self.json()["error"]["kind"].as_str().unwrap_or("").to_owned();
        (self.status, kind)
    }
}

impl Server {
    /// Start on a free port with `data_dir` as it is (for restarts).
    pub fn start_on(data_dir: &Path) -> Server {
        Server::spawn(serve_command(data_dir), data_dir.to_path_buf())
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, None)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(("application/json", &body.to_string())))
    }

    /// One request; `body` is `(content type, text)`.
    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> Reply {
        let (content_type, text) = body.unwrap_or(("text/plain", ""));
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        self.send(raw.as_bytes())
    }

    /// One request with extra header lines (`("Name", "value")`); `body` is `(content type, text)`.
    pub fn request_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> Reply {
        let (content_type, text) = body.unwrap_or(("text/plain", ""));
        let extra: String = headers.iter().fold(String::new(), |mut out, (k, v)| {
            use std::fmt::Write as _;
            let _ = write!(out, "{k}: {v}\r\n");
            out
        });
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        self.send(raw.as_bytes())
    }

    /// Stop the process as an operator would (SIGTERM: graceful shutdown)
    /// and wait for it; its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.child.wait().expect("wait for the server")
    }

    /// Stop the process (as a crash would) and wait for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start on a free port with extra `avap serve` flags.
    pub fn start_with_args(name: &str, args: &[&str]) -> Server {
        let data_dir = fresh_dir(name).join("data");
        let mut cmd = serve_command(&data_dir);
        cmd.args(args);
        Server::spawn(cmd, data_dir)
    }
}

/// `avap apikey create --scope SCOPE` against `data_dir`: the new key.
pub fn create_api_key(data_dir: &Path, scope: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["apikey", "create", "--scope", scope, "--data-dir"])
        .arg(data_dir);
    if let Some(url) = server_database(data_dir) {
        cmd.arg("--database-url").arg(url);
    }
    let out = cmd.output().expect("run avap apikey");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// A fresh `PostgreSQL` database on the machine's server
/// (`$TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432`),
/// dropped when this value is.
pub struct PgDatabase {
    pub name: String,
    /// `postgres://…/<name>`, for `database_url`.
    pub url: String,
    admin: String,
}

static STALE_DATABASES_SWEPT: std::sync::Once = std::sync::Once::new();

impl PgDatabase {
    pub fn create(tag: &str) -> PgDatabase {
        let base =
            std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        // The creation time in the name lets later runs drop databases a
        // crashed run left behind (see `drop_stale`).
        let name = format!(
            "avap_it_{}_{:x}{:x}_{tag}",
            now.as_secs(),
            std::process::id(),
            now.subsec_nanos()
        );
        let db = PgDatabase {
            url: format!("{base}/{name}"),
            admin: format!("{base}/test"),
            name,
        };
        // Once per test process: listing the databases is a psql run of its own.
        STALE_DATABASES_SWEPT.call_once(|| db.drop_stale());
        db.psql(&format!("CREATE DATABASE {}", db.name));
        db
    }

    /// Drop test databases created over two hours ago (left by runs that
    /// were killed, or kept for a whole test process by [`server_database`]).
    fn drop_stale(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let names = self.psql("SELECT datname FROM pg_database WHERE datname LIKE 'avap\\_it\\_%'");
        for name in names.lines() {
            let created = name
                .strip_prefix("avap_it_")
                .and_then(|rest| rest.split('_').next())
                .and_then(|secs| secs.parse::<u64>().ok());
            if created.is_some_and(|secs| secs + 2 * 3600 < now) {
                let _ = Command::new("psql")
                    .args([
                        self.admin.as_str(),
                        "-qc",
                        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    ])
                    .output();
            }
        }
    }

    /// Run `sql` in this database.
    pub fn query(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }

    fn psql(&self, sql: &str) -> String {
        psql(&self.admin, sql)
    }
}

/// With `TEST_SERVER_DATABASE=postgres`, the servers these tests start keep
/// their registry in `PostgreSQL` instead of the data directory's `SQLite` file:
/// one fresh database per data directory, kept for the whole test process
/// (restarts on the same data directory find their scripts). `.ci/run` runs
/// the server tests both ways.
pub fn server_database(data_dir: &Path) -> Option<String> {
    use std::sync::Mutex;
    static DATABASES: Mutex<Vec<(PathBuf, PgDatabase)>> = Mutex::new(Vec::new());
    if std::env::var("TEST_SERVER_DATABASE").as_deref() != Ok("postgres") {
        return None;
    }
    let mut databases = DATABASES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, db)) = databases.iter().find(|(dir, _)| dir == data_dir) {
        return Some(db.url.clone());
    }
    let db = PgDatabase::create("server");
    let url = db.url.clone();
    databases.push((data_dir.to_path_buf(), db));
    Some(url)
}

/// `avap serve` on a free loopback port with `data_dir` (and the test
/// database, see [`server_database`]); more arguments may follow.
pub fn serve_command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    if let Some(url) = server_database(data_dir) {
        cmd.env("AVAP_DATABASE_URL", url);
    }
    cmd
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        self.psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// `psql URL -c SQL`, unaligned and tuples only; panics on failure.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .expect("psql runs (the PostgreSQL client is needed for these tests)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Server {
    /// One request as the holder of API key `key` (`Authorization: Bearer`),
    /// with an optional JSON body.
    pub fn as_key(&self, key: &str, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let auth = format!("Bearer {key}");
        let text = body.map(Value::to_string);
        self.request_with_headers(
            method,
            path,
            &[("Authorization", &auth)],
            text.as_deref().map(|t| ("application/json", t)),
        )
    }
}

/// `avap ARGS…`, which must succeed; its stdout.
pub fn avap(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(args)
        .output()
        .expect("run avap");
    assert!(
        out.status.success(),
        "avap {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A TCP forwarder on a loopback port to `target` that a test can cut
/// (every connection dropped, new ones refused) and restore: a network
/// failure between a node and a real service, without stopping the service
/// other tests use.
pub struct Cuttable {
    pub addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Cuttable {
    pub fn to(target: &str) -> Cuttable {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the forwarder");
        let addr = listener.local_addr().expect("address");
        let open = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let target = target.to_owned();
        let (accept_open, accept_generation) = (open.clone(), generation.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !accept_open.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let born = accept_generation.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().expect("clone"), server.try_clone().expect("clone")),
                    (server, client),
                ] {
                    let (open, generation) = (accept_open.clone(), accept_generation.clone());
                    std::thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(50))).ok();
                        let mut buf = [0_u8; 16 << 10];
                        loop {
                            if !open.load(Ordering::SeqCst) || generation.load(Ordering::SeqCst) != born {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cuttable { addr, open, generation }
    }

    /// Drop every connection and refuse new ones.
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.open.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Accept connections again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
