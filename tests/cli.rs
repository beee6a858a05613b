//! The `avap` binary as a user runs it: exit codes, output formats.

use std::path::PathBuf;
use std::process::{Command, Output};

/// `avap ARGS`, its default data and config directories inside the target
/// directory (never the user's: `serve` and `audit` open the database there).
fn avap(args: &[&str]) -> Output {
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests-home");
    Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(args)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .output()
        .expect("run avap")
}

/// Write `src` to a fresh file under the target directory and return its path.
fn script(name: &str, src: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(name);
    std::fs::write(&path, src).expect("write script");
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_clean_script_exits_zero() {
    let path = script("clean.avap", "addVar(greeting, 'Hello')\naddResult(greeting)\n");
    let out = avap(&["check", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ok: 1 file checked, 0 errors, 0 warnings"));
}

#[test]
fn check_errors_exit_one_with_caret() {
    let path = script("broken.avap", "if(x, 1, =)\naddVar(y, 2)\n");
    let out = avap(&["check", "--no-color", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error[E0020]"), "{err}");
    assert!(err.contains("^^^^^^^^^^^ needs `end()`"), "{err}");
}

#[test]
fn warnings_pass_unless_denied() {
    let path = script("warn.avap", "addvar(x, 1)\n");
    let p = path.to_str().unwrap();
    let out = avap(&["check", p]);
    assert_eq!(out.status.code(), Some(0));
    let out = avap(&["check", "--deny-warnings", p]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("(warnings denied)"));
}

#[test]
fn check_json_for_editors() {
    let path = script("json.avap", "addvar(x, 1)\nend()\n");
    let out = avap(&["check", "--format", "json", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["ok"], false);
    let diags = doc["files"][0]["diagnostics"].as_array().expect("diagnostics");
    let codes: Vec<&str> = diags.iter().map(|d| d["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["W0001", "E0021"]);
    assert_eq!(diags[0]["line"], 1);
    assert_eq!(diags[0]["help"], "did you mean `addVar`?");
    assert_eq!(diags[1]["line"], 2);
}

#[test]
fn parse_json_prints_the_tree() {
    let path = script("tree.avap", "x = 1 + 2\n");
    let out = avap(&["parse", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let tree: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON AST");
    assert_eq!(tree["body"][0]["stmt"], "assign");
    assert_eq!(tree["body"][0]["value"]["expr"], "binary");
    assert_eq!(tree["span"], serde_json::json!([0, 10]));
}

#[test]
fn includes_resolve_relative_to_the_file() {
    script("helpers.avap", "function twice(x) {\n    return(x * 2)\n}\n");
    let main = script("main.avap", "include(\"helpers.avap\")\ny = twice(2)\naddResult(y)\n");
    let out = avap(&["check", main.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cyc = script("self.avap", "include(\"./self.avap\")\n");
    let out = avap(&["check", "--no-color", cyc.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("error[E0061]"));
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = avap(&["check", "/nonexistent/x.avap"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/x.avap"));
}

#[test]
fn serve_with_an_unusable_address_exits_two_and_says_why() {
    let out = avap(&["serve", "--listen", "256.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot listen"), "{}", text(&out.stderr));
}

#[test]
fn one_output_convention_with_the_old_spellings_kept() {
    let path = script("formats.avap", "x = 1\naddResult(x)\n");
    let file = path.to_str().unwrap();
    // `--format json` everywhere; `--json` is the older spelling of the same.
    for (new, old) in [
        (vec!["parse", file, "--format", "json"], vec!["parse", file, "--json"]),
        (vec!["check", file, "--format", "json"], vec!["check", file, "--json"]),
        (vec!["audit", "--format", "json"], vec!["audit", "--json"]),
    ] {
        let (a, b) = (avap(&new), avap(&old));
        assert!(a.status.success(), "{new:?}: {}", text(&a.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&a.stdout).expect("JSON on stdout");
        assert!(doc.is_object(), "{doc}");
        assert_eq!(text(&a.stdout), text(&b.stdout), "{new:?} = {old:?}");
    }
    let both = avap(&["parse", file, "--json", "--format", "human"]);
    assert_eq!(both.status.code(), Some(2), "contradicting flags are refused");
    // `avap run` prints JSON anyway: its body flag is --body, --json its alias.
    let echo = script("echo.avap", "addParam(name, n)\naddResult(n)\n");
    let echo = echo.to_str().unwrap();
    for flag in ["--body", "--json"] {
        let out = avap(&["run", echo, flag, r#"{"name": "Ada"}"#]);
        assert!(out.status.success(), "{flag}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(r#""n": "Ada""#), "{}", text(&out.stdout));
    }
}
