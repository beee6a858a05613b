//! Generators of random, mostly well-formed AVAP programs for property
//! tests (shared by the code generator's and the runtime's tests).

use proptest::prelude::*;

const NAMES: &[&str] = &["a", "b", "c", "i", "_status", "xs"];

fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(|i| i.to_string()),
        (-1000.0f64..1000.0).prop_map(|f| format!("{f:?}")),
        "[a-z ]{0,8}".prop_map(|s| format!("\"{s}\"")),
        prop::sample::select(NAMES).prop_map(str::to_owned),
        Just("None".to_owned()),
        Just("True".to_owned()),
        Just("`t ${a} ${zz}`".to_owned()),
        Just("$b".to_owned()),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(&["+", "-", "*", "/", "//", "%", "**", "==", "<", ">=", "in", "and", "or"][..]),
                inner.clone()
            )
                .prop_map(|(l, op, r)| format!("({l} {op} {r})")),
            inner.clone().prop_map(|e| format!("not {e}")),
            inner.clone().prop_map(|e| format!("-{e}")),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
            (inner.clone(), inner.clone()).prop_map(|(k, v)| format!("{{\"k\": {k}, \"v\": {v}}}")),
            inner.clone().prop_map(|e| format!("len({e})")),
            inner.clone().prop_map(|e| format!("str({e})")),
            (inner.clone(), inner.clone()).prop_map(|(o, i)| format!("{o}[{i}]")),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(a, c, b)| format!("({a} if {c} else {b})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("f2({a}, {b})")),
        ]
    })
}

fn stmt() -> impl Strategy<Value = String> {
    let simple = prop_oneof![
        (prop::sample::select(NAMES), expr()).prop_map(|(n, e)| format!("{n} = {e}")),
        (prop::sample::select(NAMES), expr()).prop_map(|(n, e)| format!("{n} += {e}")),
        (prop::sample::select(NAMES), expr()).prop_map(|(n, e)| format!("addVar({n}, {e})")),
        prop::sample::select(NAMES).prop_map(|n| format!("addResult({n})")),
        expr().prop_map(|e| format!("variableToList({e}, xs)")),
        expr().prop_map(|e| format!("xs[0] = {e}")),
        expr().prop_map(|e| format!("raise({e})")),
        expr().prop_map(|e| format!("r = f2({e}, 1)")),
        Just("unknownCommand(a)".to_owned()),
        Just("getListLen(xs, n)".to_owned()),
    ];
    simple.prop_recursive(3, 16, 4, |inner| {
        let body = prop::collection::vec(inner, 0..4).prop_map(|v| v.join("\n"));
        prop_oneof![
            (expr(), body.clone()).prop_map(|(e, b)| format!("if(a, {e}, =)\n{b}\nend()")),
            (body.clone(), body.clone())
                .prop_map(|(t, e)| format!("if(None, None, \"a > 1\")\n{t}\nelse()\n{e}\nend()")),
            (expr(), body.clone()).prop_map(|(e, b)| format!("startLoop(i, 1, {e})\n{b}\nendLoop()")),
            (body.clone(), body.clone()).prop_map(|(t, h)| format!("try()\n{t}\nexception(err)\n{h}\nend()")),
            body.prop_map(|b| format!("go_async(\"job\")\n{b}\nend()\ng = gather(\"job\", 1)")),
        ]
    })
}

pub fn program() -> impl Strategy<Value = String> {
    (prop::collection::vec(stmt(), 0..8), prop::collection::vec(stmt(), 0..4)).prop_map(|(main, body)| {
        format!(
            "function f2(p, q) {{\n{}\nreturn(p)\n}}\n{}\n",
            body.join("\n").replace("return(p)", ""),
            main.join("\n")
        )
    })
}
