//! `avap`: compile, check and run AVAP scripts; serve them over HTTP.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
