//! Parser: tokens → lines → block tree.
//!
//! Parsing happens in two steps, both iterative at the statement level:
//! 1. each source line becomes a [`Line`] — a simple statement, a block
//!    opener (`if(…)`, `startLoop(…)`, `function f(){`…), a middle marker
//!    (`else()`, `exception(e)`) or a closer (`end()`, `endLoop()`, `}`);
//! 2. [`blocks`] folds the lines into the tree with an explicit stack, so
//!    unbalanced blocks get precise diagnostics (both lines) and deep nesting
//!    cannot overflow the Rust stack.
//!
//! The parser never fails: it returns the best tree it could build plus the
//! diagnostics. A line with a syntax error is skipped as a whole.

mod blocks;
mod expr;

use crate::ast::{
    Arg, AssignOp, AssignTarget, Comparator, Condition, Expr, ExprKind, Ident, IncludeKeyword, Program, Stmt, StmtKind,
};
use crate::diag::{Code, Diagnostic};
use crate::lexer::{Token, TokenKind, lex};
use crate::span::{SourceFile, Span};
pub(crate) use expr::{PResult, Reported};

/// Parse a whole script. Never panics and never fails: syntax errors become
/// diagnostics and the tree holds every statement that parsed.
pub fn parse(file: &SourceFile) -> (Program, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let tokens = lex(file.text(), &mut diags);
    let mut parser = Parser::new(file.text(), tokens, file.line_starts());
    let lines = parser.lines();
    // A line the lexer already complained about (unterminated string, stray
    // `#`, …) yields parser errors that only echo the first one.
    let lexer_lines: Vec<usize> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| file.line_index(d.span.start as usize))
        .collect();
    let mut diags_all = diags;
    diags_all.extend(
        parser
            .diags
            .drain(..)
            .filter(|d| !lexer_lines.contains(&file.line_index(d.span.start as usize))),
    );
    let body = blocks::build(lines, file, &mut diags_all);
    diags_all.sort_by_key(|d| (d.span.start, d.span.end));
    (
        Program {
            body,
            span: Span::new(0, file.text().len()),
        },
        diags_all,
    )
}

/// Words that cannot be variable names.
pub(crate) fn is_reserved(word: &str) -> bool {
    matches!(word, "and" | "or" | "not" | "in" | "is" | "if" | "else")
}

/// One parsed source line (see the module docs).
#[derive(Debug)]
pub(crate) enum Line {
    Stmt(Stmt),
    If {
        condition: Condition,
        span: Span,
    },
    Else(Span),
    End(Span),
    Loop {
        var: Ident,
        from: Expr,
        to: Expr,
        span: Span,
    },
    EndLoop(Span),
    Try(Span),
    Exception {
        error_var: Option<Ident>,
        assign: Option<Ident>,
        span: Span,
    },
    Async {
        id: Expr,
        span: Span,
    },
    Function {
        name: Ident,
        params: Vec<Ident>,
        header: Span,
        braced: bool,
    },
    BlockOpen(Span),
    BlockClose(Span),
}

pub(crate) struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    pos: usize,
    /// Open brackets around the current position; while > 0, newlines are
    /// insignificant (multi-line lists, dicts and calls).
    brackets: u32,
    /// Expression depth budget in use (see `expr::MAX_DEPTH`).
    depth: u32,
    line_starts: &'s [usize],
    diags: Vec<Diagnostic>,
    /// Index into `diags` where the current line's diagnostics start.
    line_diags: usize,
}

/// An `if` argument: an ordinary argument or a bare comparator.
enum IfArg {
    Arg(Arg),
    Comparator(Comparator, Span),
}

