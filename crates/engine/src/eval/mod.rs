//! Evaluation beyond the training loss, for a model with whatever adapter is attached:
//! perplexity on a held-out file (the tokens training would score), generation metrics
//! against references (`metrics`), and multiple-choice tasks scored by log-likelihood as
//! lm-evaluation-harness scores them (docs/EVAL.md).

pub mod metrics;
pub mod score;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::format::Record;
use crate::data::load::{load_examples, read_records, DataConfig, OnBadRecords};
use crate::error::{EngineError, Result};
use crate::generate::{generate_until, GenerateOptions};
use crate::model::LlamaModel;
use crate::tokenizer::TextTokenizer;
use score::score;

/// What is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// `exp` of the mean negative log-likelihood of the scored tokens of a dataset file.
    Perplexity,
    /// Greedy answers to prompt/completion or chat records against their references.
    Generation,
    /// Multiple-choice items (`{"context", "choices", "gold"}` lines) by log-likelihood.
    Choice,
}

impl Task {
    /// Its name in the catalog and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Task::Perplexity => "perplexity",
            Task::Generation => "generation",
            Task::Choice => "choice",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "perplexity" => Ok(Task::Perplexity),
            "generation" => Ok(Task::Generation),
            "choice" => Ok(Task::Choice),
            other => Err(format!(
                "unknown task `{other}`: perplexity, generation or choice"
            )),
        }
    }
}

/// A task's figures: the aggregate metrics and one entry per item.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The task.
    pub task: Task,
    /// Items evaluated.
    pub items: usize,
    /// Metric name → value (perplexity, nll_per_token, tokens; exact_match, f1, rouge_l,
    /// bleu; acc, acc_norm).
    pub metrics: BTreeMap<String, f64>,
    /// Per item: its figures (what the reference tools print per sample).
    pub per_item: Vec<serde_json::Value>,
}

/// `[eval]` of a run config: the trained adapter measured at the end of training, the result
/// recorded against the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// perplexity, generation or choice; none: no evaluation.
    pub task: Option<Task>,
    /// The held-out file (a dataset, or multiple-choice items).
    pub data: Option<std::path::PathBuf>,
    /// New tokens per answer (generation).
    pub max_new_tokens: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            task: None,
            data: None,
            max_new_tokens: 64,
        }
    }
}

impl EvalConfig {
    /// Whether no evaluation is asked for (the table is then left out of `run.toml`).
    pub fn is_off(&self) -> bool {
        self.task.is_none()
    }

    /// The task and its file, checked: a task needs a file that exists.
    pub fn checked(&self) -> Result<Option<(Task, &Path)>> {
        match (self.task, &self.data) {
            (None, _) => Ok(None),
            (Some(_), None) => Err(EngineError::config(
                "eval.data",
                "an [eval] task needs a file",
            )),
            (Some(_), Some(d)) if !d.is_file() => {
                Err(EngineError::bad_file(d, "[eval] data: no such file"))
            }
            (Some(t), Some(d)) => Ok(Some((t, d.as_path()))),
        }
    }
}

/// Settings of an evaluation.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How the dataset is read (perplexity and generation).
    pub data: DataConfig,
    /// New tokens per answer (generation).
    pub max_new_tokens: usize,
}

/// Evaluates `model` on `path`; `progress(done, total)` after each item.
pub fn evaluate(
    model: &LlamaModel,
    tok: &TextTokenizer,
    task: Task,
    path: &Path,
    settings: &Settings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    match task {
        Task::Perplexity => perplexity(model, tok, path, &settings.data, progress),
        Task::Generation => generation(model, tok, path, settings, progress),
        Task::Choice => choice(model, tok, path, progress),
    }
}

fn strict(cfg: &DataConfig) -> DataConfig {
    DataConfig {
        on_bad_records: OnBadRecords::Stop,
        ..cfg.clone()
    }
}

