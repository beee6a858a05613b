//! Property tests of the front end's robustness invariant: no input makes
//! `parse` or `check_file` panic or overflow the stack, and every diagnostic
//! span lies inside the source, on char boundaries.
//!
//! Failure persistence is off so a failing run does not write files into
//! the source tree; proptest prints the minimal failing input instead.

use avap_codegen::check::{NoIncludes, check_file};
use avap_codegen::{Diagnostic, SourceFile, parse};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Every span (primary and secondary) is ordered, inside `text`, and on
/// char boundaries.
fn assert_spans_valid(text: &str, diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        let spans = std::iter::once((d.file, d.span)).chain(d.secondary.iter().map(|l| (l.file, l.span)));
        for (file, span) in spans {
            assert_eq!(file, 0, "diagnostic in a file other than the main one: {d:?}");
            let (start, end) = (span.start as usize, span.end as usize);
            assert!(start <= end, "reversed span {span:?} in {d:?}");
            assert!(
                end <= text.len(),
                "span {span:?} past the end ({}) in {d:?}",
                text.len()
            );
            assert!(
                text.is_char_boundary(start) && text.is_char_boundary(end),
                "span {span:?} not on char boundaries in {d:?}"
            );
        }
    }
}

/// Parse and check `file`, asserting the span invariant on both results.
fn run(file: &SourceFile) {
    let text = file.text();
    let (program, diagnostics) = parse(file);
    assert_eq!(program.span.end as usize, text.len());
    assert_spans_valid(text, &diagnostics);
    let checked = check_file(file.clone(), &NoIncludes);
    assert_spans_valid(text, &checked.diagnostics);
    // Checking only adds to what parsing found.
    assert!(checked.diagnostics.len() >= diagnostics.len());
}

/// Pieces of AVAP-ish source: words, punctuation, literals (also broken
/// ones), comment markers and non-ASCII text.
const TOKENS: &[&str] = &[
    // identifiers and names
    "x",
    "y",
    "_tmp",
    "name1",
    "$x",
    "$",
    "a.b",
    "é",
    "日本",
    "🦀",
    "\u{FFFD}",
    // commands
    "addVar",
    "addParam",
    "addResult",
    "getListLen",
    "itemFromList",
    "variableToList",
    "variableFromJSON",
    "AddvariableToJSON",
    "RequestGet",
    "RequestPost",
    "ormAccessSelect",
    "registerEndpoint",
    "randomString",
    "gather",
    "raise",
    "include",
    "import",
    "addvar",
    "str",
    "len",
    "int",
    // keywords and statement words
    "if",
    "else",
    "end",
    "startLoop",
    "endLoop",
    "try",
    "exception",
    "function",
    "return",
    "go_async",
    "and",
    "or",
    "not",
    "in",
    "is",
    "None",
    "True",
    "False",
    "null",
    "true",
    // punctuation and operators
    "(",
    ")",
    ",",
    "=",
    "==",
    "!=",
    "<",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "**",
    "+=",
    "-=",
    ".",
    ":",
    "{",
    "}",
    "[",
    "]",
    "${",
    "`",
    "\\",
    // strings, both quotes, escapes, unterminated
    "\"text\"",
    "'text'",
    "\"a'b\"",
    "'a\"b'",
    "\"esc\\n\\t\\\"\"",
    "'\\u00e9'",
    "\"\\uZZ\"",
    "\"\\u12",
    "\"unterminated",
    "'unterminated",
    "\"=\"",
    "'in'",
    "\"\"",
    "`tpl ${x} end`",
    "`${",
    "`${}`",
    "`${ x`",
    // numbers, also huge and malformed
    "0",
    "1",
    "42",
    "-7",
    "1.5",
    "1e3",
    "1e999",
    "1.",
    ".5",
    "9223372036854775807",
    "9223372036854775808",
    "99999999999999999999999999999999999999",
    "0x1F",
    "1_000",
    // comments
    "//",
    "// comment",
    "/*",
    "*/",
    "/* c */",
    "#",
    // whitespace and line breaks
    " ",
    "\t",
    "\n",
    "\r\n",
    "\r",
];

