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

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use crate::analysis::{Analysis, NoIncludeResolver};
    use crate::position::{Encoding, LineIndex};

    proptest! {
        /// Every feature at every position of arbitrary, mostly half-typed
        /// AVAP: none panics.
        #[test]
        fn features_never_panic_on_half_typed_text(
            pieces in proptest::collection::vec(prop_oneof![
                Just("addVar("), Just("x"), Just(")"), Just("("), Just("\""), Just("`${"), Just("}"),
                Just("{"), Just("function f(a, b) {"), Just("if(x, 1, =)"), Just("end()"), Just("\n"),
                Just("startLoop(i,1,"), Just("ñ"), Just("😀"), Just("include(\"l.avap\")"), Just("$"),
                Just("."), Just(","), Just("//"), Just("/*"), Just("*/"), Just("return("), Just(" = "),
                Just("registerEndpoint(\"/a\", \"GET\", [], \"\", f, o)"), Just("try()"), Just("exception(e)"),
                Just("x = RequestGet("), Just("\r\n"), Just("[1, 2]"), Just("f(x)"),
            ], 0..40),
            positions in proptest::collection::vec((0u32..12, 0u32..60), 1..8),
        ) {
            let text: String = pieces.concat();
            let analysis = Analysis::new(&text, Some(std::path::Path::new("/nonexistent/t.avap")), &NoIncludeResolver);
            let uri: lsp_types::Uri = "file:///nonexistent/t.avap".parse().unwrap();
            let _ = crate::diagnostics::to_lsp(&analysis, &uri, Encoding::Utf16);
            let _ = crate::navigation::symbols(&analysis);
            let main = analysis.main();
            for encoding in [Encoding::Utf16, Encoding::Utf8] {
                let index = LineIndex::new(main.text(), main.line_starts(), encoding);
                for &(line, character) in &positions {
                    let offset = index.offset(lsp_types::Position::new(line, character));
                    prop_assert!(main.text().is_char_boundary(offset));
                    let _ = crate::hover::hover(&analysis, offset);
                    let _ = crate::completion::complete(&analysis, offset, true);
                    let _ = crate::navigation::definition(&analysis, offset);
                }
            }
        }
    }
}
