//! `avap conformance DIR --json` on a small generated corpus: one case that
//! passes, one that fails on purpose.

use std::path::PathBuf;
use std::process::Command;

fn corpus(tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("conformance-runner-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write corpus file");
    }
    dir
}

#[test]
fn json_summary_counts_and_exit_code() {
    let dir = corpus(
        "mixed",
        &[
            ("hello.avap", "addVar(greeting, 'Hello')\naddResult(greeting)\n"),
            (
                "hello.expected.json",
                r#"{
                  "program": "hello.avap",
                  "confidence": "high",
                  "cases": [
                    {"name": "passes", "request": {"method": "GET", "path": "/", "query": {}, "json": null, "form": null},
                     "expected": {"http_status": 200, "result": {"greeting": "Hello"}}},
                    {"name": "fails", "expected": {"http_status": 200, "result": {"greeting": "Goodbye"}}}
                  ]
                }"#,
            ),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(["conformance", dir.to_str().unwrap(), "--json"])
        .output()
        .expect("run avap");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");

    let last = stdout.lines().last().expect("a JSON line on stdout");
    let doc: serde_json::Value = serde_json::from_str(last).expect("last stdout line is JSON");
    assert_eq!(doc["passed"], 1, "{doc}");
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(doc["skipped"], 0, "{doc}");
    let cases = doc["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0]["name"], "hello");
    assert_eq!(cases[0]["case"], "passes");
    assert_eq!(cases[0]["ok"], true);
    assert_eq!(cases[1]["case"], "fails");
    assert_eq!(cases[1]["ok"], false);
    assert_eq!(cases[1]["skipped"], false);
    assert_eq!(
        cases[1]["detail"],
        "result.greeting: expected \"Goodbye\", got \"Hello\""
    );

    // Human lines go to stderr under --json.
    assert!(stderr.contains("PASS hello/passes"), "{stderr}");
    assert!(stderr.contains("FAIL hello/fails: result.greeting"), "{stderr}");
    assert!(stderr.contains("1 passed, 1 failed, 0 skipped"), "{stderr}");

    // --filter keeps only the passing case: exit 0, human output on stdout.
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(["conformance", dir.to_str().unwrap(), "--filter", "hello/pass"])
        .output()
        .expect("run avap");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("PASS hello/passes") && stdout.contains("1 passed, 0 failed, 0 skipped"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_directory_exits_two() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance-runner-does-not-exist");
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(["conformance", dir.to_str().unwrap(), "--json"])
        .output()
        .expect("run avap");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
