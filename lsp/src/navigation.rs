//! Go to definition (user functions, includes, variables) and the
//! document's symbols (functions, `registerEndpoint` routes).

use std::path::PathBuf;

use avap_codegen::Span;
use avap_codegen::ast::{Call, ExprKind, StmtKind, walk_expr, walk_stmt_exprs, walk_stmts};
use avap_codegen::diag::FileId;

use crate::analysis::Analysis;
use crate::hover::signature_text;

/// Where a definition is: the main document (`None`) or another file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub file: Option<PathBuf>,
    /// Byte span in that file (`0..0` for a whole included file).
    pub span: Span,
    /// The file's id when the checker loaded it (for its line index).
    pub file_id: Option<FileId>,
}

pub fn definition(analysis: &Analysis, offset: usize) -> Option<Target> {
    if let Some((path, _)) = analysis.include_at(offset) {
        let file_id = analysis.checked.sources.find(&path.display().to_string());
        return Some(Target {
            file: Some(path),
            span: Span::new(0, 0),
            file_id,
        });
    }
    let word = analysis.word_at(offset)?;
    if word.attribute {
        return None;
    }
    if !word.variable_only
        && let Some((file, f)) = analysis.function(&word.name)
    {
        return Some(in_file(analysis, file, f.name.span));
    }
    let write = analysis.first_write(&word.name, offset, word.variable_only)?;
    Some(in_file(analysis, 0, write.span))
}

fn in_file(analysis: &Analysis, file: FileId, span: Span) -> Target {
    Target {
        file: if file == 0 { None } else { analysis.file_path(file) },
        span,
        file_id: Some(file),
    }
}

/// A document symbol before conversion to LSP positions.
#[derive(Debug, Clone)]
pub struct Symbol {
    pub name: String,
    pub detail: String,
    pub endpoint: bool,
    /// The whole construct.
    pub span: Span,
    /// The part to select (the name).
    pub name_span: Span,
}

/// The main file's functions, then its `registerEndpoint` routes, in
/// source order each.
pub fn symbols(analysis: &Analysis) -> Vec<Symbol> {
    let program = analysis.program();
    let mut out = Vec::new();
    for s in &program.body {
        if let StmtKind::Function(f) = &s.kind
            && !f.name.name.is_empty()
        {
            out.push(Symbol {
                name: f.name.name.clone(),
                detail: signature_text(f),
                endpoint: false,
                span: s.span,
                name_span: f.name.span,
            });
        }
    }
    walk_stmts(&program.body, &mut |s| {
        let mut calls: Vec<&Call> = Vec::new();
        if let StmtKind::Call { call } = &s.kind {
            calls.push(call);
        }
        walk_stmt_exprs(s, &mut |e| {
            walk_expr(e, &mut |inner| {
                if let ExprKind::Call(c) = &inner.kind {
                    calls.push(c);
                }
            });
        });
        for call in calls {
            if call.name().is_some_and(|n| n.name == "registerEndpoint")
                && let Some(symbol) = endpoint(analysis, call)
                && !out.iter().any(|o: &Symbol| o.span == symbol.span)
            {
                out.push(symbol);
            }
        }
    });
    out
}

/// `GET /users → listUsers` for `registerEndpoint("/users", "GET", …, listUsers, …)`.
fn endpoint(analysis: &Analysis, call: &Call) -> Option<Symbol> {
    let text = analysis.main().text();
    let written = |i: usize| -> Option<String> {
        let e = call.args.get(i)?.value.as_ref()?;
        Some(match &e.kind {
            ExprKind::Str { value, .. } => value.clone(),
            _ => text.get(e.span.range())?.to_owned(),
        })
    };
    let path = written(0)?;
    let method = written(1).unwrap_or_else(|| "?".into());
    let handler = written(4).unwrap_or_default();
    Some(Symbol {
        name: format!("{} {path}", method.to_ascii_uppercase()),
        detail: if handler.is_empty() {
            "endpoint".into()
        } else {
            format!("endpoint → {handler}")
        },
        endpoint: true,
        span: call.span,
        name_span: call.args.first().map_or(call.span, |a| a.span),
    })
}