/// Perplexity over the tokens training scores (the completion of a prompt/completion
/// record, assistant turns of a chat, all of a text), each example cut to the context.
fn perplexity(
    model: &LlamaModel,
    tok: &TextTokenizer,
    path: &Path,
    cfg: &DataConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    let (examples, _) = load_examples(path, tok, &strict(cfg))?;
    let limit = model.config().max_position_embeddings + 1;
    let (mut nll, mut tokens, mut per_item) = (0.0f64, 0usize, Vec::new());
    for (i, e) in examples.iter().enumerate() {
        let n = e.ids.len().min(limit);
        let scored = score(model, &e.ids[..n], |t| e.loss_mask[t] == 1)?;
        nll -= scored.loglikelihood;
        tokens += scored.tokens;
        per_item.push(serde_json::json!({
            "ids": &e.ids[..n],
            "scored": &e.loss_mask[..n],
            "loglikelihood": scored.loglikelihood,
            "tokens": scored.tokens,
        }));
        progress(i + 1, examples.len());
    }
    if tokens == 0 {
        return Err(EngineError::bad_file(
            path,
            "no token is scored: nothing to measure",
        ));
    }
    let per_token = nll / tokens as f64;
    Ok(Report {
        task: Task::Perplexity,
        items: examples.len(),
        metrics: BTreeMap::from([
            ("perplexity".into(), per_token.exp()),
            ("nll_per_token".into(), per_token),
            ("tokens".into(), tokens as f64),
        ]),
        per_item,
    })
}

/// A record's prompt ids and reference: a prompt/completion record's, or a chat's last
/// assistant turn after the turns before it (rendered by the template).
fn prompt_and_reference(tok: &TextTokenizer, record: &Record) -> Result<(Vec<u32>, String)> {
    match record {
        Record::PromptCompletion { prompt, completion } => {
            Ok((tok.encode(prompt, true)?, completion.clone()))
        }
        Record::Chat(turns) => match turns.split_last() {
            Some((last, context)) if last.role == "assistant" && !context.is_empty() => {
                let text = tok.compiled_chat_template()?.render(context, true)?;
                Ok((tok.encode(&text, false)?, last.content.clone()))
            }
            _ => Err(EngineError::config(
                "record",
                "a chat evaluated for generation must end with an assistant turn after others",
            )),
        },
        Record::Text(_) => Err(EngineError::config(
            "record",
            "a text record has no reference: use prompt/completion or chat records",
        )),
    }
}

/// Greedy answers against the references.
fn generation(
    model: &LlamaModel,
    tok: &TextTokenizer,
    path: &Path,
    settings: &Settings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    let (records, report) = read_records(path, &strict(&settings.data))?;
    if !report.problems.is_empty() {
        return Err(EngineError::bad_file(
            path,
            report.problem_lines().join("\n"),
        ));
    }
    let options = GenerateOptions {
        max_new_tokens: settings.max_new_tokens,
        ..GenerateOptions::default()
    };
    let (mut pairs, mut per_item) = (Vec::new(), Vec::new());
    let mut sums = [0.0f64; 3];
    for (i, (line, record)) in records.iter().enumerate() {
        let at_line = |e: EngineError| EngineError::bad_file(path, format!("line {line}: {e}"));
        let (ids, reference) = prompt_and_reference(tok, record).map_err(at_line)?;
        let out =
            generate_until(model, &ids, tok.eos_ids(), &options, |_| true).map_err(at_line)?;
        let prediction = tok.decode(&out)?;
        let scores = [
            metrics::exact_match(&prediction, &reference),
            metrics::token_f1(&prediction, &reference),
            metrics::rouge_l(&prediction, &reference),
        ];
        sums.iter_mut().zip(scores).for_each(|(s, v)| *s += v);
        per_item.push(serde_json::json!({
            "line": line, "prediction": prediction, "reference": reference,
            "exact_match": scores[0], "f1": scores[1], "rouge_l": scores[2],
        }));
        pairs.push((prediction, reference));
        progress(i + 1, records.len());
    }
    let n = records.len().max(1) as f64;
    Ok(Report {
        task: Task::Generation,
        items: records.len(),
        metrics: BTreeMap::from([
            ("exact_match".into(), sums[0] / n),
            ("f1".into(), sums[1] / n),
            ("rouge_l".into(), sums[2] / n),
            ("bleu".into(), metrics::corpus_bleu(&pairs)),
        ]),
        per_item,
    })
}

