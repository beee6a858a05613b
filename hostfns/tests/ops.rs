//! Operator, comparison and built-in semantics (spec §2, §5).

// The helpers take values so that cases read like the feature: `bin(Add, int(1), float(2.0))`.
#![allow(clippy::needless_pass_by_value)]

mod support;
use support::{b, dict, float, int, list, none, s};

use avap_hostfns::abi::{BinOp, BuiltinCode, IfCmp, UnOp};
use avap_hostfns::ops;
use avap_hostfns::{AvapError, ErrorKind, HostError, MemoryBudget, Value};

/// A catchable error as it is; a sandbox limit is a test failure.
fn script<T>(r: Result<T, HostError>) -> Result<T, AvapError> {
    r.map_err(|e| match e {
        HostError::Script(e) => e,
        HostError::Limit(l) => panic!("unexpected limit: {l}"),
    })
}
fn bin(op: BinOp, a: Value, b: Value) -> Result<Value, AvapError> {
    script(ops::binary(op, &a, &b, &mut MemoryBudget::unlimited()))
}
fn index(obj: &Value, idx: &Value) -> Result<Value, AvapError> {
    script(ops::index(obj, idx, &mut MemoryBudget::unlimited()))
}
fn attr(obj: &Value, name: &str) -> Result<Value, AvapError> {
    script(ops::attr(obj, name, &mut MemoryBudget::unlimited()))
}
fn set_index(obj: &mut Value, idx: &Value, v: Value) -> Result<(), AvapError> {
    script(ops::set_index(obj, idx, v, &mut MemoryBudget::unlimited()))
}
fn kind<T: std::fmt::Debug>(r: Result<T, AvapError>) -> ErrorKind {
    r.expect_err("expected an error").kind
}
fn message<T: std::fmt::Debug>(r: Result<T, AvapError>) -> String {
    r.expect_err("expected an error").message
}
fn if_cmp(cmp: IfCmp, a: Value, b: Value) -> Result<bool, AvapError> {
    script(ops::if_compare(cmp, &a, &b, &mut MemoryBudget::unlimited()))
}
fn call(code: BuiltinCode, v: Value) -> Result<Value, AvapError> {
    script(ops::builtin(code, &v, &mut MemoryBudget::unlimited()))
}

// ---- arithmetic ----

#[test]
fn int_plus_int_is_int() {
    assert_eq!(bin(BinOp::Add, int(2), int(3)), Ok(int(5)));
}

#[test]
fn int_plus_float_is_float() {
    assert_eq!(bin(BinOp::Add, int(1), float(2.0)), Ok(float(3.0)));
}

#[test]
fn bool_counts_as_int() {
    assert_eq!(bin(BinOp::Add, b(true), int(1)), Ok(int(2)));
    assert_eq!(bin(BinOp::Mul, b(true), b(true)), Ok(int(1)));
}

#[test]
fn addition_overflow_is_an_error() {
    let r = bin(BinOp::Add, int(i64::MAX), int(1));
    assert_eq!(kind(r.clone()), ErrorKind::IntegerOverflow);
    assert_eq!(message(r), "integer overflow in 9223372036854775807 + 1");
}

#[test]
fn subtraction_and_multiplication_overflow() {
    assert_eq!(kind(bin(BinOp::Sub, int(i64::MIN), int(1))), ErrorKind::IntegerOverflow);
    assert_eq!(kind(bin(BinOp::Mul, int(i64::MAX), int(2))), ErrorKind::IntegerOverflow);
}

#[test]
fn true_division_is_always_float() {
    assert_eq!(bin(BinOp::Div, int(7), int(2)), Ok(float(3.5)));
    assert_eq!(bin(BinOp::Div, int(8), int(2)), Ok(float(4.0)));
}

#[test]
fn division_by_zero() {
    let r = bin(BinOp::Div, int(1), int(0));
    assert_eq!(kind(r.clone()), ErrorKind::ZeroDivisionError);
    assert_eq!(message(r), "division by zero");
    assert_eq!(
        kind(bin(BinOp::Div, float(1.0), float(0.0))),
        ErrorKind::ZeroDivisionError
    );
}

#[test]
fn int_floor_division_and_modulo_by_zero() {
    assert_eq!(
        message(bin(BinOp::FloorDiv, int(1), int(0))),
        "integer division or modulo by zero"
    );
    assert_eq!(
        message(bin(BinOp::Mod, int(1), int(0))),
        "integer division or modulo by zero"
    );
    assert_eq!(kind(bin(BinOp::Mod, float(1.0), int(0))), ErrorKind::ZeroDivisionError);
}

