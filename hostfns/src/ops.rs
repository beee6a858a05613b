//! Operator semantics on host values: Python's, with the AVAP differences
//! the spec fixes (spec §2, §5).
//!
//! * Arithmetic: `bool` counts as an int; int op int stays int and overflow is
//!   an [`ErrorKind::IntegerOverflow`] error, never a wrap; an int/float mix
//!   gives a float; `/` always gives a float; `//` floors and `%` takes the
//!   divisor's sign.
//! * Comparisons: numbers compare numerically and exactly (`2**53 + 1 >
//!   2.0**53`), strings and lists lexicographically; `==` between unrelated
//!   types is `False`; ordering them is a `TypeError`.
//! * `is` / `is not`: host values carry no identity, so `a is b` holds when
//!   both have the same type and equal values (`None is None`, `1 is 1`;
//!   `1 is 1.0` and `1 is True` are false).
//! * `if()` comparators ([`if_compare`]) are not Python comparisons: see there.
//!
//! Operations that build strings, lists or copies take the run's
//! [`MemoryBudget`] and claim what they are about to allocate before they
//! allocate it (a claim past the budget is a `MemoryLimit`, which ends the
//! run: see [`crate::memory`]). Error messages quote values with
//! [`Value::repr_short`], so an error never costs more than a few hundred
//! bytes.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::abi::{BinOp, BuiltinCode, IfCmp, UnOp};
use crate::error::{AvapError, ErrorKind, HostError};
use crate::memory::{self, MemoryBudget};
use crate::value::Value;

/// Largest string or list (in bytes it would hold) that `*` repetition
/// builds, whatever the memory limit: larger results are a catchable
/// `ValueError`, raised before anything is allocated.
pub const MAX_REPEAT_BYTES: usize = 64 * 1024 * 1024;

type Result<T, E = AvapError> = std::result::Result<T, E>;

fn err<T>(kind: ErrorKind, message: impl Into<String>) -> Result<T> {
    Err(AvapError::new(kind, message))
}

/// A number in an arithmetic operation (bools count as ints).
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    #[allow(clippy::cast_precision_loss)] // Python's int → float conversion rounds the same way
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

fn num(v: &Value) -> Option<Num> {
    match v {
        Value::Bool(b) => Some(Num::Int(i64::from(*b))),
        Value::Int(i) => Some(Num::Int(*i)),
        Value::Float(f) => Some(Num::Float(*f)),
        _ => None,
    }
}

fn symbol(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::FloorDiv => "//",
        BinOp::Mod => "%",
        BinOp::Pow => "**",
        BinOp::Eq => "==",
        BinOp::NotEq => "!=",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::In => "in",
        BinOp::NotIn => "not in",
        BinOp::Is => "is",
        BinOp::IsNot => "is not",
    }
}

fn overflow<T>(op: BinOp, a: i64, b: i64) -> Result<T> {
    err(
        ErrorKind::IntegerOverflow,
        format!("integer overflow in {a} {} {b}", symbol(op)),
    )
}

