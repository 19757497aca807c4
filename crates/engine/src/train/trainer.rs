//! The training loop: accumulation, clipping, schedule, evaluation, checkpoints, cancel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};

use super::checkpoint::{self, CheckpointState};
use super::config::TrainConfig;
use super::events::{StepMetrics, TrainEvent, TrainSink};
use super::optimizer::{collect_grads, global_norm, AdamW};
use crate::data::{Batch, Examples};
use crate::error::{EngineError, Result};
use crate::model::t5::T5Model;
use crate::model::{ForwardCtx, LlamaModel};
use crate::ops::SplitMix64;
use crate::peft::Trainables;
use crate::threads::on_compute_pool;

/// What a trainer trains: a model that gives the mean loss of a batch over its weighted
/// targets, and the number of targets. Decoder-only models predict the next token; an
/// encoder-decoder model (T5) reads the batch's sources and predicts the targets.
pub trait Objective: Sync {
    /// The device batches go to.
    fn device(&self) -> &Device;
    /// The batch's mean loss and its number of weighted targets.
    fn batch_loss(&self, batch: &Batch, ctx: &ForwardCtx) -> Result<(Tensor, f64)>;
}

impl Objective for LlamaModel {
    fn device(&self) -> &Device {
        LlamaModel::device(self)
    }
    fn batch_loss(&self, batch: &Batch, ctx: &ForwardCtx) -> Result<(Tensor, f64)> {
        self.loss(&batch.input_ids, &batch.targets, &batch.weights, ctx)
    }
}

impl Objective for T5Model {
    fn device(&self) -> &Device {
        T5Model::device(self)
    }
    fn batch_loss(&self, batch: &Batch, ctx: &ForwardCtx) -> Result<(Tensor, f64)> {
        let (source, mask) = batch.source.as_ref().ok_or_else(|| {
            EngineError::config(
                "data",
                "a T5 batch needs its sources (records with a prompt)",
            )
        })?;
        T5Model::batch_loss(
            self,
            source,
            mask,
            &batch.input_ids,
            &batch.targets,
            &batch.weights,
            ctx,
        )
    }
}

/// Mean loss of `batch` over its weighted targets, and the number of targets.
pub fn batch_loss(model: &dyn Objective, batch: &Batch, ctx: &ForwardCtx) -> Result<(Tensor, f64)> {
    model.batch_loss(batch, ctx)
}

/// Trains the variables of a method-wrapped model.
pub struct Trainer<'a> {
    model: &'a dyn Objective,
    vars: Trainables,
    cfg: TrainConfig,
    train: Examples,
    val: Option<Examples>,
    opt: AdamW,
    step: usize,
    tokens_seen: u64,
    last_loss: Option<f64>,
}

impl<'a> Trainer<'a> {
    /// A trainer at step 0.
    pub fn new(
        model: &'a dyn Objective,
        vars: Trainables,
        cfg: TrainConfig,
        train: Examples,
        val: Option<Examples>,
    ) -> Result<Self> {
        cfg.validate()?;
        if vars.is_empty() {
            return Err(EngineError::config(
                "method",
                "nothing to train: the method selected no parameters",
            ));
        }
        let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
        let opt = AdamW::new(&refs, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay)?;
        Ok(Self {
            model,
            vars,
            cfg,
            train,
            val,
            opt,
            step: 0,
            tokens_seen: 0,
            last_loss: None,
        })
    }

    /// Optimiser steps the run will take.
    pub fn total_steps(&self) -> usize {
        self.cfg.total_steps(self.train.batches_per_epoch())
    }

