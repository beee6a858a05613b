//! Fuzz target `run`: any input that compiles also *runs* to a response
//! under tight limits — a result or a known error kind, never a panic, an
//! internal error, a run past its time budget, a heap past its memory limit,
//! or a process whose RSS outgrows its bound.
//!
//! Seed it with the hostile and conformance corpora, mutate with the AVAP
//! dictionary:
//!
//! ```text
//! cd fuzz && mkdir -p corpus/run && cp ../tests/adversarial/*.avap ../tests/conformance/*.avap corpus/run/
//! cargo fuzz run run -s none -- -dict=dict/avap.dict -max_len=4096 -rss_limit_mb=4096
//! ```
//!
//! (`RUSTC_BOOTSTRAP=1` lets the stable toolchain build it.) Hours run and
//! findings are logged in docs/security.md, "Fuzzing".

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, compile};
use avap_hostfns::artifact::{SigningKey, TrustedKeys};
use avap_runtime::{Limits, RunInput, Runtime, RuntimeConfig};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    fuel: 5_000_000,
    time_ms: 300,
    memory_bytes: 16 << 20,
    stack_bytes: 64 << 10,
    output_bytes: 256 << 10,
};

const KINDS: &[&str] = &[
    "NameError",
    "TypeError",
    "ValueError",
    "ZeroDivisionError",
    "IndexError",
    "KeyError",
    "IntegerOverflow",
    "UserError",
    "NotFound",
    "MethodNotAllowed",
    "TimeoutError",
    "CapabilityDenied",
    "NotAvailable",
    "FuelExhausted",
    "TimeLimit",
    "MemoryLimit",
    "StackOverflow",
    "OutputLimit",
];

struct Fixture {
    key: SigningKey,
    runtime: Runtime,
    rt: tokio::runtime::Runtime,
    base_rss: u64,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut trusted = TrustedKeys::new();
        trusted.add(key.verifying_key());
        let runtime = Runtime::new(RuntimeConfig {
            trusted_keys: trusted,
            max_concurrent_runs: 2,
            ..RuntimeConfig::default()
        })
        .expect("runtime starts");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        Fixture {
            key,
            runtime,
            rt,
            base_rss: rss(),
        }
    })
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat`: what
/// the run's time bound is checked against, so a busy machine (other
/// processes delaying this one) does not look like a run overstaying.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns: u64 = stat.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    Duration::from_nanos(ns)
}

/// This process's resident set, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let checked = check_file(SourceFile::from_bytes("fuzz.avap", data), &NoIncludes);
    if checked.error_count() > 0 {
        return;
    }
    let artifact = compile(&checked, Some(&f.key)).bytes;
    let module = f.runtime.load(&artifact).expect("a compiled program loads");
    let started = Instant::now();
    let cpu_before = thread_cpu();
    let input = RunInput {
        limits: LIMITS,
        ..RunInput::default()
    };
    let report = f.rt.block_on(f.runtime.run(&module, input));
    let wall = started.elapsed();
    let cpu = thread_cpu().saturating_sub(cpu_before);
    let text = String::from_utf8_lossy(data);
    if report.envelope["status"] != true {
        let kind = report.envelope["error"]["kind"].as_str().unwrap_or("");
        assert!(KINDS.contains(&kind), "unexpected error {} for\n{text}", report.envelope);
    }
    assert!(
        cpu < Duration::from_millis(2 * LIMITS.time_ms + 200),
        "took {cpu:?} of CPU ({wall:?} of wall time) for a {} ms budget:\n{text}",
        LIMITS.time_ms
    );
    assert!(
        report.usage.peak_memory_bytes <= LIMITS.memory_bytes,
        "heap peak {} over the limit:\n{text}",
        report.usage.peak_memory_bytes
    );
    // The process as a whole: base + 1.5 × the limit, plus room for the
    // compiled modules the runtime caches and the fuzzer's own corpus.
    let bound = f.base_rss + LIMITS.memory_bytes * 3 / 2 + (512 << 20);
    assert!(rss() <= bound, "RSS {} over {bound}:\n{text}", rss());
});
