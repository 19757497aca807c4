//! The desktop shell: registers commands and opens the window. Logic lives in the app crate.

pub mod commands;
pub mod error;
pub mod paths;

/// Registers every command on `builder` (the real one, or Tauri's mock in tests).
pub fn builder_for<R: tauri::Runtime>(builder: tauri::Builder<R>) -> tauri::Builder<R> {
    builder
        .plugin(tauri_plugin_dialog::init())
        .manage(paths::Chosen::default())
        // A file dropped on the window was chosen by the user as surely as one picked in a
        // dialog (the drop comes from the window system, not from the page). The main window's
        // webview is its content, so its drops arrive as window events.
        .on_window_event(|window, event| {
            if let tauri::WindowEvent::DragDrop(tauri::DragDropEvent::Drop {
                paths: dropped, ..
            }) = event
            {
                let chosen = tauri::Manager::state::<paths::Chosen>(window);
                for path in dropped {
                    chosen.grant(path.clone());
                }
            }
        })
        .manage(commands::playground::Shared::default())
        .manage(commands::runs::Follows::default())
        .manage(commands::serve::Served::default())
        .invoke_handler(tauri::generate_handler![
            commands::about::app_info,
            commands::dialogs::choose_path,
            commands::models::list_models,
            commands::models::import_model,
            commands::models::download_model,
            commands::methods::list_methods,
            commands::methods::list_quantizations,
            commands::methods::form_settings,
            commands::methods::plan_run,
            commands::datasets::inspect_dataset,
            commands::runs::start_run,
            commands::runs::list_runs,
            commands::runs::get_run,
            commands::runs::follow_run,
            commands::runs::unfollow_run,
            commands::runs::cancel_run,
            commands::runs::resume_run,
            commands::runs::compare_runs,
            commands::runs::run_log,
            commands::runs::export_run,
            commands::demo::demo_setup,
            commands::playground::playground_load,
            commands::playground::playground_generate,
            commands::playground::playground_stop,
            commands::adapters::list_adapters,
            commands::adapters::delete_adapter,
            commands::adapters::import_adapter,
            commands::adapters::reveal_adapter,
            commands::runs::save_compare_chart,
            commands::serve::serve_start,
            commands::serve::serve_stop,
            commands::serve::serve_status,
            commands::eval::eval_run
        ])
}

/// Starts the studio.
pub fn run() {
    if let Err(e) = builder_for(tauri::Builder::default()).run(tauri::generate_context!()) {
        eprintln!("PEFT Studio could not start: {e}");
        std::process::exit(1);
    }
}
