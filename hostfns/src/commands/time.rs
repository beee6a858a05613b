//! The clock and calendars: `getDateTime`, `getTimeStamp`,
//! `stampToDatetime`.
//!
//! Formats are Python `strftime`/`strptime` patterns, run by chrono (whose
//! codes are the same for everything scripts use: `%Y %m %d %H %M %S %j %a
//! %A %b %B %p %I %y %z %Z %%`, and glibc's `%-d`); Python's `%f`
//! (microseconds, six digits) is translated. Times are read and written in
//! the server's time zone ([`HostContext::time_zone`]) unless a zone is
//! given.

use std::fmt::Write as _;

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};

use super::{Args, Outcome, charge, value};
use crate::context::HostContext;
use crate::error::{ErrorKind, HostError};
use crate::ops;
use crate::value::Value;
use crate::zone::Zone;

/// Largest magnitude, in seconds, of a delta or timestamp (about 317,000
/// years; chrono's range is ±262,000 years, so larger values fail there).
const MAX_SECONDS: f64 = 1e13;

/// Python's format codes in chrono's dialect: `%f` is microseconds.
fn chrono_format(python: &str) -> String {
    let mut out = String::with_capacity(python.len() + 4);
    let mut chars = python.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '%' {
            continue;
        }
        match chars.next() {
            Some('f') => out.push_str("6f"),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Longest format string: chrono parses it into a list of items several
/// times its size, and no date format needs more.
const MAX_FORMAT_BYTES: usize = 1024;

fn items(a: &Args, format: &str) -> Result<Vec<Item<'static>>, HostError> {
    if format.len() > MAX_FORMAT_BYTES {
        return Err(a.error(
            ErrorKind::ValueError,
            format!(
                "the format is {} bytes long; formats may be at most {MAX_FORMAT_BYTES} bytes",
                format.len()
            ),
        ));
    }
    StrftimeItems::new(&chrono_format(format))
        .parse_to_owned()
        .map_err(|_| {
            a.error(
                ErrorKind::ValueError,
                format!("invalid format string {}", Value::Str(format.to_owned()).repr_short()),
            )
        })
}

fn format_in(a: &Args, instant: DateTime<Utc>, zone: &Zone, format: &str) -> Result<String, HostError> {
    let items = items(a, format)?;
    // A bounded amount, not claimed: one item expands to at most about 40
    // bytes (`%+`), and there are at most MAX_FORMAT_BYTES items.
    let mut out = String::with_capacity(format.len().min(MAX_FORMAT_BYTES) * 2);
    write!(out, "{}", instant.with_timezone(zone).format_with_items(items.iter()))
        .map_err(|_| a.error(ErrorKind::ValueError, format!("cannot format the date with {format:?}")))?;
    Ok(out)
}

#[allow(clippy::cast_precision_loss)] // epoch seconds as a float, like Python's time.time()
fn epoch_float(instant: DateTime<Utc>) -> f64 {
    instant.timestamp() as f64 + f64::from(instant.timestamp_subsec_nanos()) / 1e9
}

/// Seconds as a chrono delta: `None` and `""` are zero; ints exact; floats
/// and numeric strings to the nanosecond.
#[allow(clippy::cast_possible_truncation)] // range-checked against MAX_SECONDS
fn delta(a: &Args, v: &Value) -> Result<TimeDelta, HostError> {
    let out_of_range = || {
        a.error(
            ErrorKind::ValueError,
            format!("delta of {} seconds is out of range", v.repr_short()),
        )
    };
    match v {
        Value::None => Ok(TimeDelta::zero()),
        Value::Str(s) if s.trim().is_empty() => Ok(TimeDelta::zero()),
        Value::Int(i) => TimeDelta::try_seconds(*i).ok_or_else(out_of_range),
        other => {
            let f = ops::to_float(other).map_err(|e| a.error(e.kind, e.message))?;
            if !f.is_finite() || f.abs() > MAX_SECONDS {
                return Err(out_of_range());
            }
            let whole = f.trunc();
            let nanos = ((f - whole) * 1e9).round() as i64;
            let seconds = TimeDelta::try_seconds(whole as i64).ok_or_else(out_of_range)?;
            Ok(seconds + TimeDelta::nanoseconds(nanos))
        }
    }
}

/// An instant from epoch seconds (int, float or numeric text).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // range-checked
fn instant_from_epoch(a: &Args, v: &Value) -> Result<DateTime<Utc>, HostError> {
    let out_of_range = || {
        a.error(
            ErrorKind::ValueError,
            format!("timestamp {} is out of range", v.repr_short()),
        )
    };
    match v {
        Value::Int(i) => DateTime::from_timestamp(*i, 0).ok_or_else(out_of_range),
        other => {
            let f = ops::to_float(other).map_err(|e| a.error(e.kind, e.message))?;
            if !f.is_finite() || f.abs() > MAX_SECONDS {
                return Err(out_of_range());
            }
            let whole = f.floor();
            let nanos = (((f - whole) * 1e9).round() as u32).min(999_999_999);
            DateTime::from_timestamp(whole as i64, nanos).ok_or_else(out_of_range)
        }
    }
}

fn shift(a: &Args, instant: DateTime<Utc>, by: TimeDelta) -> Result<DateTime<Utc>, HostError> {
    instant
        .checked_add_signed(by)
        .ok_or_else(|| a.error(ErrorKind::ValueError, "date out of range"))
}

/// The zone argument: empty, `None`, `current` or `local` mean the server's
/// zone; otherwise an IANA name (`Europe/Madrid`, `UTC`). Unknown names are a
/// `ValueError` (the reference silently used local time).
fn zone(ctx: &dyn HostContext, a: &Args, v: &Value) -> Result<Zone, HostError> {
    let name = match v {
        Value::None => "",
        Value::Str(s) => s.trim(),
        other => {
            return Err(a.error(
                ErrorKind::ValueError,
                format!("unknown time zone {}", other.repr_short()),
            ));
        }
    };
    if name.is_empty() || name.eq_ignore_ascii_case("current") || name.eq_ignore_ascii_case("local") {
        return Ok(ctx.time_zone().clone());
    }
    Zone::named(name).map_err(|_| {
        a.error(
            ErrorKind::ValueError,
            format!("unknown time zone {}", Value::Str(name.to_owned()).repr_short()),
        )
    })
}

/// `getDateTime(format, deltaSeconds, timeZone, target)`: now plus
/// `deltaSeconds`, formatted with `format` in `timeZone`; an empty format
/// gives epoch seconds as a float. Fuel: the format's and result's length.
pub(super) fn get_date_time(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let format = a.text(ctx, 0)?;
    let by = delta(a, a.get(1))?;
    let tz = zone(ctx, a, a.get(2))?;
    charge(ctx, format.len())?;
    let now = shift(a, ctx.now(), by)?;
    if format.is_empty() {
        return value(Value::Float(epoch_float(now)));
    }
    let text = format_in(a, now, &tz, &format)?;
    charge(ctx, text.len())?;
    value(Value::Str(text))
}

/// The UTC instant of a wall-clock time in `tz`, read as Python reads it
/// (`fold=0`, see [`Zone::utc_of_local`]).
fn localize(naive: NaiveDateTime, tz: &Zone) -> Option<DateTime<Utc>> {
    Some(Utc.from_utc_datetime(&tz.utc_of_local(&naive)?))
}

/// Parse `text` with a Python `strptime` pattern in `tz`. A pattern with
/// `%z` gives its own offset; a date-only pattern means midnight. An empty
/// pattern accepts ISO 8601 (`2024-05-01`, `2024-05-01 10:00:00`,
/// `2024-05-01T10:00:00.5`, RFC 3339 with an offset).
fn parse_in(text: &str, format: &str, tz: &Zone) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if format.is_empty() {
        if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
            return Some(dt.with_timezone(&Utc));
        }
        return [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M",
            "%Y-%m-%d",
        ]
        .iter()
        .find_map(|f| parse_in(text, f, tz));
    }
    let format = chrono_format(format);
    if let Ok(dt) = DateTime::parse_from_str(text, &format) {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(naive) = NaiveDateTime::parse_from_str(text, &format) {
        return localize(naive, tz);
    }
    let date = NaiveDate::parse_from_str(text, &format).ok()?;
    localize(date.and_time(chrono::NaiveTime::MIN), tz)
}

