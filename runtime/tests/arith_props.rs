//! The inline int/float fast paths the compiler emits agree with the host's
//! reference semantics (`avap_hostfns::ops::binary`) on random operands —
//! with constant operands (constant-divisor paths) and with variables.

mod common;

use avap_hostfns::abi::BinOp;
use avap_hostfns::{Value, ops};
use common::Harness;
use proptest::prelude::*;
use proptest::test_runner::Config;

const OPS: &[(&str, BinOp)] = &[
    ("+", BinOp::Add),
    ("-", BinOp::Sub),
    ("*", BinOp::Mul),
    ("/", BinOp::Div),
    ("//", BinOp::FloorDiv),
    ("%", BinOp::Mod),
    ("==", BinOp::Eq),
    ("<", BinOp::Lt),
    (">=", BinOp::Ge),
];

fn operand() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-20i64..20).prop_map(Value::Int),
        any::<i64>().prop_map(Value::Int),
        (-1e6f64..1e6).prop_map(Value::Float),
        Just(Value::Int(i64::MIN)),
        Just(Value::Int(i64::MAX)),
        Just(Value::Int(0)),
    ]
}

fn literal(v: &Value) -> String {
    match v {
        Value::Int(i) if *i < 0 => {
            format!("(0 - {})", i.unsigned_abs()).replace("(0 - 9223372036854775808)", "(-9223372036854775807 - 1)")
        }
        Value::Int(i) => i.to_string(),
        Value::Float(f) if *f < 0.0 => format!("(0.0 - {:?})", -f),
        Value::Float(f) => format!("{f:?}"),
        _ => unreachable!(),
    }
}

thread_local! {
    static HARNESS: Harness = Harness::new();
}

proptest! {
    #![proptest_config(Config { cases: 300, failure_persistence: None, ..Config::default() })]

    #[test]
    fn inline_arithmetic_matches_the_reference(a in operand(), b in operand(), which in 0..OPS.len()) {
        let (sym, code) = OPS[which];
        let expected = op(code, &a, &b);
        let (la, lb) = (literal(&a), literal(&b));
        // Constant right operand, and both operands in variables.
        let src = format!("a = {la}\nb = {lb}\nr1 = (a {sym} {lb})\nr2 = (a {sym} b)\naddResult(r1)\naddResult(r2)\n");
        let r = HARNESS.with(|h| h.run(&src));
        match expected {
            Ok(v) => {
                prop_assert_eq!(r.http_status, 200, "{} gave {}", src, r.envelope);
                let want = v.to_json();
                prop_assert_eq!(&r.envelope.json()["result"]["r1"], &want, "r1 of\n{}", src);
                prop_assert_eq!(&r.envelope.json()["result"]["r2"], &want, "r2 of\n{}", src);
            }
            Err(e) => {
                prop_assert_eq!(r.envelope.json()["error"]["kind"].as_str(), Some(e.kind.as_str()), "{} gave {}", src, r.envelope);
            }
        }
    }
}

/// The reference semantics of one operator on ints (no memory involved).
fn op(code: BinOp, a: &Value, b: &Value) -> Result<Value, avap_hostfns::AvapError> {
    ops::binary(code, a, b, &mut avap_hostfns::MemoryBudget::unlimited()).map_err(|e| match e {
        avap_hostfns::HostError::Script(e) => e,
        avap_hostfns::HostError::Limit(l) => panic!("unexpected limit: {l}"),
    })
}

/// `expr` evaluated the reference way for every counter value.
fn reference_loop(from: i64, to: i64, factor: i64, divisor: i64) -> Result<Value, avap_hostfns::AvapError> {
    let mut s = Value::Int(0);
    let mut i = from;
    while i <= to {
        let prod = op(BinOp::Mul, &Value::Int(i), &Value::Int(factor))?;
        let m = op(BinOp::Mod, &prod, &Value::Int(divisor))?;
        let q = op(BinOp::FloorDiv, &Value::Int(i), &Value::Int(divisor))?;
        s = op(BinOp::Add, &s, &m)?;
        s = op(BinOp::Sub, &s, &q)?;
        i += 1;
    }
    Ok(s)
}

fn bound() -> impl Strategy<Value = i64> {
    prop_oneof![
        -50i64..50,
        Just(i64::from(i32::MAX) - 3),
        Just(i64::from(i32::MIN)),
        Just(3_037_000_499),
        Just(i64::MAX / 2),
    ]
}

proptest! {
    #![proptest_config(Config { cases: 120, failure_persistence: None, ..Config::default() })]

    /// Loops with constant bounds let the compiler drop overflow and sign
    /// checks; the results must not change.
    #[test]
    fn loops_with_constant_bounds_match_the_reference(from in bound(), len in 0i64..6, c in prop_oneof![-3i64..4, Just(i64::from(i32::MAX)), Just(3_037_000_500)], d in 1i64..9) {
        let to = from.saturating_add(len);
        let expected = reference_loop(from, to, c, d);
        let lit = |v: i64| if v < 0 { format!("(0 - {})", v.unsigned_abs()) } else { v.to_string() };
        let src = format!(
            "s = 0\nstartLoop(i, {}, {})\n  s = s + i * {} % {}\n  s = s - (i // {})\nendLoop()\naddResult(s)\n",
            lit(from), lit(to), lit(c), d, d
        );
        let r = HARNESS.with(|h| h.run(&src));
        match expected {
            Ok(v) => prop_assert_eq!(&r.envelope.json()["result"]["s"], &v.to_json(), "{} gave {}", src, r.envelope),
            Err(e) => prop_assert_eq!(r.envelope.json()["error"]["kind"].as_str(), Some(e.kind.as_str()), "{} gave {}", src, r.envelope),
        }
    }
}

