//! The shell's commands through Tauri's IPC, without a display.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use tauri::test::{get_ipc_response, mock_builder, mock_context, noop_assets, INVOKE_KEY};
use tauri::webview::InvokeRequest;

#[test]
fn app_info_answers_over_ipc() {
    let app = peft_studio_app::builder_for(mock_builder())
        .build(mock_context(noop_assets()))
        .expect("app");
    let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .expect("webview");
    let res = get_ipc_response(
        &webview,
        InvokeRequest {
            cmd: "app_info".into(),
            callback: tauri::ipc::CallbackFn(0),
            error: tauri::ipc::CallbackFn(1),
            url: "tauri://localhost".parse().expect("url"),
            body: tauri::ipc::InvokeBody::default(),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .expect("response");
    let info: serde_json::Value = res.deserialize().expect("json");
    assert_eq!(info["name"], "PEFT Studio");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
}
