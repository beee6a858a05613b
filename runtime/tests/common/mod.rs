//! Test helpers: compile AVAP source with the real compiler, sign it with a
//! test key, load and run it in a runtime that trusts that key.

#![allow(dead_code)]

use std::sync::Arc;

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, compile};
use avap_hostfns::Request;
use avap_hostfns::artifact::{SigningKey, TrustedKeys};
use avap_runtime::{Limits, LoadedModule, RunInput, RunReport, Runtime, RuntimeConfig};

pub fn test_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn runtime_trusting(key: &SigningKey) -> Runtime {
    let mut trusted = TrustedKeys::new();
    trusted.add(key.verifying_key());
    Runtime::new(RuntimeConfig {
        trusted_keys: trusted,
        max_concurrent_runs: 8,
        ..RuntimeConfig::default()
    })
    .expect("runtime starts")
}

/// Compile `source` (no includes) and sign it with `key`.
pub fn artifact(source: &str, key: Option<&SigningKey>) -> Vec<u8> {
    let checked = check_file(SourceFile::new("test.avap", source), &NoIncludes);
    assert_eq!(
        checked.error_count(),
        0,
        "test program has errors: {:?}",
        checked.diagnostics
    );
    compile(&checked, key).bytes
}

pub struct Harness {
    pub runtime: Runtime,
    pub key: SigningKey,
}

impl Harness {
    pub fn new() -> Harness {
        let key = test_key(7);
        Harness {
            runtime: runtime_trusting(&key),
            key,
        }
    }

    pub fn load(&self, source: &str) -> Arc<LoadedModule> {
        self.runtime
            .load(&artifact(source, Some(&self.key)))
            .expect("artifact loads")
    }

    pub fn run_with(&self, source: &str, limits: Limits) -> RunReport {
        let module = self.load(source);
        block_on(self.runtime.run(
            &module,
            RunInput {
                request: Request::default(),
                limits,
                ..RunInput::default()
            },
        ))
    }

    pub fn run(&self, source: &str) -> RunReport {
        self.run_with(source, Limits::CLI)
    }

    /// Run with `json` as the request's JSON body (what `addParam` reads).
    pub fn run_with_body(&self, source: &str, json: serde_json::Value) -> RunReport {
        let module = self.load(source);
        block_on(self.runtime.run(
            &module,
            RunInput {
                request: Request {
                    json: Some(json),
                    ..Request::default()
                },
                limits: Limits::CLI,
                ..RunInput::default()
            },
        ))
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

pub fn error_kind(r: &RunReport) -> &str {
    r.envelope.json()["error"]["kind"].as_str().unwrap_or("<no error>")
}
