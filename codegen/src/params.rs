//! Which request parameters a script reads, as far as the source says:
//! the `addParam` names written as a string literal or a bare name, for the
//! top level and for each user function ([`ParamsMeta`], recorded in the
//! artifact's meta so a server can describe a stored script's API).
//!
//! A function's list includes the names read by the user functions it calls
//! by name, transitively (a helper like `function readPaging(){
//! addParam(limit, limit) }` counts for the handler that calls it). What
//! cannot be seen statically is left out: functions reached only at run time
//! (a handler or middleware named by a computed value), and names that are
//! not a word or a text (the checker refuses expressions there; `1`, `None`
//! and `""` pass it but name no real parameter). The lists are therefore a
//! lower bound, in order of first appearance.

use std::collections::{BTreeMap, HashMap, HashSet};

use avap_hostfns::artifact::ParamsMeta;
use indexmap::IndexSet;

use crate::ast::{Call, ExprKind, Function, Stmt, StmtKind, walk_stmt_exprs};
use crate::check::CheckedProgram;

/// The command whose parameter names are collected.
const ADD_PARAM: &str = "addParam";

/// Names a piece of code reads itself, and the user functions it calls.
#[derive(Debug, Default)]
struct Reads {
    params: IndexSet<String>,
    calls: IndexSet<String>,
}

