//! Compile and run benchmarks (issue 4): AVAP → signed wasm, wasmtime
//! compilation, cached runs, a 10M-iteration arithmetic loop and recursive
//! `fib(27)` — with and without fuel/epoch metering — against baselines
//! measured in the same run: a hand-written wasm loop (metered and not), the
//! same loop in native Rust and, when `python3` is on `PATH`, `CPython`.
//!
//! Every workload's result is checked once before it is timed. After the
//! criterion groups a summary table prints the medians (read back from
//! criterion's `estimates.json` of this run) and the ratios.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target cargo bench --bench runtime
//! ```

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, compile};
use avap_hostfns::Request;
use avap_hostfns::artifact::{SigningKey, TrustedKeys};
use avap_runtime::{Limits, LoadedModule, RunInput, RunReport, Runtime, RuntimeConfig};
use criterion::Criterion;

/// Iterations of the arithmetic loop.
const LOOP_N: i64 = 10_000_000;
/// Argument of the recursive Fibonacci benchmark.
const FIB_N: i64 = 27;

/// A realistic ~100-line endpoint: functions, loops, `if`/`else`, `try`,
/// request parameters, list/dict building, regex replace and SHA-256.
const ORDER_SCRIPT: &str = r#"// Order pricing endpoint: reads the request, prices the basket, applies a
// coupon, computes loyalty points and signs the answer.

function clamp(value, low, high) {
    if(value, low, <)
        return(low)
    end()
    if(value, high, >)
        return(high)
    end()
    return(value)
}

function lineTotal(price, qty, discount) {
    gross = price * qty
    cut = gross * discount / 100
    return(gross - cut)
}

function tierOf(total) {
    tier = "bronze"
    if(total, 500, >=)
        tier = "silver"
    end()
    if(total, 2000, >=)
        tier = "gold"
    end()
    return(tier)
}

function checksum(text) {
    clean = replace(text, "[^A-Za-z0-9.]", "")
    digest = encodeSHA256(clean)
    return(digest)
}

addParam(customer, customer)
addParam(coupon, coupon)
if(customer, None, =)
    customer = "anonymous"
end()
if(coupon, None, =)
    coupon = "SAVE10"
end()
addVar(currency, "EUR")
addVar(taxRate, 21)
prices = [12.5, 3, 45, 7.25, 99, 15, 2.5, 60]
quantities = [2, 10, 1, 4, 1, 3, 20, 2]
names = ["pen", "clip", "lamp", "mug", "chair", "book", "sticker", "bag"]
getListLen(prices, count)
last = count - 1
subtotal = 0
units = 0
startLoop(i, 0, last)
    itemFromList(prices, i, price)
    itemFromList(quantities, i, qty)
    itemFromList(names, i, name)
    discount = 0
    if(qty, 10, >=)
        discount = 15
    else()
        if(qty, 3, >=)
            discount = 5
        end()
    end()
    amount = lineTotal(price, qty, discount)
    subtotal = subtotal + amount
    units += qty
    line = {}
    AddvariableToJSON("name", name, line)
    AddvariableToJSON("qty", qty, line)
    AddvariableToJSON("amount", amount, line)
    variableToList(line, lines)
endLoop()
couponRate = 0
try()
    digits = replace(coupon, "[^0-9]", "")
    couponRate = int(digits)
exception(err)
    addVar(couponError, err)
    couponRate = 0
end()
couponRate = clamp(couponRate, 0, 30)
afterCoupon = subtotal - subtotal * couponRate / 100
tax = afterCoupon * taxRate / 100
total = afterCoupon + tax
tier = tierOf(total)
points = 0
startLoop(k, 1, units)
    if(tier, "gold", =)
        points = points + 3
    else()
        points = points + 1
    end()
endLoop()
summary = `Order for ${customer}: ${count} lines, tier ${tier}`
reference = "ORD-" + str(count) + "-" + customer
signature = checksum(reference + str(total))
AddvariableToJSON("customer", customer, order)
AddvariableToJSON("currency", currency, order)
AddvariableToJSON("subtotal", subtotal, order)
AddvariableToJSON("tax", tax, order)
AddvariableToJSON("total", total, order)
AddvariableToJSON("tier", tier, order)
AddvariableToJSON("points", points, order)
if(total, 1000, >)
    _status = 201
