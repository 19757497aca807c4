//! Any bytes as an adapter folder to import: the input is split into `adapter_config.json` and
//! the weights file (PEFT's or the adapters library's name, by the first byte), checked as an
//! import checks it and attached to a small Llama; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peft_studio_engine::fixtures::{write_tiny_model, TinySpec};
use peft_studio_engine::model::load_model;
use peft_studio_engine::peft::load::attach_adapter;

fuzz_target!(
    init: {
        // Panics the studio contains (third-party readers on malformed files) are not crashes;
        // one that escapes still aborts through libfuzzer-sys.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    // The config is the text up to the first NUL; the weights are what follows.
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
    if let Ok(mut model) = load_model(&model_dir, candle_core::DType::F32, &candle_core::Device::Cpu) {
        let _ = attach_adapter(&mut model, &adapter, Some(0.0));
    }
});
