//! The database commands (`ormDirect`, `ormCheckTable`, `ormAccessSelect`,
//! `ormAccessInsert`, `ormAccessUpdate`, `avapConnector` + `conn.query`) on
//! `SQLite` and on the real `PostgreSQL` of this machine
//! (`postgres://postgres@127.0.0.1:5432/test`; each test works in a fresh
//! schema it drops at the end), plus scripts run end to end with
//! `avap run --db`, and the databases' circuit breakers and bulkheads.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use avap_hostfns::Value;
use avap_hostfns::abi::{METHOD_CALL_KEY, SQL_TEMPLATE_KEY};
use avap_hostfns::effects::EffectOutcome;
use avap_hostfns::effects::breaker::BreakerConfig;
use avap_hostfns::effects::db::{Databases, DbLimits, call};
use avap_hostfns::{Dict, ErrorKind, HostError};
use sqlx::Connection as _;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("orm").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn unique() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("random");
    hex::encode(b)
}

/// One backend under test: the URL the commands use, and the schema to
/// drop afterwards (`PostgreSQL`).
struct Backend {
    name: &'static str,
    url: String,
    schema: Option<String>,
}

impl Backend {
    fn sqlite(test: &str) -> Backend {
        let path = tmp(test).join("app.sqlite");
        Backend {
            name: "sqlite",
            url: format!("sqlite://{}", path.display()),
            schema: None,
        }
    }

    async fn postgres() -> Backend {
        let schema = format!("avap_orm_{}", unique());
        let mut c = sqlx::PgConnection::connect(PG).await.expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut c)
            .await
            .expect("create schema");
        c.close().await.expect("close");
        Backend {
            name: "postgres",
            url: format!("{PG}?options=-c%20search_path%3D{schema}"),
            schema: Some(schema),
        }
    }

    async fn drop_schema(&self) {
        if let Some(schema) = &self.schema {
            let mut c = sqlx::PgConnection::connect(PG).await.expect("connect to PostgreSQL");
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut c)
                .await
                .expect("drop schema");
            c.close().await.expect("close");
        }
    }

    fn databases(&self, limits: DbLimits) -> Databases {
        Databases::new(Some(&self.url), [("TOKEN".to_owned(), self.url.clone())], limits).expect("config")
    }
}

fn s(t: &str) -> Value {
    Value::Str(t.to_owned())
}

fn template(parts: Vec<Value>) -> Value {
    let mut d = Dict::new();
    d.insert(SQL_TEMPLATE_KEY.to_owned(), Value::list(parts));
    Value::dict(d)
}

async fn ok(db: &Databases, name: &str, args: Vec<Value>) -> Value {
    match call(name, 0, args.clone(), db).await {
        Ok(EffectOutcome::Value(v)) => v,
        Err(e) => panic!("{name}({args:?}) failed: {e}"),
    }
}

async fn err(db: &Databases, name: &str, args: Vec<Value>) -> (ErrorKind, String) {
    match call(name, 0, args.clone(), db).await {
        Ok(v) => panic!("{name}({args:?}) should fail, got {v:?}"),
        Err(HostError::Script(e)) => (e.kind, e.message),
        Err(other) => panic!("{name}: not a script error: {other}"),
    }
}

fn rows(v: &Value) -> Vec<serde_json::Value> {
    match v.to_json() {
        serde_json::Value::Array(items) => items,
        other => panic!("not a list of rows: {other}"),
    }
}

async fn count(db: &Databases, table: &str) -> i64 {
    let v = ok(db, "ormDirect", vec![s(&format!("SELECT COUNT(*) AS n FROM {table}"))]).await;
    rows(&v)[0]["n"].as_i64().expect("count")
}

/// Create `people` with three rows.
async fn seed(db: &Databases) {
    let created = ok(
        db,
        "ormDirect",
        vec![s(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, score REAL)",
        )],
    )
    .await;
    assert_eq!(created, s("Success: 0"));
    for (id, name, age) in [(1, "Ana", 30), (2, "Bo", 41), (3, "O'Brien", 25)] {
        let n = ok(
            db,
            "ormAccessInsert",
            vec![
                s("id,name,age"),
                s("people"),
                Value::list(vec![Value::Int(id), s(name), Value::Int(age)]),
            ],
        )
        .await;
        assert_eq!(n, Value::Int(1));
    }
}

