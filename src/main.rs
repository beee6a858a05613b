//! `avap`: compile, check and run AVAP scripts; serve them over HTTP.

/// `println!` that returns the write's error instead of panicking when
/// whoever reads stdout has gone (`avap run … | head`); `cli::main` then
/// ends quietly.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod cli;
mod cmd_apikey;
mod cmd_audit;
mod cmd_db;
mod cmd_health;
mod cmd_inspect;
mod cmd_keys;
mod cmd_lsp;
mod cmd_run;
// The server library under its old module names, for the commands.
use avap_server as server;
use avap_server::exec;
// The conformance runner, under its old module name.
use avap_conformance as conformance;

/// mimalloc: a run allocates and frees many small values; glibc's malloc
/// was a third of the `json_build` benchmark (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
