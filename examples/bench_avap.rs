//! Our side of the peer benchmark suite (`bench/run.sh`, issue 8).
//!
//! For every `bench/workloads/NAME.avap` it measures, in this process:
//! * `compile`: AVAP → signed wasm (parse, check, lower, sign);
//! * `wasmtime`: wasmtime's compilation of that artifact (`Module::new`);
//! * `avap`: a cached run with the production limits (fuel + epoch checks on):
//!   a fresh store, instantiation, constants, the script, the response
//!   envelope and its JSON text — what a server sends back;
//! * `avap_unmetered`: the same with fuel and epoch checks off
//!   (`RuntimeConfig::unmetered`), so `avap / avap_unmetered` is the cost of
//!   sandboxing.
//!
//! and, as the reference for that cost, a hand-written wasm loop doing
//! `loop_arith` on two `i64` locals in wasmtime with fuel + epochs off and on
//! (`wasm_ideal`, `wasm_ideal_metered`).
//!
//! A workload that reads the request (`addParam`) gets the JSON body in
//! `bench/workloads/NAME.body.json` when that file exists (`loop_param`: the
//! bound of `loop_arith`'s loop, so the two compare a request-bound loop with
//! a constant-bound one, issue 20); the others get an empty request.
//!
//! Every run's result is checked against `bench/workloads/expected.txt`
//! before anything is timed. Output: one line per figure, read by
//! `bench/report.py`:
//!
//! ```text
//! RESULT <implementation> <workload> <result> <median seconds> <samples>
//! COMPILE <workload> <avap compile s> <wasmtime compile s> <artifact bytes>
//! ```
//!
//! Usage: `cargo run --release --example bench_avap -- [--quick] [--only NAME]`.

/// The allocator of the `avap` binary (src/main.rs), so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, compile};
use avap_hostfns::Request;
use avap_hostfns::artifact::{SigningKey, TrustedKeys};
use avap_runtime::{Limits, LoadedModule, RunInput, RunReport, Runtime, RuntimeConfig};

/// The `loop_arith` workload as a compiler with static types would emit it.
const IDEAL_WAT: &str = include_str!("../bench/ideal_loop.wat");

/// How long to sample one figure: the same rule as the peers' harnesses
/// (`bench/peers/*`): one warm-up call, then samples until both the minimum
/// count and the time budget are reached (or the maximum count).
#[derive(Debug, Clone, Copy)]
struct Sampling {
    budget: Duration,
    min_samples: usize,
    max_samples: usize,
}

impl Sampling {
    fn new(quick: bool) -> Sampling {
        if quick {
            Sampling {
                budget: Duration::from_millis(300),
                min_samples: 3,
                max_samples: 200,
            }
        } else {
            Sampling {
                budget: Duration::from_secs(2),
                min_samples: 5,
                max_samples: 1000,
            }
        }
    }

    /// Median seconds per call of `work`. A sample times a batch of calls
    /// sized so it lasts at least a millisecond (microsecond workloads).
    fn median(self, mut work: impl FnMut()) -> (f64, usize) {
        work();
        let mut batch = 1u32;
        loop {
            let start = Instant::now();
            for _ in 0..batch {
                work();
            }
            if start.elapsed() >= Duration::from_millis(1) || batch >= 1 << 20 {
                break;
            }
            batch *= 2;
        }
        let started = Instant::now();
        let mut samples = Vec::new();
        while samples.len() < self.max_samples && (samples.len() < self.min_samples || started.elapsed() < self.budget)
        {
            let start = Instant::now();
            for _ in 0..batch {
                work();
            }
            samples.push(start.elapsed().as_secs_f64() / f64::from(batch));
        }
        samples.sort_by(f64::total_cmp);
        (samples[samples.len() / 2], samples.len())
    }
}

/// The two runtimes (limits on and off), a key both trust, one tokio runtime.
struct Sandbox {
    key: SigningKey,
    metered: Runtime,
    unmetered: Runtime,
    tokio: tokio::runtime::Runtime,
}

impl Sandbox {
    fn new() -> Result<Sandbox> {
        let key = SigningKey::from_bytes(&[8; 32]);
        let runtime = |unmetered: bool| {
            let mut trusted = TrustedKeys::new();
            trusted.add(key.verifying_key());
            Runtime::new(RuntimeConfig {
                trusted_keys: trusted,
                unmetered,
                ..RuntimeConfig::default()
            })
            .context("cannot start the runtime")
        };
        Ok(Sandbox {
            metered: runtime(false)?,
            unmetered: runtime(true)?,
            key,
            tokio: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start tokio")?,
        })
    }

    /// Parse + check + lower + sign.
    fn artifact(&self, name: &str, source: &str) -> Result<Vec<u8>> {
        let checked = check_file(SourceFile::new(name, source), &NoIncludes);
        ensure!(
            checked.error_count() == 0,
            "{name} does not compile: {:?}",
            checked.diagnostics
        );
        Ok(compile(&checked, Some(&self.key)).bytes)
    }

    /// One run, the envelope serialised as a server would send it.
    fn run(&self, runtime: &Runtime, module: &LoadedModule, request: &Request) -> (RunReport, String) {
        let input = RunInput {
            request: request.clone(),
            limits: Limits::CLI,
            ..RunInput::default()
        };
        let report = self.tokio.block_on(runtime.run(module, input));
        let text = report.envelope.to_string();
        (report, text)
    }
}

