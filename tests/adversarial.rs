//! The hostile corpus (`tests/adversarial/`, format in its README): every
//! attack runs through `avap run` in a process of its own, and must end with
//! its expected outcome, within twice its time budget, and with a peak RSS
//! of at most the base RSS plus 1.5 × its memory limit (plus the compile
//! budget for the compile-shape attacks).

// `wait4` (the only way to get one child's peak RSS) is a libc call.
#![allow(unsafe_code)]

#[path = "adversarial/corpus.rs"]
mod corpus;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use corpus::Case;

/// What Cranelift may take for the worst script within `max_script_bytes`
/// (lowering's shape limits; BENCHMARKS.md, "Compile budget").
const COMPILE_BUDGET_MS: u64 = 2_000;
const COMPILE_BUDGET_BYTES: u64 = 512 << 20;

/// A finished `avap run`.
struct Outcome {
    /// `ok`, the error kind, or `CompileError E0xxx`.
    kind: String,
    /// The line the error points at.
    line: Option<u64>,
    envelope: String,
    wall: Duration,
    peak_rss: u64,
}

/// Run `file` with `limits`; its peak RSS from `wait4`.
fn run(file: &std::path::Path, limits: &str) -> Outcome {
    let start = Instant::now();
    #[allow(clippy::zombie_processes)] // reaped by `wait4` below, which also reads its peak RSS
    let child = Command::new(env!("CARGO_BIN_EXE_avap"))
        .arg("run")
        .arg(file)
        // Compiled in the process, as before the module cache: what is
        // measured includes Cranelift, and attacks stay out of the cache.
        .arg("--no-cache")
        .arg("--limits")
        .arg(limits)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start avap run");
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    // Read stdout before waiting so a large envelope cannot block the child.
    let mut stdout = child.stdout.expect("stdout");
    let mut envelope = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut envelope).expect("read stdout");
    let mut status = 0;
    // SAFETY: plain FFI; `usage` is a valid, zeroed `rusage` we own, and the
    // child is ours and not waited for anywhere else (we never call
    // `Child::wait`).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let wall = start.elapsed();
    let peak_rss = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    let json: serde_json::Value = serde_json::from_str(&envelope).unwrap_or(serde_json::Value::Null);
    // A result nested at the limit is too deep for serde_json's own limit;
    // the envelope starts with its status.
    let succeeded = json["status"] == true || envelope.starts_with("{\n  \"status\": true,");
    let kind = if succeeded {
        "ok".to_owned()
    } else {
        let kind = json["error"]["kind"].as_str().unwrap_or("<no envelope>").to_owned();
        if kind == "CompileError" {
            let code = json["error"]["message"]
                .as_str()
                .and_then(|m| m.split(':').next())
                .unwrap_or("?");
            format!("CompileError {code}")
        } else {
            kind
        }
    };
    Outcome {
        kind,
        line: json["error"]["line"].as_u64(),
        envelope,
        wall,
        peak_rss,
    }
}

fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("adversarial");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn every_attack_ends_with_its_kind_within_its_time_and_memory() {
    let cases = corpus::load();
    assert!(cases.len() >= 40, "the corpus has {} attacks", cases.len());
    let dir = scratch_dir();

    // The base: what a trivial run holds (binary, runtime, pool), at its worst.
    let trivial = dir.join("trivial.avap");
    std::fs::write(&trivial, "x = 1\naddResult(x)\n").expect("write");
    let base = (0..3)
        .map(|_| run(&trivial, "memory_mb=64").peak_rss)
        .max()
        .unwrap_or(0);

    let queue = Mutex::new(cases.iter().collect::<Vec<&Case>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        // Two at a time: this machine has two cores.
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let Some(case) = queue.lock().expect("queue").pop() else {
                        break;
                    };
                    let file = dir.join(format!("{}.avap", case.name));
                    std::fs::write(&file, &case.script).expect("write case");
                    let outcome = run(&file, &case.limits);
                    results.lock().expect("results").push((case, outcome));
                }
            });
        }
    });

    let mut results = results.into_inner().expect("results");
    results.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut failures = Vec::new();
    println!("base RSS {:.1} MiB", mib(base));
    println!("{:<40} {:<22} {:>9} {:>10}", "attack", "outcome", "wall ms", "peak MiB");
    for (case, outcome) in &results {
        println!(
            "{:<40} {:<22} {:>9.0} {:>10.1}",
            case.name,
            outcome.kind,
            outcome.wall.as_secs_f64() * 1000.0,
            mib(outcome.peak_rss)
        );
        let compile = case.name.starts_with("compile_");
        let time_budget = case.time_ms + if compile { COMPILE_BUDGET_MS } else { 0 };
        let memory_bound = base + case.memory_bytes * 3 / 2 + if compile { COMPILE_BUDGET_BYTES } else { 0 };
        if outcome.kind != case.expect {
            let envelope: String = outcome.envelope.chars().take(600).collect();
            failures.push(format!(
                "{} ({}): expected {}, got {} — {envelope}",
                case.name, case.attack, case.expect, outcome.kind
            ));
        }
        if case.line.is_some() && outcome.line != case.line {
            failures.push(format!(
                "{}: the error points at line {:?}, not line {:?}",
                case.name, outcome.line, case.line
            ));
        }
        if outcome.wall > Duration::from_millis(2 * time_budget) {
            failures.push(format!(
                "{}: took {} ms, more than twice its {time_budget} ms budget",
                case.name,
                outcome.wall.as_millis()
            ));
        }
        if outcome.peak_rss > memory_bound {
            failures.push(format!(
                "{}: peak RSS {:.1} MiB over its bound of {:.1} MiB (base {:.1} + 1.5 × {} MiB{})",
                case.name,
                mib(outcome.peak_rss),
                mib(memory_bound),
                mib(base),
                case.memory_bytes >> 20,
                if compile { " + the compile budget" } else { "" }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[allow(clippy::cast_precision_loss)] // display only
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}
