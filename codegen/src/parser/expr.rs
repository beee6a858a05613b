//! Expressions with Python precedence (spec §2), lowest first:
//! `a if c else b` · `or` · `and` · `not` · comparisons (`== != < <= > >=
//! in, not in, is, is not`, chained) · `+ -` · `* / // %` · unary `- +` ·
//! `**` (right-assoc) · postfix `f(…)`, `x[i]`, `x.name` · atoms.

use super::Parser;
use crate::ast::{Arg, BinaryOp, Call, CompareOp, Expr, ExprKind, Ident, LogicalOp, UnaryOp};
use crate::diag::{Code, Diagnostic};
use crate::lexer::TokenKind;
use crate::span::Span;

/// Depth budget for nested expressions; each recursive construct costs
/// [`NEST_COST`], each link of an operator chain costs 1. It bounds both the
/// parser's own recursion and the depth of the tree later passes walk.
pub(super) const MAX_DEPTH: u32 = 256;
const NEST_COST: u32 = 4;

/// Marker error: a diagnostic has already been recorded.
#[derive(Debug)]
pub(crate) struct Reported;

pub(crate) type PResult<T> = Result<T, Reported>;

impl Parser<'_> {
    pub(crate) fn expr(&mut self) -> PResult<Expr> {
        self.nest(Self::conditional)
    }

    fn nest(&mut self, f: fn(&mut Self) -> PResult<Expr>) -> PResult<Expr> {
        self.depth += NEST_COST;
        let result = if self.depth > MAX_DEPTH {
            let span = self.peek().span;
            self.report_once_too_deep(
                Diagnostic::new(Code::NestingTooDeep, span, "expression is nested too deeply")
                    .with_help("split it into several assignments"),
            );
            Err(Reported)
        } else {
            f(self)
        };
        self.depth -= NEST_COST;
        result
    }

    /// One "too deep" report per line is enough.
    fn report_once_too_deep(&mut self, d: Diagnostic) {
        if !self.diags[self.line_diags..]
            .iter()
            .any(|x| x.code == Code::NestingTooDeep)
        {
            self.report(d);
        }
    }

    /// Account for one more link in an operator chain.
    fn link(&mut self, links: &mut u32) -> PResult<()> {
        *links += 1;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let span = self.peek().span;
            self.report_once_too_deep(
                Diagnostic::new(Code::NestingTooDeep, span, "expression has too many operators")
                    .with_help("split it into several assignments"),
            );
            return Err(Reported);
        }
        Ok(())
    }

    fn conditional(&mut self) -> PResult<Expr> {
        let then = self.or_expr()?;
        if self.at_keyword("if") {
            self.bump();
            let cond = self.or_expr()?;
            self.expect_keyword("else", "`else` of the conditional expression")?;
            let otherwise = self.nest(Self::conditional)?;
            let span = then.span.to(otherwise.span);
            return Ok(Expr {
                kind: ExprKind::Conditional {
                    then: Box::new(then),
                    cond: Box::new(cond),
                    otherwise: Box::new(otherwise),
                },
                span,
            });
        }
        Ok(then)
    }

    /// A left-associative chain `next (op next)*`. Each link spends one unit
    /// of the depth budget, which is returned when the chain ends.
    fn chain<O: Copy>(
        &mut self,
        op_at: fn(&Self) -> Option<O>,
        make: fn(O, Box<Expr>, Box<Expr>) -> ExprKind,
        next: fn(&mut Self) -> PResult<Expr>,
    ) -> PResult<Expr> {
        let saved = self.depth;
        let result = self.chain_links(op_at, make, next);
        self.depth = saved;
        result
    }

    fn chain_links<O: Copy>(
        &mut self,
        op_at: fn(&Self) -> Option<O>,
        make: fn(O, Box<Expr>, Box<Expr>) -> ExprKind,
        next: fn(&mut Self) -> PResult<Expr>,
    ) -> PResult<Expr> {
        let mut links = 0;
        let mut lhs = next(self)?;
        while let Some(op) = op_at(self) {
            self.bump();
            self.link(&mut links)?;
            let rhs = next(self)?;
            let span = lhs.span.to(rhs.span);
            lhs = Expr {
                kind: make(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
        }
        Ok(lhs)
    }

    fn logical(op: LogicalOp, lhs: Box<Expr>, rhs: Box<Expr>) -> ExprKind {
        ExprKind::Logical { op, lhs, rhs }
    }

    fn binary(op: BinaryOp, lhs: Box<Expr>, rhs: Box<Expr>) -> ExprKind {
        ExprKind::Binary { op, lhs, rhs }
    }

    fn or_expr(&mut self) -> PResult<Expr> {
        self.chain(
            |p| p.at_keyword("or").then_some(LogicalOp::Or),
            Self::logical,
            Self::and_expr,
        )
    }

    fn and_expr(&mut self) -> PResult<Expr> {
        self.chain(
            |p| p.at_keyword("and").then_some(LogicalOp::And),
            Self::logical,
            Self::not_expr,
        )
    }

    fn not_expr(&mut self) -> PResult<Expr> {
        if self.at_keyword("not") {
            let start = self.bump().span;
            let operand = self.nest(Self::not_expr)?;
            let span = start.to(operand.span);
            return Ok(Expr {
                kind: ExprKind::Unary {
                    op: UnaryOp::Not,
                    operand: Box::new(operand),
                },
                span,
            });
        }
        self.comparison()
    }

    fn compare_op(&mut self) -> Option<CompareOp> {
        let op = match &self.peek().kind {
            TokenKind::EqEq => CompareOp::Eq,
            TokenKind::NotEq => CompareOp::NotEq,
            TokenKind::Lt => CompareOp::Lt,
            TokenKind::Le => CompareOp::Le,
            TokenKind::Gt => CompareOp::Gt,
            TokenKind::Ge => CompareOp::Ge,
            TokenKind::Ident if self.at_keyword("in") => CompareOp::In,
            TokenKind::Ident if self.at_keyword("not") && self.nth_is_keyword(1, "in") => {
                self.bump();
                CompareOp::NotIn
            }
            TokenKind::Ident if self.at_keyword("is") => {
                if self.nth_is_keyword(1, "not") {
                    self.bump();
                    CompareOp::IsNot
                } else {
                    CompareOp::Is
                }
            }
            _ => return None,
        };
        self.bump();
        Some(op)
    }

    fn comparison(&mut self) -> PResult<Expr> {
        let saved = self.depth;
        let first = self.arith()?;
        let mut rest = Vec::new();
        let mut links = 0;
        while let Some(op) = self.compare_op() {
            self.link(&mut links).inspect_err(|_| self.depth = saved)?;
            rest.push((op, self.arith().inspect_err(|_| self.depth = saved)?));
        }
        self.depth = saved;
        if rest.is_empty() {
            return Ok(first);
        }
        let span = first.span.to(rest.last().expect("non-empty").1.span);
        Ok(Expr {
            kind: ExprKind::Compare {
                first: Box::new(first),
                rest,
            },
            span,
        })
    }

    fn arith(&mut self) -> PResult<Expr> {
        self.chain(
            |p| match p.peek().kind {
                TokenKind::Plus => Some(BinaryOp::Add),
                TokenKind::Minus => Some(BinaryOp::Sub),
                _ => None,
            },
            Self::binary,
            Self::term,
        )
    }

    fn term(&mut self) -> PResult<Expr> {
        self.chain(
            |p| match p.peek().kind {
                TokenKind::Star => Some(BinaryOp::Mul),
                TokenKind::Slash => Some(BinaryOp::Div),
                TokenKind::SlashSlash => Some(BinaryOp::FloorDiv),
                TokenKind::Percent => Some(BinaryOp::Mod),
                _ => None,
            },
            Self::binary,
            Self::factor,
        )
    }

    fn factor(&mut self) -> PResult<Expr> {
        let op = match self.peek().kind {
            TokenKind::Minus => UnaryOp::Neg,
            TokenKind::Plus => UnaryOp::Pos,
            _ => return self.power(),
        };
        let start = self.bump().span;
        // `-9223372036854775808` is the one literal that only fits negated.
        if op == UnaryOp::Neg
            && let TokenKind::Int(v) = self.peek().kind
            && v == i64::MAX as u64 + 1
            && !matches!(self.peek_nth(1).kind, TokenKind::StarStar)
        {
            let end = self.bump().span;
            return Ok(Expr {
                kind: ExprKind::Int(i64::MIN),
                span: start.to(end),
            });
        }
        let operand = self.nest(Self::factor)?;
        let span = start.to(operand.span);
        Ok(Expr {
            kind: ExprKind::Unary {
                op,
                operand: Box::new(operand),
            },
            span,
        })
    }

    fn power(&mut self) -> PResult<Expr> {
        let base = self.postfix()?;
        if self.peek().kind == TokenKind::StarStar {
            self.bump();
            let exponent = self.nest(Self::factor)?;
            let span = base.span.to(exponent.span);
            return Ok(Expr {
                kind: ExprKind::Binary {
                    op: BinaryOp::Pow,
                    lhs: Box::new(base),
                    rhs: Box::new(exponent),
                },
                span,
            });
        }
        Ok(base)
    }

    fn postfix(&mut self) -> PResult<Expr> {
        let saved = self.depth;
        let mut links = 0;
        let mut expr = self.atom()?;
        loop {
            match self.peek().kind {
                TokenKind::LParen => {
                    self.link(&mut links).inspect_err(|_| self.depth = saved)?;
                    let (args, close) = self.call_args().inspect_err(|_| self.depth = saved)?;
                    let span = expr.span.to(close);
                    expr = Expr {
                        kind: ExprKind::Call(Call {
                            callee: Box::new(expr),
                            args,
                            span,
                        }),
                        span,
                    };
                }
                TokenKind::LBracket => {
                    self.link(&mut links).inspect_err(|_| self.depth = saved)?;
                    let open = self.bump().span;
                    self.enter_bracket();
                    let index = self.nest(Self::conditional);
                    let close = match &index {
                        Ok(_) => self.close(&TokenKind::RBracket, open, "`]`"),
                        Err(_) => Err(Reported),
                    };
                    self.brackets -= 1;
                    let (Ok(index), Ok(close)) = (index, close) else {
                        self.depth = saved;
                        return Err(Reported);
                    };
                    let span = expr.span.to(close);
                    expr = Expr {
                        kind: ExprKind::Index {
                            object: Box::new(expr),
                            index: Box::new(index),
                        },
                        span,
                    };
                }
                TokenKind::Dot => {
                    self.link(&mut links).inspect_err(|_| self.depth = saved)?;
                    self.bump();
                    let name = self
                        .ident("an attribute name after `.`")
                        .inspect_err(|_| self.depth = saved)?;
                    let span = expr.span.to(name.span);
                    expr = Expr {
                        kind: ExprKind::Attribute {
                            object: Box::new(expr),
                            name,
                        },
                        span,
                    };
                }
                _ => break,
            }
        }
        self.depth = saved;
        Ok(expr)
    }

    /// `( [arg {, arg}] )` — empty arguments are kept as `Arg { value: None }`.
    pub(crate) fn call_args(&mut self) -> PResult<(Vec<Arg>, Span)> {
        let open = self.bump().span;
        self.enter_bracket();
        let result = self.call_args_inner(open);
        self.brackets -= 1;
        result
    }

    fn call_args_inner(&mut self, open: Span) -> PResult<(Vec<Arg>, Span)> {
        let mut args = Vec::new();
        if self.peek().kind == TokenKind::RParen {
            return Ok((args, self.bump().span));
        }
        loop {
            args.push(self.arg()?);
            if self.peek().kind == TokenKind::Comma {
                self.bump();
                continue;
            }
            let close = self.close(&TokenKind::RParen, open, "`,` or `)`")?;
            return Ok((args, close));
        }
    }

    /// One call argument: an expression, or nothing before `,`/`)` (kept
    /// as an empty argument).
    pub(crate) fn arg(&mut self) -> PResult<Arg> {
        let at = self.peek().span;
        if matches!(self.peek().kind, TokenKind::Comma | TokenKind::RParen) {
            return Ok(Arg {
                value: None,
                span: Span::new(at.start as usize, at.start as usize),
            });
        }
        let value = self.expr()?;
        Ok(Arg {
            span: value.span,
            value: Some(value),
        })
    }

    /// Expect a closing bracket; a missing one reports the opener too.
    pub(crate) fn close(&mut self, kind: &TokenKind, open: Span, expected: &str) -> PResult<Span> {
        if self.peek().kind == *kind {
            return Ok(self.bump().span);
        }
        let found = self.peek().clone();
        let open_line = self.line_of(open);
        let found_line = self.line_of(found.span);
        let opener = &self.src[open.range()];
        let d = if found_line > open_line || found.kind == TokenKind::Eof {
            Diagnostic::new(Code::UnclosedBracket, open, format!("`{opener}` is never closed"))
                .with_label("opened here")
                .with_secondary(found.span, format!("expected {expected} before this"))
                .with_help(format!("add the missing {expected}"))
        } else {
            Diagnostic::new(
                Code::UnexpectedToken,
                found.span,
                format!("expected {expected}, found {}", self.describe(&found)),
            )
            .with_secondary(open, format!("to match this `{opener}`"))
        };
        self.report(d);
        Err(Reported)
    }

    fn atom(&mut self) -> PResult<Expr> {
        let tok = self.peek().clone();
        let kind = match tok.kind {
            TokenKind::Int(v) => {
                self.bump();
                match i64::try_from(v) {
                    Ok(v) => ExprKind::Int(v),
                    Err(_) => {
                        self.report(
                            Diagnostic::new(
                                Code::IntegerTooLarge,
                                tok.span,
                                "integer literal does not fit in 64 bits",
                            )
                            .with_help("the largest integer is 9223372036854775807"),
                        );
                        ExprKind::Int(0)
                    }
                }
            }
            TokenKind::Float(v) => {
                self.bump();
                ExprKind::Float(v)
            }
            TokenKind::Str { value, quote } => {
                self.bump();
                ExprKind::Str { value, quote }
            }
            TokenKind::Template(parts) => {
                self.bump();
                ExprKind::Template(parts)
            }
            TokenKind::Global(name) => {
                self.bump();
                ExprKind::Global(Ident {
                    name,
                    span: Span::new(tok.span.start as usize + 1, tok.span.end as usize),
                })
            }
            TokenKind::Ident => {
                let text = &self.src[tok.span.range()];
                let kind = match text {
                    "True" | "true" => ExprKind::Bool(true),
                    "False" | "false" => ExprKind::Bool(false),
                    "None" | "null" => ExprKind::None,
                    t if super::is_reserved(t) => {
                        return self.unexpected("an expression");
                    }
                    t => ExprKind::Name(Ident {
                        name: t.to_string(),
                        span: tok.span,
                    }),
                };
                self.bump();
                kind
            }
            TokenKind::LParen => {
                let open = self.bump().span;
                self.enter_bracket();
                let inner = self.nest(Self::conditional);
                let close = match &inner {
                    Ok(_) => self.close(&TokenKind::RParen, open, "`)`"),
                    Err(_) => Err(Reported),
                };
                self.brackets -= 1;
                let mut inner = inner?;
                inner.span = open.to(close?);
                return Ok(inner);
            }
            TokenKind::LBracket => return self.list(),
            TokenKind::LBrace => return self.dict(),
            _ => return self.unexpected("an expression"),
        };
        Ok(Expr { kind, span: tok.span })
    }

    fn list(&mut self) -> PResult<Expr> {
        let open = self.bump().span;
        self.enter_bracket();
        let result = self.list_inner(open);
        self.brackets -= 1;
        result
    }

    fn list_inner(&mut self, open: Span) -> PResult<Expr> {
        let mut items = Vec::new();
        loop {
            if self.peek().kind == TokenKind::RBracket {
                let close = self.bump().span;
                return Ok(Expr {
                    kind: ExprKind::List(items),
                    span: open.to(close),
                });
            }
            items.push(self.expr()?);
            if self.peek().kind == TokenKind::Comma {
                self.bump();
            } else {
                let close = self.close(&TokenKind::RBracket, open, "`,` or `]`")?;
                return Ok(Expr {
                    kind: ExprKind::List(items),
                    span: open.to(close),
                });
            }
        }
    }

    fn dict(&mut self) -> PResult<Expr> {
        let open = self.bump().span;
        self.enter_bracket();
        let result = self.dict_inner(open);
        self.brackets -= 1;
        result
    }

    fn dict_inner(&mut self, open: Span) -> PResult<Expr> {
        let mut entries = Vec::new();
        loop {
            if self.peek().kind == TokenKind::RBrace {
                let close = self.bump().span;
                return Ok(Expr {
                    kind: ExprKind::Dict(entries),
                    span: open.to(close),
                });
            }
            let key = self.expr()?;
            if self.peek().kind != TokenKind::Colon {
                return self.unexpected("`:` between a dict key and its value");
            }
            self.bump();
            let value = self.expr()?;
            entries.push((key, value));
            if self.peek().kind == TokenKind::Comma {
                self.bump();
            } else {
                let close = self.close(&TokenKind::RBrace, open, "`,` or `}`")?;
                return Ok(Expr {
                    kind: ExprKind::Dict(entries),
                    span: open.to(close),
                });
            }
        }
    }
}