/// Apply a binary or comparison operator. Comparisons yield `Value::Bool`.
pub fn binary(op: BinOp, a: &Value, b: &Value, mem: &mut MemoryBudget) -> Result<Value, HostError> {
    Ok(match op {
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::FloorDiv | BinOp::Mod | BinOp::Pow => {
            return arithmetic(op, a, b, mem);
        }
        BinOp::Eq => Value::Bool(py_eq(a, b)),
        BinOp::NotEq => Value::Bool(!py_eq(a, b)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => ordering(op, a, b).map(Value::Bool)?,
        BinOp::In => contains(b, a).map(Value::Bool)?,
        BinOp::NotIn => contains(b, a).map(|found| Value::Bool(!found))?,
        BinOp::Is => Value::Bool(is_same(a, b)),
        BinOp::IsNot => Value::Bool(!is_same(a, b)),
    })
}

fn arithmetic(op: BinOp, a: &Value, b: &Value, mem: &mut MemoryBudget) -> Result<Value, HostError> {
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        return Ok(numeric(op, x, y)?);
    }
    match (op, a, b) {
        (BinOp::Add, Value::Str(x), Value::Str(y)) => {
            let len = x.len().saturating_add(y.len());
            mem.claim_str(len)?;
            let mut out = String::with_capacity(len);
            out.push_str(x);
            out.push_str(y);
            Ok(Value::Str(out))
        }
        (BinOp::Add, Value::List(x), Value::List(y)) => {
            let len = x.len().saturating_add(y.len());
            mem.claim(memory::list_table(len))?;
            let mut out = Vec::with_capacity(len);
            for item in x.iter().chain(y.iter()) {
                out.push(mem.clone_value(item)?.0);
            }
            Ok(Value::list(out))
        }
        (BinOp::Add, Value::Str(_) | Value::List(_), other) => Ok(err(
            ErrorKind::TypeError,
            format!(
                "can only concatenate {} (not \"{}\") to {}",
                a.type_name(),
                other.type_name(),
                a.type_name()
            ),
        )?),
        (BinOp::Mul, seq @ (Value::Str(_) | Value::List(_)), count)
        | (BinOp::Mul, count, seq @ (Value::Str(_) | Value::List(_))) => match count {
            Value::Int(n) => repeat(seq, *n, mem),
            Value::Bool(b) => repeat(seq, i64::from(*b), mem),
            other => Ok(err(
                ErrorKind::TypeError,
                format!("can't multiply sequence by non-int of type '{}'", other.type_name()),
            )?),
        },
        _ => {
            let what = if op == BinOp::Pow { "** or pow()" } else { symbol(op) };
            Ok(err(
                ErrorKind::TypeError,
                format!(
                    "unsupported operand type(s) for {what}: '{}' and '{}'",
                    a.type_name(),
                    b.type_name()
                ),
            )?)
        }
    }
}

fn repeat(seq: &Value, count: i64, mem: &mut MemoryBudget) -> Result<Value, HostError> {
    let times = usize::try_from(count).unwrap_or(0);
    // What one repetition holds: the text, or the items' slots and buffers.
    let unit = match seq {
        Value::Str(s) => s.len() as u64,
        Value::List(items) => items.iter().map(|v| memory::VALUE_BYTES + v.footprint().bytes).sum(),
        _ => 0,
    };
    if unit == 0 || times == 0 {
        // Repeating nothing is nothing, however often.
        return Ok(match seq {
            Value::List(_) => Value::list(Vec::new()),
            _ => Value::Str(String::new()),
        });
    }
    let total = unit.checked_mul(times as u64);
    if total.is_none_or(|total| total > MAX_REPEAT_BYTES as u64) {
        return Ok(err(
            ErrorKind::ValueError,
            format!(
                "repetition result too large (over {} MiB)",
                MAX_REPEAT_BYTES / (1024 * 1024)
            ),
        )?);
    }
    Ok(match seq {
        Value::Str(s) => {
            mem.claim_str(s.len() * times)?;
            Value::Str(s.repeat(times))
        }
        Value::List(items) => {
            let len = items.len() * times;
            mem.claim(memory::list_table(len))?;
            let mut out = Vec::with_capacity(len);
            for _ in 0..times {
                for item in items.iter() {
                    out.push(mem.clone_value(item)?.0);
                }
            }
            Value::list(out)
        }
        other => other.clone(),
    })
}

fn numeric(op: BinOp, x: Num, y: Num) -> Result<Value> {
    if let (Num::Int(a), Num::Int(b)) = (x, y) {
        return int_arithmetic(op, a, b);
    }
    let (a, b) = (x.as_f64(), y.as_f64());
    let value = match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => {
            if b == 0.0 {
                return err(ErrorKind::ZeroDivisionError, "division by zero");
            }
            a / b
        }
        BinOp::FloorDiv => {
            if b == 0.0 {
                return err(ErrorKind::ZeroDivisionError, "float floor division by zero");
            }
            float_divmod(a, b).0
        }
        BinOp::Mod => {
            if b == 0.0 {
                return err(ErrorKind::ZeroDivisionError, "float modulo by zero");
            }
            float_divmod(a, b).1
        }
        _ => return float_pow(a, b).map(Value::Float),
    };
    Ok(Value::Float(value))
}