/// One line: a sequence of tokens, each followed by nothing or a space.
fn line() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(TOKENS), any::<bool>()), 0..16).prop_map(|parts| {
        let mut s = String::new();
        for (tok, space) in parts {
            s.push_str(tok);
            if space {
                s.push(' ');
            }
        }
        s
    })
}

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..40).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(config())]

    /// (a) Any byte string: no panic, spans valid.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        run(&SourceFile::from_bytes("bytes.avap", &bytes));
    }

    /// (a') Arbitrary (valid UTF-8, mostly non-ASCII) strings.
    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        run(&SourceFile::new("string.avap", text));
    }

    /// (b) AVAP-ish token soup: no panic, spans inside the source and on
    /// char boundaries.
    #[test]
    fn token_soup_never_panics(text in token_soup()) {
        run(&SourceFile::new("soup.avap", text));
    }
}

// ---- (c) deep nesting ------------------------------------------------------
//
// A stack overflow aborts the whole test process, so each deep input runs in
// a child process (this test binary, re-run on `deep_child`) on a thread with
// a 2 MiB stack — the default for spawned threads, tokio workers and libtest.
// The parent reports every input that killed its child, not just the first.

const DEPTH: usize = 10_000;
const CHILD_STACK: usize = 2 << 20;
const CASE_VAR: &str = "AVAP_DEEP_CASE";

fn nested(open: &str, middle: &str, close: &str) -> String {
    format!("{}{middle}{}", open.repeat(DEPTH), close.repeat(DEPTH))
}

