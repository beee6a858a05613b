//! `avap`: compile, check and run AVAP scripts; serve them over HTTP.

mod cli;
mod cmd_apikey;
mod cmd_audit;
mod cmd_inspect;
mod cmd_keys;
mod cmd_run;
mod conformance;
mod exec;
mod server;

fn main() -> std::process::ExitCode {
    cli::main()
}