fn int_arithmetic(op: BinOp, a: i64, b: i64) -> Result<Value> {
    let zero = || err(ErrorKind::ZeroDivisionError, "integer division or modulo by zero");
    let result = match op {
        BinOp::Add => a.checked_add(b),
        BinOp::Sub => a.checked_sub(b),
        BinOp::Mul => a.checked_mul(b),
        BinOp::Div => {
            if b == 0 {
                return err(ErrorKind::ZeroDivisionError, "division by zero");
            }
            return Ok(Value::Float(Num::Int(a).as_f64() / Num::Int(b).as_f64()));
        }
        BinOp::FloorDiv => {
            if b == 0 {
                return zero();
            }
            a.checked_div(b)
                .map(|q| if a % b != 0 && ((a < 0) != (b < 0)) { q - 1 } else { q })
        }
        BinOp::Mod => {
            if b == 0 {
                return zero();
            }
            // i64::MIN % -1 is 0 in Python; checked_rem reports it as overflow.
            let r = a.checked_rem(b).unwrap_or(0);
            Some(if r != 0 && ((r < 0) != (b < 0)) { r + b } else { r })
        }
        _ => return int_pow(a, b),
    };
    match result {
        Some(v) => Ok(Value::Int(v)),
        None => overflow(op, a, b),
    }
}

fn int_pow(a: i64, b: i64) -> Result<Value> {
    if b < 0 {
        if a == 0 {
            return err(ErrorKind::ZeroDivisionError, "0.0 cannot be raised to a negative power");
        }
        return float_pow(Num::Int(a).as_f64(), Num::Int(b).as_f64()).map(Value::Float);
    }
    let result = match u32::try_from(b) {
        Ok(e) => a.checked_pow(e),
        // Huge exponents only fit for these bases.
        Err(_) => match a {
            0 | 1 => Some(a),
            -1 => Some(if b % 2 == 0 { 1 } else { -1 }),
            _ => None,
        },
    };
    match result {
        Some(v) => Ok(Value::Int(v)),
        None => overflow(BinOp::Pow, a, b),
    }
}

fn float_pow(a: f64, b: f64) -> Result<f64> {
    if a == 0.0 && b < 0.0 {
        return err(ErrorKind::ZeroDivisionError, "0.0 cannot be raised to a negative power");
    }
    if a < 0.0 && b.is_finite() && b.fract() != 0.0 {
        return err(
            ErrorKind::ValueError,
            "negative number cannot be raised to a fractional power",
        );
    }
    Ok(a.powf(b))
}

/// `CPython`'s `float_divmod`: `(a // b, a % b)` with the divisor's sign.
fn float_divmod(a: f64, b: f64) -> (f64, f64) {
    let mut rem = a % b;
    let mut div = (a - rem) / b;
    if rem == 0.0 {
        rem = 0.0_f64.copysign(b);
    } else if (b < 0.0) != (rem < 0.0) {
        rem += b;
        div -= 1.0;
    }
    let floor = if div == 0.0 {
        0.0_f64.copysign(a / b)
    } else {
        let mut floor = div.floor();
        if div - floor > 0.5 {
            floor += 1.0;
        }
        floor
    };
    (floor, rem)
}

/// Python `==`: numbers by value (`1 == 1.0 == True`), strings, lists and
/// dicts structurally (dict order does not matter), different types never.
pub fn py_eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        return num_cmp(x, y) == Some(Ordering::Equal);
    }
    match (a, b) {
        (Value::None, Value::None) => true,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::List(x), Value::List(y)) => x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| py_eq(p, q)),
        (Value::Dict(x), Value::Dict(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => false,
    }
}

fn is_same(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b) && py_eq(a, b)
}

/// Exact comparison of two numbers (`None` when a NaN is involved).
fn num_cmp(x: Num, y: Num) -> Option<Ordering> {
    match (x, y) {
        (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
        (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b),
        (Num::Int(a), Num::Float(b)) => int_float_cmp(a, b),
        (Num::Float(a), Num::Int(b)) => int_float_cmp(b, a).map(Ordering::reverse),
    }
}

/// Compare an int with a float without rounding the int.
#[allow(clippy::cast_possible_truncation)] // `t` is integral and within i64 range
fn int_float_cmp(i: i64, f: f64) -> Option<Ordering> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return None;
    }
    if f >= TWO_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    Some(match i.cmp(&(t as i64)) {
        Ordering::Equal => 0.0_f64.partial_cmp(&(f - t)).unwrap_or(Ordering::Equal),
        other => other,
    })
}

/// Python ordering: `Err(())` when the types cannot be ordered, `Ok(None)`
/// when unordered (NaN).
fn py_cmp(a: &Value, b: &Value) -> Result<Option<Ordering>, ()> {
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        return Ok(num_cmp(x, y));
    }
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Ok(Some(x.cmp(y))),
        (Value::List(x), Value::List(y)) => {
            for (p, q) in x.iter().zip(y.iter()) {
                if !py_eq(p, q) {
                    return py_cmp(p, q);
                }
            }
            Ok(Some(x.len().cmp(&y.len())))
        }
        _ => Err(()),
    }
}

