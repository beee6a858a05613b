//! Case fixtures: the mock upstream HTTP server, fresh `SQLite` databases for
//! `db` and `connector`, and the clock and time zone of the run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use avap_runtime::Limits;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use super::case::{Fixtures, HttpFixture, Tables};
use super::compare::{json_eq, show};
use avap_server::exec::RunSettings;

/// Why a case could not be set up.
#[derive(Debug)]
pub enum SetupError {
    /// Something the case needs is truly not present (a port taken by
    /// another program, a host that cannot be served locally).
    Skip(String),
    /// The fixture itself is wrong or could not be built.
    Fail(String),
}

/// What a run of the case gets from its fixtures.
///
/// [`CaseEnv::effects`] turns `outbound_hosts` (and the databases) into
/// what the run may reach.
#[derive(Debug, Default)]
pub struct CaseEnv {
    pub settings: RunSettings,
    /// `host:port` of every HTTP fixture: allowed outbound for the run.
    pub outbound_hosts: Vec<String>,
    /// `sqlite://…` URL of the `db` fixture's fresh database.
    pub app_database: Option<String>,
    /// `sqlite://…` URL per connector token.
    pub connectors: BTreeMap<String, String>,
}

impl CaseEnv {
    /// What a run of the case may reach: outbound HTTP under the default
    /// policy with the mock servers' `host:port`s allowlisted.
    pub fn effects(&self) -> Result<avap_runtime::Effects, String> {
        use avap_hostfns::effects::http::{Outbound, OutboundConfig};
        let outbound = Outbound::new(&OutboundConfig {
            allow: self.outbound_hosts.clone(),
            ..OutboundConfig::default()
        })
        .map_err(|e| e.to_string())?;
        // The fixture databases: the `db` one is the application database,
        // each `connector` one a named connection.
        let db = if self.app_database.is_some() || !self.connectors.is_empty() {
            let dbs = avap_hostfns::effects::db::Databases::new(
                self.app_database.as_deref(),
                self.connectors.clone(),
                avap_hostfns::effects::db::DbLimits::default(),
            )
            .map_err(|e| e.to_string())?;
            Some(Arc::new(dbs))
        } else {
            None
        };
        Ok(avap_runtime::Effects {
            http: Some(Arc::new(outbound)),
            db,
            ..avap_runtime::Effects::default()
        })
    }

    /// A one-line description for case details; empty without fixtures.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.outbound_hosts.is_empty() {
            parts.push(format!("mock HTTP at {}", self.outbound_hosts.join(", ")));
        }
        if self.app_database.is_some() {
            parts.push("a fresh application database".to_string());
        }
        if !self.connectors.is_empty() {
            let tokens: Vec<&str> = self.connectors.keys().map(String::as_str).collect();
            parts.push(format!("connector databases for {}", tokens.join(", ")));
        }
        parts.join("; ")
    }
}

/// Fixtures that are up for one case; [`Active::finish`] tears them down.
#[derive(Debug)]
pub struct Active {
    pub env: CaseEnv,
    mock: Option<Arc<MockShared>>,
    servers: Vec<MockServer>,
    databases: Vec<TempDb>,
}

/// What the fixtures saw during the run.
#[derive(Debug, Default)]
pub struct Finished {
    /// Reasons the case fails (an `expect_json_body` not met).
    pub problems: Vec<String>,
    /// Information for the detail (unmatched upstream requests).
    pub notes: Vec<String>,
}

