//! Adapters shared by others, brought into the catalog: PEFT folders, adapters-library folders
//! and llama.cpp GGUF LoRA files, checked before they are recorded (readable header, finite
//! values, and — given the base model — that they fit it). Pickled `.bin` weights are refused.

use std::path::{Path, PathBuf};

use peft_studio_catalog::{Catalog, NewAdapter};
use peft_studio_engine::EngineError;

use crate::error::Result;

/// The method an adapter's config describes, as the studio names methods.
fn method_of(config: &serde_json::Value, path: &Path) -> Result<String> {
    if let Some(t) = config["peft_type"].as_str() {
        return Ok(match t {
            "LORA" => "lora",
            "IA3" => "ia3",
            "PROMPT_TUNING" => "prompt-tuning",
            "PREFIX_TUNING" => "prefix-tuning",
            other => {
                return Err(EngineError::bad_file(
                    path,
                    format!("peft_type `{other}` is not one the studio loads (LORA, IA3, PROMPT_TUNING, PREFIX_TUNING)"),
                )
                .into())
            }
        }
        .to_string());
    }
    match config["config"]["mh_adapter"].as_bool() {
        Some(true) => Ok("houlsby".into()),
        Some(false) => Ok("pfeiffer".into()),
        None => Err(EngineError::bad_file(
            path,
            "is neither a PEFT config (peft_type) nor an adapters-library bottleneck config",
        )
        .into()),
    }
}

/// An imported adapter: its catalog id, and what the user should know but need not stop for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportedAdapter {
    /// The catalog id.
    pub id: i64,
    /// The folder recorded (for a GGUF LoRA, the PEFT folder it was converted into).
    pub path: PathBuf,
    /// E.g. a base model name other than the one chosen.
    pub warnings: Vec<String>,
}

/// The weights files an adapter folder may hold: PEFT's, then the adapters library's.
pub(crate) const WEIGHTS_FILES: [&str; 2] = ["adapter_model.safetensors", "adapter.safetensors"];

/// The first of `names` that is a file in `dir`.
pub(crate) fn first_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|f| dir.join(f)).find(|p| p.is_file())
}

/// The weights file of an adapter folder, or why there is none usable.
fn weights_file(dir: &Path) -> Result<PathBuf> {
    if let Some(w) = first_file(dir, &WEIGHTS_FILES) {
        return Ok(w);
    }
    let pickled = ["adapter_model.bin", "pytorch_adapter.bin"]
        .iter()
        .any(|f| dir.join(f).is_file());
    let why = if pickled {
        "holds pickled .bin weights, which can run code when loaded; convert them to safetensors first (e.g. `PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)`)"
    } else {
        "holds no adapter_model.safetensors or adapter.safetensors"
    };
    Err(EngineError::bad_file(dir, why).into())
}

/// Every tensor of `weights` read and checked to be finite: NaN or Inf would poison every
/// output without an error.
fn check_finite(weights: &Path) -> Result<()> {
    let tensors = peft_studio_engine::model::load::read_safetensors(weights)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let values = tensors[name]
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| EngineError::bad_file(weights, format!("tensor `{name}`: {e}")))?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(EngineError::bad_file(
                weights,
                format!("tensor `{name}` holds {bad}; the adapter is broken (diverged training?)"),
            )
            .into());
        }
    }
    Ok(())
}

/// A new folder in `root` for the adapter converted from `file`.
fn converted_dir(root: &Path, file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map_or_else(|| "adapter".into(), |s| s.to_string_lossy().into_owned());
    let mut dir = root.join(&stem);
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = root.join(format!("{stem}-{n}"));
    }
    dir
}

