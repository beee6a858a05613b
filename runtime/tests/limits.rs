//! Each sandbox limit ends a run with its kind, within 2× its budget, is
//! not catchable, and leaves the runtime fine for the next run.

mod common;

use avap_runtime::{Limits, RunInput};
use common::{Harness, block_on, error_kind};

const HELLO: &str = "addVar(greeting, \"Hello\")\naddResult(greeting)\n";

fn small() -> Limits {
    Limits {
        fuel: 50_000_000,
        time_ms: 5_000,
        memory_bytes: 16 << 20,
        stack_bytes: 64 << 10,
        output_bytes: 64 << 10,
    }
}

/// After any failure the same runtime serves a normal run.
fn assert_next_run_fine(h: &Harness) {
    let r = h.run(HELLO);
    assert_eq!(r.http_status, 200, "{}", r.envelope);
    assert_eq!(r.envelope.json()["result"]["greeting"], "Hello");
}

#[test]
fn endless_loop_runs_out_of_fuel() {
    let h = Harness::new();
    let src = "s = 0\nstartLoop(i, 1, 9000000000000)\n  s = s + 1\nendLoop()\naddResult(s)\n";
    let limits = small();
    let r = h.run_with(src, limits);
    assert_eq!(error_kind(&r), "FuelExhausted", "{}", r.envelope);
    assert_eq!(r.http_status, 422);
    assert!(
        r.usage.fuel <= 2 * limits.fuel,
        "used {} of {}",
        r.usage.fuel,
        limits.fuel
    );
    assert!(
        r.usage.fuel >= limits.fuel / 2,
        "stopped early: {} of {}",
        r.usage.fuel,
        limits.fuel
    );
    // Fuel is checked at the loop header, so the loop statement is blamed.
    assert_eq!(r.envelope.json()["error"]["line"], 2, "{}", r.envelope);
    assert_next_run_fine(&h);
}

#[test]
fn endless_loop_hits_the_wall_clock_limit() {
    let h = Harness::new();
    let src = "s = 0\nstartLoop(i, 1, 9000000000000)\n  s = s + 1\nendLoop()\n";
    let limits = Limits {
        fuel: u64::MAX / 2,
        time_ms: 200,
        ..small()
    };
    let r = h.run_with(src, limits);
    assert_eq!(error_kind(&r), "TimeLimit", "{}", r.envelope);
    assert_eq!(r.http_status, 504);
    assert!(
        r.usage.wall_ms < 400.0,
        "took {} ms for a 200 ms budget",
        r.usage.wall_ms
    );
    assert!(r.usage.wall_ms >= 150.0, "stopped early at {} ms", r.usage.wall_ms);
    assert_next_run_fine(&h);
}

#[test]
fn string_doubling_hits_the_memory_limit() {
    let h = Harness::new();
    let src = "s = \"0123456789\"\nstartLoop(i, 1, 100)\n  s = s + s\nendLoop()\naddResult(s)\n";
    let limits = small();
    let r = h.run_with(src, limits);
    assert_eq!(error_kind(&r), "MemoryLimit", "{}", r.envelope);
    assert_eq!(r.http_status, 422);
    assert!(
        r.usage.peak_memory_bytes <= 2 * limits.memory_bytes,
        "peak {}",
        r.usage.peak_memory_bytes
    );
    assert_next_run_fine(&h);
}

#[test]
fn garbage_in_a_top_level_loop_is_collected() {
    let h = Harness::new();
    // 2,000 iterations × a 10 KB string = 20 MB of garbage under a 16 MB cap.
    let src = "big = \"\"\nstartLoop(i, 1, 1000)\n  big = big + \"0123456789\"\nendLoop()\n\
               startLoop(j, 1, 2000)\n  t = big + \"x\"\nendLoop()\nn = len(t)\naddResult(n)\n";
    let r = h.run_with(src, small());
    assert_eq!(r.http_status, 200, "{}", r.envelope);
    assert_eq!(r.envelope.json()["result"]["n"], 10_001);
    assert!(
        r.usage.peak_memory_bytes < 8 << 20,
        "peak {}",
        r.usage.peak_memory_bytes
    );
}

#[test]
fn unbounded_recursion_overflows_the_stack_budget() {
    let h = Harness::new();
    let src = "function down(n) {\n  return(down(n + 1))\n}\nx = down(0)\n";
    let r = h.run_with(src, small());
    assert_eq!(error_kind(&r), "StackOverflow", "{}", r.envelope);
    assert_eq!(r.http_status, 422);
    assert_next_run_fine(&h);
}

