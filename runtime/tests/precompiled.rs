//! A `.cwasm` is native code: the runtime loads one only when a key it
//! trusts for native code sealed it for this engine, this artifact and
//! these exact bytes. Each refusal happens before `Module::deserialize`.

mod common;

use avap_hostfns::artifact::{SigningKey, TrustedKeys, key_id};
use avap_runtime::precompiled::{MAGIC, SealError, seal};
use avap_runtime::{LoadError, Runtime, RuntimeConfig};
use common::{artifact, block_on, test_key};

/// Only request-class commands.
const A: &str = "addParam(name, who)\naddResult(who)\n";
/// Reaches the network (`net`): what the swap attack smuggled under A's metadata.
const B: &str = "RequestGet(\"http://127.0.0.1:9/\", \"\", \"\", page)\naddResult(page)\n";

fn keys(list: &[&SigningKey]) -> TrustedKeys {
    let mut trusted = TrustedKeys::new();
    for key in list {
        trusted.add(key.verifying_key());
    }
    trusted
}

/// A fresh runtime (an empty module cache: a cached artifact would be
/// returned without looking at the `.cwasm`).
fn runtime(artifact_keys: &[&SigningKey], precompiled_keys: &[&SigningKey]) -> Runtime {
    Runtime::new(RuntimeConfig {
        trusted_keys: keys(artifact_keys),
        precompiled_keys: keys(precompiled_keys),
        max_concurrent_runs: 2,
        ..RuntimeConfig::default()
    })
    .expect("runtime starts")
}

fn seal_error(result: Result<std::sync::Arc<avap_runtime::LoadedModule>, LoadError>) -> SealError {
    match result {
        Err(LoadError::Seal(e)) => e,
        Err(other) => panic!("expected a seal refusal, got {other}"),
        Ok(_) => panic!("expected a seal refusal, but the .cwasm loaded"),
    }
}

