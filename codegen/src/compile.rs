//! The whole compiler: checked program → lowered module → artifact with
//! `avap.meta` and `avap.srcmap` → (optionally) signed with `avap.sig`.

use avap_hostfns::abi;
use avap_hostfns::artifact::{
    self, EndpointMeta, FunctionMap, ImportMeta, LibraryMeta, Meta, ParamsMeta, RunPolicy, SigningKey, SourceMap,
    SrcEntry,
};
use sha2::{Digest as _, Sha256};

use crate::check::CheckedProgram;
use crate::lower::{LoweredModule, lower};

/// Version of this compiler, recorded in every artifact.
pub const COMPILER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A compiled artifact.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The complete `.wasm` file (signed when a key was given).
    pub bytes: Vec<u8>,
    pub meta: Meta,
    pub signed: bool,
}

/// Compile a program that checked without errors. `key` signs it.
///
/// # Panics
/// If `checked` has errors: callers check [`CheckedProgram::error_count`]
/// first (the lowering assumes a well-formed tree). `check_file` already
/// refused programs beyond the compile budget (`lower::MAX_FUNCTION_BYTES`
/// and its siblings), so what is compiled here fits it.
pub fn compile(checked: &CheckedProgram, key: Option<&SigningKey>) -> Artifact {
    compile_with_policy(checked, key, RunPolicy::default())
}

/// [`compile`], recording `policy` (a stored script's own limits and rate
/// limit) in the artifact's meta, under its signature.
///
/// # Panics
/// As [`compile`].
pub fn compile_with_policy(checked: &CheckedProgram, key: Option<&SigningKey>, policy: RunPolicy) -> Artifact {
    compile_with_libraries(checked, key, policy, Vec::new())
}

/// [`compile_with_policy`], recording also the stored scripts the
/// registry resolved the program's includes to (`libraries`), under the
/// signature.
///
/// # Panics
/// As [`compile`].
pub fn compile_with_libraries(
    checked: &CheckedProgram,
    key: Option<&SigningKey>,
    policy: RunPolicy,
    libraries: Vec<LibraryMeta>,
) -> Artifact {
    assert_eq!(checked.error_count(), 0, "compile() needs a program without errors");
    let lowered = lower(checked);
    let root = checked.sources.get(0);
    let meta = Meta {
        policy,
        libraries,
        params: crate::params::read_params(checked),
        ..meta_of(&lowered, root.name(), root.text())
    };
    let srcmap = srcmap_of(&lowered, checked);
    let unsigned = artifact::append_sections(&lowered.wasm, &meta, &srcmap);
    let (bytes, signed) = match key {
        Some(k) => (artifact::sign(&unsigned, k), true),
        None => (unsigned, false),
    };
    Artifact { bytes, meta, signed }
}

fn meta_of(lowered: &LoweredModule, name: &str, text: &str) -> Meta {
    Meta {
        format_version: abi::FORMAT_VERSION,
        compiler_version: COMPILER_VERSION.to_owned(),
        source_name: name.to_owned(),
        source_sha256: hex::encode(Sha256::digest(text.as_bytes())),
        imports: lowered
            .commands
            .iter()
            .map(|c| ImportMeta {
                module: abi::COMMAND_MODULE.to_owned(),
                name: c.name.to_owned(),
                capability: c.capability.as_str().to_owned(),
                line: c.line,
            })
            .collect(),
        endpoints: lowered
            .endpoints
            .iter()
            .map(|e| EndpointMeta {
                method: e.method.clone(),
                path: e.path.clone(),
                handler: e.handler.clone(),
                description: e.description.clone(),
                middleware: e.middleware.clone(),
            })
            .collect(),
        functions: lowered.functions.clone(),
        policy: RunPolicy::default(),
        libraries: Vec::new(),
        params: ParamsMeta::default(),
    }
}

fn srcmap_of(lowered: &LoweredModule, checked: &CheckedProgram) -> SourceMap {
    let files = (0..checked.sources.len())
        .map(|i| checked.sources.get(i).name().to_owned())
        .collect();
    let functions = lowered
        .marks
        .iter()
        .map(|f| FunctionMap {
            func_index: f.func_index,
            name: f.name.clone(),
            entries: f
                .marks
                .iter()
                .map(|&(offset, line, column)| SrcEntry {
                    offset,
                    file: u32::try_from(f.file).unwrap_or(0),
                    line,
                    column,
                })
                .collect(),
        })
        .collect();
    SourceMap { files, functions }
}
