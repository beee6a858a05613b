//! `avap audit`: the host surface under a deployment's policy, and one
//! artifact's admission. Tables and JSON are pinned with insta snapshots
//! (`tests/snapshots/audit_cli__*.snap`); content hashes are masked so that
//! compiler changes do not churn them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file};
use avap_hostfns::artifact::{self, Meta, SigningKey, SourceMap};

/// A fresh directory for one test, with a config file pinning every limit
/// (the built-in memory default depends on the machine).
fn workdir(name: &str, extra_config: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("audit-cli").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let config = format!(
        "data_dir = \"/srv/avap-audit\"\n{extra_config}\n[limits]\nfuel = 50000000\ntime_ms = 5000\nmemory_mb = 64\nstack_kb = 256\noutput_kb = 1024\n"
    );
    std::fs::write(dir.join("avap.toml"), config).expect("write config");
    dir
}

/// Run `avap audit --config avap.toml ARGS` in `dir`, with no `AVAP_*`
/// variables and no user config directory.
fn audit(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.current_dir(dir)
        .arg("audit")
        .args(["--config", "avap.toml"])
        .args(args)
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AVAP_") {
            cmd.env_remove(key);
        }
    }
    cmd.output().expect("run avap audit")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Mask SHA-256 digests (they change with the compiler).