fn ordering(op: BinOp, a: &Value, b: &Value) -> Result<bool> {
    let Ok(order) = py_cmp(a, b) else {
        return err(
            ErrorKind::TypeError,
            format!(
                "'{}' not supported between instances of '{}' and '{}'",
                symbol(op),
                a.type_name(),
                b.type_name()
            ),
        );
    };
    Ok(order.is_some_and(|o| match op {
        BinOp::Lt => o == Ordering::Less,
        BinOp::Le => o != Ordering::Greater,
        BinOp::Gt => o == Ordering::Greater,
        _ => o != Ordering::Less,
    }))
}

/// Python `item in container`.
fn contains(container: &Value, item: &Value) -> Result<bool> {
    match container {
        Value::Str(s) => match item {
            Value::Str(needle) => Ok(s.contains(needle.as_str())),
            other => err(
                ErrorKind::TypeError,
                format!(
                    "'in <string>' requires string as left operand, not {}",
                    other.type_name()
                ),
            ),
        },
        Value::List(items) => Ok(items.iter().any(|x| py_eq(x, item))),
        Value::Dict(map) => match item {
            Value::Str(key) => Ok(map.contains_key(key)),
            Value::List(_) | Value::Dict(_) => {
                err(ErrorKind::TypeError, format!("unhashable type: '{}'", item.type_name()))
            }
            // Keys are strings: no other value can be one.
            _ => Ok(false),
        },
        other => err(
            ErrorKind::TypeError,
            format!("argument of type '{}' is not iterable", other.type_name()),
        ),
    }
}

/// Apply a unary operator: `-x` (overflow-checked), `+x`, `not x`.
pub fn unary(op: UnOp, v: &Value) -> Result<Value> {
    match op {
        UnOp::Not => Ok(Value::Bool(!v.truthy())),
        UnOp::Neg => match num(v) {
            Some(Num::Int(i)) => i
                .checked_neg()
                .map(Value::Int)
                .ok_or_else(|| AvapError::new(ErrorKind::IntegerOverflow, format!("integer overflow in -({i})"))),
            Some(Num::Float(f)) => Ok(Value::Float(-f)),
            None => err(
                ErrorKind::TypeError,
                format!("bad operand type for unary -: '{}'", v.type_name()),
            ),
        },
        UnOp::Pos => match num(v) {
            Some(Num::Int(i)) => Ok(Value::Int(i)),
            Some(Num::Float(f)) => Ok(Value::Float(f)),
            None => err(
                ErrorKind::TypeError,
                format!("bad operand type for unary +: '{}'", v.type_name()),
            ),
        },
    }
}