/// A loop bound as the request sends it: an int, or a float the loop
/// converts like `int(float(x))` (ints are taken as they are).
#[derive(Debug, Clone, Copy)]
enum Bound {
    Int(i64),
    Float(f64),
}

impl Bound {
    fn json(self) -> serde_json::Value {
        match self {
            Bound::Int(i) => serde_json::json!(i),
            Bound::Float(f) => serde_json::json!(f),
        }
    }

    #[allow(clippy::cast_possible_truncation)]
    fn value(self) -> i64 {
        match self {
            Bound::Int(i) => i,
            // Within i64 by construction (the strategy keeps floats small).
            Bound::Float(f) => f.trunc() as i64,
        }
    }
}

/// Bounds around the edges of the fast copy's range `0..=i32::MAX` and of
/// the places where `i * i` or the counter's step overflow.
fn request_bound() -> impl Strategy<Value = i64> {
    let edges = prop_oneof![
        Just(0i64),
        Just(i64::from(i32::MAX)),
        Just(3_037_000_499),
        Just(i64::MAX - 4),
        Just(i64::MIN),
        Just(-5),
    ];
    prop_oneof![-50i64..50, (edges, -4i64..5).prop_map(|(e, d)| e.saturating_add(d))]
}

/// The loop below, the reference way: `(s, i)` after it, or its error.
fn reference_request_loop(
    from: i64,
    to: i64,
    factor: i64,
    divisor: i64,
) -> Result<(Value, Option<i64>), avap_hostfns::AvapError> {
    let int = Value::Int;
    let mut sum = int(0);
    let mut counter = from;
    while counter <= to {
        let product = op(BinOp::Mul, &int(counter), &int(factor))?;
        sum = op(BinOp::Add, &sum, &op(BinOp::Mod, &product, &int(divisor))?)?;
        sum = op(BinOp::Sub, &sum, &op(BinOp::FloorDiv, &int(counter), &int(divisor))?)?;
        let square = op(BinOp::Mul, &int(counter), &int(counter))?;
        sum = op(BinOp::Add, &sum, &op(BinOp::Mod, &square, &int(divisor))?)?;
        if counter == to {
            // After the last iteration the counter holds `to + 1`.
            let Value::Int(after) = op(BinOp::Add, &int(to), &int(1))? else {
                unreachable!("int + int is an int or an error")
            };
            return Ok((sum, Some(after)));
        }
        counter += 1;
    }
    Ok((sum, None))
}

proptest! {
    #![proptest_config(Config { cases: 150, failure_persistence: None, ..Config::default() })]

    /// Loops over request bounds run a fast copy when the bounds lie in
    /// `0..=i32::MAX` and the general one otherwise (issue 20): either way
    /// the result, the counter after the loop and the error are those of
    /// the reference semantics.
    #[test]
    fn loops_with_request_bounds_match_the_reference(
        from in request_bound(),
        len in -2i64..6,
        float in prop_oneof![3 => Just(None), 1 => (0u8..4).prop_map(Some)],
        c in prop_oneof![-3i64..4, Just(i64::from(i32::MAX)), Just(3_037_000_500)],
        d in 1i64..9,
    ) {
        let to = from.saturating_add(len);
        // Now and then a bound as a float with a fraction (small values
        // only: a float holds them exactly).
        let (a, b) = match float {
            Some(which) if from.unsigned_abs() < 1 << 40 && to.unsigned_abs() < 1 << 40 => {
                #[allow(clippy::cast_precision_loss)]
                let f = |v: i64| Bound::Float(v as f64 + if v < 0 { -0.5 } else { 0.5 });
                match which {
                    0 => (f(from), Bound::Int(to)),
                    1 => (Bound::Int(from), f(to)),
                    _ => (f(from), f(to)),
                }
            }
            _ => (Bound::Int(from), Bound::Int(to)),
        };
        let expected = reference_request_loop(a.value(), b.value(), c, d);
        let lit = |v: i64| if v < 0 { format!("(0 - {})", v.unsigned_abs()) } else { v.to_string() };
        let src = format!(
            "addParam(from, a)\naddParam(to, b)\ns = 0\nstartLoop(i, a, b)\n  s = s + i * {} % {d}\n  s = s - (i // {d})\n  s = s + i * i % {d}\nendLoop()\naddResult(s)\naddResult(i)\n",
            lit(c)
        );
        let body = serde_json::json!({"from": a.json(), "to": b.json()});
        let r = HARNESS.with(|h| h.run_with_body(&src, body.clone()));
        match expected {
            Ok((s, i)) => {
                prop_assert_eq!(r.http_status, 200, "{} with {} gave {}", src, body, r.envelope);
                prop_assert_eq!(&r.envelope.json()["result"]["s"], &s.to_json(), "{} with {}", src, body);
                prop_assert_eq!(&r.envelope.json()["result"]["i"], &serde_json::json!(i), "{} with {}", src, body);
            }
            Err(e) => prop_assert_eq!(r.envelope.json()["error"]["kind"].as_str(), Some(e.kind.as_str()), "{} with {} gave {}", src, body, r.envelope),
        }
    }
}