fn masked(text: &str) -> String {
    regex::Regex::new("[0-9a-f]{64}")
        .unwrap()
        .replace_all(text, "<sha256>")
        .into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

const SCRIPT: &str = "addParam(\"q\", q)\nRequestGet(\"https://example.com/\", \"\", \"\", page)\n\
                      ormDirect(\"SELECT 1\", rows)\nrandomString(\"[a-z]\", 4, token)\naddResult(page)\n";

fn compiled(source: &str, key: Option<&SigningKey>) -> Vec<u8> {
    let checked = check_file(SourceFile::new("script.avap", source), &NoIncludes);
    assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
    avap_codegen::compile(&checked, key).bytes
}

#[test]
fn surface_table() {
    let dir = workdir("surface-table", "");
    let out = audit(&dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for c in avap_hostfns::commands() {
        assert!(text.contains(c.name), "{} missing", c.name);
    }
    insta::assert_snapshot!("surface_table", text);
}

#[test]
fn surface_json_under_a_config_that_denies_classes() {
    // `rand` is the spec's name for `random`; config and flags accept both.
    let dir = workdir("surface-json", "deny_capabilities = [\"db\", \"rand\"]");
    let out = audit(&dir, &["--json", "--deny", "net"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["policy"]["denied"], serde_json::json!(["random", "net", "db"]));
    let commands = doc["commands"].as_array().unwrap();
    assert_eq!(commands.len(), avap_hostfns::commands().len());
    let get = commands.iter().find(|c| c["name"] == "RequestGet").unwrap();
    assert_eq!(get["class"], "net");
    assert_eq!(get["allowed"], false);
    assert!(get["reach"].as_str().unwrap().starts_with("nothing: denied by policy"));
    let ai = commands.iter().find(|c| c["name"] == "functionAI").unwrap();
    assert_eq!(ai["allowed"], true);
    assert!(
        ai["limits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("outbound timeout"))
    );
    let helpers = doc["helpers"].as_array().unwrap();
    assert_eq!(helpers.len(), avap_hostfns::abi::Helper::ALL.len());
    insta::assert_snapshot!("surface_json_denying", stdout(&out));
}

#[test]
fn net_reach_names_the_outbound_default_deny() {
    let dir = workdir("surface-net", "");
    let doc = json(&audit(&dir, &["--json"]));
    let classes = doc["classes"].as_array().unwrap();
    let net = classes.iter().find(|c| c["class"] == "net").unwrap();
    let reach = net["reach"].as_str().unwrap();
    assert!(
        reach.contains("hosts allowed by outbound policy beyond that: none")
            && reach.contains("loopback/private/link-local"),
        "{reach}"
    );
    assert_eq!(net["commands"], serde_json::json!(["RequestGet", "RequestPost"]));
}

#[test]
fn reach_comes_from_the_serve_config() {
    let dir = workdir(
        "surface-reach",
        "outbound_allow = [\"10.0.0.0/8\", \"mock.internal:8080\"]\n\
         outbound_timeout_ms = 2500\n\
         ai_endpoint = \"https://ai.example.com/v1/ask\"\n\
         app_database_url = \"postgres://app:secret@127.0.0.1:5432/test\"\n\
         db_read_only = true\n\
         db_max_rows = 77\n\
         [connectors]\n\
         tok123 = \"sqlite:/srv/conn.sqlite\"",
    );
    let out = audit(&dir, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc = json(&out);
    let reach = &doc["reach"];
    assert_eq!(
        reach["outbound_allow"],
        serde_json::json!(["10.0.0.0/8", "mock.internal:8080"])
    );
    assert_eq!(reach["outbound_timeout_ms"], 2500);
    assert_eq!(reach["app_database"], "postgres://app:***@127.0.0.1:5432/test");
    assert_eq!(reach["connectors"], 1);
    assert_eq!(reach["db_read_only"], true);
    let text = stdout(&out);
    assert!(
        !text.contains("secret") && !text.contains("tok123"),
        "secrets leak: {text}"
    );
    let commands = doc["commands"].as_array().unwrap();
    let get = commands.iter().find(|c| c["name"] == "RequestGet").unwrap();
    assert!(
        get["reach"]
            .as_str()
            .unwrap()
            .contains("10.0.0.0/8, mock.internal:8080"),
        "{get}"
    );
    assert!(
        get["limits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "outbound timeout: 2500 ms per call")
    );
    let select = commands.iter().find(|c| c["name"] == "ormAccessSelect").unwrap();
    assert!(
        select["reach"]
            .as_str()
            .unwrap()
            .ends_with("named connectors: 1; read-only"),
        "{select}"
    );
    assert!(
        select["limits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "rows: 77 per result")
    );
    let ai = commands.iter().find(|c| c["name"] == "functionAI").unwrap();
    assert!(
        ai["reach"].as_str().unwrap().contains("https://ai.example.com/v1/ask"),
        "{ai}"
    );
}

#[test]
fn a_script_is_compiled_and_admitted() {
    let dir = workdir("script-admitted", "");
    std::fs::write(dir.join("script.avap"), SCRIPT).unwrap();
    let out = audit(&dir, &["script.avap"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    insta::assert_snapshot!("script_admitted", masked(&stdout(&out)));
}

#[test]
fn a_denied_class_refuses_the_artifact_with_command_and_line() {
    let dir = workdir("wasm-refused", "deny_capabilities = [\"db\"]");
    std::fs::write(dir.join("script.wasm"), compiled(SCRIPT, None)).unwrap();
    let out = audit(&dir, &["script.wasm", "--deny", "net"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("uses `RequestGet` (line 2), which needs the `net` capability"),
        "{text}"
    );
    assert!(
        text.contains("uses `ormDirect` (line 3), which needs the `db` capability"),
        "{text}"
    );
    insta::assert_snapshot!("wasm_refused_table", masked(&text));

    let out = audit(&dir, &["script.wasm", "--deny", "net", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc = json(&out);
    assert_eq!(doc["admitted"], false);
    assert_eq!(doc["imports_agree"], true);
    assert_eq!(doc["refusals"].as_array().unwrap().len(), 2);
    insta::assert_snapshot!("wasm_refused_json", masked(&stdout(&out)));
}

#[test]
fn signatures_are_checked_against_trusted_keys() {
    let dir = workdir("signed", "");
    let key = SigningKey::from_bytes(&[5; 32]);
    let other = SigningKey::from_bytes(&[6; 32]);
    std::fs::write(dir.join("signed.wasm"), compiled(SCRIPT, Some(&key))).unwrap();
    std::fs::write(dir.join("unsigned.wasm"), compiled(SCRIPT, None)).unwrap();
    std::fs::write(dir.join("key.pub"), artifact::encode_public_key(&key.verifying_key())).unwrap();
    std::fs::write(
        dir.join("other.pub"),
        artifact::encode_public_key(&other.verifying_key()),
    )
    .unwrap();
    let id = artifact::key_id(&key.verifying_key());

    let doc = json(&audit(&dir, &["signed.wasm", "--json", "--trust", "key.pub"]));
    assert_eq!(doc["admitted"], true, "{doc}");
    assert_eq!(doc["signature"]["status"], "valid");
    assert_eq!(doc["signature"]["key_id"], id.as_str());

    let out = audit(&dir, &["signed.wasm", "--json", "--trust", "other.pub"]);
    assert_eq!(out.status.code(), Some(1));
    let doc = json(&out);
    assert_eq!(doc["signature"]["status"], "untrusted");

    // Without --trust the signature is listed, not checked.
    let doc = json(&audit(&dir, &["signed.wasm", "--json"]));
    assert_eq!(doc["signature"]["status"], "unchecked");
    assert_eq!(doc["admitted"], true);

    // Tampering breaks the signature.
    let mut bytes = compiled(SCRIPT, Some(&key));
    let meta_at = bytes.windows(9).position(|w| w == b"avap.meta").unwrap();
    bytes[meta_at + 40] ^= 1;
    std::fs::write(dir.join("tampered.wasm"), bytes).unwrap();
    let out = audit(&dir, &["tampered.wasm", "--trust", "key.pub"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));

    let out = audit(&dir, &["unsigned.wasm", "--json", "--trust", "key.pub"]);
    assert_eq!(out.status.code(), Some(1));
    let out = audit(
        &dir,
        &["unsigned.wasm", "--json", "--trust", "key.pub", "--allow-unsigned"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn metadata_that_hides_an_import_is_reported_and_refused() {
    // A module importing `RequestGet` whose metadata lists only `addVar`.
    let wasm = wat::parse_str(
        r#"(module
             (import "avap" "addVar" (func (param i32 i32) (result i32 i64)))
             (import "avap" "RequestGet" (func (param i32 i32) (result i32 i64)))
             (memory (export "memory") 1)
             (func (export "main") (result i32) i32.const 0))"#,
    )
    .unwrap();
    let mut meta = Meta::from_json(&artifact_meta_json()).unwrap();
    meta.imports.retain(|i| i.name == "addVar");
    let bytes = artifact::append_sections(&wasm, &meta, &SourceMap::default());
    let dir = workdir("mismatch", "");
    std::fs::write(dir.join("hidden.wasm"), bytes).unwrap();
    let out = audit(&dir, &["hidden.wasm"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("imports:    MISMATCH"), "{text}");
    let get = text.lines().find(|l| l.starts_with("RequestGet ")).unwrap();
    assert_eq!(
        get.split_whitespace().collect::<Vec<_>>(),
        ["RequestGet", "net", "-", "wasm", "only", "yes"]
    );
    let doc = json(&audit(&dir, &["hidden.wasm", "--json"]));
    assert_eq!(doc["imports_agree"], false);
    let get = doc["imports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "RequestGet")
        .unwrap();
    assert_eq!(
        (get["in_meta"].as_bool(), get["in_wasm"].as_bool()),
        (Some(false), Some(true))
    );
}

/// The metadata of a real compiled artifact, as JSON.
fn artifact_meta_json() -> Vec<u8> {
    let bytes = compiled(
        "addVar(a, 1)\nRequestGet(\"https://example.com/\", \"\", \"\", r)\n",
        None,
    );
    artifact::inspect(&bytes).unwrap().meta.to_json()
}

#[test]
fn usage_errors_exit_two() {
    let dir = workdir("usage", "");
    let out = audit(&dir, &["--deny", "network"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`network` is not a capability class; the classes are pure"),
        "{}",
        stderr(&out)
    );
    let out = audit(&dir, &["missing.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read missing.wasm"), "{}", stderr(&out));
    std::fs::write(dir.join("bad.toml"), "deny_capabilities = [\"nett\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .current_dir(&dir)
        .args(["audit", "--config", "bad.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("deny_capabilities"), "{}", stderr(&out));
}
