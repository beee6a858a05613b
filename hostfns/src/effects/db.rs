//! The database commands (spec §9): `ormDirect`, `ormCheckTable`,
//! `ormAccessSelect`, `ormAccessInsert`, `ormAccessUpdate`, `avapConnector`
//! and the connector method `conn.query(sql)`.
//!
//! [`Databases`] holds the deployment's application database (`SQLite` by
//! default, `PostgreSQL` when its URL says `postgres://`) and the named
//! connections `avapConnector(token)` opens. Pools connect lazily on first
//! use, so building a [`Databases`] needs no runtime and no reachable server.
//!
//! ## Safety rules
//! * **Values are bound parameters, never SQL text.** A backtick template
//!   given to `ormDirect` or as a `whereSelector` arrives from the compiler
//!   as its pieces ([`SQL_TEMPLATE_KEY`]); every `${var}` becomes a
//!   placeholder (`?` on `SQLite`, `$n` on `PostgreSQL`) bound to the
//!   variable's value. A placeholder written inside a quoted SQL string
//!   (`'${name}'`, `'%${q}%'`) binds the value's text in place of that string
//!   literal piece; one inside a double-quoted identifier is refused.
//!   Insert/update values are always bound.
//! * **Identifiers** (table and field names) must match
//!   `[A-Za-z_][A-Za-z0-9_]*` (a table may be `schema.table`); they are
//!   double-quoted in the generated SQL. Anything else is a `DatabaseError`.
//! * **Limits**: at most [`DbLimits::max_rows`] rows per result (more is a
//!   `DatabaseError`, not a silent truncation), each statement bounded by
//!   [`DbLimits::statement_timeout`] (client-side timer; on `PostgreSQL` also
//!   `SET LOCAL statement_timeout`, so the server cancels it).
//! * **Read-only mode** ([`DbLimits::read_only`]): `SQLite` databases are
//!   opened read-only (`SQLITE_OPEN_READONLY` plus `PRAGMA query_only`);
//!   on `PostgreSQL` every statement runs in a transaction started with
//!   `SET TRANSACTION READ ONLY`. The SQL text is never parsed for this.
//! * On `SQLite`, every connection is opened with `SQLITE_LIMIT_ATTACHED`
//!   0, so the engine itself refuses `ATTACH` and `VACUUM INTO` (which
//!   open or write other files on the server) whatever the SQL text looks
//!   like; SQL that visibly uses `ATTACH`, `DETACH` or `VACUUM` is refused
//!   earlier with a plainer message. Strings and blobs are capped at
//!   [`DbLimits::max_result_bytes`] (`SQLITE_LIMIT_LENGTH`).
//! * Results are capped at [`DbLimits::max_result_bytes`], counted while
//!   rows are read. A statement's deadline interrupts `SQLite` on its own
//!   thread (progress handler), so the connection comes back.
//! * A pooled connection is reset when released: `DISCARD ALL` on
//!   `PostgreSQL` (closed if that fails); on `SQLite` its temporary tables,
//!   views and triggers are dropped (closed if it is still inside a
//!   transaction). Nothing a script leaves in a session reaches another run.
//! * Several runs may share one application-database transaction
//!   ([`Databases::in_transaction`], see [`transaction`]): every rule above
//!   still holds per statement.
//!
//! ## Values
//! Rows become dicts (column name → value, in column order): integers →
//! int, reals → float, text → str, `NULL` → `None`, booleans → bool,
//! blobs/`bytea` → **standard base64 text**, `PostgreSQL` `numeric` → float
//! (int when it has no fraction), timestamps/dates/times → ISO 8601 text,
//! `json`/`jsonb` → the decoded value, `uuid` → its hyphenated text.
//!
//! ## Results
//! `ormDirect`: a statement that returns columns → list of row dicts;
//! otherwise the string `"Success: <rows affected>"` (reference
//! behaviour, evidence/COMMANDS.md §26). `ormAccessSelect` / `conn.query` →
//! list of row dicts. `ormAccessInsert` / `ormAccessUpdate` → the
//! affected-row count (int). `ormCheckTable` → `"True"` / `"False"`.
//! Every database failure raises a catchable `DatabaseError` naming the
//! command and the database (the spec keeps the stored `{"error": …}` value
//! only for `RequestPost`).
//!
//! ## Messages carry no secrets
//! A message names a database by its role and system, never its URL or
//! token: `application database (sqlite)`, `connector #2 (postgresql at
//! db.internal:5432)` (connectors numbered in token order, as
//! `--print-config` lists them). An unknown token is not echoed. What the
//! database server says passes [`Databases::secrets`] (every token, URL,
//! password and file path configured here) on its way out (`effects::call`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Column as _, Executor as _, Row as _, Statement as _, TypeInfo as _, ValueRef as _};
use tokio::sync::OnceCell;

use super::EffectOutcome;
use super::breaker::{BreakerConfig, Breakers, Keys};
use crate::error::{ErrorKind, HostError};
use crate::redact::Secrets;
use crate::value::{Dict, Value};
pub use transaction::{Transaction, TransactionOutcome};

pub use crate::abi::{CONNECTOR_KEY, METHOD_CALL_KEY, SQL_TEMPLATE_KEY};

mod transaction;

/// Limits that apply to every database statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbLimits {
    /// Refuse writes (see the module docs for how).
    pub read_only: bool,
    /// Largest number of rows a result may hold.
    pub max_rows: usize,
    /// Longest a statement may run.
    pub statement_timeout: Duration,
    /// Largest total size (bytes of text, blobs and per-value overhead, as
    /// counted while rows are read) a result may have; also the longest
    /// string or blob `SQLite` may build (`SQLITE_LIMIT_LENGTH`).
    pub max_result_bytes: usize,
    /// A circuit breaker and a bulkhead per configured database (the
    /// `db_breaker_*` and `db_max_concurrent_statements` keys): statements
    /// that fail to reach the database (no connection, a broken one, the
    /// statement timeout) or are slow open its circuit; errors the
    /// database reports about the SQL itself do not.
    pub breaker: BreakerConfig,
    /// A statement that takes this long is logged (its fingerprint: the
    /// SQL with every literal replaced, never its parameters) and counted;
    /// `None`: no slow-statement log.
    pub slow_statement: Option<Duration>,
}

impl Default for DbLimits {
    fn default() -> Self {
        DbLimits {
            read_only: false,
            max_rows: 10_000,
            statement_timeout: Duration::from_secs(5),
            max_result_bytes: 16 << 20,
            breaker: BreakerConfig {
                // Statements are cut at `statement_timeout`, which counts as
                // a failure: slowness alone does not trip by default.
                slow_ms: 0,
                max_concurrent: 16,
                ..BreakerConfig::default()
            },
            slow_statement: Some(Duration::from_secs(1)),
        }
    }
}

/// A database URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("database URL `{url}` ({what}): {why}; use `sqlite://PATH`, a file path, or `postgres://USER@HOST:PORT/DB`")]
pub struct DbConfigError {
    /// `application database` or `connector #N`.
    pub what: String,
    /// The URL without its password ([`crate::redact::url`]).
    pub url: String,
    pub why: String,
}

/// The application database and the named connector connections.
#[derive(Debug)]
pub struct Databases {
    /// Circuit breakers and bulkheads, by connection label.
    breakers: Option<Arc<Breakers>>,
    /// Statements over [`DbLimits::slow_statement`] so far.
    slow_statements: Arc<std::sync::atomic::AtomicU64>,
    app: Option<Arc<Conn>>,
    connectors: Arc<BTreeMap<String, Conn>>,
    limits: DbLimits,
    /// When set, every application-database statement runs inside this
    /// transaction instead of on a connection of its own.
    transaction: Option<Arc<Transaction>>,
    /// The tokens and URLs above (with their passwords and file paths).
    secrets: Arc<Secrets>,
    /// Told how long each statement waited for a connection (set once,
    /// by whoever keeps the metrics).
    acquire_observer: Arc<ObserverSlot>,
}

