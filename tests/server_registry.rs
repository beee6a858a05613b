//! The script registry of `avap serve` as a client sees it: the real binary
//! on a loopback port, raw HTTP/1.1 over `TcpStream` (as in `tests/server.rs`).

use serde_json::{Value, json};

mod support;

use support::{Reply, Server, fresh_dir};

const HELLO: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";
const HOWDY: &str = "addParam(name, who)\nmessage = \"Howdy, \" + who\naddResult(message)\n";

fn store(s: &Server, name: &str, source: &str) -> Reply {
    s.post_json("/api/v1/scripts", &json!({"name": name, "source": source}))
}

fn message(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["result"]["message"].clone()
}

#[test]
fn store_version_run_and_roll_back() {
    let s = Server::start("round-trip");
    let r = store(&s, "hello", HELLO);
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    assert_eq!((v["name"].as_str(), v["version"].as_i64()), (Some("hello"), Some(1)));
    assert_eq!(v["source_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(v["artifact_sha256"].as_str().map(str::len), Some(64));

    // The same source again: no new version.
    let r = store(&s, "hello", HELLO);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["version"].as_i64(), r.json()["unchanged"].as_bool()),
        (Some(1), Some(true))
    );

    // The query of a GET, and the JSON body of a POST, are what addParam reads.
    assert_eq!(message(&s.get("/api/v1/run/hello?name=Lin")), "Hello, Lin");
    assert_eq!(message(&s.get("/api/v1/run/hello?name=Ada%20L+B")), "Hello, Ada L B");
    let r = s.post_json("/api/v1/run/hello", &json!({"name": "Bo"}));
    assert_eq!(message(&r), "Hello, Bo");
    let r = s.request(
        "POST",
        "/api/v1/run/hello",
        Some(("application/x-www-form-urlencoded", "name=Cy+D")),
    );
    assert_eq!(message(&r), "Hello, Cy D");
    let r = s.request("POST", "/api/v1/run/hello", Some(("application/json", "{\"name\": ")));
    assert_eq!(r.error_kind(), (400, "InvalidJson".to_owned()), "{}", r.body);

    // A changed source is version 2, and becomes current.
    let r = store(&s, "hello", HOWDY);
    assert_eq!((r.status, r.json()["version"].as_i64()), (201, Some(2)), "{}", r.body);
    assert_eq!(message(&s.get("/api/v1/run/hello?name=Lin")), "Howdy, Lin");

    let r = s.get("/api/v1/scripts/hello");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!((v["version"].as_i64(), v["source"].as_str()), (Some(2), Some(HOWDY)));
    assert_eq!(v["versions"].as_array().map(Vec::len), Some(2));
    let r = s.get("/api/v1/scripts");
    let list = r.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(
        (list[0]["name"].as_str(), list[0]["version"].as_i64()),
        (Some("hello"), Some(2))
    );

    // /api/v1/execute runs stored scripts by name, any version.
    let r = s.post_json("/api/v1/execute", &json!({"name": "hello", "params": {"name": "Ed"}}));
    assert_eq!(message(&r), "Howdy, Ed");
    let r = s.post_json(
        "/api/v1/execute",
        &json!({"name": "hello", "version": 1, "params": {"name": "Ed"}}),
    );
    assert_eq!(message(&r), "Hello, Ed");
    let r = s.post_json("/api/v1/execute", &json!({"name": "hello", "version": 7}));
    assert_eq!(r.error_kind(), (404, "ScriptNotFound".to_owned()), "{}", r.body);
    let r = s.post_json("/api/v1/execute", &json!({"name": "hello", "script": HELLO}));
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);

    // Roll back to version 1: the old behaviour is back.
    let r = s.post_json("/api/v1/scripts/hello/rollback", &json!({"version": 1}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(message(&s.get("/api/v1/run/hello?name=Lin")), "Hello, Lin");
    let r = s.post_json("/api/v1/scripts/hello/rollback", &json!({"version": 3}));
    assert_eq!(r.error_kind(), (404, "ScriptNotFound".to_owned()), "{}", r.body);
    let r = s.post_json("/api/v1/scripts/nope/rollback", &json!({"version": 1}));
    assert_eq!(r.error_kind(), (404, "ScriptNotFound".to_owned()), "{}", r.body);
    let r = s.post_json("/api/v1/scripts/hello/rollback", &json!({"version": 0}));
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);

    // Delete, then it is gone.
    assert_eq!(s.delete("/api/v1/scripts/hello").status, 204);
    assert_eq!(s.get("/api/v1/scripts/hello").error_kind().0, 404);
    assert_eq!(s.get("/api/v1/run/hello?name=Lin").error_kind().0, 404);
    assert_eq!(s.delete("/api/v1/scripts/hello").error_kind().0, 404);
    assert_eq!(s.get("/api/v1/scripts").json(), json!([]));
}