async fn every_command(b: &Backend) {
    let db = b.databases(DbLimits::default());
    seed(&db).await;
    let ctx = b.name;

    assert_eq!(ok(&db, "ormCheckTable", vec![s("people")]).await, s("True"), "{ctx}");
    assert_eq!(ok(&db, "ormCheckTable", vec![s("nobody")]).await, s("False"), "{ctx}");

    // Insert with a dict (all its keys), then select with a template selector.
    let mut row = Dict::new();
    row.insert("id".into(), Value::Int(4));
    row.insert("name".into(), s("Dee"));
    row.insert("score".into(), Value::Float(2.5));
    assert_eq!(
        ok(&db, "ormAccessInsert", vec![s(""), s("people"), Value::dict(row)]).await,
        Value::Int(1),
        "{ctx}"
    );
    let got = ok(
        &db,
        "ormAccessSelect",
        vec![
            s("id, name,score"),
            s("people"),
            template(vec![s("age IS NULL AND id = "), Value::Int(4), s("")]),
        ],
    )
    .await;
    assert_eq!(
        rows(&got),
        vec![serde_json::json!({"id": 4, "name": "Dee", "score": 2.5})],
        "{ctx}"
    );

    // A quoted placeholder binds the text (with its quote) in place of the literal.
    let got = ok(
        &db,
        "ormAccessSelect",
        vec![
            Value::list(vec![s("id")]),
            s("people"),
            template(vec![s("name = '"), s("O'Brien"), s("'")]),
        ],
    )
    .await;
    assert_eq!(rows(&got), vec![serde_json::json!({"id": 3})], "{ctx}");
    // …and inside a LIKE pattern.
    let got = ok(
        &db,
        "ormAccessSelect",
        vec![
            s("name"),
            s("people"),
            template(vec![s("name LIKE '%"), s("An"), s("%' ORDER BY id")]),
        ],
    )
    .await;
    assert_eq!(rows(&got), vec![serde_json::json!({"name": "Ana"})], "{ctx}");

    // Empty selector: every row; `*` fields.
    let all = ok(&db, "ormAccessSelect", vec![s("*"), s("people"), s("")]).await;
    assert_eq!(rows(&all).len(), 4, "{ctx}");

    // Update with a template selector: affected-row count.
    let n = ok(
        &db,
        "ormAccessUpdate",
        vec![
            s("age"),
            s("people"),
            Value::list(vec![Value::Int(50)]),
            template(vec![s("id >= "), Value::Int(2), s(" AND id <= "), Value::Int(3), s("")]),
        ],
    )
    .await;
    assert_eq!(n, Value::Int(2), "{ctx}");
    let got = ok(
        &db,
        "ormDirect",
        vec![template(vec![
            s("SELECT name FROM people WHERE age = "),
            Value::Int(50),
            s(" ORDER BY id"),
        ])],
    )
    .await;
    assert_eq!(
        rows(&got),
        vec![
            serde_json::json!({"name": "Bo"}),
            serde_json::json!({"name": "O'Brien"})
        ],
        "{ctx}"
    );
    // A string value for an integer column works as the spliced text did.
    let got = ok(
        &db,
        "ormAccessSelect",
        vec![s("name"), s("people"), template(vec![s("id = "), s("2"), s("")])],
    )
    .await;
    assert_eq!(rows(&got), vec![serde_json::json!({"name": "Bo"})], "{ctx}");

    // NULL → None.
    let got = ok(&db, "ormDirect", vec![s("SELECT age FROM people WHERE id = 4")]).await;
    assert_eq!(rows(&got), vec![serde_json::json!({"age": null})], "{ctx}");

    // SQL errors are catchable DatabaseErrors naming the command.
    let (kind, message) = err(&db, "ormDirect", vec![s("SELECT nope FROM people")]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{ctx}");
    assert!(message.starts_with("ormDirect: "), "{ctx}: {message}");

    // A connector and its query method.
    let conn = ok(&db, "avapConnector", vec![s("TOKEN")]).await;
    let mut call_dict = Dict::new();
    call_dict.insert(
        METHOD_CALL_KEY.into(),
        Value::list(vec![
            conn.clone(),
            s("query"),
            s("SELECT id FROM people WHERE id < 3 ORDER BY id"),
        ]),
    );
    let got = ok(&db, "ormDirect", vec![Value::dict(call_dict)]).await;
    assert_eq!(
        rows(&got),
        vec![serde_json::json!({"id": 1}), serde_json::json!({"id": 2})]
    );
    let (kind, _) = err(&db, "avapConnector", vec![s("OTHER")]).await;
    assert_eq!(kind, ErrorKind::DatabaseError);
    let mut bad = Dict::new();
    bad.insert(
        METHOD_CALL_KEY.into(),
        Value::list(vec![s("not a connector"), s("query"), s("SELECT 1")]),
    );
    let (kind, message) = err(&db, "ormDirect", vec![Value::dict(bad)]).await;
    assert_eq!(kind, ErrorKind::TypeError, "{message}");
}

async fn injection_is_inert(b: &Backend) {
    let db = b.databases(DbLimits::default());
    seed(&db).await;
    let ctx = b.name;
    for (k, attack) in [
        "' OR 1=1 --",
        "'; DROP TABLE people; --",
        "1 OR 1=1",
        "1; DROP TABLE people",
    ]
    .into_iter()
    .enumerate()
    {
        // Quoted: compared as a name, so nothing matches.
        let got = ok(
            &db,
            "ormAccessSelect",
            vec![s("id"), s("people"), template(vec![s("name = '"), s(attack), s("'")])],
        )
        .await;
        assert!(rows(&got).is_empty(), "{ctx}: {attack}: {got:?}");
        // Unquoted: a value, never SQL. SQLite compares it and finds
        // nothing; PostgreSQL refuses it as an integer.
        match call(
            "ormDirect",
            0,
            vec![template(vec![s("SELECT id FROM people WHERE id = "), s(attack), s("")])],
            &db,
        )
        .await
        {
            Ok(EffectOutcome::Value(v)) => assert!(rows(&v).is_empty(), "{ctx}: {attack}: {v:?}"),
            Err(HostError::Script(e)) => assert_eq!(e.kind, ErrorKind::DatabaseError, "{ctx}: {e}"),
            Err(e) => panic!("{e}"),
        }
        // Update through a selector value: no row changes.
        let n = ok(
            &db,
            "ormAccessUpdate",
            vec![
                s("age"),
                s("people"),
                Value::list(vec![Value::Int(99)]),
                template(vec![s("name = '"), s(attack), s("'")]),
            ],
        )
        .await;
        assert_eq!(n, Value::Int(0), "{ctx}: {attack}");
        // Inserted as data, verbatim.
        let id = i64::try_from(k).unwrap() + 10;
        let n = ok(
            &db,
            "ormAccessInsert",
            vec![s("id,name"), s("people"), Value::list(vec![Value::Int(id), s(attack)])],
        )
        .await;
        assert_eq!(n, Value::Int(1), "{ctx}");
    }
    assert_eq!(ok(&db, "ormCheckTable", vec![s("people")]).await, s("True"), "{ctx}");
    assert_eq!(count(&db, "people").await, 7, "{ctx}: three seeded + four inserted");
    let stored = ok(
        &db,
        "ormAccessSelect",
        vec![
            s("name"),
            s("people"),
            template(vec![s("name = "), s("'; DROP TABLE people; --"), s("")]),
        ],
    )
    .await;
    assert_eq!(rows(&stored).len(), 1, "{ctx}: the attack text is stored as data");
    let none_older = ok(
        &db,
        "ormAccessSelect",
        vec![
            s("id"),
            s("people"),
            template(vec![s("age > 90 OR age = "), Value::Int(99), s("")]),
        ],
    )
    .await;
    assert!(rows(&none_older).is_empty(), "{ctx}: no update went through");
}

async fn identifiers_refused(b: &Backend) {
    let db = b.databases(DbLimits::default());
    seed(&db).await;
    let ctx = b.name;
    let bad_tables = ["people; DROP TABLE people", "people--", "a.b.c", "\"people\"", ""];
    for t in bad_tables {
        let (kind, message) = err(&db, "ormAccessSelect", vec![s("id"), s(t), s("")]).await;
        assert_eq!(kind, ErrorKind::DatabaseError, "{ctx}: {t}");
        assert!(message.contains("invalid table name"), "{ctx}: {message}");
        let (kind, _) = err(&db, "ormCheckTable", vec![s(t)]).await;
        assert_eq!(kind, ErrorKind::DatabaseError, "{ctx}: {t}");
    }
    let (kind, message) = err(
        &db,
        "ormAccessSelect",
        vec![s("id, name FROM people --"), s("people"), s("")],
    )
    .await;
    assert_eq!(kind, ErrorKind::DatabaseError);
    assert!(message.contains("invalid field name"), "{ctx}: {message}");
    let (kind, _) = err(
        &db,
        "ormAccessInsert",
        vec![s("name) VALUES ('x'); --"), s("people"), Value::list(vec![s("y")])],
    )
    .await;
    assert_eq!(kind, ErrorKind::DatabaseError);
    let mut bad_key = Dict::new();
    bad_key.insert("age = 1; --".into(), Value::Int(1));
    let (kind, _) = err(
        &db,
        "ormAccessUpdate",
        vec![s(""), s("people"), Value::dict(bad_key), s("")],
    )
    .await;
    assert_eq!(kind, ErrorKind::DatabaseError);
    // A template value as an identifier is refused.
    let (kind, message) = err(
        &db,
        "ormDirect",
        vec![template(vec![s("SELECT \""), s("name"), s("\" FROM people")])],
    )
    .await;
    assert_eq!(kind, ErrorKind::DatabaseError);
    assert!(message.contains("identifier"), "{message}");
    assert_eq!(count(&db, "people").await, 3, "{ctx}");
}

async fn read_only_and_caps(b: &Backend) {
    let rw = b.databases(DbLimits::default());
    seed(&rw).await;
    let ctx = b.name;
    let ro = b.databases(DbLimits {
        read_only: true,
        ..DbLimits::default()
    });
    let (kind, message) = err(
        &ro,
        "ormDirect",
        vec![s("INSERT INTO people (id, name) VALUES (10, 'x')")],
    )
    .await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{ctx}: {message}");
    let (kind, _) = err(
        &ro,
        "ormAccessInsert",
        vec![s("id,name"), s("people"), Value::list(vec![Value::Int(11), s("x")])],
    )
    .await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{ctx}");
    let (kind, _) = err(&ro, "ormDirect", vec![s("DELETE FROM people")]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{ctx}");
    // Reads still work, and nothing changed.
    assert_eq!(count(&ro, "people").await, 3, "{ctx}");

    // Row cap: 2 rows allowed, 3 selected.
    let capped = b.databases(DbLimits {
        max_rows: 2,
        ..DbLimits::default()
    });
    let (kind, message) = err(&capped, "ormAccessSelect", vec![s("id"), s("people"), s("")]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{ctx}");
    assert!(message.contains("db_max_rows"), "{ctx}: {message}");
    let two = ok(&capped, "ormDirect", vec![s("SELECT id FROM people WHERE id < 3")]).await;
    assert_eq!(rows(&two).len(), 2, "{ctx}");

    // Statement time cap.
    let slow = b.databases(DbLimits {
        statement_timeout: Duration::from_millis(200),
        ..DbLimits::default()
    });
    let sql = if b.schema.is_some() {
        "SELECT pg_sleep(2) AS slept".to_owned()
    } else {
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) SELECT COUNT(*) AS n FROM c"
            .to_owned()
    };
    let started = std::time::Instant::now();
    let (kind, message) = err(&slow, "ormDirect", vec![s(&sql)]).await;
    assert!(
        matches!(kind, ErrorKind::TimeoutError | ErrorKind::DatabaseError),
        "{ctx}: {kind} {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{ctx}: {:?}",
        started.elapsed()
    );
}

macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let b = super::Backend::sqlite(stringify!($name));
                super::$body(&b).await;
            }

            #[tokio::test]
            async fn postgres() {
                let b = super::Backend::postgres().await;
                let schema = b.schema.clone().expect("a scratch schema");
                let result = tokio::spawn(async move { super::$body(&b).await }).await;
                // Dropped whether the test passed or not.
                super::drop_pg(&schema).await;
                if let Err(e) = result {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    };
}

on_both!(commands, every_command);
on_both!(injection, injection_is_inert);
on_both!(identifiers, identifiers_refused);
on_both!(read_only, read_only_and_caps);

#[tokio::test]
async fn no_application_database_is_capability_denied() {
    let db = Databases::new(None, [], DbLimits::default()).expect("config");
    let (kind, message) = err(&db, "ormDirect", vec![s("SELECT 1")]).await;
    assert_eq!(kind, ErrorKind::CapabilityDenied);
    assert!(message.contains("app_database_url"), "{message}");
}

#[test]
fn bad_urls_are_refused_when_configured() {
    let e = Databases::new(Some("mysql://x/y"), [], DbLimits::default()).unwrap_err();
    assert!(e.to_string().contains("unsupported scheme"), "{e}");
}

// ---------------------------------------------------------------------------
// Scripts, end to end

fn avap_run(script: &str, args: &[&str]) -> serde_json::Value {
    let d = tmp(&format!("script-{}", unique()));
    let path = d.join("s.avap");
    std::fs::write(&path, script).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .arg("run")
        .arg(&path)
        .args(args)
        .output()
        .expect("run avap");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

const SCRIPT: &str = r#"
ormDirect("CREATE TABLE IF NOT EXISTS users (id INTEGER, name TEXT)", made)
ormDirect("DELETE FROM users", cleared)
ormAccessInsert("id,name", "users", [1, "Ana"], n1)
ormAccessInsert("id,name", "users", [2, "Bo"], n2)
addParam(who, who)
ormAccessSelect("id,name", "users", `name = '${who}'`, found)
try()
    ormAccessSelect("id", "users", `id = ${who}`, by_id)
exception(e2)
end()
ormCheckTable("users", exists)
try()
    ormAccessSelect("id", "users; DROP TABLE users", "", x)
exception(e)
end()
ormDirect("SELECT COUNT(*) AS n FROM users", total)
conn = avapConnector("TOKEN")
rows = conn.query("SELECT name FROM users ORDER BY id")
first = rows[0].name
addResult(made)
addResult(found)
addResult(by_id)
addResult(exists)
addResult(e)
addResult(total)
addResult(first)
"#;

fn check_script(url: &str) {
    let connector = format!("TOKEN={url}");
    let out = avap_run(
        SCRIPT,
        &["--db", url, "--connector", &connector, "-q", "who=' OR 1=1 --"],
    );
    let r = &out["result"];
    assert_eq!(r["made"], "Success: 0", "{out}");
    assert_eq!(r["found"], serde_json::json!([]), "{out}");
    assert_eq!(r["exists"], "True", "{out}");
    assert!(r["by_id"].as_array().is_none_or(Vec::is_empty), "{out}");
    assert_eq!(r["total"], serde_json::json!([{"n": 2}]), "{out}");
    assert_eq!(r["first"], "Ana", "{out}");
    assert!(
        r["e"].to_string().contains("invalid table name"),
        "the bad table is refused: {out}"
    );
    let out = avap_run(SCRIPT, &["--db", url, "--connector", &connector, "-q", "who=Bo"]);
    assert_eq!(
        out["result"]["found"],
        serde_json::json!([{"id": 2, "name": "Bo"}]),
        "{out}"
    );
}

#[test]
fn scripts_on_sqlite() {
    let path = tmp("script-sqlite").join("app.sqlite");
    check_script(&format!("sqlite://{}", path.display()));
}

#[test]
fn scripts_on_postgres() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let b = rt.block_on(Backend::postgres());
    let url = b.url.clone();
    let result = std::panic::catch_unwind(|| check_script(&url));
    rt.block_on(b.drop_schema());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn method_calls_on_other_values_are_type_errors() {
    let path = tmp("method-calls").join("app.sqlite");
    let url = format!("sqlite://{}", path.display());
    let out = avap_run(
        "x = \"text\"\ntry()\n    y = x.upper()\nexception(e)\nend()\naddResult(e)\n",
        &["--db", &url],
    );
    let e = out["result"]["e"].to_string();
    assert!(e.contains("no method 'upper'"), "{out}");
}

// ---------------------------------------------------------------------------
// The public conformance cases that use the database, on PostgreSQL (the
// conformance runner covers SQLite): their fixtures become tables in fresh
// schemas, and `avap run --db/--connector` must give the expected result.

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance")
}

fn pg_type(values: &[&serde_json::Value]) -> &'static str {
    use serde_json::Value as J;
    let present: Vec<&&J> = values.iter().filter(|v| !v.is_null()).collect();
    if present.iter().all(|v| v.is_boolean()) && !present.is_empty() {
        "BOOLEAN"
    } else if present.iter().all(|v| v.is_i64()) && !present.is_empty() {
        "BIGINT"
    } else if present.iter().all(|v| v.is_number()) && !present.is_empty() {
        "DOUBLE PRECISION"
    } else {
        "TEXT"
    }
}

