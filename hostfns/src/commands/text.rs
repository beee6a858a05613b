//! Strings: `replace`, `getRegex`, `randomString`, `encodeSHA256`,
//! `encodeMD5`.

use md5::Md5;
use regex::{Captures, Regex, RegexBuilder};
use sha2::{Digest, Sha256};

use super::{Args, Outcome, charge, value};
use crate::context::HostContext;
use crate::error::{ErrorKind, HostError};
use crate::ops;
use crate::value::Value;

/// Compiled-program size cap for script regexes, and the cap on the lazy
/// DFA's cache: what one regex may hold in memory, whatever its pattern
/// (a constant a run's memory limit leaves room for; see docs/security.md).
const REGEX_SIZE_LIMIT: usize = 2 * 1024 * 1024;
const REGEX_DFA_LIMIT: usize = 2 * 1024 * 1024;

/// Longest `randomString` result.
pub const MAX_RANDOM_LENGTH: i64 = 1_000_000;

/// Longest pattern compiled as a regex. Parsing builds a syntax tree many
/// times the pattern's size before `size_limit` can look at the result; a
/// longer pattern is not a regex (`replace` then matches it as plain text,
/// `getRegex` refuses it).
const MAX_PATTERN_BYTES: usize = 16 * 1024;

/// Most work one regex call may do when it must find capture groups: the
/// text's length times the pattern's groups. Resolving groups takes the
/// slower engines (about 20 ns per byte per group here), and one match
/// cannot be interrupted: a single call over 3 MB with 30 groups took 2 s.
/// At this bound one call takes about a fifth of a second.
const MAX_CAPTURE_WORK: usize = 8 << 20;

/// `ValueError` (as a message) when matching `re` over `text` could take
/// longer than the run can interrupt; otherwise the work (text bytes ×
/// groups), charged as fuel before matching.
fn capture_work(re: &Regex, text: &str) -> Result<usize, String> {
    let groups = re.captures_len() - 1;
    let work = text.len().saturating_mul(groups);
    if work > MAX_CAPTURE_WORK {
        return Err(format!(
            "matching {groups} groups over {} bytes of text is too much work for one call \
             (text × groups may be at most {MAX_CAPTURE_WORK}); use fewer groups or a shorter text",
            text.len()
        ));
    }
    Ok(work)
}

fn compile(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "the pattern is {} bytes long; regular expressions may be at most {MAX_PATTERN_BYTES} bytes",
            pattern.len()
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

/// One piece of a Python `re.sub` replacement template.
#[derive(Debug)]
enum Piece {
    Text(String),
    Group(usize),
    Named(String),
}

/// Parse a Python replacement template: `\1`…`\99` and `\g<n>`/`\g<name>`
/// are groups, `\n` `\t` `\r` `\\` the usual escapes, any other backslash
/// stays as written; `$` has no special meaning.
fn parse_template(template: &str, re: &Regex) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    let push_group = |text: &mut String, pieces: &mut Vec<Piece>, piece: Piece| {
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(text)));
        }
        pieces.push(piece);
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some(d) if d.is_ascii_digit() && d != '0' => {
                chars.next();
                let mut n = d.to_digit(10).unwrap_or(0) as usize;
                if let Some(e) = chars.peek().and_then(|e| e.to_digit(10)) {
                    chars.next();
                    n = n * 10 + e as usize;
                }
                if n >= re.captures_len() {
                    return Err(format!("invalid group reference {n}"));
                }
                push_group(&mut text, &mut pieces, Piece::Group(n));
            }
            Some('g') => {
                chars.next();
                if chars.next() != Some('<') {
                    return Err("missing < after \\g".to_owned());
                }
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('>') => break,
                        Some(ch) => name.push(ch),
                        None => return Err("missing > in \\g<…>".to_owned()),
                    }
                }
                let piece = match name.parse::<usize>() {
                    Ok(n) if n < re.captures_len() => Piece::Group(n),
                    Ok(n) => return Err(format!("invalid group reference {n}")),
                    Err(_) if re.capture_names().any(|g| g == Some(name.as_str())) => Piece::Named(name),
                    Err(_) => return Err(format!("unknown group name '{name}'")),
                };
                push_group(&mut text, &mut pieces, piece);
            }
            Some(e @ ('n' | 't' | 'r' | '\\')) => {
                chars.next();
                text.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    _ => '\\',
                });
            }
            _ => text.push('\\'),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// How long a replacement template's expansion is, per match: its fixed
