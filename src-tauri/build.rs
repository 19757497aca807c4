/// The commands the UI may call. Declaring them makes Tauri check every call against the
/// capabilities (src-tauri/capabilities/default.json grants each as `allow-<name>`): a command
/// not granted there is refused, whatever the webview runs.
const COMMANDS: &[&str] = &[
    "app_info",
    "choose_path",
    "list_models",
    "import_model",
    "download_model",
    "list_methods",
    "list_quantizations",
    "form_settings",
    "plan_run",
    "inspect_dataset",
    "start_run",
    "list_runs",
    "get_run",
    "follow_run",
    "unfollow_run",
    "cancel_run",
    "resume_run",
    "compare_runs",
    "run_log",
    "export_run",
    "demo_setup",
    "playground_load",
    "playground_generate",
    "playground_stop",
    "list_adapters",
    "delete_adapter",
    "import_adapter",
    "reveal_adapter",
    "save_compare_chart",
    "serve_start",
    "serve_stop",
    "serve_status",
    "eval_run",
];

fn main() {
    let attrs = tauri_build::Attributes::new()
        .capabilities_path_pattern("src-tauri/capabilities/**/*")
        .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS));
    if let Err(e) = tauri_build::try_build(attrs) {
        println!("cargo::error={e:#}");
    }
}