/// Build everything `fixtures` asks for. `mock_rt` runs the mock servers,
/// apart from the runtime that runs the scripts.
pub async fn setup(fixtures: &Fixtures, mock_rt: &tokio::runtime::Handle) -> Result<Active, SetupError> {
    if let Some(kind) = fixtures.unknown.keys().next() {
        return Err(SetupError::Fail(format!(
            "unknown fixture kind `{kind}` (this runner knows http, db, connector, clock, tz)"
        )));
    }
    let mut env = CaseEnv {
        settings: settings(fixtures).map_err(SetupError::Fail)?,
        ..CaseEnv::default()
    };
    let mut active = Active {
        env: CaseEnv::default(),
        mock: None,
        servers: Vec::new(),
        databases: Vec::new(),
    };

    if let Some(tables) = &fixtures.db {
        let db = create_database(tables)
            .await
            .map_err(|e| SetupError::Fail(format!("db fixture: {e}")))?;
        env.app_database = Some(db.url.clone());
        active.databases.push(db);
    }
    for (token, tables) in fixtures.connector.iter().flatten() {
        let db = create_database(tables)
            .await
            .map_err(|e| SetupError::Fail(format!("connector fixture `{token}`: {e}")))?;
        env.connectors.insert(token.clone(), db.url.clone());
        active.databases.push(db);
    }
    if let Some(http) = fixtures.http.as_deref().filter(|h| !h.is_empty()) {
        let routes = http
            .iter()
            .enumerate()
            .map(|(i, f)| Route::new(i, f))
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(MockShared {
            routes,
            hits: Mutex::new(Vec::new()),
        });
        let mut hosts: Vec<(String, u16)> = Vec::new();
        for r in &shared.routes {
            if !hosts.contains(&(r.host.clone(), r.port)) {
                hosts.push((r.host.clone(), r.port));
            }
        }
        env.outbound_hosts = hosts.iter().map(|(h, p)| authority(h, *p)).collect();
        active.mock = Some(Arc::clone(&shared));
        for (host, port) in &hosts {
            let servers = start_servers(host, *port, &shared, mock_rt).await?;
            active.servers.extend(servers);
        }
    }
    active.env = env;
    Ok(active)
}

impl Active {
    /// Stop the mock servers, delete the databases, and report what the
    /// mock server saw.
    pub async fn finish(self) -> Finished {
        for mut server in self.servers {
            if let Some(tx) = server.shutdown.take() {
                let _ = tx.send(());
            }
            let abort = server.task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), server.task).await.is_err() {
                abort.abort();
            }
        }
        drop(self.databases);
        let mut done = Finished::default();
        if let Some(mock) = self.mock {
            let hits = std::mem::take(&mut *mock.hits.lock().unwrap_or_else(PoisonError::into_inner));
            mock.check(&hits, &mut done);
        }
        done
    }
}

/// Run settings from `clock` and `tz`: generous CLI limits.
pub fn settings(fixtures: &Fixtures) -> Result<RunSettings, String> {
    let time_zone = match fixtures.tz.as_deref() {
        None => None,
        Some(name) => Some(
            name.parse::<avap_hostfns::zone::Zone>()
                .map_err(|e| format!("tz fixture: {e}"))?,
        ),
    };
    let now = match fixtures.clock.as_deref() {
        None | Some("any") => None,
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| format!("clock fixture: expected \"any\" or an RFC 3339 time, got {text:?} ({e})"))?
                .with_timezone(&chrono::Utc),
        ),
    };
    Ok(RunSettings {
        limits: Limits::CLI,
        time_zone,
        now,
    })
}

// ---------------------------------------------------------------------------
// Mock HTTP server

#[derive(Debug)]
struct Route {
    label: String,
    method: String,
    host: String,
    port: u16,
    path: String,
    query: Vec<(String, String)>,
    status: StatusCode,
    body: Vec<u8>,
    headers: Vec<(HeaderName, HeaderValue)>,
    expect_json_body: Option<Value>,
}

