//! `POST /api/v1/execute/batch` with `"transaction": true`: the items run in
//! order inside one application-database transaction, committed or rolled
//! back as a whole — on the `SQLite` application database of the data
//! directory and on a fresh `PostgreSQL` database of the machine's server.

mod support;

use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use support::{PgDatabase, Server, fresh_dir, serve_command};

/// A server with an application database; the `PostgreSQL` database is
/// dropped with it.
struct App {
    server: Server,
    backend: Backend,
    _pg: Option<PgDatabase>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl App {
    fn start(backend: Backend, name: &str, args: &[&str]) -> App {
        let data_dir = fresh_dir(name).join("data");
        let mut cmd = serve_command(&data_dir);
        cmd.args(args);
        let pg = match backend {
            // The default: `app.sqlite` in the data directory.
            Backend::Sqlite => None,
            Backend::Postgres => {
                let db = PgDatabase::create("batchtx");
                cmd.env("AVAP_APP_DATABASE_URL", &db.url);
                Some(db)
            }
        };
        let app = App {
            server: Server::spawn(cmd, data_dir),
            backend,
            _pg: pg,
        };
        app.sql("CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT)");
        app
    }

    /// Run one statement outside any batch; its result.
    fn sql(&self, statement: &str) -> Value {
        let r = self
            .server
            .execute(&json!({"script": format!("ormDirect(\"{statement}\", r)\naddResult(r)\n")}));
        assert_eq!(r.status, 200, "{statement}: {}", r.body);
        r.json()["result"]["r"].clone()
    }

    /// The ids in `items`, ascending.
    fn ids(&self) -> Vec<i64> {
        let rows = self.sql("SELECT id FROM items ORDER BY id");
        rows.as_array()
            .expect("rows")
            .iter()
            .map(|r| r["id"].as_i64().expect("int id"))
            .collect()
    }

    fn batch(&self, body: &Value) -> Value {
        let r = self.server.post_json("/api/v1/execute/batch", body);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// A statement that succeeds after a second or two: well within the
    /// 4 s the cancellation tests wait, so a batch that was not cancelled
    /// would have committed by then.
    fn slow_statement(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => {
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000) SELECT max(x) AS m FROM c"
            }
            Backend::Postgres => "SELECT pg_sleep(1.5) AS slept",
        }
    }
}

fn insert(id: i64, label: &str) -> Value {
    json!({"script": format!("ormAccessInsert(\"id,label\", \"items\", [{id}, \"{label}\"], n)\naddResult(n)\n")})
}

/// An insert, then a script error.
fn insert_then_fail(id: i64) -> Value {
    json!({"script": format!("ormAccessInsert(\"id,label\", \"items\", [{id}, \"x\"], n)\nx = 1 / 0\naddResult(x)\n")})
}

fn statuses(reply: &Value) -> Vec<Value> {
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].clone())
        .collect()
}

fn a_failing_item_rolls_back_every_item(app: &App) {
    let reply =
        app.batch(&json!({"transaction": true, "items": [insert(1, "a"), insert(2, "b"), insert_then_fail(3)]}));
    assert_eq!(reply["transaction"], "rolled_back", "{reply}");
    assert_eq!(reply["failed_item"], 2, "{reply}");
    assert_eq!(reply["reason"], "item 2 failed", "{reply}");
    assert_eq!(statuses(&reply), [json!(200), json!(200), json!(400)], "{reply}");
    for result in reply["results"].as_array().expect("results") {
        assert_eq!(result["transaction"], "rolled_back", "{reply}");
    }
    assert_eq!(
        reply["results"][2]["body"]["error"]["kind"], "ZeroDivisionError",
        "{reply}"
    );
    assert_eq!(app.ids(), Vec::<i64>::new(), "nothing of the batch is left");
}

fn items_after_the_failing_one_are_not_run(app: &App) {
    let reply =
        app.batch(&json!({"transaction": true, "items": [insert(1, "a"), insert_then_fail(2), insert(3, "c")]}));
    assert_eq!(reply["transaction"], "rolled_back", "{reply}");
    assert_eq!(reply["failed_item"], 1, "{reply}");
    assert_eq!(statuses(&reply), [json!(200), json!(400), json!(424)], "{reply}");
    assert_eq!(reply["results"][2]["body"]["error"]["kind"], "NotRun", "{reply}");
    assert_eq!(app.ids(), Vec::<i64>::new());
}

