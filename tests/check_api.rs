//! `avap check --format json` and `POST /api/v1/check` answer the same
//! document, byte for byte; and the playground follows its config key on a
//! real `avap serve` (on by default on loopback, off with `--playground
//! off` or `AVAP_PLAYGROUND=off`), its files open and its API calls
//! needing a key where keys are required.

use std::process::Command;

use serde_json::json;

mod support;

use support::{Server, create_api_key, fresh_dir, serve_command};

/// What `avap check --format json [--deny-warnings] FILE` prints.
fn cli_report(file: &std::path::Path, deny_warnings: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avap"));
    cmd.args(["check", "--format", "json"]);
    if deny_warnings {
        cmd.arg("--deny-warnings");
    }
    let out = cmd.arg(file).output().expect("run avap check");
    assert!(out.status.code().is_some_and(|c| c <= 1), "{out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn the_check_endpoint_answers_what_the_cli_prints() {
    let dir = fresh_dir("check-api");
    let server = Server::start("check-api-server");
    let scripts = [
        (
            "clean.avap",
            "addParam(name, who)\nrandomString(\"[a-z]\", 8, tag)\naddResult(who)\naddResult(tag)\n",
        ),
        ("broken.avap", "if(x, 1, =)\naddVar(y, 2)\nz = (1 +\n"),
        (
            "warned.avap",
            "addvar(x, 1)\n// ünïcödé in a comment, then an error past it\nx = ]\n",
        ),
        ("empty.avap", ""),
    ];
    for (name, source) in scripts {
        let path = dir.join(name);
        std::fs::write(&path, source).expect("write the script");
        for deny_warnings in [false, true] {
            let cli = cli_report(&path, deny_warnings);
            let body = json!({
                "script": source,
                "file": path.display().to_string(),
                "deny_warnings": deny_warnings,
            });
            let reply = server.post("/api/v1/check", &body.to_string());
            assert_eq!(reply.status, 200, "{name}: {}", reply.body);
            assert_eq!(reply.body, cli, "{name} (deny_warnings {deny_warnings})");
        }
    }
}

#[test]
fn the_playground_follows_its_config_key() {
    let on = Server::start("playground-default");
    let page = on.get("/playground");
    assert_eq!(page.status, 200, "on by default on a loopback address");
    assert!(page.body.contains("AVAP playground"));

    let data_dir = fresh_dir("playground-off").join("data");
    let mut cmd = serve_command(&data_dir);
    cmd.args(["--playground", "off"]);
    let off = Server::spawn(cmd, data_dir);
    assert_eq!(off.get("/playground").error_kind(), (404, "NotFound".to_owned()));

    let data_dir = fresh_dir("playground-env-off").join("data");
    let mut cmd = serve_command(&data_dir);
    cmd.env("AVAP_PLAYGROUND", "off");
    let off = Server::spawn(cmd, data_dir);
    assert_eq!(off.get("/playground/playground.js").status, 404);
}

#[test]
fn the_page_is_open_and_its_checks_need_an_execute_key_where_keys_are_required() {
    let data_dir = fresh_dir("playground-keys").join("data");
    let execute = create_api_key(&data_dir, "execute");
    let registry = create_api_key(&data_dir, "registry");
    let mut cmd = serve_command(&data_dir);
    cmd.arg("--require-api-key");
    let server = Server::spawn(cmd, data_dir);
    assert_eq!(server.get("/playground").status, 200);
    assert_eq!(server.get("/playground/language.json").status, 200);
    let body = json!({"script": "x = 1\n"});
    assert_eq!(
        server.post("/api/v1/check", &body.to_string()).error_kind(),
        (401, "Unauthorized".to_owned())
    );
    let checked = server.as_key(&execute, "POST", "/api/v1/check", Some(&body));
    assert_eq!((checked.status, &checked.json()["ok"]), (200, &json!(true)));
    let wrong_scope = server.as_key(&registry, "POST", "/api/v1/check", Some(&body));
    assert_eq!(wrong_scope.error_kind(), (403, "Forbidden".to_owned()));
}
