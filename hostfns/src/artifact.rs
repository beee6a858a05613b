//! Artifact format: custom sections `avap.meta`, `avap.srcmap`, `avap.sig`.
//!
//! An artifact is a valid WebAssembly module followed by custom sections:
//!
//! * [`META_SECTION`] (`avap.meta`): [`Meta`] as UTF-8 JSON. Unknown fields
//!   are ignored (forward compatibility); a `format_version` newer than
//!   [`abi::FORMAT_VERSION`] is refused.
//! * [`SRCMAP_SECTION`] (`avap.srcmap`): [`SourceMap`] in a compact binary
//!   form (see [`SourceMap::encode`]).
//! * [`SIG_SECTION`] (`avap.sig`, optional, must be the last section):
//!   `key id` (LEB128 length + UTF-8, 16 lowercase hex digits, see
//!   [`key_id`]) followed by a 64-byte ed25519 signature over the SHA-256 of
//!   every byte of the file before the `avap.sig` section.
//!
//! [`append_sections`] and [`sign`] write artifacts (compiler side);
//! [`inspect`] and [`verify`] read them (runtime and `avap inspect`).
//! Key files are one line of text, see [`encode_secret_key`] and
//! [`encode_public_key`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{SIGNATURE_LENGTH, Signer as _};
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use wasmparser::{Encoding, Parser, Payload, Validator, WasmFeatures};

use crate::abi;
use crate::signature::{Capability, command};

/// Custom section holding [`Meta`] as JSON.
pub const META_SECTION: &str = "avap.meta";
/// Custom section holding the binary [`SourceMap`].
pub const SRCMAP_SECTION: &str = "avap.srcmap";
/// Custom section holding the signature; always the last section.
pub const SIG_SECTION: &str = "avap.sig";

/// First word of a secret key file.
pub const SECRET_KEY_PREFIX: &str = "avap-ed25519-secret-v1";
/// First word of a public key file.
pub const PUBLIC_KEY_PREFIX: &str = "avap-ed25519-public-v1";

/// Version of the binary source-map encoding (first varint of the section).
const SRCMAP_ENCODING_VERSION: u32 = 1;
/// Length of a key id in hex digits.
const KEY_ID_LEN: usize = 16;

/// Why an artifact was refused. Every message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact is not signed; sign it with `avap compile --key KEY` or pass --allow-unsigned for development")]
    Unsigned,
    #[error(
        "artifact is signed by key {key_id}, which is not trusted; add that key's .pub file to the trusted keys \
         (--trust), or recompile and sign with a trusted key"
    )]
    UntrustedKey { key_id: String },
    #[error(
        "artifact signature is invalid: the artifact was modified after it was signed; do not use it, \
         recompile and sign it again from its source"
    )]
    BadSignature,
    #[error(
        "the `avap.sig` section is not the last section: content was added after signing; \
         recompile and sign the artifact again"
    )]
    NotLastSection,
    #[error("artifact is malformed: {0}; recompile it with `avap compile`")]
    Malformed(String),
    #[error("artifact has no `{0}` section: it was not produced by `avap compile` or was stripped; recompile it")]
    MissingSection(&'static str),
    #[error(
        "artifact format version {found} is newer than this avap supports ({supported}); \
         upgrade avap or recompile the script with this version"
    )]
    FormatTooNew { found: u32, supported: u32 },
    #[error(
        "artifact imports do not match its metadata ({detail}); it was tampered with or built by a broken \
         compiler; recompile it"
    )]
    ImportsMismatch { detail: String },
}

/// Why a key could not be created, read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not an avap {expected} key: the text must start with `{prefix}`")]
    WrongPrefix {
        expected: &'static str,
        prefix: &'static str,
    },
    #[error("this is a secret key, not a public key; use the matching .pub file (never share the .key file)")]
    SecretNotPublic,
    #[error("this is a public key, not a secret key; use the matching .key file")]
    PublicNotSecret,
    #[error("key is not valid base64 ({0}); the key file is damaged, regenerate it with `avap keygen`")]
    BadBase64(String),
    #[error("key has {found} bytes, expected {expected}; the key file is damaged, regenerate it with `avap keygen`")]
    WrongLength { expected: usize, found: usize },
    #[error("not a valid ed25519 public key; the key file is damaged, regenerate it with `avap keygen`")]
    InvalidPublicKey,
    #[error("cannot draw random bytes for a new key: {0}")]
    Rng(String),
}

