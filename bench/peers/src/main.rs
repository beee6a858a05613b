//! The Rhai and native Rust peers of the benchmark suite (`bench/run.sh`, issue 8).
//!
//! * `rhai`: each `rhai/NAME.rhai` compiled once to an AST, then evaluated per
//!   call in a fresh `Scope` by one `Engine::new()` (Rhai's defaults: no
//!   operation or time limit). `json_build` returns its array of maps and the
//!   host serialises it with `serde_json`, as our runtime serialises the
//!   response.
//! * `native`: the same work in plain Rust, the floor.
//!
//! Every result is checked against `bench/workloads/expected.txt` before the
//! workload is timed. Timing is in-process, the same rule as `examples/bench_avap.rs`: one
//! warm-up call, then samples (each a batch of calls lasting at least a
//! millisecond) until both the minimum count and the time budget are
//! reached. Prints, per workload:
//!
//! ```text
//! RESULT <rhai|native> <workload> <result> <median seconds> <samples>
//! ```
//!
//! Usage: `avap-bench-peers rhai|native [--quick] [--only NAME]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, Engine, Scope};

const RHAI: [(&str, &str); 5] = [
    ("loop_arith", include_str!("../rhai/loop_arith.rhai")),
    ("fib_rec", include_str!("../rhai/fib_rec.rhai")),
    ("string_build", include_str!("../rhai/string_build.rhai")),
    ("json_build", include_str!("../rhai/json_build.rhai")),
    ("hello", include_str!("../rhai/hello.rhai")),
];

/// The expected result of `name` in `bench/workloads/expected.txt`
/// (`NAME RESULT` per line, `#` comments).
fn expected(name: &str) -> &'static str {
    include_str!("../../workloads/expected.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no expected result for {name}"))
        .trim()
}

fn median(quick: bool, mut work: impl FnMut() -> String) -> (f64, usize) {
    let (budget, min_samples, max_samples) = if quick {
        (Duration::from_millis(300), 3, 200)
    } else {
        (Duration::from_secs(2), 5, 1000)
    };
    black_box(work());
    let mut batch = 1u32;
    loop {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(work());
        }
        if start.elapsed() >= Duration::from_millis(1) || batch >= 1 << 20 {
            break;
        }
        batch *= 2;
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < max_samples && (samples.len() < min_samples || started.elapsed() < budget) {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(work());
        }
        samples.push(start.elapsed().as_secs_f64() / f64::from(batch));
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples.len())
}

/// A Rhai result as every implementation prints it: the value, or the length
/// of the compact JSON text of an array or map.
fn rhai_result(value: &Dynamic) -> String {
    if value.is_array() || value.is_map() {
        serde_json::to_string(value).expect("serialisable").len().to_string()
    } else {
        value.to_string()
    }
}

fn run_rhai(engine: &Engine, ast: &AST) -> String {
    let value: Dynamic = engine
        .eval_ast_with_scope(&mut Scope::new(), ast)
        .unwrap_or_else(|e| panic!("rhai failed: {e}"));
    rhai_result(&value)
}

fn loop_arith(n: i64) -> i64 {
    let (mut r, mut i) = (0i64, 1i64);
    while i <= n {
        r += i * i % 7;
        i += 1;
    }
    r
}

fn fib(n: i64) -> i64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

fn string_build(n: usize) -> usize {
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(black_box("x"));
    }
    s.len()
}

#[derive(serde::Serialize)]
struct Row {
    id: i64,
    name: String,
    score: i64,
}

fn json_build(n: i64) -> usize {
    let rows: Vec<Row> = (1..=n)
        .map(|i| Row {
            id: i,
            name: format!("user{i}"),
            score: i * 7 % 100,
        })
        .collect();
    serde_json::to_string(&rows).expect("serialisable").len()
}

fn native(name: &str) -> String {
    match name {
        "loop_arith" => loop_arith(black_box(10_000_000)).to_string(),
        "fib_rec" => fib(black_box(27)).to_string(),
        "string_build" => string_build(black_box(100_000)).to_string(),
        "json_build" => json_build(black_box(10_000)).to_string(),
        "hello" => black_box("Hello").to_owned(),
        other => panic!("unknown workload {other}"),
    }
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let implementation = args.first().map_or("", String::as_str);
    let quick = args.iter().any(|a| a == "--quick");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1));
    let engine = Engine::new();
    for (name, script) in RHAI {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let mut work: Box<dyn FnMut() -> String> = match implementation {
            "rhai" => {
                let ast = engine
                    .compile(script)
                    .unwrap_or_else(|e| panic!("{name}.rhai does not compile: {e}"));
                let engine = &engine;
                Box::new(move || run_rhai(engine, &ast))
            }
            "native" => Box::new(move || native(name)),
            _ => {
                eprintln!("usage: avap-bench-peers rhai|native [--quick] [--only NAME]");
                std::process::exit(2);
            }
        };
        let result = work();
        let want = expected(name);
        if result != want {
            eprintln!("{implementation} {name}: result {result}, expected {want} (bench/workloads/expected.txt)");
            std::process::exit(1);
        }
        let (seconds, samples) = median(quick, &mut work);
        println!("RESULT {implementation} {name} {result} {seconds:.9} {samples}");
    }
}