/// `getTimeStamp(dateString, format, deltaSeconds, target)`: the epoch
/// seconds of `dateString` read with `format` in the server's zone, plus
/// `deltaSeconds`. An int, or a float when the result has a fractional
/// second. A string that does not match → `ValueError`. Fuel: the texts'
/// length.
pub(super) fn get_time_stamp(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let text = a.text(ctx, 0)?;
    let format = a.text(ctx, 1)?;
    let by = delta(a, a.get(2))?;
    charge(ctx, text.len() + format.len())?;
    if !format.is_empty() {
        items(a, &format)?;
    }
    let parsed = parse_in(&text, &format, ctx.time_zone()).ok_or_else(|| {
        a.error(
            ErrorKind::ValueError,
            format!(
                "time data {} does not match format {}",
                Value::Str(text.clone()).repr_short(),
                Value::Str(format.clone()).repr_short()
            ),
        )
    })?;
    let instant = shift(a, parsed, by)?;
    if instant.timestamp_subsec_nanos() == 0 {
        value(Value::Int(instant.timestamp()))
    } else {
        value(Value::Float(epoch_float(instant)))
    }
}

/// `stampToDatetime(timestamp, format, deltaSeconds, target)`: epoch
/// seconds (int, float or numeric text) plus `deltaSeconds`, formatted with
/// `format` in the server's zone; an empty format gives epoch seconds as a
/// float. Fuel: the format's and result's length.
pub(super) fn stamp_to_datetime(ctx: &mut dyn HostContext, a: &Args) -> Result<Outcome, HostError> {
    let instant = instant_from_epoch(a, a.get(0))?;
    let format = a.text(ctx, 1)?;
    let by = delta(a, a.get(2))?;
    charge(ctx, format.len())?;
    let instant = shift(a, instant, by)?;
    if format.is_empty() {
        return value(Value::Float(epoch_float(instant)));
    }
    let text = format_in(a, instant, ctx.time_zone(), &format)?;
    charge(ctx, text.len())?;
    value(Value::Str(text))
}