/// Where the [`AcquireObserver`] goes once it is set.
#[derive(Default)]
struct ObserverSlot(std::sync::OnceLock<AcquireObserver>);

impl std::fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "ObserverSlot(set)"
        } else {
            "ObserverSlot(empty)"
        })
    }
}

/// Told, for each statement, which database (its label) it waited on for
/// a connection and how long (the metrics' acquire-time histogram).
pub type AcquireObserver = Arc<dyn Fn(&str, Duration) + Send + Sync>;

#[derive(Debug)]
enum Target {
    Sqlite(SqliteConnectOptions),
    Postgres(PgConnectOptions),
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// One database's pool as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Its label: role and system, never its URL.
    pub database: String,
    pub open: u32,
    pub idle: usize,
    pub max: u32,
    pub waiting: usize,
}

/// Debug shows the label only: connection options may hold a password.
struct Conn {
    /// What the connection is, for messages: its role and database system
    /// (and host), never its URL or token.
    label: String,
    target: Target,
    pool: OnceCell<Pool>,
    /// Statements waiting for a connection of the pool now.
    waiting: Waiters,
}

impl Databases {
    /// Configure the application database (`app_url`; `None` = no
    /// application database) and the connectors (token → URL). Nothing
    /// connects until a command uses it. The application database is created
    /// when it is a missing `SQLite` file (unless read-only); connector
    /// databases must exist. Connectors are numbered in token order
    /// (`connector #1`, …): messages name them so.
    pub fn new(
        app_url: Option<&str>,
        connectors: impl IntoIterator<Item = (String, String)>,
        limits: DbLimits,
    ) -> Result<Databases, DbConfigError> {
        let mut secrets = Secrets::default();
        let app = app_url
            .map(|url| {
                secrets.add_url(url);
                Conn::new(url, "application database", !limits.read_only, &limits).map(Arc::new)
            })
            .transpose()?;
        let urls: BTreeMap<String, String> = connectors.into_iter().collect();
        let mut map = BTreeMap::new();
        for (n, (token, url)) in urls.into_iter().enumerate() {
            secrets.add(&token);
            secrets.add_url(&url);
            let conn = Conn::new(&url, &format!("connector #{}", n + 1), false, &limits)?;
            map.insert(token, conn);
        }
        Ok(Databases {
            breakers: Breakers::named(limits.breaker, Keys::DATABASE),
            slow_statements: Arc::default(),
            app,
            connectors: Arc::new(map),
            limits,
            transaction: None,
            secrets: Arc::new(secrets),
            acquire_observer: Arc::default(),
        })
    }

    /// Tell `observer` how long each statement waits for a connection from
    /// now on; only the first call counts.
    pub fn set_acquire_observer(&self, observer: AcquireObserver) {
        let _ = self.acquire_observer.0.set(observer);
    }

    /// Every token, URL, password and database file configured here: what
    /// no message may show.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The same databases, except that every application-database statement
    /// runs on one connection inside one transaction (begun at the first
    /// statement), shared by every run given the returned handle's
    /// databases; [`Transaction::finish`] commits or rolls it back, and
    /// dropping it unfinished rolls back. Connectors stay outside it.
    pub fn in_transaction(&self) -> (Databases, Arc<Transaction>) {
        let transaction = Arc::new(Transaction::new(self.limits.clone(), Arc::clone(&self.secrets)));
        let databases = Databases {
            breakers: self.breakers.clone(),
            slow_statements: Arc::clone(&self.slow_statements),
            app: self.app.clone(),
            connectors: Arc::clone(&self.connectors),
            limits: self.limits.clone(),
            transaction: Some(Arc::clone(&transaction)),
            secrets: Arc::clone(&self.secrets),
            acquire_observer: Arc::clone(&self.acquire_observer),
        };
        (databases, transaction)
    }

    /// The shared transaction `conn`'s statements run in, if any (only the
    /// application database's).
    fn transaction_for(&self, conn: &Conn) -> Option<&Transaction> {
        let is_app = self.app.as_deref().is_some_and(|app| std::ptr::eq(app, conn));
        self.transaction.as_deref().filter(|_| is_app)
    }

    /// The breakers and bulkheads, when configured (for the metrics).
    pub fn breakers(&self) -> Option<&Breakers> {
        self.breakers.as_deref()
    }

