//! `peft-studio-cli`: the studio without a window, for servers and scripts.

mod args;
mod commands;
mod data;
mod flags;
mod models;
mod progress;
mod runs;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // `train` and `resume` start this program again as the run's worker.
    if let Some(code) = peft_studio_app::worker::main_if_worker() {
        return std::process::ExitCode::from(code as u8);
    }
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
