//! The model library: importing GGUF files and folders, the registry, and bad input.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use peft_studio_engine::library::import::{default_name, describe_folder, import_gguf};
use peft_studio_engine::library::{resolve, Registry};
use peft_studio_engine::model::gguf::{GgufModel, GgufWeights};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(rel)
}

fn read_error(path: &Path) -> String {
    match GgufModel::open(path).and_then(|m| m.tensors(&mut |_, _| {})) {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => e.to_string(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn gguf_import_registers_a_loadable_model_by_name() {
    let home = tempfile::tempdir().unwrap();
    let gguf = fixture("gguf/tiny-llama-spm.gguf");
    let mut calls = 0;
    let entry = import_gguf(
        &gguf,
        home.path(),
        "tiny",
        GgufWeights::Converted,
        &mut |_, _| calls += 1,
    )
    .unwrap();
    assert!(calls > 0, "progress is reported");
    assert_eq!(entry.architecture, "LlamaForCausalLM");
    assert_eq!(entry.dtype, "F32");
    assert!(entry.parameters > 0 && entry.size_bytes >= entry.parameters * 4);
    let mut registry = Registry::open(home.path()).unwrap();
    registry.put(entry.clone()).unwrap();
    let reopened = Registry::open(home.path()).unwrap();
    assert_eq!(reopened.get("tiny"), Some(&entry));
    assert_eq!(resolve(home.path(), Path::new("tiny")).unwrap(), entry.path);
    let unknown = resolve(home.path(), Path::new("nope"))
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("models list"), "{unknown}");
}

#[test]
fn truncated_gguf_is_refused_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("gguf/tiny-llama-spm.gguf")).unwrap();
    for keep in [16, 3000, bytes.len() * 9 / 10] {
        let path = dir.path().join(format!("cut-{keep}.gguf"));
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = read_error(&path);
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
        assert!(
            err.contains("truncated") || err.contains("remaining"),
            "{err}"
        );
        let home = dir.path().join("home");
        for weights in [GgufWeights::AsStored, GgufWeights::Converted] {
            assert!(import_gguf(&path, &home, "cut", weights, &mut |_, _| {}).is_err());
        }
        let left: Vec<_> = std::fs::read_dir(home.join("models"))
            .map(|d| d.collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "a failed import leaves no folder");
    }
}

#[test]
fn wrong_magic_says_it_is_not_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"PK\x03\x04 this is a zip file, not a model").unwrap();
    assert!(read_error(&path).contains("not a GGUF file"));
}

#[test]
fn unknown_tensor_type_is_named() {
    // A minimal GGUF v3 header whose one tensor claims type 99.
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"llama");
    let name = b"token_embd.weight";
    b.extend_from_slice(&(name.len() as u64).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&32u64.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(&23u32.to_le_bytes()); // IQ4_XS: llama.cpp's, not candle's
    b.extend_from_slice(&0u64.to_le_bytes());
    b.resize(b.len() + 1024, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.gguf");
    std::fs::write(&path, b).unwrap();
    let err = read_error(&path);
    assert!(
        err.contains("tensor `token_embd.weight` is stored as IQ4_XS (type 23)")
            && err.contains("cannot read")
            && err.contains("llama-quantize"),
        "{err}"
    );
}

/// A GGUF file with `metadata` and one small F32 `token_embd.weight`, written by candle.
fn small_gguf(path: &Path, metadata: &[(&str, &Value)]) {
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, metadata, &[("token_embd.weight", &t)]).unwrap();
}

#[test]
fn zero_alignment_is_a_corrupt_header_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("align0.gguf");
    let arch = Value::String("llama".into());
    let zero = Value::U32(0);
    small_gguf(
        &path,
        &[
            ("general.architecture", &arch),
            ("general.alignment", &zero),
        ],
    );
    let err = read_error(&path);
    assert!(err.contains("corrupt GGUF header"), "{err}");
}

#[test]
fn non_llama_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.gguf");
    let arch = Value::String("gpt2".into());
    small_gguf(&path, &[("general.architecture", &arch)]);
    let err = read_error(&path);
    assert!(
        err.contains("architecture `gpt2` is not supported"),
        "{err}"
    );
    assert!(err.contains("llama"), "lists what is supported: {err}");
}

/// A copy of the transformers llama2 fixture (which has no tokenizer) with `edit` applied.
fn broken_copy(dir: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let copy = dir.join(name);
    copy_dir(&fixture("archs/llama2"), &copy);
    edit(&copy);
    copy
}

fn folder_error(folder: &Path) -> String {
    describe_folder(folder, "x", "folder")
        .unwrap_err()
        .to_string()
}

#[test]
fn folder_checks_name_the_missing_or_broken_part() {
    let dir = tempfile::tempdir().unwrap();
    let err = folder_error(&broken_copy(dir.path(), "no-tokenizer", |_| {}));
    assert!(err.contains("tokenizer.json"), "{err}");

    let err = folder_error(&broken_copy(dir.path(), "gpt2", |f| {
        let cfg = std::fs::read_to_string(f.join("config.json")).unwrap();
        std::fs::write(
            f.join("config.json"),
            cfg.replace("LlamaForCausalLM", "GPT2LMHeadModel"),
        )
        .unwrap();
    }));
    assert!(
        err.contains("GPT2LMHeadModel") && err.contains("not supported"),
        "{err}"
    );

    // A header claiming more than the file holds, and a file cut short.
    let err = folder_error(&broken_copy(dir.path(), "corrupt", |f| {
        let mut bytes = std::fs::read(f.join("model.safetensors")).unwrap();
        bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        std::fs::write(f.join("model.safetensors"), bytes).unwrap();
    }));
    assert!(
        err.contains("model.safetensors") && err.contains("corrupt"),
        "{err}"
    );
    let err = folder_error(&broken_copy(dir.path(), "short", |f| {
        let bytes = std::fs::read(f.join("model.safetensors")).unwrap();
        std::fs::write(f.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    }));
    assert!(err.contains("truncated"), "{err}");

    // Names that would escape the library folder.
    for bad in ["../evil", "", ".hidden", "a/b"] {
        assert!(import_gguf(
            &fixture("gguf/tiny-llama-spm.gguf"),
            dir.path(),
            bad,
            GgufWeights::AsStored,
            &mut |_, _| {}
        )
        .is_err());
    }
}

#[test]
fn default_names_keep_dots_and_drop_the_gguf_extension() {
    assert_eq!(default_name(Path::new("Qwen/Qwen2.5-0.5B")), "Qwen2.5-0.5B");
    assert_eq!(
        default_name(Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")),
        "SmolLM2-135M-Instruct.Q4_1"
    );
    assert_eq!(default_name(Path::new("my model")), "my-model");
}
