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

const DEPTH: usize = 10_000;

fn nested(open: &str, middle: &str, close: &str) -> String {
    let mut s = String::with_capacity(DEPTH * (open.len() + close.len()) + middle.len());
    for _ in 0..DEPTH {
        s.push_str(open);
    }
    s.push_str(middle);
    for _ in 0..DEPTH {
        s.push_str(close);
    }
    s
}

fn run_text(text: &str) {
    run(&SourceFile::new("deep.avap", text));
}

#[test]
fn deep_brackets_do_not_overflow() {
    run_text(&"(".repeat(DEPTH));
    run_text(&"[".repeat(DEPTH));
    run_text(&"{".repeat(DEPTH));
    run_text(&")".repeat(DEPTH));
    run_text(&"}".repeat(DEPTH));
    run_text(&format!("x = {}", "(".repeat(DEPTH)));
    run_text(&format!("x = {}", nested("(", "1", ")")));
    run_text(&format!("x = {}", nested("[", "1", "]")));
    run_text(&format!("x = {}", nested("{\"k\": ", "1", "}")));
    run_text(&format!("x = {}", nested("f(", "1", ")")));
    run_text(&format!("addVar(x, {})", nested("[", "", "]")));
    run_text(&format!("addVar(x, {})", nested("(", "", ")")));
    run_text(&format!("x = a{}", "[0]".repeat(DEPTH)));
    run_text(&format!("x = a{}", ".b".repeat(DEPTH)));
    run_text(&format!("x = f{}", "(1)".repeat(DEPTH)));
}

#[test]
fn deep_operators_do_not_overflow() {
    run_text(&format!("x = {}1", "not ".repeat(DEPTH)));
    run_text(&format!("x = {}1", "-".repeat(DEPTH)));
    run_text(&format!("x = {}1", "- ".repeat(DEPTH)));
    run_text(&format!("x = {}1", "1 + ".repeat(DEPTH)));
    run_text(&format!("x = {}2", "2 ** ".repeat(DEPTH)));
    run_text(&format!("x = {}1", "1 == ".repeat(DEPTH)));
    run_text(&format!("x = {}1", "1 and ".repeat(DEPTH)));
    run_text(&format!("x = {}c", "a if b else ".repeat(DEPTH)));
    run_text(&format!("x = {}", "`${".repeat(DEPTH)));
    run_text(&format!("if(None, None, \"{}\")\nend()\n", nested("(", "1", ")")));
    run_text(&format!("if(None, None, \"{}1\")\nend()\n", "not ".repeat(DEPTH)));
}

#[test]
fn deep_blocks_do_not_overflow() {
    run_text(&nested("if(a, 1, =)\n", "addVar(x, 1)\n", "end()\n"));
    run_text(&nested("if(a, 1, =)\nelse()\n", "addVar(x, 1)\n", "end()\n"));
    run_text(&nested("startLoop(i, 0, 1)\n", "addVar(x, 1)\n", "endLoop()\n"));
    run_text(&nested("try()\n", "addVar(x, 1)\n", "exception(e)\nend()\n"));
    run_text(&nested("go_async(t)\n", "addVar(x, 1)\n", "end()\n"));
    run_text(&nested("function f(){\n", "return(1)\n", "}\n"));
    run_text(&nested("{\n", "addVar(x, 1)\n", "}\n"));
    // Unclosed and stray closers.
    run_text(&"if(a, 1, =)\n".repeat(DEPTH));
    run_text(&"startLoop(i, 0, 1)\n".repeat(DEPTH));
    run_text(&"function f(){\n".repeat(DEPTH));
    run_text(&"end()\n".repeat(DEPTH));
    run_text(&"}\n".repeat(DEPTH));
    // Mixed, interleaved wrongly.
    run_text(&"if(a, 1, =)\nstartLoop(i, 0, 1)\ntry()\n".repeat(DEPTH / 3));
    run_text(&"if(a, 1, =)\nstartLoop(i, 0, 1)\nend()\n".repeat(DEPTH / 3));
}

#[test]
fn deep_comments_and_strings_do_not_overflow() {
    run_text(&"/*".repeat(DEPTH));
    run_text(&format!("{}{}", "/*".repeat(DEPTH), "*/".repeat(DEPTH)));
    run_text(&format!("x = \"{}\"", "\\".repeat(DEPTH)));
    run_text(&format!("x = `{}`", "${x}".repeat(DEPTH)));
}
