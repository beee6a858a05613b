//! `avap lsp`: the language server driven over JSON-RPC — in process over
//! `Connection::memory()` with the CLI's include loader (`FsLoader`), and
//! once as the real `avap lsp` process over stdio with Content-Length
//! framing.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use avap_codegen::check::{SourceLoader, check_file};
use avap_lsp::{Exit, LspError};
use avap_server::fs_loader::{FsLoader, read_source};
use lsp_server::{Connection, Message, Notification, Request, RequestId, Response};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A client talking to an in-process server.
struct Client {
    connection: Connection,
    server: Option<JoinHandle<Result<Exit, LspError>>>,
    next_id: i32,
}

impl Client {
    /// A started server, not yet initialized.
    fn start() -> Client {
        let (client, server) = Connection::memory();
        let handle = std::thread::spawn(move || {
            let resolver = |script: &Path| -> Result<Box<dyn SourceLoader>, String> {
                FsLoader::for_script(script, &[])
                    .map(|l| Box::new(l) as Box<dyn SourceLoader>)
                    .map_err(|e| format!("{e:#}"))
            };
            avap_lsp::run(&server, &resolver)
        });
        Client {
            connection: client,
            server: Some(handle),
            next_id: 1,
        }
    }

    /// Started and initialized with these client capabilities.
    fn initialized(capabilities: &Value) -> (Client, Value) {
        let mut client = Client::start();
        let result = client
            .request(
                "initialize",
                json!({ "processId": null, "rootUri": null, "capabilities": capabilities }),
            )
            .result
            .expect("initialize answers");
        client.notify("initialized", json!({}));
        (client, result)
    }

    /// A client as VS Code is one: UTF-16, snippets, nested symbols.
    fn vscode() -> Client {
        Client::initialized(&json!({
            "textDocument": {
                "completion": { "completionItem": { "snippetSupport": true } },
                "documentSymbol": { "hierarchicalDocumentSymbolSupport": true },
            },
        }))
        .0
    }

    fn send(&self, message: impl Into<Message>) {
        self.connection.sender.send(message.into()).expect("server alive");
    }

    fn notify(&self, method: &str, params: Value) {
        self.send(Notification::new(method.into(), params));
    }

    /// Send a request and wait for its answer (skipping notifications).
    fn request(&mut self, method: &str, params: Value) -> Reply {
        let id = RequestId::from(self.next_id);
        self.next_id += 1;
        self.send(Request::new(id.clone(), method.into(), params));
        loop {
            match self.recv() {
                Message::Response(Response {
                    id: got,
                    response_result,
                }) if got == id => {
                    return match response_result {
                        Ok(v) => Reply {
                            result: Some(v),
                            error: None,
                        },
                        Err(e) => Reply {
                            result: None,
                            error: Some((e.code, e.message)),
                        },
                    };
                }
                _ => {}
            }
        }
    }

    fn recv(&self) -> Message {
        self.connection
            .receiver
            .recv_timeout(TIMEOUT)
            .expect("the server answers within the timeout")
    }

    /// The next diagnostics published for `uri`.
    fn diagnostics(&self, uri: &str) -> Vec<Value> {
        loop {
            if let Message::Notification(n) = self.recv()
                && n.method == "textDocument/publishDiagnostics"
                && n.params["uri"] == uri
            {
                return n.params["diagnostics"].as_array().cloned().unwrap_or_default();
            }
        }
    }

    fn open(&self, uri: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({ "textDocument": { "uri": uri, "languageId": "avap", "version": 1, "text": text } }),
        );
    }

    fn change_all(&self, uri: &str, version: i32, text: &str) {
        self.notify(
            "textDocument/didChange",
            json!({ "textDocument": { "uri": uri, "version": version }, "contentChanges": [{ "text": text }] }),
        );
    }

    fn at(&mut self, method: &str, uri: &str, line: u32, character: u32) -> Reply {
        self.request(
            method,
            json!({ "textDocument": { "uri": uri }, "position": { "line": line, "character": character } }),
        )
    }

    /// `shutdown`, `exit`, and how the server ended.
    fn shutdown(mut self) -> Exit {
        let reply = self.request("shutdown", Value::Null);
        assert_eq!(reply.result, Some(Value::Null));
        self.notify("exit", Value::Null);
        self.server
            .take()
            .unwrap()
            .join()
            .expect("no panic")
            .expect("clean end")
    }
}

