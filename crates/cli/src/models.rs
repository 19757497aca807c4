//! `models`: the model library from the terminal, with progress bars for long work.

use indicatif::{ProgressBar, ProgressStyle};
use peft_studio_app::models::{self, DownloadProgress, ModelEntry};
use peft_studio_app::Result;

use crate::args::ModelsCommand;

/// Runs one `models` subcommand.
pub fn run(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::List { json } => list(json),
        ModelsCommand::Import {
            path,
            name,
            convert,
        } => {
            let bar = bar("{bar:32} {pos}/{len} tensors dequantised  eta {eta}");
            let entry = models::import(&path, name, convert, &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            installed(&entry);
            Ok(())
        }
        ModelsCommand::Download {
            repo,
            revision,
            name,
        } => {
            let mut progress = BytesBar::default();
            let entry = models::download(&repo, &revision, name, &mut progress)?;
            progress.finish();
            installed(&entry);
            Ok(())
        }
        ModelsCommand::ToGguf { model, out, ty } => {
            models::to_gguf(&model, &ty, &out)?;
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
            models::random_gguf(&config, &tokenizer, &ty, seed, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        ModelsCommand::Remove { name } => {
            models::remove(&name)?;
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

fn installed(entry: &ModelEntry) {
    eprintln!(
        "installed {} ({}: {}, {} parameters, {}) at {}",
        entry.name,
        entry.family,
        entry.architecture,
        entry.parameters,
        entry.dtype,
        entry.path.display()
    );
}

fn list(json: bool) -> Result<()> {
    let all = models::list()?;
    if json {
        for m in &all {
            println!("{}", serde_json::to_string(m).unwrap_or_default());
        }
        return Ok(());
    }
    if all.is_empty() {
        eprintln!(
            "no models installed; add one with `models import PATH` or `models download REPO`"
        );
        return Ok(());
    }
    let family = all
        .iter()
        .map(|m| m.family.len())
        .max()
        .unwrap_or(0)
        .max(10);
    println!(
        "{:<28} {:<family$} {:>12} {:>6} {:>8} {:>10}  SOURCE",
        "NAME", "FAMILY", "PARAMETERS", "DTYPE", "CONTEXT", "SIZE"
    );
    for m in &all {
        println!(
            "{:<28} {:<family$} {:>12} {:>6} {:>8} {:>9.1}M  {}",
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
