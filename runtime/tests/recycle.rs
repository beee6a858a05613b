//! Instances reused across runs (`recycle.rs`): a run on a recycled
//! instance answers exactly as on a fresh one, whatever the run before it
//! left in memory, globals or host state; only runs whose calls all
//! returned give their instance back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use avap_hostfns::Request;
use avap_runtime::{Limits, LoadedModule, RunInput, RunReport, Runtime, RuntimeConfig};
use common::{artifact, block_on, error_kind, test_key};

/// A script whose first run (`{"first": "yes"}`) sets the response
/// status, top-level variables and a registered route, and whose later
/// runs read them without setting them.
const LEAKY: &str = r#"addParam(first, first)
if(first, "yes", "=")
    _status = 418
    secret = 41
    token = "s3cr3t"
    bag = {"k": [1, 2, 3]}
end()
addResult(secret)
addResult(token)
addResult(bag)
"#;

/// A runtime trusting a test key, with `config`'s reuse settings, and
/// `source` loaded in it.
fn runtime_with(config: RuntimeConfig, source: &str) -> (Runtime, Arc<LoadedModule>) {
    let key = test_key(11);
    let mut trusted = avap_hostfns::artifact::TrustedKeys::new();
    trusted.add(key.verifying_key());
    let runtime = Runtime::new(RuntimeConfig {
        trusted_keys: trusted,
        max_concurrent_runs: 4,
        ..config
    })
    .expect("runtime starts");
    let module = runtime.load(&artifact(source, Some(&key))).expect("loads");
    (runtime, module)
}

fn leaky(warm_instances: u32) -> (Runtime, Arc<LoadedModule>) {
    runtime_with(
        RuntimeConfig {
            warm_instances,
            ..RuntimeConfig::default()
        },
        LEAKY,
    )
}

fn run(runtime: &Runtime, module: &LoadedModule, first: &str, limits: Limits) -> RunReport {
    block_on(runtime.run(
        module,
        RunInput {
            request: Request {
                json: Some(serde_json::json!({ "first": first })),
                ..Request::default()
            },
            limits,
            ..RunInput::default()
        },
    ))
}

/// What a client sees, without the run's elapsed time.
fn answer(r: &RunReport) -> (u16, serde_json::Value) {
    let mut json = r.envelope.json().clone();
    json.as_object_mut().expect("an object").remove("elapsed");
    (r.http_status, json)
}

#[test]
fn a_recycled_instance_answers_as_a_fresh_one() {
    let (fresh_runtime, fresh_module) = leaky(0);
    let want = answer(&run(&fresh_runtime, &fresh_module, "no", Limits::CLI));
    assert_eq!(want.0, 200, "a second run has no status of its own: {want:?}");
    assert!(!want.1.to_string().contains("s3cr3t"));

    let (runtime, module) = leaky(4);
    let first = run(&runtime, &module, "yes", Limits::CLI);
    assert_eq!(first.http_status, 418, "{}", first.envelope);
    assert!(first.envelope.to_string().contains("s3cr3t"));
    assert_eq!(runtime.idle_instances(), 1, "the first run gave its instance back");
    for _ in 0..3 {
        let again = run(&runtime, &module, "no", Limits::CLI);
        eprintln!("AGAIN {:?} WANT {:?}", answer(&again), want);
        assert_eq!(
            answer(&again),
            want,
            "a recycled instance kept something of the run before"
        );
        assert_eq!(runtime.idle_instances(), 1, "taken and given back");
    }
    assert_eq!(fresh_runtime.idle_instances(), 0, "warm_instances = 0 keeps none");
}

#[test]
fn a_run_that_hits_a_limit_drops_its_instance() {
    let (runtime, module) = leaky(4);
    let starved = run(
        &runtime,
        &module,
        "yes",
        Limits {
            fuel: 50,
            ..Limits::CLI
        },
    );
    assert_eq!(error_kind(&starved), "FuelExhausted", "{}", starved.envelope);
    assert_eq!(runtime.idle_instances(), 0, "a trapped instance is not reused");
    let ok = run(&runtime, &module, "no", Limits::CLI);
    assert_eq!(ok.http_status, 200, "{}", ok.envelope);
    assert_eq!(runtime.idle_instances(), 1);
}

#[test]
fn an_uncaught_script_error_still_gives_the_instance_back() {
    let (runtime, module) = runtime_with(RuntimeConfig::default(), "x = 1 / 0\naddResult(x)\n");
    for _ in 0..2 {
        let r = block_on(runtime.run(&module, RunInput::default()));
        assert_eq!(error_kind(&r), "ZeroDivisionError", "{}", r.envelope);
        assert_eq!(
            runtime.idle_instances(),
            1,
            "the call returned an error: its instance is reusable"
        );
    }
}

#[test]
fn a_cancelled_run_drops_its_instance() {
    let (runtime, module) = runtime_with(
        RuntimeConfig {
            epoch_tick: Duration::from_millis(1),
            ..RuntimeConfig::default()
        },
        "n = 0\nstartLoop(i, 1, 1000000000)\n    n = n + i\nendLoop()\naddResult(n)\n",
    );
    let limits = Limits {
        fuel: u64::MAX / 4,
        time_ms: 60_000,
        ..Limits::CLI
    };
    let run = runtime.run(
        &module,
        RunInput {
            limits,
            ..RunInput::default()
        },
    );
    let cut = block_on(async { tokio::time::timeout(Duration::from_millis(50), run).await });
    assert!(cut.is_err(), "the loop should still be running after 50 ms");
    assert_eq!(
        runtime.idle_instances(),
        0,
        "an instance dropped mid-call is not reused"
    );
}

#[test]
fn idle_instances_are_capped_across_modules() {
    let config = RuntimeConfig {
        warm_instances: 2,
        ..RuntimeConfig::default()
    };
    let (runtime, _) = runtime_with(config, "r = 0\naddResult(r)\n");
    let key = test_key(11);
    let modules: Vec<_> = (0..4)
        .map(|k| {
            runtime
                .load(&artifact(&format!("r = {k}\naddResult(r)\n"), Some(&key)))
                .expect("loads")
        })
        .collect();
    for module in &modules {
        let r = block_on(runtime.run(module, RunInput::default()));
        assert_eq!(r.http_status, 200, "{}", r.envelope);
    }
    assert_eq!(runtime.idle_instances(), 2, "no more than warm_instances are kept");
}