// ---------------------------------------------------------------------------
// Meta
// ---------------------------------------------------------------------------

/// Contents of the `avap.meta` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// [`abi::FORMAT_VERSION`] of the compiler that wrote the artifact.
    pub format_version: u32,
    pub compiler_version: String,
    pub source_name: String,
    /// SHA-256 of the source, lowercase hex.
    pub source_sha256: String,
    /// Every command the module imports (module [`abi::COMMAND_MODULE`]).
    pub imports: Vec<ImportMeta>,
    /// Statically known `registerEndpoint` calls.
    pub endpoints: Vec<EndpointMeta>,
    /// User function names.
    pub functions: Vec<String>,
    /// What the registry stored with the script: its own limits and rate
    /// limit (absent for scripts stored without them, and for inline
    /// scripts). Signed with the rest, so an edge node or a restored backup
    /// applies exactly what the registry accepted.
    #[serde(default, skip_serializing_if = "RunPolicy::is_empty")]
    pub policy: RunPolicy,
    /// The stored scripts the registry resolved this script's `include`s
    /// to, by name (absent when it includes nothing, and in artifacts of
    /// the CLI, whose includes are files). Signed with the rest: what a
    /// version was built with is fixed until it is rebuilt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub libraries: Vec<LibraryMeta>,
    /// Request parameters the script reads with `addParam`, where the name
    /// is written as a literal (absent when it reads none, and in artifacts
    /// from compilers before this field: their meta bytes stay the same).
    #[serde(default, skip_serializing_if = "ParamsMeta::is_empty")]
    pub params: ParamsMeta,
}

/// One library (stored script) an artifact was built with ([`Meta::libraries`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibraryMeta {
    /// The stored script's name.
    pub name: String,
    /// Its version, as the registry numbers them.
    pub version: i64,
    /// SHA-256 of that version's source, lowercase hex.
    pub source_sha256: String,
}

/// Statically known `addParam` names ([`Meta::params`]): a string literal or
/// bare name as the parameter argument. Names built at run time cannot be
/// known and are left out, so these lists are a lower bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsMeta {
    /// Read by the top level (it runs on every request, before dispatch),
    /// including the user functions it calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_level: Vec<String>,
    /// Per user function: read by its body or by the user functions it
    /// calls by name, transitively. Functions that read none are left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub functions: BTreeMap<String, Vec<String>>,
}

impl ParamsMeta {
    pub fn is_empty(&self) -> bool {
        self.top_level.is_empty() && self.functions.is_empty()
    }

    /// What a request to `endpoint` reads: the top level's names, then its
    /// middleware's, then its handler's, each name once, in that order.
    pub fn for_endpoint(&self, endpoint: &EndpointMeta) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let functions = endpoint.middleware.iter().chain(std::iter::once(&endpoint.handler));
        self.top_level
            .iter()
            .chain(functions.filter_map(|f| self.functions.get(f)).flatten())
            .filter(|name| seen.insert(name.as_str()))
            .cloned()
            .collect()
    }
}

/// A stored script's own limits and rate limit ([`Meta::policy`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPolicy {
    /// Per-run limits, each at most the server's maximum (it clamps them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<PolicyLimits>,
    /// Requests per second per client to this script, on top of the
    /// server's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RatePolicy>,
}

impl RunPolicy {
    pub fn is_empty(&self) -> bool {
        self.limits.is_none() && self.rate_limit.is_none()
    }
}

/// Limits in the units of the execute request's `limits`; absent: the
/// server's maximum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_kb: Option<u64>,
}

/// A GCRA quota: `per_second` requests per second, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatePolicy {
    pub per_second: u32,
    pub burst: u32,
}

/// One imported command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportMeta {
    pub module: String,
    pub name: String,
    /// Capability class name ([`Capability::as_str`]): `pure`, `net`, …
    pub capability: String,
    /// First source line using the command.
    pub line: u32,
}

/// One statically known endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointMeta {
    pub method: String,
    pub path: String,
    pub handler: String,
    pub description: String,
    /// Middleware functions, when written as a list of names or a literal
    /// text (absent when there are none or they are computed at run time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub middleware: Vec<String>,
}

