//! The benchmark workloads (`bench/workloads/*.avap`, issue 8) compile and
//! produce their expected results (`bench/workloads/expected.txt`): a cheap
//! check that the suite still measures what it claims, without any peer.

use std::path::Path;

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, compile};
use avap_hostfns::Request;
use avap_hostfns::artifact::{SigningKey, TrustedKeys};
use avap_runtime::{Limits, RunInput, Runtime, RuntimeConfig};

fn workloads_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/workloads"))
}

/// `NAME RESULT` per line, `#` comments.
fn expected() -> Vec<(String, String)> {
    std::fs::read_to_string(workloads_dir().join("expected.txt"))
        .expect("bench/workloads/expected.txt is readable")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, result) = l.split_once(' ').expect("NAME RESULT");
            (name.to_owned(), result.trim().to_owned())
        })
        .collect()
}

/// The workload's result as every implementation prints it: the value of
/// `r`, or the length of its compact JSON text when it is a list or a dict.
fn result_text(r: &serde_json::Value) -> String {
    match r {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => r.to_string().len().to_string(),
        other => other.to_string(),
    }
}

#[test]
fn every_workload_has_an_expected_result() {
    let mut names: Vec<String> = expected().into_iter().map(|(name, _)| name).collect();
    let mut files: Vec<String> = std::fs::read_dir(workloads_dir())
        .expect("bench/workloads exists")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".avap").map(str::to_owned)
        })
        .collect();
    names.sort();
    files.sort();
    assert_eq!(names, files, "bench/workloads/*.avap and expected.txt disagree");
    assert_eq!(
        files.len(),
        6,
        "the five workloads of issue 8 and loop_param (issue 20)"
    );
}

#[test]
fn every_workload_compiles_and_produces_its_expected_result() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let mut trusted = TrustedKeys::new();
    trusted.add(key.verifying_key());
    let runtime = Runtime::new(RuntimeConfig {
        trusted_keys: trusted,
        ..RuntimeConfig::default()
    })
    .expect("runtime starts");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for (name, want) in expected() {
        let file = format!("{name}.avap");
        let source = std::fs::read_to_string(workloads_dir().join(&file)).expect("workload is readable");
        let checked = check_file(SourceFile::new(&file, &source), &NoIncludes);
        assert_eq!(checked.error_count(), 0, "{file}: {:?}", checked.diagnostics);
        let module = runtime
            .load(&compile(&checked, Some(&key)).bytes)
            .unwrap_or_else(|e| panic!("{file} does not load: {e}"));
        // A workload reading the request gets NAME.body.json as its body
        // (what examples/bench_avap.rs sends).
        let body = workloads_dir().join(format!("{name}.body.json"));
        let json = body.exists().then(|| {
            serde_json::from_str(&std::fs::read_to_string(&body).expect("body is readable")).expect("body is JSON")
        });
        let input = RunInput {
            request: Request {
                json,
                ..Request::default()
            },
            limits: Limits::CLI,
            ..RunInput::default()
        };
        let report = tokio.block_on(runtime.run(&module, input));
        assert_eq!(report.http_status, 200, "{file}: {}", report.envelope);
        assert_eq!(result_text(&report.envelope.json()["result"]["r"]), want, "{file}");
    }
}
