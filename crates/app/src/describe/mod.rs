//! What the forms and the command line's flags are built from: each method with its
//! hyperparameters, and the quantized formats a
//! base can be held in.

use serde::Serialize;

mod methods;
mod train;

pub use methods::{describe, methods, MethodInfo, ParamInfo, ParamRange};
pub use train::{form_start, presets, train_settings, Preset};

use crate::datasets::Format;
use crate::plan::QUANTIZATIONS;

/// What the forms are built from besides the methods: the `[train]` settings, the presets,
/// the values the New run form starts from, the record formats, and the export formats.
#[derive(Debug, Serialize)]
pub struct FormSettings {
    /// Every `[train]` setting.
    pub train: Vec<ParamInfo>,
    /// Named sets of `[train]` values, the first where the form starts.
    pub presets: Vec<Preset>,
    /// `[train]` values the form starts with apart from the defaults and the first preset.
    pub start: serde_json::Value,
    /// The record formats a dataset can be read as, `auto` (detected per record) first.
    pub formats: Vec<String>,
    /// Those an encoder-decoder model (T5) reads: records with a source and a target.
    pub pair_formats: Vec<String>,
    /// The formats a run's adapter can be exported in (the run view's choice).
    pub exports: Vec<crate::export::ExportChoice>,
}

/// The forms' settings.
pub fn form_settings() -> FormSettings {
    FormSettings {
        train: train_settings(),
        presets: presets(),
        start: form_start(),
        formats: Format::ALL.iter().map(ToString::to_string).collect(),
        pair_formats: Format::ALL
            .iter()
            .filter(|f| f.holds_pairs())
            .map(ToString::to_string)
            .collect(),
        exports: crate::export::choices(),
    }
}

/// A block format a base's projections can be held in, as the hyperparameters step offers it.
#[derive(Debug, Serialize)]
pub struct QuantizationView {
    /// The `quantize` value (`q4_k`).
    pub name: String,
    /// Bits per weight.
    pub bits_per_weight: f64,
}

/// Every `quantize` choice, the usual first.
pub fn quantizations() -> Vec<QuantizationView> {
    QUANTIZATIONS
        .iter()
        .map(|q| QuantizationView {
            name: q.name().into(),
            bits_per_weight: q.bits_per_weight(),
        })
        .collect()
}