#[test]
fn floor_division_rounds_down() {
    assert_eq!(bin(BinOp::FloorDiv, int(7), int(2)), Ok(int(3)));
    assert_eq!(bin(BinOp::FloorDiv, int(-7), int(2)), Ok(int(-4)));
    assert_eq!(bin(BinOp::FloorDiv, int(7), int(-2)), Ok(int(-4)));
    assert_eq!(bin(BinOp::FloorDiv, int(-7), int(-2)), Ok(int(3)));
    assert_eq!(bin(BinOp::FloorDiv, float(7.5), int(2)), Ok(float(3.0)));
    assert_eq!(bin(BinOp::FloorDiv, float(-7.5), int(2)), Ok(float(-4.0)));
}

#[test]
fn floor_division_overflow() {
    assert_eq!(
        kind(bin(BinOp::FloorDiv, int(i64::MIN), int(-1))),
        ErrorKind::IntegerOverflow
    );
}

#[test]
fn modulo_takes_the_divisor_sign() {
    assert_eq!(bin(BinOp::Mod, int(7), int(3)), Ok(int(1)));
    assert_eq!(bin(BinOp::Mod, int(-7), int(3)), Ok(int(2)));
    assert_eq!(bin(BinOp::Mod, int(7), int(-3)), Ok(int(-2)));
    assert_eq!(bin(BinOp::Mod, int(-7), int(-3)), Ok(int(-1)));
    assert_eq!(bin(BinOp::Mod, int(i64::MIN), int(-1)), Ok(int(0)));
    assert_eq!(bin(BinOp::Mod, float(-7.5), int(2)), Ok(float(0.5)));
    assert_eq!(bin(BinOp::Mod, float(7.5), int(-2)), Ok(float(-0.5)));
}

#[test]
fn power() {
    assert_eq!(bin(BinOp::Pow, int(2), int(10)), Ok(int(1024)));
    assert_eq!(bin(BinOp::Pow, int(2), int(-1)), Ok(float(0.5)));
    assert_eq!(bin(BinOp::Pow, float(4.0), float(0.5)), Ok(float(2.0)));
    assert_eq!(bin(BinOp::Pow, int(1), int(i64::MAX)), Ok(int(1)));
    assert_eq!(bin(BinOp::Pow, int(-1), int(i64::MAX)), Ok(int(-1)));
}

#[test]
fn power_overflow_and_zero_to_negative() {
    let r = bin(BinOp::Pow, int(2), int(64));
    assert_eq!(kind(r.clone()), ErrorKind::IntegerOverflow);
    assert_eq!(message(r), "integer overflow in 2 ** 64");
    assert_eq!(kind(bin(BinOp::Pow, int(0), int(-1))), ErrorKind::ZeroDivisionError);
}

#[test]
fn string_and_list_concatenation() {
    assert_eq!(bin(BinOp::Add, s("T-"), s("3")), Ok(s("T-3")));
    assert_eq!(
        bin(BinOp::Add, list(&[int(1)]), list(&[s("a")])),
        Ok(list(&[int(1), s("a")]))
    );
}

#[test]
fn string_plus_number_is_a_type_error() {
    let r = bin(BinOp::Add, s("a"), int(1));
    assert_eq!(kind(r.clone()), ErrorKind::TypeError);
    assert_eq!(message(r), "can only concatenate str (not \"int\") to str");
    assert_eq!(
        message(bin(BinOp::Add, int(1), s("a"))),
        "unsupported operand type(s) for +: 'int' and 'str'"
    );
}

#[test]
fn repetition() {
    assert_eq!(bin(BinOp::Mul, s("ab"), int(3)), Ok(s("ababab")));
    assert_eq!(bin(BinOp::Mul, int(2), list(&[int(0)])), Ok(list(&[int(0), int(0)])));
    assert_eq!(bin(BinOp::Mul, s("ab"), int(-1)), Ok(s("")));
    assert_eq!(kind(bin(BinOp::Mul, s("ab"), float(2.0))), ErrorKind::TypeError);
}

#[test]
fn huge_repetition_is_refused() {
    assert_eq!(kind(bin(BinOp::Mul, s("ab"), int(i64::MAX))), ErrorKind::ValueError);
    assert_eq!(bin(BinOp::Mul, list(&[]), int(i64::MAX)), Ok(list(&[])));
}