#[derive(Debug)]
struct Reply {
    result: Option<Value>,
    error: Option<(i32, String)>,
}

impl Reply {
    fn ok(self) -> Value {
        assert!(self.error.is_none(), "{:?}", self.error);
        self.result.unwrap()
    }
}

/// A fresh directory for one test's files.
fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lsp").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.canonicalize().unwrap()
}

fn uri_of(path: &Path) -> String {
    url::Url::from_file_path(path).unwrap().to_string()
}

/// Write `text` to `dir/name` and return its path and URI.
fn file(dir: &Path, name: &str, text: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let uri = uri_of(&path);
    (path, uri)
}

/// Line and column (0-based) of the first `needle` in `text`, column in
/// UTF-16 units.
fn pos(text: &str, needle: &str) -> (u32, u32) {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle} in {text}"));
    let line = text[..at].matches('\n').count();
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let column: usize = text[start..at].chars().map(char::len_utf16).sum();
    (u32::try_from(line).unwrap(), u32::try_from(column).unwrap())
}

#[test]
fn initialize_announces_what_the_server_does() {
    let (client, result) = Client::initialized(&json!({}));
    let mut result = result;
    result["serverInfo"]["version"] = json!("[version]");
    insta::assert_json_snapshot!("initialize_result", result);
    assert_eq!(client.shutdown(), Exit::Clean);

    // A client that offers UTF-8 gets it.
    let (client, result) = Client::initialized(&json!({ "general": { "positionEncodings": ["utf-16", "utf-8"] } }));
    assert_eq!(result["capabilities"]["positionEncoding"], "utf-8");
    assert_eq!(client.shutdown(), Exit::Clean);
}

#[test]
fn diagnostics_are_those_of_avap_check_and_clear_when_fixed() {
    let d = dir("diagnostics");
    let text = "addParam(name, name)\naddvar(greeting, name)\nif(name, None, \"~\")\nend()\naddResult(greeting)\n";
    let (path, uri) = file(&d, "main.avap", text);
    let client = Client::vscode();
    client.open(&uri, text);
    let published = client.diagnostics(&uri);

    // The same codes, severities and messages (with notes and help) as `avap check`.
    let checked = check_file(read_source(&path).unwrap(), &FsLoader::for_script(&path, &[]).unwrap());
    assert_eq!(published.len(), checked.diagnostics.len(), "{published:#?}");
    assert!(!published.is_empty());
    for (lsp, check) in published.iter().zip(&checked.diagnostics) {
        assert_eq!(lsp["code"], check.code.as_str());
        assert_eq!(lsp["source"], "avap");
        let first_line = lsp["message"].as_str().unwrap().lines().next().unwrap();
        assert_eq!(first_line, check.message);
        let severity = if check.is_error() { 1 } else { 2 };
        assert_eq!(lsp["severity"], severity);
    }
    let warning = published
        .iter()
        .find(|d| d["code"] == "W0001")
        .expect("unknown command warning");
    assert_eq!(
        warning["range"],
        json!({ "start": { "line": 1, "character": 0 }, "end": { "line": 1, "character": 6 } })
    );
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("help: did you mean `addVar`?")
    );
    assert!(published.iter().any(|d| d["code"] == "E0030" && d["severity"] == 1));

    // Fixed: the next publication is empty.
    let fixed = "addParam(name, name)\naddVar(greeting, name)\naddResult(greeting)\n";
    client.change_all(&uri, 2, fixed);
    assert_eq!(client.diagnostics(&uri), Vec::<Value>::new());

    // Broken again by a ranged edit: `addVar` → `addVax`.
    client.notify(
        "textDocument/didChange",
        json!({
            "textDocument": { "uri": uri, "version": 3 },
            "contentChanges": [{ "range": { "start": { "line": 1, "character": 5 }, "end": { "line": 1, "character": 6 } }, "text": "x" }],
        }),
    );
    let again = client.diagnostics(&uri);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["code"], "W0001");

    // Closing clears them.
    client.notify("textDocument/didClose", json!({ "textDocument": { "uri": uri } }));
    assert_eq!(client.diagnostics(&uri), Vec::<Value>::new());
    assert_eq!(client.shutdown(), Exit::Clean);
}

