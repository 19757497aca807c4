//! Exporting a run's newest checkpoint: as an adapter in its method's reference format, or as
//! the base model with the adapter merged in. Exported adapters are recorded in the catalog.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use peft_studio_catalog::{Catalog, NewAdapter};
use peft_studio_engine::gguf::model::GgufType;
use peft_studio_engine::run::{self, RunConfig};
use peft_studio_engine::train::checkpoint;
use peft_studio_engine::EngineError;

use crate::adapters::{first_file, WEIGHTS_FILES};
use crate::error::{AppError, Result};

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The adapter as its reference library loads it (PEFT, or the adapters library).
    Peft,
    /// The base model with the adapter folded into its weights (a Hugging Face folder).
    Merged,
    /// A LoRA adapter as llama.cpp (and Ollama, LM Studio) loads it: one GGUF file.
    GgufLora,
    /// The merged model as one GGUF file of this weight type, for llama.cpp, Ollama, LM Studio.
    MergedGguf(GgufType),
}

impl ExportFormat {
    /// Whether the export is one file (`.gguf`) rather than a folder.
    pub fn is_file(self) -> bool {
        matches!(self, Self::GgufLora | Self::MergedGguf(_))
    }
}

impl FromStr for ExportFormat {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "peft" | "adapter" => Ok(Self::Peft),
            "merged" => Ok(Self::Merged),
            "gguf-lora" => Ok(Self::GgufLora),
            other => match other.strip_prefix("gguf-") {
                Some(ty) if ty.parse::<GgufType>().is_ok() => Ok(Self::MergedGguf(ty.parse()?)),
                _ => Err(EngineError::config(
                    "format",
                    format!("`{other}` is not supported; supported: peft, merged, gguf-lora, gguf-f32, gguf-f16, gguf-q8_0"),
                )
                .into()),
            },
        }
    }
}

/// An export format as the run view offers it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportChoice {
    /// The value [`ExportFormat`] reads (`gguf-q8_0`).
    pub format: &'static str,
    /// What it gives, for the user.
    pub label: &'static str,
    /// One `.gguf` file rather than a folder.
    pub file: bool,
}

/// The export formats offered, the usual first.
pub fn choices() -> Vec<ExportChoice> {
    [
        ("peft", "Adapter (PEFT / adapters library format)"),
        ("merged", "Merged model (Hugging Face folder)"),
        ("gguf-lora", "LoRA for llama.cpp / Ollama (GGUF file)"),
        (
            "gguf-f16",
            "Merged model for llama.cpp / Ollama / LM Studio (GGUF, F16)",
        ),
        (
            "gguf-q8_0",
            "Merged model, 8-bit (GGUF, Q8_0: a quarter of F32)",
        ),
        ("gguf-f32", "Merged model, exact (GGUF, F32)"),
    ]
    .into_iter()
    .map(|(format, label)| ExportChoice {
        format,
        label,
        file: format
            .parse::<ExportFormat>()
            .is_ok_and(ExportFormat::is_file),
    })
    .collect()
}

/// The newest complete checkpoint of the run in `run_dir`.
pub fn latest_checkpoint(run_dir: &Path) -> Result<PathBuf> {
    let cfg = run::load_run(run_dir)?;
    Ok(checkpoint::list(&cfg.checkpoints_dir())
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| {
            EngineError::bad_file(cfg.checkpoints_dir(), "the run has no checkpoint to export")
        })?)
}

/// Writes `checkpoint` to `out` in `format` (a folder; for the GGUF formats a `.gguf` file).
/// `out` must not hold anything already: nothing a user has is overwritten.
pub fn export_checkpoint(checkpoint: &Path, format: ExportFormat, out: &Path) -> Result<()> {
    if out.is_file() || std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(EngineError::bad_file(out, "already exists; choose a new name").into());
    }
    if format.is_file() && out.is_dir() {
        return Err(
            EngineError::bad_file(out, "is a folder; give a file name ending in .gguf").into(),
        );
    }
    let existed = out.exists();
    let written = match format {
        ExportFormat::Merged => run::export_merged(checkpoint, out),
        ExportFormat::Peft => run::export_checkpoint(checkpoint, out),
        ExportFormat::GgufLora => run::export_gguf_lora(checkpoint, out),
        ExportFormat::MergedGguf(ty) => run::export_merged_gguf(checkpoint, ty, out),
    };
    // A failed export (a full disk, a bad checkpoint) leaves nothing half-made behind; the
    // empty folder the user picked stays.
    if written.is_err() {
        if !existed {
            let _ = std::fs::remove_dir_all(out);
            let _ = std::fs::remove_file(out);
        } else if out.is_dir() {
            for entry in std::fs::read_dir(out).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir_all(entry.path());
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(written?)
}

/// Records the adapter folder `dir` (a run's own, or an export) as the run's.
pub fn record_adapter(catalog: &Catalog, run_id: i64, cfg: &RunConfig, dir: &Path) -> Result<()> {
    // A full or freeze run's own folder holds its trained weights instead.
    let weights = first_file(dir, &WEIGHTS_FILES)
        .or_else(|| first_file(dir, &["trained.safetensors"]))
        .ok_or_else(|| AppError::Invalid(format!("{}: holds no adapter weights", dir.display())))?;
    let (sha256, size_bytes) = peft_studio_engine::hash::sha256_file(&weights)?;
    catalog.add_adapter(&NewAdapter {
        run_id: Some(run_id),
        path: dir.display().to_string(),
        method: cfg.method.kind.to_string(),
        base_model: cfg.model.display().to_string(),
        sha256,
        size_bytes,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every format offered is one the export reads, and its file kind is the export's.
    #[test]
    fn every_choice_is_an_export_format() {
        for c in choices() {
            let f: ExportFormat = c.format.parse().expect(c.format);
            assert_eq!(f.is_file(), c.file, "{}", c.format);
        }
    }
}
