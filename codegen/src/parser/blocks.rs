//! Fold [`Line`]s into nested blocks with an explicit stack.
//!
//! Every unbalanced structure is reported with both lines involved: an
//! unclosed opener points at the opener and at where its closer was
//! expected; a stray closer points at itself and at the block it could have
//! meant. Recovery keeps the tree usable so later checks still run.

use super::Line;
use crate::ast::{Condition, Expr, Function, Ident, Stmt, StmtKind};
use crate::diag::{Code, Diagnostic};
use crate::span::{SourceFile, Span};

/// Blocks nest at most this deep (bounds the depth of the tree).
const MAX_BLOCK_DEPTH: usize = 64;

/// The `exception(var)` part of a `try`: its line, `var`, the `v =` of
/// `v = exception(var)`, and the handler body.
type Handler = (Span, Option<Ident>, Option<Ident>, Vec<Stmt>);

enum Frame {
    If {
        opener: Span,
        condition: Condition,
        then_body: Vec<Stmt>,
        else_part: Option<(Span, Vec<Stmt>)>,
    },
    Loop {
        opener: Span,
        var: Ident,
        from: Expr,
        to: Expr,
        body: Vec<Stmt>,
    },
    Try {
        opener: Span,
        body: Vec<Stmt>,
        handler: Option<Handler>,
    },
    Async {
        opener: Span,
        id: Expr,
        body: Vec<Stmt>,
    },
    Function {
        opener: Span,
        name: Ident,
        params: Vec<Ident>,
        body: Vec<Stmt>,
        braced: bool,
    },
}

impl Frame {
    fn opener(&self) -> Span {
        match self {
            Frame::If { opener, .. }
            | Frame::Loop { opener, .. }
            | Frame::Try { opener, .. }
            | Frame::Async { opener, .. }
            | Frame::Function { opener, .. } => *opener,
        }
    }

    /// What the author wrote to open it, for messages.
    fn what(&self) -> &'static str {
        match self {
            Frame::If { .. } => "`if(…)`",
            Frame::Loop { .. } => "`startLoop(…)`",
            Frame::Try { .. } => "`try()`",
            Frame::Async { .. } => "`go_async(…)`",
            Frame::Function { .. } => "function",
        }
    }

    /// The closer it needs.
    fn closer(&self) -> &'static str {
        match self {
            Frame::If { .. } | Frame::Try { .. } | Frame::Async { .. } => "`end()`",
            Frame::Loop { .. } => "`endLoop()`",
            Frame::Function { .. } => "`}`",
        }
    }

    fn body(&mut self) -> &mut Vec<Stmt> {
        match self {
            Frame::If {
                then_body, else_part, ..
            } => match else_part {
                Some((_, b)) => b,
                None => then_body,
            },
            Frame::Try { body, handler, .. } => match handler {
                Some((.., b)) => b,
                None => body,
            },
            Frame::Loop { body, .. } | Frame::Async { body, .. } | Frame::Function { body, .. } => body,
        }
    }

    /// Turn a finished frame into its statement.
    fn finish(self, closer: Span) -> Stmt {
        let (kind, opener) = match self {
            Frame::If {
                opener,
                condition,
                then_body,
                else_part,
            } => (
                StmtKind::If {
                    condition,
                    then_body,
                    else_body: else_part.map(|(_, b)| b),
                },
                opener,
            ),
            Frame::Loop {
                opener,
                var,
                from,
                to,
                body,
            } => (StmtKind::Loop { var, from, to, body }, opener),
            Frame::Try { opener, body, handler } => {
                let (error_var, assign, handler) = match handler {
                    Some((_, v, a, h)) => (v, a, h),
                    None => (None, None, Vec::new()),
                };
                (
                    StmtKind::Try {
                        body,
                        error_var,
                        assign,
                        handler,
                    },
                    opener,
                )
            }
            Frame::Async { opener, id, body } => (StmtKind::Async { id, body }, opener),
            Frame::Function {
                opener,
                name,
                params,
                body,
                ..
            } => (
                StmtKind::Function(Function {
                    name,
                    params,
                    body,
                    header: opener,
                }),
                opener,
            ),
        };
        Stmt {
            kind,
            span: opener.to(closer),
        }
    }
}