/// text plus each group it refers to, times how often it refers to it.
struct ExpansionSize<'p> {
    fixed: usize,
    groups: Vec<(&'p Piece, usize)>,
}

impl<'p> ExpansionSize<'p> {
    fn of(pieces: &'p [Piece]) -> ExpansionSize<'p> {
        let mut fixed = 0;
        let mut groups: Vec<(&Piece, usize)> = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Text(t) => fixed += t.len(),
                group => match groups.iter_mut().find(|(g, _)| same_group(g, group)) {
                    Some((_, n)) => *n += 1,
                    None => groups.push((group, 1)),
                },
            }
        }
        ExpansionSize { fixed, groups }
    }

    fn for_match(&self, caps: &Captures<'_>) -> usize {
        self.groups.iter().fold(self.fixed, |len, (group, times)| {
            let text = match group {
                Piece::Group(n) => caps.get(*n).map_or("", |m| m.as_str()),
                Piece::Named(name) => caps.name(name).map_or("", |m| m.as_str()),
                Piece::Text(t) => t.as_str(),
            };
            len.saturating_add(text.len().saturating_mul(*times))
        })
    }
}

fn same_group(a: &Piece, b: &Piece) -> bool {
    match (a, b) {
        (Piece::Group(x), Piece::Group(y)) => x == y,
        (Piece::Named(x), Piece::Named(y)) => x == y,
        _ => false,
    }
}

/// The texts a replacement template expands to for one match.
fn expanded<'t>(pieces: &'t [Piece], caps: &'t Captures<'t>) -> impl Iterator<Item = &'t str> {
    pieces.iter().map(|piece| match piece {
        Piece::Text(t) => t.as_str(),
        Piece::Group(n) => caps.get(*n).map_or("", |m| m.as_str()),
        Piece::Named(name) => caps.name(name).map_or("", |m| m.as_str()),
    })
}

/// Matching is host work the epoch ticks cannot interrupt: every 256
/// matches it is charged (each match costs its pieces) and the run's
/// deadline is checked.
fn pace(ctx: &mut dyn HostContext, matches: usize, pieces: usize) -> Result<(), HostError> {
    if matches.is_multiple_of(256) {
        charge(ctx, 256 * (1 + pieces))?;
        ctx.check_time()?;
    }
    Ok(())
}

/// `re.sub(pattern, template, source)`: measured first (without
/// allocating), the result's memory claimed, then built at exactly that
/// size. The matching runs twice; a result larger than the budget is never
/// started.
fn substitute(ctx: &mut dyn HostContext, re: &Regex, pieces: &[Piece], source: &str) -> Result<String, HostError> {
    let size = ExpansionSize::of(pieces);
    let mut len = source.len();
    let mut matches = 0usize;
    for caps in re.captures_iter(source) {
        let whole = caps.get(0).map_or(0, |m| m.len());
        len = (len - whole).saturating_add(size.for_match(&caps));
        matches += 1;
        pace(ctx, matches, size.groups.len())?;
    }
    ctx.memory().claim_str(len)?;
    let mut out = String::with_capacity(len);
    let mut last = 0;
    for (n, caps) in re.captures_iter(source).enumerate() {
        pace(ctx, n + 1, pieces.len())?;
        let Some(whole) = caps.get(0) else { continue };
        out.push_str(&source[last..whole.start()]);
        for text in expanded(pieces, &caps) {
            out.push_str(text);
        }
        last = whole.end();
    }
    out.push_str(&source[last..]);
    Ok(out)
}

/// `replace(source, pattern, newValue, target)`: every match of the regular
/// expression `pattern` in `str(source)` replaced by `newValue`, which may
/// refer to groups Python's way (`\1`, `\g<name>`). When `pattern` is not a
/// valid regex it is replaced as plain text (and `newValue` taken
/// literally). `None` arguments read as `""`. The reference's quirks
/// (spaces in the pattern meaning `\s`, `¨` turning into `"`) are not
/// reproduced. Fuel: the lengths of the source, pattern and result.
pub(super) fn replace(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let source = a.text(ctx, 0)?;
    let pattern = a.text(ctx, 1)?;
    let new_value = a.text(ctx, 2)?;
    charge(ctx, source.len() + pattern.len() + new_value.len())?;
    let result = match compile(&pattern) {
        Ok(re) => {
            let pieces = parse_template(&new_value, &re).map_err(|m| a.error(ErrorKind::ValueError, m))?;
            let work = capture_work(&re, &source).map_err(|m| a.error(ErrorKind::ValueError, m))?;
            charge(ctx, work)?;
            substitute(ctx, &re, &pieces, &source)?
        }
        Err(_) => {
            // Plain text (a pattern that is not a valid regex is never empty).
            let count = source.matches(pattern.as_str()).count();
            let len = (source.len() - count * pattern.len()).saturating_add(count.saturating_mul(new_value.len()));
            ctx.memory().claim_str(len)?;
            charge(ctx, len)?;
            source.replace(&pattern, &new_value)
        }
    };
    charge(ctx, result.len())?;
    value(Value::Str(result))
}

