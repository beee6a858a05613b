//! AVAP values as the host sees them (spec §2).

use std::fmt::Write;
use std::sync::Arc;

use indexmap::IndexMap;

/// An insertion-ordered dict with string keys.
pub type Dict = IndexMap<String, Value>;

/// A value owned by host code. Inside the sandbox, `None`/bools/ints/floats
/// never leave wasm; strings, lists and dicts are handles to these.
///
/// Lists and dicts are shared until written (copy-on-write): AVAP copies a
/// value read out of a container, stored into one or handed to a
/// `go_async` block (docs/language.md, "Run-time decisions"), and such a
/// copy here is a reference count. Writers go through
/// [`Arc::make_mut`], which copies the container first when anything else
/// still shares it, so no holder ever sees another's change. The memory
/// model counts every holder's copy in full (`crate::memory`), so sharing
/// only ever makes the real allocation smaller than the accounted one.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Arc<Vec<Value>>),
    Dict(Arc<Dict>),
}

impl Value {
    /// A list value holding `items`.
    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Arc::new(items))
    }

    /// A dict value holding `map`.
    pub fn dict(map: Dict) -> Value {
        Value::Dict(Arc::new(map))
    }

    /// Python-style type name used in error messages (`int`, `str`, `list`…).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
        }
    }

    /// Python truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            Value::None => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Dict(d) => !d.is_empty(),
        }
    }

    /// Bytes the allocator holds for this value, its inline part included
    /// (see [`crate::memory`]). Measured without recursion.
    pub fn heap_bytes(&self) -> usize {
        usize::try_from(crate::memory::VALUE_BYTES + self.footprint().bytes).unwrap_or(usize::MAX)
    }
}

impl Value {
    /// The JSON form of the value (spec §2): floats stay floats (`120.0`),
    /// non-finite floats become `null`, dicts keep their key order.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::None => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::List(items) => serde_json::Value::Array(items.iter().map(Value::to_json).collect()),
            Value::Dict(map) => serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// The value of a JSON document: integers that fit `i64` become `Int`,
    /// every other number a `Float`.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::None,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(items) => Value::list(items.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(map) => {
                Value::dict(map.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect())
            }
        }
    }

    /// Python's `str()`: `None`, `True`, `1.0`, `1e+20`, strings as they are,
    /// lists and dicts as Python writes them (`[1, 'a']`, `{'k': None}`).
    /// Allocates the whole text: where the value comes from a script, claim
    /// [`Value::text_len`] bytes first (`memory::text_within`).
    pub fn to_text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            other => other.repr(),
        }
    }

    /// Length in bytes of [`Value::to_text`], computed without building it.
    pub fn text_len(&self) -> usize {
        match self {
            Value::Str(s) => s.len(),
            other => {
                let mut counter = Counter(0);
                let _ = other.write_repr(&mut counter);
                counter.0
            }
        }
    }

    /// Python's `repr()`: like [`Value::to_text`] but strings are quoted
    /// (`'a'`). Used inside lists and dicts.
    pub fn repr(&self) -> String {
        let mut out = String::new();
        let _ = self.write_repr(&mut out);
        out
    }

    /// [`Value::repr`] cut to at most [`SHORT_REPR`] bytes (with `…`), for
    /// error messages: a message never costs more than a few hundred bytes,
    /// whatever value it quotes.
    pub fn repr_short(&self) -> String {
        let mut out = Capped(String::new());
        if self.write_repr(&mut out).is_err() {
            out.0.push('…');
        }
        out.0
    }

    /// Write `repr()` to `out`. Recursion is bounded by the nesting limit
    /// every heap value obeys (`memory::MAX_DEPTH`).
    pub fn write_repr(&self, out: &mut impl Write) -> std::fmt::Result {
        match self {
            Value::None => out.write_str("None"),
            Value::Bool(true) => out.write_str("True"),
            Value::Bool(false) => out.write_str("False"),
            Value::Int(i) => write!(out, "{i}"),
            Value::Float(f) => out.write_str(&float_repr(*f)),
            Value::Str(s) => write_str_repr(s, out),
            Value::List(items) => {
                out.write_char('[')?;
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.write_str(", ")?;
                    }
                    item.write_repr(out)?;
                }
                out.write_char(']')
            }
            Value::Dict(map) => {
                out.write_char('{')?;
                for (n, (k, v)) in map.iter().enumerate() {
                    if n > 0 {
                        out.write_str(", ")?;
                    }
                    write_str_repr(k, out)?;
                    out.write_str(": ")?;
                    v.write_repr(out)?;
                }
                out.write_char('}')
            }
        }
    }

    /// Compact JSON text of [`Value::to_json`]; floats always carry a
    /// fraction or an exponent (`120.0`, `1e20`).
    pub fn to_json_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Length in bytes of [`Value::to_json_text`], computed without building it.
    pub fn json_len(&self) -> u64 {
        let mut counter = ByteCounter(0);
        match serde_json::to_writer(&mut counter, self) {
            Ok(()) => counter.0,
            Err(_) => u64::MAX,
        }
    }
}

