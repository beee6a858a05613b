//! The sealed `.cwasm` format: wasmtime's native code for one artifact,
//! signed for one engine.
//!
//! A `.cwasm` is native code that `Module::deserialize` runs without
//! checking it, and the artifact's signature does not cover it. So the
//! runtime loads one only when a key it trusts *for precompiled modules*
//! ([`crate::RuntimeConfig::precompiled_keys`]) signed it, and only for the
//! engine and the artifact it was signed for. One format serves the files
//! of `avap compile --precompile --key` and the modules the server's nodes
//! share through Redis (L2); [`seal`] and [`open`] are the only code that
//! writes or checks it.
//!
//! Layout:
//!
//! ```text
//! AVAP-CWASM-2\n
//! <key id of the signer: 16 hex digits>\n
//! <engine fingerprint>\n
//! <artifact SHA-256, hex>\n
//! <ed25519 signature: 64 bytes><native code: wasmtime's serialized module>
//! ```
//!
//! The signature covers [`SIGNED_CONTEXT`], the engine fingerprint, the
//! artifact's SHA-256 and the SHA-256 of the native code. The fingerprint
//! and artifact hash written in the header only make refusals precise:
//! [`open`] checks the signature against the *loading* runtime's
//! fingerprint and the *verified* artifact's hash, never the header's, so
//! moving native code to another artifact (or editing the header) breaks
//! the seal.

use avap_hostfns::artifact::{Signature, SigningKey, TrustedKeys, key_id};
use ed25519_dalek::Signer as _;
use sha2::{Digest as _, Sha256};

/// First bytes of a sealed `.cwasm`. The version also enters the engine
/// fingerprint, so modules of different formats never share a Redis key.
pub const MAGIC: &[u8] = b"AVAP-CWASM-2\n";
/// First bytes of the unsealed `.cwasm` files of earlier versions (native
/// code behind a bare, unsigned artifact hash): recognised only to say why
/// they are refused.
const UNSEALED_MAGIC: &[u8] = b"AVAP-CWASM-1\n";
/// What the signature covers starts with this, so a seal can never be
/// taken for an artifact signature (those sign a bare SHA-256) or the
/// other way round.
pub const SIGNED_CONTEXT: &[u8] = b"avap-cwasm-v2\n";
const SIGNATURE_LEN: usize = 64;
/// The longest header line (a fingerprint or a SHA-256 is 64 hex digits at
/// most); a longer one is not ours.
const MAX_LINE: usize = 128;
/// How to make a `.cwasm` this runtime accepts, for error messages.
const REMEDY: &str = "recompile it with `avap compile --precompile --key KEY`";

/// Why a `.cwasm` is refused. Each message says what is wrong; what to do
/// about an untrusted signer depends on where the keys come from, so the
/// caller says that (see `avap run --trust-precompiled`, the server's
/// `cluster_keys/`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "the .cwasm is in the old unsealed format (AVAP-CWASM-1): its native code is tied to the artifact by an unsigned hash only, so it is no longer loaded; {REMEDY}"
    )]
    Unsealed,
    #[error("not an AVAP .cwasm file (bad header); {REMEDY}")]
    NotCwasm,
    #[error("the .cwasm is truncated or its header is malformed ({0}); {REMEDY}")]
    Malformed(&'static str),
    #[error(
        "the .cwasm was made for another wasmtime version or engine configuration (engine {made_for}, this one is {this}); recompile it with this avap"
    )]
    OtherEngine { made_for: String, this: String },
    #[error(
        "the .cwasm was made from another artifact (SHA-256 {made_from}, this artifact is {this}); use the .cwasm written with this artifact, or {REMEDY}"
    )]
    OtherArtifact { made_from: String, this: String },
    #[error("the .cwasm is sealed by key {key_id}, which is not trusted to seal precompiled modules")]
    UntrustedKey { key_id: String },
    #[error(
        "the seal of key {key_id} does not match the .cwasm (its native code, engine or artifact changed after sealing: tampered or corrupt); {REMEDY}"
    )]
    BadSignature { key_id: String },
}

/// What the signature covers.
fn signed_message(fingerprint: &str, artifact_sha256: &str, native: &[u8]) -> Vec<u8> {
    let mut message = SIGNED_CONTEXT.to_vec();
    for part in [fingerprint, artifact_sha256, &hex::encode(Sha256::digest(native))] {
        message.extend_from_slice(part.as_bytes());
        message.push(b'\n');
    }
    message
}

