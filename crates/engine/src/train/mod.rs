//! The training loop and everything it needs: settings, AdamW, schedules, checkpoints and
//! the events it reports.

pub mod checkpoint;
pub mod config;
pub mod events;
pub mod optimizer;
pub mod trainer;

pub use config::{Precision, Schedule, TrainConfig};
pub use events::{Recorder, StepMetrics, TrainEvent, TrainSink};
pub use trainer::{batch_loss, Objective, Trainer};