#[test]
fn unsupported_operands() {
    assert_eq!(kind(bin(BinOp::Sub, s("a"), s("b"))), ErrorKind::TypeError);
    assert_eq!(kind(bin(BinOp::Add, none(), int(1))), ErrorKind::TypeError);
}

// ---- comparisons ----

#[test]
fn equality_across_numbers() {
    assert_eq!(bin(BinOp::Eq, int(1), float(1.0)), Ok(b(true)));
    assert_eq!(bin(BinOp::Eq, b(true), int(1)), Ok(b(true)));
    assert_eq!(
        bin(BinOp::Eq, int(9_007_199_254_740_993), float(9_007_199_254_740_992.0)),
        Ok(b(false))
    );
}

#[test]
fn equality_across_types_is_false() {
    assert_eq!(bin(BinOp::Eq, int(1), s("1")), Ok(b(false)));
    assert_eq!(bin(BinOp::NotEq, none(), int(0)), Ok(b(true)));
    assert_eq!(bin(BinOp::Eq, none(), none()), Ok(b(true)));
}

#[test]
fn structural_equality() {
    assert_eq!(
        bin(BinOp::Eq, list(&[int(1), s("a")]), list(&[float(1.0), s("a")])),
        Ok(b(true))
    );
    let x = dict(&[("a", int(1)), ("b", int(2))]);
    let y = dict(&[("b", int(2)), ("a", int(1))]);
    assert_eq!(bin(BinOp::Eq, x, y), Ok(b(true)));
}

#[test]
fn ordering_numbers_and_strings() {
    assert_eq!(bin(BinOp::Lt, int(1), float(1.5)), Ok(b(true)));
    assert_eq!(bin(BinOp::Ge, float(2.0), int(2)), Ok(b(true)));
    assert_eq!(bin(BinOp::Lt, s("apple"), s("pear")), Ok(b(true)));
    assert_eq!(bin(BinOp::Gt, s("a"), s("B")), Ok(b(true)));
    assert_eq!(bin(BinOp::Lt, float(f64::NAN), int(1)), Ok(b(false)));
}

#[test]
fn ordering_big_ints_against_floats_is_exact() {
    assert_eq!(
        bin(BinOp::Gt, int(9_007_199_254_740_993), float(9_007_199_254_740_992.0)),
        Ok(b(true))
    );
    assert_eq!(bin(BinOp::Lt, int(i64::MAX), float(9.3e18)), Ok(b(true)));
}

#[test]
fn ordering_lists() {
    assert_eq!(
        bin(BinOp::Lt, list(&[int(1), int(2)]), list(&[int(1), int(3)])),
        Ok(b(true))
    );
    assert_eq!(bin(BinOp::Lt, list(&[int(1)]), list(&[int(1), int(0)])), Ok(b(true)));
    assert_eq!(
        kind(bin(BinOp::Lt, list(&[int(1)]), list(&[s("a")]))),
        ErrorKind::TypeError
    );
}

#[test]
fn ordering_incompatible_types_is_a_type_error() {
    let r = bin(BinOp::Lt, s("a"), int(1));
    assert_eq!(kind(r.clone()), ErrorKind::TypeError);
    assert_eq!(message(r), "'<' not supported between instances of 'str' and 'int'");
    assert_eq!(kind(bin(BinOp::Ge, none(), int(1))), ErrorKind::TypeError);
}

#[test]
fn membership() {
    assert_eq!(bin(BinOp::In, s("ell"), s("hello")), Ok(b(true)));
    assert_eq!(bin(BinOp::In, int(2), list(&[int(1), float(2.0)])), Ok(b(true)));
    assert_eq!(bin(BinOp::NotIn, s("x"), list(&[s("y")])), Ok(b(true)));
    assert_eq!(bin(BinOp::In, s("k"), dict(&[("k", none())])), Ok(b(true)));
    assert_eq!(bin(BinOp::In, int(1), dict(&[("1", none())])), Ok(b(false)));
}

#[test]
fn membership_errors() {
    assert_eq!(kind(bin(BinOp::In, int(1), s("123"))), ErrorKind::TypeError);
    assert_eq!(
        message(bin(BinOp::In, int(1), int(2))),
        "argument of type 'int' is not iterable"
    );
}

