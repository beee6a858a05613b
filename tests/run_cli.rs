//! `avap run`, `compile`, `keygen`, `inspect` and `conformance` as a user
//! runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `avap ARGS`, with the module cache in the target directory (not the
/// user's).
fn avap(args: &[&str]) -> Output {
    avap_with_cache(
        args,
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-cli-module-cache"),
    )
}

fn avap_with_cache(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(args)
        .env("AVAP_CACHE_DIR", cache)
        .output()
        .expect("run avap")
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-cli").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn write(dir: &Path, name: &str, src: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, src).expect("write");
    p.to_str().unwrap().to_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const GREET: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";

#[test]
fn a_second_run_takes_the_compiled_module_from_the_cache() {
    let d = dir("module_cache");
    let cache = d.join("cache");
    let f = write(&d, "greet.avap", GREET);
    let run = |extra: &[&str]| {
        let mut args = vec!["run", f.as_str(), "--query", "name=Lin", "--usage"];
        args.extend_from_slice(extra);
        let out = avap_with_cache(&args, &cache);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(json(&out)["result"]["message"], "Hello, Lin");
        stderr(&out)
    };
    assert!(run(&[]).contains("module compiled, cached"));
    assert!(run(&[]).contains("module from the module cache"));
    assert!(run(&["--no-cache"]).contains("module compiled"));
    assert!(cache.join("cache.key").is_file());

    // A changed script is a new entry; a damaged entry is compiled again.
    let f2 = write(&d, "greet2.avap", &GREET.replace("Hello", "Hi"));
    let out = avap_with_cache(&["run", &f2, "-q", "name=Lin", "--usage"], &cache);
    assert_eq!(json(&out)["result"]["message"], "Hi, Lin");
    assert!(stderr(&out).contains("module compiled, cached"));
    for engine in std::fs::read_dir(&cache).unwrap() {
        let engine = engine.unwrap().path();
        if engine.is_dir() {
            for entry in std::fs::read_dir(&engine).unwrap() {
                std::fs::write(entry.unwrap().path(), b"AVAP-CWASM-2\nnot native code").unwrap();
            }
        }
    }
    assert!(run(&[]).contains("module compiled, cached"));
    assert!(run(&[]).contains("module from the module cache"));
}

#[test]
fn an_unusable_cache_directory_warns_and_runs_without_it() {
    let d = dir("module_cache_unusable");
    let f = write(&d, "greet.avap", GREET);
    // A file where the directory should be.
    let blocked = d.join("not-a-dir");
    std::fs::write(&blocked, "x").unwrap();
    let out = avap_with_cache(&["run", &f, "-q", "name=Lin", "--usage"], &blocked);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["result"]["message"], "Hello, Lin");
    let err = stderr(&out);
    assert!(err.contains("warning: cannot use the module cache directory"), "{err}");
    assert!(err.contains("--no-cache"), "{err}");
    let quiet = avap_with_cache(&["run", &f, "-q", "name=Lin", "--no-cache"], &blocked);
    assert!(stderr(&quiet).is_empty(), "{}", stderr(&quiet));
}