impl Route {
    fn new(index: usize, f: &HttpFixture) -> Result<Route, SetupError> {
        let label = format!(
            "http fixture #{} ({} {})",
            index + 1,
            f.method.to_ascii_uppercase(),
            f.url
        );
        let fail = |why: String| SetupError::Fail(format!("{label}: {why}"));
        let uri: Uri = f.url.parse().map_err(|e| fail(format!("invalid url: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(SetupError::Skip(format!(
                    "{label}: the mock server speaks plain HTTP; this runner has no TLS mock for https URLs"
                )));
            }
            _ => return Err(fail("the url must start with http://".to_string())),
        }
        let host = uri.host().ok_or_else(|| fail("the url has no host".to_string()))?;
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        let status = StatusCode::from_u16(f.status).map_err(|_| fail(format!("invalid status {}", f.status)))?;
        let (body, content_type) = match (&f.json, &f.text) {
            (Some(json), _) => (json.to_string().into_bytes(), "application/json"),
            (None, Some(text)) => (text.clone().into_bytes(), "text/plain; charset=utf-8"),
            (None, None) => (Vec::new(), "text/plain; charset=utf-8"),
        };
        let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static(content_type))];
        for (name, value) in f.headers.iter().flatten() {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let name = HeaderName::try_from(name.as_str()).map_err(|e| fail(format!("header `{name}`: {e}")))?;
            let value = HeaderValue::try_from(text).map_err(|e| fail(format!("header `{name}`: {e}")))?;
            headers.retain(|(n, _)| *n != name);
            headers.push((name, value));
        }
        let path = uri.path();
        Ok(Route {
            label,
            method: f.method.to_ascii_uppercase(),
            port: uri.port_u16().unwrap_or(80),
            host,
            path: percent_decode(if path.is_empty() { "/" } else { path }, false),
            query: query_set(uri.query().unwrap_or("")),
            status,
            body,
            headers,
            expect_json_body: f.expect_json_body.clone(),
        })
    }

    fn matches(&self, method: &str, port: u16, host: Option<&str>, path: &str, query: &[(String, String)]) -> bool {
        self.method == method
            && self.port == port
            && host.is_none_or(|h| h == self.host)
            && self.path == path
            && self.query == query
    }
}

/// One request the mock server received.
#[derive(Debug)]
struct Hit {
    route: Option<usize>,
    method: String,
    target: String,
    body: Bytes,
}

#[derive(Debug)]
struct MockShared {
    routes: Vec<Route>,
    hits: Mutex<Vec<Hit>>,
}

impl MockShared {
    fn check(&self, hits: &[Hit], done: &mut Finished) {
        for (i, route) in self.routes.iter().enumerate() {
            let Some(want) = &route.expect_json_body else { continue };
            let got: Vec<&Hit> = hits.iter().filter(|h| h.route == Some(i)).collect();
            if got.is_empty() {
                done.problems.push(format!(
                    "{}: expected a request with JSON body {}, none arrived",
                    route.label,
                    show(want)
                ));
            }
            for hit in got {
                match serde_json::from_slice::<Value>(&hit.body) {
                    Ok(body) if json_eq(&body, want) => {}
                    Ok(body) => done.problems.push(format!(
                        "{}: expected JSON body {}, got {}",
                        route.label,
                        show(want),
                        show(&body)
                    )),
                    Err(_) => done.problems.push(format!(
                        "{}: expected JSON body {}, got a body that is not JSON: {:?}",
                        route.label,
                        show(want),
                        String::from_utf8_lossy(&hit.body).chars().take(200).collect::<String>()
                    )),
                }
            }
        }
        let unmatched: Vec<String> = hits
            .iter()
            .filter(|h| h.route.is_none())
            .map(|h| format!("{} {}", h.method, h.target))
            .collect();
        if !unmatched.is_empty() {
            done.notes.push(format!(
                "the mock server answered 404 to requests no fixture matches: {}",
                unmatched.join(", ")
            ));
        }
    }
}

#[derive(Debug, Clone)]
struct ServerState {
    shared: Arc<MockShared>,
    port: u16,
}

