//! The shell's commands through Tauri's IPC, without a display.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use tauri::test::{get_ipc_response, mock_builder, mock_context, noop_assets, INVOKE_KEY};
use tauri::webview::InvokeRequest;

fn invoke(cmd: &str) -> tauri::ipc::InvokeResponseBody {
    let app = peft_studio_shell::builder_for(mock_builder())
        .build(mock_context(noop_assets()))
        .expect("app");
    let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .expect("webview");
    get_ipc_response(
        &webview,
        InvokeRequest {
            cmd: cmd.into(),
            callback: tauri::ipc::CallbackFn(0),
            error: tauri::ipc::CallbackFn(1),
            url: "tauri://localhost".parse().expect("url"),
            body: tauri::ipc::InvokeBody::default(),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .expect("response")
}

#[test]
fn app_info_answers_over_ipc() {
    let info: serde_json::Value = invoke("app_info").deserialize().expect("json");
    assert_eq!(info["name"], "PEFT Studio");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn list_models_reads_the_library_the_cli_writes() {
    let home = tempfile::tempdir().expect("tempdir");
    let entry = peft_studio_engine::library::ModelEntry {
        name: "SmolLM2-135M-Instruct".into(),
        path: home.path().join("models/SmolLM2-135M-Instruct"),
        source: "gguf:/tmp/x.gguf".into(),
        architecture: "LlamaForCausalLM".into(),
        parameters: 134_515_008,
        dtype: "F32".into(),
        context_length: 8192,
        size_bytes: 538_090_408,
        added_unix: 1,
    };
    let mut registry = peft_studio_engine::library::Registry::open(home.path()).expect("open");
    registry.put(entry).expect("save");
    std::env::set_var("PEFT_STUDIO_HOME", home.path());
    let models: serde_json::Value = invoke("list_models").deserialize().expect("json");
    assert_eq!(models[0]["name"], "SmolLM2-135M-Instruct");
    assert_eq!(models[0]["parameters"], 134_515_008);
}