/// A number parsed from text the way `if()` and `int()`/`float()` read it.
/// Accepts surrounding whitespace, a sign, digits with an optional fraction
/// and exponent (`" 42 "`, `"-1.5"`, `"1e3"`, `".5"`). Integer literals that
/// fit i64 become ints, everything else a float. `inf`/`nan` are not
/// numeric text here.
fn parse_number(text: &str) -> Option<Num> {
    let t = text.trim();
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    if body.is_empty() {
        return None;
    }
    if body.bytes().all(|c| c.is_ascii_digit()) {
        if let Ok(i) = t.parse::<i64>() {
            return Some(Num::Int(i));
        }
        return t.parse::<f64>().ok().map(Num::Float);
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    let mantissa_ok = digits(whole) && digits(fraction) && !(whole.is_empty() && fraction.is_empty());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    if !mantissa_ok || !exponent_ok {
        return None;
    }
    t.parse::<f64>().ok().map(Num::Float)
}

/// The text a value compares as under `if(a, b, =)`: numbers and numeric
/// strings become one canonical number text (an integral value prints as an
/// int, so `1`, `1.0`, `"1"` and `" 1.0 "` all read `1`; other floats as
/// Python writes them); `None` reads `None`; booleans `True`/`False`;
/// other strings as they are; lists and dicts as Python writes them.
#[allow(clippy::cast_possible_truncation)] // the float is integral and within i64 range
fn if_text(v: &Value, mem: &mut MemoryBudget) -> Result<String, HostError> {
    let number = match v {
        Value::Int(i) => Some(Num::Int(*i)),
        Value::Float(f) => Some(Num::Float(*f)),
        Value::Str(s) => parse_number(s),
        _ => None,
    };
    Ok(match number {
        Some(Num::Int(i)) => i.to_string(),
        Some(Num::Float(f)) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9_223_372_036_854_775_808.0 => {
            (f as i64).to_string()
        }
        Some(Num::Float(f)) => crate::value::float_repr(f),
        None => memory::text_within(v, mem)?,
    })
}

/// `if_text(a) == if_text(b)`, the texts' memory claimed while they exist.
fn if_text_eq(a: &Value, b: &Value, mem: &mut MemoryBudget) -> Result<bool, HostError> {
    let (x, y) = (if_text(a, mem)?, if_text(b, mem)?);
    let equal = x == y;
    mem.release(memory::alloc_bytes(x.capacity()) + memory::alloc_bytes(y.capacity()));
    Ok(equal)
}

/// A number for `if()`'s ordering comparators: ints, floats, bools and
/// numeric strings.
fn if_number(v: &Value, cmp: &str) -> Result<Num> {
    let n = match v {
        Value::Str(s) => parse_number(s),
        other => num(other),
    };
    n.ok_or_else(|| {
        AvapError::new(
            ErrorKind::TypeError,
            format!("'{cmp}' needs numbers, got {} {}", v.type_name(), v.repr_short()),
        )
    })
}

/// The `if(lhs, rhs, comparator)` test (spec §5).
///
/// * `=` / `!=` compare the operands' *normalised text* (see below), so
///   `1 = "1"`, `1.0 = "1"`, `"007" = 7` and `1 = 1.0` all hold (the
///   reference compared `str(1)` with `str(1.0)` and said no; the spec's
///   "numeric normalisation" reads more naturally as yes). `None` reads as
///   the text `None`: `if(x, None, =)` holds when `x` is `None` — and also
///   when `x` is the string `"None"`, as in the reference. `True`/`False`
///   read `True`/`False` (not `1`/`0`).
/// * `<`, `<=`, `>`, `>=` compare numerically; numeric strings are
///   converted (`"10" > 9`); anything else (`None`, a word, a list) is a
///   `TypeError`. NaN compares false.
/// * `in` / `not in`: `rhs` a list → some element has the same normalised
///   text as `lhs`; a string → `lhs`'s text is a substring; a dict → some key
///   has the same normalised text. Any other `rhs` is a `TypeError`.
pub fn if_compare(cmp: IfCmp, a: &Value, b: &Value, mem: &mut MemoryBudget) -> Result<bool, HostError> {
    match cmp {
        IfCmp::Eq => if_text_eq(a, b, mem),
        IfCmp::NotEq => if_text_eq(a, b, mem).map(|equal| !equal),
        IfCmp::Lt | IfCmp::Le | IfCmp::Gt | IfCmp::Ge => {
            let name = match cmp {
                IfCmp::Lt => "<",
                IfCmp::Le => "<=",
                IfCmp::Gt => ">",
                _ => ">=",
            };
            let order = num_cmp(if_number(a, name)?, if_number(b, name)?);
            Ok(order.is_some_and(|o| match cmp {
                IfCmp::Lt => o == Ordering::Less,
                IfCmp::Le => o != Ordering::Greater,
                IfCmp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }))
        }
        IfCmp::In => if_contains(b, a, mem),
        IfCmp::NotIn => if_contains(b, a, mem).map(|found| !found),
    }
}

fn if_contains(container: &Value, item: &Value, mem: &mut MemoryBudget) -> Result<bool, HostError> {
    match container {
        Value::List(items) => {
            for x in items.iter() {
                if if_text_eq(x, item, mem)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Value::Str(s) => {
            let needle = memory::text_within(item, mem)?;
            Ok(s.contains(&needle))
        }
        Value::Dict(map) => {
            let needle = if_text(item, mem)?;
            let mut found = false;
            for k in map.keys() {
                // Keys are strings: their text is themselves unless numeric.
                let matches = match parse_number(k) {
                    Some(_) => if_text(&Value::Str(k.clone()), mem)? == needle,
                    None => *k == needle,
                };
                if matches {
                    found = true;
                    break;
                }
            }
            Ok(found)
        }
        other => Ok(err(
            ErrorKind::TypeError,
            format!("argument of type '{}' is not iterable", other.type_name()),
        )?),
    }
}

/// Python's `int(v)`: ints as they are, bools 0/1, floats truncated,
/// strings of an optionally signed decimal integer (surrounding whitespace
/// allowed).
#[allow(clippy::cast_possible_truncation)] // checked range, truncation is int()'s job
pub fn to_int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Float(f) => {
            if f.is_nan() {
                err(ErrorKind::ValueError, "cannot convert float NaN to integer")
            } else if f.is_infinite() {
                err(ErrorKind::IntegerOverflow, "cannot convert float infinity to integer")
            } else if f.trunc() >= 9_223_372_036_854_775_808.0 || f.trunc() < -9_223_372_036_854_775_808.0 {
                err(
                    ErrorKind::IntegerOverflow,
                    format!("integer overflow in int({})", crate::value::float_repr(*f)),
                )
            } else {
                Ok(f.trunc() as i64)
            }
        }
        Value::Str(s) => {
            let t = s.trim();
            let body = t.strip_prefix(['+', '-']).unwrap_or(t);
            if body.is_empty() || !body.bytes().all(|c| c.is_ascii_digit()) {
                return err(
                    ErrorKind::ValueError,
                    format!(
                        "invalid literal for int() with base 10: {}",
                        Value::Str(s.clone()).repr_short()
                    ),
                );
            }
            t.parse::<i64>().map_err(|_| {
                AvapError::new(
                    ErrorKind::IntegerOverflow,
                    format!("integer overflow in int({})", Value::Str(t.to_owned()).repr_short()),
                )
            })
        }
        other => err(
            ErrorKind::TypeError,
            format!(
                "int() argument must be a string, a bytes-like object or a real number, not '{}'",
                other.type_name()
            ),
        ),
    }
}

/// Python's `float(v)`.
pub fn to_float(v: &Value) -> Result<f64> {
    match v {
        Value::Int(_) | Value::Bool(_) | Value::Float(_) => Ok(num(v).map_or(0.0, Num::as_f64)),
        Value::Str(s) => {
            let t = s.trim();
            if let Some(n) = parse_number(t) {
                return Ok(n.as_f64());
            }
            let lower = t.to_ascii_lowercase();
            let body = lower.strip_prefix(['+', '-']).unwrap_or(&lower);
            if matches!(body, "inf" | "infinity" | "nan")
                && let Ok(f) = lower.parse::<f64>()
            {
                return Ok(f);
            }
            err(
                ErrorKind::ValueError,
                format!(
                    "could not convert string to float: {}",
                    Value::Str(s.clone()).repr_short()
                ),
            )
        }
        other => err(
            ErrorKind::TypeError,
            format!(
                "float() argument must be a string or a real number, not '{}'",
                other.type_name()
            ),
        ),
    }
}

/// Python's `len(v)`: characters of a string, items of a list or dict.
pub fn len(v: &Value) -> Result<usize> {
    match v {
        Value::Str(s) => Ok(s.chars().count()),
        Value::List(items) => Ok(items.len()),
        Value::Dict(map) => Ok(map.len()),
        other => err(
            ErrorKind::TypeError,
            format!("object of type '{}' has no len()", other.type_name()),
        ),
    }
}

/// Call a built-in expression function on one argument.
pub fn builtin(code: BuiltinCode, v: &Value, mem: &mut MemoryBudget) -> Result<Value, HostError> {
    Ok(match code {
        BuiltinCode::Str => Value::Str(memory::text_within(v, mem)?),
        BuiltinCode::Int => to_int(v).map(Value::Int)?,
        BuiltinCode::Float => to_float(v).map(Value::Float)?,
        BuiltinCode::Len => len(v).map(|n| Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))?,
    })
}