#[derive(Debug)]
struct MockServer {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Bind every local address `host:port` resolves to and serve the routes
/// there. A port something else listens on skips the case.
async fn start_servers(
    host: &str,
    port: u16,
    shared: &Arc<MockShared>,
    mock_rt: &tokio::runtime::Handle,
) -> Result<Vec<MockServer>, SetupError> {
    let where_ = authority(host, port);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| {
            SetupError::Skip(format!(
                "cannot serve the http fixture host {where_}: cannot resolve it ({e})"
            ))
        })?
        .fold(Vec::new(), |mut v, a| {
            if !v.contains(&a) {
                v.push(a);
            }
            v
        });
    let mut servers = Vec::new();
    let mut errors = Vec::new();
    for addr in addrs {
        let bound = mock_rt
            .spawn(async move { tokio::net::TcpListener::bind(addr).await })
            .await;
        let listener = match bound {
            Ok(Ok(listener)) => listener,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(SetupError::Skip(format!(
                    "cannot serve the http fixture host {where_}: {addr} is already in use (something else is listening there)"
                )));
            }
            Ok(Err(e)) => {
                errors.push(format!("{addr}: {e}"));
                continue;
            }
            Err(e) => {
                errors.push(format!("{addr}: {e}"));
                continue;
            }
        };
        let state = ServerState {
            shared: Arc::clone(shared),
            port,
        };
        let app = Router::new().fallback(serve_fixture).with_state(state);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = mock_rt.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        servers.push(MockServer {
            shutdown: Some(tx),
            task,
        });
    }
    if servers.is_empty() {
        let why = if errors.is_empty() {
            "it resolves to no address".to_string()
        } else {
            errors.join("; ")
        };
        return Err(SetupError::Skip(format!(
            "cannot serve the http fixture host {where_} locally: {why}"
        )));
    }
    Ok(servers)
}

async fn serve_fixture(
    State(state): State<ServerState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).map(host_of);
    let path = percent_decode(uri.path(), false);
    let query = query_set(uri.query().unwrap_or(""));
    let method = method.as_str().to_ascii_uppercase();
    let route = state
        .shared
        .routes
        .iter()
        .position(|r| r.matches(&method, state.port, host.as_deref(), &path, &query));
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.to_string(), ToString::to_string);
    state
        .shared
        .hits
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Hit {
            route,
            method: method.clone(),
            target: target.clone(),
            body,
        });
    let Some(route) = route.map(|i| &state.shared.routes[i]) else {
        let error = serde_json::json!({"error": format!("no conformance fixture matches {method} {target}")});
        return response(
            StatusCode::NOT_FOUND,
            &[(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            error.to_string().into_bytes(),
        );
    };
    response(route.status, &route.headers, route.body.clone())
}

fn response(status: StatusCode, headers: &[(HeaderName, HeaderValue)], body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    for (name, value) in headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    resp
}

/// The host of a `Host` header value, without port or brackets, lower case.
fn host_of(value: &str) -> String {
    let host = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        value.rsplit_once(':').map_or(value, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

/// `%XX` decoding (and `+` → space in query strings); bad escapes stay.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters as a sorted list of decoded pairs: compared as a set.
fn query_set(query: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect();
    pairs.sort();
    pairs
}

// ---------------------------------------------------------------------------
// Databases

/// Column types of fixture tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    Integer,
    Real,
    Boolean,
    Text,
}

impl SqlType {
    pub fn as_str(self) -> &'static str {
        match self {
            SqlType::Integer => "INTEGER",
            SqlType::Real => "REAL",
            SqlType::Boolean => "BOOLEAN",
            SqlType::Text => "TEXT",
        }
    }

    /// The type a JSON value asks for; `None` for `null`. Integers beyond
    /// `i64` are stored as REAL; lists and objects as their JSON text.
    fn of(v: &Value) -> Option<SqlType> {
        match v {
            Value::Null => None,
            Value::Bool(_) => Some(SqlType::Boolean),
            Value::Number(n) if n.is_i64() => Some(SqlType::Integer),
            Value::Number(_) => Some(SqlType::Real),
            Value::String(_) | Value::Array(_) | Value::Object(_) => Some(SqlType::Text),
        }
    }

    /// One column holding values of both types: floats make integers and
    /// booleans REAL, integers make booleans INTEGER, other mixes are TEXT.
    fn join(self, other: SqlType) -> SqlType {
        use SqlType::{Boolean, Integer, Real, Text};
        match (self, other) {
            (a, b) if a == b => a,
            (Integer | Boolean, Real) | (Real, Integer | Boolean) => Real,
            (Integer, Boolean) | (Boolean, Integer) => Integer,
            _ => Text,
        }
    }
}

/// Table and column names: letters, digits and underscores only.
pub fn check_identifier(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!(
            "invalid identifier {name:?} (use letters, digits and underscores)"
        ))
    }
}

