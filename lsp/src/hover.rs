//! Hover: a command's forms, capability class and doc line; a user
//! function's signature; where a variable is first written.

use std::fmt::Write as _;

use avap_codegen::ast::Function;
use avap_hostfns::signature::{self, CommandSig, ParamKind, Returns};

use crate::analysis::{Analysis, Word, WriteKind};
use crate::statements;

/// The hover text (Markdown) and the span of the word it is about.
pub fn hover(analysis: &Analysis, offset: usize) -> Option<(String, avap_codegen::Span)> {
    if let Some((path, span)) = analysis.include_at(offset) {
        let text = format!("included file `{}` (go to definition opens it)", path.display());
        return Some((text, span));
    }
    let word = analysis.word_at(offset)?;
    let text = describe(analysis, &word, offset)?;
    Some((text, word.span))
}

fn describe(analysis: &Analysis, word: &Word, offset: usize) -> Option<String> {
    if word.attribute {
        return None;
    }
    if word.variable_only {
        return Some(variable(analysis, &word.name, offset, true));
    }
    let name = word.name.as_str();
    if word.called || word.defined {
        if let Some((file, f)) = analysis.function(name) {
            return Some(function(analysis, file, f));
        }
        if let Some(sig) = signature::command(name) {
            return Some(command(sig));
        }
        if let Some(b) = signature::builtin(name) {
            return Some(format!(
                "```avap\n{}\n```\n{}\n\n*built-in function*",
                b.form, b.summary
            ));
        }
        if let Some(s) = statements::statement(name) {
            return Some(format!("```avap\n{}\n```\n{}", s.form, s.summary));
        }
        return None;
    }
    // A bare name: a handler passed to `registerEndpoint`, or a variable.
    if let Some((file, f)) = analysis.function(name) {
        return Some(function(analysis, file, f));
    }
    Some(variable(analysis, name, offset, false))
}

/// `addParam(param, target)`, what it does, its class and parameters.
pub fn command(sig: &CommandSig) -> String {
    let mut out = String::from("```avap\n");
    for form in sig.forms {
        let _ = writeln!(out, "{}({})", sig.name, param_list(form));
    }
    out.push_str("```\n");
    out.push_str(sig.summary);
    let _ = write!(out, "\n\n*capability:* `{}`", sig.capability.as_str());
    let widest = sig.forms.iter().max_by_key(|f| f.len()).copied().unwrap_or_default();
    if !widest.is_empty() {
        let params: Vec<String> = widest
            .iter()
            .map(|p| format!("`{}` {}", p.name, kind_text(p.kind)))
            .collect();
        let _ = write!(out, " · *parameters:* {}", params.join(", "));
    }
    match sig.returns {
        Returns::Target => {
            let without_target = &widest[..widest.len().saturating_sub(1)];
            let _ = write!(
                out,
                "\n\n*assignment form:* `x = {}({})` (the target may be left out)",
                sig.name,
                param_list(without_target)
            );
        }
        Returns::Value => {
            let _ = write!(out, "\n\n*yields a value:* `x = {}({})`", sig.name, param_list(widest));
        }
        Returns::Nothing => out.push_str("\n\n*yields no value:* call it on its own line"),
    }
    out
}

fn param_list(params: &[avap_hostfns::signature::Param]) -> String {
    params.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

fn kind_text(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Target => "(target: the variable it writes)",
        ParamKind::Name => "(name: the variable it reads)",
        ParamKind::Value => "(value)",
        ParamKind::Literal => "(literal: taken as written)",
    }
}

/// `function name(a, b)` and where it is defined.
pub fn function(analysis: &Analysis, file: usize, f: &Function) -> String {
    let source = analysis.checked.sources.get(file);
    let line = source.line_col(f.header.start as usize).line;
    let place = if file == 0 {
        format!("defined at line {line}")
    } else {
        format!("defined in `{}` at line {line}", source.name())
    };
    format!("```avap\n{}\n```\n*user function*, {place}", signature_text(f))
}

/// `function name(a, b)`.
pub fn signature_text(f: &Function) -> String {
    let params: Vec<&str> = f.params.iter().map(|p| p.name.as_str()).collect();
    format!("function {}({})", f.name.name, params.join(", "))
}

fn variable(analysis: &Analysis, name: &str, offset: usize, global_only: bool) -> String {
    let head = format!("```avap\n{name}\n```\n");
    let Some(write) = analysis.first_write(name, offset, global_only) else {
        return format!(
            "{head}*variable*, not assigned in this script (read in an expression it raises NameError; as a command's value argument it is its own text)"
        );
    };
    let at = write.span.start as usize;
    let line = analysis.main().line_col(at).line;
    let what = match write.kind {
        WriteKind::Parameter => format!("*parameter*, line {line}"),
        WriteKind::Assignment => format!("*variable*, first assigned at line {line}"),
        WriteKind::LoopCounter => format!("*variable*, first assigned as a loop counter at line {line}"),
        WriteKind::ErrorVariable => format!("*variable*, first assigned as an error variable at line {line}"),
        WriteKind::CommandTarget(cmd) => format!("*variable*, first assigned by `{cmd}` at line {line}"),
    };
    format!("{head}{what}:\n```avap\n{}\n```", shorten(analysis.line_text(at)))
}

/// A source line for a hover: at most 120 characters.
fn shorten(line: &str) -> String {
    const MAX: usize = 120;
    if line.chars().count() <= MAX {
        return line.to_owned();
    }
    let cut: String = line.chars().take(MAX).collect();
    format!("{cut}…")
}
