//! Property test of the whole sandbox: any generated program that compiles
//! runs to a response — a result or a known error kind — never a crash, an
//! internal error or a wrong status code — within its memory and time
//! limits. (`fuzz/fuzz_targets/run.rs` does the same on mutated inputs.)

mod common;

#[path = "../../codegen/tests/support/generate.rs"]
mod generate;

use avap_runtime::Limits;
use common::Harness;
use generate::program;
use proptest::prelude::*;
use proptest::test_runner::Config;

const KINDS: &[&str] = &[
    "NameError",
    "TypeError",
    "ValueError",
    "ZeroDivisionError",
    "IndexError",
    "KeyError",
    "IntegerOverflow",
    "UserError",
    "FuelExhausted",
    "TimeLimit",
    "MemoryLimit",
    "StackOverflow",
    "OutputLimit",
];

proptest! {
    #![proptest_config(Config { cases: 150, failure_persistence: None, ..Config::default() })]

    #[test]
    fn generated_programs_always_produce_a_response(src in program()) {
        let checked = avap_codegen::check_file(
            avap_codegen::SourceFile::new("gen.avap", src.clone()),
            &avap_codegen::check::NoIncludes,
        );
        prop_assume!(checked.error_count() == 0);
        let h = HARNESS.with(std::rc::Rc::clone);
        let limits = Limits { fuel: 2_000_000, time_ms: 2_000, memory_bytes: 8 << 20, stack_bytes: 32 << 10, output_bytes: 1 << 20 };
        let r = h.run_with(&src, limits);
        // Limits are hard: the heap never passes its budget, and the run
        // never outlives twice its time (host work included).
        prop_assert!(r.usage.peak_memory_bytes <= limits.memory_bytes, "heap peak {} for\n{src}", r.usage.peak_memory_bytes);
        let budget_ms = std::time::Duration::from_millis(2 * limits.time_ms).as_secs_f64() * 1000.0;
        prop_assert!(r.usage.wall_ms <= budget_ms, "{} ms for\n{src}", r.usage.wall_ms);
        let ok = r.envelope.json()["status"] == true;
        if ok {
            prop_assert!((100..=599).contains(&r.http_status), "status {} for\n{src}", r.http_status);
            prop_assert!(r.envelope.json()["result"].is_object());
        } else {
            let kind = r.envelope.json()["error"]["kind"].as_str().unwrap_or("");
            prop_assert!(KINDS.contains(&kind), "unexpected error {} for\n{src}", r.envelope);
            let expected = match kind {
                "TimeLimit" => 504,
                "FuelExhausted" | "MemoryLimit" | "StackOverflow" | "OutputLimit" => 422,
                _ => 400,
            };
            prop_assert_eq!(r.http_status, expected);
            if !["FuelExhausted", "TimeLimit", "MemoryLimit", "StackOverflow", "OutputLimit"].contains(&kind) {
                prop_assert!(r.envelope.json()["error"]["line"].is_u64(), "no line in {} for\n{}", r.envelope, src);
            }
        }
        // The same program again, now on the instance the first run gave
        // back (recycle.rs), answers the same. A run cut by the wall clock
        // is the one that may not.
        if r.envelope.json()["error"]["kind"] != "TimeLimit" {
            let again = h.run_with(&src, limits);
            prop_assert_eq!(again.http_status, r.http_status, "for\n{}", src);
            prop_assert_eq!(answer(&again), answer(&r), "for\n{}", src);
        }
    }
}

/// The envelope without the run's elapsed time.
fn answer(r: &avap_runtime::RunReport) -> serde_json::Value {
    let mut json = r.envelope.json().clone();
    if let Some(envelope) = json.as_object_mut() {
        envelope.remove("elapsed");
    }
    json
}

thread_local! {
    static HARNESS: std::rc::Rc<Harness> = std::rc::Rc::new(Harness::new());
}
