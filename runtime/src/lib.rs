//! `avap-runtime` runs signed AVAP WebAssembly artifacts in wasmtime under
//! hard limits (fuel, epoch deadline, memory, stack, output size).
//!
//! * [`Runtime`] — one per process: the wasmtime `Engine` (pooling
//!   allocator, fuel, epoch interruption with a ticker thread), the `Linker`
//!   built from `avap-hostfns`, and the cache of loaded artifacts.
//! * [`Runtime::load`] — verify the signature against trusted keys, check
//!   the imports against the [`CapabilityPolicy`], compile, `InstancePre`.
//! * [`Runtime::load_precompiled`] — the same with a sealed `.cwasm`
//!   ([`precompiled`]) instead of compiling: native code is loaded only
//!   when a key trusted for it sealed it for this engine and artifact.
//! * [`Runtime::load_cached`] — [`Runtime::load`] through an on-disk cache
//!   of native code ([`module_cache`]), for one-shot processes (`avap run`).
//! * [`Runtime::run`] — a fresh store per run with its [`Limits`]; returns a
//!   [`RunReport`] (HTTP status, response envelope, [`Usage`]) for every
//!   outcome, sandbox limits included.
//!
//! This crate never parses AVAP: it only knows the ABI in
//! `avap_hostfns::abi` and the artifact format in `avap_hostfns::artifact`.

mod blocks;
mod effects;
mod engine;
mod envelope;
mod error;
mod heap;
mod linker;
mod load;
pub mod module_cache;
mod policy;
pub mod precompiled;
mod recycle;
mod run;
mod shared;
mod state;

pub use avap_hostfns::effects::Effects;
pub use engine::{Runtime, RuntimeConfig};
pub use envelope::Envelope;
pub use error::LoadError;
pub use linker::BYTES_PER_FUEL as HOST_BYTES_PER_FUEL;
pub use load::LoadedModule;
pub use policy::CapabilityPolicy;
pub use run::RunInput;

/// Per-run limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Wasm fuel units (about one per instruction; host work is charged too).
    pub fuel: u64,
    /// Wall-clock budget in milliseconds, host waits included.
    pub time_ms: u64,
    /// Linear memory plus host heap, in bytes.
    pub memory_bytes: u64,
    /// AVAP call stack budget, in bytes of frames.
    pub stack_bytes: u64,
    /// Size of the response `result`, as JSON bytes.
    pub output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::CLI
    }
}

impl Limits {
    /// Generous defaults for `avap run` (enough for the benchmark workloads).
    pub const CLI: Limits = Limits {
        fuel: 10_000_000_000,
        time_ms: 60_000,
        memory_bytes: 512 << 20,
        stack_bytes: 1 << 20,
        output_bytes: 64 << 20,
    };
}

/// Resource usage of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    pub fuel: u64,
    pub wall_ms: f64,
    pub peak_memory_bytes: u64,
}

/// The outcome of one run: the HTTP status, the response envelope of spec §7
/// and the resource usage.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunReport {
    pub http_status: u16,
    /// `{"status": true, "elapsed": …, "result": {…}}` or
    /// `{"status": false, "elapsed": …, "error": {"kind", "message", "line", "column"}}`.
    pub envelope: Envelope,
    pub usage: Usage,
}