impl<'s> Parser<'s> {
    fn new(src: &'s str, tokens: Vec<Token>, line_starts: &'s [usize]) -> Parser<'s> {
        Parser {
            src,
            tokens,
            pos: 0,
            brackets: 0,
            depth: 0,
            line_starts,
            diags: Vec::new(),
            line_diags: 0,
        }
    }

    // ---- token cursor -------------------------------------------------

    /// Index of the next significant token: inside brackets newlines are
    /// insignificant.
    fn significant(&self, mut i: usize) -> usize {
        if self.brackets > 0 {
            while self.tokens[i].kind == TokenKind::Newline {
                i += 1;
            }
        }
        i
    }

    pub(crate) fn enter_bracket(&mut self) {
        self.brackets += 1;
    }

    pub(crate) fn peek(&self) -> &Token {
        &self.tokens[self.significant(self.pos)]
    }

    /// The `n`-th significant token from here (0 = `peek`).
    pub(crate) fn peek_nth(&self, n: usize) -> &Token {
        let mut i = self.significant(self.pos);
        for _ in 0..n {
            if self.tokens[i].kind == TokenKind::Eof {
                break;
            }
            i = self.significant(i + 1);
        }
        &self.tokens[i]
    }

    pub(crate) fn bump(&mut self) -> Token {
        self.pos = self.significant(self.pos);
        let tok = self.tokens[self.pos].clone();
        if tok.kind != TokenKind::Eof {
            self.pos += 1;
        }
        tok
    }

    fn text(&self, span: Span) -> &'s str {
        &self.src[span.range()]
    }

    pub(crate) fn at_keyword(&self, kw: &str) -> bool {
        let tok = self.peek();
        tok.kind == TokenKind::Ident && &self.src[tok.span.range()] == kw
    }

    pub(crate) fn nth_is_keyword(&self, n: usize, kw: &str) -> bool {
        let tok = self.peek_nth(n);
        tok.kind == TokenKind::Ident && &self.src[tok.span.range()] == kw
    }

    pub(crate) fn expect_keyword(&mut self, kw: &str, what: &str) -> PResult<Span> {
        if self.at_keyword(kw) {
            Ok(self.bump().span)
        } else {
            self.unexpected(what)
        }
    }

    pub(crate) fn ident(&mut self, what: &str) -> PResult<Ident> {
        let tok = self.peek().clone();
        if tok.kind == TokenKind::Ident && !is_reserved(self.text(tok.span)) {
            self.bump();
            return Ok(Ident {
                name: self.text(tok.span).to_string(),
                span: tok.span,
            });
        }
        self.unexpected(what)
    }

    pub(crate) fn describe(&self, tok: &Token) -> String {
        match tok.kind {
            TokenKind::Ident => format!("`{}`", self.text(tok.span)),
            _ => tok.kind.describe().to_string(),
        }
    }

    pub(crate) fn line_of(&self, span: Span) -> usize {
        match self.line_starts.binary_search(&(span.start as usize)) {
            Ok(i) => i,
            Err(i) => i - 1,
        }
    }

    pub(crate) fn report(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Report "expected `what`, found …" at the current token.
    pub(crate) fn unexpected<T>(&mut self, what: &str) -> PResult<T> {
        let mut tok = self.peek().clone();
        if tok.kind == TokenKind::Newline {
            // Point at the end of the line, not across the line break.
            tok.span = Span::new(tok.span.start as usize, tok.span.start as usize);
        }
        let found = self.describe(&tok);
        let mut d = Diagnostic::new(
            Code::UnexpectedToken,
            tok.span,
            format!("expected {what}, found {found}"),
        );
        if tok.kind == TokenKind::Ident && is_reserved(self.text(tok.span)) {
            d = d.with_note(format!("`{}` is a reserved word", self.text(tok.span)));
        }
        self.report(d);
        Err(Reported)
    }

    // ---- lines ----------------------------------------------------------

    fn lines(&mut self) -> Vec<Line> {
        let mut out = Vec::new();
        loop {
            self.brackets = 0;
            self.depth = 0;
            self.line_diags = self.diags.len();
            let tok = self.peek().clone();
            match tok.kind {
                TokenKind::Eof => break,
                TokenKind::Newline => {
                    self.bump();
                }
                TokenKind::BlockOpen => {
                    self.bump();
                    if matches!(out.last(), Some(Line::Function { braced: false, .. })) {
                        out.push(Line::BlockOpen(tok.span));
                    } else {
                        self.report(
                            Diagnostic::new(
                                Code::UnexpectedToken,
                                tok.span,
                                "unexpected `{` at the start of a statement",
                            )
                            .with_note("`{` at the start of a line opens a function body")
                            .with_help("assign a dict to a variable: `config = {\"k\": 1}`"),
                        );
                        self.recover();
                    }
                }
                TokenKind::BlockClose => {
                    self.bump();
                    out.push(Line::BlockClose(tok.span));
                }
                _ => match self.line() {
                    Ok(line) => {
                        let braced_header = matches!(line, Line::Function { braced: true, .. });
                        out.push(line);
                        if !braced_header {
                            self.end_of_statement();
                        }
                    }
                    Err(Reported) => {
                        let start = self.pos_of(tok.span);
                        self.recover();
                        out.extend(self.placeholder_opener(start));
                    }
                },
            }
        }
        out
    }

    /// After a statement only the end of the line (or a `}`) may follow.
    fn end_of_statement(&mut self) {
        self.brackets = 0;
        let tok = self.peek().clone();
        match tok.kind {
            TokenKind::Newline | TokenKind::Eof | TokenKind::BlockClose => {}
            _ => {
                let found = self.describe(&tok);
                self.report(
                    Diagnostic::new(
                        Code::TrailingTokens,
                        tok.span,
                        format!("unexpected {found} after the statement"),
                    )
                    .with_help("write one statement per line"),
                );
                self.recover();
            }
        }
    }

    fn pos_of(&self, span: Span) -> usize {
        self.tokens.partition_point(|t| t.span.start < span.start)
    }

    /// A block opener whose line failed to parse still opens its block, so
    /// its closer is not reported as stray. The error is already reported.
    fn placeholder_opener(&self, start: usize) -> Option<Line> {
        let line = &self.tokens[start..self.pos];
        let first = line.first()?;
        let span = first.span.to(line.last().map_or(first.span, |t| t.span));
        let none = Expr {
            kind: ExprKind::None,
            span,
        };
        let follows_paren = line.get(1).is_some_and(|t| t.kind == TokenKind::LParen);
        match (self.text(first.span), follows_paren) {
            ("if", true) => Some(Line::If {
                condition: Condition::Expression {
                    expr: none,
                    source_span: span,
                },
                span,
            }),
            ("startLoop", true) => Some(Line::Loop {
                var: Ident {
                    name: String::new(),
                    span,
                },
                from: none.clone(),
                to: none,
                span,
            }),
            ("go_async", true) => Some(Line::Async { id: none, span }),
            ("function", _) => Some(Line::Function {
                name: Ident {
                    name: String::new(),
                    span,
                },
                params: Vec::new(),
                header: span,
                braced: line.iter().any(|t| t.kind == TokenKind::BlockOpen),
            }),
            _ => None,
        }
    }

    /// Skip to the end of the current line.
    fn recover(&mut self) {
        self.brackets = 0;
        while !matches!(self.tokens[self.pos].kind, TokenKind::Newline | TokenKind::Eof) {
            self.pos += 1;
        }
    }

    fn line(&mut self) -> PResult<Line> {
        let tok = self.peek().clone();
        if tok.kind == TokenKind::Ident {
            let word = self.text(tok.span);
            let next = self.peek_nth(1).kind.clone();
            match (word, &next) {
                ("if", TokenKind::LParen) => return self.if_line(),
                ("else" | "end" | "endLoop" | "try", TokenKind::LParen) => return self.bare_line(word),
                ("else" | "end" | "endLoop" | "try", TokenKind::Newline | TokenKind::Eof) => {
                    self.report(
                        Diagnostic::new(
                            Code::StatementArguments,
                            tok.span,
                            format!("`{word}` needs parentheses"),
                        )
                        .with_help(format!("write `{word}()`")),
                    );
                    return self.bare_line(word);
                }
                ("startLoop", TokenKind::LParen) => return self.loop_line(),
                ("exception", TokenKind::LParen) => {
                    self.bump();
                    return self.exception_line(None, tok.span);
                }
                ("go_async", TokenKind::LParen) => return self.async_line(),
                ("function", TokenKind::Ident) => return self.function_line(),
                ("return", _) => return self.return_line(),
                ("include" | "import", TokenKind::LParen | TokenKind::Str { .. }) => return self.include_line(word),
                _ => {}
            }
        }
        self.simple_line()
    }

    fn simple_line(&mut self) -> PResult<Line> {
        let expr = self.expr()?;
        let op = match self.peek().kind {
            TokenKind::Assign => Some(AssignOp::Assign),
            TokenKind::PlusAssign => Some(AssignOp::AddAssign),
            TokenKind::MinusAssign => Some(AssignOp::SubAssign),
            TokenKind::StarAssign => Some(AssignOp::MulAssign),
            TokenKind::SlashAssign => Some(AssignOp::DivAssign),
            _ => None,
        };
        if let Some(op) = op {
            self.bump();
            let target = self.assign_target(expr)?;
            if op == AssignOp::Assign
                && target.indices.is_empty()
                && self.at_keyword("exception")
                && self.peek_nth(1).kind == TokenKind::LParen
            {
                let kw = self.bump().span;
                return self.exception_line(Some(target.name), target.span.to(kw));
            }
            let value = self.expr()?;
            let span = target.span.to(value.span);
            return Ok(Line::Stmt(Stmt {
                kind: StmtKind::Assign { target, op, value },
                span,
            }));
        }
        let span = expr.span;
        match expr.kind {
            ExprKind::Call(call) => Ok(Line::Stmt(Stmt {
                kind: StmtKind::Call { call },
                span,
            })),
            kind => {
                let mut d = Diagnostic::new(Code::NotAStatement, span, "this expression does nothing on its own")
                    .with_label("not a command call or assignment");
                d = match kind {
                    ExprKind::Compare { .. } => d.with_help("to assign, write `name = value` (one `=`)"),
                    ExprKind::Name(id) => d.with_help(format!("to call a command write `{}(…)`", id.name)),
                    _ => d.with_help("assign it to a variable: `name = …`"),
                };
                self.report(d);
                Err(Reported)
            }
        }
    }

    fn assign_target(&mut self, expr: Expr) -> PResult<AssignTarget> {
        let span = expr.span;
        let mut indices = Vec::new();
        let mut cur = expr;
        loop {
            match cur.kind {
                ExprKind::Name(name) => {
                    indices.reverse();
                    return Ok(AssignTarget { name, indices, span });
                }
                ExprKind::Index { object, index } => {
                    indices.push(*index);
                    cur = *object;
                }
                ExprKind::Attribute { .. } => {
                    self.report(
                        Diagnostic::new(Code::InvalidAssignTarget, span, "cannot assign to an attribute")
                            .with_help("set a dict key with `name[\"key\"] = value`"),
                    );
                    return Err(Reported);
                }
                ExprKind::Global(_) => {
                    self.report(
                        Diagnostic::new(Code::InvalidAssignTarget, span, "cannot assign to a `$` global")
                            .with_help("`$name` only reads the global; assign with `name = value` at the top level"),
                    );
                    return Err(Reported);
                }
                _ => {
                    self.report(
                        Diagnostic::new(Code::InvalidAssignTarget, span, "cannot assign to this expression")
                            .with_help("the left side of `=` must be a variable name, optionally subscripted"),
                    );
                    return Err(Reported);
                }
            }
        }
    }

    /// `else()`, `end()`, `endLoop()`, `try()`.
    fn bare_line(&mut self, word: &str) -> PResult<Line> {
        let kw = self.bump().span;
        let mut span = kw;
        if self.peek().kind == TokenKind::LParen {
            let (args, close) = self.call_args()?;
            span = kw.to(close);
            if !args.is_empty() {
                let args_span = args[0].span.to(args[args.len() - 1].span);
                self.report(
                    Diagnostic::new(
                        Code::StatementArguments,
                        args_span,
                        format!("`{word}()` takes no arguments"),
                    )
                    .with_help(format!("write `{word}()`")),
                );
            }
        }
        Ok(match word {
            "else" => Line::Else(span),
            "end" => Line::End(span),
            "endLoop" => Line::EndLoop(span),
            _ => Line::Try(span),
        })
    }

    /// An argument that must be a variable name, bare or quoted.
    fn name_arg(arg: &Arg) -> Option<Ident> {
        match &arg.value.as_ref()?.kind {
            ExprKind::Name(id) => Some(id.clone()),
            ExprKind::Str { value, .. } if is_identifier(value) => Some(Ident {
                name: value.clone(),
                span: arg.span,
            }),
            _ => None,
        }
    }

    fn loop_line(&mut self) -> PResult<Line> {
        let kw = self.bump().span;
        let (args, close) = self.call_args()?;
        let span = kw.to(close);
        let placeholder = |at: Span| Expr {
            kind: ExprKind::Int(0),
            span: at,
        };
        if args.len() != 3 || args.iter().any(|a| a.value.is_none()) {
            self.report(
                Diagnostic::new(
                    Code::StatementArguments,
                    span,
                    format!(
                        "`startLoop` takes three arguments, found {}",
                        args.iter().filter(|a| a.value.is_some()).count()
                    ),
                )
                .with_help("write `startLoop(i, from, to)`; `to` is inclusive"),
            );
            return Ok(Line::Loop {
                var: Ident {
                    name: String::new(),
                    span,
                },
                from: placeholder(span),
                to: placeholder(span),
                span,
            });
        }
        let var = if let Some(v) = Self::name_arg(&args[0]) {
            v
        } else {
            self.report(
                Diagnostic::new(
                    Code::StatementArguments,
                    args[0].span,
                    "the loop counter must be a variable name",
                )
                .with_help("write `startLoop(i, 1, 10)`"),
            );
            Ident {
                name: String::new(),
                span: args[0].span,
            }
        };
        let mut it = args.into_iter().skip(1).map(|a| a.value.expect("checked above"));
        let from = it.next().expect("three args");
        let to = it.next().expect("three args");
        Ok(Line::Loop { var, from, to, span })
    }

    /// After the `exception` keyword: `(var?)`.
    fn exception_line(&mut self, assign: Option<Ident>, start: Span) -> PResult<Line> {
        let (args, close) = self.call_args()?;
        let span = start.to(close);
        let error_var = match args.as_slice() {
            [] => None,
            [a] if a.value.is_none() => None,
            [a] => {
                let v = Self::name_arg(a);
                if v.is_none() {
                    self.report(
                        Diagnostic::new(Code::StatementArguments, a.span, "`exception` takes a variable name")
                            .with_help("write `exception(err)`; the error message is stored in `err`"),
                    );
                }
                v
            }
            _ => {
                self.report(
                    Diagnostic::new(Code::StatementArguments, span, "`exception` takes at most one argument")
                        .with_help("write `exception(err)`"),
                );
                None
            }
        };
        Ok(Line::Exception {
            error_var,
            assign,
            span,
        })
    }

    fn async_line(&mut self) -> PResult<Line> {
        let kw = self.bump().span;
        let (args, close) = self.call_args()?;
        let span = kw.to(close);
        let mut values: Vec<Expr> = args.into_iter().filter_map(|a| a.value).collect();
        if values.len() != 1 {
            self.report(
                Diagnostic::new(
                    Code::StatementArguments,
                    span,
                    "`go_async` takes one argument, the block's id",
                )
                .with_help("write `go_async(\"job\")` … `end()` and later `gather(\"job\", 5)`"),
            );
            values = vec![Expr {
                kind: ExprKind::None,
                span,
            }];
        }
        Ok(Line::Async {
            id: values.pop().expect("one value"),
            span,
        })
    }

    fn function_line(&mut self) -> PResult<Line> {
        let kw = self.bump().span;
        let name = self.ident("a function name")?;
        if self.peek().kind != TokenKind::LParen {
            return self.unexpected("`(` after the function name");
        }
        let open = self.bump().span;
        self.enter_bracket();
        let params = self.params(open);
        self.brackets -= 1;
        let (params, close) = params?;
        let mut header = kw.to(close);
        let braced = self.peek().kind == TokenKind::BlockOpen;
        if braced {
            header = header.to(self.bump().span);
        }
        Ok(Line::Function {
            name,
            params,
            header,
            braced,
        })
    }

    fn params(&mut self, open: Span) -> PResult<(Vec<Ident>, Span)> {
        let mut params = Vec::new();
        loop {
            if self.peek().kind == TokenKind::RParen {
                return Ok((params, self.bump().span));
            }
            params.push(self.ident("a parameter name")?);
            if self.peek().kind == TokenKind::Comma {
                self.bump();
            } else {
                let close = self.close(&TokenKind::RParen, open, "`,` or `)`")?;
                return Ok((params, close));
            }
        }
    }

    fn return_line(&mut self) -> PResult<Line> {
        let kw = self.bump().span;
        if matches!(
            self.peek().kind,
            TokenKind::Newline | TokenKind::Eof | TokenKind::BlockClose
        ) {
            return Ok(Line::Stmt(Stmt {
                kind: StmtKind::Return { value: None },
                span: kw,
            }));
        }
        let value = self.expr()?;
        let span = kw.to(value.span);
        Ok(Line::Stmt(Stmt {
            kind: StmtKind::Return { value: Some(value) },
            span,
        }))
    }

    fn include_line(&mut self, word: &str) -> PResult<Line> {
        let kw = self.bump().span;
        let keyword = if word == "include" {
            IncludeKeyword::Include
        } else {
            IncludeKeyword::Import
        };
        let (arg, span) = if self.peek().kind == TokenKind::LParen {
            let (args, close) = self.call_args()?;
            let arg = if args.len() == 1 { args.into_iter().next() } else { None };
            (arg.and_then(|a| a.value), kw.to(close))
        } else {
            let e = self.expr()?;
            let span = kw.to(e.span);
            (Some(e), span)
        };
        match arg {
            Some(Expr {
                kind: ExprKind::Str { value, .. },
                span: path_span,
            }) => Ok(Line::Stmt(Stmt {
                kind: StmtKind::Include {
                    keyword,
                    path: value,
                    path_span,
                },
                span,
            })),
            _ => {
                self.report(
                    Diagnostic::new(Code::IncludePath, span, format!("`{word}` takes one quoted file name")).with_help(
                        format!("write `{word}(\"helpers.avap\")`; the name is resolved at compile time"),
                    ),
                );
                Err(Reported)
            }
        }
    }

    fn if_line(&mut self) -> PResult<Line> {
        let kw = self.bump().span;
        let open = self.bump().span;
        self.enter_bracket();
        let args = self.if_args(open);
        self.brackets -= 1;
        let (args, close) = args?;
        let span = kw.to(close);
        let condition = self.condition(args, span)?;
        Ok(Line::If { condition, span })
    }

    fn if_args(&mut self, open: Span) -> PResult<(Vec<IfArg>, Span)> {
        let mut args = Vec::new();
        if self.peek().kind == TokenKind::RParen {
            return Ok((args, self.bump().span));
        }
        loop {
            let tok = self.peek().clone();
            let ends_arg = |k: &TokenKind| matches!(k, TokenKind::Comma | TokenKind::RParen);
            let bare = match tok.kind {
                TokenKind::Assign | TokenKind::EqEq => Some((Comparator::Eq, 1)),
                TokenKind::NotEq => Some((Comparator::NotEq, 1)),
                TokenKind::Lt => Some((Comparator::Lt, 1)),
                TokenKind::Le => Some((Comparator::Le, 1)),
                TokenKind::Gt => Some((Comparator::Gt, 1)),
                TokenKind::Ge => Some((Comparator::Ge, 1)),
                TokenKind::Ident if self.text(tok.span) == "in" => Some((Comparator::In, 1)),
                TokenKind::Ident if self.text(tok.span) == "not" && self.nth_is_keyword(1, "in") => {
                    Some((Comparator::NotIn, 2))
                }
                _ => None,
            };
            let bare = bare.filter(|&(_, len)| ends_arg(&self.peek_nth(len).kind));
            if let Some((cmp, len)) = bare {
                let mut span = tok.span;
                for _ in 0..len {
                    span = span.to(self.bump().span);
                }
                args.push(IfArg::Comparator(cmp, span));
            } else {
                args.push(IfArg::Arg(self.arg()?));
            }
            if self.peek().kind == TokenKind::Comma {
                self.bump();
                continue;
            }
            let close = self.close(&TokenKind::RParen, open, "`,` or `)`")?;
            return Ok((args, close));
        }
    }

    fn condition(&mut self, args: Vec<IfArg>, span: Span) -> PResult<Condition> {
        if args.len() != 3 {
            let mut d = Diagnostic::new(
                Code::IfArity,
                span,
                format!(
                    "`if` takes three arguments (value, value, comparator), found {}",
                    args.len()
                ),
            );
            d = if args.len() == 4 {
                d.with_note("the four-argument form of `if` is not supported")
                    .with_help("use expression mode: `if(None, None, \"x > 1 and y < 5\")`")
            } else {
                d.with_help("write `if(a, b, \"=\")`, or `if(None, None, \"expression\")` for expression mode")
            };
            self.report(d);
            return Err(Reported);
        }
        let mut it = args.into_iter();
        let (a, b, c) = (it.next().expect("3"), it.next().expect("3"), it.next().expect("3"));
        let (lhs, rhs) = match (a, b) {
            (IfArg::Arg(a), IfArg::Arg(b)) => (a, b),
            (IfArg::Comparator(_, s), _) | (_, IfArg::Comparator(_, s)) => {
                self.report(
                    Diagnostic::new(Code::BadComparator, s, "the comparator goes in the third position")
                        .with_help("write `if(a, b, \"=\")`"),
                );
                return Err(Reported);
            }
        };
        match c {
            IfArg::Comparator(comparator, comparator_span) => Ok(Condition::Compare {
                lhs,
                rhs,
                comparator,
                comparator_span,
            }),
            IfArg::Arg(Arg {
                value:
                    Some(Expr {
                        kind: ExprKind::Str { value, .. },
                        span: str_span,
                    }),
                ..
            }) => {
                let is_none = |a: &Arg| {
                    matches!(
                        a.value,
                        Some(Expr {
                            kind: ExprKind::None,
                            ..
                        })
                    )
                };
                if let Some(comparator) = Comparator::from_text(&value) {
                    return Ok(Condition::Compare {
                        lhs,
                        rhs,
                        comparator,
                        comparator_span: str_span,
                    });
                }
                if is_none(&lhs) && is_none(&rhs) {
                    let expr = self.condition_expression(&value, str_span)?;
                    return Ok(Condition::Expression {
                        expr,
                        source_span: str_span,
                    });
                }
                self.report(
                    Diagnostic::new(Code::BadComparator, str_span, format!("`{value}` is not a comparator"))
                        .with_note("comparators are = == != < <= > >= in, not in")
                        .with_help("for a full expression use expression mode: `if(None, None, \"…\")`"),
                );
                Err(Reported)
            }
            IfArg::Arg(other) => {
                self.report(
                    Diagnostic::new(
                        Code::BadComparator,
                        other.span,
                        "the third argument of `if` must be a comparator",
                    )
                    .with_note("comparators are = == != < <= > >= in, not in (bare or quoted)")
                    .with_help("for a full expression use expression mode: `if(None, None, \"…\")`"),
                );
                Err(Reported)
            }
        }
    }

    /// Parse the string of an expression-mode `if` as an expression, with
    /// spans pointing into the string in the source.
    fn condition_expression(&mut self, value: &str, str_span: Span) -> PResult<Expr> {
        let inner = Span::new(str_span.start as usize + 1, (str_span.end as usize).saturating_sub(1));
        if self.src.get(inner.range()) != Some(value) {
            self.report(
                Diagnostic::new(
                    Code::BadConditionExpression,
                    str_span,
                    "the condition string of an expression-mode `if` cannot contain escape sequences",
                )
                .with_help("use the other kind of quote inside: `if(None, None, 'name == \"x\"')`"),
            );
            return Err(Reported);
        }
        let mut diags = Vec::new();
        let mut tokens = lex(value, &mut diags);
        let shift = inner.start;
        for t in &mut tokens {
            t.span = Span::new((t.span.start + shift) as usize, (t.span.end + shift) as usize);
            if let TokenKind::Template(parts) = &mut t.kind {
                for p in parts {
                    if let crate::ast::TemplatePart::Var { name } = p {
                        name.span = Span::new((name.span.start + shift) as usize, (name.span.end + shift) as usize);
                    }
                }
            }
        }
        // The sub-expression is parsed as if it were inside brackets, so
        // nothing in it is a statement.
        let mut sub = Parser::new(self.src, tokens, self.line_starts);
        sub.brackets = 1;
        let expr = sub.expr();
        if expr.is_ok() && sub.peek().kind != TokenKind::Eof {
            let _ = sub.unexpected::<()>("the end of the condition");
        }
        // Lexer diagnostics are relative to the string; the sub-parser's
        // are already in file positions (its tokens were shifted).
        for d in &mut diags {
            d.span = Span::new((d.span.start + shift) as usize, (d.span.end + shift) as usize);
        }
        diags.append(&mut sub.diags);
        let failed = !diags.is_empty();
        for mut d in diags {
            if d.is_error() {
                let message = d.message.replace("found end of file", "found the end of the condition");
                d.message = format!("invalid condition expression: {message}");
                d.code = Code::BadConditionExpression;
            }
            self.report(d);
        }
        match expr {
            Ok(e) if !failed => Ok(e),
            _ => Err(Reported),
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*` and not a reserved word.
pub fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !is_reserved(s)
}
