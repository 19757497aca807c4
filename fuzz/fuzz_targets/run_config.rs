//! Any text as a run config (`run.toml`): parsed, then validated as a run start validates it
//! (training settings, and the method against a small Llama's config); never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::run::RunConfig;

const LLAMA: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":32,"intermediate_size":64,
 "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":260,"model_type":"llama"}"#;

fuzz_target!(
    init: {
        // Panics the studio contains (third-party readers on malformed files) are not crashes;
        // one that escapes still aborts through libfuzzer-sys.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = toml::from_str::<RunConfig>(text) else {
        return;
    };
    let _ = cfg.train.validate();
    if let Ok(model) = LlamaConfig::from_json(LLAMA) {
        let _ = peft_studio_engine::plan::count_params(&model, &cfg.method);
        let _ = peft_studio_engine::memory::estimate(
            &model,
            &cfg.method,
            peft_studio_engine::memory::StepShape {
                batch: cfg.train.batch_size,
                seq_len: cfg.train.seq_len,
                dtype: candle_core::DType::F32,
            },
        );
    }
});