/// The statically known `addParam` names of a checked program.
pub fn read_params(checked: &CheckedProgram) -> ParamsMeta {
    let functions = user_functions(checked);
    let own: HashMap<&str, Reads> = functions
        .iter()
        .map(|(name, f)| (name.as_str(), reads_of(&f.body, &functions)))
        .collect();
    let top = reads_of(&checked.programs[0].body, &functions);

    let closure = |start: &Reads| -> Vec<String> {
        let mut names = start.params.clone();
        let mut visited = HashSet::new();
        let mut pending: Vec<&str> = start.calls.iter().rev().map(String::as_str).collect();
        while let Some(callee) = pending.pop() {
            if !visited.insert(callee) {
                continue;
            }
            if let Some(reads) = own.get(callee) {
                names.extend(reads.params.iter().cloned());
                pending.extend(reads.calls.iter().rev().map(String::as_str));
            }
        }
        names.into_iter().collect()
    };

    ParamsMeta {
        top_level: closure(&top),
        functions: functions
            .keys()
            .map(|name| (name.clone(), closure(&own[name.as_str()])))
            .filter(|(_, names)| !names.is_empty())
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Every user function by name; the first definition wins, in the order the
/// lowering declares them (file, then position), nested ones included.
fn user_functions(checked: &CheckedProgram) -> BTreeMap<String, &Function> {
    let mut out = BTreeMap::new();
    for program in &checked.programs {
        crate::ast::walk_stmts(&program.body, &mut |s| {
            if let StmtKind::Function(f) = &s.kind {
                out.entry(f.name.name.clone()).or_insert(f);
            }
        });
    }
    out
}

/// What `body` reads and calls when it runs: nested function definitions
/// are only definitions, so their bodies are not part of it.
fn reads_of(body: &[Stmt], functions: &BTreeMap<String, &Function>) -> Reads {
    let mut reads = Reads::default();
    each_call_run_by(body, &mut |call| {
        let Some(name) = call.name().map(|n| n.name.as_str()) else {
            return;
        };
        if name == ADD_PARAM {
            if let Some(param) = call.args.first().and_then(static_param_name) {
                reads.params.insert(param);
            }
        } else if functions.contains_key(name) {
            reads.calls.insert(name.to_owned());
        }
    });
    reads
}

/// The parameter name when the source spells it out: a quoted string or a
/// bare name (the argument is taken as written, spec §4 *literal*).
fn static_param_name(arg: &crate::ast::Arg) -> Option<String> {
    match arg.value.as_ref().map(|e| &e.kind) {
        Some(ExprKind::Str { value, .. }) if !value.is_empty() => Some(value.clone()),
        Some(ExprKind::Name(id)) => Some(id.name.clone()),
        _ => None,
    }
}

/// Every call in `body`, its blocks and expressions, but not inside the
/// bodies of functions defined there.
fn each_call_run_by<'a>(body: &'a [Stmt], f: &mut dyn FnMut(&'a Call)) {
    for s in body {
        // Visits every sub-expression too (as `lower::each_call` relies on).
        walk_stmt_exprs(s, &mut |e| {
            if let ExprKind::Call(c) = &e.kind {
                f(c);
            }
        });
        match &s.kind {
            StmtKind::Call { call } => f(call),
            StmtKind::If {
                then_body, else_body, ..
            } => {
                each_call_run_by(then_body, f);
                if let Some(e) = else_body {
                    each_call_run_by(e, f);
                }
            }
            StmtKind::Loop { body, .. } | StmtKind::Async { body, .. } => each_call_run_by(body, f),
            StmtKind::Try { body, handler, .. } => {
                each_call_run_by(body, f);
                each_call_run_by(handler, f);
            }
            StmtKind::Assign { .. } | StmtKind::Function(_) | StmtKind::Return { .. } | StmtKind::Include { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::NoIncludes;
    use crate::{SourceFile, check_file};

    fn params_of(text: &str) -> ParamsMeta {
        let checked = check_file(SourceFile::new("api.avap", text), &NoIncludes);
        assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
        read_params(&checked)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn literal_and_bare_names_are_collected_per_function_and_through_calls() {
        let params = params_of(
            r#"addParam(lang, lang)
function paging(){
    addParam("limit", limit)
    addParam(offset, offset)
}
function listUsers(){
    paging()
    addParam(limit, again)
    if(limit, None, =)
        addParam(fallback, limit)
    end()
}
function createUser(){
    addParam(name, name)
}
function quiet(){
    addVar(x, 1)
}
registerEndpoint("/users", "GET", [], "List users", listUsers, limit)
registerEndpoint("/users", "POST", [], "Create a user", createUser, name)
"#,
        );
        assert_eq!(params.top_level, names(&["lang"]));
        assert_eq!(params.functions["paging"], names(&["limit", "offset"]));
        // Own names first, then the callee's; each once.
        assert_eq!(params.functions["listUsers"], names(&["limit", "fallback", "offset"]));
        assert_eq!(params.functions["createUser"], names(&["name"]));
        assert!(!params.functions.contains_key("quiet"), "{params:?}");
    }

    #[test]
    fn names_that_are_not_a_word_or_text_are_left_out() {
        // The checker refuses expressions as the name; numbers, `None` and
        // the empty text pass it but name no real query parameter.
        let params = params_of(
            r#"addParam(1, a)
addParam(None, b)
addParam("", c)
addParam(kept, d)
addParam("also kept", e)
"#,
        );
        assert_eq!(params.top_level, names(&["kept", "also kept"]));
        assert!(params.functions.is_empty());
    }

    #[test]
    fn mutual_recursion_terminates_and_top_level_includes_called_functions() {
        let params = params_of(
            r"function ping(n){
    addParam(a, a)
    if(n, 0, >)
        pong(n - 1)
    end()
}
function pong(n){
    addParam(b, b)
    ping(n)
}
ping(2)
",
        );
        assert_eq!(params.functions["ping"], names(&["a", "b"]));
        assert_eq!(params.functions["pong"], names(&["b", "a"]));
        assert_eq!(params.top_level, names(&["a", "b"]));
    }

    #[test]
    fn a_script_without_add_param_has_empty_params() {
        assert!(params_of("addVar(x, 1)\naddResult(x)\n").is_empty());
    }

    #[test]
    fn the_artifact_meta_records_written_middleware_and_endpoint_params() {
        let text = r#"function auth(){
    addParam(token, token)
}
function log(){
    addVar(seen, 1)
}
function greet(){
    addParam(name, who)
}
registerEndpoint("/a", "GET", [auth, "log"], "A", greet, who)
registerEndpoint("/b", "GET", "auth, log", "B", greet, who)
registerEndpoint("/c", "GET", '["log", "auth"]', "C", greet, who)
registerEndpoint("/d", "GET", None, "D", greet, who)
"#;
        let checked = check_file(SourceFile::new("api.avap", text), &NoIncludes);
        assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
        let meta = crate::compile(&checked, None).meta;
        let middleware: Vec<&[String]> = meta.endpoints.iter().map(|e| e.middleware.as_slice()).collect();
        assert_eq!(
            middleware,
            [
                &names(&["auth", "log"])[..],
                &names(&["auth", "log"]),
                &names(&["log", "auth"]),
                &[]
            ]
        );
        assert_eq!(meta.params.for_endpoint(&meta.endpoints[0]), names(&["token", "name"]));
        assert_eq!(meta.params.for_endpoint(&meta.endpoints[3]), names(&["name"]));
    }
}