/// Where the native code starts in a sealed `.cwasm`: after the magic,
/// three header lines and the 64-byte signature.
fn native_offset(cwasm: &[u8]) -> usize {
    let mut at = MAGIC.len();
    for _ in 0..3 {
        at += cwasm[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
    }
    at + 64
}

#[test]
fn a_sealed_cwasm_from_a_trusted_key_loads_and_runs() {
    let key = test_key(1);
    let a = artifact(A, Some(&key));
    let cwasm = runtime(&[&key], &[]).precompile(&a, &key).expect("precompiles");
    assert!(cwasm.starts_with(MAGIC));
    let rt = runtime(&[&key], &[&key]);
    let module = rt.load_precompiled(&a, &cwasm).expect("loads");
    assert_eq!(rt.modules_compiled(), 0, "loaded, not compiled");
    let input = avap_runtime::RunInput {
        request: avap_hostfns::Request {
            query: vec![("name".into(), "Pre".into())],
            ..avap_hostfns::Request::default()
        },
        ..avap_runtime::RunInput::default()
    };
    let report = block_on(rt.run(&module, input));
    assert_eq!(report.envelope.json()["result"]["who"], "Pre", "{}", report.envelope);
}

#[test]
fn a_serialized_module_is_sealed_like_a_precompiled_one() {
    let key = test_key(1);
    let a = artifact(A, Some(&key));
    let compiler = runtime(&[&key], &[]);
    let module = compiler.load(&a).expect("compiles");
    let cwasm = compiler.serialize(&module, &key).expect("serializes");
    runtime(&[&key], &[&key])
        .load_precompiled(&a, &cwasm)
        .expect("another runtime loads it");
    let stranger = test_key(2);
    assert_eq!(
        seal_error(runtime(&[&key], &[&stranger]).load_precompiled(&a, &cwasm)),
        SealError::UntrustedKey {
            key_id: key_id(&key.verifying_key())
        }
    );
}

#[test]
fn the_native_code_of_another_artifact_is_refused() {
    let key = test_key(1);
    let compiler = runtime(&[&key], &[]);
    let a = artifact(A, Some(&key));
    let b = artifact(B, Some(&key));
    let sealed_b = compiler.precompile(&b, &key).expect("precompiles");
    let sha_a = compiler.load(&a).unwrap().sha256().to_owned();
    let sha_b = compiler.load(&b).unwrap().sha256().to_owned();

    // B's valid seal presented with A.
    assert!(matches!(
        seal_error(runtime(&[&key], &[&key]).load_precompiled(&a, &sealed_b)),
        SealError::OtherArtifact { made_from, this } if made_from == sha_b && this == sha_a
    ));

    // B's native code with A's hash written in the header: the signature
    // covered B, so it does not verify for A.
    let header = String::from_utf8_lossy(&sealed_b[..native_offset(&sealed_b)]).into_owned();
    assert!(header.contains(&sha_b));
    let at = sealed_b
        .windows(sha_b.len())
        .position(|w| w == sha_b.as_bytes())
        .unwrap();
    let mut relabelled = sealed_b.clone();
    relabelled[at..at + sha_a.len()].copy_from_slice(sha_a.as_bytes());
    assert_eq!(
        seal_error(runtime(&[&key], &[&key]).load_precompiled(&a, &relabelled)),
        SealError::BadSignature {
            key_id: key_id(&key.verifying_key())
        }
    );

    // B's native code freshly sealed for A by someone the runtime trusts
    // for artifacts only: a seal says "this is A's native code", so only
    // keys trusted for native code may make that claim.
    let start = native_offset(&sealed_b);
    let fingerprint = compiler.engine_fingerprint();
    let artifact_signer = test_key(3);
    let forged = seal(&artifact_signer, &fingerprint, &sha_a, &sealed_b[start..]);
    assert!(matches!(
        seal_error(runtime(&[&key, &artifact_signer], &[&key]).load_precompiled(&a, &forged)),
        SealError::UntrustedKey { .. }
    ));
}

#[test]
fn tampered_native_code_is_refused() {
    let key = test_key(1);
    let a = artifact(A, Some(&key));
    let sealed = runtime(&[&key], &[]).precompile(&a, &key).unwrap();
    let start = native_offset(&sealed);
    for at in [start, start + (sealed.len() - start) / 2, sealed.len() - 1] {
        let mut tampered = sealed.clone();
        tampered[at] ^= 0x01;
        assert!(
            matches!(
                seal_error(runtime(&[&key], &[&key]).load_precompiled(&a, &tampered)),
                SealError::BadSignature { .. }
            ),
            "byte {at}"
        );
    }
    let truncated = &sealed[..sealed.len() - 1];
    assert!(matches!(
        seal_error(runtime(&[&key], &[&key]).load_precompiled(&a, truncated)),
        SealError::BadSignature { .. }
    ));
}

#[test]
fn an_unsealed_cwasm_of_the_old_format_is_refused_with_the_remedy() {
    let key = test_key(1);
    let a = artifact(A, Some(&key));
    let compiler = runtime(&[&key], &[]);
    let sealed = compiler.precompile(&a, &key).unwrap();
    let sha = compiler.load(&a).unwrap().sha256().to_owned();
    // What earlier versions wrote: magic, the artifact's hash, native code.
    let mut old = b"AVAP-CWASM-1\n".to_vec();
    old.extend_from_slice(sha.as_bytes());
    old.extend_from_slice(&sealed[native_offset(&sealed)..]);
    let error = runtime(&[&key], &[&key]).load_precompiled(&a, &old).unwrap_err();
    assert!(matches!(error, LoadError::Seal(SealError::Unsealed)), "{error}");
    assert!(error.to_string().contains("avap compile --precompile --key"), "{error}");
    assert!(matches!(
        seal_error(runtime(&[&key], &[&key]).load_precompiled(&a, b"not a cwasm")),
        SealError::NotCwasm
    ));
}

#[test]
fn an_artifact_key_does_not_make_its_seal_trusted() {
    let signer = test_key(1);
    let a = artifact(A, Some(&signer));
    let cwasm = runtime(&[&signer], &[]).precompile(&a, &signer).unwrap();
    // Trusted for artifacts only (and no key at all for native code).
    assert_eq!(
        seal_error(runtime(&[&signer], &[]).load_precompiled(&a, &cwasm)),
        SealError::UntrustedKey {
            key_id: key_id(&signer.verifying_key())
        }
    );
    // Sealed by a key nobody trusts.
    let other = test_key(4);
    let cwasm = runtime(&[&signer], &[]).precompile(&a, &other).unwrap();
    assert!(matches!(
        seal_error(runtime(&[&signer], &[&signer]).load_precompiled(&a, &cwasm)),
        SealError::UntrustedKey { key_id } if key_id == avap_hostfns::artifact::key_id(&other.verifying_key())
    ));
}

#[test]
fn the_artifact_is_still_verified_before_the_seal() {
    let key = test_key(1);
    let a = artifact(A, Some(&key));
    let cwasm = runtime(&[&key], &[]).precompile(&a, &key).unwrap();
    // Trusted for native code, but the artifact's signer is not trusted.
    let error = runtime(&[], &[&key]).load_precompiled(&a, &cwasm).unwrap_err();
    assert!(matches!(error, LoadError::Artifact(_)), "{error}");
}