/// `native` (wasmtime's output for the artifact with this SHA-256, on the
/// engine with this fingerprint), sealed with `key`.
pub fn seal(key: &SigningKey, fingerprint: &str, artifact_sha256: &str, native: &[u8]) -> Vec<u8> {
    let signature = key.sign(&signed_message(fingerprint, artifact_sha256, native));
    let id = key_id(&key.verifying_key());
    let mut out = Vec::with_capacity(
        MAGIC.len() + id.len() + fingerprint.len() + artifact_sha256.len() + 3 + SIGNATURE_LEN + native.len(),
    );
    out.extend_from_slice(MAGIC);
    for line in [id.as_str(), fingerprint, artifact_sha256] {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(&signature.to_bytes());
    out.extend_from_slice(native);
    out
}

/// The native code inside `cwasm`, if one of `trusted` sealed it for the
/// engine with `fingerprint` and the artifact with `artifact_sha256`; else
/// why not. Checks only: nothing here deserializes.
pub fn open<'a>(
    cwasm: &'a [u8],
    trusted: &TrustedKeys,
    fingerprint: &str,
    artifact_sha256: &str,
) -> Result<&'a [u8], SealError> {
    if cwasm.starts_with(UNSEALED_MAGIC) {
        return Err(SealError::Unsealed);
    }
    let mut rest = cwasm.strip_prefix(MAGIC).ok_or(SealError::NotCwasm)?;
    let id = header_line(&mut rest, "key id")?;
    let made_for = header_line(&mut rest, "engine fingerprint")?;
    let made_from = header_line(&mut rest, "artifact SHA-256")?;
    if rest.len() < SIGNATURE_LEN {
        return Err(SealError::Malformed("no signature"));
    }
    let (signature, native) = rest.split_at(SIGNATURE_LEN);
    if made_for != fingerprint {
        return Err(SealError::OtherEngine {
            made_for: made_for.to_owned(),
            this: fingerprint.to_owned(),
        });
    }
    if made_from != artifact_sha256 {
        return Err(SealError::OtherArtifact {
            made_from: made_from.to_owned(),
            this: artifact_sha256.to_owned(),
        });
    }
    let key = trusted
        .get(id)
        .ok_or_else(|| SealError::UntrustedKey { key_id: id.to_owned() })?;
    let bad = || SealError::BadSignature { key_id: id.to_owned() };
    let signature = Signature::from_slice(signature).map_err(|_| bad())?;
    // Our own fingerprint and the verified artifact's hash, not the header's.
    key.verify_strict(&signed_message(fingerprint, artifact_sha256, native), &signature)
        .map_err(|_| bad())?;
    Ok(native)
}

/// The next `\n`-terminated header line: short, printable ASCII.
fn header_line<'a>(rest: &mut &'a [u8], what: &'static str) -> Result<&'a str, SealError> {
    let end = rest
        .iter()
        .take(MAX_LINE + 1)
        .position(|&b| b == b'\n')
        .ok_or(SealError::Malformed(what))?;
    let line = std::str::from_utf8(&rest[..end]).map_err(|_| SealError::Malformed(what))?;
    if line.is_empty() || !line.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SealError::Malformed(what));
    }
    *rest = &rest[end + 1..];
    Ok(line)
}

#[cfg(test)]
mod tests {
    use avap_hostfns::artifact::generate_key;

    use super::*;

    const FP: &str = "0123456789abcdef0123456789abcdef";
    const SHA_A: &str = "aa";
    const SHA_B: &str = "bb";

    fn trusting(key: &SigningKey) -> TrustedKeys {
        let mut trusted = TrustedKeys::new();
        trusted.add(key.verifying_key());
        trusted
    }

    #[test]
    fn a_seal_opens_only_for_its_engine_artifact_and_bytes_with_a_trusted_key() {
        let key = generate_key().unwrap();
        let trusted = trusting(&key);
        let native = b"native code".to_vec();
        let sealed = seal(&key, FP, SHA_A, &native);
        assert_eq!(open(&sealed, &trusted, FP, SHA_A), Ok(&native[..]));

        let refused = |cwasm: &[u8], fingerprint: &str, sha: &str| open(cwasm, &trusted, fingerprint, sha).unwrap_err();
        assert!(matches!(refused(&sealed, "fp2", SHA_A), SealError::OtherEngine { .. }));
        assert!(matches!(refused(&sealed, FP, SHA_B), SealError::OtherArtifact { .. }));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(refused(&tampered, FP, SHA_A), SealError::BadSignature { .. }));
        let stranger = seal(&generate_key().unwrap(), FP, SHA_A, &native);
        assert!(matches!(refused(&stranger, FP, SHA_A), SealError::UntrustedKey { .. }));
        assert!(matches!(refused(&sealed[..60], FP, SHA_A), SealError::Malformed(_)));
        assert!(matches!(refused(b"garbage", FP, SHA_A), SealError::NotCwasm));
        assert!(matches!(refused(b"", FP, SHA_A), SealError::NotCwasm));
        assert!(matches!(
            refused(b"AVAP-CWASM-1\naa native", FP, SHA_A),
            SealError::Unsealed
        ));
    }

    #[test]
    fn a_rewritten_header_breaks_the_seal() {
        // The seal of B's native code, with the header edited to name A:
        // the signature is checked against A, which B's seal never covered.
        let key = generate_key().unwrap();
        let sealed_b = seal(&key, FP, SHA_B, b"native code of b");
        let text = sealed_b.clone();
        let at = text.windows(3).position(|w| w == b"\nbb").unwrap() + 1;
        let mut relabelled = text;
        relabelled[at..at + 2].copy_from_slice(SHA_A.as_bytes());
        assert_eq!(
            open(&relabelled, &trusting(&key), FP, SHA_A),
            Err(SealError::BadSignature {
                key_id: key_id(&key.verifying_key())
            })
        );
    }
}
