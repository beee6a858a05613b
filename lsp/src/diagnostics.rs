//! The checker's diagnostics as LSP diagnostics: the same codes, messages
//! and severities as `avap check`, notes and help appended as lines, the
//! secondary labels as related information. A diagnostic inside an
//! included file is shown at the `include` that brought it in, prefixed
//! with where it really is (and that place as related information).

use std::fmt::Write as _;

use avap_codegen::Diagnostic as Finding;
use avap_codegen::Severity;
use avap_codegen::diag::FileId;
use lsp_types::{Diagnostic, DiagnosticRelatedInformation, DiagnosticSeverity, Location, NumberOrString, Range, Uri};

use crate::analysis::Analysis;
use crate::documents::file_uri;
use crate::position::{Encoding, LineIndex};

pub fn to_lsp(analysis: &Analysis, uri: &Uri, encoding: Encoding) -> Vec<Diagnostic> {
    analysis
        .checked
        .diagnostics
        .iter()
        .map(|d| convert(analysis, uri, encoding, d))
        .collect()
}

/// The LSP range of `span` in a loaded file.
pub fn range_in(analysis: &Analysis, file: FileId, start: usize, end: usize, encoding: Encoding) -> Range {
    let source = analysis.checked.sources.get(file);
    LineIndex::new(source.text(), source.line_starts(), encoding).range(start, end)
}

/// Where a loaded file is, as a URI: the document itself for file 0.
fn location(analysis: &Analysis, uri: &Uri, file: FileId, range: Range) -> Option<Location> {
    let file_uri = if file == 0 {
        uri.clone()
    } else {
        file_uri(&analysis.file_path(file)?)?
    };
    Some(Location::new(file_uri, range))
}

fn convert(analysis: &Analysis, uri: &Uri, encoding: Encoding, d: &Finding) -> Diagnostic {
    let span_range = |file: FileId, span: avap_codegen::Span| {
        range_in(analysis, file, span.start as usize, span.end as usize, encoding)
    };
    let mut message = String::new();
    let mut related = Vec::new();
    let range = if d.file == 0 {
        span_range(0, d.span)
    } else {
        // In an included file: at the include, saying where.
        let source = analysis.checked.sources.get(d.file);
        let at = source.line_col(d.span.start as usize);
        let _ = write!(message, "in {}:{}:{}: ", source.name(), at.line, at.column);
        if let Some(here) = location(analysis, uri, d.file, span_range(d.file, d.span)) {
            related.push(DiagnosticRelatedInformation {
                location: here,
                message: d.message.clone(),
            });
        }
        analysis
            .include_site(d.file)
            .map_or_else(Range::default, |site| span_range(0, site))
    };
    message.push_str(&d.message);
    for note in &d.notes {
        let _ = write!(message, "\nnote: {note}");
    }
    if let Some(help) = &d.help {
        let _ = write!(message, "\nhelp: {help}");
    }
    for label in &d.secondary {
        if let Some(place) = location(analysis, uri, label.file, span_range(label.file, label.span)) {
            related.push(DiagnosticRelatedInformation {
                location: place,
                message: label.message.clone(),
            });
        }
    }
    Diagnostic {
        range,
        severity: Some(match d.severity {
            Severity::Error => DiagnosticSeverity::ERROR,
            Severity::Warning => DiagnosticSeverity::WARNING,
        }),
        code: Some(NumberOrString::String(d.code.as_str().to_owned())),
        source: Some("avap".to_owned()),
        message,
        related_information: (!related.is_empty()).then_some(related),
        ..Diagnostic::default()
    }
}