impl Meta {
    /// The JSON bytes stored in the section.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("Meta always serializes")
    }

    /// Parses the section; refuses a format newer than ours before looking
    /// at anything else, so a newer artifact gets [`ArtifactError::FormatTooNew`]
    /// rather than a confusing parse error.
    pub fn from_json(bytes: &[u8]) -> Result<Meta, ArtifactError> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_slice(bytes)
            .map_err(|e| ArtifactError::Malformed(format!("`{META_SECTION}` section: {e}")))?;
        if version.format_version > abi::FORMAT_VERSION {
            return Err(ArtifactError::FormatTooNew {
                found: version.format_version,
                supported: abi::FORMAT_VERSION,
            });
        }
        if version.format_version == 0 {
            return Err(ArtifactError::Malformed(format!(
                "`{META_SECTION}` section: format_version 0"
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| ArtifactError::Malformed(format!("`{META_SECTION}` section: {e}")))
    }
}

// ---------------------------------------------------------------------------
// Source map
// ---------------------------------------------------------------------------

/// Maps code offsets to source positions, so traps point at AVAP lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMap {
    /// Source file names; [`SrcEntry::file`] indexes this list.
    pub files: Vec<String>,
    pub functions: Vec<FunctionMap>,
}

/// The positions of one wasm function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionMap {
    /// Index in the module's function index space (imports included).
    pub func_index: u32,
    pub name: String,
    /// Sorted by `offset`.
    pub entries: Vec<SrcEntry>,
}

/// From `offset` on (until the next entry), code belongs to this position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrcEntry {
    /// Byte offset within the function body, as wasmtime's
    /// `FrameInfo::func_offset` reports it (the locals header included).
    pub offset: u32,
    /// Index into [`SourceMap::files`].
    pub file: u32,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl SourceMap {
    /// The position of the code at `func_offset` in function `func_index`:
    /// `(file, line, column)` of the entry with the greatest offset
    /// `<= func_offset`. `None` when the function is unknown, the offset
    /// precedes its first entry, or the entry names no file.
    pub fn lookup(&self, func_index: u32, func_offset: u32) -> Option<(&str, u32, u32)> {
        let function = self.functions.iter().find(|f| f.func_index == func_index)?;
        let after = function.entries.partition_point(|e| e.offset <= func_offset);
        let entry = function.entries.get(after.checked_sub(1)?)?;
        let file = self.files.get(usize::try_from(entry.file).ok()?)?;
        Some((file.as_str(), entry.line, entry.column))
    }

    /// The binary encoding (all integers unsigned LEB128 unless noted):
    ///
    /// ```text
    /// version (= 1)
    /// file_count, file_count × string
    /// function_count, function_count × {
    ///     func_index, name: string, entry_count,
    ///     entry_count × { offset_delta, file, line_delta: zigzag LEB128 (i64), column }
    /// }
    /// string = byte length, UTF-8 bytes
    /// ```
    ///
    /// `offset_delta` and `line_delta` are relative to the previous entry of
    /// the same function (the first to 0). Entries are written sorted by
    /// offset (a stable sort, if they are not already).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_u32(&mut out, SRCMAP_ENCODING_VERSION);
        write_len(&mut out, self.files.len());
        for file in &self.files {
            write_str(&mut out, file);
        }
        write_len(&mut out, self.functions.len());
        for function in &self.functions {
            write_u32(&mut out, function.func_index);
            write_str(&mut out, &function.name);
            write_len(&mut out, function.entries.len());
            let sorted;
            let entries = if function.entries.is_sorted_by_key(|e| e.offset) {
                &function.entries
            } else {
                let mut copy = function.entries.clone();
                copy.sort_by_key(|e| e.offset);
                sorted = copy;
                &sorted
            };
            let (mut offset, mut line) = (0u32, 0u32);
            for entry in entries {
                write_u32(&mut out, entry.offset - offset);
                write_u32(&mut out, entry.file);
                write_u64(&mut out, zigzag(i64::from(entry.line) - i64::from(line)));
                write_u32(&mut out, entry.column);
                offset = entry.offset;
                line = entry.line;
            }
        }
        out
    }

    /// Decodes [`SourceMap::encode`]'s format. Never panics: garbage gives
    /// [`ArtifactError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<SourceMap, ArtifactError> {
        Self::decode_inner(bytes).map_err(|e| ArtifactError::Malformed(format!("`{SRCMAP_SECTION}` section: {e}")))
    }

    fn decode_inner(bytes: &[u8]) -> Result<SourceMap, String> {
        let mut r = Reader::new(bytes);
        let version = r.u32()?;
        if version != SRCMAP_ENCODING_VERSION {
            return Err(format!("unknown encoding version {version}"));
        }
        // Every item takes at least one byte, so counts are bounded by the
        // bytes left: no huge allocation from a forged count.
        let file_count = r.count(1)?;
        let mut files = Vec::with_capacity(file_count);
        for _ in 0..file_count {
            files.push(r.str()?.to_string());
        }
        let function_count = r.count(3)?;
        let mut functions = Vec::with_capacity(function_count);
        for _ in 0..function_count {
            let func_index = r.u32()?;
            let name = r.str()?.to_string();
            let entry_count = r.count(4)?;
            let mut entries = Vec::with_capacity(entry_count);
            let (mut offset, mut line) = (0u32, 0u32);
            for _ in 0..entry_count {
                offset = offset.checked_add(r.u32()?).ok_or("code offset overflows")?;
                let file = r.u32()?;
                if usize::try_from(file).map_or(true, |f| f >= files.len()) {
                    return Err(format!("file index {file} out of range ({} files)", files.len()));
                }
                let delta = unzigzag(r.u64()?);
                line = i64::from(line)
                    .checked_add(delta)
                    .and_then(|l| u32::try_from(l).ok())
                    .ok_or("line number out of range")?;
                let column = r.u32()?;
                entries.push(SrcEntry {
                    offset,
                    file,
                    line,
                    column,
                });
            }
            functions.push(FunctionMap {
                func_index,
                name,
                entries,
            });
        }
        if r.remaining() != 0 {
            return Err(format!("{} trailing bytes", r.remaining()));
        }
        Ok(SourceMap { files, functions })
    }
}

