//! Any bytes as a GGUF file: opened as a model (header, metadata, tokenizer, tensor list, every
//! tensor dequantised) and as a LoRA adapter for a small Llama; never a panic or an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peft_studio_engine::model::gguf::GgufModel;
use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::peft::gguf_lora::read_gguf_lora;

const LLAMA: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":32,"intermediate_size":64,
 "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":260,"model_type":"llama"}"#;

fuzz_target!(
    init: {
        // Panics the studio contains (third-party readers on malformed files) are not crashes;
        // one that escapes still aborts through libfuzzer-sys.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("model.gguf");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(model) = GgufModel::open(&path) {
        let _ = model.tensors(&mut |_, _| {});
    }
    if let Ok(cfg) = LlamaConfig::from_json(LLAMA) {
        let _ = read_gguf_lora(&path, &cfg);
    }
});
