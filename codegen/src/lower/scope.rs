//! Which names are local to a function (spec §6), decided statically.
//!
//! A function's locals are its parameters plus every name assigned with `=`,
//! `+=` (…) or a subscript assignment anywhere in its body. Any other name a
//! function reads or writes is a global (a top-level variable).

use indexmap::IndexSet;

use crate::ast::{Call, ExprKind, Stmt, StmtKind, TemplatePart, walk_stmt_exprs, walk_stmts};

/// Names assigned with an assignment statement in `body` (nested blocks
/// included, nested function definitions excluded — there are none in valid
/// programs).
pub(crate) fn assigned_names(body: &[Stmt]) -> IndexSet<String> {
    let mut names = IndexSet::new();
    walk_stmts(body, &mut |s| {
        if let StmtKind::Assign { target, .. } = &s.kind {
            names.insert(target.name.name.clone());
        }
    });
    names
}

/// Every name an `go_async` block writes: assignments, command targets, loop
/// counters and error variables. Used to build the dict `gather` returns.
pub(crate) fn written_names(
    body: &[Stmt],
    target_of: &dyn Fn(&crate::ast::Call) -> Option<String>,
) -> IndexSet<String> {
    let mut names = IndexSet::new();
    walk_stmts(body, &mut |s| match &s.kind {
        StmtKind::Assign { target, .. } => {
            names.insert(target.name.name.clone());
        }
        StmtKind::Call { call } => {
            if let Some(t) = target_of(call) {
                names.insert(t);
            }
        }
        StmtKind::Loop { var, .. } => {
            names.insert(var.name.clone());
        }
        StmtKind::Try { error_var, assign, .. } => {
            for v in [error_var, assign].into_iter().flatten() {
                names.insert(v.name.clone());
            }
        }
        _ => {}
    });
    names
}

/// Every variable name the top level (outside function definitions) may
/// touch. The top level keeps these in wasm locals and writes them back to
/// their global slots around calls (see `FuncCtx::flush_main`).
pub(crate) fn top_level_names(body: &[Stmt]) -> IndexSet<String> {
    let mut names = IndexSet::new();
    let outside_functions = body.iter().filter(|s| !matches!(s.kind, StmtKind::Function(_)));
    for s in outside_functions {
        walk_stmts(std::slice::from_ref(s), &mut |st| {
            match &st.kind {
                StmtKind::Assign { target, .. } => {
                    names.insert(target.name.name.clone());
                }
                StmtKind::Loop { var, .. } => {
                    names.insert(var.name.clone());
                }
                StmtKind::Try { error_var, assign, .. } => {
                    for v in [error_var, assign].into_iter().flatten() {
                        names.insert(v.name.clone());
                    }
                }
                StmtKind::Call { call } => quoted_names(call, &mut names),
                _ => {}
            }
            walk_stmt_exprs(st, &mut |e| match &e.kind {
                ExprKind::Name(id) | ExprKind::Global(id) => {
                    names.insert(id.name.clone());
                }
                ExprKind::Template(parts) => {
                    for p in parts {
                        if let TemplatePart::Var { name } = p {
                            names.insert(name.name.clone());
                        }
                    }
                }
                ExprKind::Call(c) => quoted_names(c, &mut names),
                _ => {}
            });
        });
    }
    names
}

/// Quoted name or target arguments (`addVar("x", 1)`) name variables too.
fn quoted_names(call: &Call, names: &mut IndexSet<String>) {
    for a in &call.args {
        if let Some(ExprKind::Str { value, .. }) = a.value.as_ref().map(|e| &e.kind)
            && super::command::is_identifier(value)
        {
            names.insert(value.clone());
        }
    }
}
