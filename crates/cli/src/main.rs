//! `peft-studio-cli`: the studio without a window, for servers and scripts.

mod args;
mod bench;
mod commands;
mod data;
mod models;
mod progress;
mod runs;

use clap::Parser;

fn main() -> std::process::ExitCode {
    peft_studio_app::allocator::keep_freed_memory();
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