fn a_batch_that_succeeds_commits_every_item(app: &App) {
    let reply = app.batch(&json!({"transaction": true, "items": [insert(1, "a"), insert(2, "b"), insert(3, "c")]}));
    assert_eq!(reply["transaction"], "committed", "{reply}");
    assert!(reply.get("failed_item").is_none(), "{reply}");
    assert_eq!(statuses(&reply), [json!(200), json!(200), json!(200)], "{reply}");
    assert_eq!(reply["results"][0]["transaction"], "committed", "{reply}");
    assert_eq!(app.ids(), [1, 2, 3]);
}

fn later_items_see_earlier_items_writes(app: &App) {
    let count = json!({"script": "ormDirect(\"SELECT COUNT(*) AS n FROM items\", r)\nn = r[0].n\naddResult(n)\n"});
    let reply = app.batch(&json!({"transaction": true, "items": [insert(1, "a"), insert(2, "b"), count]}));
    assert_eq!(reply["transaction"], "committed", "{reply}");
    assert_eq!(reply["results"][2]["body"]["result"]["n"], 2, "{reply}");
}

fn a_caught_failed_statement_does_not_poison_the_transaction(app: &App) {
    // The duplicate key fails; the script catches it and goes on. On
    // PostgreSQL the transaction would be "aborted" without the savepoint.
    let script = "ormAccessInsert(\"id,label\", \"items\", [10, \"first\"], a)\n\
                  try()\n\
                  \x20   ormAccessInsert(\"id,label\", \"items\", [10, \"duplicate\"], b)\n\
                  exception(e)\n\
                  end()\n\
                  ormAccessInsert(\"id,label\", \"items\", [11, \"after\"], c)\n\
                  addResult(e)\n\
                  addResult(c)\n";
    let reply = app.batch(&json!({"transaction": true, "items": [{"script": script}, insert(12, "next item")]}));
    assert_eq!(reply["transaction"], "committed", "{reply}");
    assert_eq!(reply["results"][0]["body"]["result"]["c"], 1, "{reply}");
    let caught = reply["results"][0]["body"]["result"]["e"].to_string();
    assert!(
        caught.contains("duplicate key") || caught.contains("UNIQUE constraint failed"),
        "the duplicate was refused: {reply}"
    );
    assert_eq!(app.ids(), [10, 11, 12]);
}

fn transaction_control_in_sql_is_refused(app: &App) {
    let script = "try()\n    ormDirect(\"COMMIT\", r)\nexception(e)\nend()\naddResult(e)\n";
    let reply =
        app.batch(&json!({"transaction": true, "items": [insert(1, "a"), {"script": script}, insert_then_fail(2)]}));
    assert_eq!(reply["transaction"], "rolled_back", "{reply}");
    assert!(
        reply["results"][1]["body"]["result"]["e"]
            .to_string()
            .contains("not allowed inside a batch transaction"),
        "{reply}"
    );
    assert_eq!(app.ids(), Vec::<i64>::new(), "the COMMIT did not reach the database");
}

fn stored_scripts_join_the_transaction(app: &App) {
    let stored = app.server.post_json(
        "/api/v1/scripts",
        &json!({"name": "add_item", "source": "addParam(id, id)\normAccessInsert(\"id,label\", \"items\", [id, \"stored\"], n)\naddResult(n)\n"}),
    );
    assert_eq!(stored.status, 201, "{}", stored.body);
    let reply = app.batch(&json!({"transaction": true, "items": [
        {"name": "add_item", "params": {"id": 1}},
        insert_then_fail(2),
    ]}));
    assert_eq!(reply["transaction"], "rolled_back", "{reply}");
    assert_eq!(reply["results"][0]["status"], 200, "{reply}");
    assert_eq!(app.ids(), Vec::<i64>::new());
    let reply = app.batch(&json!({"transaction": true, "items": [
        {"name": "add_item", "params": {"id": 1}},
        {"name": "add_item", "params": {"id": 2}},
    ]}));
    assert_eq!(reply["transaction"], "committed", "{reply}");
    assert_eq!(app.ids(), [1, 2]);
}

fn without_transaction_items_stay_independent(app: &App) {
    let reply = app.batch(&json!({"items": [insert(1, "a"), insert_then_fail(2), insert(3, "c")]}));
    assert!(reply.get("transaction").is_none(), "{reply}");
    assert_eq!(statuses(&reply), [json!(200), json!(400), json!(200)], "{reply}");
    assert!(reply["results"][0].get("transaction").is_none(), "{reply}");
    // Each item's writes commit on their own, the failing item's insert too.
    assert_eq!(app.ids(), [1, 2, 3]);
}