async fn fill_pg(schema: &str, tables: &serde_json::Map<String, serde_json::Value>) {
    let mut c = sqlx::PgConnection::connect(PG).await.expect("connect");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut c)
        .await
        .expect("schema");
    for (table, rows) in tables {
        let rows = rows.as_array().expect("rows");
        let mut columns: Vec<String> = Vec::new();
        for r in rows {
            for k in r.as_object().expect("row").keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
        let defs: Vec<String> = columns
            .iter()
            .map(|col| {
                let vals: Vec<&serde_json::Value> = rows.iter().filter_map(|r| r.get(col)).collect();
                format!("\"{col}\" {}", pg_type(&vals))
            })
            .collect();
        sqlx::query(&format!("CREATE TABLE {schema}.\"{table}\" ({})", defs.join(", ")))
            .execute(&mut c)
            .await
            .expect("create");
        for r in rows {
            let marks: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "INSERT INTO {schema}.\"{table}\" ({}) VALUES ({})",
                columns
                    .iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for col in &columns {
                q = match r.get(col).unwrap_or(&serde_json::Value::Null) {
                    serde_json::Value::Bool(b) => q.bind(*b),
                    serde_json::Value::Number(n) if n.is_i64() => q.bind(n.as_i64()),
                    serde_json::Value::Number(n) => q.bind(n.as_f64()),
                    serde_json::Value::String(t) => q.bind(t.clone()),
                    serde_json::Value::Null => q.bind(None::<String>),
                    other => q.bind(other.to_string()),
                };
            }
            q.execute(&mut c).await.expect("insert");
        }
    }
    c.close().await.expect("close");
}

