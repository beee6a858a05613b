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
    fn inline_arithmetic_matches_the_reference(a in operand(), b in operand(), op in 0..OPS.len()) {
        let (sym, code) = OPS[op];
        let expected = ops::binary(code, &a, &b);
        let (la, lb) = (literal(&a), literal(&b));
        // Constant right operand, and both operands in variables.
        let src = format!("a = {la}\nb = {lb}\nr1 = (a {sym} {lb})\nr2 = (a {sym} b)\naddResult(r1)\naddResult(r2)\n");
        let r = HARNESS.with(|h| h.run(&src));
        match expected {
            Ok(v) => {
                prop_assert_eq!(r.http_status, 200, "{} gave {}", src, r.envelope);
                let want = v.to_json();
                prop_assert_eq!(&r.envelope["result"]["r1"], &want, "r1 of\n{}", src);
                prop_assert_eq!(&r.envelope["result"]["r2"], &want, "r2 of\n{}", src);
            }
            Err(e) => {
                prop_assert_eq!(r.envelope["error"]["kind"].as_str(), Some(e.kind.as_str()), "{} gave {}", src, r.envelope);
            }
        }
    }
}
