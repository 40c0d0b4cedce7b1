#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = pgcell::cli::Cli::parse();
    pgcell::cli::init_tracing();
    match pgcell::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgcell: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