/// Checks the adapter at `path` and records it (no run). `path` is a PEFT or adapters-library
/// folder, or a llama.cpp GGUF LoRA file (converted into a new PEFT folder inside `store`, the
/// studio's `adapters` folder; it needs `base`). With `base` (a model folder) the adapter is
/// also attached to that model: one made for another architecture, size or layer count is
/// refused.
pub fn import_adapter(
    catalog: &Catalog,
    store: &Path,
    path: &Path,
    base: Option<&Path>,
) -> Result<ImportedAdapter> {
    let is_gguf = path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let dir = if is_gguf {
        let base = base.ok_or_else(|| {
            EngineError::config("model", "a GGUF LoRA says nothing of its base model's layout; choose the base model it was made for")
        })?;
        let out = converted_dir(store, path);
        if let Err(e) = peft_studio_engine::gguf::lora_read::gguf_lora_to_peft(path, base, &out) {
            let _ = std::fs::remove_dir_all(&out);
            return Err(e.into());
        }
        out
    } else {
        path.to_path_buf()
    };
    let imported = check_and_record(catalog, &dir, base);
    if is_gguf && imported.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    imported
}

fn check_and_record(catalog: &Catalog, dir: &Path, base: Option<&Path>) -> Result<ImportedAdapter> {
    let config_path = dir.join("adapter_config.json");
    let weights = weights_file(dir)?;
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| EngineError::io(&config_path, e))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::bad_file(&config_path, e.to_string()))?;
    let method = method_of(&config, &config_path)?;
    // A readable header with at least one tensor: a corrupt or empty file is caught here.
    let tensors = peft_studio_engine::library::weights::header(&weights)?;
    if tensors.is_empty() {
        return Err(EngineError::bad_file(&weights, "holds no tensors").into());
    }
    check_finite(&weights)?;
    let named_base = config["base_model_name_or_path"]
        .as_str()
        .or_else(|| config["model_name"].as_str())
        .unwrap_or("unknown")
        .to_string();
    let mut warnings = Vec::new();
    let base_model = match base {
        Some(base) => {
            // The adapter's fit is a matter of names and shapes: the base's config is enough,
            // and an 8B base is never loaded for it.
            let cfg = peft_studio_engine::model::LlamaConfig::from_path(&base.join("config.json"))?;
            let mut model = peft_studio_engine::model::LlamaModel::skeleton(&cfg)?;
            peft_studio_engine::peft::load::attach_adapter(&mut model, dir, Some(0.0))?;
            let chosen = base.file_name().map(|n| n.to_string_lossy().into_owned());
            let named_last = named_base.rsplit(['/', '\\']).next().unwrap_or(&named_base);
            if named_base != "unknown" && chosen.as_deref() != Some(named_last) {
                warnings.push(format!(
                    "the adapter names `{named_base}` as its base model; it fits `{}`, but outputs are only meaningful on the model it was trained on",
                    base.display()
                ));
            }
            base.display().to_string()
        }
        None => named_base,
    };
    let (sha256, size_bytes) = peft_studio_engine::hash::sha256_file(&weights)?;
    let id = catalog.add_adapter(&NewAdapter {
        run_id: None,
        path: dir.display().to_string(),
        method,
        base_model,
        sha256,
        size_bytes,
    })?;
    Ok(ImportedAdapter {
        id,
        path: dir.to_path_buf(),
        warnings,
    })
}

/// [`import_adapter`] into the studio's own `adapters` folder, with `model` (a folder or an
/// installed model's name) as the base it must fit.
pub fn import_into_library(
    catalog: &Catalog,
    path: &Path,
    model: Option<&Path>,
) -> Result<ImportedAdapter> {
    let base = model.map(crate::models::resolve_model).transpose()?;
    import_adapter(
        catalog,
        &crate::studio_home().join("adapters"),
        path,
        base.as_deref(),
    )
}

/// Forgets adapter `id`; its folder is deleted too when the studio wrote it inside its own
/// data folder (a run's adapter), and kept when it lies elsewhere (an export the user placed).
/// Returns whether files were deleted.
pub fn delete(catalog: &Catalog, id: i64) -> Result<bool> {
    let record = catalog.delete_adapter(id)?;
    let home = crate::studio_home();
    let owned = Path::new(&record.path)
        .canonicalize()
        .ok()
        .filter(|p| home.canonicalize().is_ok_and(|h| p.starts_with(h)));
    Ok(match owned {
        Some(dir) => std::fs::remove_dir_all(dir).is_ok(),
        None => false,
    })
}
