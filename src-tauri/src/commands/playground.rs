//! The playground: one base model loaded once; generations with the base or with any adapter,
//! streamed token by token (the model and the decoding live in the app crate).

use peft_studio_app::playground::{GenerateRequest, Generation, LoadedModel, Playground};
use tauri::ipc::Channel;
use tauri::State;

use crate::error::{blocking, CommandResult};

/// The playground shared by the window's commands.
#[derive(Default)]
pub struct Shared(std::sync::Arc<Playground>);

/// Loads `model` (an installed model's name or a folder) as the playground's base, unless it
/// is loaded already.
#[tauri::command]
pub async fn playground_load(
    model: String,
    state: State<'_, Shared>,
) -> CommandResult<LoadedModel> {
    let playground = state.0.clone();
    blocking(move || Ok(playground.load(&model)?)).await
}

/// Generates with the loaded base and the chosen adapter; new text goes to `on_text` as it
/// forms. Stops at the token limit, at EOS, or when `playground_stop` is called.
#[tauri::command]
pub async fn playground_generate(
    request: GenerateRequest,
    on_text: Channel<String>,
    state: State<'_, Shared>,
) -> CommandResult<Generation> {
    let playground = state.0.clone();
    blocking(move || {
        let mut send = |text: &str| {
            let _ = on_text.send(text.to_string());
        };
        Ok(playground.generate(&request, &mut send)?)
    })
    .await
}

/// Stops the generation in progress after its current token.
#[tauri::command]
pub fn playground_stop(state: State<'_, Shared>) {
    state.0.stop();
}