#[test]
fn positions_count_utf16_units_or_utf8_bytes_as_negotiated() {
    // `ñ` is 1 UTF-16 unit and 2 bytes, `😀` 2 units and 4 bytes.
    let text = "addVar(t, \"ñ😀\" + str(nope(1)))\naddResult(t)\n";
    let d = dir("positions");
    let (_, uri) = file(&d, "p.avap", text);
    let utf16 = |s: &str| -> u32 { s.chars().map(|c| u32::try_from(c.len_utf16()).unwrap()).sum() };
    let utf8 = |s: &str| u32::try_from(s.len()).unwrap();
    let before_str = "addVar(t, \"ñ😀\" + ";
    let before_nope = "addVar(t, \"ñ😀\" + str(";

    let mut client = Client::vscode();
    client.open(&uri, text);
    let published = client.diagnostics(&uri);
    assert_eq!(published[0]["code"], "W0001");
    assert_eq!(
        published[0]["range"]["start"],
        json!({ "line": 0, "character": utf16(before_nope) })
    );
    assert_eq!(published[0]["range"]["end"]["character"], utf16(before_nope) + 4);
    // Hover at a UTF-16 column after the non-ASCII text finds `str`.
    let hover = client.at("textDocument/hover", &uri, 0, utf16(before_str) + 1).ok();
    assert_eq!(hover["range"]["start"]["character"], utf16(before_str));
    assert!(
        hover["contents"]["value"].as_str().unwrap().contains("str(value)"),
        "{hover}"
    );
    assert_eq!(client.shutdown(), Exit::Clean);

    let (mut client, _) = Client::initialized(&json!({ "general": { "positionEncodings": ["utf-8"] } }));
    client.open(&uri, text);
    let published = client.diagnostics(&uri);
    assert_eq!(
        published[0]["range"]["start"],
        json!({ "line": 0, "character": utf8(before_nope) })
    );
    let hover = client.at("textDocument/hover", &uri, 0, utf8(before_str) + 2).ok();
    assert_eq!(hover["range"]["start"]["character"], utf8(before_str));
    assert_eq!(client.shutdown(), Exit::Clean);
}

const SCRIPT: &str = r#"include("lib.avap")
addParam(name, who)
total = 0
startLoop(i, 1, 3)
    total = total + i
endLoop()
function greet(person, punctuation) {
    message = "Hello " + person + punctuation
    return(message)
}
greeting = greet(who, "!")
shout = helper(greeting)
registerEndpoint("/hello", "GET", [], "says hello", greet, out)
addResult(greeting)
"#;

const LIB: &str = "function helper(text) {\n    return(text + \"!\")\n}\n";

/// The script and its library on disk, opened in a VS Code-like client.
fn script() -> (Client, String, String) {
    let d = dir(&format!("script-{:?}", std::thread::current().id()));
    file(&d, "lib.avap", LIB);
    let (_, uri) = file(&d, "main.avap", SCRIPT);
    let client = Client::vscode();
    client.open(&uri, SCRIPT);
    let published = client.diagnostics(&uri);
    assert_eq!(published, Vec::<Value>::new(), "the script is clean");
    (client, uri, uri_of(&d.join("lib.avap")))
}

