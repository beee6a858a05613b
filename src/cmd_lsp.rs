//! `avap lsp`: the language server for editors, over stdin/stdout. The
//! server is the `avap-lsp` library; this only hands it the CLI's include
//! rules (`FsLoader`: the script's directory and `--include-path`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use avap_codegen::check::SourceLoader;
use avap_server::fs_loader::FsLoader;

use crate::cli::IncludeArgs;

/// `avap lsp --help`.
pub const LONG_ABOUT: &str = "Start the AVAP language server on stdin/stdout (JSON-RPC with Content-Length framing).

Editors start it themselves; see docs/editors.md for VS Code and Neovim. It reports the \
diagnostics of `avap check` as you type (includes resolve from the document's directory and \
--include-path, as on the command line), and offers hover (command forms, capability class, \
doc line; user functions; where a variable is first assigned), completion (commands with \
parameter placeholders, built-ins, statements, functions, variables in scope), go to \
definition (functions, includes, variables) and document symbols (functions, endpoints).

Exits 0 after the editor's shutdown and exit, 1 when the editor goes away without them.";

#[derive(Debug, clap::Args)]
pub struct LspArgs {
    #[command(flatten)]
    includes: IncludeArgs,
    /// Accepted and ignored: stdio is the only transport (some clients always pass it)
    #[arg(long)]
    stdio: bool,
}

pub fn lsp(args: &LspArgs) -> Result<ExitCode> {
    let include_paths = args.includes.resolve()?;
    let resolver = move |script: &Path| -> std::result::Result<Box<dyn SourceLoader>, String> {
        FsLoader::for_script(script, &include_paths)
            .map(|loader| Box::new(loader) as Box<dyn SourceLoader>)
            .map_err(|e| format!("{e:#}"))
    };
    let exit = avap_lsp::serve_stdio(&resolver).context("avap lsp")?;
    Ok(match exit {
        avap_lsp::Exit::Clean => ExitCode::SUCCESS,
        avap_lsp::Exit::WithoutShutdown => ExitCode::FAILURE,
    })
}
