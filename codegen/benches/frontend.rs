//! Front-end throughput: lexing, parsing, and parsing plus checking a
//! generated 10,000-line AVAP script.
//!
//! The script is generated deterministically and mixes what real scripts
//! contain: functions with bodies, `if`/`else`/`end`, loops, `try`/
//! `exception`, arithmetic and string concatenation, command calls (also with
//! an empty argument), backtick templates, comments and list/dict literals.
//! It must check cleanly (no errors, no warnings), which is asserted once
//! before measuring, so the numbers measure the happy path rather than
//! error recovery. "Check" is `check_source`, the front end: `check_file`
//! also lowers the program for the compile budget, a back-end cost (and
//! this script, larger than `max_script_bytes`, is over that budget).
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target cargo bench -p avap-codegen --bench frontend
//! ```

use std::fmt::Write as _;
use std::hint::black_box;

use avap_codegen::check::{NoIncludes, check_source};
use avap_codegen::lexer::lex;
use avap_codegen::{SourceFile, parse};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Number of lines in the generated script.
const TARGET_LINES: usize = 10_000;

/// One chunk of the script; `i` varies names and numbers so no two chunks
/// are identical. Every chunk is self-contained with respect to block
/// structure and defines the function it calls.
fn chunk(out: &mut String, i: usize) {
    let n = i * 7 + 3;
    // `writeln!` into a `String` cannot fail.
    let _ = writeln!(
        out,
        r#"// ---- section {i}: request handling ----
/* block comment for section {i}
   spanning two lines */
function compute{i}(price, percent){{
    factor = percent / 100
    cut = price * factor
    net = price - cut + {n} * 2 - (cut * 3) % 7
    label = "net-" + str(net) + '-{i}'
    if(net, 0, "<")
        net = 0
    end()
    return(net)
}}

addParam(amount{i}, amount{i})
addVar(base{i}, {n})
addVar(greeting{i}, 'Hello, section {i}')
total{i} = compute{i}(base{i}, 15) + {n}.5
items{i} = [1, 2, 3, "four", {n}, [5, 6], {{"k": "v"}}]
config{i} = {{"mode": "fast", "retries": 3, "section": {i}, "tags": ["a", "b"]}}
getListLen(items{i}, count{i})
last{i} = count{i} - 1
startLoop(idx{i}, 0, last{i})
    itemFromList(items{i}, idx{i}, item{i})
    variableToList(item{i}, collected{i})
    sum{i} = idx{i} * 10 + {n}
endLoop()
if(count{i}, 3, ">=")
    AddvariableToJSON('count', count{i}, summary{i})
    message{i} = `section ${{greeting{i}}} has ${{count{i}}} items`
else()
    AddvariableToJSON("empty", True, summary{i})
    message{i} = "no items in " + 'section {i}'
end()
try()
    RequestGet("http://127.0.0.1:8081/items/{i}", , "", response{i})
    getListLen(response{i}, fetched{i})
exception(error{i})
    addVar(fetched{i}, 0)
end()
if(fetched{i}, None, =)
    fetched{i} = 0
end()
ratio{i} = total{i} / (fetched{i} + 1)  // trailing comment
flag{i} = count{i} > 2 and fetched{i} == 0 or not (ratio{i} < 1.5)
addResult(summary{i})
addResult(message{i})
"#
    );
}

/// A deterministic script of exactly [`TARGET_LINES`] lines.
fn script() -> String {
    let mut out = String::new();
    let mut i = 0;
    while out.lines().count() < TARGET_LINES {
        chunk(&mut out, i);
        i += 1;
    }
    // Trim to exactly TARGET_LINES lines, keeping only whole chunks' block
    // structure valid: pad with simple statements instead of cutting a block.
    let mut lines: Vec<&str> = out.lines().collect();
    while lines.len() > TARGET_LINES {
        // Drop whole trailing chunks until we are under the target.
        let cut = lines
            .iter()
            .rposition(|l| l.starts_with("// ---- section"))
            .unwrap_or(0);
        lines.truncate(cut);
    }
    let mut text = lines.join("\n");
    text.push('\n');
    let mut pad = 0;
    while text.lines().count() < TARGET_LINES {
        let _ = writeln!(text, "padding{pad} = {pad} + 1");
        pad += 1;
    }
    text
}

fn assert_clean(text: &str) {
    let checked = check_source(SourceFile::new("bench.avap", text), &NoIncludes);
    assert!(
        checked.diagnostics.is_empty(),
        "the benchmark script must check cleanly, got {} diagnostic(s); first: {:?}",
        checked.diagnostics.len(),
        checked.diagnostics.first()
    );
}

fn frontend(c: &mut Criterion) {
    let text = script();
    assert_eq!(text.lines().count(), TARGET_LINES);
    assert_clean(&text);
    let file = SourceFile::new("bench.avap", text.as_str());
    let bytes = text.len() as u64;

    let mut group = c.benchmark_group("lex");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("10k_lines", |b| {
        b.iter(|| {
            let mut diags = Vec::new();
            let tokens = lex(black_box(file.text()), &mut diags);
            black_box((tokens, diags))
        });
    });
    group.finish();

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("10k_lines", |b| b.iter(|| black_box(parse(black_box(&file)))));
    group.finish();

    let mut group = c.benchmark_group("parse_and_check");
    group.throughput(Throughput::Bytes(bytes));
    // `check_source` takes the file by value; the clone (one memcpy of the
    // text plus the line index) is part of the measured work, as it is for
    // a caller that reads a file and checks it.
    group.bench_function("10k_lines", |b| {
        b.iter(|| black_box(check_source(black_box(file.clone()), &NoIncludes)));
    });
    group.finish();

    // Baseline measured in the same run: a mature hand-tuned parser
    // (serde_json into a `Value` tree) over a JSON document of the same size.
    let json = json_document(text.len());
    let mut group = c.benchmark_group("baseline_serde_json");
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("same_size_document", |b| {
        b.iter(|| black_box(serde_json::from_str::<serde_json::Value>(black_box(&json)).expect("valid JSON")));
    });
    group.finish();
}

/// A JSON array of small API-like records, about `size` bytes long.
fn json_document(size: usize) -> String {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < size {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"id": {i}, "name": "customer {i}", "active": {}, "score": {}.5, "tags": ["a", "b{i}"], "address": {{"city": "Lisbon", "zip": "1000-{i}"}}}}"#,
            i % 2 == 0,
            i % 100
        );
        out.push('\n');
        i += 1;
    }
    out.push(']');
    out
}

criterion_group!(benches, frontend);
criterion_main!(benches);
