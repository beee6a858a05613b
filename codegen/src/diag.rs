//! Diagnostics: data first, rendering second (text with a caret, or JSON).

use serde::Serialize;

use crate::span::{LineCol, SourceFile, Span};

/// Index of a file in a [`Sources`] set.
pub type FileId = usize;

/// Error or warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

macro_rules! codes {
    ($($variant:ident = $code:literal, $sev:ident, $doc:literal;)*) => {
        /// Stable diagnostic codes. Codes are never reused or renumbered;
        /// `docs/language.md` lists each with an example.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = $doc] $variant,)*
        }

        impl Code {
            /// Every code, in numeric order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The stable code text (`E0001`, `W0001`, …).
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            /// The severity a diagnostic with this code has by default.
            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$sev,)* }
            }

            /// One-line description of the code.
            pub fn description(self) -> &'static str {
                match self { $(Code::$variant => $doc,)* }
            }
        }
    };
}

codes! {
    UnexpectedChar = "E0001", Error, "a character that cannot start any token";
    UnterminatedString = "E0002", Error, "a string literal without its closing quote on the same line";
    UnterminatedComment = "E0003", Error, "a `/*` comment without `*/`";
    UnterminatedTemplate = "E0004", Error, "a backtick template without its closing backtick";
    InvalidEscape = "E0005", Error, "a malformed `\\uXXXX` escape";
    IntegerTooLarge = "E0006", Error, "an integer literal outside the 64-bit signed range";
    InvalidNumber = "E0007", Error, "a malformed number literal";
    InvalidPlaceholder = "E0008", Error, "a `${…}` template placeholder that is not a variable name";
    UnexpectedToken = "E0010", Error, "the parser expected something else here";
    TrailingTokens = "E0011", Error, "extra text after a complete statement";
    InvalidAssignTarget = "E0012", Error, "the left side of `=` is not a variable or subscript";
    NestingTooDeep = "E0013", Error, "expressions or blocks nested beyond the supported depth";
    NotAStatement = "E0014", Error, "an expression on its own line that has no effect";
    UnclosedBracket = "E0015", Error, "an opening bracket without its closing bracket";
    UnclosedBlock = "E0020", Error, "a block opener without its closer";
    StrayCloser = "E0021", Error, "a block closer with no open block of its kind";
    MisplacedFunction = "E0022", Error, "a function definition inside another block";
    ReturnOutsideFunction = "E0023", Error, "`return` outside a function body";
    TryWithoutException = "E0024", Error, "a `try()` block with no `exception(…)` part";
    DuplicateBranch = "E0025", Error, "a second `else()` or `exception()` in the same block";
    StatementArguments = "E0026", Error, "wrong arguments to a block statement (`else`, `end`, `try`, `startLoop`, …)";
    BadComparator = "E0030", Error, "the third argument of `if` is not a comparator";
    IfArity = "E0031", Error, "`if` called with other than three arguments";
    BadConditionExpression = "E0032", Error, "the expression string of an expression-mode `if` does not parse";
    CommandArity = "E0040", Error, "a command called with the wrong number of arguments";
    ExpectedVariableName = "E0041", Error, "a target or name parameter given something other than a variable name";
    NoValue = "E0042", Error, "a command that yields no value used as a value";
    EmptyArgument = "E0043", Error, "an empty argument outside a command call";
    FunctionArity = "E0044", Error, "a user or built-in function called with the wrong number of arguments";
    ExpectedLiteral = "E0045", Error, "a literal parameter (taken as written) given an expression";
    ShadowsCommand = "E0050", Error, "a user function named like a built-in command or function";
    DuplicateFunction = "E0051", Error, "two functions with the same name";
    DuplicateParameter = "E0052", Error, "a parameter name used twice in one function";
    IncludeNotFound = "E0060", Error, "an included file that cannot be read";
    IncludeCycle = "E0061", Error, "files that include each other";
    IncludePath = "E0062", Error, "an `include`/`import` whose argument is not a string literal";
    IncludeNotTopLevel = "E0063", Error, "an `include`/`import` inside a block or function";
    HandlerNotFunction = "E0070", Error, "a `registerEndpoint` handler or middleware that is not a function";
    BadMethod = "E0071", Error, "a `registerEndpoint` HTTP method that is not supported";
    FunctionTooLarge = "E0080", Error, "a function, `go_async` block or top-level statement that compiles to more code than one function may hold";
    TooManyVariables = "E0081", Error, "a function with more variables and parameters than one function may hold";
    ProgramTooLarge = "E0082", Error, "a script that compiles to more code than the compile budget allows";
    UnknownCommand = "W0001", Warning, "a call to a name that is neither a command nor a function (a runtime `NameError`)";
    CommentLooksLikeFloorDivision = "W0002", Warning, "`//` after an operand starts a comment, not floor division";
    UnreachableCode = "W0003", Warning, "statements after `return` or `raise` in the same block";
    IncludeTopLevel = "W0004", Warning, "top-level statements in an included file are ignored";
}

