//! `avap-codegen`: the AVAP compiler front end (and, next, back end).
//!
//! Pipeline: source text → [`lexer`] tokens → [`parser`] AST ([`ast`], every
//! node with a byte [`span::Span`]) → [`check`] (blocks, names, command
//! signatures from `avap-hostfns`, includes) → diagnostics ([`diag`]).
//!
//! Invariants: nothing here does I/O (included files come through the
//! [`check::SourceLoader`] trait), nothing depends on wasmtime, and no input
//! makes the front end panic — any byte string gives a tree and diagnostics.
//!
//! ```
//! use avap_codegen::{SourceFile, parse};
//!
//! let file = SourceFile::new("hello.avap", "addVar(greeting, 'Hello')\naddResult(greeting)\n");
//! let (program, diagnostics) = parse(&file);
//! assert!(diagnostics.is_empty());
//! assert_eq!(program.body.len(), 2);
//! ```

pub mod ast;
pub mod check;
pub mod compile;
pub mod diag;
pub mod lexer;
pub mod lower;
pub mod params;
pub mod parser;
pub mod report;
pub mod span;

pub use check::{CheckOptions, CheckedProgram, IncludeError, SourceLoader, check_file, check_source};
pub use compile::{Artifact, compile, compile_with_libraries, compile_with_policy};
pub use diag::{Code, Diagnostic, Severity, Sources};
pub use parser::parse;
pub use report::CheckReport;
pub use span::{SourceFile, Span};
