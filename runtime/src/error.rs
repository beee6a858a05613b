//! Why an artifact could not be loaded.

use avap_hostfns::artifact::ArtifactError;

use crate::precompiled::SealError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(
        "the artifact uses `{command}` (line {line}), which needs the `{class}` capability; this deployment's policy denies it"
    )]
    CapabilityDenied { command: String, class: String, line: u32 },
    #[error("wasmtime could not compile the artifact: {0}")]
    Compile(String),
    #[error("the artifact's imports do not match this runtime: {0}")]
    Link(String),
    #[error("cannot use the precompiled module: {0}")]
    Precompiled(String),
    /// The `.cwasm`'s seal is missing, broken, or by a key not trusted for
    /// native code ([`crate::precompiled`]).
    #[error("cannot use the precompiled module: {0}")]
    Seal(#[from] SealError),
    #[error("could not start the wasm engine: {0}")]
    Engine(String),
}