fn hover_text(client: &mut Client, uri: &str, needle: &str, shift: u32) -> String {
    let (line, col) = pos(SCRIPT, needle);
    let hover = client.at("textDocument/hover", uri, line, col + shift).ok();
    hover["contents"]["value"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn hover_on_commands_functions_and_variables() {
    let (mut client, uri, _) = script();
    insta::assert_snapshot!("hover_addParam", hover_text(&mut client, &uri, "addParam", 3));
    insta::assert_snapshot!(
        "hover_registerEndpoint",
        hover_text(&mut client, &uri, "registerEndpoint", 0)
    );
    let greet = hover_text(&mut client, &uri, "greet(who", 2);
    assert!(greet.contains("function greet(person, punctuation)"), "{greet}");
    assert!(greet.contains("defined at line 7"), "{greet}");
    let helper = hover_text(&mut client, &uri, "helper(", 0);
    assert!(
        helper.contains("function helper(text)") && helper.contains("lib.avap"),
        "{helper}"
    );
    let who = hover_text(&mut client, &uri, "who, \"!\"", 1);
    assert!(who.contains("first assigned by `addParam` at line 2"), "{who}");
    let total = hover_text(&mut client, &uri, "total + i", 0);
    assert!(
        total.contains("first assigned at line 3") && total.contains("total = 0"),
        "{total}"
    );
    let person = hover_text(&mut client, &uri, "person + ", 0);
    assert!(person.contains("*parameter*, line 7"), "{person}");
    let len = hover_text(&mut client, &uri, "startLoop", 0);
    assert!(len.contains("startLoop(var, from, to)"), "{len}");
    let include = client.at("textDocument/hover", &uri, 0, 12).ok();
    let text = include["contents"]["value"].as_str().unwrap();
    assert!(
        text.starts_with("included file `/") && text.contains("lib.avap"),
        "{text}"
    );
    // Nothing to say about a string.
    let (line, col) = pos(SCRIPT, "Hello ");
    assert_eq!(client.at("textDocument/hover", &uri, line, col + 1).ok(), Value::Null);
    assert_eq!(client.shutdown(), Exit::Clean);
}

fn labels(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap().to_owned())
        .collect()
}

fn item<'a>(items: &'a Value, label: &str) -> &'a Value {
    items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["label"] == label)
        .unwrap_or_else(|| panic!("no {label} in {items}"))
}

#[test]
fn completion_offers_commands_with_snippets_functions_and_variables_in_scope() {
    let (mut client, uri, _) = script();
    // On the blank end of the file: statements, commands, functions, globals.
    let end = u32::try_from(SCRIPT.lines().count()).unwrap();
    let items = client.at("textDocument/completion", &uri, end, 0).ok();
    let all = labels(&items);
    for expected in [
        "addParam",
        "RequestGet",
        "len",
        "startLoop",
        "greet",
        "helper",
        "who",
        "total",
        "greeting",
    ] {
        assert!(all.contains(&expected.to_owned()), "{expected} not in {all:?}");
    }
    assert!(
        !all.contains(&"person".to_owned()),
        "a parameter is not in scope outside its function"
    );
    let add_param = item(&items, "addParam");
    assert_eq!(add_param["insertText"], "addParam(${1:param}, ${2:target})");
    assert_eq!(add_param["insertTextFormat"], 2);
    assert_eq!(
        item(&items, "greet")["insertText"],
        "greet(${1:person}, ${2:punctuation})"
    );

    // Inside the function: its parameters and locals too.
    let (line, _) = pos(SCRIPT, "    return(message)");
    let items = client.at("textDocument/completion", &uri, line, 4).ok();
    let inside = labels(&items);
    for expected in ["person", "punctuation", "message", "who"] {
        assert!(inside.contains(&expected.to_owned()), "{expected} not in {inside:?}");
    }

    // After `x =` the trailing target is left out.
    let text = format!("{SCRIPT}r = Req");
    client.change_all(&uri, 2, &text);
    let items = client.at("textDocument/completion", &uri, end, 7).ok();
    assert_eq!(
        item(&items, "RequestGet")["insertText"],
        "RequestGet(${1:url}, ${2:querystring}, ${3:headers})"
    );

    // In a comment or a string: nothing.
    let text = format!("{SCRIPT}// add\naddVar(x, \"add\")\n");
    client.change_all(&uri, 3, &text);
    let items = client.at("textDocument/completion", &uri, end, 5).ok();
    assert_eq!(items, json!([]));
    let items = client.at("textDocument/completion", &uri, end + 1, 13).ok();
    assert_eq!(items, json!([]));
    assert_eq!(client.shutdown(), Exit::Clean);
}