    /// Statements that took [`DbLimits::slow_statement`] or longer so far.
    pub fn slow_statements(&self) -> u64 {
        self.slow_statements.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Each configured database whose pool is open: its label (role and
    /// system, never its URL), connections open, idle, the pool's most, and
    /// statements waiting for a connection.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.app
            .as_deref()
            .into_iter()
            .chain(self.connectors.values())
            .filter_map(|conn| {
                let (size, idle, max) = match conn.pool.get()? {
                    Pool::Sqlite(p) => (p.size(), p.num_idle(), p.options().get_max_connections()),
                    Pool::Postgres(p) => (p.size(), p.num_idle(), p.options().get_max_connections()),
                };
                Some(PoolStats {
                    database: conn.label.clone(),
                    open: size,
                    idle,
                    max,
                    waiting: conn.waiting.now(),
                })
            })
            .collect()
    }

    /// The limits every statement runs under.
    pub fn limits(&self) -> &DbLimits {
        &self.limits
    }

    /// Whether `token` names a configured connector.
    pub fn has_connector(&self, token: &str) -> bool {
        self.connectors.contains_key(token)
    }

    fn app(&self, command: &str) -> Result<&Conn, HostError> {
        self.app.as_deref().ok_or_else(|| {
            HostError::script(
                ErrorKind::CapabilityDenied,
                format!(
                    "{command}: no application database is configured \
                     (set `app_database_url` in the server config, or `avap run --db URL`)"
                ),
            )
        })
    }

    fn connector(&self, token: &str, command: &str) -> Result<&Conn, HostError> {
        // The token is not echoed: it is a credential, and one close to a
        // configured token would show that token.
        self.connectors.get(token).ok_or_else(|| {
            HostError::script(
                ErrorKind::DatabaseError,
                format!(
                    "{command}: no connector is configured for this token \
                     (add it under [connectors] in the server config, or `avap run --connector TOKEN=URL`)"
                ),
            )
        })
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Conn {
    fn new(url: &str, what: &str, create: bool, limits: &DbLimits) -> Result<Conn, DbConfigError> {
        let bad = |why: String| DbConfigError {
            what: what.to_owned(),
            url: crate::redact::url(url),
            why,
        };
        let lower = url.to_ascii_lowercase();
        let target = if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(|e| bad(e.to_string()))?;
            Target::Postgres(opts)
        } else {
            let opts = if lower.starts_with("sqlite:") {
                SqliteConnectOptions::from_str(url).map_err(|e| bad(e.to_string()))?
            } else if url.contains("://") {
                return Err(bad("unsupported scheme".to_owned()));
            } else if url.is_empty() {
                return Err(bad("empty".to_owned()));
            } else {
                SqliteConnectOptions::new().filename(Path::new(url))
            };
            let mut opts = opts
                .create_if_missing(create && !limits.read_only)
                .busy_timeout(limits.statement_timeout);
            if limits.read_only {
                opts = opts.read_only(true).pragma("query_only", "ON");
            }
            Target::Sqlite(opts)
        };
        let system = match &target {
            Target::Sqlite(_) => "sqlite".to_owned(),
            Target::Postgres(opts) => format!("postgresql at {}:{}", opts.get_host(), opts.get_port()),
        };
        Ok(Conn {
            label: format!("{what} ({system})"),
            target,
            pool: OnceCell::new(),
            waiting: Waiters::default(),
        })
    }

    async fn pool(&self, limits: &DbLimits) -> Result<Pool, String> {
        // The host call's span (runtime `effects.rs`) names the database
        // system: never the URL, which may hold a password or a token.
        let system = match &self.target {
            Target::Sqlite(_) => "sqlite",
            Target::Postgres(_) => "postgresql",
        };
        tracing::Span::current().record("db.system", system);
        let pool = self
            .pool
            .get_or_try_init(|| async {
                // Getting a connection gives up a tenth before the statement's
                // own timeout: a database that refuses connections (sqlx
                // retries those until this deadline) is then always reported
                // as unreachable, never as a statement that ran too long, which
                // the two equal deadlines decided by a race under load.
                let acquire = (limits.statement_timeout * 9 / 10).max(Duration::from_millis(100));
                Ok::<Pool, String>(match &self.target {
                    Target::Sqlite(opts) => {
                        // `sqlite::memory:` is named `file:sqlx-in-memory-N`: one
                        // connection that never idles out, or the data goes.
                        let name = opts.get_filename().to_string_lossy();
                        let memory =
                            name.is_empty() || name.contains(":memory:") || name.starts_with("file:sqlx-in-memory-");
                        let max_len = limits.max_result_bytes;
                        Pool::Sqlite(
                            SqlitePoolOptions::new()
                                .after_connect(move |conn, _| {
                                    Box::pin(async move {
                                        let mut handle = conn.lock_handle().await?;
                                        restrict_sqlite(handle.as_raw_handle(), max_len);
                                        Ok(())
                                    })
                                })
                                .after_release(|conn, _| Box::pin(async move { Ok(sqlite_reset(conn).await) }))
                                .max_connections(if memory { 1 } else { 8 })
                                .min_connections(0)
                                .idle_timeout(if memory { None } else { Some(Duration::from_mins(5)) })
                                .max_lifetime(if memory { None } else { Some(Duration::from_mins(30)) })
                                .acquire_timeout(acquire)
                                .connect_lazy_with(opts.clone()),
                        )
                    }
                    Target::Postgres(opts) => Pool::Postgres(
                        PgPoolOptions::new()
                            // Session state a script left behind (temp
                            // tables, SET, prepared statements, advisory
                            // locks, LISTEN) never reaches another run; a
                            // connection that cannot be reset is closed.
                            .after_release(|conn, _| {
                                Box::pin(async move { Ok(conn.execute("DISCARD ALL").await.is_ok()) })
                            })
                            .max_connections(8)
                            .min_connections(0)
                            .idle_timeout(Some(Duration::from_mins(5)))
                            .acquire_timeout(acquire)
                            // No statement cache: a cached statement keeps the
                            // parameter types of its first use, and a later
                            // call may bind other types to the same text.
                            .connect_lazy_with(opts.clone().statement_cache_capacity(0)),
                    ),
                })
            })
            .await?;
        Ok(pool.clone())
    }
}

/// Engine-level limits on a new `SQLite` connection: no `ATTACH` (so no
/// `ATTACH DATABASE` of another file, nor `VACUUM INTO`, whatever the SQL
/// text looks like) and no string or blob longer than `max_len` bytes.
#[allow(unsafe_code)]
fn restrict_sqlite(db: std::ptr::NonNull<libsqlite3_sys::sqlite3>, max_len: usize) {
    let max_len = i32::try_from(max_len).unwrap_or(i32::MAX).max(1);
    // SAFETY: `db` is the live handle of a connection whose worker lock the
    // caller holds (`LockedSqliteHandle`), so no other thread uses it;
    // `sqlite3_limit` only sets a per-connection limit and takes any
    // category/value (it clamps to the compile-time maxima).
    unsafe {
        libsqlite3_sys::sqlite3_limit(db.as_ptr(), libsqlite3_sys::SQLITE_LIMIT_ATTACHED, 0);
        libsqlite3_sys::sqlite3_limit(db.as_ptr(), libsqlite3_sys::SQLITE_LIMIT_LENGTH, max_len);
    }
}

/// Whether an `SQLite` connection is inside a transaction (not in autocommit mode).
#[allow(unsafe_code)]
fn sqlite_in_transaction(db: std::ptr::NonNull<libsqlite3_sys::sqlite3>) -> bool {
    // SAFETY: as in `restrict_sqlite`: the live handle, its worker lock held;
    // `sqlite3_get_autocommit` only reads a flag.
    unsafe { libsqlite3_sys::sqlite3_get_autocommit(db.as_ptr()) == 0 }
}

/// A released `SQLite` connection: remove the statement deadline and drop
/// the temporary objects a script created. `false` (close the connection)
/// when that fails.
async fn sqlite_reset(conn: &mut sqlx::SqliteConnection) -> bool {
    match conn.lock_handle().await {
        Ok(mut h) => {
            h.remove_progress_handler();
            if sqlite_in_transaction(h.as_raw_handle()) {
                // A shared transaction whose rollback did not happen: never
                // hand its uncommitted writes to another run.
                return false;
            }
        }
        Err(_) => return false,
    }
    let temp: Vec<(String, String)> =
        match sqlx::query_as("SELECT type, name FROM sqlite_temp_master WHERE type IN ('table', 'view', 'trigger')")
            .fetch_all(&mut *conn)
            .await
        {
            Ok(t) => t,
            Err(_) => return false,
        };
    for (kind, name) in temp {
        let kind = match kind.as_str() {
            "table" => "TABLE",
            "view" => "VIEW",
            _ => "TRIGGER",
        };
        let sql = format!("DROP {kind} IF EXISTS temp.\"{}\"", name.replace('"', "\"\""));
        if conn.execute(sql.as_str()).await.is_err() {
            return false;
        }
    }
    true
}

// ---------------------------------------------------------------------------
// Commands

/// Run database command `name` with the values of its non-target parameters.
pub async fn call(name: &str, _form: usize, args: Vec<Value>, db: &Databases) -> Result<EffectOutcome, HostError> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::None);
    let v = match name {
        "ormDirect" => {
            let sql = arg(0);
            if let Some(call) = method_call(&sql) {
                return method(call, db).await.map(EffectOutcome::Value);
            }
            let conn = db.app(name)?;
            let stmt = statement_text(name, &sql)?;
            run(name, conn, db, Want::Auto, stmt).await?
        }
        "ormCheckTable" => check_table(name, db.app(name)?, db, &arg(0)).await?,
        "ormAccessSelect" => {
            let conn = db.app(name)?;
            let fields = fields(name, &arg(0))?;
            let table = table(name, &arg(1))?;
            let mut q = Sql::default();
            q.text("SELECT ");
            if fields.is_empty() {
                q.text("*");
            } else {
                q.text(&fields.iter().map(|f| quote(f)).collect::<Vec<_>>().join(", "));
            }
            q.text(" FROM ");
            q.text(&table);
            where_clause(name, &mut q, &arg(2))?;
            run(name, conn, db, Want::Rows, q).await?
        }
        "ormAccessInsert" => {
            let conn = db.app(name)?;
            let table = table(name, &arg(1))?;
            let pairs = assignments(name, &arg(0), &arg(2))?;
            let mut q = Sql::default();
            q.text("INSERT INTO ");
            q.text(&table);
            if pairs.is_empty() {
                q.text(" DEFAULT VALUES");
            } else {
                q.text(" (");
                q.text(&pairs.iter().map(|(f, _)| quote(f)).collect::<Vec<_>>().join(", "));
                q.text(") VALUES (");
                for (i, (_, v)) in pairs.into_iter().enumerate() {
                    if i > 0 {
                        q.text(", ");
                    }
                    q.bind(Bind::of(v));
                }
                q.text(")");
            }
            run(name, conn, db, Want::Count, q).await?
        }
        "ormAccessUpdate" => {
            let conn = db.app(name)?;
            let table = table(name, &arg(1))?;
            let pairs = assignments(name, &arg(0), &arg(2))?;
            if pairs.is_empty() {
                return Err(db_error(name, "no fields to update (give `fields` and `values`)"));
            }
            let mut q = Sql::default();
            q.text("UPDATE ");
            q.text(&table);
            q.text(" SET ");
            for (i, (f, v)) in pairs.into_iter().enumerate() {
                if i > 0 {
                    q.text(", ");
                }
                q.text(&quote(&f));
                q.text(" = ");
                q.bind(Bind::of(v));
            }
            where_clause(name, &mut q, &arg(3))?;
            run(name, conn, db, Want::Count, q).await?
        }
        "avapConnector" => {
            let token = match arg(0) {
                Value::Str(s) => s,
                other => {
                    return Err(HostError::script(
                        ErrorKind::TypeError,
                        format!("avapConnector: the token must be a string, not {}", other.type_name()),
                    ));
                }
            };
            db.connector(&token, name)?;
            let mut d = Dict::new();
            d.insert(CONNECTOR_KEY.to_owned(), Value::Str(token));
            Value::dict(d)
        }
        other => {
            return Err(HostError::script(
                ErrorKind::NotAvailable,
                format!("{other} is not a database command"),
            ));
        }
    };
    Ok(EffectOutcome::Value(v))
}