type Case = (&'static str, fn() -> String);

const CASES: &[Case] = &[
    // brackets
    ("10k `(`", || "(".repeat(DEPTH)),
    ("10k `[`", || "[".repeat(DEPTH)),
    ("10k `{`", || "{".repeat(DEPTH)),
    ("10k `)`", || ")".repeat(DEPTH)),
    ("10k `}`", || "}".repeat(DEPTH)),
    ("x = 10k `(`", || format!("x = {}", "(".repeat(DEPTH))),
    ("x = ((…1…))", || format!("x = {}", nested("(", "1", ")"))),
    ("x = [[…1…]]", || format!("x = {}", nested("[", "1", "]"))),
    ("x = {\"k\": {…}}", || format!("x = {}", nested("{\"k\": ", "1", "}"))),
    ("x = f(f(…1…))", || format!("x = {}", nested("f(", "1", ")"))),
    ("addVar(x, [[…]])", || format!("addVar(x, {})", nested("[", "", "]"))),
    ("addVar(x, ((…)))", || format!("addVar(x, {})", nested("(", "", ")"))),
    ("x = a[0][0]…", || format!("x = a{}", "[0]".repeat(DEPTH))),
    ("x = a.b.b…", || format!("x = a{}", ".b".repeat(DEPTH))),
    ("x = f(1)(1)…", || format!("x = f{}", "(1)".repeat(DEPTH))),
    // operators
    ("x = not not … 1", || format!("x = {}1", "not ".repeat(DEPTH))),
    ("x = ---…1", || format!("x = {}1", "-".repeat(DEPTH))),
    ("x = - - … 1", || format!("x = {}1", "- ".repeat(DEPTH))),
    ("x = 1 + 1 + …", || format!("x = {}1", "1 + ".repeat(DEPTH))),
    ("x = 2 ** 2 ** …", || format!("x = {}2", "2 ** ".repeat(DEPTH))),
    ("x = 1 == 1 == …", || format!("x = {}1", "1 == ".repeat(DEPTH))),
    ("x = 1 and 1 and …", || format!("x = {}1", "1 and ".repeat(DEPTH))),
    ("x = a if b else a if b else …", || {
        format!("x = {}c", "a if b else ".repeat(DEPTH))
    }),
    ("x = `${`${…", || format!("x = {}", "`${".repeat(DEPTH))),
    ("if(None, None, \"((…1…))\")", || {
        format!("if(None, None, \"{}\")\nend()\n", nested("(", "1", ")"))
    }),
    ("if(None, None, \"not not … 1\")", || {
        format!("if(None, None, \"{}1\")\nend()\n", "not ".repeat(DEPTH))
    }),
    // blocks, balanced
    ("nested if … end()", || {
        nested("if(a, 1, =)\n", "addVar(x, 1)\n", "end()\n")
    }),
    ("nested if/else … end()", || {
        nested("if(a, 1, =)\nelse()\n", "addVar(x, 1)\n", "end()\n")
    }),
    ("nested startLoop … endLoop()", || {
        nested("startLoop(i, 0, 1)\n", "addVar(x, 1)\n", "endLoop()\n")
    }),
    ("nested try … exception … end()", || {
        nested("try()\n", "addVar(x, 1)\n", "exception(e)\nend()\n")
    }),
    ("nested go_async … end()", || {
        nested("go_async(t)\n", "addVar(x, 1)\n", "end()\n")
    }),
    ("nested function … }", || {
        nested("function f(){\n", "return(1)\n", "}\n")
    }),
    ("nested { … }", || nested("{\n", "addVar(x, 1)\n", "}\n")),
    // blocks, unclosed or stray
    ("10k unclosed if", || "if(a, 1, =)\n".repeat(DEPTH)),
    ("10k unclosed startLoop", || "startLoop(i, 0, 1)\n".repeat(DEPTH)),
    ("10k unclosed function", || "function f(){\n".repeat(DEPTH)),
    ("10k stray end()", || "end()\n".repeat(DEPTH)),
    ("10k stray }", || "}\n".repeat(DEPTH)),
    ("if/startLoop/try interleaved", || {
        "if(a, 1, =)\nstartLoop(i, 0, 1)\ntry()\n".repeat(DEPTH / 3)
    }),
    ("if/startLoop/end() mismatched", || {
        "if(a, 1, =)\nstartLoop(i, 0, 1)\nend()\n".repeat(DEPTH / 3)
    }),
    // comments and strings
    ("10k `/*`", || "/*".repeat(DEPTH)),
    ("10k `/*` then 10k `*/`", || {
        format!("{}{}", "/*".repeat(DEPTH), "*/".repeat(DEPTH))
    }),
    ("10k backslashes in a string", || {
        format!("x = \"{}\"", "\\".repeat(DEPTH))
    }),
    ("10k interpolations", || format!("x = `{}`", "${x}".repeat(DEPTH))),
];

/// Runs one case when started by [`run_deep_cases`]; does nothing otherwise.
#[test]
#[ignore = "child process of the deep-nesting tests"]
fn deep_child() {
    let Some(index) = std::env::var(CASE_VAR).ok().and_then(|v| v.parse::<usize>().ok()) else {
        return;
    };
    let text = (CASES[index].1)();
    std::thread::Builder::new()
        .stack_size(CHILD_STACK)
        .spawn(move || run(&SourceFile::new("deep.avap", text)))
        .expect("spawn")
        .join()
        .expect("case panicked");
}

/// Run the cases whose names `select` accepts, each in a child process;
/// fail listing every case whose child did not succeed.
fn run_deep_cases(select: impl Fn(usize) -> bool) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut failures = Vec::new();
    for (index, (name, _)) in CASES.iter().enumerate().filter(|(i, _)| select(*i)) {
        let output = std::process::Command::new(&exe)
            .args(["deep_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CASE_VAR, index.to_string())
            .output()
            .expect("run child");
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr
                .lines()
                .find(|l| l.contains("overflowed its stack") || l.contains("panicked"))
                .unwrap_or("child failed")
                .to_string();
            failures.push(format!("{name}: {reason}"));
        }
    }
    assert!(
        failures.is_empty(),
        "deep inputs that failed:\n  {}",
        failures.join("\n  ")
    );
}

fn case_range(first: &str, last: &str) -> std::ops::RangeInclusive<usize> {
    let at = |n: &str| CASES.iter().position(|c| c.0 == n).expect("case name");
    at(first)..=at(last)
}

#[test]
fn deep_brackets_do_not_overflow() {
    let r = case_range("10k `(`", "x = f(1)(1)…");
    run_deep_cases(|i| r.contains(&i));
}

#[test]
fn deep_operators_do_not_overflow() {
    let r = case_range("x = not not … 1", "if(None, None, \"not not … 1\")");
    run_deep_cases(|i| r.contains(&i));
}

#[test]
fn deep_blocks_do_not_overflow() {
    let r = case_range("nested if … end()", "if/startLoop/end() mismatched");
    run_deep_cases(|i| r.contains(&i));
}

#[test]
fn deep_comments_and_strings_do_not_overflow() {
    let r = case_range("10k `/*`", "10k interpolations");
    run_deep_cases(|i| r.contains(&i));
}