/// One multiple-choice item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    context: String,
    choices: Vec<String>,
    gold: usize,
}

/// The context's and a choice's ids as lm-evaluation-harness makes them (`_encode_pair`):
/// the continuation is " " + the choice, spaces ending the context move to it, the pair is
/// encoded whole and the context's ids cut from its front; an empty context is the BOS (or
/// EOS) token. Gemma models take a BOS first, as the harness gives them.
fn encode_pair(
    tok: &TextTokenizer,
    model: &LlamaModel,
    context: &str,
    choice: &str,
) -> Result<(Vec<u32>, usize)> {
    let bos = model.config().family.model_type.starts_with("gemma");
    let trimmed = context.trim_end();
    let continuation = format!("{} {choice}", &context[trimmed.len()..]);
    if trimmed.is_empty() {
        let mut ids: Vec<u32> = tok.prefix_id().into_iter().collect();
        let start = ids.len();
        ids.extend(tok.encode(&continuation, false)?);
        return Ok((ids, start));
    }
    let whole = tok.encode(&format!("{trimmed}{continuation}"), bos)?;
    let start = tok.encode(trimmed, bos)?.len();
    Ok((whole, start))
}

/// Accuracy by summed log-likelihood (`acc`) and by log-likelihood per character of the
/// choice (`acc_norm`), as the harness computes them.
fn choice(
    model: &LlamaModel,
    tok: &TextTokenizer,
    path: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    let text =
        std::fs::read_to_string(path).map_err(|e| EngineError::bad_file(path, e.to_string()))?;
    let items: Vec<(usize, Item)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line = i + 1;
            let item: Item = serde_json::from_str(l).map_err(|e| {
                EngineError::bad_file(
                    path,
                    format!("line {line}: {e} (want {{\"context\", \"choices\", \"gold\"}})"),
                )
            })?;
            if item.choices.len() < 2 || item.gold >= item.choices.len() {
                return Err(EngineError::bad_file(
                    path,
                    format!("line {line}: needs two or more choices and `gold` among them"),
                ));
            }
            Ok((line, item))
        })
        .collect::<Result<_>>()?;
    if items.is_empty() {
        return Err(EngineError::bad_file(path, "no items"));
    }
    let (mut acc, mut acc_norm, mut per_item) = (0usize, 0usize, Vec::new());
    for (done, (line, item)) in items.iter().enumerate() {
        let scored = item
            .choices
            .iter()
            .map(|c| {
                let (ids, start) = encode_pair(tok, model, &item.context, c)?;
                score(model, &ids, |t| t >= start)
                    .map_err(|e| EngineError::bad_file(path, format!("line {line}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let best = |key: &dyn Fn(usize) -> f64| {
            (0..scored.len()).fold(0, |b, i| if key(i) > key(b) { i } else { b })
        };
        let pick = best(&|i| scored[i].loglikelihood);
        let pick_norm =
            best(&|i| scored[i].loglikelihood / item.choices[i].chars().count().max(1) as f64);
        acc += usize::from(pick == item.gold);
        acc_norm += usize::from(pick_norm == item.gold);
        per_item.push(serde_json::json!({
            "line": line,
            "loglikelihoods": scored.iter().map(|s| s.loglikelihood).collect::<Vec<_>>(),
            "greedy": scored.iter().map(|s| s.greedy).collect::<Vec<_>>(),
            "gold": item.gold, "pick": pick, "pick_norm": pick_norm,
        }));
        progress(done + 1, items.len());
    }
    let n = items.len() as f64;
    Ok(Report {
        task: Task::Choice,
        items: items.len(),
        metrics: BTreeMap::from([
            ("acc".into(), acc as f64 / n),
            ("acc_norm".into(), acc_norm as f64 / n),
        ]),
        per_item,
    })
}