/// A secondary location with a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub file: FileId,
    pub span: Span,
    pub message: String,
}

/// One finding, independent of how it is shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    pub file: FileId,
    pub span: Span,
    /// Text shown under the caret of the primary span.
    pub label: Option<String>,
    pub secondary: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic of `code`'s default severity in file 0.
    pub fn new(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: code.severity(),
            message: message.into(),
            file: 0,
            span,
            label: None,
            secondary: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    #[must_use]
    pub fn in_file(mut self, file: FileId) -> Diagnostic {
        for l in &mut self.secondary {
            if l.file == self.file {
                l.file = file;
            }
        }
        self.file = file;
        self
    }

    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    /// A secondary span in the same file.
    #[must_use]
    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.secondary.push(Label {
            file: self.file,
            span,
            message: message.into(),
        });
        self
    }

    /// A secondary span in a given file (which may differ from the primary's).
    #[must_use]
    pub fn with_secondary_in(mut self, file: FileId, span: Span, message: impl Into<String>) -> Diagnostic {
        self.secondary.push(Label {
            file,
            span,
            message: message.into(),
        });
        self
    }

    #[must_use]
    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The files diagnostics point into. File 0 is the main script; included
/// files follow.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    pub fn new() -> Sources {
        Sources::default()
    }

    pub fn add(&mut self, file: SourceFile) -> FileId {
        self.files.push(file);
        self.files.len() - 1
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id]
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn find(&self, name: &str) -> Option<FileId> {
        self.files.iter().position(|f| f.name() == name)
    }

    fn line_col(&self, file: FileId, offset: u32) -> LineCol {
        self.get(file).line_col(offset as usize)
    }
}

impl<'a> codespan_reporting::files::Files<'a> for Sources {
    type FileId = FileId;
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, id: FileId) -> Result<&'a str, codespan_reporting::files::Error> {
        self.files
            .get(id)
            .map(SourceFile::name)
            .ok_or(codespan_reporting::files::Error::FileMissing)
    }

    fn source(&'a self, id: FileId) -> Result<&'a str, codespan_reporting::files::Error> {
        self.files
            .get(id)
            .map(SourceFile::text)
            .ok_or(codespan_reporting::files::Error::FileMissing)
    }

    fn line_index(&'a self, id: FileId, byte_index: usize) -> Result<usize, codespan_reporting::files::Error> {
        let file = self
            .files
            .get(id)
            .ok_or(codespan_reporting::files::Error::FileMissing)?;
        Ok(file.line_index(byte_index.min(file.text().len())))
    }

    fn line_range(
        &'a self,
        id: FileId,
        line_index: usize,
    ) -> Result<std::ops::Range<usize>, codespan_reporting::files::Error> {
        let file = self
            .files
            .get(id)
            .ok_or(codespan_reporting::files::Error::FileMissing)?;
        let starts = file.line_starts();
        let start = *starts
            .get(line_index)
            .ok_or(codespan_reporting::files::Error::LineTooLarge {
                given: line_index,
                max: starts.len() - 1,
            })?;
        let end = starts.get(line_index + 1).copied().unwrap_or(file.text().len());
        Ok(start..end)
    }
}

