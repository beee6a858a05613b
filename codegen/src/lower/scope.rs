//! Which names are local to a function (spec §6), decided statically.
//!
//! A function's locals are its parameters plus every name assigned with `=`,
//! `+=` (…) or a subscript assignment anywhere in its body. Any other name a
//! function reads or writes is a global (a top-level variable).

use indexmap::IndexSet;

use crate::ast::{Stmt, StmtKind, walk_stmts};

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
pub(crate) fn written_names(body: &[Stmt], target_of: &dyn Fn(&crate::ast::Call) -> Option<String>) -> IndexSet<String> {
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
