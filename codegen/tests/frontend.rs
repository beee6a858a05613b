//! Front-end tests as data: the shared conformance corpus, JSON AST
//! snapshots, and rendered diagnostics for the error programs in
//! `tests/diagnostics/`.

use std::path::{Path, PathBuf};

use avap_codegen::ast::{Expr, ExprKind, StmtKind};
use avap_codegen::check::{IncludeError, LoadedSource, SourceLoader, check_file};
use avap_codegen::diag::{Code, Severity, render_text, to_json};
use avap_codegen::{SourceFile, parse};

/// `../shared/conformance` beside the repository, or `AVAP_CONFORMANCE_DIR`.
fn conformance_dir() -> PathBuf {
    std::env::var_os("AVAP_CONFORMANCE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"),
        PathBuf::from,
    )
}

fn avap_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "avap"))
        .collect();
    files.sort();
    files
}

/// Resolves includes relative to the including file, naming files by their
/// path relative to the test's base directory so snapshots are stable. The
/// identity is the lexically normalised path (`a/../b` is `b`).
struct TestLoader {
    base: PathBuf,
}

fn normalise(path: &Path) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(p) => parts.push(p.to_str().expect("utf-8 path")),
            _ => {}
        }
    }
    parts.join("/")
}

impl SourceLoader for TestLoader {
    fn load(&self, from: &str, path: &str) -> Result<LoadedSource, IncludeError> {
        let from_dir = Path::new(from).parent().unwrap_or(Path::new(""));
        let rel = from_dir.join(path);
        let text = std::fs::read_to_string(self.base.join(&rel)).map_err(|e| format!("{}: {e}", rel.display()))?;
        Ok(LoadedSource {
            identity: normalise(&rel),
            name: normalise(&rel),
            text,
        })
    }

    fn identity(&self, name: &str) -> String {
        normalise(Path::new(name))
    }
}

fn load(base: &Path, path: &Path) -> SourceFile {
    let name = path.strip_prefix(base).unwrap_or(path).to_string_lossy().into_owned();
    SourceFile::new(name, std::fs::read_to_string(path).expect("readable"))
}

/// Programs in the corpus that call a command that does not exist on
/// purpose (to test the runtime `NameError`); they warn with W0001.
const DELIBERATELY_UNKNOWN: &[&str] = &["notARealCommand", "doesNotExist"];

