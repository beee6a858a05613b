//! `include` in `avap check`/`run`/`compile` reads only regular files under
//! the script's directory or an `--include-path`, at most the largest
//! script size; refusals are diagnostics at the include that never show
//! the refused file's content.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `avap ARGS`, killed and failed after 30 s: a refusal that reads
/// `/dev/zero` or opens a FIFO would otherwise hang the test.
fn avap(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run avap");
    let started = Instant::now();
    while child.try_wait().expect("wait for avap").is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("avap {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("avap output")
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("include-cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn write(path: &Path, text: &str) -> String {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).expect("write");
    path.to_str().unwrap().to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `avap check --no-color FILE [EXTRA…]`: exit code and stderr.
fn check(file: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["check", "--no-color", file];
    args.extend_from_slice(extra);
    let out = avap(&args);
    (out.status.code(), stderr(&out))
}

/// A refusal: E0060 at line 1 with a caret under the path, `note` in the
/// text, and `secret` nowhere in it.
fn assert_refused(text: &str, note: &str, secret: &str) {
    assert!(text.contains("error[E0060]: cannot include"), "{text}");
    assert!(text.contains(":1:9"), "at the include's line and column: {text}");
    assert!(text.contains("^^^"), "with a caret: {text}");
    assert!(text.contains(note), "expected {note:?} in: {text}");
    assert!(!text.contains(secret), "the refused file's content leaked: {text}");
}

const LIB: &str = "function twice(x) {\n    return(x * 2)\n}\n";
/// Content of files that must never be read into diagnostics.
const SECRET: &str = "TOP-SECRET-LINE = 1\n";

#[test]
fn dev_zero_is_refused_without_reading_it() {
    let d = dir("dev_zero");
    let main = write(&d.join("main.avap"), "include(\"/dev/zero\")\naddResult(x)\n");
    let out = avap(&["run", &main]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the envelope");
    assert_eq!(v["error"]["kind"], "CompileError");
    assert_eq!(v["error"]["line"], 1);
    let diagnostic = &v["error"]["diagnostics"][0];
    assert_eq!(diagnostic["code"], "E0060");
    let notes = diagnostic["notes"].to_string();
    assert!(
        notes.contains("include path /dev/zero is outside the script's directory"),
        "{notes}"
    );
    assert_eq!(
        diagnostic["help"],
        "pass --include-path /dev to allow it (include reads only under the script's directory and the --include-path directories)"
    );

    // Allowed by directory, still not a regular file.
    let (code, text) = check(&main, &["--include-path", "/dev"]);
    assert_eq!(code, Some(1));
    assert_refused(
        &text,
        "/dev/zero is a character device: include reads only regular files",
        "\0",
    );
}

#[test]
fn etc_passwd_is_refused_and_never_shown() {
    let d = dir("passwd");
    let main = write(&d.join("main.avap"), "include(\"/etc/passwd\")\n");
    let (code, text) = check(&main, &[]);
    assert_eq!(code, Some(1));
    assert_refused(
        &text,
        "include path /etc/passwd is outside the script's directory",
        "root:",
    );
    assert!(text.contains("pass --include-path /etc to allow it"), "{text}");
    // `compile` refuses the same way and writes nothing.
    let out = avap(&["compile", &main]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("outside the script's directory"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("root:"));
    assert!(!d.join("main.wasm").exists());
}

#[test]
fn dot_dot_cannot_leave_the_script_directory() {
    let d = dir("dotdot");
    write(&d.join("secret.avap"), SECRET);
    let main = write(&d.join("app/main.avap"), "include(\"../secret.avap\")\n");
    let (code, text) = check(&main, &[]);
    assert_eq!(code, Some(1));
    let resolved = std::fs::canonicalize(d.join("secret.avap")).unwrap();
    assert_refused(
        &text,
        &format!("`../secret.avap` resolves to {}, which is outside", resolved.display()),
        "TOP-SECRET",
    );
    // The same through a subdirectory's include: the allowed directory is the script's.
    let nested = write(&d.join("app/lib/helper.avap"), "include(\"../../secret.avap\")\n");
    let main2 = write(&d.join("app/main2.avap"), "include(\"lib/helper.avap\")\n");
    let (code, text) = check(&main2, &[]);
    assert_eq!(code, Some(1), "{nested}: {text}");
    assert!(text.contains("outside the script's directory"), "{text}");
    assert!(!text.contains("TOP-SECRET"), "{text}");
}

#[cfg(unix)]
#[test]
fn symlinks_are_resolved_before_the_check() {
    use std::os::unix::fs::symlink;
    let d = dir("symlink");
    write(&d.join("outside/secret.avap"), SECRET);
    std::fs::create_dir_all(d.join("app")).unwrap();
    symlink(d.join("outside/secret.avap"), d.join("app/link.avap")).unwrap();
    symlink(d.join("outside"), d.join("app/linked_dir")).unwrap();
    for include in ["link.avap", "linked_dir/secret.avap"] {
        let main = write(&d.join("app/main.avap"), &format!("include(\"{include}\")\n"));
        let (code, text) = check(&main, &[]);
        assert_eq!(code, Some(1), "{include}");
        assert_refused(&text, &format!("`{include}` resolves to"), "TOP-SECRET");
        assert!(text.contains("outside the script's directory"), "{text}");
    }
    // A symlink that stays inside is fine.
    write(&d.join("app/real/lib.avap"), LIB);
    symlink(d.join("app/real/lib.avap"), d.join("app/inside.avap")).unwrap();
    let main = write(
        &d.join("app/main.avap"),
        "include(\"inside.avap\")\ny = twice(2)\naddResult(y)\n",
    );
    let (code, text) = check(&main, &[]);
    assert_eq!(code, Some(0), "{text}");
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_opening_it_for_long() {
    let d = dir("fifo");
    let fifo = d.join("pipe.avap");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let main = write(&d.join("main.avap"), "include(\"pipe.avap\")\n");
    let (code, text) = check(&main, &[]);
    assert_eq!(code, Some(1));
    assert_refused(&text, "is a FIFO: include reads only regular files", "TOP-SECRET");
}

#[test]
fn a_directory_is_refused() {
    let d = dir("directory");
    std::fs::create_dir_all(d.join("helpers")).unwrap();
    let main = write(&d.join("main.avap"), "include(\"helpers\")\n");
    let (code, text) = check(&main, &[]);
    assert_eq!(code, Some(1));
    assert_refused(&text, "is a directory: include reads only regular files", "TOP-SECRET");
}

#[test]
fn an_oversized_file_is_refused_before_it_is_read() {
    let d = dir("oversized");
    // 256 KiB of comments, one byte over the limit, after a secret line.
    let mut big = "// TOP-SECRET-LINE\n".to_owned();
    while big.len() < (256 << 10) + 1 {
        big.push_str("// padding padding padding padding padding padding padding padding\n");
    }
    big.truncate((256 << 10) + 1);
    write(&d.join("big.avap"), &big);
    let main = write(&d.join("main.avap"), "include(\"big.avap\")\n");
    let (code, text) = check(&main, &[]);
    assert_eq!(code, Some(1));
    assert_refused(
        &text,
        "is larger than the 262144 bytes a script may have (262145 bytes)",
        "TOP-SECRET",
    );
    // Exactly at the limit is fine.
    big.truncate(256 << 10);
    write(&d.join("big.avap"), &big);
    let (code, text) = check(&main, &[]);
    assert_eq!(code, Some(0), "{text}");
}

#[test]
fn include_path_allows_another_directory() {
    let d = dir("include_path");
    let shared = d.join("shared");
    write(&shared.join("lib.avap"), LIB);
    let src = "include(\"../shared/lib.avap\")\ny = twice(21)\naddResult(y)\n";
    let main = write(&d.join("app/main.avap"), src);
    let (code, text) = check(&main, &[]);
    assert_eq!(code, Some(1));
    let shared_canonical = std::fs::canonicalize(&shared).unwrap();
    assert!(
        text.contains(&format!(
            "pass --include-path {} to allow it",
            shared_canonical.display()
        )),
        "{text}"
    );

    let flag = shared.to_str().unwrap();
    let (code, text) = check(&main, &["--include-path", flag]);
    assert_eq!(code, Some(0), "{text}");
    let out = avap(&["run", &main, "--include-path", flag]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["y"], 42);
    let wasm = d.join("main.wasm");
    let out = avap(&["compile", &main, "-o", wasm.to_str().unwrap(), "--include-path", flag]);
    assert!(out.status.success(), "{}", stderr(&out));

    // An absolute path under the allowed directory works too.
    let lib = std::fs::canonicalize(shared.join("lib.avap")).unwrap();
    let main = write(
        &d.join("app/abs.avap"),
        &format!("include(\"{}\")\ny = twice(1)\naddResult(y)\n", lib.display()),
    );
    assert_eq!(check(&main, &["--include-path", flag]).0, Some(0));

    // A flag naming no directory is an error of the command, not of the script.
    let out = avap(&["check", &main, "--include-path", d.join("nope").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--include-path"), "{}", stderr(&out));
}

#[test]
fn includes_inside_the_script_directory_still_work() {
    let d = dir("normal");
    write(
        &d.join("helpers/lib.avap"),
        "include(\"../common.avap\")\nfunction twice(x) {\n    return(inc(x) * 2 - 2)\n}\n",
    );
    write(&d.join("common.avap"), "function inc(x) {\n    return(x + 1)\n}\n");
    let main = write(
        &d.join("main.avap"),
        "include(\"helpers/lib.avap\")\ny = twice(5)\naddResult(y)\n",
    );
    let out = avap(&["run", &main]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["y"], 10);
    // From another working directory, with a relative script path.
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .current_dir(&d)
        .args(["check", "main.avap"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