#[test]
fn identity_is_same_type_and_value() {
    assert_eq!(bin(BinOp::Is, none(), none()), Ok(b(true)));
    assert_eq!(bin(BinOp::Is, int(1), int(1)), Ok(b(true)));
    assert_eq!(bin(BinOp::Is, int(1), float(1.0)), Ok(b(false)));
    assert_eq!(bin(BinOp::Is, b(true), int(1)), Ok(b(false)));
    assert_eq!(bin(BinOp::IsNot, none(), s("")), Ok(b(true)));
}

// ---- unary ----

#[test]
fn unary_operators() {
    assert_eq!(ops::unary(UnOp::Neg, &int(5)), Ok(int(-5)));
    assert_eq!(ops::unary(UnOp::Neg, &float(1.5)), Ok(float(-1.5)));
    assert_eq!(ops::unary(UnOp::Pos, &b(true)), Ok(int(1)));
    assert_eq!(ops::unary(UnOp::Not, &s("")), Ok(b(true)));
    assert_eq!(ops::unary(UnOp::Not, &list(&[int(0)])), Ok(b(false)));
}

#[test]
fn negating_the_smallest_int_overflows() {
    assert_eq!(kind(ops::unary(UnOp::Neg, &int(i64::MIN))), ErrorKind::IntegerOverflow);
    assert_eq!(kind(ops::unary(UnOp::Neg, &s("a"))), ErrorKind::TypeError);
}

// ---- if() comparators ----

#[test]
fn if_equal_normalises_numbers_as_text() {
    assert_eq!(if_cmp(IfCmp::Eq, int(1), s("1")), Ok(true));
    assert_eq!(if_cmp(IfCmp::Eq, float(1.0), s("1")), Ok(true));
    assert_eq!(if_cmp(IfCmp::Eq, int(1), float(1.0)), Ok(true));
    assert_eq!(if_cmp(IfCmp::Eq, s("007"), int(7)), Ok(true));
    assert_eq!(if_cmp(IfCmp::Eq, s(" 2.50 "), float(2.5)), Ok(true));
    assert_eq!(if_cmp(IfCmp::Eq, s("1e3"), int(1000)), Ok(true));
    assert_eq!(if_cmp(IfCmp::Eq, float(1.5), s("1.50001")), Ok(false));
}

#[test]
fn if_equal_compares_words_exactly() {
    assert_eq!(if_cmp(IfCmp::Eq, s("admin"), s("admin")), Ok(true));
    assert_eq!(if_cmp(IfCmp::Eq, s("Admin"), s("admin")), Ok(false));
    assert_eq!(if_cmp(IfCmp::NotEq, s("guest"), s("admin")), Ok(true));
}

#[test]
fn if_none_reads_as_the_text_none() {
    assert_eq!(if_cmp(IfCmp::Eq, none(), none()), Ok(true));
    assert_eq!(if_cmp(IfCmp::Eq, s("None"), none()), Ok(true));
    assert_eq!(if_cmp(IfCmp::Eq, s(""), none()), Ok(false));
    assert_eq!(if_cmp(IfCmp::NotEq, int(0), none()), Ok(true));
}

#[test]
fn if_bools_read_as_true_false() {
    assert_eq!(if_cmp(IfCmp::Eq, b(true), s("True")), Ok(true));
    assert_eq!(if_cmp(IfCmp::Eq, b(true), int(1)), Ok(false));
}

#[test]
fn if_ordering_is_numeric() {
    assert_eq!(if_cmp(IfCmp::Gt, s("10"), int(9)), Ok(true));
    assert_eq!(if_cmp(IfCmp::Lt, s("10"), s("9")), Ok(false));
    assert_eq!(if_cmp(IfCmp::Le, float(2.0), s("2")), Ok(true));
    assert_eq!(if_cmp(IfCmp::Ge, int(3), float(3.5)), Ok(false));
}

#[test]
fn if_ordering_of_non_numbers_is_a_type_error() {
    assert_eq!(kind(if_cmp(IfCmp::Lt, s("abc"), int(1))), ErrorKind::TypeError);
    assert_eq!(kind(if_cmp(IfCmp::Gt, none(), int(1))), ErrorKind::TypeError);
}