/// The workload's result as every implementation prints it: the value of
/// `r`, or the length of its compact JSON text when it is a list or a dict.
fn result_text(report: &RunReport) -> Result<String> {
    ensure!(report.http_status == 200, "the run failed: {}", report.envelope);
    let r = &report.envelope.json()["result"]["r"];
    Ok(match r {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => r.to_string().len().to_string(),
        other => other.to_string(),
    })
}

/// `bench/workloads/expected.txt`: `NAME RESULT` per line, `#` comments.
fn expected(dir: &Path) -> Result<Vec<(String, String)>> {
    let path = dir.join("expected.txt");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split_once(' ')
                .map(|(n, r)| (n.to_owned(), r.trim().to_owned()))
                .with_context(|| format!("{}: bad line {l:?} (want NAME RESULT)", path.display()))
        })
        .collect()
}

/// The request a workload runs with: its `NAME.body.json` as the JSON body,
/// or an empty request.
fn request(dir: &Path, name: &str) -> Result<Request> {
    let path = dir.join(format!("{name}.body.json"));
    if !path.exists() {
        return Ok(Request::default());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let json = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    Ok(Request {
        json: Some(json),
        ..Request::default()
    })
}

fn load_checked(
    sandbox: &Sandbox,
    runtime: &Runtime,
    artifact: &[u8],
    name: &str,
    want: &str,
    request: &Request,
) -> Result<Arc<LoadedModule>> {
    let module = runtime
        .load(artifact)
        .with_context(|| format!("{name}: the artifact does not load"))?;
    let got = result_text(&sandbox.run(runtime, &module, request).0).with_context(|| name.to_owned())?;
    ensure!(got == want, "{name}: result {got}, expected {want}");
    Ok(module)
}

fn bench_workload(sandbox: &Sandbox, sampling: Sampling, dir: &Path, name: &str, want: &str) -> Result<()> {
    let file = format!("{name}.avap");
    let source = std::fs::read_to_string(dir.join(&file)).with_context(|| format!("cannot read {file}"))?;
    let artifact = sandbox.artifact(&file, &source)?;
    let request = request(dir, name)?;
    let metered = load_checked(sandbox, &sandbox.metered, &artifact, name, want, &request)?;
    let unmetered = load_checked(sandbox, &sandbox.unmetered, &artifact, name, want, &request)?;

    let (compile_s, _) = sampling.median(|| {
        std::hint::black_box(sandbox.artifact(&file, &source).ok());
    });
    let (wasmtime_s, _) = sampling.median(|| {
        std::hint::black_box(wasmtime::Module::new(sandbox.metered.engine(), &artifact).ok());
    });
    println!("COMPILE {name} {compile_s:.9} {wasmtime_s:.9} {}", artifact.len());
    for (label, runtime, module) in [
        ("avap", &sandbox.metered, &metered),
        ("avap_unmetered", &sandbox.unmetered, &unmetered),
    ] {
        let (median, samples) = sampling.median(|| {
            std::hint::black_box(sandbox.run(runtime, module, &request));
        });
        println!("RESULT {label} {name} {want} {median:.9} {samples}");
    }
    Ok(())
}

/// The hand-written loop, in a fresh store per call like our runs.
fn bench_ideal_loop(sampling: Sampling, want: &str) -> Result<()> {
    let wasm = wat::parse_str(IDEAL_WAT).context("invalid WAT")?;
    for metered in [false, true] {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(metered).epoch_interruption(metered);
        let engine = wasmtime::Engine::new(&config).map_err(|e| anyhow!("wasmtime engine: {e}"))?;
        let module =
            wasmtime::Module::new(&engine, &wasm).map_err(|e| anyhow!("the WAT loop does not compile: {e}"))?;
        let run = || -> Result<i64> {
            let mut store = wasmtime::Store::new(&engine, ());
            if metered {
                store.set_fuel(u64::MAX / 2)?;
                store.set_epoch_deadline(1 << 40);
            }
            let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
            let run = instance.get_typed_func::<(), i64>(&mut store, "run")?;
            Ok(run.call(&mut store, ())?)
        };
        let got = run()?.to_string();
        ensure!(got == want, "wasm_ideal: result {got}, expected {want}");
        let (median, samples) = sampling.median(|| {
            std::hint::black_box(run().ok());
        });
        let label = if metered { "wasm_ideal_metered" } else { "wasm_ideal" };
        println!("RESULT {label} loop_arith {want} {median:.9} {samples}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut quick = false;
    let mut only = None;
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/workloads");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => only = Some(args.next().context("--only needs a workload name")?),
            "--workloads" => dir = PathBuf::from(args.next().context("--workloads needs a directory")?),
            _ => bail!("usage: bench_avap [--quick] [--only NAME] [--workloads DIR]"),
        }
    }
    let sampling = Sampling::new(quick);
    let sandbox = Sandbox::new()?;
    for (name, want) in expected(&dir)? {
        if only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        bench_workload(&sandbox, sampling, &dir, &name, &want)?;
        if name == "loop_arith" {
            bench_ideal_loop(sampling, &want)?;
        }
    }
    Ok(())
}