/// `{METHOD_CALL_KEY: [object, name, args…]}`, as the compiler passes a
/// method call.
fn method_call(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Dict(d) if d.len() == 1 => match d.get(METHOD_CALL_KEY) {
            Some(Value::List(items)) => Some(items),
            _ => None,
        },
        _ => None,
    }
}

/// `object.name(args…)`: only `conn.query(sql)` on a connector exists.
async fn method(call: &[Value], db: &Databases) -> Result<Value, HostError> {
    let (object, name, args) = match call {
        [object, Value::Str(name), args @ ..] => (object, name.as_str(), args),
        _ => return Err(HostError::script(ErrorKind::TypeError, "malformed method call")),
    };
    let token = match object {
        Value::Dict(d) if d.len() == 1 => match d.get(CONNECTOR_KEY) {
            Some(Value::Str(t)) => Some(t.as_str()),
            _ => None,
        },
        _ => None,
    };
    let Some(token) = token else {
        return Err(HostError::script(
            ErrorKind::TypeError,
            format!(
                "'{}' object has no method '{name}' (only connectors from avapConnector() have methods: conn.query(sql))",
                object.type_name()
            ),
        ));
    };
    if name != "query" {
        return Err(HostError::script(
            ErrorKind::TypeError,
            format!("connector has no method '{name}' (database connectors have `query(sql)`)"),
        ));
    }
    let [sql] = args else {
        return Err(HostError::script(
            ErrorKind::TypeError,
            format!("query() takes exactly one argument (the SQL), {} given", args.len()),
        ));
    };
    let what = "query";
    let conn = db.connector(token, what)?;
    let stmt = statement_text(what, sql)?;
    run(what, conn, db, Want::Rows, stmt).await
}

fn db_error(command: &str, message: impl std::fmt::Display) -> HostError {
    HostError::script(ErrorKind::DatabaseError, format!("{command}: {message}"))
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn quote(ident: &str) -> String {
    format!("\"{ident}\"")
}

/// A table name (`t` or `schema.t`), validated and quoted.
fn table(command: &str, v: &Value) -> Result<String, HostError> {
    let name = crate::ops::template_text(v);
    let name = name.trim();
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
        return Err(db_error(
            command,
            format!("invalid table name {name:?} (letters, digits and `_`, optionally `schema.table`)"),
        ));
    }
    Ok(parts.iter().map(|p| quote(p)).collect::<Vec<_>>().join("."))
}

/// `fields`: a comma list (`'id,name'`), a list of names, or empty / `*`
/// (all columns; empty result).
fn fields(command: &str, v: &Value) -> Result<Vec<String>, HostError> {
    let names: Vec<String> = match v {
        Value::None => Vec::new(),
        Value::List(items) => items.iter().map(crate::ops::template_text).collect(),
        other => crate::ops::template_text(other).split(',').map(str::to_owned).collect(),
    };
    let names: Vec<String> = names
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    if names.len() == 1 && names[0] == "*" {
        return Ok(Vec::new());
    }
    for n in &names {
        if !is_identifier(n) {
            return Err(db_error(
                command,
                format!("invalid field name {n:?} (letters, digits and `_` only)"),
            ));
        }
    }
    Ok(names)
}