end()
addResult(order)
addResult(lines)
addResult(summary)
addResult(signature)
addResult(reference)
"#;

const HELLO: &str = "addVar(greeting, \"Hello\")\naddResult(greeting)\n";

const LOOP_ARITH: &str = "s = 0
startLoop(i, 1, 10000000)
    s = s + i * i % 7
endLoop()
addResult(s)
";

const FIB: &str = "function fib(n) {
    if(n, 2, <)
        return(n)
    end()
    return(fib(n - 1) + fib(n - 2))
}
r = fib(27)
addResult(r)
";

/// The loop as a compiler with static types would emit it: two `i64` locals.
const IDEAL_WAT: &str = include_str!("../bench/ideal_loop.wat");

/// `CPython` programs: each times its own work with `perf_counter`, best of 3,
/// and prints `<result> <seconds>`. The loop runs twice: at module level
/// (globals, like the AVAP script's top level) and inside a function (locals,
/// which `CPython` runs faster: the stricter comparison for us).
const PY_LOOP_TOP_LEVEL: &str = "
import time
best = None
for _ in range(3):
    t = time.perf_counter()
    s = 0
    for i in range(1, 10000001):
        s = s + i * i % 7
    d = time.perf_counter() - t
    best = d if best is None else min(best, d)
print(s, best)
";

const PY_LOOP_FUNCTION: &str = "
import time
def work():
    s = 0
    for i in range(1, 10000001):
        s = s + i * i % 7
    return s
best = None
for _ in range(3):
    t = time.perf_counter()
    r = work()
    d = time.perf_counter() - t
    best = d if best is None else min(best, d)
print(r, best)
";

const PY_FIB: &str = "
import time
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)
best = None
for _ in range(3):
    t = time.perf_counter()
    r = fib(27)
    d = time.perf_counter() - t
    best = d if best is None else min(best, d)
print(r, best)
";

/// The loop in Rust, written like the wasm loop. (`for i in 1..=n` was ~1.6×
/// slower here: `RangeInclusive`'s end-of-range flag gets in LLVM's way.)
fn native_loop(n: i64) -> i64 {
    let (mut s, mut i) = (0i64, 1i64);
    while i <= n {
        s += i * i % 7;
        i += 1;
    }
    s
}

