//! `data check` and `data preview`: what the studio will make of a dataset, before training.

use std::io::IsTerminal;

use peft_studio_app::datasets::{check, inspect, read_config, DataConfig};
use peft_studio_app::models::download_dataset;
use peft_studio_app::{EngineError, Result};

use crate::args::{DataArgs, DataCommand};

/// Runs one `data` subcommand.
pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Download { repo, revision } => {
            let mut progress = crate::models::BytesBar::default();
            let paths = download_dataset(&repo, &revision, &mut progress)?;
            progress.finish();
            for p in paths {
                println!("{}", p.display());
            }
            Ok(())
        }
        DataCommand::Check { data, model } => {
            let cfg = config(&data)?;
            let started = std::time::Instant::now();
            let (report, tokens) = check(&data.file, &cfg, model.as_deref())?;
            for line in report.problem_lines() {
                println!("{line}");
            }
            println!("{}", report.summary());
            if let Some(s) = tokens {
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                println!(
                    "tokenized {} records, {} tokens ({} trained) in {:.2} s: {:.0} records/s, {:.0} tokens/s",
                    s.examples, s.total_tokens, s.trained_tokens, secs, s.examples as f64 / secs, s.total_tokens as f64 / secs
                );
            }
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(EngineError::bad_file(
                    &data.file,
                    format!("{} records cannot be used", report.problems.len()),
                )
                .into())
            }
        }
        DataCommand::Preview {
            data,
            model,
            n,
            seq_len,
        } => {
            let view = inspect(&data.file, &config(&data)?, Some(&model), n, seq_len)?;
            let (open, close) = if std::io::stdout().is_terminal() {
                ("\x1b[1;32m", "\x1b[0m")
            } else {
                ("⟦", "⟧")
            };
            for record in &view.preview {
                println!(
                    "── {}:{} (trained text {open}marked{close})",
                    data.file.display(),
                    record.line
                );
                println!("{}", record.marked(open, close));
            }
            println!("── {}", view.summary);
            if let Some(s) = view.tokens {
                println!(
                    "tokens: {} in all, {} trained; per record min {} · median {} · p95 {} · max {}; {} longer than {}",
                    s.total_tokens, s.trained_tokens, s.min, s.median, s.p95, s.max, s.over_max_len, s.max_len
                );
            }
            Ok(())
        }
    }
}

fn config(a: &DataArgs) -> Result<DataConfig> {
    read_config(&a.format, a.columns.as_deref(), a.train_on_all)
}
