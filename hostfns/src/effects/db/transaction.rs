//! One application-database transaction shared by a sequence of runs (the
//! transactional batch of `avap serve`): every statement of every run goes
//! to one pooled connection, inside one `BEGIN` … `COMMIT`/`ROLLBACK`.
//!
//! * `BEGIN` waits for the first statement, so a batch that never touches
//!   the database never takes a connection.
//! * Each statement runs inside `SAVEPOINT avap_statement`: released when it
//!   succeeds, rolled back to when it fails. A script that catches a failed
//!   statement (`try` … `exception`) goes on in a healthy transaction — on
//!   `PostgreSQL` a failed statement would otherwise leave the whole
//!   transaction "aborted", refusing every later statement.
//! * Every per-statement guarantee of [`super`] holds: the client-side
//!   timer, `SET LOCAL statement_timeout` before each `PostgreSQL`
//!   statement, the `SQLite` progress-handler interrupt (removed after each
//!   statement so it never interrupts the final `COMMIT`), the row and size
//!   caps, read-only mode (`SET TRANSACTION READ ONLY` at `BEGIN` on
//!   `PostgreSQL`; read-only `SQLite` connections).
//! * Scripts may not end or nest the transaction themselves: SQL that
//!   visibly uses `BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT` or `RELEASE` is
//!   refused, and if the savepoint is gone after a statement anyway, the
//!   transaction is *broken*.
//! * Broken also means a statement was cut off mid-way (its future dropped
//!   at a deadline): the connection's state is unknown. Every later
//!   statement fails with a `DatabaseError`, and finishing rolls back.
//! * Dropped without [`Transaction::finish`] (the request was cancelled),
//!   the `sqlx` transaction inside rolls back, and the pool's reset on
//!   release closes a connection that is still inside a transaction.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Executor as _;
use tokio::sync::Mutex;

use super::{
    DbLimits, Failure, Pool, ScriptFailure, Sql, Want, pg_statement, pg_statement_timeout, refuse_attach,
    sqlite_statement, uses_keyword,
};
use crate::error::ErrorKind;
use crate::redact::Secrets;
use crate::value::Value;

/// Words a statement inside a shared transaction may not use: they would
/// end it, or nest savepoints under ours.
const TRANSACTION_CONTROL: &[&str] = &["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"];

/// Statements that end a transaction under another name (`END` commits and
/// `ABORT` rolls back on `PostgreSQL`; `END [TRANSACTION]` commits on
/// `SQLite`). Refused only as the first word of a statement: `END` inside
/// `CASE … END` is common and harmless.
const TRANSACTION_END_STATEMENTS: &[&str] = &["END", "ABORT"];

/// Whether any `;`-separated statement of `sql` starts with one of `words`.
/// A `;` inside a string literal may split a statement early; that can only
/// refuse more, never less.
fn starts_a_statement(sql: &str, words: &[&str]) -> bool {
    sql.split(';').any(|statement| {
        let first: String = statement
            .trim_start()
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        words.iter().any(|w| first.eq_ignore_ascii_case(w))
    })
}

/// How a shared transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionOutcome {
    Committed,
    /// Rolled back: asked for, or (with the reason) because committing was
    /// not possible.
    RolledBack {
        reason: Option<String>,
    },
}

/// A shared transaction; see the module docs.
#[derive(Debug)]
pub struct Transaction {
    limits: DbLimits,
    state: Mutex<State>,
    /// The databases' secrets: kept out of the reason of a rollback, which
    /// goes back to the client as it is (no `effects::call` in between).
    secrets: Arc<Secrets>,
}

#[derive(Debug, Default)]
struct State {
    /// `None` until the first statement (and after finishing).
    open: Option<Open>,
    /// Why no statement may run any more, and committing is refused.
    broken: Option<String>,
    /// Set while a statement runs: still set at the next statement means
    /// the last one was cut off mid-way.
    in_flight: bool,
    finished: bool,
}