/// `getRegex(source, pattern, target)`: all non-overlapping matches of
/// `pattern` in `str(source)`, joined into one string, as Python's
/// `"".join(re.findall(…))`: with capture groups each match contributes
/// its groups' texts. No match → `None`; an invalid pattern → `ValueError`.
/// Fuel: the lengths of the source, pattern and result.
pub(super) fn get_regex(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let source = a.text(ctx, 0)?;
    let pattern = a.text(ctx, 1)?;
    charge(ctx, source.len() + pattern.len())?;
    let re = compile(&pattern).map_err(|e| {
        a.error(
            ErrorKind::ValueError,
            format!(
                "invalid regular expression {}: {e}",
                Value::Str(pattern.clone()).repr_short()
            ),
        )
    })?;
    let work = capture_work(&re, &source).map_err(|m| a.error(ErrorKind::ValueError, m))?;
    charge(ctx, work)?;
    // Each match contributes its groups' texts (or the whole match): with
    // nested groups that is several copies of it, so the result is measured
    // and claimed before it is built.
    let pieces = |caps: &Captures<'_>| -> Vec<(usize, usize)> {
        if re.captures_len() == 1 {
            caps.get(0).map(|m| (m.start(), m.end())).into_iter().collect()
        } else {
            caps.iter().skip(1).flatten().map(|m| (m.start(), m.end())).collect()
        }
    };
    let mut len = 0usize;
    let mut matches = 0usize;
    for caps in re.captures_iter(&source) {
        matches += 1;
        pace(ctx, matches, re.captures_len())?;
        len = pieces(&caps).iter().fold(len, |n, (s, e)| n.saturating_add(e - s));
    }
    ctx.memory().claim_str(len)?;
    let mut out = String::with_capacity(len);
    for (n, caps) in re.captures_iter(&source).enumerate() {
        pace(ctx, n + 1, re.captures_len())?;
        for (start, end) in pieces(&caps) {
            out.push_str(&source[start..end]);
        }
    }
    charge(ctx, out.len() + matches)?;
    if matches == 0 {
        return value(Value::None);
    }
    value(Value::Str(out))
}

fn class_escape(c: char) -> Option<Vec<char>> {
    match c {
        'd' => Some(('0'..='9').collect()),
        'w' => Some(('a'..='z').chain('A'..='Z').chain('0'..='9').chain(['_']).collect()),
        's' => Some(vec![' ', '\t', '\n', '\r', '\u{b}', '\u{c}']),
        _ => None,
    }
}

/// The characters a `randomString` pattern stands for: a character class
/// (`[A-Z0-9]`, `[a-f\d_]`; ranges, literal characters, `\d` `\w` `\s` and
/// escaped literals), a lone `\d`/`\w`/`\s`, or a single literal
/// character. Negated classes and anything else are errors.
fn alphabet(pattern: &str) -> Result<Vec<char>, String> {
    if pattern.len() > 1024 {
        return Err(format!(
            "the pattern is {} bytes long; randomString patterns may be at most 1024 bytes",
            pattern.len()
        ));
    }
    let inner = if let Some(body) = pattern.strip_prefix('[') {
        let Some(body) = body.strip_suffix(']').filter(|b| !b.is_empty()) else {
            return Err(format!(
                "unsupported pattern {pattern:?}: expected one character class like [A-Z0-9]"
            ));
        };
        if body.starts_with('^') {
            return Err(format!("negated character classes are not supported: {pattern:?}"));
        }
        body
    } else {
        let mut chars = pattern.chars();
        return match (chars.next(), chars.next(), chars.next()) {
            (Some('\\'), Some(e), None) => Ok(class_escape(e).unwrap_or_else(|| vec![e])),
            (Some(c), None, None) => Ok(vec![c]),
            _ => Err(format!(
                "unsupported pattern {pattern:?}: expected one character class like [A-Z0-9]"
            )),
        };
    };
    // Tokens: a literal character, or a class escape (which cannot be a
    // range end).
    let mut tokens: Vec<Result<char, Vec<char>>> = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let Some(e) = chars.next() else {
                return Err(format!("dangling backslash in {pattern:?}"));
            };
            tokens.push(class_escape(e).map_or(Ok(e), Err));
        } else {
            tokens.push(Ok(c));
        }
    }
    let mut set = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match (&tokens[i], tokens.get(i + 1), tokens.get(i + 2)) {
            (Ok(lo), Some(Ok('-')), Some(Ok(hi))) => {
                if lo > hi {
                    return Err(format!("bad character range {lo}-{hi} in {pattern:?}"));
                }
                set.extend(*lo..=*hi);
                i += 3;
            }
            (Ok(c), _, _) => {
                set.push(*c);
                i += 1;
            }
            (Err(class), _, _) => {
                set.extend(class.iter().copied());
                i += 1;
            }
        }
    }
    set.sort_unstable();
    set.dedup();
    if set.is_empty() {
        return Err(format!("empty character class {pattern:?}"));
    }
    Ok(set)
}