// ---------------------------------------------------------------------------
// LEB128
// ---------------------------------------------------------------------------

fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn write_u32(out: &mut Vec<u8>, value: u32) {
    write_u64(out, u64::from(value));
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    write_u32(out, u32::try_from(len).expect("length fits in u32"));
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn zigzag(v: i64) -> u64 {
    #[allow(clippy::cast_sign_loss)]
    let v = ((v << 1) ^ (v >> 63)) as u64;
    v
}

fn unzigzag(v: u64) -> i64 {
    #[allow(clippy::cast_possible_wrap)]
    let v = ((v >> 1) as i64) ^ -((v & 1) as i64);
    v
}

/// Bounds-checked reader over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.pos).ok_or("unexpected end of data")?;
        self.pos += 1;
        Ok(b)
    }

    /// Unsigned LEB128 of at most `bits` bits; rejects overlong encodings
    /// that set bits beyond `bits`.
    fn varint(&mut self, bits: u32) -> Result<u64, String> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            let low = u64::from(b & 0x7f);
            if shift >= bits || (bits - shift < 7 && low >> (bits - shift) != 0) {
                return Err(format!("integer does not fit in {bits} bits"));
            }
            value |= low << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    fn u32(&mut self) -> Result<u32, String> {
        // varint(32) never yields more than 32 bits.
        self.varint(32).map(|v| u32::try_from(v).unwrap_or(u32::MAX))
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.varint(64)
    }

    /// A count of items that take at least `min_item_bytes` each.
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, String> {
        let n = usize::try_from(self.u32()?).map_err(|_| "count too large")?;
        if n.saturating_mul(min_item_bytes) > self.remaining() {
            return Err(format!("count {n} exceeds the remaining {} bytes", self.remaining()));
        }
        Ok(n)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err("unexpected end of data".into());
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = usize::try_from(self.u32()?).map_err(|_| "string too long")?;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| "string is not UTF-8".into())
    }
}

// ---------------------------------------------------------------------------
// Writing artifacts
// ---------------------------------------------------------------------------