#[test]
fn if_membership() {
    let blocked = list(&[s("mallory"), s("trudy")]);
    assert_eq!(if_cmp(IfCmp::In, s("trudy"), blocked.clone()), Ok(true));
    assert_eq!(if_cmp(IfCmp::In, s("alice"), blocked.clone()), Ok(false));
    assert_eq!(if_cmp(IfCmp::NotIn, s("alice"), blocked), Ok(true));
    assert_eq!(if_cmp(IfCmp::In, s("1"), list(&[int(1)])), Ok(true));
    assert_eq!(if_cmp(IfCmp::In, s("ell"), s("hello")), Ok(true));
    assert_eq!(if_cmp(IfCmp::In, int(1), dict(&[("1", none())])), Ok(true));
    assert_eq!(kind(if_cmp(IfCmp::In, int(1), none())), ErrorKind::TypeError);
}

// ---- built-ins ----

#[test]
fn str_builtin() {
    assert_eq!(call(BuiltinCode::Str, int(3)), Ok(s("3")));
    assert_eq!(call(BuiltinCode::Str, float(1.0)), Ok(s("1.0")));
    assert_eq!(call(BuiltinCode::Str, none()), Ok(s("None")));
    assert_eq!(call(BuiltinCode::Str, list(&[int(1), s("a")])), Ok(s("[1, 'a']")));
}

#[test]
fn int_builtin() {
    assert_eq!(call(BuiltinCode::Int, float(3.9)), Ok(int(3)));
    assert_eq!(call(BuiltinCode::Int, float(-3.9)), Ok(int(-3)));
    assert_eq!(call(BuiltinCode::Int, s(" 42 ")), Ok(int(42)));
    assert_eq!(call(BuiltinCode::Int, s("-7")), Ok(int(-7)));
    assert_eq!(call(BuiltinCode::Int, b(true)), Ok(int(1)));
}

#[test]
fn int_builtin_errors() {
    let r = call(BuiltinCode::Int, s("x"));
    assert_eq!(kind(r.clone()), ErrorKind::ValueError);
    assert_eq!(message(r), "invalid literal for int() with base 10: 'x'");
    assert_eq!(kind(call(BuiltinCode::Int, s("1.5"))), ErrorKind::ValueError);
    assert_eq!(kind(call(BuiltinCode::Int, none())), ErrorKind::TypeError);
    assert_eq!(kind(call(BuiltinCode::Int, float(f64::NAN))), ErrorKind::ValueError);
    assert_eq!(kind(call(BuiltinCode::Int, float(1e300))), ErrorKind::IntegerOverflow);
}

#[test]
fn float_builtin() {
    assert_eq!(call(BuiltinCode::Float, int(2)), Ok(float(2.0)));
    assert_eq!(call(BuiltinCode::Float, s(" 1.5 ")), Ok(float(1.5)));
    assert_eq!(call(BuiltinCode::Float, s("1e3")), Ok(float(1000.0)));
    assert_eq!(call(BuiltinCode::Float, s("-inf")), Ok(float(f64::NEG_INFINITY)));
    assert_eq!(kind(call(BuiltinCode::Float, s("abc"))), ErrorKind::ValueError);
    assert_eq!(kind(call(BuiltinCode::Float, none())), ErrorKind::TypeError);
}

#[test]
fn len_builtin() {
    assert_eq!(call(BuiltinCode::Len, s("héllo")), Ok(int(5)));
    assert_eq!(call(BuiltinCode::Len, list(&[int(1), int(2)])), Ok(int(2)));
    assert_eq!(call(BuiltinCode::Len, dict(&[("a", int(1))])), Ok(int(1)));
    assert_eq!(
        message(call(BuiltinCode::Len, int(5))),
        "object of type 'int' has no len()"
    );
}

// ---- subscripts and attributes ----

#[test]
fn index_lists_and_strings() {
    let xs = list(&[int(10), int(20), int(30)]);
    assert_eq!(index(&xs, &int(1)), Ok(int(20)));
    assert_eq!(index(&xs, &int(-1)), Ok(int(30)));
    assert_eq!(kind(index(&xs, &int(3))), ErrorKind::IndexError);
    assert_eq!(kind(index(&xs, &int(-4))), ErrorKind::IndexError);
    assert_eq!(kind(index(&xs, &s("0"))), ErrorKind::TypeError);
    assert_eq!(index(&s("héllo"), &int(1)), Ok(s("é")));
    assert_eq!(index(&s("abc"), &int(-1)), Ok(s("c")));
}

#[test]
fn index_dicts() {
    let d = dict(&[("mode", s("fast"))]);
    assert_eq!(index(&d, &s("mode")), Ok(s("fast")));
    let r = index(&d, &s("nope"));
    assert_eq!(kind(r.clone()), ErrorKind::KeyError);
    assert_eq!(message(r), "'nope'");
    assert_eq!(kind(index(&int(1), &int(0))), ErrorKind::TypeError);
}