async fn drop_pg(schema: &str) {
    let mut c = sqlx::PgConnection::connect(PG).await.expect("connect");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut c)
        .await
        .expect("drop");
    c.close().await.expect("close");
}

#[test]
fn conformance_database_cases_on_postgres() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for case in ["orm_direct_select", "countries_enrichment", "connector_query"] {
        let dir = conformance_dir();
        let expected: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{case}.expected.json"))).expect("expected file"),
        )
        .expect("json");
        let fixtures = &expected["fixtures"];
        let mut schemas = Vec::new();
        let mut args: Vec<String> = Vec::new();
        if let Some(tables) = fixtures["db"].as_object() {
            let schema = format!("avap_conf_{}", unique());
            rt.block_on(fill_pg(&schema, tables));
            args.push("--db".into());
            args.push(format!("{PG}?options=-c%20search_path%3D{schema}"));
            schemas.push(schema);
        }
        for (token, tables) in fixtures["connector"].as_object().into_iter().flatten() {
            let schema = format!("avap_conf_{}", unique());
            rt.block_on(fill_pg(&schema, tables.as_object().expect("tables")));
            args.push("--connector".into());
            args.push(format!("{token}={PG}?options=-c%20search_path%3D{schema}"));
            schemas.push(schema);
        }
        let outcome = std::panic::catch_unwind(|| {
            for c in expected["cases"].as_array().expect("cases") {
                let mut a = args.clone();
                for (k, v) in c["request"]["query"].as_object().into_iter().flatten() {
                    a.push("-q".into());
                    a.push(format!("{k}={}", v.as_str().expect("query text")));
                }
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                let script = std::fs::read_to_string(dir.join(format!("{case}.avap"))).expect("script");
                let out = avap_run(&script, &refs);
                assert_eq!(out["result"], c["expected"]["result"], "{case}: {out}");
            }
        });
        for schema in &schemas {
            rt.block_on(drop_pg(schema));
        }
        if let Err(e) = outcome {
            std::panic::resume_unwind(e);
        }
    }
}