/// Appends a custom section: id 0, LEB128 size, LEB128 name length, name,
/// payload.
fn write_custom_section(out: &mut Vec<u8>, name: &str, payload: &[u8]) {
    let mut header = Vec::with_capacity(name.len() + 5);
    write_str(&mut header, name);
    out.push(0);
    write_len(out, header.len() + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// `wasm` followed by the `avap.meta` and `avap.srcmap` sections.
pub fn append_sections(wasm: &[u8], meta: &Meta, srcmap: &SourceMap) -> Vec<u8> {
    let meta_bytes = meta.to_json();
    let srcmap_bytes = srcmap.encode();
    let mut out = Vec::with_capacity(wasm.len() + meta_bytes.len() + srcmap_bytes.len() + 32);
    out.extend_from_slice(wasm);
    write_custom_section(&mut out, META_SECTION, &meta_bytes);
    write_custom_section(&mut out, SRCMAP_SECTION, &srcmap_bytes);
    out
}

// ---------------------------------------------------------------------------
// Keys and signatures
// ---------------------------------------------------------------------------

/// A fresh signing key from the operating system's CSPRNG.
pub fn generate_key() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Rng(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// The id under which a public key is trusted: the first 16 hex digits of
/// the SHA-256 of its 32 bytes.
pub fn key_id(public: &VerifyingKey) -> String {
    let digest = Sha256::digest(public.as_bytes());
    let mut id = hex::encode(digest);
    id.truncate(KEY_ID_LEN);
    id
}

/// `wasm_without_sig` followed by an `avap.sig` section signing it. The
/// input must not already be signed (see [`strip_signature`]); a module
/// signed twice fails verification.
pub fn sign(wasm_without_sig: &[u8], key: &SigningKey) -> Vec<u8> {
    let digest = Sha256::digest(wasm_without_sig);
    let signature = key.sign(&digest);
    let mut payload = Vec::with_capacity(1 + KEY_ID_LEN + SIGNATURE_LENGTH);
    write_str(&mut payload, &key_id(&key.verifying_key()));
    payload.extend_from_slice(&signature.to_bytes());
    let mut out = Vec::with_capacity(wasm_without_sig.len() + payload.len() + 16);
    out.extend_from_slice(wasm_without_sig);
    write_custom_section(&mut out, SIG_SECTION, &payload);
    out
}

/// The file without any `avap.sig` section.
pub fn strip_signature(bytes: &[u8]) -> Result<Vec<u8>, ArtifactError> {
    let sections = walk_sections(bytes)?;
    let mut out = Vec::with_capacity(bytes.len());
    let mut kept_until = 0;
    for section in &sections {
        if section.custom_name == Some(SIG_SECTION) {
            out.extend_from_slice(&bytes[kept_until..section.range.start]);
            kept_until = section.range.end;
        }
    }
    out.extend_from_slice(&bytes[kept_until..]);
    Ok(out)
}

/// `avap-ed25519-secret-v1 <base64 of the 32-byte seed>` (one line, with a
/// trailing newline).
pub fn encode_secret_key(key: &SigningKey) -> String {
    format!("{SECRET_KEY_PREFIX} {}\n", BASE64.encode(key.to_bytes()))
}

/// `avap-ed25519-public-v1 <base64 of the 32-byte key>` (one line, with a
/// trailing newline).
pub fn encode_public_key(key: &VerifyingKey) -> String {
    format!("{PUBLIC_KEY_PREFIX} {}\n", BASE64.encode(key.as_bytes()))
}

/// Reads [`encode_secret_key`]'s format (surrounding whitespace ignored).
pub fn decode_secret_key(text: &str) -> Result<SigningKey, KeyError> {
    let seed = decode_key_text(text, SECRET_KEY_PREFIX, "secret")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads [`encode_public_key`]'s format (surrounding whitespace ignored).
pub fn decode_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = decode_key_text(text, PUBLIC_KEY_PREFIX, "public")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPublicKey)
}

fn decode_key_text(text: &str, prefix: &'static str, expected: &'static str) -> Result<[u8; 32], KeyError> {
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("");
    if first != prefix {
        return Err(match (first, expected) {
            (SECRET_KEY_PREFIX, "public") => KeyError::SecretNotPublic,
            (PUBLIC_KEY_PREFIX, "secret") => KeyError::PublicNotSecret,
            _ => KeyError::WrongPrefix { expected, prefix },
        });
    }
    let encoded = words.next().ok_or(KeyError::WrongLength { expected: 32, found: 0 })?;
    if words.next().is_some() {
        return Err(KeyError::BadBase64("unexpected text after the key".into()));
    }
    let bytes = BASE64.decode(encoded).map_err(|e| KeyError::BadBase64(e.to_string()))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength {
        expected: 32,
        found: bytes.len(),
    })
}

/// Public keys whose signatures are accepted, by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

impl TrustedKeys {
    pub fn new() -> Self {
        TrustedKeys::default()
    }

    /// Parses public key files' contents ([`encode_public_key`] format).
    pub fn from_public_key_texts<I, S>(texts: I) -> Result<TrustedKeys, KeyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut trusted = TrustedKeys::new();
        for text in texts {
            trusted.add(decode_public_key(text.as_ref())?);
        }
        Ok(trusted)
    }

    /// Trusts `key`; returns its key id.
    pub fn add(&mut self, key: VerifyingKey) -> String {
        let id = key_id(&key);
        self.keys.insert(id.clone(), key);
        id
    }

    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The trusted key ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

// ---------------------------------------------------------------------------
// Reading artifacts
// ---------------------------------------------------------------------------

/// One top-level section of the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// Section id (0 = custom).
    pub id: u8,
    /// `type`, `import`, …, `code`, `data`; a custom section's own name.
    pub name: String,
    /// Bytes of the whole section, id and size prefix included.
    pub range: Range<usize>,
}