/// The request timeout cuts the batch off during its second item: nothing
/// is written (had it gone on, the batch would have committed).
fn a_timed_out_request_leaves_nothing_written(backend: Backend, name: &str) {
    let app = App::start(backend, name, &["--request-timeout-ms", "400"]);
    let slow = json!({"script": format!("ormDirect(\"{}\", r)\naddResult(r)\n", app.slow_statement())});
    let r = app.server.post_json(
        "/api/v1/execute/batch",
        &json!({"transaction": true, "items": [insert(1, "a"), slow]}),
    );
    assert_eq!(r.status, 504, "{}", r.body);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(app.ids(), Vec::<i64>::new());
    // The connection went back to the pool clean: the next batch commits.
    let reply = app.batch(&json!({"transaction": true, "items": [insert(2, "b")]}));
    assert_eq!(reply["transaction"], "committed", "{reply}");
    assert_eq!(app.ids(), [2]);
}

/// The client goes away during the second item: nothing is written.
fn a_client_that_disconnects_leaves_nothing_written(backend: Backend, name: &str) {
    let app = App::start(backend, name, &[]);
    let slow = json!({"script": format!("ormDirect(\"{}\", r)\naddResult(r)\n", app.slow_statement())});
    let body = json!({"transaction": true, "items": [insert(1, "a"), slow]}).to_string();
    let mut stream = TcpStream::connect(&app.server.addr).expect("connect");
    stream
        .write_all(&support::post_request("/api/v1/execute/batch", body.as_bytes()))
        .expect("send");
    std::thread::sleep(Duration::from_millis(400));
    drop(stream);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(app.ids(), Vec::<i64>::new());
}

macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $test() {
                    let app = super::App::start(super::Backend::Sqlite, concat!("sqlite-", stringify!($test)), &[]);
                    super::$test(&app);
                }
            )*
            #[test]
            fn a_timed_out_request_leaves_nothing_written() {
                super::a_timed_out_request_leaves_nothing_written(super::Backend::Sqlite, "sqlite-timeout");
            }
            #[test]
            fn a_client_that_disconnects_leaves_nothing_written() {
                super::a_client_that_disconnects_leaves_nothing_written(super::Backend::Sqlite, "sqlite-disconnect");
            }
        }
        mod postgres {
            $(
                #[test]
                fn $test() {
                    let app = super::App::start(super::Backend::Postgres, concat!("pg-", stringify!($test)), &[]);
                    super::$test(&app);
                }
            )*
            #[test]
            fn a_timed_out_request_leaves_nothing_written() {
                super::a_timed_out_request_leaves_nothing_written(super::Backend::Postgres, "pg-timeout");
            }
            #[test]
            fn a_client_that_disconnects_leaves_nothing_written() {
                super::a_client_that_disconnects_leaves_nothing_written(super::Backend::Postgres, "pg-disconnect");
            }
        }
    };
}

on_each_backend!(
    a_failing_item_rolls_back_every_item,
    items_after_the_failing_one_are_not_run,
    a_batch_that_succeeds_commits_every_item,
    later_items_see_earlier_items_writes,
    a_caught_failed_statement_does_not_poison_the_transaction,
    transaction_control_in_sql_is_refused,
    stored_scripts_join_the_transaction,
    without_transaction_items_stay_independent,
);

// ---------------------------------------------------------------------------
// The database handle itself (`Databases::in_transaction`), without a server

mod handle {
    use avap_hostfns::effects::EffectOutcome;
    use avap_hostfns::effects::db::{CONNECTOR_KEY, Databases, DbLimits, METHOD_CALL_KEY, TransactionOutcome, call};
    use avap_hostfns::{Dict, ErrorKind, HostError, Value};

    fn s(text: &str) -> Value {
        Value::Str(text.to_owned())
    }

    fn sqlite_url(name: &str) -> String {
        let dir = super::fresh_dir(&format!("handle-{name}"));
        format!("sqlite://{}", dir.join("app.sqlite").display())
    }

    async fn sql(db: &Databases, statement: &str) -> Result<Value, HostError> {
        call("ormDirect", 0, vec![s(statement)], db)
            .await
            .map(|EffectOutcome::Value(v)| v)
    }

    async fn count(db: &Databases) -> Value {
        sql(db, "SELECT COUNT(*) AS n FROM items").await.expect("count")
    }

    fn rows(n: i64) -> Value {
        let mut row = Dict::new();
        row.insert("n".to_owned(), Value::Int(n));
        Value::list(vec![Value::dict(row)])
    }