#[test]
fn definition_of_functions_includes_and_variables() {
    let (mut client, uri, lib_uri) = script();
    let (line, col) = pos(SCRIPT, "greet(who");
    let found = client.at("textDocument/definition", &uri, line, col + 1).ok();
    let (def_line, def_col) = pos(SCRIPT, "greet(person");
    assert_eq!(found["uri"], uri);
    assert_eq!(
        found["range"]["start"],
        json!({ "line": def_line, "character": def_col })
    );

    // A function of the included file: there.
    let (line, col) = pos(SCRIPT, "helper(");
    let found = client.at("textDocument/definition", &uri, line, col).ok();
    assert_eq!(found["uri"], lib_uri);
    assert_eq!(found["range"]["start"], json!({ "line": 0, "character": 9 }));

    // The include itself: the file.
    let found = client.at("textDocument/definition", &uri, 0, 12).ok();
    assert_eq!(found["uri"], lib_uri);

    // A variable: its first assignment.
    let (line, col) = pos(SCRIPT, "total + i");
    let found = client.at("textDocument/definition", &uri, line, col).ok();
    assert_eq!(found["range"]["start"], json!({ "line": 2, "character": 0 }));
    assert_eq!(client.shutdown(), Exit::Clean);
}

#[test]
fn document_symbols_list_functions_and_endpoints() {
    let (mut client, uri, _) = script();
    let symbols = client
        .request("textDocument/documentSymbol", json!({ "textDocument": { "uri": uri } }))
        .ok();
    insta::assert_json_snapshot!("document_symbols", symbols);
    assert_eq!(client.shutdown(), Exit::Clean);
}

#[test]
fn includes_resolve_beside_the_document_like_the_cli() {
    let d = dir("includes");
    file(&d, "broken.avap", "function ok() {\n    return(1 +)\n}\n");
    let text = "include(\"missing.avap\")\ninclude(\"broken.avap\")\naddVar(x, 1)\n";
    let (_, uri) = file(&d, "main.avap", text);
    let mut client = Client::vscode();
    client.open(&uri, text);
    let published = client.diagnostics(&uri);
    let missing = published.iter().find(|d| d["code"] == "E0060").expect("E0060");
    assert_eq!(missing["range"]["start"]["line"], 0);
    // The error inside broken.avap is shown at its include, saying where.
    let inside = published
        .iter()
        .find(|d| d["range"]["start"]["line"] == 1)
        .expect("at the include");
    let message = inside["message"].as_str().unwrap();
    let broken = d.join("broken.avap").display().to_string();
    assert!(message.starts_with(&format!("in {broken}:2:")), "{message}");
    assert_eq!(
        inside["relatedInformation"][0]["location"]["uri"],
        uri_of(&d.join("broken.avap"))
    );

    // An unsaved document includes nothing, with the usual diagnostic.
    client.open("untitled:Untitled-1", "include(\"x.avap\")\n");
    let published = client.diagnostics("untitled:Untitled-1");
    assert_eq!(published[0]["code"], "E0060");
    assert!(
        published[0]["message"].as_str().unwrap().contains("not saved"),
        "{published:?}"
    );
    let _ = client.request("textDocument/hover", json!({}));
    assert_eq!(client.shutdown(), Exit::Clean);
}