/// One import of the wasm module.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WasmImport {
    pub module: String,
    pub name: String,
}

/// The signature found in an artifact (not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    pub key_id: String,
    pub signature: Signature,
}

/// What [`inspect`] found in a structurally valid artifact.
#[derive(Debug, Clone)]
pub struct ArtifactInfo {
    /// Size of the whole file.
    pub size: usize,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
    /// Size of the signed region (the file without `avap.sig`).
    pub signed_size: usize,
    /// SHA-256 of the signed region, lowercase hex.
    pub signed_sha256: String,
    pub meta: Meta,
    pub srcmap: SourceMap,
    pub signature: Option<SignatureInfo>,
    /// The module's imports in order (all modules, not only commands).
    pub wasm_imports: Vec<WasmImport>,
    /// Every top-level section in order.
    pub sections: Vec<SectionInfo>,
    signed_digest: [u8; 32],
}

/// How the signature of an accepted artifact stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Signed by the trusted key `key_id`, and the signature is valid.
    Valid { key_id: String },
    /// Not signed (only accepted when unsigned artifacts are allowed).
    Unsigned,
}

impl fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureStatus::Valid { key_id } => write!(f, "valid, signed by key {key_id}"),
            SignatureStatus::Unsigned => f.write_str("unsigned"),
        }
    }
}

/// An artifact that passed [`verify`].
#[derive(Debug, Clone)]
pub struct Verified {
    pub info: ArtifactInfo,
    pub signature: SignatureStatus,
}

struct RawSection<'a> {
    id: u8,
    custom_name: Option<&'a str>,
    custom_data: &'a [u8],
    range: Range<usize>,
}

fn section_name(id: u8) -> &'static str {
    match id {
        0 => "custom",
        1 => "type",
        2 => "import",
        3 => "function",
        4 => "table",
        5 => "memory",
        6 => "global",
        7 => "export",
        8 => "start",
        9 => "element",
        10 => "code",
        11 => "data",
        12 => "datacount",
        13 => "tag",
        _ => "unknown",
    }
}

fn malformed(e: &wasmparser::BinaryReaderError) -> ArtifactError {
    ArtifactError::Malformed(format!("invalid WebAssembly: {e}"))
}

/// The top-level sections of a core module with their full byte ranges
/// (a section starts where the previous one's contents end).
fn walk_sections(bytes: &[u8]) -> Result<Vec<RawSection<'_>>, ArtifactError> {
    let mut sections = Vec::new();
    let mut prev_end = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| malformed(&e))?;
        match &payload {
            Payload::Version { encoding, range, .. } => {
                if *encoding != Encoding::Module {
                    return Err(ArtifactError::Malformed("a component, not a core module".into()));
                }
                prev_end = Some(range.end);
                continue;
            }
            Payload::End(_) => break,
            _ => {}
        }
        let Some((id, contents)) = payload.as_section() else {
            continue;
        };
        let start = prev_end.ok_or_else(|| ArtifactError::Malformed("missing module header".into()))?;
        if bytes.get(start) != Some(&id) || contents.end > bytes.len() || contents.start <= start {
            return Err(ArtifactError::Malformed(format!(
                "inconsistent section layout at byte {start}"
            )));
        }
        let (custom_name, custom_data) = match &payload {
            Payload::CustomSection(c) => (Some(c.name()), c.data()),
            _ => (None, &[][..]),
        };
        sections.push(RawSection {
            id,
            custom_name,
            custom_data,
            range: start..contents.end,
        });
        prev_end = Some(contents.end);
    }
    if prev_end != Some(bytes.len()) {
        return Err(ArtifactError::Malformed(
            "unexpected bytes after the last section".into(),
        ));
    }
    Ok(sections)
}