#[test]
fn attribute_access() {
    let d = dict(&[("name", s("Ada"))]);
    assert_eq!(attr(&d, "name"), Ok(s("Ada")));
    assert_eq!(kind(attr(&d, "age")), ErrorKind::KeyError);
    assert_eq!(kind(attr(&s("x"), "len")), ErrorKind::TypeError);
}

#[test]
fn set_index_on_lists_and_dicts() {
    let mut xs = list(&[int(1), int(2)]);
    assert_eq!(set_index(&mut xs, &int(-1), s("z")), Ok(()));
    assert_eq!(xs, list(&[int(1), s("z")]));
    assert_eq!(kind(set_index(&mut xs, &int(2), none())), ErrorKind::IndexError);

    let mut d = dict(&[("a", int(1))]);
    assert_eq!(set_index(&mut d, &s("b"), int(2)), Ok(()));
    assert_eq!(d, dict(&[("a", int(1)), ("b", int(2))]));
    assert_eq!(kind(set_index(&mut d, &int(1), none())), ErrorKind::TypeError);
    assert_eq!(kind(set_index(&mut s("abc"), &int(0), s("x"))), ErrorKind::TypeError);
}

#[test]
fn template_text_of_none_is_empty() {
    assert_eq!(ops::template_text(&none()), "");
    assert_eq!(ops::template_text(&int(3)), "3");
    assert_eq!(ops::template_text(&s("x")), "x");
    assert_eq!(ops::template_text(&b(false)), "False");
}

// ---- value text and JSON ----

#[test]
fn python_text_of_values() {
    assert_eq!(none().to_text(), "None");
    assert_eq!(b(true).to_text(), "True");
    assert_eq!(float(1.0).to_text(), "1.0");
    assert_eq!(float(0.1).to_text(), "0.1");
    assert_eq!(float(1e20).to_text(), "1e+20");
    assert_eq!(float(1e16).to_text(), "1e+16");
    assert_eq!(float(1e15).to_text(), "1000000000000000.0");
    assert_eq!(float(0.0001).to_text(), "0.0001");
    assert_eq!(float(0.00001).to_text(), "1e-05");
    assert_eq!(float(-2.5e-7).to_text(), "-2.5e-07");
    assert_eq!(float(123.456).to_text(), "123.456");
    assert_eq!(float(-0.0).to_text(), "-0.0");
    assert_eq!(float(f64::INFINITY).to_text(), "inf");
    assert_eq!(float(f64::NAN).to_text(), "nan");
}

#[test]
fn python_text_of_containers() {
    assert_eq!(list(&[int(1), s("a"), none()]).to_text(), "[1, 'a', None]");
    assert_eq!(dict(&[("k", int(1)), ("n", list(&[]))]).to_text(), "{'k': 1, 'n': []}");
    assert_eq!(list(&[s("it's")]).to_text(), "[\"it's\"]");
    assert_eq!(list(&[s("a\nb\\")]).to_text(), "['a\\nb\\\\']");
}

#[test]
fn json_keeps_floats_floats() {
    assert_eq!(float(120.0).to_json_text(), "120.0");
    assert_eq!(int(120).to_json_text(), "120");
    assert_eq!(float(f64::NAN).to_json_text(), "null");
    assert_eq!(
        dict(&[("b", int(1)), ("a", list(&[b(true), none()]))]).to_json_text(),
        r#"{"b":1,"a":[true,null]}"#
    );
}

#[test]
fn json_round_trip() {
    let json: serde_json::Value =
        serde_json::from_str(r#"{"z": 1, "a": 2.5, "big": 1e30, "s": "x", "l": [null, false]}"#).unwrap();
    let v = Value::from_json(&json);
    assert_eq!(
        v,
        dict(&[
            ("z", int(1)),
            ("a", float(2.5)),
            ("big", float(1e30)),
            ("s", s("x")),
            ("l", list(&[none(), b(false)]))
        ])
    );
    assert_eq!(v.to_json(), json);
}

#[test]
fn json_numbers_beyond_i64_become_floats() {
    let json: serde_json::Value = serde_json::from_str("18446744073709551615").unwrap();
    assert_eq!(Value::from_json(&json), float(18_446_744_073_709_551_615.0));
}