#[test]
fn conformance_programs_check_without_errors() {
    let mut dirs = vec![conformance_dir()];
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance");
    if own.is_dir() {
        dirs.push(own);
    }
    let mut checked = 0;
    for dir in dirs {
        for path in avap_files(&dir) {
            let result = check_file(load(&dir, &path), &TestLoader { base: dir.clone() });
            for d in &result.diagnostics {
                let rendered = render_text(&result.sources, std::slice::from_ref(d), false);
                let allowed = d.code == Code::UnknownCommand
                    && DELIBERATELY_UNKNOWN
                        .iter()
                        .any(|n| d.message.contains(&format!("`{n}`")));
                assert!(allowed, "{}:\n{rendered}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "expected the whole corpus, checked {checked} programs");
}

const AST_SNAPSHOTS: &[&str] = &[
    "hello_world",
    "comments",
    "countries_enrichment",
    "if_expression_mode",
    "if_in_operator",
    "connector_query",
    "list_dict_literals",
    "register_endpoint",
    "exception_assign_form",
    "async_fire_and_gather",
    "function_dollar_global",
    "http_get_assign_form",
];

#[test]
fn ast_json_snapshots() {
    let dir = conformance_dir();
    for name in AST_SNAPSHOTS {
        let path = dir.join(format!("{name}.avap"));
        let file = load(&dir, &path);
        let (program, diags) = parse(&file);
        assert!(diags.is_empty(), "{name}: {diags:?}");
        let json = serde_json::to_string_pretty(&program).expect("serialisable");
        insta::assert_snapshot!(format!("ast_{name}"), json);
    }
}

#[test]
fn diagnostic_snapshots() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diagnostics");
    let mut codes = std::collections::BTreeSet::new();
    let mut programs = 0;
    insta::glob!("diagnostics/*.avap", |path| {
        let result = check_file(load(&base, path), &TestLoader { base: base.clone() });
        assert!(
            !result.diagnostics.is_empty(),
            "{} is an error program but produced no diagnostics",
            path.display()
        );
        codes.extend(result.diagnostics.iter().map(|d| d.code.as_str()));
        programs += 1;
        let text = render_text(&result.sources, &result.diagnostics, false);
        insta::assert_snapshot!(text);
    });
    assert!(programs >= 25, "only {programs} error programs");
    assert!(codes.len() >= 25, "only {} distinct codes: {codes:?}", codes.len());
}

#[test]
fn json_diagnostics_carry_positions() {
    let src = "addVar(x, 1)\nif(x, 1, =)\n  addvar(y, 2)\n";
    let result = check_file(SourceFile::new("t.avap", src), &avap_codegen::check::NoIncludes);
    let json = to_json(&result.sources, &result.diagnostics);
    insta::assert_json_snapshot!(json);
}

// ---- tiny tests that read like the feature --------------------------------

/// An expression as an S-expression, to test precedence compactly.
fn sexpr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => format!("{v:?}"),
        ExprKind::Str { value, .. } => format!("{value:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::None => "None".into(),
        ExprKind::Template(_) => "`…`".into(),
        ExprKind::Name(id) => id.name.clone(),
        ExprKind::Global(id) => format!("${}", id.name),
        ExprKind::List(items) => format!("[{}]", items.iter().map(sexpr).collect::<Vec<_>>().join(" ")),
        ExprKind::Dict(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}:{}", sexpr(k), sexpr(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        ExprKind::Unary { op, operand } => format!("({op:?} {})", sexpr(operand)),
        ExprKind::Binary { op, lhs, rhs } => format!("({op:?} {} {})", sexpr(lhs), sexpr(rhs)),
        ExprKind::Logical { op, lhs, rhs } => format!("({op:?} {} {})", sexpr(lhs), sexpr(rhs)),
        ExprKind::Compare { first, rest } => {
            let rest: Vec<String> = rest.iter().map(|(op, e)| format!("{op:?} {}", sexpr(e))).collect();
            format!("(cmp {} {})", sexpr(first), rest.join(" "))
        }
        ExprKind::Conditional { then, cond, otherwise } => {
            format!("(if {} {} {})", sexpr(cond), sexpr(then), sexpr(otherwise))
        }
        ExprKind::Call(c) => {
            let args: Vec<String> = c
                .args
                .iter()
                .map(|a| a.value.as_ref().map_or_else(|| "_".into(), sexpr))
                .collect();
            format!("(call {} {})", sexpr(&c.callee), args.join(" "))
        }
        ExprKind::Index { object, index } => format!("(index {} {})", sexpr(object), sexpr(index)),
        ExprKind::Attribute { object, name } => format!("(. {} {})", sexpr(object), name.name),
    }
}

/// Parse `x = <src>` and return the right side as an S-expression.
fn expr(src: &str) -> String {
    let (program, diags) = parse(&SourceFile::new("t", format!("x = {src}")));
    assert!(diags.is_empty(), "{src}: {diags:?}");
    match &program.body[0].kind {
        StmtKind::Assign { value, .. } => sexpr(value),
        other => panic!("not an assignment: {other:?}"),
    }
}

/// The diagnostic codes `src` produces, in order.
fn codes(src: &str) -> Vec<&'static str> {
    let result = check_file(SourceFile::new("t", src), &avap_codegen::check::NoIncludes);
    result.diagnostics.iter().map(|d| d.code.as_str()).collect()
}

#[test]
fn python_precedence() {
    assert_eq!(expr("1 + 2 * 3"), "(Add 1 (Mul 2 3))");
    assert_eq!(expr("-2 ** 2"), "(Neg (Pow 2 2))");
    assert_eq!(expr("2 ** 3 ** 2"), "(Pow 2 (Pow 3 2))");
    assert_eq!(expr("a or b and not c"), "(Or a (And b (Not c)))");
    assert_eq!(expr("1 < x <= 3"), "(cmp 1 Lt x Le 3)");
    assert_eq!(expr("a not in b"), "(cmp a NotIn b)");
    assert_eq!(expr("a is not None"), "(cmp a IsNot None)");
    assert_eq!(expr("a if c else b if d else e"), "(if c a (if d b e))");
    assert_eq!(expr("rows[0].name"), "(. (index rows 0) name)");
    assert_eq!(expr("(7 // 2) % 3"), "(Mod (FloorDiv 7 2) 3)");
    assert_eq!(expr("-9223372036854775808"), "-9223372036854775808");
    assert_eq!(expr("f(a, , b)"), "(call f a _ b)");
    assert_eq!(expr("[1, 2,\n 3]"), "[1 2 3]");
    assert_eq!(expr("{\"a\": 1, \"b\": [true, null]}"), "{\"a\":1 \"b\":[true None]}");
}

#[test]
fn statements_and_blocks() {
    assert_eq!(codes("if(a, 'b', '=')\nelse()\nend()"), Vec::<&str>::new());
    assert_eq!(codes("if(a, b, in)\nend()"), Vec::<&str>::new());
    assert_eq!(codes("if(a, b, not in)\nend()"), Vec::<&str>::new());
    assert_eq!(codes("function f(a) { return(a) }\nx = f(1)"), Vec::<&str>::new());
    assert_eq!(codes("function f()\n{\nreturn\n}\nf()"), Vec::<&str>::new());
    assert_eq!(codes("r = RequestGet(\"http://x\", \"\", \"\")"), Vec::<&str>::new());
    assert_eq!(codes("x = 1 + getListLen(xs)"), Vec::<&str>::new());
    assert_eq!(codes("t = `a ${b} \\${c}`"), Vec::<&str>::new());
    assert_eq!(codes("x[0] += 1"), Vec::<&str>::new());
    assert_eq!(codes("x = 7 // 2"), vec!["W0002"]);
    // A name of the code after `//` is an operand too; prose is not.
    assert_eq!(
        codes("size = 3\ntotal = 10\npages = (total + size - 1) // size"),
        vec!["W0002"]
    );
    assert_eq!(codes("size = 3\nx = size // size + 1"), vec!["W0002"]);
    assert_eq!(codes("size = 3\nx = size // TODO"), Vec::<&str>::new());
    assert_eq!(codes("size = 3\nx = size // size of the page"), Vec::<&str>::new());
    assert_eq!(codes("x = 3 // pages"), Vec::<&str>::new());
    assert_eq!(codes("if(a, b, c)\nend()"), vec!["E0030"]);
    assert_eq!(codes("if(a, b, '=', x)\nend()"), vec!["E0031"]);
    assert_eq!(codes("if(None, None, \"a >\")\nend()"), vec!["E0032"]);
    assert_eq!(codes("startLoop(i, 1, 3)\nend()"), vec!["E0020"]);
    assert_eq!(codes("end()"), vec!["E0021"]);
    assert_eq!(codes("addvar(x, 1)"), vec!["W0001"]);
    assert_eq!(codes("addVar(1, x)"), vec!["E0041"]);
    assert_eq!(codes("RequestGet(u, , , r)"), Vec::<&str>::new());
    assert_eq!(codes("RequestGet(u, , , )"), vec!["E0041"]);
    assert_eq!(codes("x = addResult(y)"), vec!["E0042"]);
}

#[test]
fn did_you_mean() {
    let result = check_file(
        SourceFile::new("t", "addvar(x, 1)\nstartloop(i, 1, 2)"),
        &avap_codegen::check::NoIncludes,
    );
    let helps: Vec<_> = result
        .diagnostics
        .iter()
        .map(|d| d.help.clone().unwrap_or_default())
        .collect();
    assert_eq!(helps, ["did you mean `addVar`?", "did you mean `startLoop`?"]);
    assert!(result.diagnostics.iter().all(|d| d.severity == Severity::Warning));
}
