//! Trace and span ids, and the W3C `traceparent` header that carries them
//! between services (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`).

use std::cell::Cell;
use std::fmt;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// The W3C Trace Context request and response header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// 16 bytes, never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

/// 8 bytes, never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub u64);

impl TraceId {
    pub fn random() -> TraceId {
        let id = (u128::from(random_u64()) << 64) | u128::from(random_u64());
        TraceId(id.max(1))
    }

    /// 32 lowercase hex digits, as OTLP/JSON and `traceparent` spell it.
    pub fn parse(hex: &str) -> Option<TraceId> {
        (hex.len() == 32 && is_lower_hex(hex))
            .then(|| u128::from_str_radix(hex, 16).ok())
            .flatten()
            .filter(|&id| id != 0)
            .map(TraceId)
    }
}

impl SpanId {
    pub fn random() -> SpanId {
        SpanId(random_u64().max(1))
    }

    /// 16 lowercase hex digits.
    pub fn parse(hex: &str) -> Option<SpanId> {
        (hex.len() == 16 && is_lower_hex(hex))
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten()
            .filter(|&id| id != 0)
            .map(SpanId)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where a request's trace comes from: the client's `traceparent` (its
/// trace continues, our request span is a child of the client's span) or a
/// new trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The client's sampling decision (flag `01`); a new trace is sampled.
    pub sampled: bool,
}

impl RemoteParent {
    /// The parent named by a valid `traceparent` header, if any. An invalid
    /// one is ignored, as the W3C recommendation says: a new trace starts.
    pub fn from_headers(headers: &HeaderMap) -> Option<RemoteParent> {
        parse_traceparent(headers.get(TRACEPARENT)?.to_str().ok()?)
    }
}

/// `version-traceid-parentid-flags`. Version `ff` is invalid; a future
/// version may append fields after the four we read.
fn parse_traceparent(value: &str) -> Option<RemoteParent> {
    let mut parts = value.trim().splitn(5, '-');
    let version = parts.next()?;
    let trace_id = TraceId::parse(parts.next()?)?;
    let span_id = SpanId::parse(parts.next()?)?;
    let flags = parts.next()?;
    let rest = parts.next();
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" || flags.len() != 2 || !is_lower_hex(flags) {
        return None;
    }
    // Version 00 has exactly four fields.
    if version == "00" && rest.is_some() {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(RemoteParent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// The `traceparent` value naming `span_id` of `trace_id`.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    let flags = if sampled { "01" } else { "00" };
    HeaderValue::from_str(&format!("00-{trace_id}-{span_id}-{flags}"))
        .expect("hex digits and dashes are a valid header")
}

thread_local! {
    /// Per-thread xorshift state, seeded once from the OS: ids must be
    /// unique and unguessable enough to not collide, not secret, and a
    /// syscall per span would be a waste.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: the clock and the process id still differ per start.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let low = u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(0);
        return low ^ (u64::from(std::process::id()) << 32) | 1;
    }
    u64::from_ne_bytes(bytes) | 1
}

/// xorshift64*: fast, full period over non-zero states.
fn random_u64() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_bad_values() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = parse_traceparent(good).expect("valid");
        assert_eq!(parent.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.span_id.to_string(), "00f067aa0ba902b7");
        assert!(parent.sampled);
        assert_eq!(traceparent(parent.trace_id, parent.span_id, true), good);
        assert!(
            !parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
        // A later version may add fields.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn random_ids_are_non_zero_and_distinct() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert_ne!(a, b);
        assert_ne!(SpanId::random(), SpanId::random());
        assert_eq!(TraceId::parse(&a.to_string()), Some(a));
        let s = SpanId::random();
        assert_eq!(SpanId::parse(&s.to_string()), Some(s));
    }
}
