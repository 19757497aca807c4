// Prevents an extra console window on Windows in release.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match peft_studio_shell::worker_mode::parse(&args) {
        Some(Ok((catalog, run))) => {
            std::process::exit(peft_studio_shell::worker_mode::run(catalog, run))
        }
        Some(Err(message)) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
        None => peft_studio_shell::run(),
    }
}
