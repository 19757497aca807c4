//! `models`: the model library from the terminal, with progress bars for long work.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use peft_studio_engine::library::hub::{self, DownloadProgress};
use peft_studio_engine::library::import::{default_name, describe_folder, import_gguf};
use peft_studio_engine::library::{studio_home, ModelEntry, Registry};
use peft_studio_engine::model::gguf::GgufWeights;
use peft_studio_engine::{EngineError, Result};

use crate::args::ModelsCommand;

/// Runs one `models` subcommand.
pub fn run(cmd: ModelsCommand) -> Result<()> {
    let home = studio_home();
    match cmd {
        ModelsCommand::List { json } => list(&home, json),
        ModelsCommand::Import {
            path,
            name,
            convert,
        } => {
            let name = name.unwrap_or_else(|| default_name(&path));
            let entry = if path.is_file() {
                let weights = match convert {
                    true => GgufWeights::Converted,
                    false => GgufWeights::AsStored,
                };
                let bar = bar("{bar:32} {pos}/{len} tensors dequantised  eta {eta}");
                let entry = import_gguf(&path, &home, &name, weights, &mut |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                })?;
                bar.finish_and_clear();
                entry
            } else {
                describe_folder(&path, &name, "folder")?
            };
            add(&home, entry)
        }
        ModelsCommand::Download {
            repo,
            revision,
            name,
        } => {
            let name = name.unwrap_or_else(|| default_name(Path::new(&repo)));
            let mut progress = BytesBar::default();
            let snapshot = hub::download(&repo, &revision, &mut progress)?;
            progress.finish();
            add(
                &home,
                describe_folder(&snapshot, &name, &format!("hub:{repo}@{revision}"))?,
            )
        }
        ModelsCommand::ToGguf { model, out, ty } => {
            let dir = peft_studio_engine::library::resolve(&home, &model)?;
            if out.exists() {
                return Err(EngineError::bad_file(
                    &out,
                    "already exists; choose a new name",
                ));
            }
            peft_studio_engine::run::convert_to_gguf(&dir, ty.parse()?, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        ModelsCommand::Random {
            config,
            tokenizer,
            out,
            ty,
            seed,
        } => {
            if out.exists() {
                return Err(EngineError::bad_file(
                    &out,
                    "already exists; choose a new name",
                ));
            }
            let cfg = peft_studio_engine::model::LlamaConfig::from_path(&config)?;
            let tokenizer = peft_studio_engine::library::resolve(&home, &tokenizer)?;
            peft_studio_engine::export::gguf_model::write_random_gguf(
                &cfg,
                &tokenizer,
                ty.parse()?,
                seed,
                &out,
            )?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        ModelsCommand::Remove { name } => {
            let mut registry = Registry::open(&home)?;
            let entry = registry.remove(&name)?;
            // Only folders the studio itself wrote are deleted; others are the user's.
            // Entries hold canonical paths, so compare against the canonical owned folder.
            if let Ok(owned) = home.join("models").join(&name).canonicalize() {
                if entry.path.starts_with(&owned) {
                    let _ = std::fs::remove_dir_all(&owned);
                }
            }
            eprintln!("removed {name}");
            Ok(())
        }
    }
}

fn bar(template: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// A progress bar per downloaded file.
#[derive(Default)]
pub struct BytesBar {
    bar: Option<ProgressBar>,
}

impl BytesBar {
    /// Clears the last bar.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl DownloadProgress for BytesBar {
    fn file(&mut self, name: &str, size: usize) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        let b = bar("{msg:28} {bar:32} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}");
        b.set_length(size as u64);
        b.set_message(name.to_string());
        self.bar = Some(b);
    }
    fn advance(&mut self, bytes: usize) {
        if let Some(b) = &self.bar {
            b.inc(bytes as u64);
        }
    }
}

fn add(home: &Path, entry: ModelEntry) -> Result<()> {
    let mut registry = Registry::open(home)?;
    eprintln!(
        "installed {} ({}: {}, {} parameters, {}) at {}",
        entry.name,
        entry.family,
        entry.architecture,
        entry.parameters,
        entry.dtype,
        entry.path.display()
    );
    registry.put(entry)
}

fn list(home: &Path, json: bool) -> Result<()> {
    let registry = Registry::open(home)?;
    if json {
        for m in registry.models() {
            println!("{}", serde_json::to_string(m).unwrap_or_default());
        }
        return Ok(());
    }
    if registry.models().is_empty() {
        eprintln!(
            "no models installed; add one with `models import PATH` or `models download REPO`"
        );
        return Ok(());
    }
    println!(
        "{:<28} {:<10} {:>12} {:>6} {:>8} {:>10}  SOURCE",
        "NAME", "FAMILY", "PARAMETERS", "DTYPE", "CONTEXT", "SIZE"
    );
    for m in registry.models() {
        println!(
            "{:<28} {:<10} {:>12} {:>6} {:>8} {:>9.1}M  {}",
            m.name,
            m.family,
            m.parameters,
            m.dtype,
            m.context_length,
            m.size_bytes as f64 / 1e6,
            m.source
        );
    }
    Ok(())
}
