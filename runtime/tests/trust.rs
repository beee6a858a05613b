//! The load path refuses unsigned, tampered, untrusted and over-privileged
//! artifacts before anything runs.

mod common;

use avap_hostfns::Capability;
use avap_hostfns::artifact::{ArtifactError, TrustedKeys, strip_signature};
use avap_runtime::{CapabilityPolicy, LoadError, Runtime, RuntimeConfig};
use common::{Harness, artifact, block_on, test_key};

const SRC: &str = "addVar(greeting, \"Hello\")\naddResult(greeting)\n";

#[test]
fn a_signed_artifact_from_a_trusted_key_runs() {
    let h = Harness::new();
    let module = h.runtime.load(&artifact(SRC, Some(&h.key))).expect("loads");
    let r = block_on(h.runtime.run(&module, avap_runtime::RunInput::default()));
    assert_eq!(r.envelope.json()["result"]["greeting"], "Hello");
}

#[test]
fn a_tampered_byte_is_refused() {
    let h = Harness::new();
    let good = artifact(SRC, Some(&h.key));
    // Every 7th byte, flipped: each variant must be refused.
    for at in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        assert!(h.runtime.load(&bad).is_err(), "tampered byte {at} was accepted");
    }
}

#[test]
fn a_stripped_signature_is_refused_unless_unsigned_is_allowed() {
    let h = Harness::new();
    let stripped = strip_signature(&artifact(SRC, Some(&h.key))).unwrap();
    match h.runtime.load(&stripped) {
        Err(LoadError::Artifact(ArtifactError::Unsigned)) => {}
        other => panic!("expected Unsigned, got {other:?}"),
    }
    let dev = Runtime::new(RuntimeConfig {
        allow_unsigned: true,
        ..RuntimeConfig::default()
    })
    .unwrap();
    assert!(dev.load(&stripped).is_ok());
}

#[test]
fn a_signature_by_an_unknown_key_is_refused() {
    let h = Harness::new();
    let other = test_key(9);
    match h.runtime.load(&artifact(SRC, Some(&other))) {
        Err(LoadError::Artifact(ArtifactError::UntrustedKey { .. })) => {}
        other => panic!("expected UntrustedKey, got {other:?}"),
    }
}

#[test]
fn an_import_of_a_denied_class_is_refused_at_load_with_command_and_line() {
    let key = test_key(3);
    let mut trusted = TrustedKeys::new();
    trusted.add(key.verifying_key());
    let policy = CapabilityPolicy::allow_all().deny(Capability::Random);
    let rt = Runtime::new(RuntimeConfig {
        trusted_keys: trusted,
        policy,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let src = "addVar(a, 1)\nrandomString(\"[A-Z]\", 8, token)\naddResult(token)\n";
    match rt.load(&artifact(src, Some(&key))) {
        Err(e @ LoadError::CapabilityDenied { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("randomString") && msg.contains("line 2") && msg.contains("random"),
                "{msg}"
            );
        }
        other => panic!("expected CapabilityDenied, got {other:?}"),
    }
}
