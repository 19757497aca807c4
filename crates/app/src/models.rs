//! The model library (`models.json` in the studio home): list, import a folder or GGUF file,
//! download from the hub, convert to GGUF, remove. Long work reports progress through a
//! callback; the front ends draw it.

use std::path::{Path, PathBuf};

use peft_studio_engine::gguf::model::write_random_gguf;
use peft_studio_engine::library::hub;
use peft_studio_engine::library::import::{default_name, describe_folder, import_gguf};
use peft_studio_engine::library::{studio_home, Registry};
use peft_studio_engine::model::gguf::GgufWeights;
use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::EngineError;

pub use peft_studio_engine::library::hub::DownloadProgress;
pub use peft_studio_engine::library::ModelEntry;

use crate::error::Result;

/// A model folder as given, or the folder of the installed model of that name.
pub fn resolve_model(model: &Path) -> Result<PathBuf> {
    Ok(peft_studio_engine::library::resolve(&studio_home(), model)?)
}

/// The installed models.
pub fn list() -> Result<Vec<ModelEntry>> {
    Ok(Registry::open(&studio_home())?.models().to_vec())
}

/// The installed model of that name, if any.
pub fn installed(name: &str) -> Result<Option<ModelEntry>> {
    Ok(Registry::open(&studio_home())?.get(name).cloned())
}

/// The name asked for (when not blank), or the default one for `source`.
pub fn name_or_default(name: Option<String>, source: &Path) -> String {
    name.filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| default_name(source))
}

fn install(entry: ModelEntry) -> Result<ModelEntry> {
    Registry::open(&studio_home())?.put(entry.clone())?;
    Ok(entry)
}

/// Installs a Hugging Face folder or a GGUF file under `name` (default: the file or folder
/// name), both used in place: a GGUF base trains with the types it stores, unless `convert`
/// dequantises it into an f32 safetensors folder. `on_tensors(done, total)` follows a GGUF
/// file's tensors.
pub fn import(
    path: &Path,
    name: Option<String>,
    convert: bool,
    on_tensors: &mut dyn FnMut(usize, usize),
) -> Result<ModelEntry> {
    let name = name_or_default(name, path);
    let entry = if path.is_file() {
        let weights = match convert {
            true => GgufWeights::Converted,
            false => GgufWeights::AsStored,
        };
        import_gguf(path, &studio_home(), &name, weights, on_tensors)?
    } else {
        describe_folder(path, &name, "folder")?
    };
    install(entry)
}

/// Downloads `repo` at `revision` from the hub (HF_HOME, HF_ENDPOINT, HF_TOKEN apply) and
/// installs it under `name` (default: the repository's name).
pub fn download(
    repo: &str,
    revision: &str,
    name: Option<String>,
    progress: &mut dyn DownloadProgress,
) -> Result<ModelEntry> {
    let name = name_or_default(name, Path::new(repo));
    let snapshot = hub::download(repo, revision, progress)?;
    install(describe_folder(
        &snapshot,
        &name,
        &format!("hub:{repo}@{revision}"),
    )?)
}

/// Downloads a dataset's data files from the hub into its cache; returns their paths.
pub fn download_dataset(
    repo: &str,
    revision: &str,
    progress: &mut dyn DownloadProgress,
) -> Result<Vec<PathBuf>> {
    Ok(hub::download_dataset(repo, revision, progress)?)
}

/// Removes a model from the library; files the studio itself wrote (a converted GGUF) are
/// deleted, others are the user's and stay.
pub fn remove(name: &str) -> Result<ModelEntry> {
    let home = studio_home();
    let entry = Registry::open(&home)?.remove(name)?;
    // Entries hold canonical paths, so compare against the canonical owned folder.
    if let Ok(owned) = home.join("models").join(name).canonicalize() {
        if entry.path.starts_with(&owned) {
            let _ = std::fs::remove_dir_all(&owned);
        }
    }
    Ok(entry)
}

fn fresh(out: &Path) -> Result<()> {
    if out.exists() {
        return Err(EngineError::bad_file(out, "already exists; choose a new name").into());
    }
    Ok(())
}

/// Writes `model` (a folder or library name) as one GGUF file of weight type `ty` (`f16`,
/// `q8_0`, …) for llama.cpp, Ollama and LM Studio.
pub fn to_gguf(model: &Path, ty: &str, out: &Path) -> Result<()> {
    fresh(out)?;
    let dir = resolve_model(model)?;
    Ok(peft_studio_engine::run::convert_to_gguf(
        &dir,
        ty.parse()?,
        out,
    )?)
}

/// Writes a GGUF model with random weights in the shape of `config` (a config.json), with
/// the tokenizer of `tokenizer` (a folder or library name).
pub fn random_gguf(config: &Path, tokenizer: &Path, ty: &str, seed: u64, out: &Path) -> Result<()> {
    fresh(out)?;
    let cfg = LlamaConfig::from_path(config)?;
    let tokenizer = resolve_model(tokenizer)?;
    Ok(write_random_gguf(&cfg, &tokenizer, ty.parse()?, seed, out)?)
}
