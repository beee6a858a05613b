//! Tokens of AVAP source.
//!
//! The lexer never fails: malformed input becomes a diagnostic and the lexer
//! carries on, so every byte string yields a token stream ending in `Eof`.
//!
//! Two decisions are made here because they depend on bracket depth:
//! * `//` starts a comment at statement level (spec §1) but is the
//!   floor-division operator inside brackets: `(a // b)`.
//! * `{` right after `)` or at the start of a line opens a function body
//!   ([`TokenKind::BlockOpen`]); anywhere else it opens a dict display.

use crate::ast::Ident;
use crate::ast::TemplatePart;
use crate::diag::{Code, Diagnostic};
use crate::span::Span;

#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    Ident,
    /// An integer literal; may exceed `i64::MAX` by one (for `-9223372036854775808`).
    Int(u64),
    Float(f64),
    Str {
        value: String,
        quote: char,
    },
    Template(Vec<TemplatePart>),
    /// `$name`.
    Global(String),
    Plus,
    Minus,
    Star,
    StarStar,
    Slash,
    SlashSlash,
    Percent,
    Assign,
    PlusAssign,
    MinusAssign,
    StarAssign,
    SlashAssign,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    LParen,
    RParen,
    LBracket,
    RBracket,
    /// `{` of a dict display.
    LBrace,
    /// `}` of a dict display.
    RBrace,
    /// `{` opening a function body.
    BlockOpen,
    /// `}` closing a function body.
    BlockClose,
    Comma,
    Colon,
    Dot,
    Newline,
    Eof,
}

