//! `avap-lsp`: the AVAP language server behind `avap lsp`.
//!
//! Synchronous (lsp-server's `Connection`, one thread answering), built on
//! the compiler's front end and the command contract only: a document is
//! checked exactly as `avap check` checks a file (same codes, messages and
//! include rules — the binary passes the CLI's filesystem loader through
//! [`IncludeResolver`]), and hovers and completions read the command
//! signatures, capability classes and doc lines from
//! `avap_hostfns::signature`.
//!
//! * [`run`] serves one client on any `Connection` (tests use
//!   `Connection::memory()`); [`serve_stdio`] is `avap lsp`.
//! * [`framed`] is the Content-Length transport over any byte streams; it
//!   answers malformed messages with JSON-RPC errors instead of stopping.
//!
//! Features: diagnostics on open/change/save, hover (commands, built-ins,
//! statements, user functions, variables), completion, go to definition
//! (functions, includes, variables), document symbols (functions,
//! `registerEndpoint` routes). Positions in UTF-16 unless the client offers
//! UTF-8.

mod analysis;
mod completion;
mod diagnostics;
mod documents;
mod hover;
mod navigation;
mod position;
mod server;
mod statements;
mod transport;

use std::io::BufReader;

pub use analysis::{IncludeResolver, NoIncludeResolver};
pub use server::{Exit, run};
pub use transport::{IoThreads, MAX_MESSAGE_BYTES, framed};

/// Why the server stopped other than by the protocol's `exit`.
#[derive(Debug, thiserror::Error)]
pub enum LspError {
    #[error("the connection to the editor is closed (nothing reads the server's output)")]
    Disconnected,
    #[error("writing to the editor: {0}")]
    Io(#[from] std::io::Error),
}

/// `avap lsp`: serve one editor over stdin/stdout until it says `exit` or
/// closes stdin.
pub fn serve_stdio(resolver: &dyn IncludeResolver) -> Result<Exit, LspError> {
    let (connection, threads) = framed(BufReader::new(std::io::stdin()), std::io::stdout());
    let exit = run(&connection, resolver);
    drop(connection);
    threads.finish_writing()?;
    exit
}
