//! Comparison data: each run's loss and validation loss against a chosen x axis, downsampled
//! to at most K points that keep the curve's shape (each point carries its bucket's min and
//! max, so spikes survive as a band), with optional EMA smoothing; and a config diff.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{CatalogError, Result};
use crate::metrics::{RawPoint, Rollup, ROLLUP_LEVELS};
use crate::Catalog;

/// What the x axis measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XAxis {
    /// Optimiser steps.
    Step,
    /// Epochs.
    Epoch,
    /// Input tokens seen.
    Tokens,
    /// Seconds of training.
    WallTime,
}

impl XAxis {
    /// The axis title.
    pub fn title(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Epoch => "epoch",
            Self::Tokens => "tokens seen",
            Self::WallTime => "wall time (s)",
        }
    }

    fn of_point(self, &(step, epoch, tokens, wall, _): &RawPoint) -> Option<f64> {
        // Step 0 (the evaluation before training) is at the origin of every axis.
        if step == 0 {
            return Some(0.0);
        }
        match self {
            Self::Step => Some(step as f64),
            Self::Epoch => epoch.map(|e| e as f64),
            Self::Tokens => tokens.map(|t| t as f64),
            Self::WallTime => wall,
        }
    }

    fn of_rollup(self, r: &Rollup) -> Option<f64> {
        match self {
            Self::Step => Some(r.step_max as f64),
            Self::Epoch => r.epoch_max.map(|e| e as f64),
            Self::Tokens => r.tokens_max.map(|t| t as f64),
            Self::WallTime => r.wall_max,
        }
    }
}

impl FromStr for XAxis {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "step" | "steps" => Self::Step,
            "epoch" | "epochs" => Self::Epoch,
            "tokens" => Self::Tokens,
            "time" | "wall" | "wall-time" => Self::WallTime,
            other => {
                return Err(CatalogError::Invalid(format!(
                    "x axis `{other}` is not one of step, epoch, tokens, time"
                )))
            }
        })
    }
}

/// One plotted point: `y` is the mean of the steps it stands for, `min`/`max` their range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Position on the x axis.
    pub x: f64,
    /// Value (mean, smoothed when asked).
    pub y: f64,
    /// Lowest raw value in the bucket.
    pub min: f64,
    /// Highest raw value in the bucket.
    pub max: f64,
    /// Steps the point stands for.
    pub n: u32,
}

/// How to build comparison series.
#[derive(Debug, Clone, Copy)]
pub struct SeriesOptions {
    /// The x axis.
    pub x: XAxis,
    /// Most points per series.
    pub max_points: usize,
    /// EMA weight in [0, 1): 0 = none, 0.9 = strong (TensorBoard's "smoothing").
    pub smoothing: f64,
}

impl Default for SeriesOptions {
    fn default() -> Self {
        Self {
            x: XAxis::Step,
            max_points: 2000,
            smoothing: 0.0,
        }
    }
}

/// One run's curves.
#[derive(Debug, Clone, Serialize)]
pub struct RunSeries {
    /// The run.
    pub run_id: i64,
    /// Legend text.
    pub label: String,
    /// Training loss.
    pub loss: Vec<Point>,
    /// Validation loss.
    pub eval_loss: Vec<Point>,
}

/// Merges neighbouring points so that at most `k` remain (min of mins, max of maxes,
/// n-weighted mean, last x of each group).
pub fn merge_to(points: &[Point], k: usize) -> Vec<Point> {
    if points.len() <= k || k == 0 {
        return points.to_vec();
    }
    let group = points.len().div_ceil(k);
    points
        .chunks(group)
        .filter_map(|c| {
            let last = c.last()?;
            let n: u32 = c.iter().map(|p| p.n).sum();
            Some(Point {
                x: last.x,
                y: c.iter().map(|p| p.y * p.n as f64).sum::<f64>() / n.max(1) as f64,
                min: c.iter().map(|p| p.min).fold(f64::INFINITY, f64::min),
                max: c.iter().map(|p| p.max).fold(f64::NEG_INFINITY, f64::max),
                n,
            })
        })
        .collect()
}

/// Debiased exponential moving average over `y` (as TensorBoard smooths); a point standing
/// for n steps decays the average as n steps would.
pub fn smooth(points: &mut [Point], weight: f64) {
    if weight <= 0.0 {
        return;
    }
    let w = weight.min(0.999);
    let (mut avg, mut debias) = (0.0, 1.0);
    for p in points.iter_mut() {
        let decay = w.powi(p.n.max(1) as i32);
        avg = avg * decay + (1.0 - decay) * p.y;
        debias *= decay;
        p.y = avg / (1.0 - debias).max(f64::MIN_POSITIVE);
    }
}

fn raw_points(rows: &[RawPoint], x: XAxis) -> Vec<Point> {
    rows.iter()
        .filter_map(|r| {
            let y = r.4;
            Some(Point {
                x: x.of_point(r)?,
                y,
                min: y,
                max: y,
                n: 1,
            })
        })
        .collect()
}

impl Catalog {
    /// A run's loss and validation-loss curves, downsampled and smoothed per `opts`.
    pub fn series(&self, run_id: i64, label: &str, opts: &SeriesOptions) -> Result<RunSeries> {
        let k = opts.max_points.max(2);
        let steps = self.last_step(run_id)? as usize;
        let level = ROLLUP_LEVELS
            .iter()
            .copied()
            .find(|l| steps.div_ceil(*l as usize) <= k)
            .or(ROLLUP_LEVELS.last().copied());
        let mut loss = match level {
            Some(level) if steps > k => self
                .rollups(run_id, level)?
                .iter()
                .filter_map(|r| {
                    Some(Point {
                        x: opts.x.of_rollup(r)?,
                        y: r.mean,
                        min: r.min,
                        max: r.max,
                        n: u32::try_from(r.n).unwrap_or(u32::MAX),
                    })
                })
                .collect(),
            _ => raw_points(&self.points(run_id, false)?, opts.x),
        };
        loss = merge_to(&loss, k);
        smooth(&mut loss, opts.smoothing);
        let eval_loss = merge_to(&raw_points(&self.points(run_id, true)?, opts.x), k);
        Ok(RunSeries {
            run_id,
            label: label.to_string(),
            loss,
            eval_loss,
        })
    }
}

/// The config fields (dotted paths) whose values differ between runs, each with every run's
/// value (`None` where a run lacks the field).
pub fn config_diff(
    configs: &[serde_json::Value],
) -> BTreeMap<String, Vec<Option<serde_json::Value>>> {
    let flat: Vec<BTreeMap<String, serde_json::Value>> = configs
        .iter()
        .map(|c| {
            let mut out = BTreeMap::new();
            flatten("", c, &mut out);
            out
        })
        .collect();
    let keys: std::collections::BTreeSet<&String> = flat.iter().flat_map(|f| f.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let values: Vec<Option<serde_json::Value>> =
                flat.iter().map(|f| f.get(k).cloned()).collect();
            let first = values.first()?;
            values
                .iter()
                .any(|v| v != first)
                .then(|| (k.clone(), values))
        })
        .collect()
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}