/// Render diagnostics for a terminal: the source line with a caret under
/// the span, secondary labels, notes and help.
pub fn render_text(sources: &Sources, diagnostics: &[Diagnostic], color: bool) -> String {
    use codespan_reporting::diagnostic as cs;
    use codespan_reporting::term::{self, termcolor};

    let config = term::Config::default();
    let mut out: Vec<u8> = Vec::new();
    for d in diagnostics {
        let mut primary = cs::Label::primary(d.file, clamp(sources, d.file, d.span));
        if let Some(label) = &d.label {
            primary = primary.with_message(label);
        }
        let mut labels = vec![primary];
        labels.extend(
            d.secondary
                .iter()
                .map(|l| cs::Label::secondary(l.file, clamp(sources, l.file, l.span)).with_message(&l.message)),
        );
        let mut notes = d.notes.clone();
        if let Some(help) = &d.help {
            notes.push(format!("help: {help}"));
        }
        let diagnostic = match d.severity {
            Severity::Error => cs::Diagnostic::error(),
            Severity::Warning => cs::Diagnostic::warning(),
        }
        .with_code(d.code.as_str())
        .with_message(&d.message)
        .with_labels(labels)
        .with_notes(notes);
        if color {
            let mut w = termcolor::Ansi::new(&mut out);
            let _ = term::emit_to_write_style(&mut w, &config, sources, &diagnostic);
        } else {
            let mut w = termcolor::NoColor::new(&mut out);
            let _ = term::emit_to_write_style(&mut w, &config, sources, &diagnostic);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Spans past the end (say, an "unexpected end of file") are clamped so the
/// renderer always has a line to show.
fn clamp(sources: &Sources, file: FileId, span: Span) -> std::ops::Range<usize> {
    let len = sources.get(file).text().len();
    let start = (span.start as usize).min(len);
    let end = (span.end as usize).clamp(start, len);
    start..end
}

#[derive(Serialize)]
struct JsonPosition<'a> {
    file: &'a str,
    start: u32,
    end: u32,
    line: u32,
    column: u32,
    end_line: u32,
    end_column: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    code: &'static str,
    severity: Severity,
    message: &'a str,
    #[serde(flatten)]
    primary: JsonPosition<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    labels: Vec<JsonPosition<'a>>,
    notes: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    help: Option<&'a str>,
}

fn json_position<'a>(sources: &'a Sources, file: FileId, span: Span, message: Option<&'a str>) -> JsonPosition<'a> {
    let start = sources.line_col(file, span.start);
    let end = sources.line_col(file, span.end);
    JsonPosition {
        file: sources.get(file).name(),
        start: span.start,
        end: span.end,
        line: start.line,
        column: start.column,
        end_line: end.line,
        end_column: end.column,
        message,
    }
}

/// Diagnostics as JSON for editors and HTTP clients: one object each with
/// `code`, `severity`, `message`, `file`, byte `start`/`end`, 1-based
/// `line`/`column` (in characters), `labels`, `notes` and `help`.
pub fn to_json(sources: &Sources, diagnostics: &[Diagnostic]) -> serde_json::Value {
    let items: Vec<JsonDiagnostic<'_>> = diagnostics
        .iter()
        .map(|d| JsonDiagnostic {
            code: d.code.as_str(),
            severity: d.severity,
            message: &d.message,
            primary: json_position(sources, d.file, d.span, None),
            label: d.label.as_deref(),
            labels: d
                .secondary
                .iter()
                .map(|l| json_position(sources, l.file, l.span, Some(&l.message)))
                .collect(),
            notes: &d.notes,
            help: d.help.as_deref(),
        })
        .collect();
    serde_json::to_value(items).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert_eq!(s.len(), 5);
            let expected = if s.starts_with('W') {
                Severity::Warning
            } else {
                Severity::Error
            };
            assert_eq!(c.severity(), expected, "{s}");
        }
    }
}
