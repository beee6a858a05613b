//! `POST /api/v1/execute/file` (multipart upload of a source or a signed
//! artifact) and gzip responses, against the real `avap serve` binary.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod support;

use support::{Reply, Server, fresh_dir};

const HELLO: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";
const BOUNDARY: &str = "avap-test-boundary-7d3f";

/// A multipart/form-data body of `(part name, file name, bytes)`.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file_name, bytes) in parts {
        let disposition = match file_name {
            Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
            None => format!("form-data; name=\"{name}\""),
        };
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn upload(s: &Server, parts: &[(&str, Option<&str>, &[u8])]) -> Reply {
    let body = multipart(parts);
    let mut raw = format!(
        "POST /api/v1/execute/file HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    s.send(&raw)
}

fn avap(args: &[&str], paths: &[&Path]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_avap"))
        .args(args)
        .args(paths)
        .output()
        .expect("run avap");
    assert!(out.status.success(), "avap {args:?} {paths:?}: {out:?}");
    out
}

/// `avap keygen --out DIR --name NAME`: the secret key file.
fn keygen(dir: &Path, name: &str) -> PathBuf {
    avap(&["keygen", "--name", name, "--out"], &[dir]);
    dir.join(format!("{name}.key"))
}

/// `HELLO` compiled with `avap compile`, signed with `key` when given.
fn compiled(dir: &Path, name: &str, key: Option<&Path>) -> Vec<u8> {
    let source = dir.join(format!("{name}.avap"));
    let output = dir.join(format!("{name}.wasm"));
    std::fs::write(&source, HELLO).expect("write source");
    let mut args: Vec<&Path> = vec![&source, Path::new("-o"), &output];
    if let Some(key) = key {
        args.extend([Path::new("--key"), key]);
    }
    avap(&["compile"], &args);
    std::fs::read(&output).expect("read artifact")
}

fn message(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["result"]["message"].clone()
}

#[test]
fn sources_run_like_inline_scripts() {
    let s = Server::start("upload-source");
    let r = upload(
        &s,
        &[
            ("file", Some("hello.avap"), HELLO.as_bytes()),
            ("params", None, br#"{"name": "Lin"}"#),
        ],
    );
    assert_eq!(message(&r), "Hello, Lin");
    // The name does not matter: a source called .wasm is still a source.
    let r = upload(
        &s,
        &[
            ("file", Some("hello.wasm"), HELLO.as_bytes()),
            ("request", None, br#"{"query": {"name": "Ada"}}"#),
        ],
    );
    assert_eq!(message(&r), "Hello, Ada");
    // A compile error is the 400 CompileError envelope, as for inline scripts.
    let r = upload(&s, &[("file", Some("bad.avap"), b"if(\n")]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["kind"], "CompileError", "{}", r.body);
    // Limits are the execute request's (and clamped the same way).
    let spin = b"s = 0\nstartLoop(i, 1, 9000000000000)\n  s = s + 1\nendLoop()\naddResult(s)\n";
    let r = upload(
        &s,
        &[
            ("file", Some("spin.avap"), spin),
            ("limits", None, br#"{"fuel": 10000}"#),
        ],
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["kind"], "FuelExhausted", "{}", r.body);
    // Inline and uploaded sources share the compile cache.
    let metrics = s.get("/api/v1/metrics").body;
    assert!(metrics.contains("avap_compile_cache_hits_total 1\n"), "{metrics}");
}

#[test]
fn malformed_uploads_are_refused_with_the_reason() {
    let s = Server::start("upload-refusals");
    let r = upload(&s, &[("params", None, b"{}")]);
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    assert!(r.body.contains("no `file` part"), "{}", r.body);
    let r = upload(&s, &[("file", None, HELLO.as_bytes()), ("script", None, b"x")]);
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    assert!(r.body.contains("unknown part `script`"), "{}", r.body);
    let r = upload(&s, &[("file", None, HELLO.as_bytes()), ("params", None, b"[1]")]);
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    let r = upload(
        &s,
        &[("file", None, HELLO.as_bytes()), ("limits", None, b"{\"fuel\": ")],
    );
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    assert!(r.body.contains("the `limits` part"), "{}", r.body);
    let r = upload(&s, &[("file", None, b"a"), ("file", None, b"b")]);
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    // Over the script size limit (256 KiB), under the body limit (1 MiB).
    let big = format!("# {}\n{HELLO}", "x".repeat(300 << 10));
    let r = upload(&s, &[("file", None, big.as_bytes())]);
    assert_eq!(r.error_kind(), (413, "ScriptTooLarge".to_owned()), "{}", r.body);
    // Over the body limit (1 MiB): refused before the parts are read.
    let huge = vec![b'#'; 1100 << 10];
    let r = upload(&s, &[("file", None, &huge)]);
    assert_eq!(r.error_kind(), (413, "BodyTooLarge".to_owned()), "{}", r.body);
    let r = s.post("/api/v1/execute/file", "{}");
    assert_eq!(r.error_kind(), (400, "InvalidRequest".to_owned()), "{}", r.body);
    assert!(r.body.contains("multipart/form-data"), "{}", r.body);
}

#[test]
fn artifacts_run_only_when_signed_by_a_trusted_key() {
    let root = fresh_dir("upload-artifacts");
    let data_dir = root.join("data");
    let keys = root.join("keys");
    // The server's own key (created on first start), and one key it is told to trust.
    drop(Server::start_on(&data_dir));
    let server_key = data_dir.join("keys/server.key");
    let ci_key = keygen(&keys, "ci");
    std::fs::create_dir_all(data_dir.join("trusted_keys")).expect("mkdir");
    std::fs::copy(keys.join("ci.pub"), data_dir.join("trusted_keys/ci.pub")).expect("copy .pub");
    let stranger_key = keygen(&keys, "stranger");
    let s = Server::start_on(&data_dir);

    let params: &[u8] = br#"{"name": "Wasm"}"#;
    for (name, key) in [("by-server", &server_key), ("by-ci", &ci_key)] {
        let artifact = compiled(&root, name, Some(key));
        let r = upload(&s, &[("file", Some("x.avap"), &artifact), ("params", None, params)]);
        assert_eq!(message(&r), "Hello, Wasm", "{name}");
    }

    let stranger = compiled(&root, "stranger", Some(&stranger_key));
    let r = upload(&s, &[("file", Some("s.wasm"), &stranger)]);
    assert_eq!(r.error_kind(), (403, "UntrustedArtifact".to_owned()), "{}", r.body);
    let stranger_id = String::from_utf8(avap(&["inspect"], &[&root.join("stranger.wasm")]).stdout).expect("utf-8");
    let message = r.json()["error"]["message"].as_str().unwrap_or("").to_owned();
    let key_id = message
        .split_whitespace()
        .skip_while(|w| *w != "key")
        .nth(1)
        .unwrap_or("")
        .trim_end_matches(',');
    assert!(
        key_id.len() >= 8 && stranger_id.contains(key_id),
        "{message} / {stranger_id}"
    );
    assert!(message.contains("trusted_keys"), "{message}");

    let unsigned = compiled(&root, "unsigned", None);
    let r = upload(&s, &[("file", Some("u.wasm"), &unsigned)]);
    assert_eq!(r.error_kind(), (403, "UntrustedArtifact".to_owned()), "{}", r.body);
    assert!(r.body.contains("not signed"), "{}", r.body);

    let mut tampered = compiled(&root, "tampered", Some(&server_key));
    let at = tampered.len() / 2;
    tampered[at] ^= 0x55;
    let r = upload(&s, &[("file", Some("t.wasm"), &tampered)]);
    assert_eq!(r.error_kind(), (400, "InvalidArtifact".to_owned()), "{}", r.body);
    let r = upload(&s, &[("file", Some("t.wasm"), b"\0asm\x01\0\0\0\x99")]);
    assert_eq!(r.error_kind(), (400, "InvalidArtifact".to_owned()), "{}", r.body);
}

/// One raw request; the reply's head and its de-chunked body bytes.
fn raw_get(s: &Server, path: &str, extra_headers: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(&s.addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra_headers}\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (head, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size_text = std::str::from_utf8(&data[..line_end]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).expect("hex size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[test]
fn json_responses_are_gzipped_for_clients_that_ask() {
    let s = Server::start("gzip");
    let (head, body) = raw_get(&s, "/api/v1/openapi.json", "Accept-Encoding: gzip\r\n");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(body.as_slice())
        .read_to_string(&mut text)
        .expect("a gzip body");
    let doc: Value = serde_json::from_str(&text).expect("JSON inside");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(body.len() < text.len() / 2, "{} of {}", body.len(), text.len());

    let (head, body) = raw_get(&s, "/api/v1/openapi.json", "");
    assert!(!head.contains("content-encoding"), "{head}");
    let plain: Value = serde_json::from_slice(&body).expect("plain JSON");
    assert_eq!(plain, doc);
}
