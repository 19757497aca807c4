// Prevents an extra console window on Windows in release.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    // The window starts this program again as the worker of each run it trains.
    if let Some(code) = peft_studio_app::worker::main_if_worker() {
        std::process::exit(code);
    }
    peft_studio_shell::run();
}