#[test]
fn register_endpoint_scripts_are_routed_by_method_and_path() {
    let s = Server::start("routing");
    let source = "\
function listItems(){
    addParam(tag, tag)
    addResult(tag)
}
function stamp(){
    addVar(stampValue, \"S-1\")
}
registerEndpoint(\"/items\", \"GET\", [], \"List items\", listItems, tag)
registerEndpoint(\"/stamp\", \"POST\", [], \"Make a stamp\", stamp, stampValue)
";
    assert_eq!(store(&s, "shop", source).status, 201);
    let r = s.get("/api/v1/run/shop/items?tag=red");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"], json!({"tag": "red"}));
    let r = s.post_json("/api/v1/run/shop/stamp", &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"], json!({"stampValue": "S-1"}));
    let r = s.get("/api/v1/run/shop/stamp");
    assert_eq!(r.error_kind(), (405, "MethodNotAllowed".to_owned()), "{}", r.body);
    let r = s.get("/api/v1/run/shop/nowhere");
    assert_eq!(r.error_kind(), (404, "NotFound".to_owned()), "{}", r.body);
    // Without a path, the script sees `/`.
    let r = s.get("/api/v1/run/shop");
    assert_eq!(r.error_kind(), (404, "NotFound".to_owned()), "{}", r.body);
}

#[test]
fn compile_errors_store_nothing_and_bad_requests_are_400() {
    let s = Server::start("compile-error");
    let r = store(&s, "broken", "if(x, 1, =)\naddVar(y, 2)\n");
    assert_eq!(r.error_kind(), (400, "CompileError".to_owned()), "{}", r.body);
    assert_eq!(r.json()["error"]["diagnostics"][0]["code"], "E0020");
    assert_eq!(s.get("/api/v1/scripts/broken").error_kind().0, 404);
    assert_eq!(s.get("/api/v1/scripts").json(), json!([]));

    let r = store(&s, "bad/name", HELLO);
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    let r = s.post_json("/api/v1/scripts", &json!({"name": "x", "source": HELLO, "extra": 1}));
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    assert!(r.body.contains("unknown field `extra`"), "{}", r.body);
}

#[test]
fn scripts_and_key_survive_a_restart() {
    let data_dir = fresh_dir("restart").join("data");
    let s = Server::start_on(&data_dir);
    assert_eq!(store(&s, "hello", HELLO).status, 201);
    assert_eq!(store(&s, "hello", HOWDY).status, 201);
    s.kill();
    // The registry is the data directory's SQLite file, unless the suite runs on PostgreSQL.
    let on_postgres = support::server_database(&data_dir).is_some();
    assert_eq!(data_dir.join("avap.sqlite").is_file(), !on_postgres);
    assert!(data_dir.join("keys/server.key").is_file());
    assert!(data_dir.join("keys/server.pub").is_file());

    let s = Server::start_on(&data_dir);
    assert_eq!(message(&s.get("/api/v1/run/hello?name=Lin")), "Howdy, Lin");
    let r = s.post_json(
        "/api/v1/execute",
        &json!({"name": "hello", "version": 1, "params": {"name": "Lin"}}),
    );
    assert_eq!(message(&r), "Hello, Lin");
    // Versions go on counting from where they were.
    let r = store(&s, "hello", "x = 3\naddResult(x)\n");
    assert_eq!(r.json()["version"], 3, "{}", r.body);
}

/// Issue 18: a stored library, included by two stored scripts. An update
/// of the library leaves them on the code they were built with until each
/// is rebuilt; the registry shows which libraries are stale and who
/// depends on what; a library in use is deleted only when forced; inline
/// scripts include stored libraries too. Runs on `PostgreSQL` with
/// `TEST_SERVER_DATABASE=postgres` (`.ci/run`).
#[test]
fn libraries_are_pinned_until_rebuilt() {
    const GREET_V1: &str = "function greet(who) {\n  m = \"Hello, \" + who\n  return(m)\n}\n";
    const GREET_V2: &str = "function greet(who) {\n  m = \"Howdy, \" + who\n  return(m)\n}\n";
    const APP: &str = "include(\"greet\")\naddParam(name, who)\nmessage = greet(who)\naddResult(message)\n";
    // The CLI's spelling (`.avap`) names the same stored script.
    const OTHER: &str = "import \"greet.avap\"\nmessage = greet(\"other\")\naddResult(message)\n";
    let s = Server::start("libraries");
    assert_eq!(store(&s, "greet", GREET_V1).status, 201);
    assert_eq!(store(&s, "app", APP).status, 201, "{}", store(&s, "app", APP).body);
    assert_eq!(store(&s, "other", OTHER).status, 201);
    assert_eq!(message(&s.get("/api/v1/run/app?name=Lin")), "Hello, Lin");
    assert_eq!(message(&s.get("/api/v1/run/other")), "Hello, other");

    let app = s.get("/api/v1/scripts/app").json();
    assert_eq!(app["libraries"][0]["name"], "greet");
    assert_eq!(app["libraries"][0]["version"], 1);
    assert_eq!(app["libraries"][0]["stale"], false);
    let greet = s.get("/api/v1/scripts/greet").json();
    let dependents: Vec<&str> = greet["dependents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(dependents, ["app", "other"], "{greet}");
    assert_eq!(greet["libraries"], json!([]));

    // The library changes: its dependents keep the code they were built with.
    assert_eq!(store(&s, "greet", GREET_V2).status, 201);
    assert_eq!(message(&s.get("/api/v1/run/app?name=Lin")), "Hello, Lin");
    assert_eq!(message(&s.get("/api/v1/run/other")), "Hello, other");
    let app = s.get("/api/v1/scripts/app").json();
    assert_eq!(
        (
            app["libraries"][0]["current_version"].as_i64(),
            &app["libraries"][0]["stale"]
        ),
        (Some(2), &json!(true)),
        "{app}"
    );
    assert_eq!(s.get("/api/v1/scripts/greet").json()["dependents"][0]["stale"], true);
    // Storing the same source again is still `unchanged`: only a rebuild moves a script on.
    let r = store(&s, "app", APP);
    assert_eq!(
        (r.status, r.json()["unchanged"].as_bool()),
        (200, Some(true)),
        "{}",
        r.body
    );

    // A rebuild picks up the library's current version, as a new version.
    let r = s.post_json("/api/v1/scripts/app/rebuild", &json!({}));
    assert_eq!((r.status, r.json()["version"].as_i64()), (201, Some(2)), "{}", r.body);
    assert_eq!(message(&s.get("/api/v1/run/app?name=Lin")), "Howdy, Lin");
    assert_eq!(message(&s.get("/api/v1/run/other")), "Hello, other", "not rebuilt yet");
    let r = s.post_json("/api/v1/scripts/app/rebuild", &json!({}));
    assert_eq!(
        (r.status, r.json()["unchanged"].as_bool()),
        (200, Some(true)),
        "{}",
        r.body
    );
    let r = s.post_json(
        "/api/v1/execute",
        &json!({"name": "app", "version": 1, "params": {"name": "Ed"}}),
    );
    assert_eq!(
        message(&r),
        "Hello, Ed",
        "version 1 keeps the library it was built with"
    );
    let r = s.post_json("/api/v1/scripts/nope/rebuild", &json!({}));
    assert_eq!(r.error_kind(), (404, "ScriptNotFound".to_owned()), "{}", r.body);

    // A library that would include its own dependent is a cycle: nothing stored.
    let r = store(&s, "greet", &format!("include(\"app\")\n{GREET_V2}"));
    assert_eq!(r.error_kind(), (400, "CompileError".to_owned()), "{}", r.body);
    assert!(r.body.contains("E0061"), "{}", r.body);

    // Inline scripts include stored libraries, at their current version.
    let inline = "include(\"greet\")\nmessage = greet(\"inline\")\naddResult(message)\n";
    assert_eq!(
        message(&s.post_json("/api/v1/execute", &json!({"script": inline}))),
        "Howdy, inline"
    );
    let r = s.post_json("/api/v1/check", &json!({"script": inline}));
    assert_eq!((r.status, &r.json()["ok"]), (200, &json!(true)), "{}", r.body);
    let r = s.post_json("/api/v1/execute", &json!({"script": "include(\"nothere\")\n"}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("no stored script named `nothere`"), "{}", r.body);

    // Deleting a library in use is refused, naming the dependents; forced, it goes.
    let r = s.delete("/api/v1/scripts/greet");
    assert_eq!(r.error_kind(), (409, "LibraryInUse".to_owned()), "{}", r.body);
    assert_eq!(r.json()["error"]["dependents"], json!(["app", "other"]));
    assert_eq!(s.get("/api/v1/scripts/greet").status, 200, "nothing deleted");
    assert_eq!(s.delete("/api/v1/scripts/greet?force=true").status, 204);
    // The dependents still run (their artifacts contain the library's code) ...
    assert_eq!(message(&s.get("/api/v1/run/other")), "Hello, other");
    let app = s.get("/api/v1/scripts/app").json();
    assert_eq!(app["libraries"][0]["current_version"], Value::Null, "{app}");
    // ... but a rebuild now fails to compile, and stores nothing.
    let r = s.post_json("/api/v1/scripts/app/rebuild", &json!({}));
    assert_eq!(r.error_kind(), (400, "CompileError".to_owned()), "{}", r.body);
    assert_eq!(message(&s.get("/api/v1/run/app?name=Lin")), "Howdy, Lin");

    let audit = s.get("/api/v1/audit?script=app").json();
    let rebuilds: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "rebuild")
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(rebuilds.len(), 3, "{audit}");
    for outcome in ["ok", "unchanged", "CompileError"] {
        assert!(rebuilds.contains(&outcome), "{audit}");
    }
}