/// Columns of a fixture table, in first-seen order, typed from the values;
/// a column holding only nulls is TEXT.
pub fn column_types(rows: &[Map<String, Value>]) -> Result<Vec<(String, SqlType)>, String> {
    let mut columns: Vec<(String, Option<SqlType>)> = Vec::new();
    for row in rows {
        for (key, value) in row {
            check_identifier(key)?;
            let ty = SqlType::of(value);
            match columns.iter_mut().find(|(k, _)| k == key) {
                Some((_, seen)) => {
                    *seen = match (*seen, ty) {
                        (Some(a), Some(b)) => Some(a.join(b)),
                        (a, b) => a.or(b),
                    };
                }
                None => columns.push((key.clone(), ty)),
            }
        }
    }
    Ok(columns
        .into_iter()
        .map(|(k, t)| (k, t.unwrap_or(SqlType::Text)))
        .collect())
}

/// `CREATE TABLE` for a fixture table; an empty table gets an `id INTEGER
/// PRIMARY KEY` column.
pub fn create_table_sql(table: &str, columns: &[(String, SqlType)]) -> Result<String, String> {
    check_identifier(table)?;
    if columns.is_empty() {
        return Ok(format!("CREATE TABLE \"{table}\" (\"id\" INTEGER PRIMARY KEY)"));
    }
    let cols: Vec<String> = columns
        .iter()
        .map(|(name, ty)| format!("\"{name}\" {}", ty.as_str()))
        .collect();
    Ok(format!("CREATE TABLE \"{table}\" ({})", cols.join(", ")))
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// A fixture database file, deleted on drop.
#[derive(Debug)]
pub struct TempDb {
    pub path: PathBuf,
    pub url: String,
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A fresh `SQLite` database holding exactly `tables`, rows in order.
pub async fn create_database(tables: &Tables) -> Result<TempDb, String> {
    let n = DATABASES.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("avap-conformance-{}-{n}.sqlite", std::process::id()));
    let db = TempDb {
        url: format!("sqlite://{}", path.display()),
        path,
    };
    drop(TempDb {
        path: db.path.clone(),
        url: String::new(),
    }); // a stale file from an earlier run
    let options = SqliteConnectOptions::new().filename(&db.path).create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| format!("{}: {e}", db.path.display()))?;
    let filled = fill(&mut conn, tables).await;
    let closed = conn.close().await;
    filled?;
    closed.map_err(|e| e.to_string())?;
    Ok(db)
}