enum Open {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Open::Sqlite(_) => "Open::Sqlite",
            Open::Postgres(_) => "Open::Postgres",
        })
    }
}

fn refused(message: String) -> Failure {
    Failure::Script(ScriptFailure {
        kind: ErrorKind::DatabaseError,
        message,
    })
}

impl Transaction {
    pub(super) fn new(limits: DbLimits, secrets: Arc<Secrets>) -> Transaction {
        Transaction {
            limits,
            state: Mutex::new(State::default()),
            secrets,
        }
    }

    /// Run one statement inside the transaction (begun now if this is the
    /// first), in a savepoint of its own.
    pub(super) async fn run(&self, pool: &Pool, want: Want, q: &Sql) -> Result<Value, Failure> {
        let limits = &self.limits;
        let mut state = self.state.lock().await;
        if state.finished {
            return Err(refused(
                "the batch transaction has already ended; no statement can join it".to_owned(),
            ));
        }
        if std::mem::take(&mut state.in_flight) {
            state.broken.get_or_insert_with(|| {
                "an earlier statement was cut off at its deadline, leaving the connection in an unknown state"
                    .to_owned()
            });
        }
        if let Some(why) = &state.broken {
            return Err(refused(format!(
                "the batch transaction is broken ({why}); it will be rolled back"
            )));
        }
        if matches!(pool, Pool::Sqlite(_)) {
            refuse_attach(q)?;
        }
        let text = q.render(super::Dialect::Sqlite);
        if uses_keyword(&text, TRANSACTION_CONTROL) || starts_a_statement(&text, TRANSACTION_END_STATEMENTS) {
            return Err(refused(
                "BEGIN, COMMIT, ROLLBACK, END, ABORT, SAVEPOINT and RELEASE are not allowed inside a batch \
                 transaction (the batch commits or rolls back as a whole)"
                    .to_owned(),
            ));
        }
        if state.open.is_none() {
            state.open = Some(begin(pool, limits).await?);
        }
        state.in_flight = true;
        let Some(open) = state.open.as_mut() else {
            unreachable!("begun just above")
        };
        let (result, savepoint) = match open {
            Open::Sqlite(tx) => {
                let c: &mut sqlx::SqliteConnection = tx;
                (&mut *c).execute("SAVEPOINT avap_statement").await?;
                let result = sqlite_statement(c, want, q, limits).await;
                c.lock_handle().await?.remove_progress_handler();
                let closed = (&mut *c).execute(close_savepoint(result.is_ok())).await;
                (result, closed.map(drop).map_err(|e| db_message(&e)))
            }
            Open::Postgres(tx) => {
                let c: &mut sqlx::PgConnection = tx;
                let start = format!("SAVEPOINT avap_statement; {}", pg_statement_timeout(limits));
                (&mut *c).execute(start.as_str()).await?;
                let result = pg_statement(c, want, q, limits).await;
                let closed = (&mut *c).execute(close_savepoint(result.is_ok())).await;
                (result, closed.map(drop).map_err(|e| db_message(&e)))
            }
        };
        state.in_flight = false;
        if let Err(e) = savepoint {
            let why = format!("the statement's savepoint could not be closed ({e}); did the SQL end the transaction?");
            state.broken = Some(why.clone());
            return Err(refused(format!("the batch transaction is broken: {why}")));
        }
        result
    }

    /// Commit (`commit`, and nothing broke the transaction) or roll back;
    /// the connection goes back to its pool (and is reset there). Bounded
    /// by the statement timeout: a commit that takes longer is abandoned
    /// and rolled back.
    pub async fn finish(&self, commit: bool) -> TransactionOutcome {
        match self.end(commit).await {
            TransactionOutcome::RolledBack { reason: Some(reason) } => TransactionOutcome::RolledBack {
                reason: Some(self.secrets.scrub(&reason).into_owned()),
            },
            outcome => outcome,
        }
    }