/// Resolve a Python index (negative counts from the end) against `len`.
fn position(idx: i64, len: usize) -> Option<usize> {
    let len_i = i64::try_from(len).ok()?;
    let at = if idx < 0 { idx.checked_add(len_i)? } else { idx };
    usize::try_from(at).ok().filter(|&at| at < len)
}

fn int_index(idx: &Value, what: &str) -> Result<i64> {
    match idx {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(i64::from(*b)),
        other => err(
            ErrorKind::TypeError,
            format!("{what} indices must be integers or slices, not {}", other.type_name()),
        ),
    }
}

fn key_error<T>(key: &Value) -> Result<T> {
    err(ErrorKind::KeyError, key.repr_short())
}

/// `obj[idx]`: list and string items by int (negative from the end), dict
/// values by key. The item is a copy, claimed from `mem`.
pub fn index(obj: &Value, idx: &Value, mem: &mut MemoryBudget) -> Result<Value, HostError> {
    let found = index_ref(obj, idx)?;
    match found {
        Found::Item(v) => Ok(mem.clone_value(v)?.0),
        Found::Char(c) => Ok(Value::Str(c.to_string())),
    }
}

/// What indexing found: an item of a container, or a character.
enum Found<'v> {
    Item(&'v Value),
    Char(char),
}

