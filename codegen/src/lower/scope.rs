//! Which names are local to a function (spec §6), decided statically.
//!
//! A function's locals are its parameters plus every name assigned with `=`,
//! `+=` (…) or a subscript assignment anywhere in its body. Any other name a
//! function reads or writes is a global (a top-level variable).

use indexmap::IndexSet;

use crate::ast::{ExprKind, Stmt, StmtKind, walk_stmts};

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
    top_level_stmts(body, &mut names);
    names
}

fn top_level_stmts(body: &[Stmt], names: &mut IndexSet<String>) {
    use crate::ast::Condition;
    for s in body {
        match &s.kind {
            StmtKind::Assign { target, value, .. } => {
                names.insert(target.name.name.clone());
                target.indices.iter().for_each(|i| expr_names(i, names));
                expr_names(value, names);
            }
            StmtKind::Call { call } => call_names(call, names),
            StmtKind::If {
                condition,
                then_body,
                else_body,
            } => {
                match condition {
                    Condition::Compare { lhs, rhs, .. } => {
                        for a in [lhs, rhs] {
                            if let Some(e) = &a.value {
                                expr_names(e, names);
                            }
                        }
                    }
                    Condition::Expression { expr, .. } => expr_names(expr, names),
                }
                top_level_stmts(then_body, names);
                if let Some(e) = else_body {
                    top_level_stmts(e, names);
                }
            }
            StmtKind::Loop { var, from, to, body } => {
                names.insert(var.name.clone());
                expr_names(from, names);
                expr_names(to, names);
                top_level_stmts(body, names);
            }
            StmtKind::Try {
                body,
                error_var,
                assign,
                handler,
            } => {
                for v in [error_var, assign].into_iter().flatten() {
                    names.insert(v.name.clone());
                }
                top_level_stmts(body, names);
                top_level_stmts(handler, names);
            }
            StmtKind::Return { value: Some(v) } => expr_names(v, names),
            StmtKind::Async { id, body } => {
                expr_names(id, names);
                top_level_stmts(body, names);
            }
            StmtKind::Function(_) | StmtKind::Include { .. } | StmtKind::Return { value: None } => {}
        }
    }
}

fn call_names(call: &crate::ast::Call, names: &mut IndexSet<String>) {
    expr_names(&call.callee, names);
    for a in &call.args {
        if let Some(e) = &a.value {
            if let ExprKind::Str { value, .. } = &e.kind {
                // A quoted name or target argument.
                if super::command::is_identifier(value) {
                    names.insert(value.clone());
                }
            }
            expr_names(e, names);
        }
    }
}

fn expr_names(e: &crate::ast::Expr, names: &mut IndexSet<String>) {
    match &e.kind {
        ExprKind::Name(id) | ExprKind::Global(id) => {
            names.insert(id.name.clone());
        }
        ExprKind::Template(parts) => {
            for p in parts {
                if let crate::ast::TemplatePart::Var { name } = p {
                    names.insert(name.name.clone());
                }
            }
        }
        ExprKind::List(items) => items.iter().for_each(|i| expr_names(i, names)),
        ExprKind::Dict(entries) => {
            for (k, v) in entries {
                expr_names(k, names);
                expr_names(v, names);
            }
        }
        ExprKind::Unary { operand, .. } => expr_names(operand, names),
        ExprKind::Binary { lhs, rhs, .. } | ExprKind::Logical { lhs, rhs, .. } => {
            expr_names(lhs, names);
            expr_names(rhs, names);
        }
        ExprKind::Compare { first, rest } => {
            expr_names(first, names);
            for (_, r) in rest {
                expr_names(r, names);
            }
        }
        ExprKind::Conditional { then, cond, otherwise } => {
            expr_names(then, names);
            expr_names(cond, names);
            expr_names(otherwise, names);
        }
        ExprKind::Call(c) => call_names(c, names),
        ExprKind::Index { object, index } => {
            expr_names(object, names);
            expr_names(index, names);
        }
        ExprKind::Attribute { object, .. } => expr_names(object, names),
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Str { .. } | ExprKind::Bool(_) | ExprKind::None => {}
    }
}
