//! What the trainer reports, and the sink trait its reports go to (a progress bar, JSON
//! lines, the catalog and the UI stream are all sinks of the same events).

use serde::{Deserialize, Serialize};

/// One optimiser step's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based step number.
    pub step: usize,
    /// Total steps of the run.
    pub total_steps: usize,
    /// 0-based epoch of the step's last micro-batch.
    pub epoch: usize,
    /// Input tokens processed so far (padding excluded).
    pub tokens_seen: u64,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used for the step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Throughput of this step.
    pub tokens_per_s: f64,
    /// Seconds since the run (or its resumption) started.
    pub elapsed_s: f64,
}

/// An event of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    /// A dataset was read: its summary and every record left out, as `FILE:LINE: message`.
    Data {
        /// `FILE: FORMAT format, N usable, M rejected (…)`.
        summary: String,
        /// One line per rejected record.
        problems: Vec<String>,
    },
    /// The run starts (or resumes at `start_step`).
    Started {
        /// Total optimiser steps.
        total_steps: usize,
        /// First step to run (0 for a fresh run).
        start_step: usize,
        /// Trainable parameters.
        trainable_params: usize,
        /// Training examples.
        train_examples: usize,
        /// Validation examples.
        val_examples: usize,
        /// Examples left out: nothing to train on within `seq_len`.
        dropped_examples: usize,
        /// Training examples longer than `seq_len`, cut to it.
        #[serde(default)]
        truncated_examples: usize,
    },
    /// A step finished.
    Step(StepMetrics),
    /// Validation loss after `step`.
    Eval {
        /// The step evaluated after.
        step: usize,
        /// Mean validation loss.
        eval_loss: f64,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The step saved.
        step: usize,
        /// Where.
        path: String,
    },
    /// The trained adapter measured as `[eval]` asks (after its export).
    Evaluated {
        /// The adapter measured.
        adapter: String,
        /// perplexity, generation or choice.
        task: String,
        /// The file.
        dataset: String,
        /// Items evaluated.
        items: usize,
        /// Metric name → value.
        metrics: std::collections::BTreeMap<String, f64>,
    },
    /// The run ended; `cancelled` when stopped on request.
    Finished {
        /// Steps completed.
        steps: usize,
        /// Last training loss.
        final_loss: Option<f64>,
        /// Whether a cancel request stopped it.
        cancelled: bool,
    },
}

impl TrainEvent {
    /// What reading a dataset found, as a run reports it before training.
    pub fn data(report: &crate::data::DataReport) -> Self {
        Self::Data {
            summary: report.summary(),
            problems: report.problem_lines(),
        }
    }
}

/// Receives training events.
pub trait TrainSink {
    /// Called for every event, in order.
    fn event(&mut self, event: &TrainEvent);
}

/// A sink that keeps every event (tests, summaries).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Events received so far.
    pub events: Vec<TrainEvent>,
}

impl TrainSink for Recorder {
    fn event(&mut self, event: &TrainEvent) {
        self.events.push(event.clone());
    }
}

impl Recorder {
    /// The per-step losses recorded.
    pub fn losses(&self) -> Vec<f64> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Step(m) => Some(m.loss),
                _ => None,
            })
            .collect()
    }
}

/// Fans events out to several sinks.
pub struct Fanout<'a>(pub Vec<&'a mut dyn TrainSink>);

impl TrainSink for Fanout<'_> {
    fn event(&mut self, event: &TrainEvent) {
        for s in self.0.iter_mut() {
            s.event(event);
        }
    }
}