/// `randomString(pattern, length, target)` / `randomString(length,
/// target)`: `length` characters drawn uniformly (rejection sampling, no
/// modulo bias) from the CSPRNG out of the pattern's character class
/// ([`alphabet`]); the two-argument form, and an empty or `None` pattern,
/// use `[A-Za-z0-9]`. `length` converts like `int()`; negative or above
/// [`MAX_RANDOM_LENGTH`] → `ValueError`. Fuel: the alphabet size plus the
/// length.
pub(super) fn random_string(ctx: &mut dyn HostContext, a: &Args, form: usize) -> Result<Outcome, HostError> {
    let (pattern, length) = if form == 0 {
        (a.text(ctx, 0)?, a.get(1))
    } else {
        (String::new(), a.get(0))
    };
    let length = ops::to_int(length).map_err(|e| a.error(e.kind, e.message))?;
    if !(0..=MAX_RANDOM_LENGTH).contains(&length) {
        return Err(a.error(
            ErrorKind::ValueError,
            format!("length must be between 0 and {MAX_RANDOM_LENGTH}, got {length}"),
        ));
    }
    let length = usize::try_from(length).unwrap_or(0);
    let pattern = if pattern.is_empty() {
        "[A-Za-z0-9]".to_owned()
    } else {
        pattern
    };
    let alphabet = alphabet(&pattern).map_err(|m| a.error(ErrorKind::ValueError, m))?;
    charge(ctx, alphabet.len() + length)?;
    let widest = alphabet.iter().map(|c| c.len_utf8()).max().unwrap_or(1);
    ctx.memory().claim_str(length * widest)?;
    let n = u32::try_from(alphabet.len()).unwrap_or(u32::MAX);
    // Largest multiple of n that fits in u32: draws at or above it are redrawn.
    let zone = u32::MAX - (u32::MAX % n + 1) % n;
    let mut out = String::with_capacity(length * widest);
    let mut buf = vec![0u8; 4 * length.clamp(1, 4096)];
    let mut used = buf.len();
    let mut made = 0;
    while made < length {
        if used + 4 > buf.len() {
            // Each refill is a system call: a long string is host work the
            // epoch ticks cannot interrupt, so the deadline is checked here.
            ctx.check_time()?;
            ctx.fill_random(&mut buf)?;
            used = 0;
        }
        let draw = u32::from_le_bytes([buf[used], buf[used + 1], buf[used + 2], buf[used + 3]]);
        used += 4;
        if draw > zone {
            continue;
        }
        out.push(alphabet[(draw % n) as usize]);
        made += 1;
    }
    value(Value::Str(out))
}

/// `encodeSHA256(source, target)`: lowercase hex SHA-256 of `str(source)`
/// (`None` → `""`). Fuel: the text's length.
pub(super) fn encode_sha256(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let text = a.text(ctx, 0)?;
    charge(ctx, text.len() + 64)?;
    value(Value::Str(hex::encode(Sha256::digest(text.as_bytes()))))
}

/// `encodeMD5(source, target)`: lowercase hex MD5 of `str(source)`
/// (`None` → `""`). Fuel: the text's length.
pub(super) fn encode_md5(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let text = a.text(ctx, 0)?;
    charge(ctx, text.len() + 32)?;
    value(Value::Str(hex::encode(Md5::digest(text.as_bytes()))))
}