#[test]
fn recursion_past_the_native_stack_is_still_a_stack_overflow() {
    let h = Harness::new();
    let src = "function down(n) {\n  return(down(n + 1))\n}\nx = down(0)\n";
    let limits = Limits {
        stack_bytes: u64::MAX / 4,
        fuel: u64::MAX / 2,
        ..small()
    };
    let r = h.run_with(src, limits);
    assert_eq!(error_kind(&r), "StackOverflow", "{}", r.envelope);
    assert_next_run_fine(&h);
}

#[test]
fn huge_add_result_hits_the_output_limit() {
    let h = Harness::new();
    let src = "s = \"0123456789\"\nstartLoop(i, 1, 14)\n  s = s + s\nendLoop()\naddResult(s)\n";
    let limits = small();
    let r = h.run_with(src, limits);
    assert_eq!(error_kind(&r), "OutputLimit", "{}", r.envelope);
    assert_eq!(r.http_status, 422);
    assert_eq!(r.envelope.json()["error"]["line"], 5);
    assert_next_run_fine(&h);
}

#[test]
fn limits_are_not_catchable() {
    let h = Harness::new();
    let src = "try()\n  startLoop(i, 1, 9000000000000)\n    x = i\n  endLoop()\nexception(e)\n  addResult(e)\nend()\n";
    let r = h.run_with(src, small());
    assert_eq!(error_kind(&r), "FuelExhausted", "{}", r.envelope);
}

#[test]
fn every_run_reports_its_usage() {
    let h = Harness::new();
    let r = h.run("s = 0\nstartLoop(i, 1, 1000)\n  s = s + i\nendLoop()\naddResult(s)\n");
    assert_eq!(r.envelope.json()["result"]["s"], 500_500);
    assert!(r.usage.fuel > 1000, "fuel {}", r.usage.fuel);
    assert!(r.usage.wall_ms > 0.0);
    assert!(r.usage.peak_memory_bytes > 0);
}

/// A dict display with string-literal keys is built in one host call
/// (`rt.dict_from`); it claims and counts exactly what the general form
/// (`dict_new`, then one `dict_set` per key) does, duplicates included,
/// and runs out of memory the same way.
#[test]
fn a_dict_display_is_counted_like_one_built_key_by_key() {
    let h = Harness::new();
    let values = r#""x" * 300, "b": [1, "yy"], "c": {"d": "z" * 40}, "a": "w" * 50"#;
    let literal = h.run(&format!("d = {{\"a\": {values}}}\naddResult(d)\n"));
    let general = h.run(&format!("k = \"a\"\nd = {{k: {values}}}\naddResult(d)\n"));
    assert_eq!(literal.envelope.json()["result"], general.envelope.json()["result"]);
    assert_eq!(literal.usage.peak_memory_bytes, general.usage.peak_memory_bytes);

    let tight = Limits {
        memory_bytes: 64 << 10,
        ..Limits::CLI
    };
    let big = r#"d = {"a": "x" * 20000, "b": "y" * 20000, "c": "z" * 20000, "e": "w" * 20000}"#;
    let r = h.run_with(big, tight);
    assert_eq!(error_kind(&r), "MemoryLimit", "{}", r.envelope);
}

/// Runs are cooperative: at every epoch tick a running script yields to the
/// executor, so one thread serves a long run and short ones side by side.
#[test]
fn a_long_run_yields_to_other_runs_on_the_same_thread() {
    let h = Harness::new();
    let endless = h.load("s = 0\nstartLoop(i, 1, 9000000000000)\n  s = s + 1\nendLoop()\n");
    let short = h.load("x = 1\naddResult(x)\n");
    let input = |time_ms| RunInput {
        limits: Limits {
            fuel: u64::MAX / 2,
            time_ms,
            ..small()
        },
        ..RunInput::default()
    };
    // `block_on` is a current-thread runtime: both runs share one thread.
    let ((long, long_done), (quick, quick_done)) = block_on(async {
        let start = std::time::Instant::now();
        let long = async {
            let r = h.runtime.run(&endless, input(400)).await;
            (r, start.elapsed())
        };
        let quick = async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let r = h.runtime.run(&short, input(1000)).await;
            (r, start.elapsed())
        };
        tokio::join!(long, quick)
    });
    assert_eq!(error_kind(&long), "TimeLimit", "{}", long.envelope);
    assert_eq!(quick.envelope.json()["result"]["x"], 1, "{}", quick.envelope);
    assert!(
        quick_done < long_done && quick_done.as_millis() < 250,
        "the short run finished at {quick_done:?}, the long one at {long_done:?}"
    );
}
