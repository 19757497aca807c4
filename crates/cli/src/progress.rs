//! The terminal sink for training events: a progress bar with loss and ETA.

use indicatif::{ProgressBar, ProgressStyle};
use peft_studio_app::runs::{TrainEvent, TrainSink};

/// A progress bar on stderr showing step, loss, throughput and ETA.
#[derive(Default)]
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl TrainSink for Bar {
    fn event(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::Data { summary, problems } => {
                for line in problems {
                    eprintln!("skipped {line}");
                }
                eprintln!("{summary}");
            }
            TrainEvent::Started {
                total_steps,
                start_step,
                trainable_params,
                train_examples,
                val_examples,
                dropped_examples,
                truncated_examples,
            } => {
                eprintln!("training {trainable_params} parameters on {train_examples} examples ({val_examples} held out)");
                if *truncated_examples > 0 {
                    eprintln!("note: {truncated_examples} examples are longer than seq_len and were cut (data.truncation decides which end)");
                }
                if *dropped_examples > 0 {
                    eprintln!("warning: {dropped_examples} examples have no trained token within seq_len and were left out");
                }
                let bar = ProgressBar::new(*total_steps as u64);
                bar.set_style(
                    ProgressStyle::with_template("{bar:32} {pos}/{len} steps  {msg}  eta {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_position(*start_step as u64);
                bar.reset_eta();
                self.bar = Some(bar);
            }
            TrainEvent::Step(m) => {
                if let Some(bar) = &self.bar {
                    bar.set_position(m.step as u64);
                    bar.set_message(format!(
                        "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                        m.loss, m.lr, m.tokens_per_s
                    ));
                }
            }
            TrainEvent::Eval { step, eval_loss } => {
                self.println(&format!("step {step}: eval loss {eval_loss:.4}"))
            }
            TrainEvent::Checkpoint { step, path } => {
                self.println(&format!("step {step}: checkpoint {path}"))
            }
            TrainEvent::Evaluated {
                task,
                dataset,
                metrics,
                ..
            } => self.println(&format!(
                "{task} on {dataset}: {}",
                crate::runs::figures(metrics)
            )),
            TrainEvent::Finished {
                steps,
                final_loss,
                cancelled,
            } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                let loss = final_loss
                    .map(|l| format!("{l:.4}"))
                    .unwrap_or_else(|| "-".into());
                let how = if *cancelled { "cancelled" } else { "finished" };
                eprintln!("{how} after {steps} steps, final loss {loss}");
            }
        }
    }
}

impl Bar {
    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}