#[test]
fn run_prints_the_envelope_and_exits_zero() {
    let d = dir("run_ok");
    let f = write(&d, "greet.avap", GREET);
    let out = avap(&["run", &f, "--query", "name=Lin"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"], true);
    assert_eq!(v["result"]["message"], "Hello, Lin");
    assert!(v["elapsed"].is_f64());
}

#[test]
fn run_reads_a_json_body_and_a_request_file() {
    let d = dir("run_body");
    let f = write(&d, "greet.avap", GREET);
    let out = avap(&["run", &f, "--json", r#"{"name": "Ada"}"#]);
    assert_eq!(json(&out)["result"]["message"], "Hello, Ada");
    let req = write(&d, "req.json", r#"{"method": "POST", "query": {"name": "Bo"}}"#);
    let out = avap(&["run", &f, "--request", &req]);
    assert_eq!(json(&out)["result"]["message"], "Hello, Bo");
}

#[test]
fn runtime_error_exits_one_with_kind_line_and_column() {
    let d = dir("run_err");
    let f = write(&d, "bad.avap", "x = 1\ny = x + missing\n");
    let out = avap(&["run", &f]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["status"], false);
    assert_eq!(v["error"]["kind"], "NameError");
    assert_eq!(v["error"]["line"], 2);
    assert_eq!(v["error"]["column"], 9);
}

#[test]
fn compile_error_is_a_compile_error_envelope() {
    let d = dir("run_compile_err");
    let f = write(&d, "bad.avap", "addVar(x, 1)\nif(x, 1, =)\n");
    let out = avap(&["run", &f]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "CompileError");
    assert_eq!(v["error"]["line"], 2);
}

#[test]
fn limits_flag_applies_and_bad_limits_are_explained() {
    let d = dir("run_limits");
    let f = write(&d, "spin.avap", "startLoop(i, 1, 100000000000)\n  x = i\nendLoop()\n");
    let out = avap(&["run", &f, "--limits", "fuel=100000"]);
    assert_eq!(json(&out)["error"]["kind"], "FuelExhausted");
    let out = avap(&["run", &f, "--limits", "speed=9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown limit `speed`"), "{}", stderr(&out));
}

#[test]
fn signed_artifacts_run_only_with_a_trusted_key() {
    let d = dir("signing");
    let ds = d.to_str().unwrap();
    assert!(avap(&["keygen", "--out", ds, "--name", "ci"]).status.success());
    let src = write(&d, "greet.avap", GREET);
    let wasm = format!("{ds}/greet.wasm");
    let key = format!("{ds}/ci.key");
    let public = format!("{ds}/ci.pub");
    let out = avap(&["compile", &src, "-o", &wasm, "--key", &key, "--precompile"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Trusted: runs, also from the precompiled module whose seal is trusted.
    let out = avap(&["run", &wasm, "--trust", &public, "-q", "name=Sig"]);
    assert_eq!(json(&out)["result"]["message"], "Hello, Sig", "{}", stderr(&out));
    let cwasm = format!("{ds}/greet.cwasm");
    let out = avap(&[
        "run",
        &wasm,
        "--trust",
        &public,
        "--precompiled",
        &cwasm,
        "--trust-precompiled",
        &public,
        "-q",
        "name=Pre",
    ]);
    assert_eq!(json(&out)["result"]["message"], "Hello, Pre", "{}", stderr(&out));

    // Not trusted: refused before running.
    let out = avap(&["run", &wasm]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not trusted"), "{}", stderr(&out));

    // Tampered: refused.
    let mut bytes = std::fs::read(&wasm).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let bad = format!("{ds}/tampered.wasm");
    std::fs::write(&bad, &bytes).unwrap();
    let out = avap(&["run", &bad, "--trust", &public]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Unsigned: refused unless --allow-unsigned.
    let unsigned = format!("{ds}/unsigned.wasm");
    assert!(avap(&["compile", &src, "-o", &unsigned]).status.success());
    let out = avap(&["run", &unsigned]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not signed"), "{}", stderr(&out));
    let out = avap(&["run", &unsigned, "--allow-unsigned", "-q", "name=Dev"]);
    assert_eq!(json(&out)["result"]["message"], "Hello, Dev");

    // Inspect reports the signature and the imports.
    let out = avap(&["inspect", &wasm, "--trust", &public, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("addParam") && text.contains("request"), "{text}");
}

/// `avap run A.wasm --precompiled X.cwasm`: exit 2 and why, nothing run.
fn refused_precompiled(wasm: &str, cwasm: &str, trust: &[&str]) -> String {
    let mut args = vec!["run", wasm, "--precompiled", cwasm];
    args.extend_from_slice(trust);
    let out = avap(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "nothing ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr(&out)
}

/// Where the native code starts in a sealed `.cwasm` (magic, three header
/// lines, a 64-byte signature).
fn native_offset(cwasm: &[u8]) -> usize {
    let mut at = b"AVAP-CWASM-2\n".len();
    for _ in 0..3 {
        at += cwasm[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
    }
    at + 64
}

#[test]
fn a_precompiled_module_runs_only_with_a_seal_for_its_artifact_by_a_trusted_key() {
    let d = dir("sealed_cwasm");
    let ds = d.to_str().unwrap();
    assert!(avap(&["keygen", "--out", ds, "--name", "ci"]).status.success());
    assert!(avap(&["keygen", "--out", ds, "--name", "other"]).status.success());
    let (key, public) = (format!("{ds}/ci.key"), format!("{ds}/ci.pub"));
    // A reads only the request; B reaches the network.
    let a_src = write(&d, "a.avap", GREET);
    let b_src = write(
        &d,
        "b.avap",
        "RequestGet(\"http://127.0.0.1:9/\", \"\", \"\", page)\naddResult(page)\n",
    );
    for (src, name) in [(&a_src, "a"), (&b_src, "b")] {
        let wasm = format!("{ds}/{name}.wasm");
        let out = avap(&["compile", src, "-o", &wasm, "--key", &key, "--precompile"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("sealed by key"), "{}", stderr(&out));
    }
    let (a_wasm, a_cwasm, b_cwasm) = (format!("{ds}/a.wasm"), format!("{ds}/a.cwasm"), format!("{ds}/b.cwasm"));
    let trusted: &[&str] = &["--trust", &public, "--trust-precompiled", &public];

    // The honest path.
    let out = avap(&[
        "run",
        &a_wasm,
        "--trust",
        &public,
        "--precompiled",
        &a_cwasm,
        "--trust-precompiled",
        &public,
        "-q",
        "name=Ok",
    ]);
    assert_eq!(json(&out)["result"]["message"], "Hello, Ok", "{}", stderr(&out));

    // B's valid seal presented with A.
    let why = refused_precompiled(&a_wasm, &b_cwasm, trusted);
    assert!(why.contains("made from another artifact"), "{why}");

    // B's native code with A's hash in the header.
    let a_bytes = std::fs::read(&a_cwasm).unwrap();
    let b_bytes = std::fs::read(&b_cwasm).unwrap();
    let mut swapped = a_bytes[..native_offset(&a_bytes) - 64].to_vec();
    swapped.extend_from_slice(&b_bytes[native_offset(&b_bytes) - 64..]);
    let swapped_path = write(&d, "swapped.cwasm", "");
    std::fs::write(&swapped_path, &swapped).unwrap();
    let why = refused_precompiled(&a_wasm, &swapped_path, trusted);
    assert!(why.contains("does not match") && why.contains("tampered"), "{why}");

    // Tampered native code.
    let mut tampered = a_bytes.clone();
    let last = tampered.len() - 100;
    tampered[last] ^= 0x10;
    let tampered_path = write(&d, "tampered.cwasm", "");
    std::fs::write(&tampered_path, &tampered).unwrap();
    let why = refused_precompiled(&a_wasm, &tampered_path, trusted);
    assert!(why.contains("tampered"), "{why}");

    // The unsealed format of earlier versions.
    let sha = String::from_utf8(a_bytes[..native_offset(&a_bytes) - 64].to_vec()).unwrap();
    let sha = sha.lines().nth(3).unwrap().to_owned();
    let mut old = b"AVAP-CWASM-1\n".to_vec();
    old.extend_from_slice(sha.as_bytes());
    old.extend_from_slice(&a_bytes[native_offset(&a_bytes)..]);
    let old_path = write(&d, "old.cwasm", "");
    std::fs::write(&old_path, &old).unwrap();
    let why = refused_precompiled(&a_wasm, &old_path, trusted);
    assert!(
        why.contains("old unsealed format") && why.contains("avap compile --precompile --key"),
        "{why}"
    );

    // A key trusted for artifacts only, and a key trusted for nothing.
    let why = refused_precompiled(&a_wasm, &a_cwasm, &["--trust", &public]);
    assert!(
        why.contains("not trusted to seal precompiled modules") && why.contains("--trust-precompiled"),
        "{why}"
    );
    let other_sealed = format!("{ds}/other/a.wasm");
    std::fs::create_dir_all(format!("{ds}/other")).unwrap();
    let out = avap(&[
        "compile",
        &a_src,
        "-o",
        &other_sealed,
        "--key",
        &format!("{ds}/other.key"),
        "--precompile",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let why = refused_precompiled(
        &other_sealed,
        &format!("{ds}/other/a.cwasm"),
        &["--trust", &format!("{ds}/other.pub"), "--trust-precompiled", &public],
    );
    assert!(why.contains("not trusted to seal precompiled modules"), "{why}");

    // No key, no .cwasm.
    let out = avap(&["compile", &a_src, "-o", &format!("{ds}/nokey.wasm"), "--precompile"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--precompile needs --key"), "{}", stderr(&out));
    assert!(!d.join("nokey.cwasm").exists());
}

/// The whole public corpus: every case passes, or fails only because a
/// command with outside effects does not exist yet (issue 6).
#[test]
fn public_conformance_corpus_passes_except_unavailable_commands() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance");
    let out = avap(&["conformance", corpus, "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a JSON summary line");
    let v: serde_json::Value = serde_json::from_str(last).expect("JSON summary");
    assert!(v["passed"].as_u64().unwrap() >= 45, "{last}");
    for case in v["cases"].as_array().unwrap() {
        if case["ok"] != true {
            let detail = case["detail"].as_str().unwrap_or("");
            assert!(
                detail.contains("command not available yet"),
                "{}: {detail}",
                case["name"]
            );
        }
    }
}

#[test]
fn own_conformance_cases_all_pass() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance");
    let out = avap(&["conformance", corpus]);
    assert!(out.status.success(), "{}", stderr(&out));
}