#[test]
fn protocol_errors_are_answered_and_the_server_goes_on() {
    let mut client = Client::start();
    let early = client.request("textDocument/hover", json!({}));
    assert_eq!(early.error.map(|e| e.0), Some(-32002), "before initialize");
    let bad_init = client.request("initialize", json!({ "capabilities": 5 }));
    assert_eq!(bad_init.error.map(|e| e.0), Some(-32602));
    client.request("initialize", json!({ "capabilities": {} })).ok();
    let again = client.request("initialize", json!({ "capabilities": {} }));
    assert_eq!(again.error.map(|e| e.0), Some(-32600));
    let bad_params = client.request("textDocument/hover", json!({ "textDocument": 3 }));
    assert_eq!(bad_params.error.map(|e| e.0), Some(-32602));
    let unknown = client.request("textDocument/rename", json!({}));
    assert_eq!(unknown.error.map(|e| e.0), Some(-32601));
    // A document that is not open: no answer, no error.
    let closed = client.at("textDocument/hover", "file:///nowhere.avap", 0, 0);
    assert_eq!(closed.ok(), Value::Null);
    // A bad notification is logged back, not fatal.
    client.notify("textDocument/didOpen", json!({ "nope": true }));
    loop {
        if let Message::Notification(n) = client.recv()
            && n.method == "window/logMessage"
        {
            assert!(
                n.params["message"]
                    .as_str()
                    .unwrap()
                    .contains("invalid `textDocument/didOpen` params")
            );
            break;
        }
    }
    assert_eq!(client.request("shutdown", Value::Null).result, Some(Value::Null));
    let late = client.request("textDocument/hover", json!({}));
    assert_eq!(late.error.map(|e| e.0), Some(-32600), "after shutdown");
    client.notify("exit", Value::Null);
    let exit = client.server.take().unwrap().join().unwrap().unwrap();
    assert_eq!(exit, Exit::Clean);

    // `exit` without `shutdown`: status 1.
    let client = Client::vscode();
    client.notify("exit", Value::Null);
    let mut client = client;
    assert_eq!(
        client.server.take().unwrap().join().unwrap().unwrap(),
        Exit::WithoutShutdown
    );
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % (n as u64)).unwrap()
    }
}

/// Random edits (pieces of AVAP, brackets, quotes, non-ASCII, newlines)
/// at random places, each followed by requests at random places: every
/// request is answered without an error and the server never stops.
#[test]
fn random_edits_and_requests_never_break_the_server() {
    const PIECES: &[&str] = &[
        "addVar(",
        "x",
        ")",
        "(",
        "\"",
        "'",
        "`${",
        "}",
        "{",
        "function f(a) {",
        "if(x, 1, =)",
        "end()",
        "\n",
        "startLoop(i,1,",
        "ñ",
        "😀",
        "include(\"",
        "registerEndpoint(\"/a\", \"GET\", [], \"\", f, o)",
        "$",
        ".",
        ",",
        "//",
        "/*",
        "return(",
        "try()",
        "exception(e)",
        " = ",
        "x[",
        "]",
        "addParam(",
        "\r\n",
    ];
    let d = dir("random");
    let (_, uri) = file(&d, "r.avap", SCRIPT);
    let mut client = Client::vscode();
    client.open(&uri, SCRIPT);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for version in 2..300 {
        let (l1, c1, l2, c2) = (rng.below(20), rng.below(40), rng.below(20), rng.below(40));
        let text: String = (0..rng.below(4)).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        client.notify(
            "textDocument/didChange",
            json!({
                "textDocument": { "uri": uri, "version": version },
                "contentChanges": [{ "range": { "start": { "line": l1, "character": c1 }, "end": { "line": l2, "character": c2 } }, "text": text }],
            }),
        );
        let method = [
            "textDocument/hover",
            "textDocument/completion",
            "textDocument/definition",
        ][rng.below(3)];
        let reply = client.at(
            method,
            &uri,
            u32::try_from(rng.below(20)).unwrap(),
            u32::try_from(rng.below(40)).unwrap(),
        );
        assert!(reply.error.is_none(), "{method} after edit {version}: {reply:?}");
        if version % 50 == 0 {
            let symbols = client.request("textDocument/documentSymbol", json!({ "textDocument": { "uri": uri } }));
            assert!(symbols.error.is_none(), "{symbols:?}");
        }
    }
    assert_eq!(client.shutdown(), Exit::Clean);
}

