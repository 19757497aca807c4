//! What each fuzz target does with its input, as plain functions: `fuzz_targets/*.rs` hand
//! them libFuzzer's inputs, and the engine's tests (`tests/engine/fuzz_replay.rs`) replay the
//! committed corpus through them, so every build checks them.

use std::path::Path;

use peft_studio_engine::data::load::{read_records, DataConfig};
use peft_studio_engine::fixtures::{write_tiny_model, TinySpec};
use peft_studio_engine::gguf::lora_read::read_gguf_lora;
use peft_studio_engine::model::gguf::GgufModel;
use peft_studio_engine::model::{load_model, LlamaConfig};
use peft_studio_engine::peft::load::attach_adapter;
use peft_studio_engine::run::RunConfig;

const EXTENSIONS: [&str; 6] = ["jsonl", "json", "csv", "tsv", "txt", "parquet"];

/// A small Llama config for the targets that need a model's layout.
const LLAMA: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":32,"intermediate_size":64,
 "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":260,"model_type":"llama"}"#;

/// Any bytes as any dataset format (the first byte picks the extension): read into records.
pub fn dataset_reader(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join(format!(
        "data.{}",
        EXTENSIONS[pick as usize % EXTENSIONS.len()]
    ));
    if std::fs::write(&path, body).is_ok() {
        let _ = read_records(&path, &DataConfig::default());
    }
}

/// Any bytes as a GGUF file: opened as a model (every tensor dequantised) and as a LoRA.
pub fn gguf_reader(data: &[u8]) {
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
}

/// Any bytes as an adapter folder: `adapter_config.json` up to the first NUL, the weights
/// (PEFT's or the adapters library's file name, by the first byte) after it; its header read
/// and the adapter attached to a small Llama.
pub fn adapter_import(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (config, weights) = (&rest[..cut], rest.get(cut + 1..).unwrap_or_default());
    let adapter = dir.path().join("adapter");
    let model_dir = dir.path().join("model");
    let name = if pick % 2 == 0 {
        "adapter_model.safetensors"
    } else {
        "adapter.safetensors"
    };
    let written = std::fs::create_dir_all(&adapter).is_ok()
        && std::fs::write(adapter.join("adapter_config.json"), config).is_ok()
        && std::fs::write(adapter.join(name), weights).is_ok()
        && write_tiny_model(&model_dir, &TinySpec::default()).is_ok();
    if !written {
        return;
    }
    let _ = peft_studio_engine::library::weights::header(&adapter.join(name));
    if let Ok(mut model) = load_model(
        &model_dir,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    ) {
        let _ = attach_adapter(&mut model, &adapter, Some(0.0));
    }
}

/// Any text as a run config: parsed, then validated as a run start validates it.
pub fn run_config(data: &[u8]) {
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
                cpu: true,
                checkpointing: cfg.train.gradient_checkpointing,
                quantized: cfg
                    .train
                    .quantize
                    .map(peft_studio_engine::model::quantized::BaseFormats::projections),
            },
        );
    }
}

/// Replays every file of `corpus/<target>` (and `regressions/<target>`) under `fuzz_dir`.
pub fn replay(fuzz_dir: &Path, target: &str, run: fn(&[u8])) -> usize {
    let mut n = 0;
    for folder in ["corpus", "regressions"] {
        for entry in std::fs::read_dir(fuzz_dir.join(folder).join(target))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                run(&bytes);
                n += 1;
            }
        }
    }
    n
}

/// A libFuzzer entry point for the target function `$target` of this module: `fuzz_entry!(name);`
/// in a `#![no_main]` binary that includes this file as `mod targets`.
macro_rules! fuzz_entry {
    ($target:ident) => {
        libfuzzer_sys::fuzz_target!(
            init: {
                // Panics the studio contains (third-party readers on malformed files) are not
                // crashes; one that escapes still aborts through libfuzzer-sys.
                std::panic::set_hook(Box::new(|_| {}));
            },
            |data: &[u8]| targets::$target(data)
        );
    };
}
#[allow(unused_imports)] // the engine's replay test includes this file too
pub(crate) use fuzz_entry;
