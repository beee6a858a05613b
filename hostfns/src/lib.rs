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

pub mod abi;
pub mod artifact;
pub mod commands;
pub mod context;
#[cfg(feature = "effects")]
pub mod effects;
pub mod error;
pub mod json;
pub mod limits;
pub mod memory;
pub mod ops;
pub mod redact;
pub mod signature;
pub mod value;

pub use context::{Endpoint, HostContext, Request};
pub use error::{AvapError, ErrorKind, HostError};
pub use limits::{LimitHit, LimitKind};
pub use memory::MemoryBudget;
pub use signature::{Capability, CommandSig, ParamKind, Returns, command, commands};
pub use value::{Dict, Value};