#[test]
fn a_large_document_is_checked_in_reasonable_time() {
    let mut text = String::new();
    for i in 0..20_000 {
        writeln!(text, "addVar(v{i}, {i})").unwrap();
    }
    text.push_str("addvar(oops, 1)\n");
    let d = dir("large");
    let (_, uri) = file(&d, "large.avap", &text);
    let mut client = Client::vscode();
    let started = Instant::now();
    client.open(&uri, &text);
    let published = client.diagnostics(&uri);
    let took = started.elapsed();
    // The typo, and (as `avap check` says too) the compile budget.
    let typo = published.iter().find(|d| d["code"] == "W0001").expect("the typo");
    assert_eq!(typo["range"]["start"]["line"], 20_000);
    assert!(published.iter().any(|d| d["code"] == "E0082"), "{published:?}");
    assert!(took < Duration::from_secs(10), "checking 20 000 lines took {took:?}");
    let items = client.at("textDocument/completion", &uri, 20_001, 0).ok();
    assert!(items.as_array().unwrap().len() > 20_000);
    assert_eq!(client.shutdown(), Exit::Clean);
}

/// One framed message on `w`.
fn write_frame(w: &mut impl Write, body: &str) {
    write!(w, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    w.flush().unwrap();
}

/// One framed message from `r` (`None` when it closes).
fn read_frame(r: &mut impl BufRead) -> Option<Value> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            length = v.parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// The real binary over stdio: initialize, a malformed message (answered,
/// not fatal), diagnostics, shutdown and exit with status 0.
#[test]
fn avap_lsp_process_speaks_framed_json_rpc_on_stdio() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(["lsp", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start avap lsp");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // Frames arrive through a channel, so a silent server fails the test
    // (after the timeout) instead of hanging it.
    let (frames, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Some(frame) = read_frame(&mut stdout) {
            if frames.send(frame).is_err() {
                break;
            }
        }
    });
    // On a panic stdin closes, and the server ends at the end of its input.
    let next = || {
        received
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|e| panic!("no answer from avap lsp: {e}"))
    };

    write_frame(
        &mut stdin,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"processId":null,"rootUri":null,"capabilities":{}}}"#,
    );
    let init = next();
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["serverInfo"]["name"], "avap");
    assert_eq!(init["result"]["capabilities"]["positionEncoding"], "utf-16");
    write_frame(&mut stdin, r#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#);

    write_frame(&mut stdin, "{this is not json");
    let parse_error = next();
    assert_eq!(parse_error["error"]["code"], -32700);
    assert_eq!(parse_error["id"], Value::Null);

    write_frame(
        &mut stdin,
        r#"{"jsonrpc":"2.0","method":"textDocument/didOpen","params":{"textDocument":{"uri":"untitled:a","languageId":"avap","version":1,"text":"addvar(x, 1)\n"}}}"#,
    );
    let published = next();
    assert_eq!(published["method"], "textDocument/publishDiagnostics");
    assert_eq!(published["params"]["diagnostics"][0]["code"], "W0001");

    write_frame(&mut stdin, r#"{"jsonrpc":"2.0","id":2,"method":"shutdown"}"#);
    let shutdown = next();
    assert_eq!(shutdown, json!({ "jsonrpc": "2.0", "id": 2, "result": null }));
    write_frame(&mut stdin, r#"{"jsonrpc":"2.0","method":"exit"}"#);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("avap lsp did not exit after `exit`");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn avap_lsp_help_says_what_it_does() {
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(["lsp", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("language server") && help.contains("docs/editors.md"),
        "{help}"
    );
    assert!(help.contains("--include-path"), "{help}");
}
