//! `avap backup` while a server keeps writing, and `avap restore` of that
//! backup into another backend: the restored registry runs the same scripts.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

mod support;

use support::{PgDatabase, Server, avap, fresh_dir};

fn source(n: usize) -> String {
    format!("addParam(name, who)\nmessage = \"Hello #{n}, \" + who\naddResult(message)\n")
}

fn avap_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(args)
        .output()
        .expect("run avap");
    assert!(!out.status.success(), "avap {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_backup_taken_under_writes_restores_into_postgres_and_runs() {
    let server = Server::start("backup-source");
    let data_dir = server.data_dir.clone();
    for n in 0..3 {
        let r = server.post_json(
            "/api/v1/scripts",
            &json!({"name": format!("s{n}"), "source": source(n)}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // A writer keeps storing new versions while the backups are taken.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        let addr = server.addr.clone();
        std::thread::spawn(move || {
            let mut n = 100;
            while writing.load(Ordering::SeqCst) {
                let body = json!({"name": format!("s{}", n % 3), "source": source(n)}).to_string();
                let _ = support::send_to(&addr, &support::post_request("/api/v1/scripts", body.as_bytes()));
                n += 1;
            }
            n - 100
        })
    };
    let dir = fresh_dir("backup-files");
    let file = dir.join("avap.backup");
    for _ in 0..3 {
        avap(&[
            "backup",
            file.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ]);
    }
    writing.store(false, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(written > 0, "the writer stored versions during the backups");
    assert!(!dir.join("avap.backup.partial").exists());

    // Into an empty PostgreSQL database; the restoring nodes share the key.
    let db = PgDatabase::create("restore");
    avap(&["restore", file.to_str().unwrap(), "--database-url", &db.url]);
    // The restore is in the audit trail, naming the file.
    let restore_rows = format!(
        "SELECT outcome || ' ' || (subject = '{}')::text FROM audit_log WHERE action = 'restore'",
        file.display()
    );
    assert_eq!(db.query(&restore_rows), "ok true");
    let restored_dir = fresh_dir("backup-restored").join("data");
    std::fs::create_dir_all(restored_dir.join("keys")).unwrap();
    for name in ["server.key", "server.pub"] {
        std::fs::copy(data_dir.join("keys").join(name), restored_dir.join("keys").join(name)).unwrap();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&restored_dir)
        .env("AVAP_DATABASE_URL", &db.url);
    let restored = Server::spawn(cmd, restored_dir);
    let backup_text = std::fs::read_to_string(&file).unwrap();
    for n in 0..3 {
        let name = format!("s{n}");
        let shown = restored.get(&format!("/api/v1/scripts/{name}"));
        assert_eq!(shown.status, 200, "{}", shown.body);
        let version = shown.json()["version"].as_i64().unwrap();
        let run = restored.get(&format!("/api/v1/run/{name}?name=Ana"));
        assert_eq!(run.status, 200, "{}", run.body);
        let message = run.json()["result"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.starts_with("Hello #") && message.ends_with(", Ana"),
            "{message}"
        );
        // The restored current version is the one the backup recorded.
        let line = backup_text
            .lines()
            .find(|l| l.contains("\"type\":\"script\"") && l.contains(&format!("\"name\":\"{name}\"")))
            .unwrap();
        assert!(line.contains(&format!("\"current_version\":{version}")), "{line}");
    }

    // A second restore into the same database is refused unless asked to replace.
    let refused = avap_fails(&["restore", file.to_str().unwrap(), "--database-url", &db.url]);
    assert!(refused.contains("--replace"), "{refused}");
    // A truncated backup changes nothing.
    let truncated = dir.join("truncated.backup");
    let keep = backup_text.len() / 2;
    std::fs::write(&truncated, &backup_text.as_bytes()[..keep]).unwrap();
    let before = db.query("SELECT COUNT(*) FROM script_versions");
    let bad = avap_fails(&[
        "restore",
        truncated.to_str().unwrap(),
        "--replace",
        "--database-url",
        &db.url,
    ]);
    assert!(bad.contains("is not a usable backup"), "{bad}");
    assert_eq!(db.query("SELECT COUNT(*) FROM script_versions"), before);
    avap(&[
        "restore",
        file.to_str().unwrap(),
        "--replace",
        "--database-url",
        &db.url,
    ]);
}

#[test]
fn migrate_reports_and_applies_migrations() {
    let db = PgDatabase::create("migrate");
    let status = avap(&["migrate", "--status", "--database-url", &db.url]);
    assert!(status.contains("pending"), "{status}");
    let applied = avap(&["migrate", "--database-url", &db.url]);
    assert!(applied.contains("applied now"), "{applied}");
    let again = avap(&["migrate", "--status", "--database-url", &db.url]);
    assert!(!again.contains("pending") && again.contains("applied"), "{again}");
    assert_eq!(db.query("SELECT COUNT(*) FROM scripts"), "0");
}