fn decode_sig_payload(data: &[u8]) -> Result<SignatureInfo, ArtifactError> {
    let bad = |msg: &str| ArtifactError::Malformed(format!("`{SIG_SECTION}` section: {msg}"));
    let mut r = Reader::new(data);
    let key_id = r.str().map_err(|e| bad(&e))?;
    if key_id.len() != KEY_ID_LEN || !key_id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad("key id is not 16 lowercase hex digits"));
    }
    let signature = r.bytes(SIGNATURE_LENGTH).map_err(|e| bad(&e))?;
    if r.remaining() != 0 {
        return Err(bad("trailing bytes after the signature"));
    }
    let signature = <[u8; SIGNATURE_LENGTH]>::try_from(signature).map_err(|_| bad("short signature"))?;
    Ok(SignatureInfo {
        key_id: key_id.to_string(),
        signature: Signature::from_bytes(&signature),
    })
}

/// The key id the artifact says it is signed with (`None`: unsigned),
/// from its section headers alone: no validation, no hashing. For a
/// report only; [`verify`] is what decides whether an artifact runs.
pub fn signer_key_id(bytes: &[u8]) -> Result<Option<String>, ArtifactError> {
    let sections = walk_sections(bytes)?;
    match sections.last() {
        Some(last) if last.custom_name == Some(SIG_SECTION) => Ok(Some(decode_sig_payload(last.custom_data)?.key_id)),
        _ => Ok(None),
    }
}

/// The WebAssembly features an artifact may use: the defaults plus custom
/// page sizes (linear memory sized in bytes, format version 4).
pub fn wasm_features() -> WasmFeatures {
    WasmFeatures::default() | WasmFeatures::CUSTOM_PAGE_SIZES
}

/// Validates `wasm` with [`wasm_features`].
pub fn validate(wasm: &[u8]) -> Result<(), wasmparser::BinaryReaderError> {
    Validator::new_with_features(wasm_features())
        .validate_all(wasm)
        .map(|_| ())
}

/// Validates the module and reads its sections. Does not check the
/// signature (see [`check_signature`] and [`verify`]).
pub fn inspect(bytes: &[u8]) -> Result<ArtifactInfo, ArtifactError> {
    if let Err(e) = validate(bytes) {
        // A newer format may use WebAssembly this runtime does not accept
        // (format 4's one-byte pages did): when its metadata says it is
        // newer, say so instead of "malformed".
        return Err(newer_format(bytes).unwrap_or_else(|| malformed(&e)));
    }
    let raw = walk_sections(bytes)?;

    let mut meta = None;
    let mut srcmap = None;
    let mut signature = None;
    let mut signed_end = bytes.len();
    let mut wasm_imports = Vec::new();
    let mut sections = Vec::with_capacity(raw.len());
    for (i, section) in raw.iter().enumerate() {
        match section.custom_name {
            Some(SIG_SECTION) => {
                if i + 1 != raw.len() {
                    return Err(ArtifactError::NotLastSection);
                }
                signature = Some(decode_sig_payload(section.custom_data)?);
                signed_end = section.range.start;
            }
            Some(name @ (META_SECTION | SRCMAP_SECTION)) => {
                let slot = if name == META_SECTION { &mut meta } else { &mut srcmap };
                if slot.replace(section.custom_data).is_some() {
                    return Err(ArtifactError::Malformed(format!("more than one `{name}` section")));
                }
            }
            _ => {}
        }
        let name = section.custom_name.unwrap_or_else(|| section_name(section.id));
        sections.push(SectionInfo {
            id: section.id,
            name: name.to_string(),
            range: section.range.clone(),
        });
    }
    for payload in Parser::new(0).parse_all(bytes) {
        if let Payload::ImportSection(reader) = payload.map_err(|e| malformed(&e))? {
            for import in reader.into_imports() {
                let import = import.map_err(|e| malformed(&e))?;
                wasm_imports.push(WasmImport {
                    module: import.module.to_string(),
                    name: import.name.to_string(),
                });
            }
        }
    }

    let meta = Meta::from_json(meta.ok_or(ArtifactError::MissingSection(META_SECTION))?)?;
    let srcmap = SourceMap::decode(srcmap.ok_or(ArtifactError::MissingSection(SRCMAP_SECTION))?)?;
    let signed_digest: [u8; 32] = Sha256::digest(&bytes[..signed_end]).into();
    Ok(ArtifactInfo {
        size: bytes.len(),
        sha256: hex::encode(Sha256::digest(bytes)),
        signed_size: signed_end,
        signed_sha256: hex::encode(signed_digest),
        meta,
        srcmap,
        signature,
        wasm_imports,
        sections,
        signed_digest,
    })
}