struct Builder<'a> {
    root: Vec<Stmt>,
    stack: Vec<Frame>,
    /// The most recently closed block: (what, opener, closer) — named in
    /// "stray closer" diagnostics.
    last_closed: Option<(&'static str, Span, Span)>,
    file: &'a SourceFile,
    diags: &'a mut Vec<Diagnostic>,
}

pub(crate) fn build(lines: Vec<Line>, file: &SourceFile, diags: &mut Vec<Diagnostic>) -> Vec<Stmt> {
    let mut b = Builder {
        root: Vec::new(),
        stack: Vec::new(),
        last_closed: None,
        file,
        diags,
    };
    for line in lines {
        b.line(line);
    }
    b.finish_file();
    b.root
}

impl Builder<'_> {
    fn line_no(&self, span: Span) -> u32 {
        self.file.line_col(span.start as usize).line
    }

    fn push_stmt(&mut self, stmt: Stmt) {
        match self.stack.last_mut() {
            Some(frame) => frame.body().push(stmt),
            None => self.root.push(stmt),
        }
    }

    fn open(&mut self, frame: Frame) {
        if self.stack.len() == MAX_BLOCK_DEPTH {
            self.diags.push(
                Diagnostic::new(
                    Code::NestingTooDeep,
                    frame.opener(),
                    format!("blocks nest more than {MAX_BLOCK_DEPTH} deep"),
                )
                .with_help("move the inner part into a function"),
            );
        }
        self.stack.push(frame);
    }

    /// Close the top frame with `closer` and attach its statement. Blocks
    /// beyond `MAX_BLOCK_DEPTH` (already reported) are tracked for matching
    /// but dropped from the tree, so the tree's depth stays bounded and no
    /// later pass can overflow the stack on it.
    fn close_top(&mut self, closer: Span) {
        let frame = self.stack.pop().expect("caller checked");
        self.last_closed = Some((frame.what(), frame.opener(), closer));
        let stmt = frame.finish(closer);
        if self.stack.len() < MAX_BLOCK_DEPTH {
            self.push_stmt(stmt);
        }
    }

    fn in_function(&self) -> bool {
        self.stack.iter().any(|f| matches!(f, Frame::Function { .. }))
    }

    /// A function header without `{` wants one before anything else.
    fn require_brace(&mut self, at: Span) {
        if let Some(Frame::Function { braced, opener, .. }) = self.stack.last_mut()
            && !*braced
        {
            *braced = true;
            let opener = *opener;
            self.diags.push(
                Diagnostic::new(Code::UnexpectedToken, at, "expected `{` to start the function body")
                    .with_secondary(opener, "function declared here")
                    .with_help("end the header line with `{`"),
            );
        }
    }

    fn line(&mut self, line: Line) {
        match &line {
            Line::BlockOpen(_) => {}
            Line::Stmt(s) => self.require_brace(s.span),
            Line::If { span, .. }
            | Line::Else(span)
            | Line::End(span)
            | Line::Loop { span, .. }
            | Line::EndLoop(span)
            | Line::Try(span)
            | Line::Exception { span, .. }
            | Line::Async { span, .. }
            | Line::BlockClose(span) => self.require_brace(*span),
            Line::Function { header, .. } => self.require_brace(*header),
        }
        match line {
            Line::Stmt(stmt) => {
                if matches!(stmt.kind, StmtKind::Return { .. }) && !self.in_function() {
                    self.diags.push(
                        Diagnostic::new(Code::ReturnOutsideFunction, stmt.span, "`return` outside a function")
                            .with_help("the top level ends by itself; use `if`/`else` to skip the rest"),
                    );
                }
                self.push_stmt(stmt);
            }
            Line::If { condition, span } => self.open(Frame::If {
                opener: span,
                condition,
                then_body: Vec::new(),
                else_part: None,
            }),
            Line::Loop { var, from, to, span } => self.open(Frame::Loop {
                opener: span,
                var,
                from,
                to,
                body: Vec::new(),
            }),
            Line::Try(span) => self.open(Frame::Try {
                opener: span,
                body: Vec::new(),
                handler: None,
            }),
            Line::Async { id, span } => self.open(Frame::Async {
                opener: span,
                id,
                body: Vec::new(),
            }),
            Line::Function {
                name,
                params,
                header,
                braced,
            } => {
                if let Some(outer) = self.stack.last() {
                    let outer_span = outer.opener();
                    let outer_what = outer.what();
                    self.diags.push(
                        Diagnostic::new(
                            Code::MisplacedFunction,
                            header,
                            format!("function `{}` is defined inside another block", name.name),
                        )
                        .with_secondary(outer_span, format!("inside this {outer_what}"))
                        .with_help("define functions at the top level of the script"),
                    );
                }
                self.open(Frame::Function {
                    opener: header,
                    name,
                    params,
                    body: Vec::new(),
                    braced,
                });
            }
            Line::Else(span) => self.else_line(span),
            Line::Exception {
                error_var,
                assign,
                span,
            } => self.exception_line(error_var, assign, span),
            Line::End(span) => self.end_line(span),
            Line::EndLoop(span) => self.end_loop_line(span),
            Line::BlockOpen(span) => match self.stack.last_mut() {
                Some(Frame::Function { braced, .. }) if !*braced => *braced = true,
                _ => self.diags.push(
                    Diagnostic::new(Code::StrayCloser, span, "unexpected `{`")
                        .with_help("`{` only opens a function body: `function name(a, b) {`"),
                ),
            },
            Line::BlockClose(span) => self.block_close(span),
        }
    }

    fn stray(&mut self, span: Span, what: &str, hint: &str) {
        let mut d = Diagnostic::new(
            Code::StrayCloser,
            span,
            format!("{what} without an open block to close"),
        );
        if let Some(top) = self.stack.last() {
            d = d.with_secondary(
                top.opener(),
                format!(
                    "the innermost open block is this {}, closed by {}",
                    top.what(),
                    top.closer()
                ),
            );
        } else if let Some((w, opener, closer)) = self.last_closed {
            d = d.with_secondary(
                closer,
                format!("the {w} from line {} was already closed here", self.line_no(opener)),
            );
        }
        self.diags.push(d.with_help(hint.to_string()));
    }

    /// `else()`/`exception()` whose block is not the innermost one (or
    /// does not exist).
    fn misplaced_middle(&mut self, span: Span, what: &str, owner: fn(&Frame) -> bool) {
        let owner_frame = self
            .stack
            .iter()
            .rev()
            .find(|f| owner(f))
            .map(|f| (f.opener(), f.what()));
        let top = self.stack.last().map(|f| (f.opener(), f.what(), f.closer()));
        match (owner_frame, top) {
            (Some((owner_span, owner_what)), Some((inner_span, inner_what, inner_closer))) => {
                let owner_line = self.line_no(owner_span);
                self.diags.push(
                    Diagnostic::new(
                        Code::StrayCloser,
                        span,
                        format!("{what} cannot belong to the {owner_what} from line {owner_line} while an inner block is open"),
                    )
                    .with_secondary(inner_span, format!("this {inner_what} is still open"))
                    .with_help(format!("close the inner block with {inner_closer} first")),
                );
            }
            _ => {
                let opener = if what.starts_with("`else") {
                    "`if(…)`"
                } else {
                    "`try()`"
                };
                self.stray(span, what, &format!("{what} goes between {opener} and its `end()`"));
            }
        }
    }

    fn else_line(&mut self, span: Span) {
        match self.stack.last_mut() {
            Some(Frame::If { else_part: None, .. }) => {
                if let Some(Frame::If { else_part, .. }) = self.stack.last_mut() {
                    *else_part = Some((span, Vec::new()));
                }
            }
            Some(Frame::If {
                else_part: Some((first, _)),
                ..
            }) => {
                let first = *first;
                self.diags.push(
                    Diagnostic::new(Code::DuplicateBranch, span, "a second `else()` in the same `if`")
                        .with_secondary(first, "the first `else()` is here")
                        .with_help("close the `if` with `end()` before starting another"),
                );
            }
            _ => self.misplaced_middle(span, "`else()`", |f| matches!(f, Frame::If { .. })),
        }
    }

    fn exception_line(&mut self, error_var: Option<Ident>, assign: Option<Ident>, span: Span) {
        match self.stack.last_mut() {
            Some(Frame::Try { handler: None, .. }) => {
                if let Some(Frame::Try { handler, .. }) = self.stack.last_mut() {
                    *handler = Some((span, error_var, assign, Vec::new()));
                }
            }
            Some(Frame::Try {
                handler: Some((first, ..)),
                ..
            }) => {
                let first = *first;
                self.diags.push(
                    Diagnostic::new(Code::DuplicateBranch, span, "a second `exception()` in the same `try`")
                        .with_secondary(first, "the first `exception()` is here"),
                );
            }
            _ => self.stray(
                span,
                "`exception()`",
                "`exception(err)` goes between `try()` and its `end()`",
            ),
        }
    }

    /// Report that the top frame is not closed by `closer_span`, then close
    /// it anyway (the author most likely mistyped the closer).
    fn mismatched(&mut self, closer_span: Span, closer_text: &str) {
        let top = self.stack.last().expect("caller checked");
        let (opener, what, needed) = (top.opener(), top.what(), top.closer());
        self.diags.push(
            Diagnostic::new(
                Code::UnclosedBlock,
                opener,
                format!("{what} from line {} is not closed", self.line_no(opener)),
            )
            .with_label(format!("needs {needed}"))
            .with_secondary(closer_span, format!("{closer_text} here cannot close it"))
            .with_help(format!("close it with {needed}")),
        );
        self.close_top(closer_span);
    }

    fn end_line(&mut self, span: Span) {
        match self.stack.last() {
            Some(Frame::If { .. } | Frame::Async { .. }) => self.close_top(span),
            Some(Frame::Try { handler, opener, .. }) => {
                if handler.is_none() {
                    let opener = *opener;
                    self.diags.push(
                        Diagnostic::new(Code::TryWithoutException, opener, "`try()` without `exception(…)`")
                            .with_secondary(span, "the block ends here")
                            .with_help("add `exception(err)` before `end()` to handle the error"),
                    );
                }
                self.close_top(span);
            }
            Some(Frame::Loop { .. }) => self.mismatched(span, "`end()`"),
            Some(Frame::Function { .. }) | None => {
                self.stray(span, "`end()`", "`end()` closes `if`, `try` and `go_async` blocks");
            }
        }
    }

    fn end_loop_line(&mut self, span: Span) {
        match self.stack.last() {
            Some(Frame::Loop { .. }) => self.close_top(span),
            Some(Frame::If { .. } | Frame::Try { .. } | Frame::Async { .. }) => {
                if self.stack.iter().any(|f| matches!(f, Frame::Loop { .. })) {
                    // Close the inner unclosed blocks up to the loop.
                    while !matches!(self.stack.last(), Some(Frame::Loop { .. })) {
                        self.mismatched(span, "`endLoop()`");
                    }
                    self.close_top(span);
                } else {
                    self.mismatched(span, "`endLoop()`");
                }
            }
            Some(Frame::Function { .. }) | None => {
                self.stray(span, "`endLoop()`", "`endLoop()` closes a `startLoop(…)` block");
            }
        }
    }

    fn block_close(&mut self, span: Span) {
        if !self.in_function() {
            self.stray(span, "`}`", "`}` closes a function body");
            return;
        }
        while !matches!(self.stack.last(), Some(Frame::Function { .. })) {
            self.mismatched(span, "`}`");
        }
        self.close_top(span);
    }

    fn finish_file(&mut self) {
        // Point at the end of the last line with text, not at the empty
        // line after the final newline.
        let end = self.file.text().trim_end().len();
        let eof = Span::new(end, end);
        while let Some(top) = self.stack.last() {
            let (opener, what, needed) = (top.opener(), top.what(), top.closer());
            let line = self.line_no(opener);
            self.diags.push(
                Diagnostic::new(
                    Code::UnclosedBlock,
                    opener,
                    format!("{what} from line {line} is never closed"),
                )
                .with_label(format!("needs {needed}"))
                .with_secondary(eof, format!("the file ends here without {needed}"))
                .with_help(format!("add {needed} after the block's last statement")),
            );
            self.close_top(eof);
        }
    }
}