fn index_ref<'v>(obj: &'v Value, idx: &Value) -> Result<Found<'v>> {
    match obj {
        Value::List(items) => {
            let i = int_index(idx, "list")?;
            position(i, items.len())
                .and_then(|at| items.get(at))
                .map(Found::Item)
                .ok_or_else(|| AvapError::new(ErrorKind::IndexError, "list index out of range"))
        }
        Value::Str(s) => {
            let i = int_index(idx, "string")?;
            // Char positions: count only when a negative index needs the length.
            let found = if i >= 0 {
                usize::try_from(i).ok().and_then(|at| s.chars().nth(at))
            } else {
                position(i, s.chars().count()).and_then(|at| s.chars().nth(at))
            };
            found
                .map(Found::Char)
                .ok_or_else(|| AvapError::new(ErrorKind::IndexError, "string index out of range"))
        }
        Value::Dict(map) => match idx {
            Value::Str(key) => map.get(key).map_or_else(|| key_error(idx), |v| Ok(Found::Item(v))),
            Value::List(_) | Value::Dict(_) => {
                err(ErrorKind::TypeError, format!("unhashable type: '{}'", idx.type_name()))
            }
            other => key_error(other),
        },
        other => err(
            ErrorKind::TypeError,
            format!("'{}' object is not subscriptable", other.type_name()),
        ),
    }
}

/// `obj.name`: a dict's value under key `name` (a copy, claimed from `mem`).
pub fn attr(obj: &Value, name: &str, mem: &mut MemoryBudget) -> Result<Value, HostError> {
    match obj {
        Value::Dict(map) => match map.get(name) {
            Some(v) => Ok(mem.clone_value(v)?.0),
            None => Ok(key_error(&Value::Str(name.to_owned()))?),
        },
        other => Ok(err(
            ErrorKind::TypeError,
            format!("'{}' object has no attribute '{name}'", other.type_name()),
        )?),
    }
}

/// `obj[idx] = value` on a list (existing position, negative from the end)
/// or a dict (string key). `value`'s footprint is already claimed; the
/// container's growth and the key's copy are claimed from `mem`, what is
/// replaced is released.
pub fn set_index(obj: &mut Value, idx: &Value, value: Value, mem: &mut MemoryBudget) -> Result<(), HostError> {
    match obj {
        Value::List(items) => {
            let i = int_index(idx, "list")?;
            match position(i, items.len()) {
                Some(at) => {
                    // Copied first if another value shares the list.
                    memory::replace(&mut Arc::make_mut(items)[at], value, mem);
                    Ok(())
                }
                None => Ok(err(ErrorKind::IndexError, "list assignment index out of range")?),
            }
        }
        Value::Dict(map) => match idx {
            Value::Str(key) => {
                mem.claim_str(key.len())?;
                memory::insert(Arc::make_mut(map), key.clone(), value, mem)?;
                Ok(())
            }
            other => Ok(err(
                ErrorKind::TypeError,
                format!("dict keys must be strings, not {}", other.type_name()),
            )?),
        },
        other => Ok(err(
            ErrorKind::TypeError,
            format!("'{}' object does not support item assignment", other.type_name()),
        )?),
    }
}

/// The text a template `${name}` interpolates: `""` for `None` (spec §1:
/// unknown names give the empty string), otherwise `str()`. For values a
/// script controls, [`template_text_within`] claims the text first.
pub fn template_text(v: &Value) -> String {
    match v {
        Value::None => String::new(),
        other => other.to_text(),
    }
}

/// [`template_text`] with its memory claimed from `mem` before it is built.
pub fn template_text_within(v: &Value, mem: &mut MemoryBudget) -> Result<String, crate::LimitHit> {
    match v {
        Value::None => Ok(String::new()),
        other => memory::text_within(other, mem),
    }
}
