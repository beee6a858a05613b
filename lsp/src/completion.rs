//! Completion: command names with their parameters as snippet
//! placeholders, built-ins, statement words, user functions and the
//! variables in scope at the cursor. The client filters by what is typed.

use avap_codegen::lexer::TokenKind;
use avap_hostfns::signature::{self, Param, Returns};
use lsp_types::{
    CompletionItem, CompletionItemKind, CompletionItemLabelDetails, Documentation, InsertTextFormat, MarkupContent,
    MarkupKind,
};

use crate::analysis::Analysis;
use crate::hover;
use crate::statements::STATEMENTS;

/// What may be written at the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Anything: a statement, a call, a value.
    Code {
        /// Nothing but blanks before the word on its line.
        line_start: bool,
        /// After `name =`: a command's trailing target may be left out.
        assigned: bool,
    },
    /// After `$` or inside `${…}` of a template: a variable name.
    Variable,
    /// In a string or a comment, or after `.`: nothing we can offer.
    Nothing,
}

pub fn complete(analysis: &Analysis, offset: usize, snippets: bool) -> Vec<CompletionItem> {
    let context = context(analysis, offset);
    let mut items = Vec::new();
    if context == Context::Nothing {
        return items;
    }
    for v in analysis.variables_at(offset) {
        items.push(CompletionItem {
            label: v.name.clone(),
            kind: Some(CompletionItemKind::VARIABLE),
            detail: Some(format!(
                "variable, line {}",
                analysis.main().line_col(v.span.start as usize).line
            )),
            sort_text: Some(format!("0{}", v.name)),
            ..CompletionItem::default()
        });
    }
    let Context::Code { line_start, assigned } = context else {
        return items;
    };
    let mut functions: Vec<_> = analysis.checked.functions.keys().collect();
    functions.sort();
    for name in functions {
        let Some((file, f)) = analysis.function(name) else {
            continue;
        };
        let params: Vec<&str> = f.params.iter().map(|p| p.name.as_str()).collect();
        items.push(call_item(
            name,
            &params,
            CompletionItemKind::FUNCTION,
            hover::signature_text(f),
            hover::function(analysis, file, f),
            "1",
            snippets,
        ));
    }
    for sig in signature::commands() {
        let form = sig.forms.first().copied().unwrap_or_default();
        // `x = cmd(…)`: the assignment supplies the trailing target.
        let written: &[Param] = if assigned && sig.returns == Returns::Target {
            &form[..form.len().saturating_sub(1)]
        } else {
            form
        };
        let params: Vec<&str> = written.iter().map(|p| p.name).collect();
        items.push(call_item(
            sig.name,
            &params,
            CompletionItemKind::FUNCTION,
            format!("{}({}) · {}", sig.name, params.join(", "), sig.capability.as_str()),
            hover::command(sig),
            "2",
            snippets,
        ));
    }
    for b in signature::builtins() {
        let params: Vec<&str> = if b.max_args == 0 { vec![] } else { vec!["value"] };
        items.push(call_item(
            b.name,
            &params,
            CompletionItemKind::FUNCTION,
            b.form.to_owned(),
            b.summary.to_owned(),
            "3",
            snippets,
        ));
    }
    if line_start {
        for s in STATEMENTS {
            items.push(CompletionItem {
                label: s.name.to_owned(),
                kind: Some(CompletionItemKind::KEYWORD),
                detail: Some(s.form.to_owned()),
                documentation: Some(markdown(s.summary.to_owned())),
                insert_text: snippets.then(|| s.snippet.to_owned()),
                insert_text_format: snippets.then_some(InsertTextFormat::SNIPPET),
                sort_text: Some(format!("4{}", s.name)),
                ..CompletionItem::default()
            });
        }
    }
    items
}

/// `name(${1:a}, ${2:b})` as a snippet, or the bare name for clients
/// without snippets.
fn call_item(
    name: &str,
    params: &[&str],
    kind: CompletionItemKind,
    detail: String,
    doc: String,
    group: &str,
    snippets: bool,
) -> CompletionItem {
    let placeholders: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, p)| format!("${{{}:{p}}}", i + 1))
        .collect();
    CompletionItem {
        label: name.to_owned(),
        label_details: Some(CompletionItemLabelDetails {
            detail: Some(format!("({})", params.join(", "))),
            description: None,
        }),
        kind: Some(kind),
        detail: Some(detail),
        documentation: Some(markdown(doc)),
        insert_text: snippets.then(|| format!("{name}({})", placeholders.join(", "))),
        insert_text_format: snippets.then_some(InsertTextFormat::SNIPPET),
        sort_text: Some(format!("{group}{name}")),
        ..CompletionItem::default()
    }
}

fn markdown(value: String) -> Documentation {
    Documentation::MarkupContent(MarkupContent {
        kind: MarkupKind::Markdown,
        value,
    })
}

fn context(analysis: &Analysis, offset: usize) -> Context {
    let text = analysis.main().text();
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    for t in &analysis.tokens {
        let (start, end) = (t.span.start as usize, t.span.end as usize);
        if start < offset && offset < end {
            match &t.kind {
                TokenKind::Str { .. } => return Context::Nothing,
                TokenKind::Template(_) => {
                    // In `${…` (not yet closed): a variable name.
                    let before = &text[start..offset];
                    let open = before.rfind("${");
                    return match open {
                        Some(at) if !before[at..].contains('}') => Context::Variable,
                        _ => Context::Nothing,
                    };
                }
                _ => {}
            }
        }
    }
    // Comments are no tokens: the text since the last token tells.
    let previous_end = analysis
        .tokens
        .iter()
        .map(|t| t.span.end as usize)
        .take_while(|&end| end <= offset)
        .last()
        .unwrap_or(0);
    let gap = text.get(previous_end..offset).unwrap_or("");
    if gap.contains("//") || gap.rfind("/*").is_some_and(|at| !gap[at..].contains("*/")) {
        return Context::Nothing;
    }
    let before = &text[..offset];
    let word_start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
        .last()
        .map_or(offset, |(i, _)| i);
    let line = &before[before[..word_start].rfind('\n').map_or(0, |i| i + 1)..word_start];
    match line.chars().last() {
        Some('.') => Context::Nothing,
        Some('$') => Context::Variable,
        _ => Context::Code {
            line_start: line.trim().is_empty(),
            assigned: is_assignment_head(line),
        },
    }
}

/// `name =` (or `name +=` …) and blanks: the head of an assignment.
fn is_assignment_head(line: &str) -> bool {
    let line = line.trim();
    let Some(head) = line.strip_suffix('=') else {
        return false;
    };
    let head = head.trim_end_matches(['+', '-', '*', '/']).trim();
    avap_codegen::parser::is_identifier(head)
}
