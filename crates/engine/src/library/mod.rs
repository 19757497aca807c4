//! The user's model library: models installed from the hub, local folders and GGUF files,
//! recorded in `models.json` in the studio's home folder (the catalog will move it to SQLite).

pub mod hub;
pub mod import;
pub mod weights;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::fsutil::write_atomic;

/// The studio's data folder: `PEFT_STUDIO_HOME`, else `$XDG_DATA_HOME/peft-studio`, else
/// `~/.local/share/peft-studio`.
pub fn studio_home() -> PathBuf {
    if let Some(home) = std::env::var_os("PEFT_STUDIO_HOME") {
        return PathBuf::from(home);
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(data).join("peft-studio");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".local/share/peft-studio")
}

/// One installed model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelEntry {
    /// The name people pick it by.
    pub name: String,
    /// The Hugging Face folder the engine loads.
    pub path: PathBuf,
    /// Where it came from: `folder`, `gguf:<file>` or `hub:<repo>@<revision>`.
    pub source: String,
    /// `architectures[0]` from config.json.
    pub architecture: String,
    /// The family's name for people (`Gemma 3`), from `architecture` (`model::family`);
    /// derived, so never read back from models.json.
    #[serde(default, skip_deserializing)]
    pub family: String,
    /// Whether it is an encoder-decoder model (T5), which trains on sources and targets
    /// with fewer methods; derived from `architecture`.
    #[serde(default, skip_deserializing)]
    pub encoder_decoder: bool,
    /// Number of weights (a tied lm_head counted once).
    pub parameters: u64,
    /// Storage type of the weights, e.g. `F32` or `BF16`.
    pub dtype: String,
    /// Longest context the model supports.
    pub context_length: usize,
    /// Bytes of weight files on disk.
    pub size_bytes: u64,
    /// Seconds since the Unix epoch when it was added.
    pub added_unix: u64,
}

impl ModelEntry {
    /// Fills in the fields derived from `architecture`.
    pub fn derive(mut self) -> Self {
        self.encoder_decoder = self.architecture == crate::model::t5::ARCHITECTURE;
        self.family = match self.encoder_decoder {
            true => "T5".into(),
            false => crate::model::family::label(&self.architecture),
        };
        self
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    models: Vec<ModelEntry>,
}

/// `models.json`: the installed models, shared by the app and the CLI.
pub struct Registry {
    path: PathBuf,
    file: RegistryFile,
}

impl Registry {
    /// Opens the registry in `home` (an absent file is an empty registry).
    pub fn open(home: &Path) -> Result<Self> {
        let path = home.join("models.json");
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut file: RegistryFile = serde_json::from_str(&text).map_err(|e| {
                    EngineError::bad_file(&path, format!("not a model registry: {e}"))
                })?;
                file.models = file.models.into_iter().map(ModelEntry::derive).collect();
                file
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RegistryFile::default(),
            Err(e) => return Err(EngineError::io(&path, e)),
        };
        Ok(Self { path, file })
    }

    /// The installed models, by name.
    pub fn models(&self) -> &[ModelEntry] {
        &self.file.models
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.file.models.iter().find(|m| m.name == name)
    }

    /// Adds `entry`, replacing a model of the same name, and saves.
    pub fn put(&mut self, entry: ModelEntry) -> Result<()> {
        self.file.models.retain(|m| m.name != entry.name);
        self.file.models.push(entry);
        self.file.models.sort_by(|a, b| a.name.cmp(&b.name));
        self.save()
    }

    /// Removes the model called `name` from the list and saves; returns it.
    pub fn remove(&mut self, name: &str) -> Result<ModelEntry> {
        let at = self
            .file
            .models
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| {
                EngineError::config("model", format!("no installed model is called `{name}`"))
            })?;
        let entry = self.file.models.remove(at);
        self.save()?;
        Ok(entry)
    }

    fn save(&self) -> Result<()> {
        let text = serde_json::to_vec_pretty(&self.file)
            .map_err(|e| EngineError::config("models.json", e.to_string()))?;
        write_atomic(&self.path, &text)
    }
}

/// A model name safe to use as a folder name: letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::config(
            "name",
            format!("`{name}` is not a usable model name: use letters, digits, `-`, `_` and `.`"),
        ))
    }
}

/// The folder `path` if it is a model folder, else the installed model named so.
pub fn resolve(home: &Path, model: &Path) -> Result<PathBuf> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    let name = model.to_string_lossy();
    let registry = Registry::open(home)?;
    registry.get(&name).map(|m| m.path.clone()).ok_or_else(|| {
        EngineError::bad_file(
            model,
            "neither a model folder nor the name of an installed model (see `models list`)",
        )
    })
}
