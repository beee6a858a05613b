//! `avap-hostfns` is the one place that says what an AVAP command is and
//! what it does.
//!
//! * [`signature`]: every command's parameters and their kinds (spec §4), its
//!   capability class and whether it yields a value — static data the
//!   compiler checks calls against and `avap audit` prints.
//! * [`commands`]: the implementation of every command without outside
//!   effects, as plain Rust over [`Value`]s and a [`HostContext`].
//! * [`ops`]: operator, comparison and built-in semantics on host values
//!   (the slow path of the inline arithmetic the compiler emits).
//! * `effects` (cargo feature `effects`): the commands with outside effects
//!   (outbound HTTP, databases, model endpoint), async, with their clients.
//! * [`abi`] and [`artifact`]: the contract between compiled modules and the
//!   runtime (value tags, helper imports, memory layout, custom sections,
//!   signatures). Both sides depend on this crate, never on each other.
//! * [`redact`]: URLs without their credentials, and the configured secrets
//!   kept out of every message a client may see.
//!
//! Nothing here depends on wasmtime.
//!
//! ```
//! use avap_hostfns::signature::{command, Capability, ParamKind};
//!
//! let sig = command("getListLen").unwrap();
//! assert_eq!(sig.capability, Capability::Pure);
//! assert_eq!(sig.forms[0][1].kind, ParamKind::Target);
//! ```

// The contract: what the compiler and the runtime agree on.
pub mod abi;
pub mod artifact;
pub mod error;
pub mod limits;
pub mod signature;

// The implementations (feature `commands`, on by default; the compiler
// builds without them, so without regex, time-zone data or md-5).
#[cfg(feature = "commands")]
pub mod commands;
#[cfg(feature = "commands")]
pub mod context;
#[cfg(feature = "effects")]
pub mod effects;
#[cfg(feature = "commands")]
pub mod json;
#[cfg(feature = "commands")]
pub mod memory;
#[cfg(feature = "commands")]
pub mod ops;
#[cfg(feature = "commands")]
pub mod redact;
#[cfg(feature = "commands")]
pub mod value;
#[cfg(feature = "commands")]
pub mod zone;

#[cfg(feature = "commands")]
pub use context::{AsyncState, Endpoint, HostContext, Request};
pub use error::{AvapError, ErrorKind, HostError};
pub use limits::{LimitHit, LimitKind};
#[cfg(feature = "commands")]
pub use memory::MemoryBudget;
pub use signature::{Capability, CommandSig, ParamKind, Returns, command, commands};
#[cfg(feature = "commands")]
pub use value::{Dict, Value};
