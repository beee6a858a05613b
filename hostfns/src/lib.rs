//! `avap-hostfns` is the one place that says what an AVAP command is.
//!
//! Today it holds the **signature registry** ([`signature`]): every command's
//! parameters and their kinds (spec §4), its capability class and whether it
//! yields a value. The compiler front end checks calls against it, `avap
//! audit` prints it, and the runtime linker will register exactly these names.
//!
//! The signature tables are plain `static` data with no dependencies beyond
//! `serde`, so depending on this crate never pulls HTTP or database clients
//! into the compiler.
//!
//! ```
//! use avap_hostfns::signature::{command, Capability, ParamKind};
//!
//! let sig = command("getListLen").unwrap();
//! assert_eq!(sig.capability, Capability::Pure);
//! assert_eq!(sig.forms[0][1].kind, ParamKind::Target);
//! ```

pub mod signature;

pub use signature::{Capability, CommandSig, ParamKind, Returns, command, commands};