/// [`ArtifactError::FormatTooNew`] when `bytes`' sections can be walked and
/// its metadata names a format newer than [`abi::FORMAT_VERSION`].
fn newer_format(bytes: &[u8]) -> Option<ArtifactError> {
    let sections = walk_sections(bytes).ok()?;
    let meta = sections.iter().find(|s| s.custom_name == Some(META_SECTION))?;
    match Meta::from_json(meta.custom_data) {
        Err(e @ ArtifactError::FormatTooNew { .. }) => Some(e),
        _ => None,
    }
}

/// Checks the signature of an inspected artifact against `trusted`:
/// `Valid` or `Unsigned`; an unknown key gives [`ArtifactError::UntrustedKey`],
/// a wrong signature [`ArtifactError::BadSignature`].
pub fn check_signature(info: &ArtifactInfo, trusted: &TrustedKeys) -> Result<SignatureStatus, ArtifactError> {
    let Some(sig) = &info.signature else {
        return Ok(SignatureStatus::Unsigned);
    };
    let key = trusted.get(&sig.key_id).ok_or_else(|| ArtifactError::UntrustedKey {
        key_id: sig.key_id.clone(),
    })?;
    key.verify_strict(&info.signed_digest, &sig.signature)
        .map_err(|_| ArtifactError::BadSignature)?;
    Ok(SignatureStatus::Valid {
        key_id: sig.key_id.clone(),
    })
}

/// Checks that the module's command imports (module [`abi::COMMAND_MODULE`])
/// are exactly the metadata's imports, and that the metadata states the
/// registry's capability class for every known command — so metadata can
/// neither hide a command nor understate what it may do.
pub fn check_imports(info: &ArtifactInfo) -> Result<(), ArtifactError> {
    let mismatch = |detail: String| Err(ArtifactError::ImportsMismatch { detail });
    let wasm: BTreeSet<(&str, &str)> = info
        .wasm_imports
        .iter()
        .filter(|i| i.module == abi::COMMAND_MODULE)
        .map(|i| (i.module.as_str(), i.name.as_str()))
        .collect();
    let mut meta = BTreeSet::new();
    for import in &info.meta.imports {
        if !meta.insert((import.module.as_str(), import.name.as_str())) {
            return mismatch(format!("metadata lists `{}.{}` twice", import.module, import.name));
        }
        let Some(class) = Capability::ALL.iter().find(|c| c.as_str() == import.capability) else {
            return mismatch(format!(
                "unknown capability class `{}` for `{}`",
                import.capability, import.name
            ));
        };
        if let Some(sig) = command(&import.name)
            && sig.capability != *class
        {
            return mismatch(format!(
                "metadata says `{}` is `{}` but it is `{}`",
                import.name,
                import.capability,
                sig.capability.as_str()
            ));
        }
    }
    if let Some((module, name)) = wasm.difference(&meta).next() {
        return mismatch(format!(
            "the module imports `{module}.{name}` but the metadata does not list it"
        ));
    }
    if let Some((module, name)) = meta.difference(&wasm).next() {
        return mismatch(format!(
            "the metadata lists `{module}.{name}` but the module does not import it"
        ));
    }
    Ok(())
}

/// Everything the runtime checks before loading an artifact: valid module,
/// required sections, supported format, signature by a trusted key (or no
/// signature when `allow_unsigned`), imports consistent with the metadata.
pub fn verify(bytes: &[u8], trusted: &TrustedKeys, allow_unsigned: bool) -> Result<Verified, ArtifactError> {
    let info = inspect(bytes)?;
    let signature = check_signature(&info, trusted)?;
    if signature == SignatureStatus::Unsigned && !allow_unsigned {
        return Err(ArtifactError::Unsigned);
    }
    check_imports(&info)?;
    Ok(Verified { info, signature })
}
