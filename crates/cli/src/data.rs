//! `data check` and `data preview`: what the studio will make of a dataset, before training.

use std::io::IsTerminal;
use std::path::Path;

use peft_studio_engine::data::load::{encode_records, read_records, DataConfig};
use peft_studio_engine::data::stats::{mark_trained, token_stats};
use peft_studio_engine::data::{load_examples, Encoder, OnBadRecords, TrainOn};
use peft_studio_engine::model::LlamaConfig;
use peft_studio_engine::tokenizer::TextTokenizer;
use peft_studio_engine::{EngineError, Result};

use crate::args::{DataArgs, DataCommand};
use crate::commands::resolve_model;

/// Runs one `data` subcommand.
pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Download { repo, revision } => {
            let mut progress = crate::models::BytesBar::default();
            let paths = peft_studio_engine::library::hub::download_dataset(
                &repo,
                &revision,
                &mut progress,
            )?;
            progress.finish();
            for p in paths {
                println!("{}", p.display());
            }
            Ok(())
        }
        DataCommand::Check { data, model } => check(&data, model.as_deref()),
        DataCommand::Preview {
            data,
            model,
            n,
            seq_len,
        } => preview(&data, &model, n, seq_len),
    }
}

fn config(a: &DataArgs) -> Result<DataConfig> {
    let mut columns = std::collections::BTreeMap::new();
    for pair in a
        .columns
        .iter()
        .flat_map(|c| c.split(','))
        .filter(|p| !p.is_empty())
    {
        let (from, to) = pair
            .split_once('=')
            .ok_or_else(|| EngineError::config("columns", format!("`{pair}` is not `from=to`")))?;
        columns.insert(from.trim().to_string(), to.trim().to_string());
    }
    Ok(DataConfig {
        format: a.format.parse()?,
        columns,
        train_on: if a.train_on_all {
            TrainOn::All
        } else {
            TrainOn::Completions
        },
        on_bad_records: OnBadRecords::Skip,
        ..Default::default()
    })
}

fn tokenizer(model: &Path) -> Result<TextTokenizer> {
    let dir = resolve_model(model)?;
    let cfg = LlamaConfig::from_path(&dir)?;
    TextTokenizer::load(&dir, &cfg.eos_token_ids)
}

fn check(a: &DataArgs, model: Option<&Path>) -> Result<()> {
    let cfg = config(a)?;
    let started = std::time::Instant::now();
    let (report, examples) = match model {
        Some(m) => {
            let (examples, report) = load_examples(&a.file, &tokenizer(m)?, &cfg)?;
            (report, Some(examples))
        }
        None => (read_records(&a.file, &cfg)?.1, None),
    };
    for line in report.problem_lines() {
        println!("{line}");
    }
    println!("{}", report.summary());
    if let Some(examples) = examples {
        let s = token_stats(&examples, usize::MAX);
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
            &a.file,
            format!("{} records cannot be used", report.problems.len()),
        ))
    }
}

fn preview(a: &DataArgs, model: &Path, n: usize, seq_len: usize) -> Result<()> {
    let cfg = config(a)?;
    let tok = tokenizer(model)?;
    let (records, mut report) = read_records(&a.file, &cfg)?;
    let encoder = Encoder::new(&tok, cfg.train_on)?;
    let (open, close) = if std::io::stdout().is_terminal() {
        ("\x1b[1;32m", "\x1b[0m")
    } else {
        ("⟦", "⟧")
    };
    for (line, record) in records.iter().take(n) {
        let rendered = encoder.render(record)?;
        println!(
            "── {}:{} (trained text {open}marked{close})",
            a.file.display(),
            line
        );
        println!("{}", mark_trained(&rendered, open, close));
    }
    let examples = encode_records(&records, &mut report, &tok, cfg.train_on)?;
    let s = token_stats(&examples, seq_len);
    println!("── {}", report.summary());
    println!(
        "tokens: {} in all, {} trained; per record min {} · median {} · p95 {} · max {}; {} longer than {}",
        s.total_tokens, s.trained_tokens, s.min, s.median, s.p95, s.max, s.over_max_len, s.max_len
    );
    Ok(())
}