async fn fill(conn: &mut SqliteConnection, tables: &Tables) -> Result<(), String> {
    let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
    for (table, rows) in tables {
        let columns = column_types(rows).map_err(|e| format!("table `{table}`: {e}"))?;
        let create = create_table_sql(table, &columns)?;
        sqlx::query(&create)
            .execute(&mut *tx)
            .await
            .map_err(|e| format!("{create}: {e}"))?;
        let insert = if columns.is_empty() {
            format!("INSERT INTO \"{table}\" DEFAULT VALUES")
        } else {
            let names: Vec<String> = columns.iter().map(|(c, _)| format!("\"{c}\"")).collect();
            let marks = vec!["?"; columns.len()].join(", ");
            format!("INSERT INTO \"{table}\" ({}) VALUES ({marks})", names.join(", "))
        };
        for (i, row) in rows.iter().enumerate() {
            let mut query = sqlx::query(&insert);
            for (column, _) in &columns {
                query = match row.get(column).unwrap_or(&Value::Null) {
                    Value::Null => query.bind(None::<String>),
                    Value::Bool(b) => query.bind(*b),
                    Value::Number(n) => match n.as_i64() {
                        Some(i) => query.bind(i),
                        None => query.bind(n.as_f64().unwrap_or(f64::NAN)),
                    },
                    Value::String(s) => query.bind(s.clone()),
                    other => query.bind(other.to_string()),
                };
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(|e| format!("table `{table}` row {}: {e}", i + 1))?;
        }
    }
    tx.commit().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sqlx::Row;

    fn rows(v: &Value) -> Vec<Map<String, Value>> {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[test]
    fn table_typing() {
        let cols = column_types(&rows(&json!([
            {"id": 1, "price": 1.5, "active": true, "name": "a", "note": null, "mixed": 1},
            {"id": 2, "price": 2, "active": false, "name": "b", "note": null, "mixed": 2.5, "late": "x"}
        ])))
        .unwrap();
        let got: Vec<(&str, &str)> = cols.iter().map(|(c, t)| (c.as_str(), t.as_str())).collect();
        assert_eq!(
            got,
            [
                ("id", "INTEGER"),
                ("price", "REAL"),
                ("active", "BOOLEAN"),
                ("name", "TEXT"),
                ("note", "TEXT"),
                ("mixed", "REAL"),
                ("late", "TEXT")
            ]
        );
        assert_eq!(
            create_table_sql("t", &cols[..2]).unwrap(),
            "CREATE TABLE \"t\" (\"id\" INTEGER, \"price\" REAL)"
        );
        assert_eq!(
            create_table_sql("empty", &[]).unwrap(),
            "CREATE TABLE \"empty\" (\"id\" INTEGER PRIMARY KEY)"
        );
    }

    #[test]
    fn identifiers_are_validated() {
        assert!(check_identifier("user_2").is_ok());
        for bad in ["", "a b", "x\"; DROP", "näme", "a-b"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
        assert!(column_types(&rows(&json!([{"bad col": 1}]))).is_err());
        assert!(create_table_sql("t;", &[]).is_err());
    }

    #[test]
    fn clock_and_tz() {
        let f: Fixtures = serde_json::from_value(json!({"clock": "any", "tz": "Europe/Madrid"})).unwrap();
        let s = settings(&f).unwrap();
        assert_eq!(
            s.time_zone.map(|z| z.name().to_owned()).as_deref(),
            Some("Europe/Madrid")
        );
        assert_eq!(s.now, None);
        assert_eq!(s.limits, Limits::CLI);
        let f: Fixtures = serde_json::from_value(json!({"clock": "2025-01-31T10:00:00Z"})).unwrap();
        assert_eq!(
            settings(&f).unwrap().now.unwrap().to_rfc3339(),
            "2025-01-31T10:00:00+00:00"
        );
        let f: Fixtures = serde_json::from_value(json!({"tz": "Mars/Olympus"})).unwrap();
        assert!(settings(&f).unwrap_err().contains("Mars/Olympus"));
        assert_eq!(settings(&Fixtures::default()).unwrap().time_zone, None);
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("/a%20b+c", false), "/a b+c");
        assert_eq!(percent_decode("a%2", true), "a%2");
        assert_eq!(percent_decode("%zz+", true), "%zz ");
        assert_eq!(
            query_set("b=2&a=1&a=%31"),
            [
                ("a".into(), "1".into()),
                ("a".into(), "1".into()),
                ("b".into(), "2".into())
            ]
        );
        assert_eq!(
            query_set("x&y="),
            [("x".into(), String::new()), ("y".into(), String::new())]
        );
        assert_eq!(host_of("127.0.0.1:8081"), "127.0.0.1");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("LocalHost"), "localhost");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_fixture_round_trip() {
        let tables: Tables = serde_json::from_value(json!({
            "users": [{"id": 7, "email": "a@b", "active": true, "score": 1.5, "tag": null},
                      {"id": 8, "email": "c@d", "active": false, "score": 2, "tag": null}],
            "empty": []
        }))
        .unwrap();
        let db = create_database(&tables).await.unwrap();
        assert!(db.url.starts_with("sqlite://") && db.path.exists());
        let options = SqliteConnectOptions::new().filename(&db.path);
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        let rows = sqlx::query(
            "SELECT id, email, typeof(active) AS t, active, score FROM users WHERE active = true ORDER BY rowid",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<i64, _>("id"), 7);
        assert_eq!(rows[0].get::<String, _>("email"), "a@b");
        assert_eq!(rows[0].get::<String, _>("t"), "integer");
        assert_eq!(rows[0].get::<i64, _>("active"), 1);
        let score: f64 = sqlx::query("SELECT score FROM users WHERE id = 8")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert!((score - 2.0).abs() < f64::EPSILON);
        let cols: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info('empty')")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(cols, ["id"]);
        conn.close().await.unwrap();
        let path = db.path.clone();
        drop(db);
        assert!(!path.exists());
    }

    fn raw_request(addr: SocketAddr, request: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn mock_server_routes_records_and_checks() {
        let mock_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Find a free port, then release it for the fixture.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let fixtures: Fixtures = serde_json::from_value(json!({"http": [
            {"method": "GET", "url": format!("http://127.0.0.1:{port}/items?b=2&a=1"), "status": 200,
             "json": {"ok": true}, "headers": {"X-Mock": "yes"}},
            {"method": "POST", "url": format!("http://127.0.0.1:{port}/send"), "status": 201,
             "text": "made", "expect_json_body": {"n": 1}}
        ]}))
        .unwrap();
        let active = rt.block_on(setup(&fixtures, mock_rt.handle())).unwrap();
        assert_eq!(active.env.outbound_hosts, [format!("127.0.0.1:{port}")]);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let host = format!("Host: 127.0.0.1:{port}\r\nConnection: close\r\n");

        let got = raw_request(addr, &format!("GET /items?a=1&b=2 HTTP/1.1\r\n{host}\r\n"));
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.to_ascii_lowercase().contains("x-mock: yes"), "{got}");
        assert!(
            got.to_ascii_lowercase().contains("content-type: application/json"),
            "{got}"
        );
        assert!(got.ends_with("{\"ok\":true}"), "{got}");

        let got = raw_request(addr, &format!("GET /items?a=1 HTTP/1.1\r\n{host}\r\n"));
        assert!(got.starts_with("HTTP/1.1 404"), "{got}");

        let body = "{\"n\": 2}";
        let got = raw_request(
            addr,
            &format!(
                "POST /send HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(got.starts_with("HTTP/1.1 201") && got.ends_with("made"), "{got}");

        let done = rt.block_on(active.finish());
        assert_eq!(done.problems.len(), 1, "{:?}", done.problems);
        assert!(
            done.problems[0].contains("expected JSON body {\"n\":1}, got {\"n\":2}"),
            "{:?}",
            done.problems
        );
        assert_eq!(done.notes.len(), 1);
        assert!(done.notes[0].contains("GET /items?a=1"), "{:?}", done.notes);

        // The port is free again after the case.
        std::net::TcpListener::bind(addr).unwrap();

        // Taken port → skip.
        let _taken = std::net::TcpListener::bind(addr).unwrap();
        match rt.block_on(setup(&fixtures, mock_rt.handle())) {
            Err(SetupError::Skip(why)) => assert!(why.contains("already in use"), "{why}"),
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    #[test]
    fn bad_fixtures_fail() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let f: Fixtures = serde_json::from_value(json!({"redis": {}})).unwrap();
        match rt.block_on(setup(&f, rt.handle())) {
            Err(SetupError::Fail(why)) => assert!(why.contains("unknown fixture kind `redis`"), "{why}"),
            other => panic!("{other:?}"),
        }
        let f: Fixtures = serde_json::from_value(json!({"http": [{"url": "ftp://x/y"}]})).unwrap();
        assert!(matches!(rt.block_on(setup(&f, rt.handle())), Err(SetupError::Fail(_))));
        let f: Fixtures = serde_json::from_value(json!({"db": {"bad name": []}})).unwrap();
        assert!(matches!(rt.block_on(setup(&f, rt.handle())), Err(SetupError::Fail(_))));
    }
}