/// An in-memory `SQLite` application database: one pooled connection.
fn memory(limits: DbLimits) -> Databases {
    Databases::new(Some("sqlite::memory:"), [], limits).expect("config")
}

#[tokio::test]
async fn sqlite_attach_refused_by_the_engine() {
    let dir = tmp("attach_engine");
    let b = Backend::sqlite("attach_engine_app");
    let db = b.databases(DbLimits::default());
    seed(&db).await;
    let target = dir.join("x.sqlite");
    let t = target.display().to_string();
    // `$1(')` is one bind token to SQLite; a hand-written lexer reads a
    // quote there and misses the ATTACH that follows.
    let bypass = format!("SELECT 1 WHERE 1=1 AND $1(');ATTACH DATABASE '{t}' AS s;--'");
    let (kind, message) = err(&db, "ormDirect", vec![s(&bypass)]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{message}");
    let relative = "SELECT 1 WHERE 1=1 AND $1(');ATTACH DATABASE 'x.sqlite' AS s;--'";
    let (kind, message) = err(&db, "ormDirect", vec![s(relative)]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{message}");
    // The same through a whereSelector.
    let selector = format!("1=1 AND $1(');ATTACH DATABASE '{t}' AS s;--'");
    let (kind, message) = err(&db, "ormAccessSelect", vec![s("id"), s("people"), s(&selector)]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{message}");
    let (kind, _) = err(&db, "ormDirect", vec![s(&format!("ATTACH DATABASE '{t}' AS s"))]).await;
    assert_eq!(kind, ErrorKind::DatabaseError);
    // VACUUM INTO attaches its target too.
    let vacuum = format!("SELECT 1 WHERE 1=1 AND $1(');VACUUM INTO '{t}';--'");
    let (kind, _) = err(&db, "ormDirect", vec![s(&vacuum)]).await;
    assert_eq!(kind, ErrorKind::DatabaseError);
    assert!(!target.exists(), "{t} was created");
    assert!(!std::path::Path::new("x.sqlite").exists(), "x.sqlite was created");
    // The database still works.
    assert_eq!(count(&db, "people").await, 3);
}

#[tokio::test]
async fn sqlite_timeout_interrupts_and_frees_the_connection() {
    let db = memory(DbLimits {
        statement_timeout: Duration::from_millis(300),
        ..DbLimits::default()
    });
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";
    let (kind, message) = err(&db, "ormDirect", vec![s(endless)]).await;
    assert_eq!(kind, ErrorKind::TimeoutError, "{message}");
    // The only connection comes back: the next statement runs at once.
    let started = std::time::Instant::now();
    let one = ok(&db, "ormDirect", vec![s("SELECT 1 AS one")]).await;
    assert_eq!(rows(&one)[0]["one"], 1);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sqlite_result_size_is_capped() {
    let db = memory(DbLimits {
        max_result_bytes: 64 * 1024,
        ..DbLimits::default()
    });
    // 100 rows of 1 KiB fit the row cap but not 64 KiB.
    let big = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100) \
               SELECT x, hex(zeroblob(512)) AS pad FROM c";
    let (kind, message) = err(&db, "ormDirect", vec![s(big)]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{message}");
    assert!(message.contains("larger than 64 KiB"), "{message}");
    // One value longer than the cap is refused by the engine itself.
    let (kind, message) = err(&db, "ormDirect", vec![s("SELECT zeroblob(1000000) AS b")]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{message}");
    let small = ok(&db, "ormDirect", vec![s("SELECT hex(zeroblob(512)) AS pad")]).await;
    assert_eq!(rows(&small).len(), 1);
}

#[tokio::test]
async fn sqlite_temp_objects_do_not_outlive_the_call() {
    let db = memory(DbLimits::default());
    ok(&db, "ormDirect", vec![s("CREATE TEMP TABLE leak (x INTEGER)")]).await;
    ok(&db, "ormDirect", vec![s("CREATE TABLE kept (x INTEGER)")]).await;
    let (kind, message) = err(&db, "ormDirect", vec![s("SELECT x FROM leak")]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{message}");
    assert!(message.contains("no such table"), "{message}");
    // The (in-memory) main database survived the reset.
    assert_eq!(ok(&db, "ormCheckTable", vec![s("kept")]).await, s("True"));
}

#[tokio::test]
async fn postgres_session_state_is_discarded() {
    let db = Databases::new(Some(PG), [], DbLimits::default()).expect("config");
    // Whichever pooled connection serves the next call, none keeps a
    // temporary table from an earlier one.
    for _ in 0..3 {
        ok(&db, "ormDirect", vec![s("CREATE TEMP TABLE avap_leak (x int)")]).await;
    }
    let (kind, message) = err(&db, "ormDirect", vec![s("SELECT x FROM avap_leak")]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{message}");
}

/// Breakers that trip after four statements, half of them failed or slow.
fn tripping(slow_ms: u64, max_concurrent: usize) -> DbLimits {
    DbLimits {
        statement_timeout: Duration::from_secs(2),
        breaker: BreakerConfig {
            failure_pct: 50,
            slow_ms,
            min_calls: 4,
            open_ms: 400,
            max_concurrent,
        },
        ..DbLimits::default()
    }
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_opens_its_circuit() {
    // Nothing listens on port 9: every statement fails to connect.
    let db = Databases::new(Some("postgres://postgres@127.0.0.1:9/test"), [], tripping(0, 0)).expect("config");
    for _ in 0..4 {
        let (kind, message) = err(&db, "ormDirect", vec![s("SELECT 1")]).await;
        assert_eq!(kind, ErrorKind::DatabaseError, "{message}");
        assert!(!message.contains("circuit open"), "{message}");
    }
    let started = std::time::Instant::now();
    let (kind, message) = err(&db, "ormDirect", vec![s("SELECT 1")]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{message}");
    assert!(
        message.contains("circuit open for application database (postgresql at 127.0.0.1:9)")
            && message.contains("db_breaker_*"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_millis(50), "refused at once");
    let stats = db.breakers().expect("on").stats();
    assert_eq!((stats.open, stats.opened_total, stats.refused_open_total), (1, 1, 1));
}

#[tokio::test]
async fn slow_statements_open_the_circuit_and_probes_close_it() {
    let db = Databases::new(Some(PG), [], tripping(150, 0)).expect("config");
    for _ in 0..4 {
        ok(&db, "ormDirect", vec![s("SELECT pg_sleep(0.2)::text AS slept")]).await;
    }
    let (_, message) = err(&db, "ormDirect", vec![s("SELECT 1 AS one")]).await;
    assert!(message.contains("circuit open"), "{message}");
    // SQL errors are the script's, not the database's: they never count.
    tokio::time::sleep(Duration::from_millis(450)).await;
    for _ in 0..3 {
        assert_eq!(
            rows(&ok(&db, "ormDirect", vec![s("SELECT 1 AS one")]).await),
            vec![serde_json::json!({"one": 1})]
        );
    }
    assert_eq!(
        db.breakers().expect("on").stats().open,
        0,
        "three quick probes closed it"
    );
    for _ in 0..6 {
        let (_, message) = err(&db, "ormDirect", vec![s("SELECT no_such_column FROM no_such_table")]).await;
        assert!(message.contains("no_such_table"), "{message}");
    }
    assert_eq!(db.breakers().expect("on").stats().open, 0, "bad SQL is not an outage");
}

#[tokio::test]
async fn the_bulkhead_caps_statements_on_one_database_at_once() {
    let db = Arc::new(Databases::new(Some(PG), [], tripping(0, 1)).expect("config"));
    let held = {
        let db = Arc::clone(&db);
        tokio::spawn(async move { ok(&db, "ormDirect", vec![s("SELECT pg_sleep(0.5)::text AS slept")]).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (kind, message) = err(&db, "ormDirect", vec![s("SELECT 1")]).await;
    assert_eq!(kind, ErrorKind::DatabaseError, "{message}");
    assert!(
        message.contains("too many calls at once to application database")
            && message.contains("db_max_concurrent_statements"),
        "{message}"
    );
    held.await.expect("the first statement finishes");
    ok(&db, "ormDirect", vec![s("SELECT 1")]).await;
}

#[tokio::test]
async fn slow_statements_are_counted_and_fingerprinted_without_their_values() {
    let limits = DbLimits {
        slow_statement: Some(Duration::from_millis(100)),
        ..DbLimits::default()
    };
    let db = Databases::new(Some(PG), [], limits).expect("config");
    let waits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = waits.clone();
    db.set_acquire_observer(std::sync::Arc::new(move |database: &str, waited| {
        seen.lock().unwrap().push((database.to_owned(), waited));
    }));
    ok(&db, "ormDirect", vec![s("SELECT 1 AS quick")]).await;
    assert_eq!(db.slow_statements(), 0);
    ok(
        &db,
        "ormDirect",
        vec![s("SELECT pg_sleep(0.15)::text AS slept, 'secret' AS s")],
    )
    .await;
    assert_eq!(db.slow_statements(), 1);
    let pools = db.pool_stats();
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert!(
        pools[0].database.starts_with("application database (postgresql"),
        "{pools:?}"
    );
    assert_eq!(pools[0].waiting, 0, "nobody waits once the statements are done");
    let waits = waits.lock().unwrap();
    assert_eq!(
        waits.len(),
        2,
        "each statement's wait for a connection is told: {waits:?}"
    );
    assert!(
        waits
            .iter()
            .all(|(database, _)| database.starts_with("application database (postgresql"))
    );
    assert_eq!(
        avap_hostfns::effects::db::fingerprint(
            "SELECT  pg_sleep(0.15), 'it''s secret' AS s\n FROM t WHERE id = 42 AND c2 = $1"
        ),
        "SELECT pg_sleep(?), ? AS s FROM t WHERE id = ? AND c2 = $1"
    );
}