    /// Steps completed.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Number of trained scalars.
    pub fn trainable_params(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The trained tensors by name (current values).
    pub fn params(&self) -> Vec<(String, Tensor)> {
        // The optimiser's f32 values: in mixed precision the variables hold their rounding.
        self.vars
            .iter()
            .enumerate()
            .map(|(i, (n, v))| (n.clone(), self.opt.value(i, v)))
            .collect()
    }

    /// Restores parameters, moments and counters from a checkpoint folder.
    pub fn restore(&mut self, dir: &Path) -> Result<()> {
        let ck = checkpoint::load(dir)?;
        if ck.state.seed != self.cfg.seed {
            return Err(EngineError::bad_file(
                dir,
                format!(
                    "checkpoint seed {} differs from the run's seed {}",
                    ck.state.seed, self.cfg.seed
                ),
            ));
        }
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let missing = |what: &str| {
                EngineError::bad_file(
                    dir,
                    format!("checkpoint lacks {what} `{name}`; it belongs to another run"),
                )
            };
            let p = ck.params.get(name).ok_or_else(|| missing("parameter"))?;
            if p.dims() != var.dims() {
                return Err(EngineError::bad_file(
                    dir,
                    format!(
                        "`{name}` has shape {:?}, expected {:?}",
                        p.dims(),
                        var.dims()
                    ),
                ));
            }
            let wide = crate::ops::wide(var.dtype());
            let on =
                |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(var.device())?.to_dtype(wide)?) };
            self.opt.set_value(i, var, &on(p)?)?;
            self.opt.m[i] = on(ck.m.get(name).ok_or_else(|| missing("first moment of"))?)?;
            self.opt.v[i] = on(ck.v.get(name).ok_or_else(|| missing("second moment of"))?)?;
        }
        self.opt.t = ck.state.step;
        self.step = ck.state.step;
        self.tokens_seen = ck.state.tokens_seen;
        self.last_loss = ck.state.last_loss;
        Ok(())
    }

    /// Saves a checkpoint of the current state under `root`.
    pub fn save_checkpoint(&self, root: &Path) -> Result<PathBuf> {
        let state = CheckpointState {
            step: self.step,
            tokens_seen: self.tokens_seen,
            seed: self.cfg.seed,
            last_loss: self.last_loss,
        };
        checkpoint::save(root, &state, &self.params(), &self.opt.m, &self.opt.v)
    }

    /// Mean loss over the validation set, weighted by target count.
    pub fn evaluate(&self) -> Result<Option<f64>> {
        on_compute_pool(|| self.evaluate_here())
    }

    fn evaluate_here(&self) -> Result<Option<f64>> {
        let Some(val) = &self.val else {
            return Ok(None);
        };
        let ctx = ForwardCtx::eval();
        let (mut total, mut count) = (0.0, 0.0);
        for batch in val.eval_batches(self.model.device())? {
            let (loss, n) = batch_loss(self.model, &batch, &ctx)?;
            total += crate::ops::host_scalar(&loss)? * n;
            count += n;
        }
        Ok(Some(total / count.max(1.0)))
    }

    /// One optimiser step over `grad_accum` micro-batches.
    fn train_step(&mut self, total: usize, started: Instant) -> Result<StepMetrics> {
        let step_start = Instant::now();
        let vars: Vec<&Var> = self.vars.iter().map(|(_, v)| v).collect();
        let accum = self.cfg.grad_accum;
        let mut grads: Option<Vec<Tensor>> = None;
        let (mut loss_sum, mut tokens) = (0.0, 0usize);
        for micro in 0..accum {
            let index = self.step * accum + micro;
            let batch = self.train.batch_at(index, self.model.device())?;
            let ctx = ForwardCtx::train(SplitMix64::mix(self.cfg.seed, index as u64))
                .with_checkpointing(self.cfg.gradient_checkpointing);
            let (loss, _) = batch_loss(self.model, &batch, &ctx)?;
            let loss_value = crate::ops::host_scalar(&loss)?;
            if !loss_value.is_finite() {
                return Err(EngineError::config(
                    "lr",
                    format!(
                        "the loss became {loss_value} at step {}; lower the learning rate",
                        self.step + 1
                    ),
                ));
            }
            loss_sum += loss_value;
            tokens += batch.tokens;
            let g = collect_grads(&vars, &loss.backward()?)?;
            grads = Some(match grads {
                None => g,
                Some(acc) => acc
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        let grads = grads.unwrap_or_default();
        // The mean over micro-batches and the clipping factor, applied by the optimiser.
        let mut scale = 1.0 / accum as f64;
        let grad_norm = global_norm(&grads)? * scale;
        if self.cfg.max_grad_norm > 0.0 && grad_norm > self.cfg.max_grad_norm {
            scale *= self.cfg.max_grad_norm / (grad_norm + 1e-6);
        }
        let lr = self.cfg.lr_at(self.step, total);
        self.opt.step_scaled(&vars, &grads, lr, scale)?;
        self.step += 1;
        self.tokens_seen += tokens as u64;
        let loss = loss_sum / accum as f64;
        self.last_loss = Some(loss);
        Ok(StepMetrics {
            step: self.step,
            total_steps: total,
            epoch: self.train.epoch_of(self.step * accum - 1),
            tokens_seen: self.tokens_seen,
            loss,
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / step_start.elapsed().as_secs_f64().max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
        })
    }

    /// Runs until the last step or a cancel request (checked between steps). Checkpoints
    /// go under `checkpoints` when given, every `checkpoint_every` steps and at the end.
    pub fn run(
        &mut self,
        sink: &mut dyn TrainSink,
        cancel: &AtomicBool,
        checkpoints: Option<&Path>,
    ) -> Result<()> {
        let total = self.total_steps();
        sink.event(&TrainEvent::Started {
            total_steps: total,
            start_step: self.step,
            trainable_params: self.trainable_params(),
            train_examples: self.train.len(),
            val_examples: self.val.as_ref().map(Examples::len).unwrap_or(0),
            dropped_examples: self.train.dropped(),
            truncated_examples: self.train.truncated(),
        });
        let started = Instant::now();
        let mut cancelled = false;
        // The untrained model's validation loss: the baseline every curve is read against.
        if self.step == 0 && self.cfg.eval_every > 0 {
            if let Some(eval_loss) = self.evaluate()? {
                sink.event(&TrainEvent::Eval { step: 0, eval_loss });
            }
        }
        while self.step < total {
            if cancel.load(Ordering::Relaxed) {
                cancelled = true;
                break;
            }
            let metrics = on_compute_pool(|| self.train_step(total, started))?;
            sink.event(&TrainEvent::Step(metrics));
            let every = |n: usize| n > 0 && self.step.is_multiple_of(n) && self.step < total;
            if every(self.cfg.eval_every) {
                if let Some(eval_loss) = self.evaluate()? {
                    sink.event(&TrainEvent::Eval {
                        step: self.step,
                        eval_loss,
                    });
                }
            }
            if let (Some(root), true) = (checkpoints, every(self.cfg.checkpoint_every)) {
                self.checkpoint(root, sink)?;
            }
        }
        if !cancelled {
            if let Some(eval_loss) = self.evaluate()? {
                sink.event(&TrainEvent::Eval {
                    step: self.step,
                    eval_loss,
                });
            }
        }
        if let Some(root) = checkpoints {
            self.checkpoint(root, sink)?;
        }
        sink.event(&TrainEvent::Finished {
            steps: self.step,
            final_loss: self.last_loss,
            cancelled,
        });
        Ok(())
    }

    fn checkpoint(&self, root: &Path, sink: &mut dyn TrainSink) -> Result<()> {
        let path = self.save_checkpoint(root)?;
        checkpoint::prune(root, self.cfg.keep_checkpoints)?;
        sink.event(&TrainEvent::Checkpoint {
            step: self.step,
            path: path.display().to_string(),
        });
        Ok(())
    }
}