    #[tokio::test]
    async fn a_transaction_dropped_unfinished_rolls_back() {
        let db = Databases::new(Some(&sqlite_url("dropped")), [], DbLimits::default()).expect("config");
        sql(&db, "CREATE TABLE items (id INTEGER)").await.expect("create");
        let (in_tx, transaction) = db.in_transaction();
        sql(&in_tx, "INSERT INTO items VALUES (1)").await.expect("insert");
        assert_eq!(
            sql(&in_tx, "SELECT COUNT(*) AS n FROM items").await.expect("count"),
            rows(1)
        );
        drop(in_tx);
        drop(transaction);
        assert_eq!(count(&db).await, rows(0));
        // The connection came back usable (or was closed): writes go on.
        sql(&db, "INSERT INTO items VALUES (2)").await.expect("insert after");
        assert_eq!(count(&db).await, rows(1));
    }

    #[tokio::test]
    async fn connectors_stay_outside_the_transaction() {
        let connector = sqlite_url("connector");
        let db = Databases::new(
            Some(&sqlite_url("connector-app")),
            [("TOKEN".to_owned(), connector.clone())],
            DbLimits::default(),
        )
        .expect("config");
        let other = Databases::new(Some(&connector), [], DbLimits::default()).expect("config");
        sql(&other, "CREATE TABLE items (id INTEGER)").await.expect("create");
        sql(&db, "CREATE TABLE items (id INTEGER)").await.expect("create");

        let (in_tx, transaction) = db.in_transaction();
        sql(&in_tx, "INSERT INTO items VALUES (1)").await.expect("insert");
        let mut handle = Dict::new();
        handle.insert(CONNECTOR_KEY.to_owned(), s("TOKEN"));
        let mut method = Dict::new();
        method.insert(
            METHOD_CALL_KEY.to_owned(),
            Value::list(vec![
                Value::dict(handle),
                s("query"),
                s("INSERT INTO items VALUES (7) RETURNING id"),
            ]),
        );
        call("ormDirect", 0, vec![Value::dict(method)], &in_tx)
            .await
            .expect("connector insert");
        drop(in_tx);
        assert_eq!(
            transaction.finish(false).await,
            TransactionOutcome::RolledBack { reason: None }
        );
        assert_eq!(count(&db).await, rows(0), "the application database rolled back");
        assert_eq!(count(&other).await, rows(1), "the connector's write stayed");
    }

    /// A statement cut off mid-way (its future dropped, as at a run's
    /// deadline) leaves the connection in an unknown state: nothing more
    /// runs in the transaction, and it cannot commit.
    #[tokio::test]
    async fn a_statement_cut_off_breaks_the_transaction() {
        let db =
            Databases::new(Some("postgres://postgres@127.0.0.1:5432/test"), [], DbLimits::default()).expect("config");
        let (in_tx, transaction) = db.in_transaction();
        assert_eq!(sql(&in_tx, "SELECT 1 AS n").await.expect("select"), rows(1));
        let cut = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            sql(&in_tx, "SELECT pg_sleep(2) AS slept"),
        )
        .await;
        assert!(cut.is_err(), "the sleep was cut off");
        let HostError::Script(error) = sql(&in_tx, "SELECT 1 AS n").await.expect_err("refused") else {
            panic!("a catchable error")
        };
        assert_eq!(error.kind, ErrorKind::DatabaseError);
        assert!(error.message.contains("broken"), "{}", error.message);
        drop(in_tx);
        let TransactionOutcome::RolledBack { reason: Some(reason) } = transaction.finish(true).await else {
            panic!("a broken transaction never commits")
        };
        assert!(reason.contains("cut off"), "{reason}");
    }

    #[tokio::test]
    async fn read_only_holds_inside_the_transaction() {
        let limits = DbLimits {
            read_only: true,
            ..DbLimits::default()
        };
        let db = Databases::new(Some("postgres://postgres@127.0.0.1:5432/test"), [], limits).expect("config");
        let (in_tx, transaction) = db.in_transaction();
        let error = sql(&in_tx, "CREATE TABLE avap_batch_read_only (id INTEGER)")
            .await
            .expect_err("refused");
        let HostError::Script(error) = error else {
            panic!("a catchable error")
        };
        assert_eq!(error.kind, ErrorKind::DatabaseError, "{}", error.message);
        assert!(error.message.contains("read-only"), "{}", error.message);
        // The failed statement was rolled back to its savepoint: the
        // transaction goes on, and commits.
        assert_eq!(sql(&in_tx, "SELECT 1 AS n").await.expect("select"), rows(1));
        drop(in_tx);
        assert_eq!(transaction.finish(true).await, TransactionOutcome::Committed);
    }
}