/// Longest [`Value::repr_short`] before the ellipsis.
pub const SHORT_REPR: usize = 200;

/// A `fmt::Write` that only counts bytes.
struct Counter(usize);

impl Write for Counter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 = self.0.saturating_add(s.len());
        Ok(())
    }
}

/// A `fmt::Write` that fails once [`SHORT_REPR`] bytes are written.
struct Capped(String);

impl Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = SHORT_REPR.saturating_sub(self.0.len());
        if s.len() <= room {
            self.0.push_str(s);
            return Ok(());
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.0.push_str(&s[..cut]);
        Err(std::fmt::Error)
    }
}

/// An `io::Write` that only counts bytes: the size of a JSON text without
/// building it.
struct ByteCounter(u64);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The JSON form (spec §2), written straight from the value: the same text
/// as [`Value::to_json`] without building a `serde_json::Value` first.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap as _, SerializeSeq as _};
        match self {
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Float(f) if f.is_finite() => serializer.serialize_f64(*f),
            Value::None | Value::Float(_) => serializer.serialize_unit(),
            Value::Str(s) => serializer.serialize_str(s),
            Value::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Dict(map) => {
                let mut m = serializer.serialize_map(Some(map.len()))?;
                for (k, v) in map.iter() {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

/// Python's `repr()` of a float: the shortest text that round-trips, in
/// positional notation for decimal exponents -4..16 (`0.0001`, `1.0`,
/// `1234.5`) and scientific otherwise (`1e-05`, `1e+16`); `inf`, `-inf`,
/// `nan`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // `{:e}` is the shortest round-trip form: `-1.2345e-5`, `1e20`, `0e0`.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        // Position of the decimal point relative to the digit string.
        let point = exp + 1;
        let len = i32::try_from(digits.len()).unwrap_or(i32::MAX);
        if point <= 0 {
            out.push_str("0.");
            for _ in 0..-point {
                out.push('0');
            }
            out.push_str(&digits);
        } else if point >= len {
            out.push_str(&digits);
            for _ in 0..point - len {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            let split = usize::try_from(point).unwrap_or(0);
            out.push_str(&digits[..split]);
            out.push('.');
            out.push_str(&digits[split..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let magnitude = exp.unsigned_abs();
        if magnitude < 10 {
            out.push('0');
        }
        out.push_str(&magnitude.to_string());
    }
    out
}

/// Python's `repr()` of a string: single quotes unless the text contains a
/// single quote and no double quote; `\\`, `\n`, `\r`, `\t` and other control
/// characters escaped.
pub fn str_repr(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    let _ = write_str_repr(s, &mut out);
    out
}

fn write_str_repr(s: &str, out: &mut impl Write) -> std::fmt::Result {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.write_char(quote)?;
    for c in s.chars() {
        match c {
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c == quote => {
                out.write_char('\\')?;
                out.write_char(c)?;
            }
            c if u32::from(c) < 0x20 || (0x7f..0xa0).contains(&u32::from(c)) => {
                write!(out, "\\x{:02x}", u32::from(c))?;
            }
            c => out.write_char(c)?,
        }
    }
    out.write_char(quote)
}