impl TokenKind {
    /// How the token is named in "expected …, found …" messages.
    pub fn describe(&self) -> &'static str {
        match self {
            TokenKind::Ident => "a name",
            TokenKind::Int(_) => "an integer",
            TokenKind::Float(_) => "a number",
            TokenKind::Str { .. } => "a string",
            TokenKind::Template(_) => "a template",
            TokenKind::Global(_) => "a `$` global",
            TokenKind::Plus => "`+`",
            TokenKind::Minus => "`-`",
            TokenKind::Star => "`*`",
            TokenKind::StarStar => "`**`",
            TokenKind::Slash => "`/`",
            TokenKind::SlashSlash => "`//`",
            TokenKind::Percent => "`%`",
            TokenKind::Assign => "`=`",
            TokenKind::PlusAssign => "`+=`",
            TokenKind::MinusAssign => "`-=`",
            TokenKind::StarAssign => "`*=`",
            TokenKind::SlashAssign => "`/=`",
            TokenKind::EqEq => "`==`",
            TokenKind::NotEq => "`!=`",
            TokenKind::Lt => "`<`",
            TokenKind::Le => "`<=`",
            TokenKind::Gt => "`>`",
            TokenKind::Ge => "`>=`",
            TokenKind::LParen => "`(`",
            TokenKind::RParen => "`)`",
            TokenKind::LBracket => "`[`",
            TokenKind::RBracket => "`]`",
            TokenKind::LBrace | TokenKind::BlockOpen => "`{`",
            TokenKind::RBrace | TokenKind::BlockClose => "`}`",
            TokenKind::Comma => "`,`",
            TokenKind::Colon => "`:`",
            TokenKind::Dot => "`.`",
            TokenKind::Newline => "end of line",
            TokenKind::Eof => "end of file",
        }
    }

    /// Tokens that can end an operand (used by the floor-division hint).
    fn ends_operand(&self) -> bool {
        matches!(
            self,
            TokenKind::Ident
                | TokenKind::Int(_)
                | TokenKind::Float(_)
                | TokenKind::Str { .. }
                | TokenKind::Global(_)
                | TokenKind::RParen
                | TokenKind::RBracket
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub kind: TokenKind,
    pub span: Span,
}

/// Split `src` into tokens. Diagnostics for malformed input are appended to
/// `diags`; the returned stream always ends with `Eof`.
pub fn lex(src: &str, diags: &mut Vec<Diagnostic>) -> Vec<Token> {
    let mut lexer = Lexer {
        src,
        bytes: src.as_bytes(),
        pos: 0,
        tokens: Vec::with_capacity(src.len() / 3),
        brackets: Vec::new(),
        line_start_token: 0,
        floor_division_words: Vec::new(),
        diags,
    };
    lexer.run();
    lexer.warn_names_after_floor_division();
    lexer.tokens
}

struct Lexer<'s, 'd> {
    src: &'s str,
    bytes: &'s [u8],
    pos: usize,
    tokens: Vec<Token>,
    /// Open brackets with their positions (for `//` and `{` decisions).
    brackets: Vec<(u8, usize)>,
    /// Index of the first token of the current line.
    line_start_token: usize,
    /// `x = a // b`-shaped comments whose text starts with a word: the
    /// `//` position and the word. W0002 once the file is lexed, if the
    /// word names something in the code.
    floor_division_words: Vec<(usize, &'s str)>,
    diags: &'d mut Vec<Diagnostic>,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl<'s> Lexer<'s, '_> {
    fn peek(&self, ahead: usize) -> u8 {
        self.bytes.get(self.pos + ahead).copied().unwrap_or(0)
    }

    fn push(&mut self, kind: TokenKind, start: usize) {
        self.tokens.push(Token {
            kind,
            span: Span::new(start, self.pos),
        });
    }

    fn error(&mut self, code: Code, start: usize, end: usize, message: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(code, Span::new(start, end), message));
        self.diags.last_mut().expect("just pushed")
    }

    fn newline(&mut self, start: usize) {
        // Inside brackets a newline is kept too: the parser skips it there,
        // and it still needs line boundaries for error recovery.
        self.push(TokenKind::Newline, start);
        self.line_start_token = self.tokens.len();
    }

    fn run(&mut self) {
        while self.pos < self.bytes.len() {
            let start = self.pos;
            let b = self.bytes[self.pos];
            match b {
                b'\n' => {
                    self.pos += 1;
                    self.newline(start);
                }
                b' ' | b'\t' | b'\r' | 0x0c => self.pos += 1,
                b'/' if self.peek(1) == b'/' && self.brackets.is_empty() => self.line_comment(),
                b'/' if self.peek(1) == b'*' => self.block_comment(),
                b'"' | b'\'' => self.string(b),
                b'`' => self.template(),
                b'$' => self.global(),
                b'0'..=b'9' => self.number(),
                _ if is_ident_start(b) => {
                    while self.pos < self.bytes.len() && is_ident_continue(self.bytes[self.pos]) {
                        self.pos += 1;
                    }
                    self.push(TokenKind::Ident, start);
                }
                _ => self.punct(b),
            }
        }
        let end = self.bytes.len();
        self.tokens.push(Token {
            kind: TokenKind::Eof,
            span: Span::new(end, end),
        });
    }

    fn line_comment(&mut self) {
        // The source outlives the lexer: words of comments are kept from it.
        let src: &'s str = self.src;
        let start = self.pos;
        let end = src[start..].find('\n').map_or(src.len(), |i| start + i);
        self.pos = end;
        // `x = 7 // 2` reads like Python floor division but is a comment.
        let text = src[start + 2..end].trim_start();
        let line = &self.tokens[self.line_start_token..];
        let is_expression_line = matches!(
            line,
            [first, second, ..] if first.kind == TokenKind::Ident
                && matches!(second.kind, TokenKind::Assign | TokenKind::PlusAssign | TokenKind::MinusAssign | TokenKind::StarAssign | TokenKind::SlashAssign)
        ) || matches!(line.first(), Some(t) if t.kind == TokenKind::Ident && &self.src[t.span.range()] == "return");
        let after_operand = line.last().is_some_and(|t| t.kind.ends_operand());
        if !(is_expression_line && after_operand) {
            return;
        }
        if text.starts_with(|c: char| c.is_ascii_digit() || c == '(') {
            self.floor_division_warning(start);
        } else if text.starts_with(|c: char| is_ident_start(c as u8)) {
            // `pages = (total + size - 1) // size`: a word, then nothing or
            // an operator, is an operand when the code uses that name
            // (decided once every token is known); prose has more words.
            let word_end = text.bytes().position(|b| !is_ident_continue(b)).unwrap_or(text.len());
            let rest = text[word_end..].trim_start();
            if rest.is_empty() || rest.starts_with(['+', '-', '*', '/', '%', ')']) {
                self.floor_division_words.push((start, &text[..word_end]));
            }
        }
    }

    fn floor_division_warning(&mut self, start: usize) {
        let d = self.error(
            Code::CommentLooksLikeFloorDivision,
            start,
            start + 2,
            "`//` starts a comment here, not floor division",
        );
        d.label = Some("the rest of the line is ignored".into());
        d.help = Some("for floor division write it inside parentheses: `(a // b)`".into());
    }

    /// W0002 for the comments whose first word names an identifier of the code.
    fn warn_names_after_floor_division(&mut self) {
        if self.floor_division_words.is_empty() {
            return;
        }
        let names: std::collections::HashSet<&str> = self
            .tokens
            .iter()
            .filter(|t| t.kind == TokenKind::Ident)
            .map(|t| &self.src[t.span.range()])
            .collect();
        let sites: Vec<usize> = self
            .floor_division_words
            .iter()
            .filter(|(_, word)| names.contains(word))
            .map(|&(start, _)| start)
            .collect();
        for start in sites {
            self.floor_division_warning(start);
        }
    }

    fn block_comment(&mut self) {
        let start = self.pos;
        if let Some(i) = self.src[start + 2..].find("*/") {
            let end = start + 2 + i + 2;
            let spans_lines = self.src[start..end].contains('\n');
            self.pos = end;
            if spans_lines && self.brackets.is_empty() {
                self.newline(start);
            }
        } else {
            self.pos = self.bytes.len();
            self.error(
                Code::UnterminatedComment,
                start,
                start + 2,
                "unterminated block comment",
            )
            .help = Some("close it with `*/`".into());
        }
    }

    /// Process one escape after a backslash at `self.pos`; returns the text it
    /// stands for. Unknown escapes keep the backslash (spec §1).
    fn escape(&mut self, extra: &[u8]) -> String {
        let start = self.pos;
        let next = self.peek(1);
        let simple = match next {
            b'n' => Some('\n'),
            b't' => Some('\t'),
            b'r' => Some('\r'),
            b'\\' => Some('\\'),
            b'"' => Some('"'),
            b'\'' => Some('\''),
            _ if extra.contains(&next) => Some(next as char),
            _ => None,
        };
        if let Some(c) = simple {
            self.pos += 2;
            return c.to_string();
        }
        if next == b'u' {
            let hex = self.src.get(self.pos + 2..self.pos + 6).unwrap_or("");
            if hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                let mut code = u32::from_str_radix(hex, 16).unwrap_or(0xFFFD);
                self.pos += 6;
                // A UTF-16 surrogate pair (`\uD83D\uDE00`, as JSON writes it).
                if (0xD800..0xDC00).contains(&code) && self.src[self.pos..].starts_with("\\u") {
                    let low = self
                        .src
                        .get(self.pos + 2..self.pos + 6)
                        .and_then(|h| u32::from_str_radix(h, 16).ok());
                    if let Some(low) = low.filter(|l| (0xDC00..0xE000).contains(l)) {
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                        self.pos += 6;
                    }
                }
                return match char::from_u32(code) {
                    Some(c) => c.to_string(),
                    None => {
                        self.error(
                            Code::InvalidEscape,
                            start,
                            self.pos,
                            "`\\u` escape names a surrogate, not a character",
                        )
                        .help = Some("write the character itself, or a code point outside D800–DFFF".into());
                        "\u{FFFD}".into()
                    }
                };
            }
            self.pos += 2;
            self.error(
                Code::InvalidEscape,
                start,
                self.pos,
                "`\\u` must be followed by four hex digits",
            )
            .help = Some("write `\\u00e9` for é, or `\\\\u` for a literal backslash-u".into());
            return String::new();
        }
        // Unknown escape: keep the backslash and let the next char be read normally.
        self.pos += 1;
        "\\".into()
    }

    fn string(&mut self, quote: u8) {
        let start = self.pos;
        self.pos += 1;
        let mut value = String::new();
        loop {
            match self.bytes.get(self.pos) {
                None | Some(b'\n') => {
                    let d = self.error(Code::UnterminatedString, start, start + 1, "unterminated string");
                    d.label = Some("this string is never closed".into());
                    d.help = Some(format!(
                        "close it with {q} on the same line; strings cannot span lines (use \\n)",
                        q = quote as char
                    ));
                    break;
                }
                Some(&b) if b == quote => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let s = self.escape(&[]);
                    value.push_str(&s);
                }
                Some(_) => {
                    let c = self.src[self.pos..].chars().next().expect("in bounds");
                    value.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
        self.push(
            TokenKind::Str {
                value,
                quote: quote as char,
            },
            start,
        );
    }

    fn template(&mut self) {
        let start = self.pos;
        self.pos += 1;
        let mut parts = Vec::new();
        let mut text = String::new();
        loop {
            match self.bytes.get(self.pos) {
                None => {
                    self.error(Code::UnterminatedTemplate, start, start + 1, "unterminated template")
                        .help = Some("close it with a backtick".into());
                    break;
                }
                Some(b'`') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let s = self.escape(b"`$");
                    text.push_str(&s);
                }
                Some(b'$') if self.peek(1) == b'{' => {
                    let open = self.pos;
                    let inner_start = self.pos + 2;
                    let close = self.src[inner_start..]
                        .find(['}', '`', '\n'])
                        .map(|i| inner_start + i)
                        .filter(|&i| self.bytes[i] == b'}');
                    let inner = close.map(|c| (&self.src[inner_start..c], c));
                    match inner {
                        Some((name, c))
                            if !name.trim().is_empty()
                                && is_ident_start(name.trim().as_bytes()[0])
                                && name.trim().bytes().all(is_ident_continue) =>
                        {
                            if !text.is_empty() {
                                parts.push(TemplatePart::Text {
                                    text: std::mem::take(&mut text),
                                });
                            }
                            let lead = name.len() - name.trim_start().len();
                            let trimmed = name.trim();
                            let name_start = inner_start + lead;
                            parts.push(TemplatePart::Var {
                                name: Ident {
                                    name: trimmed.to_string(),
                                    span: Span::new(name_start, name_start + trimmed.len()),
                                },
                            });
                            self.pos = c + 1;
                        }
                        _ => {
                            let end = close.map_or(inner_start, |c| c + 1);
                            let d = self.error(
                                Code::InvalidPlaceholder,
                                open,
                                end,
                                "a template placeholder must hold one variable name",
                            );
                            d.help = Some("write `${name}`; to keep a literal `${`, escape it as `\\${`".into());
                            text.push_str(&self.src[open..end]);
                            self.pos = end;
                        }
                    }
                }
                Some(_) => {
                    let c = self.src[self.pos..].chars().next().expect("in bounds");
                    text.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
        if !text.is_empty() || parts.is_empty() {
            parts.push(TemplatePart::Text { text });
        }
        self.push(TokenKind::Template(parts), start);
    }

    fn global(&mut self) {
        let start = self.pos;
        self.pos += 1;
        if self.pos < self.bytes.len() && is_ident_start(self.bytes[self.pos]) {
            while self.pos < self.bytes.len() && is_ident_continue(self.bytes[self.pos]) {
                self.pos += 1;
            }
            let name = self.src[start + 1..self.pos].to_string();
            self.push(TokenKind::Global(name), start);
        } else {
            self.error(
                Code::UnexpectedChar,
                start,
                start + 1,
                "`$` must be followed by a variable name",
            )
            .help = Some("`$name` reads the global variable `name`".into());
        }
    }

    fn number(&mut self) {
        let start = self.pos;
        while self.peek(0).is_ascii_digit() {
            self.pos += 1;
        }
        let mut is_float = false;
        if self.peek(0) == b'.' && self.peek(1).is_ascii_digit() {
            is_float = true;
            self.pos += 1;
            while self.peek(0).is_ascii_digit() {
                self.pos += 1;
            }
        }
        if matches!(self.peek(0), b'e' | b'E') {
            let sign = usize::from(matches!(self.peek(1), b'+' | b'-'));
            if self.peek(1 + sign).is_ascii_digit() {
                is_float = true;
                self.pos += 1 + sign;
                while self.peek(0).is_ascii_digit() {
                    self.pos += 1;
                }
            }
        }
        // `12abc` is one malformed literal, not `12` followed by `abc`.
        if is_ident_continue(self.peek(0)) {
            while is_ident_continue(self.peek(0)) {
                self.pos += 1;
            }
            self.error(
                Code::InvalidNumber,
                start,
                self.pos,
                format!("`{}` is not a valid number", &self.src[start..self.pos]),
            )
            .help = Some("names cannot start with a digit; numbers are written `42`, `1.5` or `1e3`".into());
            // An identifier token keeps the parser and checker quiet about a
            // mistake already reported here.
            self.push(TokenKind::Ident, start);
            return;
        }
        let text = &self.src[start..self.pos];
        if is_float {
            let value: f64 = text.parse().unwrap_or(f64::INFINITY);
            if value.is_infinite() {
                self.error(Code::InvalidNumber, start, self.pos, "float literal is too large")
                    .help = Some("the largest float is about 1.8e308".into());
            }
            self.push(TokenKind::Float(value), start);
        } else {
            match text.parse::<u64>() {
                Ok(v) if v <= i64::MAX as u64 + 1 => self.push(TokenKind::Int(v), start),
                _ => {
                    self.error(
                        Code::IntegerTooLarge,
                        start,
                        self.pos,
                        "integer literal does not fit in 64 bits",
                    )
                    .help = Some("integers range from -9223372036854775808 to 9223372036854775807; write a float (`1e20`) for larger values".into());
                    self.push(TokenKind::Int(0), start);
                }
            }
        }
    }

    fn punct(&mut self, b: u8) {
        let start = self.pos;
        let two = [b, self.peek(1)];
        let (kind, len) = match &two {
            b"**" => (TokenKind::StarStar, 2),
            b"//" => (TokenKind::SlashSlash, 2),
            b"+=" => (TokenKind::PlusAssign, 2),
            b"-=" => (TokenKind::MinusAssign, 2),
            b"*=" => (TokenKind::StarAssign, 2),
            b"/=" => (TokenKind::SlashAssign, 2),
            b"==" => (TokenKind::EqEq, 2),
            b"!=" => (TokenKind::NotEq, 2),
            b"<=" => (TokenKind::Le, 2),
            b">=" => (TokenKind::Ge, 2),
            _ => match b {
                b'+' => (TokenKind::Plus, 1),
                b'-' => (TokenKind::Minus, 1),
                b'*' => (TokenKind::Star, 1),
                b'/' => (TokenKind::Slash, 1),
                b'%' => (TokenKind::Percent, 1),
                b'=' => (TokenKind::Assign, 1),
                b'<' => (TokenKind::Lt, 1),
                b'>' => (TokenKind::Gt, 1),
                b'(' | b'[' => {
                    self.brackets.push((b, start));
                    (
                        if b == b'(' {
                            TokenKind::LParen
                        } else {
                            TokenKind::LBracket
                        },
                        1,
                    )
                }
                b')' | b']' => {
                    let open = if b == b')' { b'(' } else { b'[' };
                    if self.brackets.last().is_some_and(|&(o, _)| o == open) {
                        self.brackets.pop();
                    }
                    (
                        if b == b')' {
                            TokenKind::RParen
                        } else {
                            TokenKind::RBracket
                        },
                        1,
                    )
                }
                b'{' => {
                    let prev = self.tokens[self.line_start_token..].last().map(|t| &t.kind);
                    if self.brackets.is_empty() && matches!(prev, None | Some(TokenKind::RParen)) {
                        (TokenKind::BlockOpen, 1)
                    } else {
                        self.brackets.push((b'{', start));
                        (TokenKind::LBrace, 1)
                    }
                }
                b'}' => {
                    if self.brackets.last().is_some_and(|&(o, _)| o == b'{') {
                        self.brackets.pop();
                        (TokenKind::RBrace, 1)
                    } else if self.brackets.is_empty() {
                        (TokenKind::BlockClose, 1)
                    } else {
                        (TokenKind::RBrace, 1)
                    }
                }
                b',' => (TokenKind::Comma, 1),
                b':' => (TokenKind::Colon, 1),
                b'.' => (TokenKind::Dot, 1),
                _ => {
                    self.unexpected_char();
                    return;
                }
            },
        };
        self.pos += len;
        self.push(kind, start);
    }

    fn unexpected_char(&mut self) {
        let start = self.pos;
        let c = self.src[start..].chars().next().expect("in bounds");
        self.pos += c.len_utf8();
        let (message, help) = match c {
            '#' => (
                "`#` is not a comment in AVAP".to_string(),
                Some("comments start with `//` or are wrapped in `/* … */`"),
            ),
            ';' => (
                "`;` is not a statement separator".to_string(),
                Some("write one statement per line"),
            ),
            '!' => (
                "unexpected `!`".to_string(),
                Some("use `not x` for negation and `!=` for inequality"),
            ),
            '&' | '|' => (format!("unexpected `{c}`"), Some("use `and` / `or`")),
            '\u{FFFD}' => ("invalid UTF-8 in source".to_string(), Some("save the file as UTF-8")),
            c if c.is_alphabetic() => (
                format!("`{c}` cannot appear in a name"),
                Some("names use ASCII letters, digits and `_`; put other text in quotes"),
            ),
            c => (format!("unexpected character `{}`", c.escape_debug()), None),
        };
        let d = self.error(Code::UnexpectedChar, start, self.pos, message);
        d.help = help.map(str::to_string);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<TokenKind> {
        let mut d = Vec::new();
        lex(src, &mut d).into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn comment_at_statement_level_floor_division_inside_brackets() {
        use TokenKind::*;
        assert_eq!(kinds("a // b"), vec![Ident, Eof]);
        assert_eq!(kinds("(a // b)"), vec![LParen, Ident, SlashSlash, Ident, RParen, Eof]);
    }

    #[test]
    fn braces_after_paren_open_blocks() {
        use TokenKind::*;
        assert_eq!(
            kinds("f(){\n}"),
            vec![Ident, LParen, RParen, BlockOpen, Newline, BlockClose, Eof]
        );
        assert_eq!(kinds("x = {}"), vec![Ident, Assign, LBrace, RBrace, Eof]);
    }

    #[test]
    fn escapes() {
        let k = kinds(r#""a\n\q\u00e9""#);
        assert_eq!(
            k[0],
            TokenKind::Str {
                value: "a\n\\qé".into(),
                quote: '"'
            }
        );
    }
}