fn fib(n: i64) -> i64 {
    let (mut a, mut b) = (0, 1);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

/// The two runtimes (metered and unmetered), a signing key both trust and
/// one current-thread tokio runtime for every run.
struct Sandbox {
    key: SigningKey,
    metered: Runtime,
    unmetered: Runtime,
    tokio: tokio::runtime::Runtime,
}

impl Sandbox {
    fn new() -> Sandbox {
        let key = SigningKey::from_bytes(&[7; 32]);
        let runtime = |unmetered: bool| {
            let mut trusted = TrustedKeys::new();
            trusted.add(key.verifying_key());
            Runtime::new(RuntimeConfig {
                trusted_keys: trusted,
                max_concurrent_runs: 8,
                unmetered,
                ..RuntimeConfig::default()
            })
            .expect("runtime starts")
        };
        let (metered, unmetered) = (runtime(false), runtime(true));
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Sandbox {
            key,
            metered,
            unmetered,
            tokio,
        }
    }

    /// Parse + check + lower + sign.
    fn artifact(&self, source: &str) -> Vec<u8> {
        let checked = check_file(SourceFile::new("bench.avap", source), &NoIncludes);
        assert_eq!(
            checked.error_count(),
            0,
            "bench program has errors: {:?}",
            checked.diagnostics
        );
        compile(&checked, Some(&self.key)).bytes
    }

    fn run(&self, runtime: &Runtime, module: &LoadedModule) -> RunReport {
        let input = RunInput {
            request: Request::default(),
            limits: Limits::CLI,
            ..RunInput::default()
        };
        self.tokio.block_on(runtime.run(module, input))
    }

    /// Load `source` into `runtime` and check one run's `result[key]`.
    fn load_checked(&self, runtime: &Runtime, source: &str, key: &str, want: i64) -> Arc<LoadedModule> {
        let module = runtime.load(&self.artifact(source)).expect("artifact loads");
        let report = self.run(runtime, &module);
        assert_eq!(report.http_status, 200, "{}", report.envelope);
        assert_eq!(
            report.envelope.json()["result"][key].as_i64(),
            Some(want),
            "{}",
            report.envelope
        );
        module
    }
}

/// A hand-written wasm module in wasmtime, with or without fuel and epochs.
struct IdealWasm {
    engine: wasmtime::Engine,
    module: wasmtime::Module,
    metered: bool,
}

impl IdealWasm {
    fn new(metered: bool) -> IdealWasm {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(metered).epoch_interruption(metered);
        let engine = wasmtime::Engine::new(&config).expect("engine");
        let wasm = wat::parse_str(IDEAL_WAT).expect("valid WAT");
        let module = wasmtime::Module::new(&engine, wasm).expect("module compiles");
        IdealWasm {
            engine,
            module,
            metered,
        }
    }

    /// A fresh store and instance, then one call.
    fn run(&self) -> i64 {
        let mut store = wasmtime::Store::new(&self.engine, ());
        if self.metered {
            store.set_fuel(u64::MAX / 2).expect("fuel is on");
            store.set_epoch_deadline(1 << 40);
        }
        let instance = wasmtime::Instance::new(&mut store, &self.module, &[]).expect("instantiates");
        let run = instance
            .get_typed_func::<(), i64>(&mut store, "run")
            .expect("exports run");
        run.call(&mut store, ()).expect("runs")
    }
}

fn benches(c: &mut Criterion, sandbox: &Sandbox) {
    let want_loop = native_loop(LOOP_N);
    let want_fib = fib(FIB_N);

    // 1. Compile: AVAP → signed wasm, then wasmtime's compilation of it.
    let order = sandbox.artifact(ORDER_SCRIPT);
    let report = sandbox.run(
        &sandbox.metered,
        &sandbox.metered.load(&order).expect("order script loads"),
    );
    assert_eq!(report.envelope.json()["status"], true, "{}", report.envelope);
    let mut g = c.benchmark_group("compile");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("100_lines", |b| b.iter(|| sandbox.artifact(black_box(ORDER_SCRIPT))));
    g.sample_size(20);
    g.bench_function("wasmtime_100_lines", |b| {
        b.iter(|| wasmtime::Module::new(sandbox.metered.engine(), black_box(&order)).expect("module compiles"));
    });
    g.finish();

    // 2.–4. Runs.
    let hello = sandbox.metered.load(&sandbox.artifact(HELLO)).expect("hello loads");
    let report = sandbox.run(&sandbox.metered, &hello);
    assert_eq!(
        report.envelope.json()["result"]["greeting"],
        "Hello",
        "{}",
        report.envelope
    );
    let loop_metered = sandbox.load_checked(&sandbox.metered, LOOP_ARITH, "s", want_loop);
    let loop_unmetered = sandbox.load_checked(&sandbox.unmetered, LOOP_ARITH, "s", want_loop);
    let fib_metered = sandbox.load_checked(&sandbox.metered, FIB, "r", want_fib);
    let fib_unmetered = sandbox.load_checked(&sandbox.unmetered, FIB, "r", want_fib);

    let mut g = c.benchmark_group("run");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("hello_cached", |b| b.iter(|| sandbox.run(&sandbox.metered, &hello)));
    g.sample_size(10);
    g.bench_function("loop_arith", |b| {
        b.iter(|| sandbox.run(&sandbox.metered, &loop_metered));
    });
    g.bench_function("loop_arith_unmetered", |b| {
        b.iter(|| sandbox.run(&sandbox.unmetered, &loop_unmetered));
    });
    g.bench_function("fib_27", |b| b.iter(|| sandbox.run(&sandbox.metered, &fib_metered)));
    g.bench_function("fib_27_unmetered", |b| {
        b.iter(|| sandbox.run(&sandbox.unmetered, &fib_unmetered));
    });
    g.finish();

    // 5. Baselines.
    let (ideal, ideal_metered) = (IdealWasm::new(false), IdealWasm::new(true));
    assert_eq!(ideal.run(), want_loop);
    assert_eq!(ideal_metered.run(), want_loop);
    let mut g = c.benchmark_group("baseline");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    g.bench_function("ideal_wasm_loop", |b| b.iter(|| ideal.run()));
    g.bench_function("ideal_wasm_loop_metered", |b| b.iter(|| ideal_metered.run()));
    g.bench_function("native_rust_loop", |b| b.iter(|| native_loop(black_box(LOOP_N))));
    g.finish();
}

/// Where criterion writes its results; passed to criterion too, so both agree.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    // target/release/deps/runtime-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(|target| target.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Median in seconds of `group/name` from this run (`None` when it did not
/// run this time, e.g. filtered out).
fn median(dir: &Path, id: &str, since: SystemTime) -> Option<f64> {
    let path = dir.join(id).join("new").join("estimates.json");
    let fresh = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= since);
    if !fresh {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64().map(|ns| ns / 1e9)
}

/// Run a `CPython` program that prints `<result> <best seconds>`.
fn cpython(program: &str, want: i64) -> Option<f64> {
    peer("python3", &["-c", program], want)
}

/// Run a peer interpreter on a program that prints `<result> <best seconds>`;
/// `None` when the interpreter is not installed.
fn peer(cmd: &str, args: &[&str], want: i64) -> Option<f64> {
    let output = Command::new(cmd).args(args).output().ok()?;
    if !output.status.success() {
        eprintln!("{cmd} failed: {}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace();
    let result: i64 = fields.next()?.parse().ok()?;
    assert_eq!(result, want, "{cmd} computed a different result");
    fields.next()?.parse().ok()
}

/// The same workloads in Lua (5.4 and `LuaJIT` read the same text): locals,
/// `os.clock` best of 3. Lua 5.4 has 64-bit integers; `LuaJIT` computes in
/// doubles, which is exact for these values.
const LUA_LOOP: &str = "
local best
local s
for _ = 1, 3 do
  local t = os.clock()
  s = 0
  for i = 1, 10000000 do
    s = s + i * i % 7
  end
  local d = os.clock() - t
  if best == nil or d < best then best = d end
end
print(string.format('%d %.9f', s, best))
";

const LUA_FIB: &str = "
local function fib(n)
  if n < 2 then return n end
  return fib(n - 1) + fib(n - 2)
end
local best
local r
for _ = 1, 3 do
  local t = os.clock()
  r = fib(27)
  local d = os.clock() - t
  if best == nil or d < best then best = d end
end
print(string.format('%d %.9f', r, best))
";

fn fmt_time(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if s >= 1.0 => format!("{s:.3} s"),
        Some(s) if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        Some(s) => format!("{:.2} µs", s * 1e6),
        None => "n/a".to_owned(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".to_owned(),
    }
}

fn summary(dir: &Path, since: SystemTime, artifact_bytes: usize) {
    let m = |id: &str| median(dir, id, since);
    let compile = m("compile/100_lines");
    let wasmtime = m("compile/wasmtime_100_lines");
    let hello = m("run/hello_cached");
    let (lp, lp_un) = (m("run/loop_arith"), m("run/loop_arith_unmetered"));
    let (fb, fb_un) = (m("run/fib_27"), m("run/fib_27_unmetered"));
    let (ideal, ideal_m) = (m("baseline/ideal_wasm_loop"), m("baseline/ideal_wasm_loop_metered"));
    let native = m("baseline/native_rust_loop");
    let py_version = Command::new("python3")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let (py_top, py_fn, py_fib) = if py_version.is_some() {
        let want = native_loop(LOOP_N);
        (
            cpython(PY_LOOP_TOP_LEVEL, want),
            cpython(PY_LOOP_FUNCTION, want),
            cpython(PY_FIB, fib(FIB_N)),
        )
    } else {
        (None, None, None)
    };
    let py = py_version.unwrap_or_else(|| "python3 not on PATH".to_owned());
    let want = native_loop(LOOP_N);
    let lua = |cmd: &str| {
        (
            peer(cmd, &["-e", LUA_LOOP], want),
            peer(cmd, &["-e", LUA_FIB], fib(FIB_N)),
        )
    };
    let (lua_loop, lua_fib) = lua("lua5.4");
    let (jit_loop, jit_fib) = lua("luajit");
    let lua_note = if lua_loop.is_some() {
        "lua5.4 (Debian)"
    } else {
        "lua5.4 not on PATH (apt-get install lua5.4)"
    };
    let jit_note = if jit_loop.is_some() {
        "luajit (Debian)"
    } else {
        "luajit not on PATH (apt-get install luajit)"
    };

    let mut t = String::new();
    let mut row = |name: &str, time: Option<f64>, note: &str| {
        let _ = writeln!(t, "| {name:<36} | {:>10} | {note}", fmt_time(time));
    };
    let artifact = format!("goal < 2 ms; artifact {artifact_bytes} bytes");
    row("compile/100_lines", compile, &artifact);
    row(
        "compile/wasmtime_100_lines",
        wasmtime,
        "wasmtime Module::new of that artifact",
    );
    row("run/hello_cached", hello, "goal < 20 µs");
    row("run/loop_arith", lp, "");
    row("run/loop_arith_unmetered", lp_un, "");
    row("run/fib_27", fb, "");
    row("run/fib_27_unmetered", fb_un, "");
    row("baseline/ideal_wasm_loop", ideal, "");
    row("baseline/ideal_wasm_loop_metered", ideal_m, "");
    row("baseline/native_rust_loop", native, "");
    row("CPython loop_arith, top level", py_top, &py);
    row("CPython loop_arith, in a function", py_fn, &py);
    row("CPython fib(27)", py_fib, &py);
    row("Lua 5.4 loop_arith", lua_loop, lua_note);
    row("Lua 5.4 fib(27)", lua_fib, lua_note);
    row("LuaJIT loop_arith", jit_loop, jit_note);
    row("LuaJIT fib(27)", jit_fib, jit_note);

    let mut r = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(r, "| {name:<52} | {value}");
    };
    line("loop_arith / ideal_wasm_loop_metered", ratio(lp, ideal_m));
    line("loop_arith_unmetered / ideal_wasm_loop", ratio(lp_un, ideal));
    line("loop_arith / native_rust_loop", ratio(lp, native));
    line("loop_arith metered / unmetered (sandbox cost)", ratio(lp, lp_un));
    line("fib_27 metered / unmetered (sandbox cost)", ratio(fb, fb_un));
    line("ideal wasm metered / unmetered", ratio(ideal_m, ideal));
    line("CPython top level / loop_arith (goal >= 50x)", ratio(py_top, lp));
    line("CPython function / loop_arith", ratio(py_fn, lp));
    line("CPython function / ideal_wasm_loop_metered", ratio(py_fn, ideal_m));
    line("CPython / fib_27", ratio(py_fib, fb));
    line("Lua 5.4 / loop_arith (goal >= 2x)", ratio(lua_loop, lp));
    line("Lua 5.4 / fib_27 (goal > 1x)", ratio(lua_fib, fb));
    line("LuaJIT / loop_arith (goal >= 0.5x)", ratio(jit_loop, lp));
    line("LuaJIT / fib_27", ratio(jit_fib, fb));

    println!("\n== Summary: criterion medians of this run; peers best of 3 ==\n{t}\n== Ratios ==\n{r}");
}

fn main() {
    let since = SystemTime::now();
    let dir = criterion_dir();
    let mut c = Criterion::default().output_directory(&dir).configure_from_args();
    let sandbox = Sandbox::new();
    let artifact_bytes = sandbox.artifact(ORDER_SCRIPT).len();
    benches(&mut c, &sandbox);
    c.final_summary();
    // `cargo test --benches` runs each benchmark once, without `--bench`:
    // there is nothing to summarise then.
    if std::env::args().any(|a| a == "--bench") {
        summary(&dir, since, artifact_bytes);
    }
}
