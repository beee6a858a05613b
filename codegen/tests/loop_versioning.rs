//! Loop versioning (issue 20): a loop whose bounds come from the request
//! gets a fast copy compiled with the counter in `0..=i32::MAX`, behind a
//! guard on the evaluated bounds — only where that changes the code, never
//! nested, and within a budget of its own. What the copies compute is
//! checked at run time (`runtime/tests/arith_props.rs`,
//! `tests/conformance/loop_request_bounds*`); these tests look at the
//! emitted module.

use std::fmt::Write as _;

use avap_codegen::check::NoIncludes;
use avap_codegen::lower::{LoweredModule, MAX_FUNCTION_BYTES, VERSIONING_FUNCTION_BYTES, VERSIONING_MODULE_BYTES};
use avap_codegen::{SourceFile, check_file};
use wasmparser::{Operator, Parser, Payload};

/// The guard's upper bound, as `wasmprinter` prints it.
const GUARD: &str = "i64.const 2147483647";

fn lowered(src: &str) -> LoweredModule {
    let checked = check_file(SourceFile::new("t.avap", src), &NoIncludes);
    assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
    let module = avap_codegen::lower::lower(&checked);
    avap_hostfns::artifact::validate(&module.wasm).expect("the module validates");
    module
}

/// Lowered without checking (the compile budget's diagnostics included).
fn lowered_unchecked(src: &str) -> LoweredModule {
    let checked = avap_codegen::check::check_source(SourceFile::new("t.avap", src), &NoIncludes);
    avap_codegen::lower::lower(&checked)
}

fn wat(src: &str) -> String {
    wasmprinter::print_bytes(lowered(src).wasm).expect("printable")
}

/// `loop` instructions in the module.
fn loops(src: &str) -> usize {
    wat(src).lines().filter(|l| l.trim_start().starts_with("loop")).count()
}

fn guards(src: &str) -> usize {
    wat(src).lines().filter(|l| l.trim() == GUARD).count()
}

/// Size of each function body in the code section.
fn body_sizes(wasm: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::CodeSectionEntry(body) = payload.expect("parses") {
            sizes.push(body.range().len());
        }
    }
    sizes
}

const REQUEST_BOUND: &str = "addParam(n, n)\ns = 0\nstartLoop(i, 1, n)\n  s = s + i * i % 7\nendLoop()\naddResult(s)\n";
const CONSTANT_BOUND: &str = "s = 0\nstartLoop(i, 1, 10000000)\n  s = s + i * i % 7\nendLoop()\naddResult(s)\n";

#[test]
fn a_request_bound_loop_gets_a_guarded_fast_copy() {
    assert_eq!(loops(REQUEST_BOUND), 2);
    assert_eq!(guards(REQUEST_BOUND), 1);
    // The general copy checks `i * i` for overflow (both factors within
    // i32) and fixes the sign of `% 7`; the fast one does neither.
    let text = wat(REQUEST_BOUND);
    assert_eq!(text.matches("i64.const 4294967295").count(), 2, "{text}");
    assert_eq!(text.matches("i64.shr_s").count(), 1, "{text}");
    assert!(lowered(REQUEST_BOUND).versioned_bytes > 0);
}

#[test]
fn a_constant_bound_loop_is_not_versioned() {
    assert_eq!(loops(CONSTANT_BOUND), 1);
    assert_eq!(guards(CONSTANT_BOUND), 0);
    assert_eq!(lowered(CONSTANT_BOUND).versioned_bytes, 0);
    // Its body is what the fast copy of the request-bound loop runs.
    let text = wat(CONSTANT_BOUND);
    assert!(!text.contains("i64.const 4294967295"), "{text}");
}

#[test]
fn only_the_unknown_bound_is_tested() {
    // `from` is the constant 1: the guard tests `to` only.
    let text = wat(REQUEST_BOUND);
    assert!(!text.contains("i64.ge_s"), "{text}");
    let both =
        "addParam(a, a)\naddParam(b, b)\ns = 0\nstartLoop(i, a, b)\n  s = s + i * i % 7\nendLoop()\naddResult(s)\n";
    let text = wat(both);
    assert_eq!(text.matches("i64.ge_s").count(), 1, "{text}");
    assert_eq!(text.matches(GUARD).count(), 1, "{text}");
}