    /// [`Transaction::finish`], the reason unfiltered.
    async fn end(&self, commit: bool) -> TransactionOutcome {
        let mut state = self.state.lock().await;
        state.finished = true;
        if std::mem::take(&mut state.in_flight) {
            state
                .broken
                .get_or_insert_with(|| "a statement was cut off mid-way".to_owned());
        }
        let broken = state.broken.take();
        let Some(open) = state.open.take() else {
            // Nothing ran: nothing to commit or roll back.
            return match (commit, broken) {
                (true, None) => TransactionOutcome::Committed,
                (_, reason) => TransactionOutcome::RolledBack { reason },
            };
        };
        let timeout = self.limits.statement_timeout.max(Duration::from_secs(1));
        if !commit || broken.is_some() {
            // On timeout or failure, dropping `open` rolls back (or the
            // connection is closed on release).
            let _ = tokio::time::timeout(timeout, rollback(open)).await;
            return TransactionOutcome::RolledBack { reason: broken };
        }
        let committed = match open {
            Open::Sqlite(tx) => tokio::time::timeout(timeout, tx.commit()).await,
            Open::Postgres(tx) => tokio::time::timeout(timeout, tx.commit()).await,
        };
        match committed {
            Ok(Ok(())) => TransactionOutcome::Committed,
            Ok(Err(e)) => TransactionOutcome::RolledBack {
                reason: Some(format!("COMMIT failed: {}", db_message(&e))),
            },
            Err(_) => TransactionOutcome::RolledBack {
                reason: Some(format!("COMMIT took longer than {} ms", timeout.as_millis())),
            },
        }
    }
}

fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        other => other.to_string(),
    }
}

/// `BEGIN` on a connection of the pool; on `PostgreSQL` read-only when the
/// limits say so.
async fn begin(pool: &Pool, limits: &DbLimits) -> Result<Open, Failure> {
    Ok(match pool {
        Pool::Sqlite(p) => Open::Sqlite(p.begin().await?),
        Pool::Postgres(p) => {
            let mut tx = p.begin().await?;
            if limits.read_only {
                tx.execute("SET TRANSACTION READ ONLY").await?;
            }
            Open::Postgres(tx)
        }
    })
}

async fn rollback(open: Open) {
    match open {
        Open::Sqlite(mut tx) => {
            // An expired deadline of a cut-off statement must not interrupt
            // the rollback.
            if let Ok(mut handle) = tx.lock_handle().await {
                handle.remove_progress_handler();
            }
            let _ = tx.rollback().await;
        }
        Open::Postgres(tx) => {
            let _ = tx.rollback().await;
        }
    }
}

/// The SQL that closes the statement's savepoint: release it, or (after a
/// failure) roll back to it first. When it fails, the savepoint is gone:
/// the SQL ended the transaction, or the connection failed.
fn close_savepoint(succeeded: bool) -> &'static str {
    if succeeded {
        "RELEASE SAVEPOINT avap_statement"
    } else {
        "ROLLBACK TO SAVEPOINT avap_statement; RELEASE SAVEPOINT avap_statement"
    }
}

#[cfg(test)]
mod statement_words {
    use super::{TRANSACTION_END_STATEMENTS, starts_a_statement};

    #[test]
    fn end_and_abort_are_refused_only_as_statements() {
        for sql in [
            "END",
            "end transaction",
            "  End;",
            "INSERT INTO t VALUES (1); END",
            "abort",
        ] {
            assert!(starts_a_statement(sql, TRANSACTION_END_STATEMENTS), "{sql}");
        }
        for sql in [
            "SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END FROM t",
            "UPDATE t SET ended = 1",
            "SELECT * FROM endpoints",
        ] {
            assert!(!starts_a_statement(sql, TRANSACTION_END_STATEMENTS), "{sql}");
        }
    }
}