/// Field → value pairs of an insert or update: `values` a list (matched to
/// `fields` by position) or a dict (by name; all its keys when `fields` is
/// empty).
fn assignments(command: &str, fields_v: &Value, values: &Value) -> Result<Vec<(String, Value)>, HostError> {
    let names = fields(command, fields_v)?;
    match values {
        Value::Dict(d) => {
            if names.is_empty() {
                for k in d.keys() {
                    if !is_identifier(k) {
                        return Err(db_error(command, format!("invalid field name {k:?}")));
                    }
                }
                return Ok(d.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
            }
            names
                .into_iter()
                .map(|n| {
                    let v = d.get(&n).cloned().ok_or_else(|| {
                        HostError::script(
                            ErrorKind::KeyError,
                            format!("{command}: the values dict has no key '{n}'"),
                        )
                    })?;
                    Ok((n, v))
                })
                .collect()
        }
        Value::List(items) => {
            if items.len() != names.len() {
                return Err(db_error(
                    command,
                    format!("{} field(s) but {} value(s)", names.len(), items.len()),
                ));
            }
            Ok(names.into_iter().zip(items.iter().cloned()).collect())
        }
        Value::Str(s) if names.len() > 1 => {
            // A JSON list or object given as text.
            match serde_json::from_str::<serde_json::Value>(s) {
                Ok(j @ (serde_json::Value::Array(_) | serde_json::Value::Object(_))) => {
                    assignments(command, fields_v, &Value::from_json(&j))
                }
                _ => Err(db_error(
                    command,
                    format!("values must be a list or a dict for {} fields", names.len()),
                )),
            }
        }
        single if names.len() == 1 => Ok(vec![(names[0].clone(), single.clone())]),
        other => Err(db_error(
            command,
            format!("values must be a list or a dict, not {}", other.type_name()),
        )),
    }
}

/// ` WHERE (…)` from a selector (text, or a template with bound values);
/// nothing for an empty one.
fn where_clause(command: &str, q: &mut Sql, selector: &Value) -> Result<(), HostError> {
    let cond = statement_text(command, selector)?;
    if cond.is_blank() {
        return Ok(());
    }
    // Not parenthesised: selectors may go on with `ORDER BY` / `LIMIT`.
    q.text(" WHERE ");
    q.append(cond);
    Ok(())
}

/// SQL text of a value: a template dict becomes text with bound values;
/// anything else its text.
fn statement_text(command: &str, v: &Value) -> Result<Sql, HostError> {
    let mut q = Sql::default();
    let parts = match v {
        Value::Dict(d) if d.len() == 1 => match d.get(SQL_TEMPLATE_KEY) {
            Some(Value::List(parts)) => Some(parts),
            _ => None,
        },
        _ => None,
    };
    let Some(parts) = parts else {
        q.text(&crate::ops::template_text(v));
        return Ok(q);
    };
    // Where the scanner is in the SQL text, to know what a placeholder is
    // inside of.
    let mut state = Quote::None;
    let mut skip_quote = false;
    for (i, part) in parts.iter().enumerate() {
        if i % 2 == 0 {
            let text = crate::ops::template_text(part);
            let mut rest = text.as_str();
            if std::mem::take(&mut skip_quote) {
                // `'${x}'`: the closing quote went with the value.
                rest = rest.strip_prefix('\'').unwrap_or(rest);
                state = Quote::None;
            }
            state = scan(rest, state);
            q.text(rest);
            continue;
        }
        match state {
            Quote::None => q.bind(Bind::of(part.clone())),
            Quote::Single => {
                let text = Bind::Untyped(crate::ops::template_text(part));
                let next_closes = parts
                    .get(i + 1)
                    .is_some_and(|n| crate::ops::template_text(n).starts_with('\''));
                if next_closes && q.strip_open_quote() {
                    // The whole literal is the value: bind it in its place.
                    q.bind(text);
                    skip_quote = true;
                } else {
                    // Close the literal, concatenate the value's text, reopen.
                    q.text("' || ");
                    q.bind(text);
                    q.text(" || '");
                }
            }
            Quote::Double => {
                return Err(db_error(
                    command,
                    "a template value inside a double-quoted identifier; identifiers cannot be bound — use a literal name",
                ));
            }
        }
    }
    Ok(q)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// The quoting state after `text`, starting in `state` (`''` and `""`
/// escapes toggle twice and so cancel out).
fn scan(text: &str, mut state: Quote) -> Quote {
    for c in text.chars() {
        state = match (state, c) {
            (Quote::None, '\'') => Quote::Single,
            (Quote::None, '"') => Quote::Double,
            (Quote::Single, '\'') | (Quote::Double, '"') => Quote::None,
            (s, _) => s,
        };
    }
    state
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
enum Bind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// Text whose SQL type the server infers from the context on
    /// `PostgreSQL` (like a quoted literal); plain text on `SQLite`.
    Untyped(String),
}

impl Bind {
    fn of(v: Value) -> Bind {
        match v {
            Value::None => Bind::Null,
            Value::Bool(b) => Bind::Bool(b),
            Value::Int(i) => Bind::Int(i),
            Value::Float(f) => Bind::Float(f),
            // Strings: the server decides (`id = ${x}` with x = "7" works
            // on an integer column, as the spliced text did).
            Value::Str(s) => Bind::Untyped(s),
            other @ (Value::List(_) | Value::Dict(_)) => Bind::Text(other.to_json().to_string()),
        }
    }
}

/// A statement being built: text pieces and bound values, rendered per
/// dialect.
#[derive(Debug, Default, Clone)]
struct Sql {
    pieces: Vec<Piece>,
    binds: Vec<Bind>,
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Param,
}

impl Sql {
    fn text(&mut self, s: &str) {
        if !s.is_empty() {
            self.pieces.push(Piece::Text(s.to_owned()));
        }
    }

    fn bind(&mut self, b: Bind) {
        self.pieces.push(Piece::Param);
        self.binds.push(b);
    }

    fn append(&mut self, other: Sql) {
        self.pieces.extend(other.pieces);
        self.binds.extend(other.binds);
    }

    fn is_blank(&self) -> bool {
        self.binds.is_empty()
            && self
                .pieces
                .iter()
                .all(|p| matches!(p, Piece::Text(t) if t.trim().is_empty()))
    }

    /// If the text so far ends with an opening `'` (a literal that starts
    /// right at the placeholder), remove it and say so.
    fn strip_open_quote(&mut self) -> bool {
        if let Some(Piece::Text(t)) = self.pieces.last_mut()
            && t.ends_with('\'')
        {
            t.pop();
            return true;
        }
        false
    }

    fn render(&self, dialect: Dialect) -> String {
        let mut out = String::new();
        let mut n = 0;
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Param => {
                    n += 1;
                    match dialect {
                        Dialect::Sqlite => out.push('?'),
                        Dialect::Postgres => {
                            let _ = write!(out, "${n}");
                        }
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Rows if the statement has result columns, else `"Success: n"`.
    Auto,
    Rows,
    /// The affected-row count.
    Count,
}

/// Whether the SQL uses `ATTACH`, `DETACH` or `VACUUM` (which open or
/// write other files on `SQLite`) anywhere outside quotes and comments —
/// every statement of a multi-statement text counts.
fn attaches(sql: &str) -> bool {
    uses_keyword(sql, &["ATTACH", "DETACH", "VACUUM"])
}

/// Whether one of `words` (upper case) occurs as a word of the SQL outside
/// quotes and comments.
fn uses_keyword(sql: &str, words: &[&str]) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            i = sql[i..].find('\n').map_or(b.len(), |n| i + n);
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = sql[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
        } else if matches!(c, b'\'' | b'"' | b'`' | b'[') {
            let close = if c == b'[' { b']' } else { c };
            i += 1;
            while i < b.len() && b[i] != close {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            let word = sql[start..i].to_ascii_uppercase();
            if words.contains(&word.as_str()) {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

async fn run(command: &str, conn: &Conn, db: &Databases, want: Want, q: Sql) -> Result<Value, HostError> {
    // The database's breaker and bulkhead (see `breaker`): a database that
    // is down or slow is refused at once instead of holding run slots.
    let permit = match &db.breakers {
        Some(breakers) => Some(
            breakers
                .admit(&conn.label)
                .map_err(|refusal| db_error(command, refusal))?,
        ),
        None => None,
    };
    let started = Instant::now();
    let sql = db.limits.slow_statement.map(|_| q.render(Dialect::Postgres));
    let (result, unreachable) = statement(command, conn, db, want, q).await;
    if let Some(permit) = permit {
        permit.finish(unreachable);
    }
    let took = started.elapsed();
    if let (Some(slow), Some(sql)) = (db.limits.slow_statement, sql)
        && took >= slow
    {
        let fingerprint = fingerprint(&sql);
        db.slow_statements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            command,
            database = conn.label.as_str(),
            ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            statement = fingerprint.as_str(),
            "slow statement"
        );
    }
    result
}

/// What a slow-statement log line shows of a statement: its SQL with every
/// literal (quoted text, numbers) replaced by `?` and runs of blanks made
/// one space, at most 300 bytes — the shape of the statement, never the
/// values in it (bound parameters are never part of the SQL anyway).
pub fn fingerprint(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len().min(300));
    let mut chars = sql.chars().peekable();
    let mut previous_word = false;
    while let Some(c) = chars.next() {
        if out.len() >= 300 {
            out.push('…');
            break;
        }
        match c {
            '\'' => {
                // A quoted literal ('' escapes a quote inside it).
                while let Some(n) = chars.next() {
                    if n == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
                out.push('?');
                previous_word = false;
            }
            c if c.is_ascii_digit() && !previous_word => {
                while chars.peek().is_some_and(|n| n.is_ascii_alphanumeric() || *n == '.') {
                    chars.next();
                }
                out.push('?');
                previous_word = false;
            }
            c if c.is_whitespace() => {
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                out.push(' ');
                previous_word = false;
            }
            c => {
                out.push(c);
                previous_word = c.is_alphanumeric() || c == '_' || c == '$';
            }
        }
    }
    out.trim().to_owned()
}

/// One statement under the statement timeout; whether it failed to reach
/// the database (what the breaker counts).
async fn statement(command: &str, conn: &Conn, db: &Databases, want: Want, q: Sql) -> (Result<Value, HostError>, bool) {
    let limits = &db.limits;
    let pool = match conn.pool(limits).await {
        Ok(pool) => pool,
        Err(e) => return (Err(db_error(command, format!("{}: {e}", conn.label))), true),
    };
    let started = Instant::now();
    let work = async {
        match (&pool, db.transaction_for(conn)) {
            (pool, Some(transaction)) => transaction.run(pool, want, &q).await,
            (Pool::Sqlite(p), None) => {
                refuse_attach(&q)?;
                let c = acquiring(conn, db.acquire_observer.0.get(), p.acquire()).await?;
                run_sqlite(c, want, &q, limits).await
            }
            (Pool::Postgres(p), None) => {
                let tx = acquiring(conn, db.acquire_observer.0.get(), p.begin()).await?;
                run_postgres(tx, want, &q, limits).await
            }
        }
    };
    match tokio::time::timeout(limits.statement_timeout, work).await {
        Ok(Ok(v)) => (Ok(v), false),
        Ok(Err(Failure::Unreachable(e))) => (Err(db_error(command, format!("{e}, on {}", conn.label))), true),
        Ok(Err(Failure::Db(e))) if !(e.contains("interrupt") && started.elapsed() >= limits.statement_timeout) => {
            (Err(db_error(command, format!("{e}, on {}", conn.label))), false)
        }
        Ok(Err(Failure::Script(e))) => (Err(e.with_prefix(command)), false),
        // The client-side timer, or the progress handler that interrupted
        // an `SQLite` statement at its deadline.
        Ok(Err(Failure::Db(_))) | Err(_) => (
            Err(HostError::script(
                ErrorKind::TimeoutError,
                format!(
                    "{command}: the statement ran longer than {} ms on {}; make it cheaper or raise `db_statement_timeout_ms`",
                    limits.statement_timeout.as_millis(),
                    conn.label
                ),
            )),
            true,
        ),
    }
}

enum Failure {
    /// The database reported an error about the statement.
    Db(String),
    /// The database could not be reached or the connection broke (the
    /// breaker counts these).
    Unreachable(String),
    Script(ScriptFailure),
}

struct ScriptFailure {
    kind: ErrorKind,
    message: String,
}

impl ScriptFailure {
    fn with_prefix(self, command: &str) -> HostError {
        HostError::script(self.kind, format!("{command}: {}", self.message))
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) => Failure::Db(d.message().to_owned()),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Failure::Unreachable(e.to_string()),
            other => Failure::Db(other.to_string()),
        }
    }
}

fn too_many_rows(limits: &DbLimits) -> Failure {
    Failure::Script(ScriptFailure {
        kind: ErrorKind::DatabaseError,
        message: format!(
            "the result has more than {} rows (the `db_max_rows` limit); add a WHERE or LIMIT",
            limits.max_rows
        ),
    })
}

fn too_large(limits: &DbLimits) -> Failure {
    Failure::Script(ScriptFailure {
        kind: ErrorKind::DatabaseError,
        message: format!(
            "the result is larger than {} KiB (the `db_max_result_kb` limit); select fewer rows or columns",
            limits.max_result_bytes / 1024
        ),
    })
}

/// Adds each row to `out`, refusing more than `max_rows` rows or
/// `max_result_bytes` bytes as they arrive.
struct Collect<'a> {
    out: Vec<Value>,
    bytes: usize,
    limits: &'a DbLimits,
}

impl<'a> Collect<'a> {
    fn new(limits: &'a DbLimits) -> Self {
        Collect {
            out: Vec::new(),
            bytes: 0,
            limits,
        }
    }

    fn room(&self) -> Result<(), Failure> {
        if self.out.len() >= self.limits.max_rows {
            return Err(too_many_rows(self.limits));
        }
        Ok(())
    }

    fn push(&mut self, row: Value) -> Result<(), Failure> {
        self.bytes = self.bytes.saturating_add(row.heap_bytes());
        if self.bytes > self.limits.max_result_bytes {
            return Err(too_large(self.limits));
        }
        self.out.push(row);
        Ok(())
    }
}

fn refuse_attach(q: &Sql) -> Result<(), Failure> {
    let text = q.render(Dialect::Sqlite);
    if attaches(&text) {
        return Err(Failure::Script(ScriptFailure {
            kind: ErrorKind::DatabaseError,
            message: "ATTACH, DETACH and VACUUM are not allowed (they open or write other database files)".to_owned(),
        }));
    }
    Ok(())
}

async fn next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

/// Callers waiting for a connection of one pool now (the registry's in the
/// server uses it too).
#[derive(Debug, Default)]
pub struct Waiters(std::sync::atomic::AtomicUsize);

impl Waiters {
    /// Await `acquire` (a pool's acquire or begin), counted among the
    /// waiters while it waits (a cancelled wait too); how long it took.
    pub async fn wait<T>(&self, acquire: impl Future<Output = T>) -> (T, Duration) {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let waiting = Waiting(&self.0);
        let started = Instant::now();
        let acquired = acquire.await;
        drop(waiting);
        (acquired, started.elapsed())
    }

    /// How many wait now.
    pub fn now(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Wait for a connection of `conn`'s pool (`acquire`), counted among its
/// waiters, the wait told to `observer`.
async fn acquiring<T>(conn: &Conn, observer: Option<&AcquireObserver>, acquire: impl Future<Output = T>) -> T {
    let (acquired, waited) = conn.waiting.wait(acquire).await;
    if let Some(observe) = observer {
        observe(&conn.label, waited);
    }
    acquired
}

async fn run_sqlite(
    mut c: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    want: Want,
    q: &Sql,
    limits: &DbLimits,
) -> Result<Value, Failure> {
    sqlite_statement(&mut c, want, q, limits).await
}

/// One statement on an `SQLite` connection, under its deadline.
/// Sets its flag when dropped: when the statement's future is dropped, or
/// when it finishes (the progress handler is removed before the connection
/// runs anything else).
struct StopWhenDropped(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopWhenDropped {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn sqlite_statement(
    c: &mut sqlx::SqliteConnection,
    want: Want,
    q: &Sql,
    limits: &DbLimits,
) -> Result<Value, Failure> {
    let sql = q.render(Dialect::Sqlite);
    // Interrupt the statement at its deadline on the worker thread itself
    // (a timer alone would leave it running and the connection busy). The
    // pool's `after_release` removes the handler (a shared transaction
    // removes it after each statement).
    let deadline = Instant::now() + limits.statement_timeout;
    // A run that stops waiting (a `go_async` block cancelled at the end of
    // its run, a request dropped) drops this future: the guard then stops
    // the statement too, instead of leaving it running on the worker.
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop_when_dropped = StopWhenDropped(Arc::clone(&dropped));
    c.lock_handle().await?.set_progress_handler(1000, move || {
        Instant::now() < deadline && !dropped.load(std::sync::atomic::Ordering::Relaxed)
    });
    let rows = match want {
        Want::Rows => true,
        Want::Count => false,
        Want::Auto => !(&mut *c).prepare(sql.as_str()).await?.columns().is_empty(),
    };
    let mut query = sqlx::query::<sqlx::Sqlite>(&sql);
    for b in &q.binds {
        query = match b {
            Bind::Null => query.bind(None::<String>),
            Bind::Bool(v) => query.bind(*v),
            Bind::Int(v) => query.bind(*v),
            Bind::Float(v) => query.bind(*v),
            Bind::Text(v) | Bind::Untyped(v) => query.bind(v.clone()),
        };
    }
    if !rows {
        let done = query.execute(&mut *c).await?;
        return Ok(count_value(want, done.rows_affected()));
    }
    let mut out = Collect::new(limits);
    let mut stream = query.fetch(&mut *c);
    while let Some(row) = next(&mut stream).await {
        out.room()?;
        out.push(sqlite_row(&row?)?)?;
    }
    Ok(Value::list(out.out))
}

fn count_value(want: Want, n: u64) -> Value {
    match want {
        Want::Auto => Value::Str(format!("Success: {n}")),
        _ => Value::Int(i64::try_from(n).unwrap_or(i64::MAX)),
    }
}

fn sqlite_row(row: &SqliteRow) -> Result<Value, Failure> {
    let mut d = Dict::new();
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        let v = if raw.is_null() {
            Value::None
        } else {
            let declared = col.type_info().name().to_ascii_uppercase();
            let storage = raw.type_info().name().to_ascii_uppercase();
            match storage.as_str() {
                "INTEGER" | "BOOLEAN" | "INT" | "INT8" | "BIGINT" => {
                    let n: i64 = row.try_get(i)?;
                    if declared == "BOOLEAN" || declared == "BOOL" {
                        Value::Bool(n != 0)
                    } else {
                        Value::Int(n)
                    }
                }
                "REAL" | "FLOAT" | "DOUBLE" | "NUMERIC" => Value::Float(row.try_get(i)?),
                "BLOB" => {
                    let b: Vec<u8> = row.try_get(i)?;
                    Value::Str(base64::engine::general_purpose::STANDARD.encode(b))
                }
                _ => Value::Str(row.try_get(i)?),
            }
        };
        d.insert(col.name().to_owned(), v);
    }
    Ok(Value::dict(d))
}

/// Text bound with no declared type: `PostgreSQL` infers it from the
/// context, as for a quoted literal.
struct Untyped<'a>(&'a str);

impl sqlx::Type<sqlx::Postgres> for Untyped<'_> {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
    fn compatible(_: &PgTypeInfo) -> bool {
        true
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for Untyped<'_> {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.0, buf)
    }
}

async fn run_postgres(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    want: Want,
    q: &Sql,
    limits: &DbLimits,
) -> Result<Value, Failure> {
    if limits.read_only {
        tx.execute("SET TRANSACTION READ ONLY").await?;
    }
    tx.execute(pg_statement_timeout(limits).as_str()).await?;
    let value = pg_statement(&mut tx, want, q, limits).await?;
    tx.commit().await?;
    Ok(value)
}

/// `SET LOCAL statement_timeout`: the server cancels a statement at its
/// deadline (until the end of the current transaction).
fn pg_statement_timeout(limits: &DbLimits) -> String {
    let ms = limits.statement_timeout.as_millis().max(1);
    format!("SET LOCAL statement_timeout = {ms}")
}

/// One statement on a `PostgreSQL` connection inside a transaction whose
/// `statement_timeout` is set.
async fn pg_statement(tx: &mut sqlx::PgConnection, want: Want, q: &Sql, limits: &DbLimits) -> Result<Value, Failure> {
    let sql = q.render(Dialect::Postgres);
    let rows = match want {
        Want::Rows => true,
        Want::Count => false,
        Want::Auto => !(&mut *tx).prepare(sql.as_str()).await?.columns().is_empty(),
    };
    // Text values take the type the server infers for their placeholder
    // (as a quoted literal would): ask it, then convert.
    let inferred: Vec<String> = if q.binds.iter().any(|b| matches!(b, Bind::Untyped(_))) {
        // Described under another text, so the statement cache never holds
        // the server-inferred parameter types for `sql`.
        let probe = format!("{sql}\n-- avap: describe");
        match (&mut *tx).describe(probe.as_str()).await?.parameters() {
            Some(sqlx::Either::Left(types)) => types.iter().map(|t| t.name().to_ascii_uppercase()).collect(),
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    // Not persistent: the same text may come back with other value types.
    let mut query = sqlx::query::<sqlx::Postgres>(&sql).persistent(false);
    for (i, b) in q.binds.iter().enumerate() {
        query = match b {
            Bind::Null => query.bind(Option::<Untyped<'_>>::None),
            Bind::Bool(v) => query.bind(*v),
            Bind::Int(v) => query.bind(*v),
            Bind::Float(v) => query.bind(*v),
            Bind::Text(v) => query.bind(v.as_str()),
            Bind::Untyped(v) => {
                let ty = inferred.get(i).map_or("TEXT", String::as_str);
                let bad = |what: &str| {
                    Failure::Script(ScriptFailure {
                        kind: ErrorKind::DatabaseError,
                        message: format!(
                            "template value {v:?} (parameter {}) is not {what} (the SQL needs {ty})",
                            i + 1
                        ),
                    })
                };
                let t = v.trim();
                match ty {
                    "INT2" | "INT4" | "INT8" | "OID" => query.bind(t.parse::<i64>().map_err(|_| bad("an integer"))?),
                    "FLOAT4" | "FLOAT8" | "NUMERIC" => query.bind(t.parse::<f64>().map_err(|_| bad("a number"))?),
                    "BOOL" => query.bind(match t.to_ascii_lowercase().as_str() {
                        "true" | "t" | "1" | "yes" | "on" => true,
                        "false" | "f" | "0" | "no" | "off" => false,
                        _ => return Err(bad("a boolean")),
                    }),
                    // Text; for other types write a cast in the SQL (`${d}::date`).
                    _ => query.bind(v.as_str()),
                }
            }
        };
    }
    let value = if rows {
        let mut out = Collect::new(limits);
        {
            let mut stream = query.fetch(&mut *tx);
            while let Some(row) = next(&mut stream).await {
                out.room()?;
                out.push(pg_row(&row?)?)?;
            }
        }
        Value::list(out.out)
    } else {
        let done = query.execute(&mut *tx).await?;
        count_value(want, done.rows_affected())
    };
    Ok(value)
}

fn pg_row(row: &PgRow) -> Result<Value, Failure> {
    let mut d = Dict::new();
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        let v = if raw.is_null() {
            Value::None
        } else {
            pg_value(row, i, &raw)?
        };
        d.insert(col.name().to_owned(), v);
    }
    Ok(Value::dict(d))
}

fn pg_value(row: &PgRow, i: usize, raw: &PgValueRef<'_>) -> Result<Value, Failure> {
    let ty = raw.type_info().name().to_ascii_uppercase();
    Ok(match ty.as_str() {
        "BOOL" => Value::Bool(row.try_get(i)?),
        "INT2" => Value::Int(i64::from(row.try_get::<i16, _>(i)?)),
        "INT4" => Value::Int(i64::from(row.try_get::<i32, _>(i)?)),
        "INT8" => Value::Int(row.try_get(i)?),
        "OID" => Value::Int(i64::from(row.try_get::<sqlx::postgres::types::Oid, _>(i)?.0)),
        "FLOAT4" => Value::Float(f64::from(row.try_get::<f32, _>(i)?)),
        "FLOAT8" => Value::Float(row.try_get(i)?),
        "NUMERIC" => numeric(raw.as_bytes().map_err(|e| Failure::Db(e.to_string()))?)?,
        "BYTEA" => {
            let b: Vec<u8> = row.try_get(i)?;
            Value::Str(base64::engine::general_purpose::STANDARD.encode(b))
        }
        "TIMESTAMPTZ" => Value::Str(row.try_get::<chrono::DateTime<chrono::Utc>, _>(i)?.to_rfc3339()),
        "TIMESTAMP" => Value::Str(
            row.try_get::<chrono::NaiveDateTime, _>(i)?
                .format("%Y-%m-%dT%H:%M:%S%.f")
                .to_string(),
        ),
        "DATE" => Value::Str(row.try_get::<chrono::NaiveDate, _>(i)?.to_string()),
        "TIME" => Value::Str(row.try_get::<chrono::NaiveTime, _>(i)?.to_string()),
        "JSON" | "JSONB" => {
            let bytes = raw.as_bytes().map_err(|e| Failure::Db(e.to_string()))?;
            let text = if ty == "JSONB" {
                bytes.get(1..).unwrap_or_default()
            } else {
                bytes
            };
            let j: serde_json::Value =
                serde_json::from_slice(text).map_err(|e| Failure::Db(format!("column {i}: bad JSON: {e}")))?;
            Value::from_json(&j)
        }
        "UUID" => {
            let b = raw.as_bytes().map_err(|e| Failure::Db(e.to_string()))?;
            let h = hex::encode(b);
            if h.len() == 32 {
                Value::Str(format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                ))
            } else {
                Value::Str(h)
            }
        }
        _ => match row.try_get::<String, _>(i) {
            Ok(s) => Value::Str(s),
            Err(_) => {
                return Err(Failure::Db(format!(
                    "column {} has type {ty}, which has no AVAP value; cast it in the SQL (e.g. `::text`)",
                    i + 1
                )));
            }
        },
    })
}

/// `PostgreSQL`'s binary `numeric`: int when it has no fraction digits and
/// fits, else float.
fn numeric(b: &[u8]) -> Result<Value, Failure> {
    let word = |k: usize| -> Result<i16, Failure> {
        b.get(k..k + 2)
            .map(|s| i16::from_be_bytes([s[0], s[1]]))
            .ok_or_else(|| Failure::Db("truncated numeric value".to_owned()))
    };
    let ndigits = usize::try_from(word(0)?).unwrap_or(0);
    let weight = i32::from(word(2)?);
    let sign = word(4)?.cast_unsigned();
    let dscale = word(6)?;
    if sign == 0xC000 {
        return Ok(Value::Float(f64::NAN));
    }
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    let mut int_part = String::new();
    let mut frac = String::new();
    for k in 0..ndigits {
        let d = word(8 + 2 * k)?;
        let pos = weight - i32::try_from(k).unwrap_or(0);
        if pos >= 0 {
            let _ = write!(int_part, "{d:04}");
        } else {
            let _ = write!(frac, "{d:04}");
        }
    }
    // Trailing zero groups of the integer part that have no digits stored.
    let stored_int = (0..ndigits)
        .filter(|k| weight - i32::try_from(*k).unwrap_or(0) >= 0)
        .count();
    let missing = usize::try_from(weight + 1).unwrap_or(0).saturating_sub(stored_int);
    for _ in 0..missing {
        int_part.push_str("0000");
    }
    // Leading zero groups of the fraction when weight < -1.
    if weight < -1 {
        frac.insert_str(0, &"0000".repeat(usize::try_from(-weight - 1).unwrap_or(0)));
    }
    let int_part = int_part.trim_start_matches('0');
    text.push_str(if int_part.is_empty() { "0" } else { int_part });
    if dscale > 0 && !frac.trim_end_matches('0').is_empty() {
        text.push('.');
        text.push_str(frac.trim_end_matches('0'));
        return text
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|e| Failure::Db(format!("numeric {text}: {e}")));
    }
    match text.parse::<i64>() {
        Ok(n) => Ok(Value::Int(n)),
        Err(_) => text
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|e| Failure::Db(format!("numeric {text}: {e}"))),
    }
}

// ---------------------------------------------------------------------------

async fn check_table(command: &str, conn: &Conn, db: &Databases, v: &Value) -> Result<Value, HostError> {
    let name = crate::ops::template_text(v);
    let name = name.trim().to_owned();
    table(command, &Value::Str(name.clone()))?;
    let (schema, table) = match name.split_once('.') {
        Some((s, t)) => (Some(s.to_owned()), t.to_owned()),
        None => (None, name),
    };
    let pool = conn
        .pool(&db.limits)
        .await
        .map_err(|e| db_error(command, format!("{}: {e}", conn.label)))?;
    let mut q = Sql::default();
    match &pool {
        Pool::Sqlite(_) => {
            let master = match &schema {
                Some(s) => format!("{}.sqlite_master", quote(s)),
                None => "sqlite_master".to_owned(),
            };
            q.text(&format!(
                "SELECT 1 AS found FROM {master} WHERE type IN ('table', 'view') AND name = "
            ));
            q.bind(Bind::Text(table));
        }
        Pool::Postgres(_) => {
            q.text("SELECT 1 AS found FROM information_schema.tables WHERE table_name = ");
            q.bind(Bind::Text(table));
            match schema {
                Some(s) => {
                    q.text(" AND table_schema = ");
                    q.bind(Bind::Text(s));
                }
                None => q.text(" AND table_schema = ANY(current_schemas(false))"),
            }
        }
    }
    let rows = run(command, conn, db, Want::Rows, q).await?;
    let found = matches!(&rows, Value::List(r) if !r.is_empty());
    Ok(Value::Str(if found { "True" } else { "False" }.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(parts: Vec<Value>) -> Value {
        let mut d = Dict::new();
        d.insert(SQL_TEMPLATE_KEY.to_owned(), Value::list(parts));
        Value::dict(d)
    }

    fn s(t: &str) -> Value {
        Value::Str(t.to_owned())
    }

    #[test]
    fn template_values_become_placeholders() {
        let q = statement_text("t", &template(vec![s("id = "), Value::Int(7), s(" AND x = 1")])).unwrap();
        assert_eq!(q.render(Dialect::Sqlite), "id = ? AND x = 1");
        assert_eq!(q.render(Dialect::Postgres), "id = $1 AND x = 1");
        assert_eq!(q.binds, vec![Bind::Int(7)]);
    }

    #[test]
    fn quoted_placeholders_bind_text() {
        let q = statement_text("t", &template(vec![s("name = '"), s("O'Brien"), s("'")])).unwrap();
        assert_eq!(q.render(Dialect::Sqlite), "name = ?");
        assert_eq!(q.binds, vec![Bind::Untyped("O'Brien".into())]);
        let q = statement_text("t", &template(vec![s("name LIKE '%"), s("x"), s("%' AND a = 'b'")])).unwrap();
        assert_eq!(q.render(Dialect::Postgres), "name LIKE '%' || $1 || '%' AND a = 'b'");
        let q = statement_text("t", &template(vec![s("n = '"), s("x"), s("%'")])).unwrap();
        assert_eq!(q.render(Dialect::Sqlite), "n = '' || ? || '%'");
        let q = statement_text("t", &template(vec![s("n = 'a"), s("x"), s("'")])).unwrap();
        assert_eq!(q.render(Dialect::Sqlite), "n = 'a' || ? || ''");
    }

    #[test]
    fn identifier_placeholders_refused() {
        let e = statement_text("t", &template(vec![s("SELECT \""), s("x"), s("\" FROM t")])).unwrap_err();
        assert!(e.to_string().contains("identifier"), "{e}");
    }

    #[test]
    fn identifiers_validated() {
        assert_eq!(table("t", &s("users")).unwrap(), "\"users\"");
        assert_eq!(table("t", &s("app.users")).unwrap(), "\"app\".\"users\"");
        for bad in ["users; DROP TABLE x", "a.b.c", "1abc", "", "us\"ers", "a b"] {
            assert!(table("t", &s(bad)).is_err(), "{bad}");
        }
        assert_eq!(fields("t", &s("id, name")).unwrap(), vec!["id", "name"]);
        assert!(fields("t", &s("*")).unwrap().is_empty());
        assert!(fields("t", &s("id, name--")).is_err());
        assert!(fields("t", &Value::list(vec![s("ok"), s("x) --")])).is_err());
    }

    #[test]
    fn attach_detected() {
        assert!(attaches("  attach database 'x' as y"));
        assert!(attaches("-- c\n/* d */ DETACH y"));
        assert!(attaches("SELECT 1; ATTACH 'x' AS y"));
        assert!(attaches("vacuum into '/tmp/x'"));
        assert!(!attaches("SELECT 'attach', \"vacuum\" FROM t -- attach"));
        assert!(!attaches("SELECT attached FROM t /* ATTACH */"));
    }

    #[test]
    fn databases_are_named_without_urls_or_tokens() {
        let dbs = Databases::new(
            Some("postgres://avap:hunter22@db.internal:6543/app"),
            [
                ("zz-token-secret".to_owned(), "sqlite:/srv/b.sqlite".to_owned()),
                ("aa-token-secret".to_owned(), "postgres://u:pw1234@pg:5432/x".to_owned()),
            ],
            DbLimits::default(),
        )
        .unwrap();
        assert_eq!(
            dbs.app.as_ref().unwrap().label,
            "application database (postgresql at db.internal:6543)"
        );
        assert_eq!(
            dbs.connectors["aa-token-secret"].label,
            "connector #1 (postgresql at pg:5432)"
        );
        assert_eq!(dbs.connectors["zz-token-secret"].label, "connector #2 (sqlite)");
        let e = dbs.connector("aa-token-secreT", "query").unwrap_err().to_string();
        assert!(!e.contains("token-secre"), "{e}");
        let hidden = dbs
            .secrets()
            .scrub("aa-token-secret zz-token-secret hunter22 pw1234 /srv/b.sqlite");
        assert!(!hidden.contains("secret") && !hidden.contains("hunter22"), "{hidden}");
        assert!(
            !hidden.contains("pw1234") && !hidden.contains("/srv/b.sqlite"),
            "{hidden}"
        );
        let bad = Databases::new(
            None,
            [("t".to_owned(), "mysql://u:pw@h/db".to_owned())],
            DbLimits::default(),
        )
        .unwrap_err();
        assert_eq!(
            (bad.what.as_str(), bad.url.as_str()),
            ("connector #1", "mysql://u:***@h/db")
        );
    }

    #[test]
    fn numeric_decoding() {
        // 12345.678: ndigits 3, weight 1, sign 0, dscale 3, digits 1 2345 6780
        let mut b = Vec::new();
        for w in [3i16, 1, 0, 3, 1, 2345, 6780] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(numeric(&b).ok(), Some(Value::Float(12345.678)));
        // 20000: ndigits 1, weight 1, digits 2
        let mut b = Vec::new();
        for w in [1i16, 1, 0, 0, 2] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(numeric(&b).ok(), Some(Value::Int(20000)));
    }
}