#[test]
fn a_bound_from_an_enclosing_counter_needs_no_guard() {
    // j runs within 1..=100 because i does: a range without versioning.
    let src = "s = 0\nstartLoop(i, 1, 100)\n  startLoop(j, 1, i)\n    s = s + j * j % 7\n  endLoop()\nendLoop()\naddResult(s)\n";
    assert_eq!(loops(src), 2);
    assert_eq!(guards(src), 0);
    assert!(!wat(src).contains("i64.const 4294967295"));
}

#[test]
fn loops_the_range_cannot_help_keep_one_copy() {
    // The body never reads the counter.
    let ignores = "addParam(n, n)\ns = 0\nstartLoop(i, 1, n)\n  s = s + 1\nendLoop()\naddResult(s)\n";
    assert_eq!((loops(ignores), guards(ignores)), (1, 0));
    // It reads it, but only as a value for a command: both copies compile
    // to the same bytes, and the fast one is dropped again.
    let same = "addParam(n, n)\nxs = []\nstartLoop(i, 1, n)\n  variableToList(i, xs)\nendLoop()\naddResult(xs)\n";
    assert_eq!((loops(same), guards(same)), (1, 0));
    assert!(lowered(same).versioned_bytes <= 3, "a block and its end at most");
}

#[test]
fn a_loop_with_go_async_inside_is_not_versioned() {
    let src = "addParam(n, n)\nstartLoop(i, 1, n)\n  go_async(\"t\")\n    x = i * i\n  end()\nendLoop()\n";
    assert_eq!((loops(src), guards(src)), (1, 0));
    let exports = wat(src).matches("(export \"go_async:").count();
    assert_eq!(exports, 1, "one block function, not one per copy");
}

/// `depth` nested loops over request bounds, the innermost doing the work.
fn nest(depth: usize) -> String {
    let mut src = String::from("addParam(n, n)\ns = 0\n");
    for d in 0..depth {
        writeln!(src, "startLoop(i{d}, 1, n)").unwrap();
    }
    writeln!(src, "s = s + i{0} * i{0} % 7", depth - 1).unwrap();
    for _ in 0..depth {
        src.push_str("endLoop()\n");
    }
    src.push_str("addResult(s)\n");
    src
}

#[test]
fn nested_request_bound_loops_version_the_innermost_only() {
    let one = lowered(&nest(1)).versioned_bytes;
    assert!(one > 0);
    for depth in 1..=6 {
        let src = nest(depth);
        assert_eq!(loops(&src), depth + 1, "{src}");
        assert_eq!(guards(&src), 1, "{src}");
        // What versioning adds does not grow with the depth (2^depth
        // copies if every level were versioned).
        assert_eq!(lowered(&src).versioned_bytes, one, "{src}");
    }
}

#[test]
fn a_versioned_loop_copies_its_inner_constant_loops_once() {
    // The outer loop is versioned (its inner loops have literal bounds):
    // each inner loop appears once per copy, and is not versioned itself.
    let src = "addParam(n, n)\ns = 0\nstartLoop(i, 1, n)\n  startLoop(k, 1, 3)\n    startLoop(m, 1, 3)\n      s = s + i * k * m % 7\n    endLoop()\n  endLoop()\nendLoop()\naddResult(s)\n";
    assert_eq!(loops(src), 6);
    assert_eq!(guards(src), 1);
}

/// A user function with `count` request-bound loops of `lines` statements.
/// (`i = 0` makes the counter one of the function's locals: a global
/// counter is read from memory, with nothing known about it.)
fn loops_in_a_function(count: usize, lines: usize) -> String {
    let mut src = String::from("function f(n){\n  s = 0\n  i = 0\n");
    for _ in 0..count {
        src.push_str("  startLoop(i, 1, n)\n");
        for _ in 0..lines {
            src.push_str("    s = s + i * i % 7\n");
        }
        src.push_str("  endLoop()\n");
    }
    src.push_str("  return(s)\n}\naddParam(n, n)\nr = f(n)\naddResult(r)\n");
    src
}

#[test]
fn a_loop_too_large_to_copy_stays_unversioned() {
    let big = loops_in_a_function(1, 200);
    let m = lowered(&big);
    assert_eq!(m.versioned_bytes, 0);
    assert_eq!(guards(&big), 0);
    let small = loops_in_a_function(1, 4);
    assert_eq!(guards(&small), 1);
}

#[test]
fn versioning_spends_its_own_budget_and_never_refuses_a_script() {
    // Small loops, as many as fit under the per-function limit without
    // versioning: versioning copies as many as its budget allows, the
    // function ends up larger than the limit, and the script is still
    // accepted.
    let unversioned = |m: &LoweredModule| body_sizes(&m.wasm).into_iter().max().unwrap() - m.versioned_bytes;
    let mut count = 1;
    while unversioned(&lowered_unchecked(&loops_in_a_function(count + 1, 6))) <= MAX_FUNCTION_BYTES {
        count += 1;
    }
    let src = loops_in_a_function(count, 6);
    let m = lowered(&src);
    assert!(m.oversize.is_empty(), "{:?}", m.oversize);
    assert!(
        m.versioned_bytes > VERSIONING_FUNCTION_BYTES / 2,
        "{}",
        m.versioned_bytes
    );
    assert!(m.versioned_bytes <= VERSIONING_FUNCTION_BYTES, "{}", m.versioned_bytes);
    let largest = body_sizes(&m.wasm).into_iter().max().unwrap();
    assert!(largest > MAX_FUNCTION_BYTES, "{largest} bytes");
    let versioned = guards(&src);
    assert!(versioned >= 1 && versioned < count, "{versioned} of {count} loops");
    // One loop more is too large without versioning too: refused as before.
    let m = lowered_unchecked(&loops_in_a_function(count + 1, 6));
    assert_eq!(m.oversize.len(), 1, "{:?}", m.oversize);
}

#[test]
fn the_module_budget_bounds_versioning_across_functions() {
    let mut src = String::new();
    for f in 0..40 {
        write!(src, "function f{f}(n){{\n  s = 0\n  i = 0\n").unwrap();
        for _ in 0..4 {
            src.push_str("  startLoop(i, 1, n)\n");
            for _ in 0..12 {
                src.push_str("    s = s + i * i % 7\n");
            }
            src.push_str("  endLoop()\n");
        }
        src.push_str("  return(s)\n}\n");
    }
    src.push_str("addParam(n, n)\nr = f0(n)\naddResult(r)\n");
    let m = lowered(&src);
    assert!(m.versioned_bytes > VERSIONING_MODULE_BYTES / 2, "{}", m.versioned_bytes);
    assert!(m.versioned_bytes <= VERSIONING_MODULE_BYTES, "{}", m.versioned_bytes);
    assert!(guards(&src) < 160, "not every loop is copied");
}

#[test]
fn source_marks_point_into_both_copies() {
    // An error in either copy maps to the line of its statement: line 4
    // has marks before the `else` (the fast copy) and after it (the
    // general one), in order, within the function.
    let m = lowered(REQUEST_BOUND);
    let main = m.marks.iter().find(|f| f.name == "main").expect("main");
    assert!(main.marks.windows(2).all(|w| w[0].0 <= w[1].0), "{:?}", main.marks);
    let mut else_at = None;
    let mut body_len = 0;
    for payload in Parser::new(0).parse_all(&m.wasm) {
        if let Payload::CodeSectionEntry(body) = payload.expect("parses") {
            let start = body.range().start;
            body_len = body.range().len();
            let mut ops = body.get_operators_reader().expect("operators");
            // The `else` of the `if` right after the guard's comparison.
            let (mut guard, mut depth): (u8, Option<u32>) = (0, None);
            while !ops.eof() {
                let (op, offset) = ops.read_with_offset().expect("operator");
                match (op, depth) {
                    (Operator::I64Const { value: 2_147_483_647 }, None) => guard = 1,
                    (Operator::I64LeS, None) if guard == 1 => guard = 2,
                    (Operator::If { .. }, None) if guard == 2 => depth = Some(0),
                    (Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. }, Some(d)) => {
                        depth = Some(d + 1);
                    }
                    (Operator::End, Some(d)) if d > 0 => depth = Some(d - 1),
                    (Operator::Else, Some(0)) if else_at.is_none() => else_at = Some(offset - start),
                    (_, None) => guard = 0,
                    _ => {}
                }
            }
        }
    }
    let else_at = u32::try_from(else_at.expect("the versioned loop's else")).expect("small");
    let line_4: Vec<u32> = main.marks.iter().filter(|mk| mk.1 == 4).map(|mk| mk.0).collect();
    assert!(line_4.iter().any(|&o| o < else_at), "{line_4:?} vs else at {else_at}");
    assert!(line_4.iter().any(|&o| o > else_at), "{line_4:?} vs else at {else_at}");
    assert!(main.marks.iter().all(|mk| (mk.0 as usize) < body_len));
}
